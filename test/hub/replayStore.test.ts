import { describe, expect, it } from 'vitest';
import { RunRecord } from '../../src/audit/RunRecord.js';
import { OutboundEvent } from '../../src/bridge/EventSink.js';
import { EVENT_OVERHEAD_BYTES, ReplayStore, type ReplayStoreOptions } from '../../src/hub/ReplayStore.js';

/** The resume window's expiry: ended runs after the retention time, runs that never end after the idle time. */

function store(now: { t: number }, o: Partial<ReplayStoreOptions> = {}): ReplayStore {
  return new ReplayStore({ retentionMillis: 1000, maxEventsPerRun: 100, maxBytesPerRun: 1 << 20, maxTotalBytes: 1 << 30, maxIdleMillis: 8000, now: () => now.t, ...o });
}

function event(runId: string, seq: number, user = 'u'): OutboundEvent {
  const run = new RunRecord(runId, 't', 's', 'a', 0, 0);
  run.user = user;
  const rec = run.addEvent(seq, 'agent_started', { spanId: 's', parentSpanId: undefined, kind: 'agent', name: 'a', startMs: 0 });
  const ev = new OutboundEvent(undefined, rec, undefined, 'a', '{}');
  ev.bytes = 4;
  return ev;
}

describe('ReplayStore expiry', () => {
  it('drops an ended run once its retention has passed, in the order runs ended, and keeps the others', () => {
    const now = { t: 0 };
    const rs = store(now);
    for (const id of ['a', 'b', 'c']) rs.add(event(id, 1));
    rs.ended('b');
    now.t = 300;
    rs.ended('a');
    now.t = 999;
    rs.sweep();
    expect(['a', 'b', 'c'].map((id) => rs.contains(id))).toEqual([true, true, true]);
    now.t = 1000;
    rs.sweep();
    expect(['a', 'b', 'c'].map((id) => rs.contains(id))).toEqual([true, false, true]);
    now.t = 1300;
    rs.sweep();
    expect(['a', 'b', 'c'].map((id) => rs.contains(id))).toEqual([false, false, true]);
    expect(rs.size).toBe(1);
  });

  it('drops a run that never ended after the idle time (checked every quarter of it), counting from its last event', () => {
    const now = { t: 0 };
    const rs = store(now);
    rs.add(event('idle', 1));
    rs.add(event('busy', 1));
    rs.sweep(); // the first pass
    now.t = 6000;
    rs.add(event('busy', 2));
    now.t = 8000;
    rs.sweep(); // an idle pass (they run every maxIdle / 4 = 2000 ms)
    expect(rs.contains('idle')).toBe(false);
    expect(rs.contains('busy')).toBe(true);
    now.t = 13_999;
    rs.sweep();
    expect(rs.contains('busy')).toBe(true);
    now.t = 14_500;
    rs.sweep(); // within 2000 ms of the last pass: no pass yet
    expect(rs.contains('busy')).toBe(true);
    now.t = 16_000;
    rs.sweep();
    expect(rs.contains('busy')).toBe(false);
    expect(rs.bytes).toBe(0);
  });

  it('a run that ended before its first event entered the window (held, released late) expires from then', () => {
    const now = { t: 0 };
    const rs = store(now);
    const ev = event('late', 1);
    ev.run.endMs = 5;
    now.t = 500;
    rs.add(ev);
    now.t = 1499;
    rs.sweep();
    expect(rs.contains('late')).toBe(true);
    now.t = 1500;
    rs.sweep();
    expect(rs.contains('late')).toBe(false);
  });

  it('keeps the window in seq order when an older event arrives after a newer one, once each', () => {
    const rs = store({ t: 0 });
    rs.add(event('r', 2));
    rs.add(event('r', 1));
    rs.add(event('r', 3));
    rs.add(event('r', 1));
    expect(rs.since('r', 'u', 0)!.map((e) => e.seq)).toEqual([1, 2, 3]);
    expect(rs.since('r', 'other', 0)).toBeUndefined();
  });

  it('maxTotalBytes: drops the oldest runs first, never the run being added to (the oldest moves behind the others while in use)', () => {
    const now = { t: 0 };
    const per = 4 + EVENT_OVERHEAD_BYTES; // each test event: a 4-byte frame plus the per-event overhead
    const rs = store(now, { maxTotalBytes: 3 * per });
    const kept = (): string[] => ['a', 'b', 'c', 'd', 'e', 'f', 'g'].filter((id) => rs.contains(id));
    for (const id of ['a', 'b', 'c', 'd']) rs.add(event(id, 1));
    expect(kept()).toEqual(['b', 'c', 'd']);
    expect(rs.trimmed).toBe(1);
    expect(rs.bytes).toBe(3 * per);
    // A run that left otherwise (expired from the middle) is not counted twice or dropped again.
    rs.ended('c');
    now.t = 1000;
    rs.sweep();
    rs.add(event('e', 1));
    expect(kept()).toEqual(['b', 'd', 'e']);
    rs.add(event('f', 1));
    expect(kept()).toEqual(['d', 'e', 'f']);
    // d is the oldest and gets an event: e goes instead, and d now stands behind f.
    rs.add(event('d', 2));
    expect(kept()).toEqual(['d', 'f']);
    expect(rs.since('d', 'u', 0)!.map((e) => e.seq)).toEqual([1, 2]);
    rs.add(event('g', 1));
    expect(kept()).toEqual(['d', 'g']);
    expect(rs.bytes).toBe(3 * per);
    expect(rs.trimmed).toBe(4);
  });

  it('maxTotalBytes: a single run past the total keeps its events (its own bounds apply)', () => {
    const rs = store({ t: 0 }, { maxTotalBytes: 2 * (4 + EVENT_OVERHEAD_BYTES) });
    for (let seq = 1; seq <= 3; seq++) rs.add(event('solo', seq));
    expect(rs.since('solo', 'u', 0)!.map((e) => e.seq)).toEqual([1, 2, 3]);
    expect(rs.trimmed).toBe(0);
  });

  it('tells which bound gave events up (run_events, run_bytes, total_bytes), never expiry', () => {
    const now = { t: 0 };
    const seen: Array<[string, number]> = [];
    const per = 4 + EVENT_OVERHEAD_BYTES;
    const rs = store(now, { maxEventsPerRun: 3, maxBytesPerRun: 13, maxTotalBytes: 8 * per, onTrim: (bound, n) => seen.push([bound, n]) });
    for (let seq = 1; seq <= 5; seq++) rs.add(event('a', seq)); // 4 bytes each: the 4th and 5th push out by count
    expect(seen).toEqual([['run_events', 1], ['run_events', 1]]);
    seen.length = 0;
    const big = event('b', 1);
    big.bytes = 10;
    rs.add(event('b', 0));
    rs.add(big); // 4 + 10 bytes > 13: the first goes by bytes
    expect(seen).toEqual([['run_bytes', 1]]);
    seen.length = 0;
    for (const id of ['c', 'd', 'e', 'f', 'g']) rs.add(event(id, 1)); // past 8 events in all: a (3 events) goes first
    expect(seen).toEqual([['total_bytes', 3]]);
    seen.length = 0;
    rs.ended('b');
    now.t = 5000;
    rs.sweep();
    expect(rs.contains('b')).toBe(false);
    expect(seen).toEqual([]);
  });
});
