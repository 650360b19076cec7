import type { EventType } from './Metrics.js';
import { EV_HELD, EV_PENDING, type EventRecord, type RunRecord } from './RunRecord.js';

/**
 * Audit mode: finds, for each `agent.event` outcome a backend recorded, the
 * expected event it reports on. An outcome recorded on a lifecycle span takes
 * the first expected event of its type on that span with no outcome yet;
 * failing that, the first one (in the run's event order) on a lifecycle span
 * below it (a backend that records a tool's events on the agent span that
 * called the tool). "Below" follows the parent links among the run's
 * lifecycle spans.
 *
 * Built once per run at its verdict, so matching all of a run's outcomes
 * costs about linear time in its events: events are indexed by span and
 * type, and by type in run order with a cursor past the ones already taken
 * (an event with an outcome never loses it), and "below" is checked by
 * walking up from a candidate's span rather than collecting the subtree.
 */
export class AuditMatcher {
  private readonly bySpanType = new Map<string, EventRecord[]>();
  private readonly bySpanTypeNext = new Map<string, number>();
  private readonly byType = new Map<EventType, EventRecord[]>();
  private readonly byTypeNext = new Map<EventType, number>();
  private parentOf: Map<string, string | undefined> | undefined;

  constructor(private readonly run: RunRecord) {
    for (const ev of run.events) {
      push(this.bySpanType, key(ev.spanId, ev.type), ev);
      push(this.byType, ev.type, ev);
    }
  }

  /** The event an outcome on `spanId` of `type` reports on, or undefined (the caller gives it its outcome). */
  match(spanId: string, type: EventType): EventRecord | undefined {
    const k = key(spanId, type);
    const own = this.bySpanType.get(k);
    if (own !== undefined) {
      let i = this.bySpanTypeNext.get(k) ?? 0;
      while (i < own.length && !isOpen(own[i]!)) i++;
      this.bySpanTypeNext.set(k, i);
      if (i < own.length) return own[i];
    }
    const all = this.byType.get(type);
    if (all === undefined) return undefined;
    let i = this.byTypeNext.get(type) ?? 0;
    while (i < all.length && !isOpen(all[i]!)) i++;
    this.byTypeNext.set(type, i);
    for (; i < all.length; i++) {
      const ev = all[i]!;
      if (isOpen(ev) && this.isBelow(ev.spanId, spanId)) return ev;
    }
    return undefined;
  }

  /** Is `spanId` a lifecycle span of the run strictly below `ancestor`? */
  private isBelow(spanId: string, ancestor: string): boolean {
    const parents = (this.parentOf ??= new Map(this.run.spans.map((s) => [s.spanId, s.parentSpanId] as const)));
    // At most one step per span of the run: parent links that loop stop there.
    let p = parents.get(spanId);
    for (let steps = 0; p !== undefined && steps < parents.size; steps++) {
      if (p === ancestor) return true;
      if (!parents.has(p)) return false;
      p = parents.get(p);
    }
    return false;
  }
}

function isOpen(ev: EventRecord): boolean {
  return ev.state === EV_PENDING || ev.state === EV_HELD;
}

function key(spanId: string, type: EventType): string {
  return `${spanId} ${type}`;
}

function push<K>(m: Map<K, EventRecord[]>, k: K, ev: EventRecord): void {
  const l = m.get(k);
  if (l === undefined) m.set(k, [ev]);
  else l.push(ev);
}
