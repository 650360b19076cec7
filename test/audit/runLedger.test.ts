import { afterEach, describe, expect, it } from 'vitest';
import { Metrics } from '../../src/audit/Metrics.js';
import { decodeCursor, encodeCursor, RunLedger, type RunLedgerOptions } from '../../src/audit/RunLedger.js';
import { EV_DROPPED, EV_HELD, RunRecord, type SpanSummary } from '../../src/audit/RunRecord.js';

/** The span the test events are about (agent, 1 → 2 ms). */
const SPAN: SpanSummary = { spanId: 's', parentSpanId: undefined, kind: 'agent', name: 'a', startMs: 1, endMs: 2 };

let ledger: RunLedger | undefined;
afterEach(() => {
  ledger?.close();
  ledger = undefined;
});

function make(over: Partial<RunLedgerOptions> = {}): { l: RunLedger; m: Metrics; clock: { t: number } } {
  const clock = { t: 1_000_000 };
  const m = new Metrics();
  const l = new RunLedger({ mode: 'emit', graceMillis: 0, runTimeoutMillis: 60_000, runsMaxCount: 1000, runsMaxAgeMillis: 3_600_000, metrics: m, now: () => clock.t, ...over });
  ledger = l;
  return { l, m, clock };
}

function rec(id: string, startMs: number, user = 'u', agent = 'a'): RunRecord {
  const r = new RunRecord(id, `t-${id}`, `s-${id}`, agent, startMs, startMs);
  r.user = user;
  return r;
}

async function counter(m: Metrics, name: string, labels: Record<string, string> = {}): Promise<number> {
  const v = await m.registry.getSingleMetric(name)!.get();
  return v.values.filter((x) => Object.entries(labels).every(([k, y]) => String((x.labels as Record<string, unknown>)[k]) === y)).reduce((n, x) => n + x.value, 0);
}

const page = (l: RunLedger, q: Parameters<RunLedger['list']>[0]): { ids: string[]; next: string | undefined } => {
  const { runs, nextCursor } = l.list(q);
  return { ids: runs.map((r) => r.runId), next: nextCursor };
};

describe('RunLedger', () => {
  it('lists newest first whatever the open order (late OTLP runs), ties broken by run id', () => {
    const { l } = make();
    for (const [id, start] of [['c', 30], ['a', 10], ['e', 50], ['b', 20], ['d', 30], ['f', 5]] as const) l.open(rec(id, start));
    expect(page(l, {}).ids).toEqual(['e', 'd', 'c', 'b', 'a', 'f']);
    expect(page(l, { sinceMs: 20, untilMs: 30 }).ids).toEqual(['d', 'c', 'b']);
  });

  it('pages by cursor without duplicates or omissions while runs arrive, including same-millisecond starts', () => {
    const { l } = make();
    for (let i = 0; i < 40; i++) l.open(rec(`r${String(i).padStart(2, '0')}`, 100 + Math.floor(i / 4)));
    const expected = page(l, { limit: 500 }).ids;
    expect(expected).toHaveLength(40);
    const got: string[] = [];
    let cursor: string | undefined;
    let n = 0;
    do {
      const p = page(l, { limit: 3, cursor });
      got.push(...p.ids);
      cursor = p.next;
      l.open(rec(`new${n++}`, 1000 + n)); // newer runs arrive between pages
    } while (cursor !== undefined);
    expect(got).toEqual(expected);
    expect(new Set(got).size).toBe(40);
  });

  it('rejects a malformed cursor and round-trips a good one', () => {
    const { l } = make();
    expect(() => l.list({ cursor: 'not a cursor' })).toThrow(/TW_BAD_QUERY|bad query parameter cursor/);
    expect(decodeCursor(encodeCursor(1795624867767.6143, 42))).toEqual({ startMs: 1795624867767.6143, openSeq: 42 });
    expect(decodeCursor('MTI')).toBeUndefined();
  });

  it('keeps judged runs within runsMaxCount and the list index bounded', () => {
    const { l } = make({ runsMaxCount: 100 });
    for (let i = 0; i < 20_000; i++) {
      const r = rec(`r${i}`, i);
      l.open(r);
      l.judge(r);
    }
    expect(l.judgedCount).toBe(100);
    expect(l.inFlightCount).toBe(0);
    expect(l.indexSize).toBeLessThanOrEqual(100 + 1025 + 100);
    const p = page(l, { limit: 500 });
    expect(p.ids).toHaveLength(100);
    expect(p.ids[0]).toBe('r19999');
    expect(p.ids.at(-1)).toBe('r19900');
    expect(l.get('r19899')).toBeUndefined();
  });

  it('expires judged runs by age at once for readers, and frees them at the sweep', () => {
    const { l, clock } = make({ runsMaxAgeMillis: 1000 });
    const r = rec('x', 1);
    l.open(r);
    l.judge(r);
    clock.t += 999;
    expect(l.get('x')).toBe(r);
    clock.t += 1;
    expect(l.get('x')).toBeUndefined();
    expect(page(l, {}).ids).toEqual([]);
    expect(l.judgedCount).toBe(1);
    l.sweep();
    expect(l.judgedCount).toBe(0);
  });

  it('abandons runs past the timeout at the sweep, not ended ones waiting for their grace', () => {
    const { l, clock } = make({ runTimeoutMillis: 500, graceMillis: 10_000 });
    const a = new RunRecord('a', 't', 's', 'agent', clock.t, clock.t);
    const b = new RunRecord('b', 't', 's2', 'agent', clock.t, clock.t);
    l.open(a);
    l.open(b);
    l.ended(b, clock.t);
    clock.t += 499;
    l.sweep();
    expect(a.judgement).toBeUndefined();
    clock.t += 1;
    l.sweep();
    expect(a.judgement?.verdict).toBe('abandoned');
    expect(b.judgement).toBeUndefined();
    expect(page(l, { verdict: 'in_flight' }).ids).toEqual(['b']);
  });

  it('ignores outcomes for events the verdict already dropped; a held event may still be delivered late', async () => {
    const { l, m } = make();
    const r = rec('x', 1);
    const pending = r.addEvent(1, 'agent_started', SPAN);
    const held = r.addEvent(2, 'agent_completed', SPAN);
    l.open(r);
    l.markHeld(held);
    l.ended(r, 2);
    const j = l.judge(r);
    expect(j).toMatchObject({ verdict: 'missing_events', reasons: { send_failed: 1, no_subscriber: 1 }, mainReason: 'send_failed' });
    expect(pending.state).toBe(EV_DROPPED);
    expect(held.state).toBe(EV_HELD);
    l.markDelivered(r, pending, false); // a write callback after the verdict
    l.markDelivered(r, held, true); // the user connected within the hold window
    expect(pending.state).toBe(EV_DROPPED);
    expect(await counter(m, 'tracewire_events_dropped_total')).toBe(1);
    expect(await counter(m, 'tracewire_events_delivered_total')).toBe(1);
    expect(await counter(m, 'tracewire_events_delivered_late_total')).toBe(1);
    expect(r.judgement).toBe(j);
  });

  it('gives an evicted run its own explanation and reason', () => {
    const { l } = make();
    const r = rec('x', 1, 'zoe');
    r.addEvent(1, 'agent_started', SPAN);
    l.open(r);
    l.evict(r);
    expect(r.judgement).toMatchObject({ verdict: 'abandoned', mainReason: 'evicted', reasons: { evicted: 1 } });
    expect(r.judgement!.explanation).toBe(
      "The run was given up before its top-level agent span ended because tracewire's in-flight run limit was reached; 0 of 1 event had been delivered.",
    );
  });

  it('names no_user for events of a run that never had a user', () => {
    const { l } = make();
    const r = new RunRecord('x', 't', 's', 'a', 1, 1);
    r.addEvent(1, 'agent_started', SPAN);
    l.open(r);
    l.judge(r, 'abandoned');
    expect(r.judgement).toMatchObject({ mainReason: 'no_user', reasons: { no_user: 1 } });
  });
});
