import { TracewireError } from '../errors/errors.js';
import { Fifo, NumberFifo } from '../util/Fifo.js';
import type { DropReason, EventType, Metrics, Verdict } from './Metrics.js';
import { AuditMatcher } from './AuditMatcher.js';
import { EV_DELIVERED, EV_DROPPED, EV_HELD, EV_PENDING, Judgement, RunRecord, type AuditOutcome, type EventRecord, type ExplainContext, type ForcedCause, type SpanSummary } from './RunRecord.js';
import { UNROUTABLE_USER } from '../conventions/classify.js';

export interface RunLedgerOptions {
  readonly mode: 'emit' | 'audit';
  readonly graceMillis: number;
  readonly runTimeoutMillis: number;
  readonly runsMaxCount: number;
  /** Estimated bytes of judged runs kept (see `keptBytesOf`); the earliest judged go past it. Default: no byte bound. */
  readonly runsMaxBytes?: number;
  readonly runsMaxAgeMillis: number;
  readonly metrics: Metrics;
  /** Called when a run is judged without its top-level span having ended (abandoned/evicted/interrupted). */
  readonly onForget?: (record: RunRecord) => void;
  /** Called after every verdict (tests, logs). */
  readonly onVerdict?: (record: RunRecord) => void;
  /** Called after every verdict, for tracewire's own components (the bridges let go of judged runs). */
  readonly onJudged?: (record: RunRecord) => void;
  readonly now?: () => number;
}

export interface RunQuery {
  /** A verdict, or `in_flight` for runs not judged yet. */
  readonly verdict?: string;
  /**
   * Top-level agent name (exact), or the `agent` label a judged run was
   * counted under in tracewire_runs_total (`other`, a name cut to 64
   * characters, `unknown`), so dashboard links from that label find its runs.
   */
  readonly agent?: string;
  /** User id (exact). */
  readonly user?: string;
  /** Runs that started at or after this time (epoch ms). */
  readonly sinceMs?: number;
  /** Runs that started at or before this time (epoch ms). */
  readonly untilMs?: number;
  /** Page size, 1..500, default 50. */
  readonly limit?: number;
  /** Opaque cursor from a previous page (`next_cursor`). */
  readonly cursor?: string;
}


export const LIST_DEFAULT_LIMIT = 50;
export const LIST_MAX_LIMIT = 500;

/**
 * The run ledger: in-flight runs, their delivery outcomes, verdicts after the
 * grace period, and a bounded store of judged runs for the runs API.
 *
 * Lifecycle of a run: `open()` when its top-level agent span starts;
 * `ended()` when that span ends, then the verdict comes `graceMillis` later
 * (late write callbacks and audit span events still count until then). A
 * run whose top-level span has not ended `runTimeoutMillis` after it was
 * opened is judged `abandoned`; one evicted by the bridge's bounded state is
 * judged at once (its undelivered events get reason `evicted`); at shutdown
 * the runs still in flight are judged `interrupted`.
 *
 * Retention (memory is bounded):
 * - In-flight runs: bounded by the bridge's `maxInFlightRuns` (the oldest is
 *   evicted) and by time (`runTimeoutMillis`, then `graceMillis`).
 * - Judged runs are kept for the runs API and the inspector: at most
 *   `runsMaxCount` runs and `runsMaxBytes` estimated bytes (the earliest
 *   judged is dropped first; the last one judged always stays), and each for
 *   at most `runsMaxAgeMillis` after its verdict. An expired run disappears from
 *   `get()`/`list()` at once; its memory is released at the next sweep
 *   (every min(1 s, runTimeoutMillis / 4)). Metrics are never retracted.
 * - The verdict queue holds ended runs for `graceMillis` only; the list index
 *   holds one entry per kept run plus a bounded number of dead entries that
 *   are compacted away.
 * - Each RunRecord is itself bounded by the bridge (`maxSpansPerRun` spans,
 *   twice that many events).
 *
 * Outcomes after the verdict: the verdict and its counts never change. An
 * event still held for a user with no connection at verdict time counts as
 * undelivered (`no_subscriber`); if that user connects within the hold window
 * it is still delivered and counted in `tracewire_events_delivered_total` and
 * `..._delivered_late_total`, otherwise it is counted as dropped when the hold
 * expires. Outcomes for events the verdict already dropped are ignored, so
 * each event is counted delivered or dropped once (except events re-sent on
 * resume before the verdict, which may be counted as both).
 */
export class RunLedger {
  private readonly inFlight = new Map<string, RunRecord>();
  /** Ended runs awaiting their verdict, and when each is due (monotonic: end + constant grace). */
  private readonly due = new Fifo<RunRecord>();
  private readonly dueAt = new NumberFifo();
  /** Judged runs in judgement order (oldest first): count and age eviction pop from the front. */
  private readonly judged = new Map<string, RunRecord>();
  /**
   * Every kept run (in flight or judged), sorted ascending by (startMs, openSeq),
   * for newest-first pages without sorting. Entries for runs no longer kept
   * stay until compaction (`indexDead` counts them).
   */
  private index: RunRecord[] = [];
  private indexDead = 0;
  /** Runs were appended out of start order since the last sort: list() sorts first (a nearly sorted array sorts in about O(n)). */
  private indexUnsorted = false;
  /** Judged runs in judgement order (stale entries skipped): count and age eviction take from its front. */
  private readonly judgedOrder = new Fifo<RunRecord>();
  /** Estimated bytes of the runs in `judged` (see `keptBytesOf`). */
  private keptBytes = 0;
  /** Each judged run's `keptBytesOf`, computed once when it was judged, by run id (the runs of `judged`). */
  private readonly judgedBytes = new Map<string, number>();
  /**
   * The `agent` label a judged run was counted under in tracewire_runs_total,
   * for the runs whose label is not their agent name (`other` past
   * --max-agent-labels, a name cut to 64 characters, `unknown`): the agent
   * filter accepts it, so a dashboard link built from the label lists those
   * runs. Weak: an entry goes with its run.
   */
  private readonly agentLabels = new WeakMap<RunRecord, string>();
  private openCounter = 0;
  private timer: NodeJS.Timeout | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private readonly now: () => number;
  private closed = false;
  private readonly untrack: Array<() => void>;

  constructor(private readonly opts: RunLedgerOptions) {
    this.now = opts.now ?? Date.now;
    const m = opts.metrics;
    this.untrack = [m.runsInFlight.track(() => this.inFlight.size), m.runsKept.track(() => this.judged.size), m.runsKeptBytes.track(() => this.keptBytes)];
    const sweepEvery = Math.max(50, Math.min(1000, Math.floor(opts.runTimeoutMillis / 4)));
    this.sweepTimer = setInterval(() => this.sweep(), sweepEvery);
    this.sweepTimer.unref();
  }

  get inFlightCount(): number {
    return this.inFlight.size;
  }

  /** Judged runs currently kept (including ones past their age until the next sweep). */
  get judgedCount(): number {
    return this.judged.size;
  }

  /** Entries of the list index, live and dead (tests check it stays bounded). */
  get indexSize(): number {
    return this.index.length;
  }

  open(record: RunRecord): void {
    const prev = this.inFlight.get(record.runId);
    if (prev === record) return;
    if (prev !== undefined) this.indexDead++; // same run id opened again: the old record is unreachable
    this.inFlight.set(record.runId, record);
    record.openSeq = ++this.openCounter;
    this.indexInsert(record);
  }

  /** A kept run by id (in flight, or judged and within retention). */
  get(runId: string): RunRecord | undefined {
    const r = this.inFlight.get(runId);
    if (r !== undefined) return r;
    const j = this.judged.get(runId);
    return j !== undefined && !this.expired(j, this.now()) ? j : undefined;
  }

  /** The run's top-level agent span ended: judge after the grace period. */
  ended(record: RunRecord, endMs: number): void {
    if (record.judgement || record.endMs !== undefined) return;
    record.endMs = endMs;
    this.due.push(record);
    this.dueAt.push(this.now() + this.opts.graceMillis);
    this.arm();
  }

  markDelivered(run: RunRecord, ev: EventRecord, late: boolean): void {
    if (ev.state === EV_DELIVERED) return;
    // After the verdict only a held event can still be delivered (the user connected late);
    // an event the verdict dropped stays dropped so it is not counted twice.
    if (run.judgement !== undefined && ev.state !== EV_HELD) return;
    ev.state = EV_DELIVERED;
    ev.reason = undefined;
    ev.deliveredAtMs = this.now();
    if (ev.seq <= run.ackedUpTo) ev.acked = true;
    this.opts.metrics.eventsDelivered.inc({ type: ev.type });
    if (late || run.judgement !== undefined) {
      ev.late = true;
      this.opts.metrics.eventsDeliveredLate.inc({ type: ev.type });
    }
  }

  markHeld(ev: EventRecord): void {
    if (ev.state === EV_PENDING) ev.state = EV_HELD;
  }

  markDropped(run: RunRecord, ev: EventRecord, reason: DropReason): void {
    if (ev.state === EV_DELIVERED || ev.state === EV_DROPPED) return;
    ev.state = EV_DROPPED;
    ev.reason = reason;
    this.opts.metrics.eventsDropped.inc({ type: ev.type, reason });
    void run;
  }

  /**
   * Audit mode: the `agent.event` outcomes the backend recorded for a run,
   * each on the nearest lifecycle span, given to the expected events they
   * report on (see AuditMatcher); an outcome that matches none only counts.
   * Judged as in emit mode: an event is delivered when at least one outcome
   * for it is `delivered` (one per connection: `connections` counts them),
   * else dropped with the reason that names the failure best.
   */
  private recordAudit(run: RunRecord, outcomes: readonly AuditOutcome[]): void {
    const audit = (run.audit ??= { outcomes: 0, pending: undefined });
    audit.outcomes += outcomes.length;
    const matched = new AuditMatcher(run).matchAll(outcomes);
    let drops: Map<EventRecord, DropReason> | undefined;
    for (let i = 0; i < outcomes.length; i++) {
      const ev = matched[i];
      if (ev === undefined) continue;
      const o = outcomes[i]!;
      if (o.outcome === 'delivered') {
        ev.connections++;
        this.markDelivered(run, ev, false);
      } else {
        drops ??= new Map();
        drops.set(ev, betterReason(drops.get(ev), o.reason ?? 'reported_dropped'));
      }
    }
    // After every delivery is known, so a drop never outranks a delivery of the same event.
    if (drops !== undefined) for (const [ev, reason] of drops) this.markDropped(run, ev, reason);
  }

  /** Audit mode: match the outcomes recorded so far (once, before anything else decides the run's events). */
  private drainAudit(record: RunRecord): void {
    const pending = record.audit?.pending;
    if (pending === undefined) return;
    record.audit!.pending = undefined;
    this.recordAudit(record, pending);
  }

  /** Judge now, with the given verdict forced (abandoned, interrupted) or computed. */
  judge(record: RunRecord, forced?: Verdict): Judgement {
    return this.judgeWith(record, forced, forced === 'abandoned' ? 'timeout' : undefined);
  }

  private judgeWith(record: RunRecord, forced: Verdict | undefined, cause: ForcedCause | undefined): Judgement {
    if (record.judgement) return record.judgement;
    this.drainAudit(record);
    const j = computeJudgement(record, this.opts.mode, forced, this.now(), this.opts.runTimeoutMillis, cause);
    record.judgement = j;
    if (this.inFlight.get(record.runId) === record) this.inFlight.delete(record.runId);
    // Events that never got an outcome are dropped now with the reason the verdict gave them.
    const reason = pendingReason(this.opts.mode, forced, record);
    for (const ev of record.events) {
      if (ev.state === EV_PENDING) {
        ev.state = EV_DROPPED;
        ev.reason = reason;
        this.opts.metrics.eventsDropped.inc({ type: ev.type, reason });
      }
    }
    const agentLabel = this.opts.metrics.agentLabel.value(record.agent);
    if (agentLabel !== record.agent) this.agentLabels.set(record, agentLabel);
    this.opts.metrics.runs.inc({ verdict: j.verdict, reason: j.mainReason, agent: agentLabel });
    this.retain(record);
    if (forced) this.opts.onForget?.(record);
    this.opts.onJudged?.(record);
    try {
      this.opts.onVerdict?.(record);
    } catch {
      this.opts.metrics.internalErrors.inc({ component: 'ledger' });
    }
    return j;
  }

  /**
   * Evict an in-flight run (bounded state): judged now, its undelivered events
   * dropped as `evicted`. Audit mode: the outcomes the backend recorded so far
   * count first, as deliveries written before an eviction do in emit mode.
   */
  evict(record: RunRecord): void {
    if (record.judgement) return;
    this.drainAudit(record);
    for (const ev of record.events) if (ev.state === EV_PENDING || ev.state === EV_HELD) this.markDropped(record, ev, 'evicted');
    if (record.endMs === undefined) this.judgeWith(record, 'abandoned', 'evicted');
    else this.judgeWith(record, undefined, undefined);
  }

  /** Shutdown: every in-flight run gets `interrupted`; ended runs awaiting grace are judged as they stand. */
  interruptAll(): void {
    for (const r of this.due) if (!r.judgement) this.judge(r);
    this.due.clear();
    this.dueAt.clear();
    for (const r of [...this.inFlight.values()]) this.judge(r, 'interrupted');
  }

  /**
   * Kept runs, newest first (by start time, then open order), filtered, one
   * page at a time. The cursor is the key of the last run returned, so pages
   * neither repeat nor skip runs while new runs arrive (they sort before it).
   * Cost: O(log n + runs scanned), no sort per call.
   */
  list(q: RunQuery): { runs: RunRecord[]; nextCursor: string | undefined } {
    const limit = Math.min(Math.max(q.limit ?? LIST_DEFAULT_LIMIT, 1), LIST_MAX_LIMIT);
    if (this.indexUnsorted) {
      this.index.sort(byKey);
      this.indexUnsorted = false;
    }
    const a = this.index;
    let end = a.length; // exclusive: scan a[end-1] down to a[0]
    if (q.cursor !== undefined && q.cursor !== '') {
      const key = decodeCursor(q.cursor);
      if (key === undefined) throw new TracewireError('TW_BAD_QUERY', 'cursor', 'use next_cursor from the previous page');
      end = indexAfter(a, key.startMs, key.openSeq - 1);
    }
    if (q.untilMs !== undefined) end = Math.min(end, indexAfter(a, q.untilMs, Number.POSITIVE_INFINITY));
    const now = this.now();
    const out: RunRecord[] = [];
    for (let i = end - 1; i >= 0; i--) {
      const r = a[i]!;
      if (q.sinceMs !== undefined && r.startMs < q.sinceMs) break;
      if (!this.isKept(r, now)) continue;
      if (q.verdict !== undefined && (r.judgement?.verdict ?? 'in_flight') !== q.verdict) continue;
      if (q.agent !== undefined && r.agent !== q.agent && this.agentLabels.get(r) !== q.agent) continue;
      if (q.user !== undefined && r.user !== q.user) continue;
      if (out.length === limit) {
        const last = out[out.length - 1]!;
        return { runs: out, nextCursor: encodeCursor(last.startMs, last.openSeq) };
      }
      out.push(r);
    }
    return { runs: out, nextCursor: undefined };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const u of this.untrack) u();
    if (this.timer) clearTimeout(this.timer);
    if (this.sweepTimer) clearInterval(this.sweepTimer);
  }

  // ---- internals --------------------------------------------------------------

  private expired(r: RunRecord, now: number): boolean {
    return r.judgement !== undefined && r.judgement.judgedAtMs + this.opts.runsMaxAgeMillis <= now;
  }

  private isKept(r: RunRecord, now: number): boolean {
    if (r.judgement === undefined) return this.inFlight.get(r.runId) === r;
    return this.judged.get(r.runId) === r && !this.expired(r, now);
  }

  private retain(record: RunRecord): void {
    const prev = this.judged.get(record.runId);
    if (prev !== undefined) {
      // Same run id judged again (trace evicted and seen anew): keep Map order = judgement order.
      this.forgetJudged(prev);
      if (prev === record) this.indexDead--; // it stays in the index
    }
    this.judged.set(record.runId, record);
    const bytes = keptBytesOf(record);
    this.judgedBytes.set(record.runId, bytes);
    this.keptBytes += bytes;
    this.judgedOrder.push(record);
    // Oldest first from a queue: finding a Map's first live key is O(deleted entries) in V8.
    const maxCount = this.opts.runsMaxCount;
    const maxBytes = this.opts.runsMaxBytes ?? Number.POSITIVE_INFINITY;
    while (this.judgedOrder.length > 0 && (this.judged.size > maxCount || (this.keptBytes > maxBytes && this.judged.size > 1))) {
      const oldest = this.judgedOrder.shift()!;
      if (this.judged.get(oldest.runId) !== oldest) continue;
      this.opts.metrics.runsTrimmed.inc({ reason: this.judged.size > maxCount ? 'max_count' : 'max_bytes' });
      this.forgetJudged(oldest);
    }
    this.maybeCompact();
  }

  /** A judged run leaves the runs API (its list index entry goes at the next compaction). */
  private forgetJudged(r: RunRecord): void {
    this.judged.delete(r.runId);
    this.keptBytes -= this.judgedBytes.get(r.runId) ?? 0;
    this.judgedBytes.delete(r.runId);
    this.indexDead++;
  }

  private indexInsert(r: RunRecord): void {
    const a = this.index;
    const last = a[a.length - 1];
    // Runs mostly open in start order (openSeq only grows); OTLP batches interleave a little. Appended
    // either way: an insertion would move the array's tail per run, the sort in list() happens per page.
    if (last !== undefined && last.startMs > r.startMs) this.indexUnsorted = true;
    a.push(r);
  }

  private maybeCompact(): void {
    if (this.indexDead <= 1024 || this.indexDead * 2 <= this.index.length) return;
    // Membership only (not age): a run past its age leaves the index when the sweep drops it.
    this.index = this.index.filter((r) => this.inFlight.get(r.runId) === r || this.judged.get(r.runId) === r);
    this.indexDead = 0;
  }

  private arm(): void {
    if (this.timer || this.closed) return;
    const at = this.dueAt.peek();
    if (at === undefined) return;
    const wait = Math.max(0, at - this.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.judgeDue();
    }, wait);
    this.timer.unref();
  }

  private judgeDue(): void {
    const now = this.now();
    while (this.dueAt.length > 0 && this.dueAt.peek()! <= now) {
      this.dueAt.shift();
      const r = this.due.shift()!;
      if (!r.judgement) this.judge(r);
    }
    this.arm();
  }

  /** Abandon runs past the timeout; expire judged runs past their age. */
  sweep(): void {
    if (this.closed) return;
    const now = this.now();
    for (const r of this.inFlight.values()) {
      if (r.openedAtMs + this.opts.runTimeoutMillis > now) break; // insertion order = open order
      if (r.endMs === undefined) this.judge(r, 'abandoned');
    }
    for (let r = this.judgedOrder.peek(); r !== undefined; r = this.judgedOrder.peek()) {
      if (this.judged.get(r.runId) === r) {
        if (!this.expired(r, now)) break; // judgement order
        this.forgetJudged(r);
      }
      this.judgedOrder.shift();
    }
    this.maybeCompact();
    this.judgeDue();
  }
}

/**
 * What a judged run is counted as for runsMaxBytes: a fixed part, about 240
 * bytes per expected event (measured: a judged run keeps its events' records
 * and its spans' summaries, 470–490 bytes per span and two events per span
 * for runs of 10 and 1,000 tools, with short names), and one byte per
 * character of every string it keeps that a sender chose: its ids, agent,
 * user (twice: the verdict's sentence names it) and conversation, and per
 * span its name (a thinking span's model), tool call id, error, and the user and conversation
 * ids it carried itself (an inherited one is the parent's string). Those are
 * bounded by classify() (256 characters for names, 1,024 for ids); one byte
 * per character is what V8 keeps for Latin-1 text (other text takes two).
 * Computed once, when the run is judged (O(spans)), and kept with it, so a
 * run counts the same when it is kept and when it goes (late spans may still
 * change its span list).
 */
function keptBytesOf(r: RunRecord): number {
  let n = KEPT_RUN_BYTES + KEPT_EVENT_BYTES * (r.judgement?.expected ?? r.events.length);
  n += r.runId.length + r.traceId.length + r.spanId.length + r.agent.length + 2 * len(r.user) + len(r.conversation);
  for (const s of r.spans as readonly KeptSpan[]) {
    n += len(s.name) + len(s.error);
    // A thinking span's model is its name (one string); an agent keeps no model (its slot holds its parent agent's name).
    if (s.kind === 'tool') n += len(s.callId);
    // UNROUTABLE_USER stands for an over-long id that was not kept (one shared string).
    if (s.ownUser === true && s.user !== UNROUTABLE_USER) n += len(s.user);
    if (s.ownConv === true) n += len(s.conv);
  }
  return n;
}
const KEPT_RUN_BYTES = 512;
const KEPT_EVENT_BYTES = 240;

const len = (s: string | undefined): number => (s === undefined ? 0 : s.length);

/**
 * A kept span as the bridge keeps it (its span node): besides the summary,
 * the tool call id and the ids it carried itself. Read where present.
 */
interface KeptSpan extends SpanSummary {
  readonly callId?: string;
  readonly user?: string;
  readonly conv?: string;
  readonly ownUser?: boolean;
  readonly ownConv?: boolean;
}

/** The list index's order: start time, then open order (runs opened in the same millisecond append). */
function byKey(a: RunRecord, b: RunRecord): number {
  return a.startMs - b.startMs || a.openSeq - b.openSeq;
}

/**
 * First index of the list index whose key (startMs, then openSeq) is above
 * (startMs, openSeq). With openSeq - 1 it is the first index at or above the
 * key; with Infinity, the first run that started after startMs.
 */
function indexAfter(a: readonly RunRecord[], startMs: number, openSeq: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const r = a[mid]!;
    if (r.startMs < startMs || (r.startMs === startMs && r.openSeq <= openSeq)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Cursor: base64url of `<startMs>:<openSeq>` of the last run of the page. */
export function encodeCursor(startMs: number, openSeq: number): string {
  return Buffer.from(`${startMs}:${openSeq}`, 'utf8').toString('base64url');
}

export function decodeCursor(cursor: string): { startMs: number; openSeq: number } | undefined {
  if (!/^[A-Za-z0-9_-]{1,2048}$/.test(cursor)) return undefined;
  const s = Buffer.from(cursor, 'base64url').toString('utf8');
  const i = s.indexOf(':');
  if (i <= 0 || i === s.length - 1) return undefined;
  const num = s.slice(0, i);
  if (!/^-?\d+(\.\d+)?(e[+-]?\d+)?$/i.test(num)) return undefined;
  const startMs = Number(num);
  if (!Number.isFinite(startMs)) return undefined;
  const openSeq = Number(s.slice(i + 1));
  if (!Number.isSafeInteger(openSeq) || openSeq < 0) return undefined;
  return { startMs, openSeq };
}

/**
 * Of two reasons an event was reported dropped for, the one that names the
 * failure best (as the hub picks among a run's connections): a known reason
 * outranks `reported_dropped`, and any other outranks a plain `send_failed`.
 */
function betterReason(had: DropReason | undefined, next: DropReason): DropReason {
  if (had === undefined || had === 'reported_dropped') return next;
  if (had === 'send_failed' && next !== 'reported_dropped') return next;
  return had;
}

/** The reason an event that never got an outcome is given at verdict time. */
function pendingReason(mode: 'emit' | 'audit', forced: Verdict | undefined, r: RunRecord): DropReason {
  if (forced === 'interrupted') return 'shutdown';
  if (mode === 'audit') return 'not_recorded';
  if (r.user === undefined) return 'no_user';
  return 'send_failed';
}

/** Shared by every judgement with nothing undelivered (frozen: never written). */
const NONE: Readonly<Record<string, number>> = Object.freeze({});

export function computeJudgement(r: RunRecord, mode: 'emit' | 'audit', forced: Verdict | undefined, now: number, timeoutMs: number, cause?: ForcedCause): Judgement {
  let undeliveredByType: Partial<Record<EventType, number>> = NONE;
  let reasons: Partial<Record<DropReason, number>> = NONE;
  const pending = pendingReason(mode, forced, r);
  let delivered = 0;
  for (const ev of r.events) {
    if (ev.state === EV_DELIVERED) {
      delivered++;
      continue;
    }
    if (reasons === NONE) {
      reasons = {};
      undeliveredByType = {};
    }
    const reason: DropReason = ev.state === EV_DROPPED ? ev.reason ?? 'send_failed' : ev.state === EV_HELD ? 'no_subscriber' : pending;
    undeliveredByType[ev.type] = (undeliveredByType[ev.type] ?? 0) + 1;
    reasons[reason] = (reasons[reason] ?? 0) + 1;
  }
  const expected = r.events.length;
  const missing = expected - delivered;
  let verdict: Verdict;
  if (forced) verdict = forced;
  else if (missing === 0) verdict = 'complete';
  else if (delivered === 0) verdict = 'missing_events';
  else verdict = 'partial';

  // The reason dashboards group by: a failure while someone listened outranks "nobody listening".
  let mainReason: DropReason | 'none' = 'none';
  if (reasons !== NONE) {
    let best = 0;
    for (const k in reasons) {
      const n = reasons[k as DropReason]!;
      if (k !== 'no_subscriber' && n > best) {
        best = n;
        mainReason = k as DropReason;
      }
    }
    if (mainReason === 'none' && reasons.no_subscriber) mainReason = 'no_subscriber';
  }
  // The explanation is written when first read (the runs API, the inspector), from what is known now.
  const context: ExplainContext = { mode, cause, timeoutMs, user: r.user, sawConnection: r.sawConnection, auditOutcomes: r.auditOutcomes };
  return new Judgement(verdict, now, expected, delivered, undeliveredByType, reasons, mainReason, context);
}
