import type { DropReason, EventType, Metrics, Verdict } from './Metrics.js';
import { EV_DELIVERED, EV_DROPPED, EV_HELD, EV_PENDING, RunRecord, type EventRecord, type Judgement } from './RunRecord.js';

export interface RunLedgerOptions {
  readonly mode: 'emit' | 'audit';
  readonly graceMillis: number;
  readonly runTimeoutMillis: number;
  readonly runsMaxCount: number;
  readonly runsMaxAgeMillis: number;
  readonly metrics: Metrics;
  /** Called when a run is judged without its top-level span having ended (abandoned/evicted/interrupted). */
  readonly onForget?: (record: RunRecord) => void;
  /** Called after every verdict (tests, logs). */
  readonly onVerdict?: (record: RunRecord) => void;
  readonly now?: () => number;
}

export interface RunQuery {
  readonly verdict?: string;
  readonly agent?: string;
  readonly user?: string;
  readonly sinceMs?: number;
  readonly untilMs?: number;
  readonly limit?: number;
  /** Opaque cursor from a previous page (`next_cursor`). */
  readonly cursor?: string;
}

/**
 * The run ledger: in-flight runs, their delivery outcomes, verdicts after the
 * grace period, and a bounded store of judged runs for the runs API.
 */
export class RunLedger {
  private readonly inFlight = new Map<string, RunRecord>();
  /** Ended runs awaiting their verdict; due times are monotonic (end + constant grace). */
  private readonly due: RunRecord[] = [];
  private dueHead = 0;
  private readonly judged = new Map<string, RunRecord>();
  private timer: NodeJS.Timeout | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private judgedSeq = 0;
  private readonly now: () => number;
  private closed = false;

  constructor(private readonly opts: RunLedgerOptions) {
    this.now = opts.now ?? Date.now;
    const sweepEvery = Math.max(50, Math.min(1000, Math.floor(opts.runTimeoutMillis / 4)));
    this.sweepTimer = setInterval(() => this.sweep(), sweepEvery);
    this.sweepTimer.unref();
  }

  get inFlightCount(): number {
    return this.inFlight.size;
  }

  open(record: RunRecord): void {
    this.inFlight.set(record.runId, record);
    this.opts.metrics.runsInFlight.set(this.inFlight.size);
  }

  get(runId: string): RunRecord | undefined {
    return this.inFlight.get(runId) ?? this.judged.get(runId);
  }

  /** The run's top-level agent span ended: judge after the grace period. */
  ended(record: RunRecord, endMs: number): void {
    if (record.judgement) return;
    record.endMs = endMs;
    record.dueAtMs = this.now() + this.opts.graceMillis;
    this.due.push(record);
    this.arm();
  }

  markDelivered(run: RunRecord, ev: EventRecord, late: boolean): void {
    if (ev.state === EV_DELIVERED) return;
    ev.state = EV_DELIVERED;
    ev.reason = undefined;
    ev.deliveredAtMs = this.now();
    this.opts.metrics.eventsDelivered.inc({ type: ev.type });
    if (late) {
      ev.late = true;
      this.opts.metrics.eventsDeliveredLate.inc({ type: ev.type });
    }
    void run;
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
   * Audit mode: the backend recorded an `agent.event` span event for the
   * lifecycle span `spanId`. Matches the first expected event of that type on
   * that span that has no outcome yet.
   */
  recordAudit(run: RunRecord, spanId: string, type: EventType, outcome: 'delivered' | 'dropped', reason: DropReason | undefined): boolean {
    run.auditOutcomes++;
    for (const ev of run.events) {
      if (ev.spanId !== spanId || ev.type !== type || (ev.state !== EV_PENDING && ev.state !== EV_HELD)) continue;
      if (outcome === 'delivered') {
        ev.connections = 1;
        this.markDelivered(run, ev, false);
      } else this.markDropped(run, ev, reason ?? 'reported_dropped');
      return true;
    }
    return false;
  }

  /** Judge now, with the given verdict forced (abandoned, interrupted) or computed. */
  judge(record: RunRecord, forced?: Verdict): Judgement {
    if (record.judgement) return record.judgement;
    if (record.auditPending !== undefined) {
      const pending = record.auditPending;
      record.auditPending = undefined;
      for (const o of pending) this.recordAudit(record, o.spanId, o.type, o.outcome, o.reason);
    }
    const j = computeJudgement(record, this.opts.mode, forced, this.now(), this.opts.runTimeoutMillis);
    record.judgement = j;
    this.inFlight.delete(record.runId);
    this.opts.metrics.runsInFlight.set(this.inFlight.size);
    // Events that never got an outcome are dropped now with the reason the verdict gave them.
    for (const ev of record.events) {
      if (ev.state === EV_PENDING) {
        ev.state = EV_DROPPED;
        ev.reason = pendingReason(this.opts.mode, forced);
        this.opts.metrics.eventsDropped.inc({ type: ev.type, reason: ev.reason });
      }
    }
    this.opts.metrics.runs.inc({ verdict: j.verdict, reason: j.mainReason, agent: this.opts.metrics.agentLabel.value(record.agent) });
    this.retain(record);
    if (forced) this.opts.onForget?.(record);
    try {
      this.opts.onVerdict?.(record);
    } catch {
      this.opts.metrics.internalErrors.inc({ component: 'ledger' });
    }
    return j;
  }

  /** Evict an in-flight run (bounded state): judged now, its pending events dropped as `evicted`. */
  evict(record: RunRecord): void {
    for (const ev of record.events) if (ev.state === EV_PENDING || ev.state === EV_HELD) this.markDropped(record, ev, 'evicted');
    this.judge(record, record.endMs === undefined ? 'abandoned' : undefined);
  }

  /** Shutdown: every in-flight run gets `interrupted`; ended runs awaiting grace are judged as they stand. */
  interruptAll(): void {
    for (let i = this.dueHead; i < this.due.length; i++) {
      const r = this.due[i]!;
      if (!r.judgement) this.judge(r);
    }
    this.due.length = 0;
    this.dueHead = 0;
    for (const r of [...this.inFlight.values()]) this.judge(r, 'interrupted');
  }

  list(q: RunQuery): { runs: RunRecord[]; nextCursor: string | undefined } {
    const limit = Math.min(Math.max(q.limit ?? 50, 1), 500);
    let before = Number.POSITIVE_INFINITY;
    if (q.cursor) before = Number(q.cursor);
    const all: RunRecord[] = [];
    // newest first: in-flight (by start), then judged (by judgement order)
    for (const r of this.inFlight.values()) all.push(r);
    for (const r of this.judged.values()) all.push(r);
    all.sort((a, b) => b.startMs - a.startMs || (a.runId < b.runId ? 1 : -1));
    const out: RunRecord[] = [];
    let idx = 0;
    for (const r of all) {
      idx++;
      if (idx <= (Number.isFinite(before) ? before : 0)) continue;
      if (q.verdict) {
        const v = r.judgement?.verdict ?? 'in_flight';
        if (v !== q.verdict) continue;
      }
      if (q.agent && r.agent !== q.agent) continue;
      if (q.user && r.user !== q.user) continue;
      if (q.sinceMs !== undefined && r.startMs < q.sinceMs) continue;
      if (q.untilMs !== undefined && r.startMs > q.untilMs) continue;
      if (out.length === limit) return { runs: out, nextCursor: String(idx - 1) };
      out.push(r);
    }
    return { runs: out, nextCursor: undefined };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.sweepTimer) clearInterval(this.sweepTimer);
  }

  private retain(record: RunRecord): void {
    this.judgedSeq++;
    this.judged.set(record.runId, record);
    while (this.judged.size > this.opts.runsMaxCount) {
      const oldest = this.judged.keys().next().value as string;
      this.judged.delete(oldest);
    }
  }

  private arm(): void {
    if (this.timer || this.closed) return;
    const head = this.due[this.dueHead];
    if (!head) return;
    const wait = Math.max(0, head.dueAtMs - this.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.judgeDue();
    }, wait);
    this.timer.unref();
  }

  private judgeDue(): void {
    const now = this.now();
    while (this.dueHead < this.due.length) {
      const r = this.due[this.dueHead]!;
      if (r.dueAtMs > now) break;
      this.dueHead++;
      if (!r.judgement) this.judge(r);
    }
    if (this.dueHead > 1024 && this.dueHead * 2 > this.due.length) {
      this.due.splice(0, this.dueHead);
      this.dueHead = 0;
    }
    this.arm();
  }

  /** Abandon runs past the timeout; expire judged runs past their age. */
  sweep(): void {
    const now = this.now();
    for (const r of this.inFlight.values()) {
      if (r.openedAtMs + this.opts.runTimeoutMillis > now) break; // insertion order = open order
      if (r.endMs === undefined) this.judge(r, 'abandoned');
    }
    for (const [id, r] of this.judged) {
      if ((r.judgement?.judgedAtMs ?? 0) + this.opts.runsMaxAgeMillis > now) break;
      this.judged.delete(id);
    }
    this.judgeDue();
  }
}

function pendingReason(mode: 'emit' | 'audit', forced: Verdict | undefined): DropReason {
  if (forced === 'interrupted') return 'shutdown';
  if (mode === 'audit') return 'not_recorded';
  return 'send_failed';
}

export function computeJudgement(r: RunRecord, mode: 'emit' | 'audit', forced: Verdict | undefined, now: number, timeoutMs: number): Judgement {
  const undeliveredByType: Partial<Record<EventType, number>> = {};
  const reasons: Partial<Record<DropReason, number>> = {};
  let delivered = 0;
  for (const ev of r.events) {
    if (ev.state === EV_DELIVERED) {
      delivered++;
      continue;
    }
    const reason: DropReason =
      ev.state === EV_DROPPED ? ev.reason ?? 'send_failed' : ev.state === EV_HELD ? 'no_subscriber' : pendingReason(mode, forced);
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
  let best = 0;
  for (const [k, n] of Object.entries(reasons) as [DropReason, number][]) {
    if (k === 'no_subscriber') continue;
    if (n > best) {
      best = n;
      mainReason = k;
    }
  }
  if (mainReason === 'none' && reasons.no_subscriber) mainReason = 'no_subscriber';

  const who = r.user ? `user ${r.user}` : 'an unidentified user';
  const reasonText = Object.entries(reasons).map(([k, n]) => `${k} ×${n}`).join(', ');
  const typeText = Object.entries(undeliveredByType).map(([k, n]) => `${k} ×${n}`).join(', ');
  let explanation: string;
  switch (verdict) {
    case 'complete':
      explanation = `All ${expected} expected events were delivered to ${who}.`;
      break;
    case 'missing_events':
      if (mode === 'audit' && r.auditOutcomes === 0)
        explanation = `Agents ran (${expected} events expected) but the backend recorded no agent.event at all: its event emitter is not wired.`;
      else if (mainReason === 'no_subscriber')
        explanation = `Agents ran (${expected} events expected) but none reached ${who}: nobody was connected (no_subscriber ×${reasons.no_subscriber}).`;
      else
        explanation = `Agents ran (${expected} events expected) and none reached ${who}${r.sawConnection ? ' although a connection was open' : ''}: ${reasonText}.`;
      break;
    case 'partial':
      explanation = `${missing} of ${expected} expected events did not reach ${who}: ${typeText} (${reasonText}).`;
      break;
    case 'abandoned':
      explanation = `The top-level agent span did not end within ${timeoutMs} ms; ${delivered} of ${expected} events were delivered before it was given up.`;
      break;
    case 'interrupted':
      explanation = `tracewire shut down while the run was in flight; ${delivered} of ${expected} events had been delivered.`;
      break;
  }
  return { verdict, judgedAtMs: now, expected, delivered, undeliveredByType, reasons, mainReason, explanation };
}
