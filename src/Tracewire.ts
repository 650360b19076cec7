import type { FastifyInstance } from 'fastify';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { getHeapStatistics } from 'node:v8';
import { Metrics } from './audit/Metrics.js';
import type { RunRecord } from './audit/RunRecord.js';
import { RunLedger } from './audit/RunLedger.js';
import { BridgeRegistry } from './bridge/BridgeRegistry.js';
import { boundsMemoryWarning, resolveConfig, type TracewireConfig } from './config/Config.js';
import { Diag } from './errors/Diag.js';
import { EventHub } from './hub/EventHub.js';
import { RedisBroker } from './hub/fanout/Broker.js';
import { answerRunsQuestion, apiTokenTag, isRefusal, type RunsCluster } from './audit/runsApi.js';
import { TracewireSpanProcessor, type TracewireSpanProcessorOptions } from './sources/TracewireSpanProcessor.js';

export const VERSION = '0.1.0';

export interface TracewireOptions extends Partial<Omit<TracewireConfig, 'listen' | 'otlpListen'>> {
  /** Called after each verdict (logs, tests). */
  readonly onVerdict?: (run: RunRecord) => void;
  /** Fault injection for demos and tests: writes to this user's connections fail. */
  readonly failWritesFor?: (user: string) => boolean;
  /** Clock (epoch ms), for tests. */
  readonly now?: () => number;
}

/**
 * One tracewire instance: metrics registry, run ledger, event hub and the
 * per-trace bridges for each span source. Library users create one, add
 * `spanProcessor()` to their NodeSDK and register `fastifyPlugin` on their
 * fastify app; the sidecar builds the same thing from its config.
 */
export class Tracewire {
  readonly config: TracewireConfig;
  readonly metrics: Metrics;
  readonly ledger: RunLedger;
  readonly hub: EventHub;
  /** The diagnostic sink (stderr, at `logLevel`). */
  readonly diag: Diag;
  private inProcess: BridgeRegistry | undefined;
  private otlp: BridgeRegistry | undefined;
  private closed: Promise<void> | undefined;
  private readonly processors: TracewireSpanProcessor[] = [];

  constructor(opts: TracewireOptions = {}) {
    const { onVerdict, failWritesFor, now, ...overrides } = opts;
    this.config = resolveConfig({ overrides: overrides as Record<string, unknown> });
    const c = this.config;
    this.diag = new Diag(c.logLevel);
    const tight = boundsMemoryWarning(c, getHeapStatistics().heap_size_limit);
    if (tight !== undefined) this.diag.log('warn', 'config', tight);
    this.metrics = new Metrics({ maxAgentLabels: c.maxAgentLabels, version: VERSION, mode: c.mode });
    this.ledger = new RunLedger({
      mode: c.mode,
      graceMillis: c.graceMillis,
      runTimeoutMillis: c.runTimeoutMillis,
      runsMaxCount: c.runsMaxCount,
      runsMaxBytes: c.runsMaxBytes,
      runsMaxAgeMillis: c.runsMaxAgeMillis,
      metrics: this.metrics,
      onForget: (r) => {
        this.inProcess?.forgetRun(r);
        this.otlp?.forgetRun(r);
      },
      onJudged: (r) => this.otlp?.judged(r),
      onVerdict,
      now,
    });
    this.hub = new EventHub({
      jwtSecret: c.jwtSecret,
      onDevSecretRefused: (e) => this.diag.repeated('dev_secret', 'hub', (n) => `refused ${n} WebSocket connection(s) off loopback: ${e.message}`),
      wsMaxBufferedBytes: c.wsMaxBufferedBytes,
      wsHeartbeatMillis: c.wsHeartbeatMillis,
      wsMaxConnections: c.wsMaxConnections,
      replayRetentionMillis: c.replayRetentionMillis,
      replayMaxEventsPerRun: c.replayMaxEventsPerRun,
      replayMaxBytesPerRun: c.replayMaxBytesPerRun,
      replayMaxTotalBytes: c.replayMaxTotalBytes,
      maxHeldEvents: c.maxHeldEvents,
      maxHeldBytes: c.maxHeldBytes,
      wsCloseGraceMillis: c.wsCloseGraceMillis,
      replayMaxIdleMillis: c.runTimeoutMillis,
      metrics: this.metrics,
      ledger: this.ledger,
      failWritesFor,
      now,
    });
    this.now = now;
    // Several sidecars: a broker, and events to deliver (audit mode delivers none).
    const severalSidecars = c.brokerUrl !== '' && c.mode === 'emit';
    this.fanoutReady = !severalSidecars
      ? Promise.resolve()
      : this.startFanout().catch((err: Error) => {
          if (this.closed === undefined) this.diag.log('error', 'fanout', `could not start the fan-out: ${err.message}`);
        });
    if (severalSidecars) {
      // The runs API answers for every sidecar: each answers the others' questions about the runs it keeps.
      // A sidecar with an --api-token shows its runs only to sidecars with the same one (a tag of it travels).
      const template = c.traceUrlTemplate || undefined;
      const tag = apiTokenTag(c.apiToken);
      this.hub.runsAnswerer = (q, maxBytes) => answerRunsQuestion(this.ledger, template, this.instanceId, q, tag, maxBytes);
      this.runsCluster = {
        self: this.instanceId,
        ask: (q) => {
          const asked = this.hub.askRuns({ ...q, t: tag });
          if (asked === undefined || asked === 'busy') return asked;
          return asked.then((got) => {
            const refused = got.answers.filter((a) => isRefusal(a.answer)).map((a) => a.from);
            if (refused.length > 0) {
              this.diag.repeated('runs_refused', 'runs', (n) => `${n} runs question(s) refused by other sidecars (latest: ${refused.join(', ')}): their --api-token differs from this one's, so their runs are not listed here`);
            }
            return got;
          });
        },
      };
    }
  }

  /** Several sidecars (a broker): what the runs API asks the others through; undefined for a single sidecar. */
  readonly runsCluster: RunsCluster | undefined;

  /**
   * With a broker (`brokerUrl`): resolves once this sidecar is subscribed to
   * it. While the broker cannot be reached the sidecar serves as a single
   * one (logged, `tracewire_broker_up` 0) and keeps trying.
   */
  readonly fanoutReady: Promise<void>;
  /** This sidecar's id on the broker. */
  readonly instanceId: string = '';

  private broker: RedisBroker | undefined;
  private stopConnecting: (() => void) | undefined;

  private async startFanout(): Promise<void> {
    const c = this.config;
    if (c.brokerReportTimeoutMillis >= c.graceMillis) {
      this.diag.log('warn', 'config', `--broker-report-timeout-ms (${c.brokerReportTimeoutMillis}) is not under --grace-ms (${c.graceMillis}): runs may be judged before other sidecars report their events' outcomes`);
    }
    const id = c.instanceId || `${hostname().replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 100)}-${process.pid}-${randomBytes(3).toString('hex')}`;
    (this as { instanceId: string }).instanceId = id;
    const broker = (this.broker = new RedisBroker({
      url: c.brokerUrl,
      onError: (err) => this.diag.repeated('broker_error', 'fanout', (n) => `${n} broker connection error(s), latest: ${err.message}`),
    }));
    // From the start: a broker that cannot be reached shows as 0 (and TracewireBrokerDown fires).
    this.metrics.broker().up.track(() => (broker.up ? 1 : 0));
    // Connecting retries until the broker answers, or until close() gives up on it.
    await Promise.race([broker.connect(), new Promise<void>((r) => (this.stopConnecting = r))]);
    if (this.closed !== undefined) {
      await broker.close();
      return;
    }
    await this.hub.startFanout(broker, {
      instanceId: id,
      prefix: c.brokerPrefix,
      presenceIntervalMillis: c.brokerPresenceMillis,
      reportTimeoutMillis: c.brokerReportTimeoutMillis,
      maxPending: c.brokerMaxPending,
      maxRemoteUsers: c.brokerMaxRemoteUsers,
      diag: this.diag,
      now: this.now,
    });
  }

  private readonly now: (() => number) | undefined;

  private registry(parentsArriveFirst: boolean): BridgeRegistry {
    const c = this.config;
    return new BridgeRegistry(
      {
        mode: c.mode,
        parentsArriveFirst,
        orphanHoldMillis: c.orphanHoldMillis,
        maxOrphanSpans: c.maxOrphanSpans,
        maxInFlightRuns: c.maxInFlightRuns,
        maxSpansPerRun: c.maxSpansPerRun,
        maxTraces: c.maxTraces,
        maxSpansInFlight: c.maxSpansInFlight,
      },
      this.metrics,
      this.ledger,
      c.mode === 'emit' ? this.hub : undefined,
      this.now,
      this.diag,
    );
  }

  /** The bridges fed by the in-process span processor. */
  get inProcessBridges(): BridgeRegistry {
    return (this.inProcess ??= this.registry(true));
  }

  /** The bridges fed by the OTLP receiver (spans arrive late and out of order). */
  get otlpBridges(): BridgeRegistry {
    return (this.otlp ??= this.registry(false));
  }

  /** A SpanProcessor for `NodeSDK({ spanProcessors: [tw.spanProcessor()] })`. */
  spanProcessor(opts?: TracewireSpanProcessorOptions): TracewireSpanProcessor {
    const p = new TracewireSpanProcessor(this.inProcessBridges, this.metrics, { diag: this.diag, ...opts });
    this.processors.push(p);
    return p;
  }

  /** Sign a token for `user` with the configured secret (dev tokens, tests). */
  token(user: string, ttlSeconds = 3600): Promise<string> {
    return this.hub.verifierForTokens.sign(user, ttlSeconds);
  }

  /**
   * Fastify plugin: mounts the WebSocket endpoint (`/v1/events`) on the app's
   * server. Register it on the root instance: `app.register(tw.fastifyPlugin)`.
   * Closing the app closes tracewire too (its WebSocket connections would
   * keep the server from closing), unless registered with
   * `{ closeWithApp: false }` (one Tracewire shared by several apps, or
   * closed by its owner: `startSidecar` does so).
   */
  readonly fastifyPlugin = async (app: FastifyInstance, opts: { closeWithApp?: boolean } = {}): Promise<void> => {
    this.hub.attach(app.server);
    if (opts.closeWithApp === false) return;
    app.addHook('preClose', async () => {
      await this.close();
    });
  };

  /** True once `close()` was called (health checks report `shutting_down`). */
  get closing(): boolean {
    return this.closed !== undefined;
  }

  /**
   * Graceful stop: drain the span queues, close connections with 1001 after
   * flushing, give in-flight runs the `interrupted` verdict. Runs once.
   */
  close(timeoutMillis = this.config.shutdownTimeoutMillis): Promise<void> {
    return (this.closed ??= (async () => {
      for (const p of this.processors) await p.shutdown();
      this.hub.flush();
      this.inProcess?.close();
      this.otlp?.close();
      await this.hub.close(timeoutMillis);
      // A broker the fan-out never started on (still connecting) is closed here; otherwise the hub closed it.
      this.stopConnecting?.();
      await this.broker?.close();
      this.ledger.interruptAll();
      this.ledger.close();
    })());
  }
}
