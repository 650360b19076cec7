import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { AuditMatcher } from '../../src/audit/AuditMatcher.js';
import type { EventType } from '../../src/audit/Metrics.js';
import { EV_DELIVERED, RunRecord, type EventRecord, type SpanSummary } from '../../src/audit/RunRecord.js';
import type { SpanInput } from '../../src/conventions/SpanInput.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { metricValue, startTestSidecar, until } from '../helpers.js';

/**
 * Audit mode: which expected event an `agent.event` outcome reports on. On
 * its own lifecycle span when that span has an event of its type (every such
 * outcome: one per connection of the user), else the first open one of its
 * type on a lifecycle span below it, in the run's order, however the
 * outcomes and the spans are spread.
 */

/** A run: agent a0 → tools t1, t2; a sub-agent s below a0 with tool t3; parent links as given. */
function run(links: Array<[id: string, parent: string | undefined, kind: SpanSummary['kind']]>, events: Array<[id: string, type: EventType]>): { r: RunRecord; evs: EventRecord[] } {
  const r = new RunRecord('run', 'trace', links[0]![0], 'a', 0, 0);
  const byId = new Map<string, SpanSummary>();
  for (const [spanId, parentSpanId, kind] of links) {
    const s: SpanSummary = { spanId, parentSpanId, kind, name: spanId, startMs: 0 };
    byId.set(spanId, s);
    r.spans.push(s);
  }
  const evs = events.map(([id, type], i) => r.addEvent(i + 1, type, byId.get(id)!));
  return { r, evs };
}

/** Match the outcomes at once, as the ledger does at the verdict; returns the seq each matched (0: none). Matched events count as delivered for later calls. */
function matchAll(r: RunRecord, outcomes: Array<[id: string, type: EventType]>): number[] {
  const matched = new AuditMatcher(r).matchAll(outcomes.map(([spanId, type]) => ({ spanId, type })));
  for (const ev of matched) if (ev !== undefined) ev.state = EV_DELIVERED;
  return matched.map((ev) => ev?.seq ?? 0);
}

const LINKS: Array<[string, string | undefined, SpanSummary['kind']]> = [
  ['a0', undefined, 'agent'],
  ['t1', 'a0', 'tool'],
  ['t2', 'a0', 'tool'],
  ['s', 'a0', 'agent'],
  ['t3', 's', 'tool'],
];
const EVENTS: Array<[string, EventType]> = [
  ['a0', 'agent_started'], // 1
  ['t1', 'tool_executing'], // 2
  ['t2', 'tool_executing'], // 3
  ['s', 'agent_started'], // 4
  ['t3', 'tool_executing'], // 5
  ['t3', 'tool_completed'], // 6
  ['s', 'agent_completed'], // 7
  ['t1', 'tool_completed'], // 8
  ['t2', 'tool_completed'], // 9
  ['a0', 'agent_completed'], // 10
];

describe('AuditMatcher', () => {
  it('an outcome on a span takes that span\'s own event of its type', () => {
    const { r } = run(LINKS, EVENTS);
    expect(matchAll(r, [['t2', 'tool_executing'], ['t1', 'tool_executing'], ['a0', 'agent_completed'], ['s', 'agent_started']])).toEqual([3, 2, 10, 4]);
  });

  it('outcomes recorded on the agent span go to the events below it, in run order', () => {
    const { r } = run(LINKS, EVENTS);
    // The top agent records every tool's completion itself: t3's (below the sub-agent) comes first in run order.
    expect(matchAll(r, [['a0', 'tool_completed'], ['a0', 'tool_completed'], ['a0', 'tool_completed'], ['a0', 'tool_completed']])).toEqual([6, 8, 9, 0]);
  });

  it('a sub-agent\'s outcomes go only to events below the sub-agent, never to its siblings\'', () => {
    const { r } = run(LINKS, EVENTS);
    expect(matchAll(r, [['s', 'tool_executing'], ['s', 'tool_executing']])).toEqual([5, 0]);
    // t1 and t2 are not below s; they are still open for the top agent's outcome.
    expect(matchAll(r, [['a0', 'tool_executing']])).toEqual([2]);
  });

  it('every outcome on a span that has its own event of the type reports on that event (one per connection): none falls through to a sub-agent', () => {
    const { r } = run(LINKS, EVENTS);
    // Two tabs: the top agent records agent_started and agent_completed twice; the sub-agent s recorded nothing.
    expect(matchAll(r, [['a0', 'agent_started'], ['a0', 'agent_started'], ['a0', 'agent_completed'], ['a0', 'agent_completed']])).toEqual([1, 1, 10, 10]);
    expect(r.events.filter((e) => e.state !== EV_DELIVERED).map((e) => e.seq)).toEqual([2, 3, 4, 5, 6, 7, 8, 9]);
  });

  it('outcomes on their own span count first: an ancestor\'s outcome takes the next open event below, whatever the order they came in', () => {
    const { r } = run(LINKS, EVENTS);
    // The agent's outcome for a tool came before t1's own (OTLP exports in any order): it still leaves t1's event to t1.
    expect(matchAll(r, [['a0', 'tool_executing'], ['t1', 'tool_executing'], ['t1', 'tool_executing']])).toEqual([3, 2, 2]);
    // An event with its outcome already is never taken by an ancestor again.
    expect(matchAll(r, [['a0', 'tool_executing'], ['a0', 'tool_executing']])).toEqual([5, 0]);
  });

  it('parent links that loop end the walk instead of hanging', () => {
    const { r } = run(
      [['x', 'y', 'tool'], ['y', 'x', 'tool'], ['z', undefined, 'agent']],
      [['x', 'tool_executing'], ['x', 'tool_completed'], ['y', 'tool_executing']],
    );
    expect(matchAll(r, [['z', 'tool_executing'], ['z', 'tool_completed']])).toEqual([0, 0]);
    expect(matchAll(r, [['y', 'tool_executing'], ['y', 'tool_executing']])).toEqual([3, 3]);
    expect(matchAll(r, [['y', 'tool_completed']])).toEqual([2]);
  });
});

describe('audit mode with large runs', () => {
  let sc: Sidecar | undefined;
  afterEach(async () => {
    await sc?.close();
    sc = undefined;
  });

  it('a run of 3,000 tools whose outcomes the backend records on the agent span gets its verdict (complete), without stalling the process', async () => {
    sc = await startTestSidecar({ mode: 'audit', graceMillis: 0 }, true);
    const hex = (n: number): string => randomBytes(n).toString('hex');
    const traceId = hex(16);
    const top = hex(8);
    const now = Date.now();
    const outcome = (type: EventType) => ({ name: 'agent.event', timeMs: now, attributes: { 'agent.event.type': type, 'agent.event.outcome': 'delivered' } });
    const tools = 3000;
    const spans: SpanInput[] = [];
    const onAgent = [outcome('agent_started')];
    for (let i = 0; i < tools; i++) {
      spans.push({ traceId, spanId: hex(8), parentSpanId: top, name: 'execute_tool t', startMs: now - 50 + i / 100, endMs: now - 1, attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 't' }, statusCode: 0, events: [] });
      onAgent.push(outcome('tool_executing'), outcome('tool_completed'));
    }
    onAgent.push(outcome('agent_completed'));
    spans.push({ traceId, spanId: top, name: 'invoke_agent a', startMs: now - 100, endMs: now, attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'a', 'user.id': 'u' }, statusCode: 0, events: onAgent });
    for (let i = 0; i < spans.length; i += 512) sc.tw.otlpBridges.ingest(spans.slice(i, i + 512), (err) => { throw err; });
    const runId = `${traceId}-${top}`;
    await until(() => sc!.tw.ledger.get(runId)?.judgement !== undefined, 5000, 'the verdict');
    const j = sc.tw.ledger.get(runId)!.judgement!;
    expect(j.verdict).toBe('complete');
    expect(j.expected).toBe(2 * tools + 2);
    expect(j.delivered).toBe(2 * tools + 2);
    expect(await metricValue(sc, 'tracewire_runs_total', { verdict: 'complete' })).toBe(1);
  }, 20_000);
});
