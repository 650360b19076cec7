import { Counter, Gauge, Histogram, Registry, type OpenMetricsContentType } from 'prom-client';

/** Event types of the tracewire.v1 protocol; the `type` label takes only these. */
export const EVENT_TYPES = ['agent_started', 'agent_thinking', 'tool_executing', 'tool_completed', 'agent_completed'] as const;
export type EventType = (typeof EVENT_TYPES)[number];

export const LIFECYCLE_KINDS = ['agent', 'thinking', 'tool'] as const;
export type LifecycleKind = (typeof LIFECYCLE_KINDS)[number];

export const VERDICTS = ['complete', 'partial', 'missing_events', 'abandoned', 'interrupted'] as const;
export type Verdict = (typeof VERDICTS)[number];

/**
 * Why an event was not delivered. Bounded: every drop carries one of these.
 * - no_subscriber: the user had no connection for the whole hold window
 * - send_failed: a connection existed and every write reported an error
 * - backpressure: the connection was not reading and was closed
 * - unauthorised: the connection's token no longer allowed it
 * - evicted: the run was evicted from bounded in-flight state
 * - no_user: the run carries no user id, so it cannot be routed
 * - not_recorded: audit mode, the backend recorded no agent.event for it
 * - reported_dropped: audit mode, the backend recorded it as dropped without a known reason
 * - shutdown: the process stopped before it could be sent
 * - late_span: the span arrived after its run had completed
 * - overflow: the run exceeded its bounded size
 */
export const DROP_REASONS = [
  'no_subscriber', 'send_failed', 'backpressure', 'unauthorised', 'evicted', 'no_user',
  'not_recorded', 'reported_dropped', 'shutdown', 'late_span', 'overflow',
  'broker_unconfirmed',
] as const;
export type DropReason = (typeof DROP_REASONS)[number];

export const EVICTION_REASONS = ['max_runs', 'max_traces', 'max_spans', 'max_spans_total', 'orphan_timeout', 'max_orphans', 'trace_idle'] as const;
export type EvictionReason = (typeof EVICTION_REASONS)[number];

/** Components that count caught faults in tracewire_internal_errors_total. */
export const COMPONENTS = ['sink', 'bridge', 'hub', 'ledger', 'otlp'] as const;

/** Reasons of tracewire_resume_window_trimmed_total: the bound (replayMaxEventsPerRun, replayMaxBytesPerRun, replayMaxTotalBytes). */
export const REPLAY_TRIM_BOUNDS = ['run_events', 'run_bytes', 'total_bytes'] as const;
export type ReplayTrimBound = (typeof REPLAY_TRIM_BOUNDS)[number];

/** Reasons of tracewire_runs_trimmed_total: the bound (runsMaxCount, runsMaxBytes). */
export const RUNS_TRIM_BOUNDS = ['max_count', 'max_bytes'] as const;

/**
 * Fields of tracewire_span_values_limited_total: span values over tracewire's
 * length limits (see conventions/classify.ts). User and conversation ids over
 * the limit are not kept (a run meeting such a user id is never routed; such a
 * conversation id is absent); the others are cut.
 */
export const SPAN_LIMITED_FIELDS = ['user_id', 'conversation_id', 'agent_name', 'tool_name', 'model', 'call_id', 'error'] as const;

/** Reasons of tracewire_ws_disconnects_total. */
/** Broker messages by kind (tracewire_broker_messages_total). */
export const BROKER_MESSAGE_KINDS = ['events', 'reports', 'acks', 'presence', 'resumes', 'runs'] as const;
export type BrokerMessageKind = (typeof BROKER_MESSAGE_KINDS)[number];
/** What the fan-out gives up, by reason (tracewire_broker_dropped_total). */
export const BROKER_DROP_REASONS = ['publish_failed', 'invalid', 'unconfirmed', 'pending_full', 'presence_full', 'unknown_run', 'runs_busy'] as const;

export const DISCONNECT_REASONS = ['client_close', 'abnormal', 'backpressure', 'heartbeat_timeout', 'token_expired', 'bad_frames', 'shutdown'] as const;
/**
 * A counter for the hot path: `inc()` adds to a plain map keyed by the label
 * values (no prom-client label hashing per event); the prom-client counter is
 * brought up to date in its `collect()`, i.e. on every scrape or `get()`.
 */
export class HotCounter<L extends string> {
  /** One Map level per label (values as keys, no key string built per call); the last level holds the totals. */
  private readonly root = new Map<string, unknown>();
  private readonly totals: Array<{ labels: Record<L, string>; value: number }> = [];
  readonly counter: Counter<L>;
  private readonly names: readonly L[];

  constructor(cfg: { name: string; help: string; labelNames: readonly L[]; registers: Registry[] }) {
    this.names = cfg.labelNames;
    const totals = this.totals;
    this.counter = new Counter<L>({
      ...cfg,
      collect(this: Counter<L>) {
        this.reset();
        for (const t of totals) this.inc(t.labels as Partial<Record<L, string>>, t.value);
      },
    });
  }

  inc(labels: Record<L, string>, value = 1): void {
    const n = this.names;
    let level = this.root;
    const last = n.length - 1;
    for (let i = 0; i < last; i++) {
      const v = labels[n[i]!];
      let next = level.get(v) as Map<string, unknown> | undefined;
      if (next === undefined) level.set(v, (next = new Map()));
      level = next;
    }
    const key = last >= 0 ? labels[n[last]!] : '';
    const t = level.get(key) as { labels: Record<L, string>; value: number } | undefined;
    if (t !== undefined) t.value += value;
    else {
      const fresh = { labels: { ...labels }, value };
      level.set(key, fresh);
      this.totals.push(fresh);
    }
  }
}

/** An exemplar as prom-client renders it (OpenMetrics: ` # {labels} value timestamp`). */
interface ExemplarValue {
  readonly labelSet: Record<string, string>;
  readonly value: number;
  /** Seconds since the epoch. */
  readonly timestamp: number;
}

/** One label value's series of a HotHistogram. */
interface HistogramSeries {
  readonly counts: Float64Array;
  readonly exemplars: (ExemplarValue | undefined)[];
  sum: number;
  count: number;
}

/**
 * A histogram for the hot path with one label: `observe()` adds to plain
 * arrays (no label hashing, no per-call objects), and the registry renders
 * it at scrape time in exactly the shape prom-client renders its own
 * histograms (cumulative `_bucket` lines with `le` first, `+Inf`, `_sum`,
 * `_count`; OpenMetrics exemplars on buckets). Registered as a custom metric.
 */
export class HotHistogram<L extends string> {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  private readonly series = new Map<string, HistogramSeries>();

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly label: L,
    private readonly bounds: readonly number[],
    registers: Registry[],
  ) {
    for (const r of registers) r.registerMetric(this as unknown as Histogram);
  }

  /** Observe `value` for label value `v`, with an exemplar when `exemplar` is given (one label: trace_id). */
  observe(v: string, value: number, exemplar?: Record<string, string>): void {
    if (!Number.isFinite(value)) return;
    let s = this.series.get(v);
    if (s === undefined) this.series.set(v, (s = { counts: new Float64Array(this.bounds.length + 1), exemplars: [], sum: 0, count: 0 }));
    const b = this.bounds;
    let i = 0;
    while (i < b.length && value > b[i]!) i++;
    s.counts[i]!++;
    s.sum += value;
    s.count++;
    if (exemplar !== undefined) s.exemplars[i] = { labelSet: exemplar, value, timestamp: Date.now() / 1000 };
  }

  reset(): void {
    this.series.clear();
  }

  /** What the registry renders (prom-client's histogram export shape). */
  getForPromString(): { name: string; help: string; type: 'histogram'; aggregator: 'sum'; values: Array<{ labels: Record<string, string | number>; sharedLabels?: Record<string, string>; value: number; metricName: string; exemplar?: ExemplarValue | null }> } {
    const values: ReturnType<HotHistogram<L>['getForPromString']>['values'] = [];
    const bucket = `${this.name}_bucket`;
    for (const [v, s] of this.series) {
      const shared = { [this.label]: v } as Record<string, string>;
      let acc = 0;
      for (let i = 0; i < this.bounds.length; i++) {
        acc += s.counts[i]!;
        values.push({ labels: { le: this.bounds[i]! }, sharedLabels: shared, value: acc, metricName: bucket, exemplar: s.exemplars[i] ?? null });
      }
      values.push({ labels: { le: '+Inf' }, sharedLabels: shared, value: s.count, metricName: bucket, exemplar: s.exemplars[this.bounds.length] ?? null });
      values.push({ labels: {}, sharedLabels: shared, value: s.sum, metricName: `${this.name}_sum` });
      values.push({ labels: {}, sharedLabels: shared, value: s.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  /** prom-client's `get()` shape: shared labels merged into each value's labels. */
  get(): Promise<ReturnType<HotHistogram<L>['getForPromString']>> {
    const m = this.getForPromString();
    m.values = m.values.map((x) => ({ ...x, labels: { ...x.labels, ...x.sharedLabels }, sharedLabels: undefined }));
    return Promise.resolve(m);
  }
}

/**
 * A gauge whose value is read at scrape time from the components that own the
 * number (the sum of their sources): sizes of maps and queues cost nothing on
 * the hot path. `track()` returns the function that removes the source.
 */
export class LiveGauge {
  private readonly sources: Array<() => number> = [];
  readonly gauge: Gauge;

  constructor(cfg: { name: string; help: string; registers: Registry[] }) {
    const sources = this.sources;
    this.gauge = new Gauge({
      ...cfg,
      collect(this: Gauge) {
        let n = 0;
        for (const s of sources) n += s();
        this.set(n);
      },
    });
  }

  track(source: () => number): () => void {
    this.sources.push(source);
    return () => {
      const i = this.sources.indexOf(source);
      if (i >= 0) this.sources.splice(i, 1);
    };
  }
}

/** Caps a label value to a bounded set: the first `max` distinct values pass, later ones become "other". */
export class BoundedLabel {
  private readonly seen = new Set<string>();
  constructor(private readonly max: number) {}
  value(v: string | undefined): string {
    if (v === undefined || v === '') return 'unknown';
    // Label values must stay short; agent names are user-controlled. Cut first, so a long name maps to one label.
    const clean = v.length > 64 ? v.slice(0, 64) : v;
    if (this.seen.has(clean)) return clean;
    if (this.seen.size >= this.max) return 'other';
    this.seen.add(clean);
    return clean;
  }
}

/**
 * The fan-out's series (DESIGN.md "Scale"), registered only when a broker is
 * configured (`Metrics.broker()`): a single sidecar shows none of them, so
 * an alert on `tracewire_broker_up == 0` never fires for it.
 */
export class BrokerMetrics {
  readonly up: LiveGauge;
  readonly peers: LiveGauge;
  readonly remoteUsers: LiveGauge;
  readonly pending: LiveGauge;
  readonly messages: Counter<'direction' | 'kind'>;
  readonly dropped: Counter<'reason'>;
  readonly reopened: Counter;

  constructor(regs: Registry[]) {
    this.up = new LiveGauge({ name: 'tracewire_broker_up', help: '1 while the fan-out broker (--broker-url) is connected, 0 while it is not; absent without a broker.', registers: regs });
    this.peers = new LiveGauge({ name: 'tracewire_broker_peers', help: 'Other sidecars heard from on the broker within the presence expiry.', registers: regs });
    this.remoteUsers = new LiveGauge({ name: 'tracewire_broker_remote_users', help: 'Users with a connection on another sidecar, per sidecar (bounded by brokerMaxRemoteUsers).', registers: regs });
    this.pending = new LiveGauge({ name: 'tracewire_broker_pending_deliveries', help: 'Events sent to another sidecar whose delivery outcome has not come back yet (bounded by brokerMaxPending).', registers: regs });
    this.messages = new Counter({ name: 'tracewire_broker_messages_total', help: 'Broker messages published (direction "out") and received (direction "in"), by kind; a message carries a batch.', labelNames: ['direction', 'kind'] as const, registers: regs });
    this.dropped = new Counter({ name: 'tracewire_broker_dropped_total', help: 'What the fan-out gave up, by reason: items of a publish that failed, invalid messages received, deliveries whose outcome never came back or that found the pending table full, presence entries past the bound, acks for runs it never relayed, runs API questions not asked because four were already waiting.', labelNames: ['reason'] as const, registers: regs });
    this.reopened = new Counter({ name: 'tracewire_broker_reopened_total', help: 'Times the broker connections were given up and opened anew because none of this sidecar\'s own presence came back for three presence intervals (a connection that looks up but carries nothing, e.g. half-open).', registers: regs });
    for (const direction of ['in', 'out']) for (const kind of BROKER_MESSAGE_KINDS) this.messages.inc({ direction, kind }, 0);
    for (const reason of BROKER_DROP_REASONS) this.dropped.inc({ reason }, 0);
  }
}

/**
 * All tracewire series, on a dedicated registry per instance so embedders and
 * tests never collide. Label values come from the bounded sets above only.
 */
export class Metrics {
  /**
   * One OpenMetrics registry (exemplars need it); `text()` renders the
   * Prometheus text format from it for scrapers that do not ask for OpenMetrics.
   */
  readonly registry: Registry<OpenMetricsContentType> = openMetrics();
  private readonly regs = [this.registry] as unknown as Registry[];
  readonly agentLabel: BoundedLabel;

  readonly lifecycleSpans = new HotCounter({ name: 'tracewire_lifecycle_spans_total', help: 'Lifecycle spans seen, by kind (agent, thinking, tool).', labelNames: ['kind'] as const, registers: this.regs });
  readonly spansSeen = new HotCounter({ name: 'tracewire_spans_seen_total', help: 'All span starts and ends handed to the bridge, by source.', labelNames: ['source'] as const, registers: this.regs });
  readonly eventsEmitted = new HotCounter({ name: 'tracewire_events_emitted_total', help: 'Events produced by the bridge (in audit mode: expected).', labelNames: ['type'] as const, registers: this.regs });
  readonly eventsDelivered = new HotCounter({ name: 'tracewire_events_delivered_total', help: 'Events whose write completed on at least one connection of their user.', labelNames: ['type'] as const, registers: this.regs });
  readonly eventsDeliveredLate = new HotCounter({ name: 'tracewire_events_delivered_late_total', help: 'Events delivered after being held for a user with no connection, or by resume.', labelNames: ['type'] as const, registers: this.regs });
  readonly eventsDropped = new HotCounter({ name: 'tracewire_events_dropped_total', help: 'Events not delivered, by reason.', labelNames: ['type', 'reason'] as const, registers: this.regs });
  readonly runs = new HotCounter({ name: 'tracewire_runs_total', help: 'Judged runs by verdict, main undelivered reason ("none" when complete) and top-level agent (capped).', labelNames: ['verdict', 'reason', 'agent'] as const, registers: this.regs });
  readonly deliverySeconds = new HotHistogram(
    'tracewire_event_delivery_seconds',
    'From the span hook to the completed WebSocket write of the event.',
    'type',
    [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    this.regs,
  );
  readonly connections = new LiveGauge({ name: 'tracewire_ws_connections', help: 'Open, authenticated WebSocket connections.', registers: this.regs });
  readonly connectionAttempts = new Counter({ name: 'tracewire_ws_connection_attempts_total', help: 'WebSocket connection attempts by result.', labelNames: ['result'] as const, registers: this.regs });
  readonly disconnects = new Counter({ name: 'tracewire_ws_disconnects_total', help: 'Closed WebSocket connections by reason.', labelNames: ['reason'] as const, registers: this.regs });
  readonly clientFrameErrors = new Counter({ name: 'tracewire_ws_client_errors_total', help: 'Bad client frames by error code.', labelNames: ['code'] as const, registers: this.regs });
  readonly runsInFlight = new LiveGauge({ name: 'tracewire_runs_in_flight', help: 'Runs whose top-level agent span has started and not been judged yet.', registers: this.regs });
  readonly tracesInFlight = new LiveGauge({ name: 'tracewire_traces_in_flight', help: 'Traces the bridge tracks.', registers: this.regs });
  readonly heldSpans = new LiveGauge({ name: 'tracewire_held_spans', help: 'Spans held until their ancestors arrive.', registers: this.regs });
  readonly evictions = new HotCounter({ name: 'tracewire_bridge_evictions_total', help: 'Spans, traces or runs given up by bounded state, by reason.', labelNames: ['reason'] as const, registers: this.regs });
  readonly internalErrors = new Counter({ name: 'tracewire_internal_errors_total', help: 'Faults caught inside tracewire (never thrown into the caller), by component.', labelNames: ['component'] as const, registers: this.regs });
  readonly hookQueueDrops = new Counter({ name: 'tracewire_hook_queue_dropped_total', help: 'Span hook records dropped because the in-process queue was full.', registers: this.regs });
  readonly otlpRequests = new HotCounter({ name: 'tracewire_otlp_requests_total', help: 'OTLP/HTTP export requests by encoding and response status.', labelNames: ['encoding', 'status'] as const, registers: this.regs });
  readonly otlpSpans = new HotCounter({ name: 'tracewire_otlp_spans_received_total', help: 'Spans accepted from OTLP requests.', labelNames: [] as const, registers: this.regs });
  readonly otlpRejectedSpans = new Counter({ name: 'tracewire_otlp_spans_rejected_total', help: 'Spans rejected from OTLP requests, by reason.', labelNames: ['reason'] as const, registers: this.regs });
  readonly replayedEvents = new Counter({ name: 'tracewire_events_replayed_total', help: 'Events re-sent to a resuming connection.', registers: this.regs });
  readonly resumeWindowRuns = new LiveGauge({ name: 'tracewire_resume_window_runs', help: 'Runs whose delivered events are kept for resuming connections.', registers: this.regs });
  readonly resumeWindowBytes = new LiveGauge({ name: 'tracewire_resume_window_bytes', help: 'Bytes the resume window accounts (frames plus a fixed overhead per event; bounded by replayMaxTotalBytes).', registers: this.regs });
  readonly resumeWindowTrimmed = new HotCounter({ name: 'tracewire_resume_window_trimmed_total', help: 'Delivered events given up by the resume window before their run expired, by the bound that gave them up.', labelNames: ['reason'] as const, registers: this.regs });
  readonly runsKept = new LiveGauge({ name: 'tracewire_runs_kept', help: 'Judged runs kept for the runs API and the inspector (bounded by runsMaxCount, runsMaxBytes and runsMaxAgeMillis).', registers: this.regs });
  readonly runsKeptBytes = new LiveGauge({ name: 'tracewire_runs_kept_bytes', help: 'Estimated bytes of the judged runs kept for the runs API (bounded by runsMaxBytes).', registers: this.regs });
  readonly runsTrimmed = new HotCounter({ name: 'tracewire_runs_trimmed_total', help: 'Judged runs the runs API gave up before their age (runsMaxAgeMillis), by the bound that gave them up.', labelNames: ['reason'] as const, registers: this.regs });
  /**
   * Counts of tracewire_span_values_limited_total by SPAN_LIMITED_FIELDS
   * index, written by classify() (it takes this array: a value over a limit
   * is rare, and a plain array write costs nothing on the common path).
   */
  readonly spanValuesLimitedCounts = new Float64Array(SPAN_LIMITED_FIELDS.length);
  readonly spanValuesLimited = new Counter({
    name: 'tracewire_span_values_limited_total',
    help: 'Span values over tracewire\'s length limits, by field: user ids over 1024 characters make their run unroutable, conversation ids over 1024 characters are ignored, names, model, call id and error text over 256 characters are cut.',
    labelNames: ['field'] as const,
    registers: this.regs,
    collect: ((counts: Float64Array) =>
      function collect(this: Counter<'field'>): void {
        this.reset();
        for (let i = 0; i < SPAN_LIMITED_FIELDS.length; i++) this.inc({ field: SPAN_LIMITED_FIELDS[i]! }, counts[i]!);
      })(this.spanValuesLimitedCounts),
  });
  readonly heldEvents = new LiveGauge({ name: 'tracewire_held_events', help: 'Events held for users with no connection (bounded by maxHeldEvents).', registers: this.regs });
  readonly heldEventBytes = new LiveGauge({ name: 'tracewire_held_event_bytes', help: 'Estimated bytes of the events held for users with no connection (bounded by maxHeldBytes).', registers: this.regs });
  readonly buildInfo = new Gauge({ name: 'tracewire_build_info', help: 'Constant 1, labelled with the version and mode.', labelNames: ['version', 'mode'] as const, registers: this.regs });

  private brokerSeries: BrokerMetrics | undefined;

  /** The fan-out's series, registered on first use. */
  broker(): BrokerMetrics {
    return (this.brokerSeries ??= new BrokerMetrics(this.regs));
  }

  /** OpenMetrics exposition (with exemplars). */
  openMetrics(): Promise<string> {
    return this.registry.metrics();
  }

  /** Prometheus text exposition 0.0.4 (no exemplars). */
  async text(): Promise<string> {
    return openMetricsToText(await this.registry.metrics());
  }

  constructor(opts: { maxAgentLabels?: number; version?: string; mode?: string } = {}) {
    this.agentLabel = new BoundedLabel(opts.maxAgentLabels ?? 50);
    this.buildInfo.set({ version: opts.version ?? '0.1.0', mode: opts.mode ?? 'emit' }, 1);
    // Start every bounded series at zero so rate() and absent() work from the first scrape.
    for (const kind of LIFECYCLE_KINDS) this.lifecycleSpans.inc({ kind }, 0);
    for (const type of EVENT_TYPES) {
      this.eventsEmitted.inc({ type }, 0);
      this.eventsDelivered.inc({ type }, 0);
      this.eventsDeliveredLate.inc({ type }, 0);
    }
    for (const type of EVENT_TYPES) for (const reason of DROP_REASONS) this.eventsDropped.inc({ type, reason }, 0);
    for (const reason of EVICTION_REASONS) this.evictions.inc({ reason }, 0);
    for (const component of COMPONENTS) this.internalErrors.inc({ component }, 0);
    for (const reason of DISCONNECT_REASONS) this.disconnects.inc({ reason }, 0);
    for (const encoding of ['protobuf', 'json']) this.otlpRequests.inc({ encoding, status: '200' }, 0);
    this.otlpSpans.inc({}, 0);
    for (const reason of REPLAY_TRIM_BOUNDS) this.resumeWindowTrimmed.inc({ reason }, 0);
    for (const reason of RUNS_TRIM_BOUNDS) this.runsTrimmed.inc({ reason }, 0);
  }
}

function openMetrics(): Registry<OpenMetricsContentType> {
  const r = new Registry<OpenMetricsContentType>();
  r.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
  return r;
}

/** OpenMetrics text to Prometheus text 0.0.4: counters named with _total, no exemplars, no # EOF. */
export function openMetricsToText(om: string): string {
  const lines = om.split('\n');
  const out: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (line === '# EOF') continue;
    if (line.startsWith('# HELP ')) {
      const next = lines[i + 1] ?? '';
      const name = line.slice(7, line.indexOf(' ', 7));
      if (next === `# TYPE ${name} counter`) {
        out.push(`# HELP ${name}_total${line.slice(7 + name.length)}`, `# TYPE ${name}_total counter`);
        i++;
        continue;
      }
      out.push(line);
      continue;
    }
    const ex = line.indexOf(' # {');
    out.push(ex >= 0 ? line.slice(0, ex) : line);
  }
  return out.join('\n');
}
