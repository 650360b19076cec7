import type { BrokerMessageKind, BrokerMetrics, DropReason, EventType } from '../../audit/Metrics.js';
import { DROP_REASONS, EVENT_TYPES } from '../../audit/Metrics.js';
import { EventRecord, RunRecord, type SpanSummary } from '../../audit/RunRecord.js';
import { OutboundEvent } from '../../bridge/EventSink.js';
import type { Diag } from '../../errors/Diag.js';
import { BoundedMap } from '../../util/BoundedMap.js';
import { Fifo, NumberFifo } from '../../util/Fifo.js';
import { mergeSeqs } from '../../util/arrays.js';
import { isObject } from '../../util/guards.js';
import { INSTANCE_ID } from '../../config/Config.js';
import type { Delivery } from '../Connection.js';
import type { Broker } from './Broker.js';

/**
 * Fan-out across sidecars (DESIGN.md "Scale"): the sidecar that receives a
 * trace's spans (the origin: it orders the run's events and judges the run)
 * is usually not the one that holds the user's WebSocket connections (the
 * edge). Through a pub/sub broker:
 *
 * - presence: each sidecar announces which users have a connection on it
 *   (`join` per connection, `leave` after the last one, a full `sync`
 *   every presence interval; a sidecar silent for five intervals is gone);
 * - events: the origin sends each event of a user connected elsewhere to
 *   those sidecars' inboxes, batched; the edge writes it to its connections
 *   of that user and keeps it in its own resume window;
 * - outcomes: the edge reports each event's delivery (or why not) back to
 *   the origin, which counts it and judges the run as if the connection were
 *   its own; acks are forwarded the same way, and so is the end of a run
 *   (the edge's resume window counts from it). An event whose outcome does
 *   not come back within the report timeout is dropped as
 *   `broker_unconfirmed`;
 * - held events: an event of a user with no connection anywhere, one a
 *   sidecar turned down (`absent`: its connections had gone, or none takes
 *   that conversation) and one that could not be published (the broker is
 *   down) are tried on the user's other sidecars, else held by the origin
 *   and sent, each run in seq order, when a sidecar announces a new
 *   connection of the user.
 *
 * Messages are JSON (docs/operations.md "Several sidecars" has the format).
 * Everything kept is bounded: the pending outcomes (`maxPending`), presence
 * entries (`maxRemoteUsers`), the runs relayed (for acks), the batches (sent
 * every microtask).
 */

export interface FanoutOptions {
  /** This sidecar's id on the broker (its inbox channel); unique per sidecar. */
  readonly instanceId: string;
  /** Channel prefix: sidecars of one deployment share it. */
  readonly prefix: string;
  readonly presenceIntervalMillis: number;
  readonly reportTimeoutMillis: number;
  readonly maxPending: number;
  readonly maxRemoteUsers: number;
  readonly metrics: BrokerMetrics;
  readonly diag: Diag;
  readonly now?: () => number;
}

/** What the fan-out needs of the hub it serves. */
export interface FanoutHost {
  /** Users with a connection on this sidecar now. */
  localUsers(): Iterable<string>;
  /** Edge: write an event from another sidecar to this sidecar's connections of its user. */
  deliverRemote(ev: RemoteEvent): void;
  /** Origin: the outcome of one remote part of a delivery (`absent`: that sidecar has no connection of the user that takes it). */
  settleRemote(d: Delivery, ok: boolean, reason: DropReason | 'absent'): void;
  /** Origin: a sidecar announced `user`; send it what is held for the user. */
  releaseHeldTo(user: string, instance: string): void;
  /** Origin: a client on another sidecar acked a run's events up to `seq`. */
  ackRemote(runId: string, user: string, seq: number): void;
  /** Edge: a run this sidecar relayed has ended (its resume window counts from now). */
  runEndedRemote(runId: string): void;
  /** Origin: another sidecar wrote one of this sidecar's events to a client that resumed there. */
  deliveredByResume(runId: string, seq: number): void;
  /**
   * Another sidecar's client resumes: what this sidecar keeps of `user`'s
   * named runs after their seqs (and, with `all`, of its other runs but
   * `skip`, from their start).
   */
  keptForResume(user: string, runs: Readonly<Record<string, number>>, all: boolean, skip: ReadonlySet<string>): KeptForResume;
  /** Another sidecar's runs API asks about runs (`askRuns`): this sidecar's answer (JSON-able, at most `maxBytes` of it as UTF-8), or undefined for none. */
  runsAsked(question: unknown, maxBytes: number): unknown;
}

/** What the other sidecars answered to a runs question (`askRuns`). */
export interface RunsAnswers {
  /** Each answer with the sidecar it came from (null: that sidecar did not understand the question, or its answer was over its budget). */
  readonly answers: Array<{ readonly from: string; readonly answer: unknown }>;
  /** Sidecars that did not answer in time (of those the broker counted as subscribed; -1 when the count is unknown). */
  readonly missing: number;
}

/** A question out to the other sidecars (`ask`): who answered, and how many will. */
interface Question {
  /** The sidecars that answered (a sidecar counts once). */
  readonly from: Set<string>;
  /** Sidecars that will answer (the broker's receiver count less this one); undefined until the publish says. */
  expected: number | undefined;
  timer: NodeJS.Timeout | undefined;
}

/** Every sidecar that will answer has. */
const allAnswered = (q: { readonly from: Set<string>; readonly expected: number | undefined }): boolean => q.expected !== undefined && q.from.size >= q.expected;

interface RunsQuery extends Question {
  readonly answers: Array<{ from: string; answer: unknown }>;
  readonly done: (a: RunsAnswers) => void;
}

/** One sidecar's part of a resume answer. */
export interface KeptForResume {
  /** Retained events, ascending per run. */
  readonly events: OutboundEvent[];
  /** Every run it keeps (retained or held), with its last seq: the run is known, even with nothing after the asked seq. */
  readonly last: Record<string, number>;
  /** Seqs it holds for the user (sent when the user's sidecar announces the connection), per run. */
  readonly held: Record<string, number[]>;
}

/** What sidecars that answered a resume keep, besides the events they sent. */
export interface ResumeSummary {
  /** Per run some sidecar keeps, the last seq kept (what a truncated answer left out is then a hole). */
  readonly last: Map<string, number>;
  /** Per run, seqs held by its origin (they come when the origin hears of the connection: not holes). */
  readonly held: Map<string, number[]>;
}

/** What the other sidecars had for a resume (`askResume`). */
export interface ResumeAnswer extends ResumeSummary {
  /** Per run, ascending seq, no duplicates. */
  readonly events: Map<string, RemoteEvent[]>;
}

/** Fold one answer's last and held seqs into `into`. */
function absorb(into: ResumeSummary, last: Iterable<[string, number]>, held: Iterable<[string, number[]]>): void {
  for (const [runId, seq] of last) into.last.set(runId, Math.max(into.last.get(runId) ?? 0, seq));
  for (const [runId, seqs] of held) into.held.set(runId, mergeSeqs(into.held.get(runId), seqs)!);
}

interface ResumeQuery extends Question {
  readonly user: string;
  /** `complete`: every sidecar answered; otherwise what is missing is not known yet (see `final`). */
  readonly done: (a: ResumeAnswer, complete: boolean) => void;
  /** Told of an answer that came after `done` (the sidecar was slow): its events, to send after all. */
  readonly late: (a: ResumeAnswer) => void;
  /** After an incomplete `done`: what all the answers (late ones too) said, when no more are taken. */
  readonly final: (s: ResumeSummary) => void;
  readonly answer: ResumeAnswer;
}

/** The span an edge's stand-in records point at (the event's text comes with it; nothing reads the span). */
const REMOTE_SPAN: SpanSummary = Object.freeze({ spanId: '', parentSpanId: undefined, kind: 'agent', name: undefined, startMs: 0 }) as SpanSummary;

/** An event from another sidecar, at the edge: its tracewire.v1 text as the origin wrote it. */
export class RemoteEvent extends OutboundEvent {
  constructor(
    record: EventRecord,
    conversation: string | undefined,
    private readonly text: string,
    /** The sidecar that sent it (outcomes and acks go back there). */
    readonly origin: string,
    /** The origin's id for this delivery; 0 once its outcome was reported. */
    public reportId: number,
    /** Released from the origin's hold (delivered late). */
    readonly late: boolean,
  ) {
    super(conversation, record, undefined, undefined, '');
  }

  override get payload(): string {
    return this.text;
  }

  override releasePayload(): void {
    // The text came over the wire: kept (there is nothing to write it again from).
  }

  override get estimatedBytes(): number {
    return this.text.length + 8;
  }
}

const FLAG_LATE = 1;
const FLAG_ENDED = 2;
/** Items per published message (a batch larger than this goes as several messages). */
const MAX_BATCH = 500;
/** Longest id, user, run id or text accepted in a message (what the hub itself would ever send is far less). */
const MAX_ID_CHARS = 1024;
const MAX_TEXT_CHARS = 4 * 1024 * 1024;
/** Resumes asked of the other sidecars at once (a connection has at most one out); more are answered from this sidecar alone. */
const MAX_QUERIES = 20_000;
/** Text one sidecar sends back for one resume (the rest of a run is then a hole the client is told of). */
const MAX_ANSWER_CHARS = 4 * 1024 * 1024;
/** Held seqs one answer names per run. */
const MAX_HELD_PER_RUN = 10_000;
/** How long the runs API waits for the other sidecars' answers. */
const RUNS_WAIT_MILLIS = 1000;
/**
 * Runs questions out at once (past it, `askRuns` says `busy`: the runs API
 * answers 503): the answers of every sidecar come through this sidecar's one
 * subscribed connection, and Redis cuts a subscriber whose unread output
 * passes its limit (32 MiB by default).
 */
const MAX_RUNS_QUERIES = 4;
/** Longest runs answer a sidecar sends, in bytes (the runs API makes its page smaller to fit). */
const RUNS_ANSWER_MAX_BYTES = 1024 * 1024;
/**
 * Answers to all runs questions out at once, in total bytes: each answer's
 * budget is this over MAX_RUNS_QUERIES times the other sidecars (under
 * Redis's 32 MiB limit for a subscriber's unread output, up to 256 other
 * sidecars: past that, RUNS_ANSWER_MIN_BYTES each).
 */
const RUNS_ANSWERS_TOTAL_BYTES = 16 * 1024 * 1024;
/** The least an answer may take (a page of a few runs, or events). */
const RUNS_ANSWER_MIN_BYTES = 16 * 1024;
/** Presence intervals without a word from a sidecar before it counts as gone. */
const PEER_EXPIRY = 5;
/**
 * Presence intervals without this sidecar's own presence coming back before
 * its broker connections count as dead and are opened anew (a half-open
 * connection: the broker's host gone without a FIN looks up to the client
 * and takes publishes into the void). Under PEER_EXPIRY, so this sidecar
 * reconnects before the others give it up.
 */
const ECHO_EXPIRY = 3;
/** Queries whose wait ended before every sidecar answered, still taking late answers (for the report timeout). */
const MAX_LATE_QUERIES = 20_000;

/** A query whose wait ended before every sidecar answered: what a late answer needs (not what came in time). */
interface LateQuery {
  readonly user: string;
  readonly late: (a: ResumeAnswer) => void;
  readonly final: (s: ResumeSummary) => void;
  readonly summary: ResumeSummary;
  readonly from: Set<string>;
  readonly expected: number | undefined;
}

const emptyAnswer = (): ResumeAnswer => ({ events: new Map(), last: new Map(), held: new Map() });

/** Each run's events ascending, each seq once (two sidecars may both keep an event: its origin and an edge). */
function tidy(a: ResumeAnswer): ResumeAnswer {
  for (const [runId, evs] of a.events) {
    evs.sort((x, y) => x.seq - y.seq);
    a.events.set(runId, evs.filter((e, i) => i === 0 || evs[i - 1]!.seq !== e.seq));
  }
  return a;
}

interface Pending {
  readonly d: Delivery;
  readonly dest: string;
}

/** A relayed run at the edge: a stand-in record for its events, and the sidecar that judges it. */
class RemoteRun extends RunRecord {
  constructor(
    runId: string,
    traceId: string,
    openedAtMs: number,
    readonly origin: string,
  ) {
    super(runId, traceId, '', '', 0, openedAtMs);
  }
}

interface Peer {
  /** Users with a connection there. */
  readonly users: Set<string>;
  lastSeenMs: number;
}

type Outbox = Map<string, string[]>;

const isStr = (v: unknown, max = MAX_ID_CHARS): v is string => typeof v === 'string' && v.length <= max;
const isSeq = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

/** An event's two lines in a message (`ev`, `rp`): its routing array (parsed; undefined if not JSON) and its text. */
function* eventLines(lines: readonly string[]): Generator<[unknown, string]> {
  for (let i = 0; i + 1 < lines.length; i += 2) {
    let it: unknown;
    try {
      it = JSON.parse(lines[i]!);
    } catch {
      it = undefined;
    }
    yield [it, lines[i + 1]!];
  }
}

/** The part both event lines share: 8 items, [2] conversation or null, [3] run id, [4] trace id, [5] seq, [6] type, [7] flags; a JSON object text. */
function isEventLine(it: unknown[], text: string): boolean {
  return (
    it.length === 8 && (it[2] === null || isStr(it[2])) && isStr(it[3]) && isStr(it[4]) && isSeq(it[5]) && EVENT_TYPES.includes(it[6] as EventType) && isSeq(it[7]) &&
    text.length <= MAX_TEXT_CHARS && text[0] === '{'
  );
}

export class Fanout {
  readonly id: string;
  private readonly presenceChannel: string;
  private readonly resumeChannel: string;
  private readonly runsChannel: string;
  private readonly runsQueries = new Map<number, RunsQuery>();
  private readonly queries = new Map<number, ResumeQuery>();
  /** Queries still taking late answers until the report timeout after their wait (oldest first, with their ends). */
  private readonly lateQueries = new Map<number, LateQuery>();
  private readonly lateIds = new Fifo<number>();
  private readonly lateUntil = new NumberFifo();
  private nextQuery = 1;
  private readonly now: () => number;
  private readonly m: BrokerMetrics;
  private readonly peers = new Map<string, Peer>();
  /** Per user, the other sidecars with a connection of the user. */
  private readonly byUser = new Map<string, Set<string>>();
  private remoteEntries = 0;
  // Origin: deliveries sent to another sidecar, waiting for their outcome (ids in send order, with send times).
  private readonly pending = new Map<number, Pending>();
  private readonly pendingIds = new Fifo<number>();
  private readonly pendingAt = new NumberFifo();
  private nextId = 1;
  /** Origin: the other sidecars each remote delivery went to (so an `absent` answer tries the user's other sidecars once). */
  private readonly tried = new WeakMap<Delivery, string[]>();
  /** Origin: the sidecars each run's events went to, until the run ends (they are told it ended); the least recently sent forgotten first. */
  private readonly sentRuns = new BoundedMap<string, string[]>(100_000);
  /** Edge: the runs this sidecar relayed (their stand-in record and their origin, where acks go), the least recently relayed forgotten first. */
  private readonly runs = new BoundedMap<string, RemoteRun>(20_000);
  // Batches waiting for the microtask that publishes them.
  private readonly outEvents: Outbox = new Map();
  private readonly outEnds: Outbox = new Map();
  private readonly outEventIds = new Map<string, number[]>();
  private readonly outReports: Outbox = new Map();
  private readonly outAcks: Outbox = new Map();
  private readonly outResumed: Outbox = new Map();
  private joins = new Set<string>();
  private leaves = new Set<string>();
  private flushScheduled = false;
  private lastTickMs = 0;
  private lastExpireMs = 0;
  /** When this sidecar last heard its own presence back from the broker (or the broker came up). */
  private lastEchoMs = 0;
  /** Subscribed (`start`): before that, a broker status change is not acted on. */
  private started = false;
  /** Shutting down (`leave`): no more presence; events, reports and acks still flow until `close`. */
  private leaving = false;
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly untrack: Array<() => void>;
  /** Told when the pending table empties (`drain`). */
  private drained: (() => void) | undefined;
  private closed = false;

  constructor(
    private readonly broker: Broker,
    private readonly host: FanoutHost,
    private readonly o: FanoutOptions,
  ) {
    if (!INSTANCE_ID.test(o.instanceId)) throw new RangeError(`instance id "${o.instanceId}" must be 1-128 of A-Z a-z 0-9 . _ : -`);
    this.id = o.instanceId;
    this.now = o.now ?? Date.now;
    this.m = o.metrics;
    this.presenceChannel = `${o.prefix}:presence`;
    this.resumeChannel = `${o.prefix}:resume`;
    this.runsChannel = `${o.prefix}:runs`;
    this.untrack = [this.m.peers.track(() => this.peers.size), this.m.remoteUsers.track(() => this.remoteEntries), this.m.pending.track(() => this.pending.size)];
    broker.onStatus((up) => this.status(up));
    const every = (ms: number, f: () => void): void => {
      const t = setInterval(() => this.guard(f), ms);
      t.unref();
      this.timers.push(t);
    };
    every(o.presenceIntervalMillis, () => this.presenceTick());
    this.lastTickMs = this.lastExpireMs = this.now();
    const expireEvery = Math.max(10, Math.min(1000, Math.floor(o.reportTimeoutMillis / 4)));
    every(expireEvery, () => {
      // After a stall of this sidecar's own loop, outcomes may sit unread in the socket: skip a round, and
      // otherwise expire after the I/O already received is read.
      const now = this.now();
      const stalled = now - this.lastExpireMs > 2 * expireEvery;
      this.lastExpireMs = now;
      if (!stalled) setImmediate(() => this.guard(() => this.expirePending()));
    });
  }

  /** Subscribe to this sidecar's inbox and to presence; resolves once both are subscribed. */
  async start(): Promise<void> {
    await this.broker.subscribe(this.inbox(this.id), (msg) => this.guard(() => this.onInbox(msg)));
    await this.broker.subscribe(this.presenceChannel, (msg) => this.guard(() => this.onPresence(msg)));
    await this.broker.subscribe(this.resumeChannel, (msg) => this.guard(() => this.onResumeAsked(msg)));
    await this.broker.subscribe(this.runsChannel, (msg) => this.guard(() => this.onRunsAsked(msg)));
    this.started = true;
    if (this.broker.up) this.status(true);
  }

  private inbox(instance: string): string {
    return `${this.o.prefix}:i:${instance}`;
  }

  /** Run a broker callback: a fault is logged and counted, never thrown into the broker client. */
  private guard(f: () => void): void {
    try {
      f();
    } catch (err) {
      this.o.diag.repeated('fanout_fault', 'fanout', (n) => `${n} fault(s) handling broker messages: ${(err as Error).stack ?? String(err)}`);
    }
  }

  // ---- presence --------------------------------------------------------------

  /** The other sidecars with a connection of `user` (undefined: none, or the broker is down). */
  targetsOf(user: string): ReadonlySet<string> | undefined {
    if (this.byUser.size === 0 || !this.broker.up) return undefined;
    return this.byUser.get(user);
  }

  /**
   * A connection of `user` opened on this sidecar (every one, not only the
   * first: a new connection may take events another one did not, e.g. of
   * another conversation, so the origins send what they hold again).
   */
  userOnline(user: string): void {
    if (this.leaving) return;
    this.leaves.delete(user);
    this.joins.add(user);
    this.schedule();
  }

  /** The last connection of `user` on this sidecar closed. */
  userOffline(user: string): void {
    if (this.leaving) return;
    this.joins.delete(user);
    this.leaves.add(user);
    this.schedule();
  }

  private status(up: boolean): void {
    if (this.closed || this.leaving || !this.started) return;
    if (!up) {
      // What the others announced may have changed unseen: forget it; they announce it again when the broker is back.
      this.forgetPeers();
      this.o.diag.log('warn', 'fanout', 'broker connection lost: events of users connected to other sidecars are held until it is back');
      return;
    }
    this.o.diag.log('info', 'fanout', `broker connected as ${this.id}`);
    this.lastEchoMs = this.now();
    // Start from nothing: what was heard while this sidecar could not publish (and so could not send what
    // it holds) is heard again, as new, after the hello.
    this.forgetPeers();
    this.publishPresence('hello', []);
    this.sync();
  }

  private forgetPeers(): void {
    this.peers.clear();
    this.byUser.clear();
    this.remoteEntries = 0;
  }

  private presenceTick(): void {
    if (!this.broker.up || this.leaving) return;
    this.sync();
    const now = this.now();
    const stalled = now - this.lastTickMs > 1.5 * this.o.presenceIntervalMillis;
    this.lastTickMs = now;
    // This sidecar's own event loop stalled: the others' announcements are still waiting to be read.
    if (stalled) return;
    if (now - this.lastEchoMs > ECHO_EXPIRY * this.o.presenceIntervalMillis) {
      // Nothing this sidecar published came back: the connections look up but carry nothing. Open new ones;
      // meanwhile events of users on other sidecars are held (the broker is not up), as in an outage.
      this.m.reopened.inc();
      this.o.diag.log('warn', 'fanout', `none of this sidecar's presence came back from the broker in ${now - this.lastEchoMs} ms: connections presumed dead, opening new ones`);
      this.lastEchoMs = now;
      this.broker.reopen();
      return;
    }
    // A sidecar not heard from for PEER_EXPIRY intervals is gone (one that exits cleanly says bye, one whose
    // connection drops is seen by Redis: its inbox has no receiver). Its users' events are held meanwhile.
    // Single entries do not expire: a leave is not lost while the broker connection lasts, and an event
    // sent to a sidecar where the user is gone comes back `absent`.
    const cutoff = now - PEER_EXPIRY * this.o.presenceIntervalMillis;
    for (const [instance, peer] of this.peers) if (peer.lastSeenMs <= cutoff) this.dropPeer(instance);
  }

  /** Announce every local user (refreshes the others' entries), in batches. */
  private sync(): void {
    const users = [...this.host.localUsers()];
    if (users.length === 0) this.publishPresence('sync', []);
    for (let i = 0; i < users.length; i += MAX_BATCH) this.publishPresence('sync', users.slice(i, i + MAX_BATCH));
  }

  private publishPresence(kind: 'join' | 'leave' | 'sync' | 'hello' | 'bye', users: string[]): void {
    this.publish(this.presenceChannel, JSON.stringify({ k: kind, o: this.id, u: users }), 'presence', users.length, undefined);
  }

  private onPresence(raw: string): void {
    const msg = this.parse(raw, 'presence');
    if (msg?.o === this.id) {
      // Its own presence, back through the broker: both connections carry messages.
      this.lastEchoMs = this.now();
      return;
    }
    // While this sidecar cannot publish, what it hears is not acted on: it asks again (hello) once it can.
    if (msg === undefined || !this.broker.up) return;
    const instance = msg.o as string;
    const users = msg.u;
    if (!Array.isArray(users) || !users.every((u) => isStr(u)) || !['join', 'leave', 'sync', 'hello', 'bye'].includes(msg.k as string)) {
      this.invalid('presence message without a kind or a list of users');
      return;
    }
    if (msg.k === 'bye') {
      this.dropPeer(instance);
      return;
    }
    // (A `hello` keeps what that sidecar announced: it may only have reconnected to the broker, and its
    // connections still want their events. Restarted under the same id, its old entries get `absent`.)
    const now = this.now();
    let peer = this.peers.get(instance);
    if (peer === undefined) {
      peer = { users: new Set(), lastSeenMs: now };
      this.peers.set(instance, peer);
    }
    peer.lastSeenMs = now;
    if (msg.k === 'hello') {
      // Tell it who is here now rather than at the next interval.
      if (!this.leaving) this.sync();
      return;
    }
    for (const user of users as string[]) {
      if (msg.k === 'leave') {
        this.removeEntry(instance, peer, user);
        continue;
      }
      const known = peer.users.has(user);
      if (!known && this.remoteEntries >= this.o.maxRemoteUsers) {
        this.m.dropped.inc({ reason: 'presence_full' });
        continue;
      }
      peer.users.add(user);
      if (!known) {
        this.remoteEntries++;
        let set = this.byUser.get(user);
        if (set === undefined) this.byUser.set(user, (set = new Set()));
        set.add(instance);
      }
      // A new entry, or a new connection there (`join`): it may take what is held (a `sync` of a known entry only refreshes it).
      if (!known || msg.k === 'join') this.host.releaseHeldTo(user, instance);
    }
  }

  private removeEntry(instance: string, peer: Peer, user: string): void {
    if (!peer.users.delete(user)) return;
    this.remoteEntries--;
    const set = this.byUser.get(user);
    if (set === undefined) return;
    set.delete(instance);
    if (set.size === 0) this.byUser.delete(user);
  }

  private dropPeer(instance: string): void {
    const peer = this.peers.get(instance);
    if (peer === undefined) return;
    for (const user of [...peer.users]) this.removeEntry(instance, peer, user);
    this.peers.delete(instance);
  }

  // ---- origin: events out, outcomes and acks in -----------------------------

  /**
   * Send an event to another sidecar as one part of delivery `d` (the caller
   * counted it in `d.remaining`); its outcome comes back to `settleRemote`.
   */
  send(instance: string, ev: OutboundEvent, d: Delivery, late: boolean): void {
    if (this.closed) {
      queueMicrotask(() => this.host.settleRemote(d, false, 'shutdown'));
      return;
    }
    if (this.pending.size >= this.o.maxPending) {
      this.m.dropped.inc({ reason: 'pending_full' });
      queueMicrotask(() => this.host.settleRemote(d, false, 'broker_unconfirmed'));
      return;
    }
    const id = this.nextId++;
    this.pending.set(id, { d, dest: instance });
    const tried = this.tried.get(d);
    if (tried === undefined) this.tried.set(d, [instance]);
    else tried.push(instance);
    const runId = ev.runId;
    const dests = this.sentRuns.get(runId);
    if (dests === undefined) this.sentRuns.set(runId, [instance]);
    else {
      // A run still sending is the newest here: a long run is not pushed out by the many short ones after it.
      this.sentRuns.touch(runId);
      if (!dests.includes(instance)) dests.push(instance);
    }
    this.pendingIds.push(id);
    this.pendingAt.push(this.now());
    const flags = (late ? FLAG_LATE : 0) | (ev.run.endMs !== undefined ? FLAG_ENDED : 0);
    // Two lines: what the edge routes by, then the event's text as is (JSON text has no raw line break; the
    // hub's envelope escapes every control character), so the text is neither escaped nor parsed on the way.
    const entry = `${JSON.stringify([id, ev.user, ev.conversation ?? null, runId, ev.traceId, ev.seq, ev.type, flags])}\n${ev.payload}`;
    push(this.outEvents, instance, entry);
    let ids = this.outEventIds.get(instance);
    if (ids === undefined) this.outEventIds.set(instance, (ids = []));
    ids.push(id);
    this.schedule();
  }

  /** Origin: a run ended; the sidecars its events went to are told (after those events), so their resume window counts from now. */
  runEnded(runId: string): void {
    const dests = this.sentRuns.get(runId);
    if (dests === undefined) return;
    this.sentRuns.delete(runId);
    const item = JSON.stringify(runId);
    for (const dest of dests) push(this.outEnds, dest, item);
    this.schedule();
  }

  private expirePending(): void {
    this.expireLate(this.now());
    const cutoff = this.now() - this.o.reportTimeoutMillis;
    for (let at = this.pendingAt.peek(); at !== undefined && at <= cutoff; at = this.pendingAt.peek()) {
      this.pendingAt.shift();
      const id = this.pendingIds.shift()!;
      const p = this.pending.get(id);
      if (p === undefined) continue;
      this.pending.delete(id);
      this.m.dropped.inc({ reason: 'unconfirmed' });
      this.host.settleRemote(p.d, false, 'broker_unconfirmed');
    }
    this.checkDrained();
  }

  private checkDrained(): void {
    if (this.drained !== undefined && this.pending.size === 0) {
      this.drained();
      this.drained = undefined;
    }
  }

  /** Settle the pending deliveries `ids` (publish failed, nobody listens on that inbox, shutdown). */
  private failPending(ids: Iterable<number>, reason: DropReason | 'absent'): void {
    for (const id of ids) {
      const p = this.pending.get(id);
      if (p === undefined) continue;
      this.pending.delete(id);
      if (reason === 'absent') this.absent(p);
      else this.host.settleRemote(p.d, false, reason);
    }
    this.checkDrained();
  }

  /**
   * One remote part came back `absent` (that sidecar has no connection
   * taking the event any more). The user's other sidecars not tried yet for
   * this delivery get it now (the user moved); if there is none, the hub
   * holds the event again unless another part delivered it.
   */
  private absent(p: Pending): void {
    const d = p.d;
    const targets = this.targetsOf(d.ev.user);
    if (targets !== undefined && !this.closed) {
      const tried = this.tried.get(d) ?? [];
      for (const instance of targets) {
        if (tried.includes(instance)) continue;
        d.remaining++;
        this.send(instance, d.ev, d, d.late);
      }
    }
    this.host.settleRemote(d, false, 'absent');
  }

  private onReports(from: string, items: unknown): void {
    if (!Array.isArray(items)) return this.invalid('reports without a list');
    for (const it of items) {
      if (!Array.isArray(it) || !isSeq(it[0]) || !(it[1] === '' || it[1] === 'absent' || DROP_REASONS.includes(it[1]))) {
        this.invalid('a report that is not [id, "" | "absent" | drop reason]');
        continue;
      }
      const p = this.pending.get(it[0]);
      // Unknown: already timed out (counted then), or a duplicate.
      if (p === undefined || p.dest !== from) continue;
      this.pending.delete(it[0]);
      if (it[1] === 'absent') this.absent(p);
      else this.host.settleRemote(p.d, it[1] === '', it[1] === '' ? 'send_failed' : (it[1] as DropReason));
    }
    this.checkDrained();
  }

  private onAcks(items: unknown): void {
    if (!Array.isArray(items)) return this.invalid('acks without a list');
    for (const it of items) {
      if (!Array.isArray(it) || !isStr(it[0]) || !isStr(it[1]) || !isSeq(it[2])) {
        this.invalid('an ack that is not [run_id, user, seq]');
        continue;
      }
      this.host.ackRemote(it[0], it[1], it[2]);
    }
  }

  // ---- edge: events in, outcomes and acks out ------------------------------

  /** `lines`: the message's lines after its head, two per event (routing, then the event's text). */
  private onEvents(origin: string, lines: string[]): void {
    if (lines.length % 2 !== 0) this.invalid('an event without its text line');
    for (const [it, text] of eventLines(lines)) {
      if (!Array.isArray(it) || !isSeq(it[0]) || it[0] === 0 || !isStr(it[1]) || !isEventLine(it, text)) {
        this.invalid('an event that is not [id, user, conversation, run_id, trace_id, seq, type, flags] then its JSON text');
        continue;
      }
      const [id, user, conversation, runId, traceId, seq, type, flags] = it as [number, string, string | null, string, string, number, EventType, number];
      const run = this.relayedRun(runId, traceId, user, origin);
      if ((flags & FLAG_ENDED) !== 0 && run.endMs === undefined) run.endMs = this.now();
      // A record of its own, not in the run's list: the origin judges the run.
      const record = new EventRecord(seq, type, REMOTE_SPAN, run);
      this.host.deliverRemote(new RemoteEvent(record, conversation ?? undefined, text, origin, id, (flags & FLAG_LATE) !== 0));
    }
  }

  /** Edge: runs that ended (named after their last events, in the same message). */
  private onEnds(origin: string, ends: unknown): void {
    if (ends === undefined) return;
    if (!Array.isArray(ends)) return this.invalid('`end` that is not a list of run ids');
    for (const runId of ends) {
      if (!isStr(runId)) {
        this.invalid('an ended run id that is not a string');
        continue;
      }
      const run = this.runs.get(runId);
      if (run === undefined || run.origin !== origin) continue;
      run.endMs ??= this.now();
      this.host.runEndedRemote(runId);
    }
  }

  /** Edge: report an event's outcome to its origin (once). `reason` undefined: delivered. */
  report(ev: RemoteEvent, reason: DropReason | 'absent' | undefined): void {
    if (ev.reportId === 0) return;
    push(this.outReports, ev.origin, JSON.stringify([ev.reportId, reason ?? '']));
    ev.reportId = 0;
    this.schedule();
  }

  /**
   * A client that resumed here was written an event another sidecar judges
   * (a resume delivery: no outcome is awaited for it): that sidecar counts it
   * delivered, as it would a resume of its own (an earlier write may have
   * failed on the way).
   */
  reportResumed(ev: RemoteEvent): void {
    if (ev.origin === this.id) return;
    push(this.outResumed, ev.origin, JSON.stringify([ev.runId, ev.seq]));
    this.schedule();
  }

  /** Edge: a client acked a run this sidecar relayed; false if it relayed no such run. */
  forwardAck(runId: string, user: string, seq: number): boolean {
    const origin = this.runs.get(runId)?.origin;
    if (origin === undefined) {
      this.m.dropped.inc({ reason: 'unknown_run' });
      return false;
    }
    push(this.outAcks, origin, JSON.stringify([runId, user, seq]));
    this.schedule();
    return true;
  }

  // ---- the inbox -----------------------------------------------------------

  private onInbox(raw: string): void {
    // A JSON head; an `ev` message has its events on the lines after it.
    const nl = raw.indexOf('\n');
    const msg = this.parse(nl < 0 ? raw : raw.slice(0, nl), undefined);
    if (msg === undefined) return;
    const from = msg.o as string;
    switch (msg.k) {
      case 'ev':
        this.m.messages.inc({ direction: 'in', kind: 'events' });
        this.onEvents(from, nl < 0 ? [] : raw.slice(nl + 1).split('\n'));
        return this.onEnds(from, msg.end);
      case 'rep':
        this.m.messages.inc({ direction: 'in', kind: 'reports' });
        return this.onReports(from, msg.r);
      case 'ack':
        this.m.messages.inc({ direction: 'in', kind: 'acks' });
        return this.onAcks(msg.a);
      case 'rd':
        this.m.messages.inc({ direction: 'in', kind: 'reports' });
        if (!Array.isArray(msg.d)) return this.invalid('resume deliveries without a list');
        for (const it of msg.d) {
          if (!Array.isArray(it) || !isStr(it[0]) || !isSeq(it[1])) this.invalid('a resume delivery that is not [run_id, seq]');
          else this.host.deliveredByResume(it[0], it[1]);
        }
        return;
      case 'rp':
        this.m.messages.inc({ direction: 'in', kind: 'resumes' });
        return this.onResumeAnswer(from, msg, nl < 0 ? [] : raw.slice(nl + 1).split('\n'));
      case 'ra':
        this.m.messages.inc({ direction: 'in', kind: 'runs' });
        return this.onRunsAnswer(from, msg);
      default:
        this.invalid(`unknown message kind ${JSON.stringify(msg.k)?.slice(0, 40)}`);
    }
  }

  /** A message's JSON object with a valid sender (`o`), or undefined (counted as invalid). */
  private parse(raw: string, kind: BrokerMessageKind | undefined): Record<string, unknown> | undefined {
    let msg: unknown;
    try {
      msg = JSON.parse(raw);
    } catch {
      this.invalid('not JSON');
      return undefined;
    }
    if (!isObject(msg) || typeof msg.o !== 'string' || !INSTANCE_ID.test(msg.o)) {
      this.invalid('not an object with a sender id');
      return undefined;
    }
    if (kind !== undefined && msg.o !== this.id) this.m.messages.inc({ direction: 'in', kind });
    return msg;
  }

  private invalid(what: string): void {
    this.m.dropped.inc({ reason: 'invalid' });
    this.o.diag.repeated('fanout_invalid', 'fanout', (n) => `ignored ${n} invalid broker message(s) or item(s), latest: ${what}`);
  }

  // ---- resume across sidecars ---------------------------------------------------

  /** Can a resume be asked of the other sidecars now? */
  get canAsk(): boolean {
    return this.started && !this.leaving && !this.closed && this.broker.up && this.queries.size < MAX_QUERIES;
  }

  /**
   * How long a resume waits for the other sidecars: half the report timeout
   * (at most 1 s), so live events a connection holds back meanwhile are
   * still written before their origin gives up on their outcome. An answer
   * that comes later still counts (`late`).
   */
  get resumeWaitMillis(): number {
    return Math.min(1000, Math.floor(this.o.reportTimeoutMillis / 2));
  }

  /**
   * A client of `user` resumes runs this sidecar does not have (or all its
   * runs): ask every other sidecar for what it keeps. `done` is called once,
   * when every sidecar answered or `resumeWaitMillis` passed, with what came.
   */
  askResume(
    user: string,
    runs: Readonly<Record<string, number>>,
    all: boolean,
    skip: readonly string[],
    done: (a: ResumeAnswer, complete: boolean) => void,
    late: (a: ResumeAnswer) => void,
    final: (s: ResumeSummary) => void,
  ): void {
    const q: ResumeQuery = { user, done, late, final, answer: emptyAnswer(), from: new Set(), expected: undefined, timer: undefined };
    const id = this.nextQuery++;
    this.queries.set(id, q);
    this.ask(q, this.resumeChannel, JSON.stringify({ k: 'rs', o: this.id, q: id, u: user, r: runs, all, skip }), 'resumes', this.resumeWaitMillis, () => this.finishQuery(id));
  }

  /**
   * Publish a question to every other sidecar; `finish` (idempotent) runs
   * once all that will answer did, after `waitMillis` (once the I/O already
   * received is read: answers may sit in the socket after a stall), or at
   * once if the question cannot be published. A broker that does not count
   * receivers leaves only the wait.
   */
  private ask(q: Question, channel: string, message: string, kind: BrokerMessageKind, waitMillis: number, finish: () => void): void {
    q.timer = setTimeout(() => setImmediate(() => this.guard(finish)), waitMillis);
    q.timer.unref();
    this.m.messages.inc({ direction: 'out', kind });
    this.broker.publish(channel, message).then(
      (receivers) =>
        this.guard(() => {
          q.expected = typeof receivers === 'number' ? receivers - 1 : undefined;
          if (allAnswered(q)) finish();
        }),
      () => this.guard(finish),
    );
  }

  private finishQuery(id: number): void {
    const q = this.queries.get(id);
    if (q === undefined) return;
    this.queries.delete(id);
    clearTimeout(q.timer);
    const complete = allAnswered(q);
    // Not every sidecar answered in time: a slow one's answer is still sent on when it comes, and what is
    // missing is told once no more answers are taken.
    if (!complete && !this.closed) {
      if (this.lateQueries.size >= MAX_LATE_QUERIES) this.expireLate(Infinity);
      this.lateQueries.set(id, { user: q.user, late: q.late, final: q.final, summary: { last: q.answer.last, held: q.answer.held }, from: q.from, expected: q.expected });
      this.lateIds.push(id);
      this.lateUntil.push(this.now() + this.o.reportTimeoutMillis);
    }
    q.done(tidy(q.answer), complete || this.closed);
  }

  /** Stop taking late answers for queries whose time is up (`nowMs`: Infinity for the oldest one), and tell what they said. */
  private expireLate(nowMs: number): void {
    for (let until = this.lateUntil.peek(); until !== undefined && (until <= nowMs || nowMs === Infinity); until = this.lateUntil.peek()) {
      this.lateUntil.shift();
      const id = this.lateIds.shift()!;
      const lq = this.lateQueries.get(id);
      if (lq === undefined) continue;
      this.lateQueries.delete(id);
      lq.final(lq.summary);
      if (nowMs === Infinity) return;
    }
  }

  /** Another sidecar asks what this one retains for a resume: answer in its inbox (an empty answer too, so it can count). */
  private onResumeAsked(raw: string): void {
    const msg = this.parse(raw, undefined);
    if (msg === undefined || msg.o === this.id || this.closed) return;
    this.m.messages.inc({ direction: 'in', kind: 'resumes' });
    const runs = msg.r;
    if (
      !isSeq(msg.q) || !isStr(msg.u) || typeof msg.all !== 'boolean' || runs === null || typeof runs !== 'object' || Array.isArray(runs) ||
      !Object.values(runs).every(isSeq) || !Array.isArray(msg.skip) || !msg.skip.every((x) => isStr(x))
    ) {
      this.invalid('a resume request that is not {q, u, r: {run_id: seq}, all, skip: [run_id]}');
      return;
    }
    const lines: string[] = [];
    const kept = this.host.keptForResume(msg.u, runs as Record<string, number>, msg.all, new Set(msg.skip as string[]));
    let chars = 0;
    for (const ev of kept.events) {
      const origin = ev instanceof RemoteEvent ? ev.origin : this.id;
      const line = `${JSON.stringify([origin, ev.user, ev.conversation ?? null, ev.runId, ev.traceId, ev.seq, ev.type, ev.run.endMs !== undefined ? FLAG_ENDED : 0])}\n${ev.payload}`;
      // Past the cap the rest stays out: the asker reports it as a hole (it knows each run's last seq).
      if (chars + line.length > MAX_ANSWER_CHARS) break;
      chars += line.length;
      lines.push(line);
    }
    const held: Record<string, number[]> = {};
    for (const [runId, seqs] of Object.entries(kept.held)) held[runId] = seqs.slice(0, MAX_HELD_PER_RUN);
    const head = JSON.stringify({ k: 'rp', o: this.id, q: msg.q, last: kept.last, held });
    this.publish(this.inbox(msg.o as string), lines.length === 0 ? head : `${head}\n${lines.join('\n')}`, 'resumes', lines.length, undefined);
  }

  private onResumeAnswer(from: string, msg: Record<string, unknown>, lines: string[]): void {
    const id = msg.q;
    const last = msg.last;
    const held = msg.held ?? {};
    if (
      !isSeq(id) || !isObject(last) || !Object.values(last).every(isSeq) || !isObject(held) ||
      !Object.values(held).every((v) => Array.isArray(v) && v.length <= MAX_HELD_PER_RUN && v.every(isSeq))
    ) {
      this.invalid('a resume answer without its query id, last seqs and held seqs');
      return;
    }
    const q: ResumeQuery | LateQuery | undefined = this.queries.get(id) ?? this.lateQueries.get(id);
    if (q === undefined) return; // far too late, or never asked
    const late = !this.queries.has(id);
    if (q.from.has(from)) return; // twice
    // A late answer is handed on alone (what came in time was handed on already).
    const into = late ? emptyAnswer() : (q as ResumeQuery).answer;
    for (const [it, text] of eventLines(lines)) {
      if (!Array.isArray(it) || !isStr(it[0]) || !INSTANCE_ID.test(it[0]) || it[1] !== q.user || !isEventLine(it, text)) {
        this.invalid('a resumed event that is not [origin, user, conversation, run_id, trace_id, seq, type, flags] then its JSON text');
        continue;
      }
      const [origin, user, conversation, runId, traceId, seq, type, flags] = it as [string, string, string | null, string, string, number, EventType, number];
      let evs = into.events.get(runId);
      if (evs === undefined) into.events.set(runId, (evs = []));
      const run = this.relayedRun(runId, traceId, user, origin);
      if ((flags & FLAG_ENDED) !== 0) run.endMs ??= this.now();
      evs.push(new RemoteEvent(new EventRecord(seq, type, REMOTE_SPAN, run), conversation ?? undefined, text, origin, 0, true));
    }
    absorb(into, Object.entries(last as Record<string, number>), Object.entries(held as Record<string, number[]>));
    q.from.add(from);
    if (late) {
      const lq = q as LateQuery;
      absorb(lq.summary, into.last, into.held);
      lq.late(tidy(into));
      if (allAnswered(lq) && this.lateQueries.delete(id)) lq.final(lq.summary);
      return;
    }
    if (allAnswered(q)) this.finishQuery(id);
  }

  /** The stand-in record of a run relayed here (acks go to its origin). */
  private relayedRun(runId: string, traceId: string, user: string, origin: string): RemoteRun {
    let run = this.runs.get(runId);
    if (run === undefined || run.user !== user || run.origin !== origin) {
      run = new RemoteRun(runId, traceId, this.now(), origin);
      run.user = user;
      this.runs.set(runId, run);
    } else this.runs.touch(runId); // still relaying: a long run outlives the many short ones relayed after it
    return run;
  }

  // ---- publishing ------------------------------------------------------------

  private schedule(): void {
    if (this.flushScheduled || this.closed) return;
    this.flushScheduled = true;
    queueMicrotask(() => this.guard(() => this.flush()));
  }

  /** Publish every batch gathered since the last flush. */
  flush(): void {
    this.flushScheduled = false;
    if (this.joins.size > 0 || this.leaves.size > 0) {
      const joins = [...this.joins];
      const leaves = [...this.leaves];
      this.joins = new Set();
      this.leaves = new Set();
      for (let i = 0; i < joins.length; i += MAX_BATCH) this.publishPresence('join', joins.slice(i, i + MAX_BATCH));
      for (let i = 0; i < leaves.length; i += MAX_BATCH) this.publishPresence('leave', leaves.slice(i, i + MAX_BATCH));
    }
    const from = JSON.stringify(this.id);
    for (const [dest, entries] of this.outEvents) {
      const ids = this.outEventIds.get(dest)!;
      for (let i = 0; i < entries.length; i += MAX_BATCH) {
        const batchIds = ids.slice(i, i + MAX_BATCH);
        // Runs that ended ride on the last message to that sidecar, after their events.
        const last = i + MAX_BATCH >= entries.length;
        const ends = last ? this.outEnds.get(dest) : undefined;
        if (last) this.outEnds.delete(dest);
        const head = ends === undefined ? `{"k":"ev","o":${from}}` : `{"k":"ev","o":${from},"end":[${ends.join(',')}]}`;
        this.publish(this.inbox(dest), `${head}\n${entries.slice(i, i + MAX_BATCH).join('\n')}`, 'events', batchIds.length, batchIds, dest);
      }
    }
    for (const [dest, ends] of this.outEnds) {
      for (let i = 0; i < ends.length; i += MAX_BATCH) this.publish(this.inbox(dest), `{"k":"ev","o":${from},"end":[${ends.slice(i, i + MAX_BATCH).join(',')}]}`, 'events', 0, undefined);
    }
    this.outEvents.clear();
    this.outEventIds.clear();
    this.outEnds.clear();
    this.publishAll(this.outReports, 'rep', 'r', 'reports');
    this.publishAll(this.outResumed, 'rd', 'd', 'reports');
    this.publishAll(this.outAcks, 'ack', 'a', 'acks');
  }

  private publishAll(box: Outbox, k: string, field: string, kind: BrokerMessageKind): void {
    for (const [dest, entries] of box) {
      for (let i = 0; i < entries.length; i += MAX_BATCH) {
        const part = entries.slice(i, i + MAX_BATCH);
        this.publish(this.inbox(dest), `{"k":"${k}","o":${JSON.stringify(this.id)},"${field}":[${part.join(',')}]}`, kind, part.length, undefined);
      }
    }
    box.clear();
  }

  /**
   * Publish one message of `items` items. For events (`ids`): if it cannot
   * be published (the broker is down), or nobody listens on the inbox (Redis
   * says 0 receivers: that sidecar is gone), they come back `absent`: tried
   * on the user's other sidecars, or held again here.
   */
  private publish(channel: string, message: string, kind: BrokerMessageKind, items: number, ids: number[] | undefined, dest?: string): void {
    const failed = (): void => {
      this.m.dropped.inc({ reason: 'publish_failed' }, Math.max(1, items));
      if (ids !== undefined) this.failPending(ids, 'absent');
    };
    if (!this.broker.up) {
      failed();
      return;
    }
    this.m.messages.inc({ direction: 'out', kind });
    this.broker.publish(channel, message).then(
      (receivers) => {
        if (ids === undefined || receivers !== 0 || dest === undefined) return;
        this.guard(() => {
          this.dropPeer(dest);
          this.failPending(ids, 'absent');
        });
      },
      () => this.guard(failed),
    );
  }

  /**
   * Shutdown, first step: say goodbye (the others stop sending here and
   * forget this sidecar's users) and stop announcing. Events, outcomes and
   * acks still flow until `close`.
   */
  leave(): void {
    if (this.leaving || this.closed) return;
    this.leaving = true;
    this.joins.clear();
    this.leaves.clear();
    if (this.broker.up) this.publishPresence('bye', []);
  }

  /** Resolves when no delivery awaits its outcome any more, or after `timeoutMillis`. */
  async drain(timeoutMillis: number): Promise<void> {
    if (this.pending.size === 0 || this.closed) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      new Promise<void>((r) => (this.drained = r)),
      new Promise<void>((r) => {
        timer = setTimeout(r, timeoutMillis);
      }),
    ]);
    clearTimeout(timer);
    this.drained = undefined;
  }

  // ---- runs API across sidecars --------------------------------------------------

  /**
   * Ask every other sidecar a runs API question (the runs it keeps that
   * match, or one run); resolves with their answers when all answered or
   * after RUNS_WAIT_MILLIS. Undefined when no question can go out (the
   * broker is down); `busy` when MAX_RUNS_QUERIES are out already.
   */
  askRuns(question: unknown): Promise<RunsAnswers> | 'busy' | undefined {
    if (!this.started || this.closed || !this.broker.up) return undefined;
    if (this.runsQueries.size >= MAX_RUNS_QUERIES) {
      this.m.dropped.inc({ reason: 'runs_busy' });
      return 'busy';
    }
    const budget = Math.max(RUNS_ANSWER_MIN_BYTES, Math.min(RUNS_ANSWER_MAX_BYTES, Math.floor(RUNS_ANSWERS_TOTAL_BYTES / (MAX_RUNS_QUERIES * Math.max(1, this.peers.size)))));
    const id = this.nextQuery++;
    return new Promise<RunsAnswers>((done) => {
      const q: RunsQuery = { answers: [], from: new Set(), expected: undefined, timer: undefined, done };
      this.runsQueries.set(id, q);
      this.ask(q, this.runsChannel, JSON.stringify({ k: 'rq', o: this.id, q: id, p: question, m: budget }), 'runs', RUNS_WAIT_MILLIS, () => this.finishRuns(id));
    });
  }

  private finishRuns(id: number): void {
    const q = this.runsQueries.get(id);
    if (q === undefined) return;
    this.runsQueries.delete(id);
    clearTimeout(q.timer);
    q.done({ answers: q.answers, missing: q.expected === undefined ? -1 : Math.max(0, q.expected - q.from.size) });
  }

  /** Another sidecar's runs API asks: answer in its inbox (nothing found too, so it can count). */
  private onRunsAsked(raw: string): void {
    const msg = this.parse(raw, undefined);
    if (msg === undefined || msg.o === this.id || this.closed) return;
    this.m.messages.inc({ direction: 'in', kind: 'runs' });
    if (!isSeq(msg.q)) {
      this.invalid('a runs question without a query id');
      return;
    }
    const budget = isSeq(msg.m) ? Math.max(RUNS_ANSWER_MIN_BYTES, Math.min(RUNS_ANSWER_MAX_BYTES, msg.m)) : RUNS_ANSWER_MAX_BYTES;
    let text = JSON.stringify({ k: 'ra', o: this.id, q: msg.q, a: this.host.runsAsked(msg.p, budget) ?? null });
    // The runs API fits its page to the budget; what still does not fit (one huge run summary) goes as nothing.
    if (Buffer.byteLength(text, 'utf8') > budget + 4096) text = JSON.stringify({ k: 'ra', o: this.id, q: msg.q, a: null, big: true });
    this.publish(this.inbox(msg.o as string), text, 'runs', 1, undefined);
  }

  private onRunsAnswer(from: string, msg: Record<string, unknown>): void {
    if (!isSeq(msg.q)) return this.invalid('a runs answer without a query id');
    const q = this.runsQueries.get(msg.q);
    if (q === undefined || q.from.has(from)) return; // too late, or twice
    q.from.add(from);
    q.answers.push({ from, answer: msg.a ?? null });
    if (allAnswered(q)) this.finishRuns(msg.q);
  }

  /** Shutdown, last step: publish what is batched, settle what is still pending as `shutdown`, close the broker. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.leave();
    for (const t of this.timers) clearInterval(t);
    for (const u of this.untrack) u();
    this.flush();
    for (const id of [...this.queries.keys()]) this.finishQuery(id);
    for (const id of [...this.runsQueries.keys()]) this.finishRuns(id);
    this.closed = true;
    for (const lq of this.lateQueries.values()) lq.final(lq.summary);
    this.lateQueries.clear();
    this.lateIds.clear();
    this.lateUntil.clear();
    this.failPending([...this.pending.keys()], 'shutdown');
    this.pendingIds.clear();
    this.pendingAt.clear();
    this.forgetPeers();
    await this.broker.close();
  }
}

function push(box: Outbox, dest: string, entry: string): void {
  const list = box.get(dest);
  if (list === undefined) box.set(dest, [entry]);
  else list.push(entry);
}
