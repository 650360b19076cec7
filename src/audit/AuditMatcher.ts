import type { EventType } from './Metrics.js';
import { EV_HELD, EV_PENDING, type EventRecord, type RunRecord } from './RunRecord.js';

/** Where an outcome was recorded (its nearest lifecycle span) and for which event type. */
export interface AuditOutcomeKey {
  readonly spanId: string;
  readonly type: EventType;
}

/**
 * Audit mode: finds, for each `agent.event` outcome a backend recorded, the
 * expected event it reports on.
 *
 * - An outcome recorded on a lifecycle span that has an expected event of its
 *   type reports on that span's event, however many there are: a backend
 *   records one outcome per connection of the user (two tabs, two
 *   `agent_started`), and all of them are about the same event (the ledger
 *   counts it delivered when at least one of them is, as in emit mode).
 * - An outcome of a type its span has no expected event of (a notifier that
 *   only knows the agent span records its tools' events there) reports on the
 *   first event of its type (in the run's event order) on a lifecycle span
 *   below it that has no outcome yet. "Below" follows the parent links among
 *   the run's lifecycle spans.
 *
 * All of a run's outcomes are matched at once, at its verdict: those on their
 * own span's event first, then the others, so which events "have no outcome
 * yet" does not depend on the order the spans were exported in.
 *
 * Costs about linear time in the run's events and outcomes: events are indexed
 * by span and type, and by type in run order with a cursor past the ones
 * already taken (an event with an outcome never loses it), and "below" is
 * checked by walking up from a candidate's span rather than collecting the
 * subtree.
 */
export class AuditMatcher {
  private readonly bySpanType = new Map<string, EventRecord[]>();
  private readonly byType = new Map<EventType, EventRecord[]>();
  private readonly byTypeNext = new Map<EventType, number>();
  /** Events that have an outcome already (taken by the span they are on, or by one above). */
  private readonly taken = new Set<EventRecord>();
  private parentOf: Map<string, string | undefined> | undefined;

  constructor(private readonly run: RunRecord) {
    for (const ev of run.events) {
      push(this.bySpanType, key(ev.spanId, ev.type), ev);
      push(this.byType, ev.type, ev);
    }
  }

  /** For each outcome (same order), the event it reports on, or undefined when it reports on none. */
  matchAll(outcomes: readonly AuditOutcomeKey[]): Array<EventRecord | undefined> {
    const out = new Array<EventRecord | undefined>(outcomes.length);
    const below: number[] = [];
    for (let i = 0; i < outcomes.length; i++) {
      const o = outcomes[i]!;
      const own = this.bySpanType.get(key(o.spanId, o.type));
      if (own === undefined) {
        below.push(i);
        continue;
      }
      // A span has one event of each type; were there several, each would take one outcome and the last the rest.
      let ev = own[own.length - 1]!;
      for (const e of own) {
        if (!this.taken.has(e)) {
          ev = e;
          break;
        }
      }
      this.taken.add(ev);
      out[i] = ev;
    }
    for (const i of below) {
      const o = outcomes[i]!;
      const ev = this.firstOpenBelow(o.spanId, o.type);
      if (ev !== undefined) this.taken.add(ev);
      out[i] = ev;
    }
    return out;
  }

  private firstOpenBelow(spanId: string, type: EventType): EventRecord | undefined {
    const all = this.byType.get(type);
    if (all === undefined) return undefined;
    let i = this.byTypeNext.get(type) ?? 0;
    while (i < all.length && !this.isOpen(all[i]!)) i++;
    this.byTypeNext.set(type, i);
    for (; i < all.length; i++) {
      const ev = all[i]!;
      if (this.isOpen(ev) && this.isBelow(ev.spanId, spanId)) return ev;
    }
    return undefined;
  }

  private isOpen(ev: EventRecord): boolean {
    return !this.taken.has(ev) && (ev.state === EV_PENDING || ev.state === EV_HELD);
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

function key(spanId: string, type: EventType): string {
  return `${spanId} ${type}`;
}

function push<K>(m: Map<K, EventRecord[]>, k: K, ev: EventRecord): void {
  const l = m.get(k);
  if (l === undefined) m.set(k, [ev]);
  else l.push(ev);
}
