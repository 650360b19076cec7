import type { Tracer } from '@opentelemetry/api';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { DEMO_EXPECTED, runDemoAgent } from '../../src/demo/demoAgent.js';
import type { SpanInput } from '../../src/conventions/SpanInput.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, inProcessTracer, metricValue, startTestSidecar, until } from '../helpers.js';
import { getJson, judged, runIdOf } from './support.js';

let sc: Sidecar | undefined;
afterEach(async () => {
  await sc?.close();
  sc = undefined;
});

interface Summary {
  run_id: string;
  agent: string;
  user: string | null;
  verdict: string | null;
  started_at: string;
  status: string;
  explanation: string;
  trace_url: string | null;
}

/** A tiny run (one agent span, two events) for `user` with agent name `agent`; resolves with its run id. */
function tinyRun(tracer: Tracer, agent: string, user: string): string {
  const span = tracer.startSpan(`invoke_agent ${agent}`, { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': agent, 'user.id': user } });
  span.end();
  return runIdOf(span.spanContext());
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Every page of a query, following next_cursor; `between` runs after each page. */
async function allPages(s: Sidecar, query: string, between?: () => Promise<void>): Promise<{ pages: Summary[][]; ids: string[] }> {
  const pages: Summary[][] = [];
  let cursor: string | null = null;
  for (let i = 0; i < 100; i++) {
    const { status, body } = await getJson(s, `/api/runs?${query}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    expect(status).toBe(200);
    pages.push(body.runs);
    cursor = body.next_cursor;
    if (cursor === null) break;
    await between?.();
  }
  return { pages, ids: pages.flat().map((r) => r.run_id) };
}

describe('runs API', () => {
  it('lists newest first with filters and stable cursor pagination while new runs arrive', async () => {
    sc = await startTestSidecar({ graceMillis: 20 });
    const s = sc;
    const { tracer } = inProcessTracer(sc);
    await connectAcked(sc, 'u1'); // u1 listens (complete), u2 does not (missing_events)
    const made: Array<{ id: string; agent: string; user: string; startMs: number }> = [];
    for (let i = 0; i < 23; i++) {
      const agent = i % 3 === 0 ? 'alpha' : 'beta';
      const user = i % 2 === 0 ? 'u1' : 'u2';
      const id = tinyRun(tracer, agent, user);
      await until(() => s.tw.ledger.get(id) !== undefined, 2000, 'run open');
      made.push({ id, agent, user, startMs: s.tw.ledger.get(id)!.startMs });
      await sleep(2); // distinct start times
    }
    await until(() => made.every((m) => s.tw.ledger.get(m.id)?.judgement !== undefined), 5000, 'verdicts');
    const newestFirst = [...made].reverse().map((m) => m.id);

    // Everything, default page size.
    const all = await getJson(sc, '/api/runs');
    expect(all.body.runs.map((r: Summary) => r.run_id)).toEqual(newestFirst);
    expect(all.body.next_cursor).toBeNull();

    // Pages of 5 while new runs keep arriving: no duplicates, no omissions, same order.
    let extra = 0;
    const paged = await allPages(sc, 'limit=5', async () => {
      tinyRun(tracer, 'gamma', 'u1');
      extra++;
      await sleep(3);
    });
    expect(paged.pages.map((p) => p.length)).toEqual([5, 5, 5, 5, 3]);
    expect(paged.ids).toEqual(newestFirst);
    expect(extra).toBe(4);
    // The new runs are on top of a fresh first page.
    const fresh = await getJson(sc, '/api/runs?limit=4');
    expect(fresh.body.runs.map((r: Summary) => r.agent)).toEqual(['gamma', 'gamma', 'gamma', 'gamma']);

    // Filters, alone and together, also paginated.
    const ids = (pred: (m: (typeof made)[number]) => boolean): string[] => [...made].reverse().filter(pred).map((m) => m.id);
    expect((await allPages(sc, 'verdict=complete&agent=alpha&limit=2')).ids).toEqual(ids((m) => m.user === 'u1' && m.agent === 'alpha'));
    expect((await allPages(sc, 'verdict=missing_events&limit=3')).ids).toEqual(ids((m) => m.user === 'u2'));
    expect((await allPages(sc, 'user=u2&agent=beta&limit=4')).ids).toEqual(ids((m) => m.user === 'u2' && m.agent === 'beta'));
    const missing = await getJson(sc, '/api/runs?verdict=missing_events&limit=1');
    expect(missing.body.runs[0]).toMatchObject({ user: 'u2', verdict: 'missing_events', reason: 'no_subscriber', status: 'judged' });
    expect(missing.body.runs[0].explanation).toBe('Agents ran (2 events expected) but none reached user u2: nobody was connected (no_subscriber ×2).');

    // since / until (inclusive, on the start time), epoch ms and ISO 8601.
    const since = made[5]!.startMs;
    const until_ = made[15]!.startMs;
    const window = ids((m) => m.startMs >= since && m.startMs <= until_);
    expect(window).toHaveLength(11);
    expect((await allPages(sc, `since=${Math.ceil(since)}&until=${Math.floor(until_)}&limit=4`)).ids).toEqual(
      ids((m) => m.startMs >= Math.ceil(since) && m.startMs <= Math.floor(until_)),
    );
    const isoSince = new Date(Math.ceil(since)).toISOString();
    expect((await getJson(sc, `/api/runs?since=${isoSince}&agent=alpha&limit=500`)).body.runs.map((r: Summary) => r.run_id)).toEqual(
      ids((m) => m.startMs >= Math.ceil(since) && m.agent === 'alpha'),
    );
    expect((await getJson(sc, '/api/runs?agent=nobody')).body).toEqual({ runs: [], next_cursor: null });

    // In-flight runs are listed too and filterable.
    const open = tracer.startSpan('invoke_agent delta', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'delta', 'user.id': 'u1' } });
    await until(() => s.tw.ledger.get(runIdOf(open.spanContext())) !== undefined, 2000, 'open run');
    const inFlight = await getJson(sc, '/api/runs?verdict=in_flight');
    expect(inFlight.body.runs).toHaveLength(1);
    expect(inFlight.body.runs[0]).toMatchObject({ run_id: runIdOf(open.spanContext()), status: 'in_flight', verdict: null, reason: null, ended_at: null });
    open.end();
  });

  it("the dashboard's per-agent links list the runs counted under each agent label, including `other` past the cap and names cut to 64 characters", async () => {
    sc = await startTestSidecar({ maxAgentLabels: 3, graceMillis: 20 });
    const s = sc;
    const { tracer } = inProcessTracer(sc);
    const long = `research_${'x'.repeat(80)}`;
    const longToo = `research_${'x'.repeat(70)}_2`; // same first 64 characters: the same label
    const agents = ['planner', long, 'writer', 'critic', longToo, 'editor', 'critic'];
    const runs: Array<{ id: string; agent: string }> = [];
    for (const agent of agents) {
      const id = tinyRun(tracer, agent, 'nobody-online'); // missing_events / no_subscriber
      await judged(s, id);
      runs.push({ id, agent });
    }
    // The links of the "Missing-event runs by reason and agent" panel, as Grafana builds them from a series' agent label.
    const dashboard = JSON.parse(readFileSync(new URL('../../dashboards/grafana/tracewire-overview.json', import.meta.url), 'utf8')) as { panels: Array<{ fieldConfig?: { defaults?: { links?: Array<{ url: string }> } } }> };
    const template = dashboard.panels
      .flatMap((p) => p.fieldConfig?.defaults?.links ?? [])
      .map((l) => l.url)
      .find((u) => u.startsWith('${tracewire_url}/api/runs?') && u.includes('agent=${__field.labels.agent}'));
    expect(template).toBeDefined();

    const m = await s.tw.metrics.registry.getSingleMetric('tracewire_runs_total')!.get();
    const labels = [...new Set(m.values.map((v) => String(v.labels.agent)))].sort();
    expect(labels).toEqual(['other', 'planner', long.slice(0, 64), 'writer'].sort());
    const newestFirst = (pred: (agent: string) => boolean): string[] => runs.filter((r) => pred(r.agent)).map((r) => r.id).reverse();
    const expected: Record<string, string[]> = {
      planner: newestFirst((a) => a === 'planner'),
      writer: newestFirst((a) => a === 'writer'),
      [long.slice(0, 64)]: newestFirst((a) => a === long || a === longToo),
      other: newestFirst((a) => a === 'critic' || a === 'editor'),
    };
    for (const label of labels) {
      const url = template!.replace('${tracewire_url}', '').replace('${__field.labels.agent}', encodeURIComponent(label));
      const { status, body } = await getJson(s, url);
      expect(status).toBe(200);
      const ids = body.runs.map((r: Summary) => r.run_id);
      expect(ids, `link for agent label ${label}`).toEqual(expected[label]);
      expect(ids).toHaveLength(await metricValue(s, 'tracewire_runs_total', { verdict: 'missing_events', agent: label }));
    }
    // A full name still filters exactly.
    expect((await getJson(s, `/api/runs?agent=${encodeURIComponent(long)}`)).body.runs.map((r: Summary) => r.run_id)).toEqual(newestFirst((a) => a === long));
    expect((await getJson(s, '/api/runs?agent=critic')).body.runs.map((r: Summary) => r.run_id)).toEqual(newestFirst((a) => a === 'critic'));
  });

  it('answers errors with stable codes', async () => {
    sc = await startTestSidecar();
    const cases: Array<[string, number, string, string]> = [
      ['/api/runs/nope', 404, 'TW_RUN_NOT_FOUND', 'no run "nope" (runs are kept for a bounded count and age)'],
      ['/api/runs?verdict=bogus', 400, 'TW_BAD_QUERY', 'bad query parameter verdict: one of complete, partial, missing_events, abandoned, interrupted, in_flight'],
      ['/api/runs?limit=0', 400, 'TW_BAD_QUERY', 'bad query parameter limit: an integer from 1 to 500'],
      ['/api/runs?limit=501', 400, 'TW_BAD_QUERY', 'bad query parameter limit: an integer from 1 to 500'],
      ['/api/runs?limit=ten', 400, 'TW_BAD_QUERY', 'bad query parameter limit: an integer from 1 to 500'],
      ['/api/runs?limit=2.5', 400, 'TW_BAD_QUERY', 'bad query parameter limit: an integer from 1 to 500'],
      ['/api/runs?since=yesterday', 400, 'TW_BAD_QUERY', 'bad query parameter since: expected epoch milliseconds or an ISO 8601 time'],
      ['/api/runs?until=2026-13-45', 400, 'TW_BAD_QUERY', 'bad query parameter until: expected epoch milliseconds or an ISO 8601 time'],
      ['/api/runs?since=2000&until=1000', 400, 'TW_BAD_QUERY', 'bad query parameter since: must not be after until'],
      ['/api/runs?cursor=!!', 400, 'TW_BAD_QUERY', 'bad query parameter cursor: use next_cursor from the previous page'],
      ['/api/runs?cursor=12', 400, 'TW_BAD_QUERY', 'bad query parameter cursor: use next_cursor from the previous page'],
      ['/api/runs?verdict=complete&verdict=partial', 400, 'TW_BAD_QUERY', 'bad query parameter verdict: give it once'],
      // One run's detail pages its events: the same codes, checked before the run is looked up.
      ['/api/runs/nope?limit=0', 400, 'TW_BAD_QUERY', 'bad query parameter limit: an integer from 1 to 5000'],
      ['/api/runs/nope?limit=5001', 400, 'TW_BAD_QUERY', 'bad query parameter limit: an integer from 1 to 5000'],
      ['/api/runs/nope?cursor=!!', 400, 'TW_BAD_QUERY', 'bad query parameter cursor: use next_cursor from the previous page of this run'],
      // A cursor of the run list is not one of a run's detail.
      [`/api/runs/nope?cursor=${Buffer.from('1000:1').toString('base64url')}`, 400, 'TW_BAD_QUERY', 'bad query parameter cursor: use next_cursor from the previous page of this run'],
      [`/api/runs/nope?cursor=${Buffer.from('seq:12').toString('base64url')}&limit=5000`, 404, 'TW_RUN_NOT_FOUND', 'no run "nope" (runs are kept for a bounded count and age)'],
    ];
    for (const [path, status, code, message] of cases) {
      const res = await getJson(sc, path);
      expect({ path, status: res.status, body: res.body }).toEqual({ path, status, body: { code, message } });
    }
    expect((await getJson(sc, '/api/runs?limit=500&verdict=')).status).toBe(200);
  });

  it('returns one run as a single timeline of spans and events with outcomes, reasons and connections', async () => {
    sc = await startTestSidecar({ traceUrlTemplate: 'http://tempo.local/explore?trace={trace_id}' });
    const { tracer } = inProcessTracer(sc);
    const c1 = await connectAcked(sc, 'alice');
    const c2 = await connectAcked(sc, 'alice');
    const ids = await runDemoAgent(tracer, { user: 'alice', stepMillis: 2 });
    const runId = runIdOf(ids);
    await judged(sc, runId);
    expect(c1.events).toHaveLength(11);
    expect(c2.events).toHaveLength(11);

    const { status, body } = await getJson(sc, `/api/runs/${runId}`);
    expect(status).toBe(200);
    expect(body).toMatchObject({
      run_id: runId,
      trace_id: ids.traceId,
      span_id: ids.spanId,
      agent: 'supervisor',
      user: 'alice',
      conversation_id: 'conv-alice',
      status: 'judged',
      verdict: 'complete',
      reason: 'none',
      expected: 11,
      delivered: 11,
      undelivered_by_type: {},
      reasons: {},
      connection_seen: true,
      explanation: 'All 11 expected events were delivered to user alice.',
      trace_url: `http://tempo.local/explore?trace=${ids.traceId}`,
    });
    expect(Date.parse(body.ended_at)).toBeGreaterThanOrEqual(Date.parse(body.started_at));
    expect(body.spans).toHaveLength(7);
    expect(body.events).toHaveLength(11);

    const line = (t: { what: string; type?: string; name: string | null }): string => (t.what === 'event' ? `event ${t.type}` : `${t.what} ${t.name}`);
    expect(body.timeline.map(line)).toEqual([
      'span_start supervisor',
      'event agent_started',
      'span_start gpt-4o',
      'event agent_thinking',
      'span_end gpt-4o',
      'span_start search_docs',
      'event tool_executing',
      'span_end search_docs',
      'event tool_completed',
      'span_start researcher',
      'event agent_started',
      'span_start gpt-4o-mini',
      'event agent_thinking',
      'span_end gpt-4o-mini',
      'span_start fetch_page',
      'event tool_executing',
      'span_end fetch_page',
      'event tool_completed',
      'span_end researcher',
      'event agent_completed',
      'span_start gpt-4o',
      'event agent_thinking',
      'span_end gpt-4o',
      'span_end supervisor',
      'event agent_completed',
    ]);
    // Offsets are relative to the run start; events keep seq order; each span's end follows its start.
    expect(body.timeline[0].offset_ms).toBe(0);
    for (const t of body.timeline) expect(t.offset_ms).toBeGreaterThanOrEqual(0);
    for (const sp of body.spans) {
      const at = (what: string): number => body.timeline.findIndex((t: { what: string; span_id: string }) => t.what === what && t.span_id === sp.span_id);
      expect(at('span_start')).toBeLessThan(at('span_end'));
    }
    const evs = body.timeline.filter((t: { what: string }) => t.what === 'event');
    expect(evs.map((e: { seq: number }) => e.seq)).toEqual(DEMO_EXPECTED.map((_, i) => i + 1));
    expect(evs.map((e: { type: string }) => e.type)).toEqual(DEMO_EXPECTED.map((e) => e.type));
    for (const e of evs) {
      expect(e).toMatchObject({ what: 'event', outcome: 'delivered', reason: null, connections: 2, attempts: 2, late: false, held: false });
      expect(typeof e.delivered_at).toBe('string');
    }
    const failed = body.timeline.find((t: { what: string; name: string }) => t.what === 'span_end' && t.name === 'fetch_page');
    expect(failed).toMatchObject({ kind: 'tool', error: 'tool_error', depth: 2 });
    expect(failed.duration_ms).toBeGreaterThan(0);
    const researcher = body.spans.find((sp: { name: string }) => sp.name === 'researcher');
    expect(researcher).toMatchObject({ kind: 'agent', parent_span_id: ids.spanId, depth: 1, error: null });
    expect(evs[4]).toMatchObject({ type: 'agent_started', kind: 'agent', name: 'researcher', span_id: researcher.span_id, depth: 1 });

    // The list entry of the same run carries the trace link too.
    const list = await getJson(sc, '/api/runs');
    expect(list.body.runs[0]).toMatchObject({ run_id: runId, trace_url: `http://tempo.local/explore?trace=${ids.traceId}` });
  });

  it("pages a large run's detail by event seq; its pages put together are the whole timeline", async () => {
    sc = await startTestSidecar({ graceMillis: 20 }, true);
    const client = await connectAcked(sc, 'big');
    const traceId = 'b1'.repeat(16);
    const id = (i: number): string => i.toString(16).padStart(16, '0');
    const t0 = Date.now() - 1000;
    const tool = (i: number): SpanInput => ({ traceId, spanId: id(i + 10), parentSpanId: id(1), name: 'execute_tool lookup', startMs: t0 + 1 + i * 0.25, endMs: t0 + 1.1 + i * 0.25, attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': `lookup-${i}` }, statusCode: 0 });
    // An agent with a short thinking span (its end causes no event) and 1,299 tools: 2,600 expected events.
    const spans: SpanInput[] = [
      { traceId, spanId: id(2), parentSpanId: id(1), name: 'chat gpt-4o', startMs: t0 + 0.5, endMs: t0 + 0.6, attributes: { 'gen_ai.operation.name': 'chat', 'gen_ai.request.model': 'gpt-4o' }, statusCode: 0 },
      ...Array.from({ length: 1299 }, (_, i) => tool(i)),
      { traceId, spanId: id(1), name: 'invoke_agent big', startMs: t0, endMs: t0 + 400, attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'big', 'user.id': 'big' }, statusCode: 0 },
    ];
    sc.tw.otlpBridges.ingest(spans, (err) => {
      throw err;
    });
    const runId = `${traceId}-${id(1)}`;
    await judged(sc, runId);
    // agent_started, agent_thinking, 1,299 × (tool_executing, tool_completed), agent_completed.
    await client.until((c) => c.events.length >= 2601, 5000, 'every event');

    // The whole run in one page (the most a page may ask for).
    const whole = (await getJson(sc, `/api/runs/${runId}?limit=5000`)).body;
    expect(whole.next_cursor).toBeNull();
    expect(whole.events).toHaveLength(2601);
    expect(whole.spans).toHaveLength(1301);
    expect(whole.timeline).toHaveLength(2601 + 2 * 1301);
    expect(whole.verdict).toBe('complete');

    /** Every page of the run's detail with `query`, following next_cursor. */
    const pagesOf = async (query: string): Promise<any[]> => {
      const pages: any[] = [];
      let cursor: string | null = null;
      do {
        const { status, body } = await getJson(sc!, `/api/runs/${runId}?${query}${cursor ? `&cursor=${cursor}` : ''}`);
        expect(status).toBe(200);
        pages.push(body);
        cursor = body.next_cursor;
      } while (cursor !== null && pages.length < 10);
      return pages;
    };
    // Default pages of 1,000 events.
    const pages = await pagesOf('');
    expect(pages.map((p) => p.events.length)).toEqual([1000, 1000, 601]);
    for (const p of pages) expect(p).toMatchObject({ run_id: runId, verdict: 'complete', expected: 2601, delivered: 2601 });
    expect(pages.flatMap((p) => p.events)).toEqual(whole.events);
    expect(pages.flatMap((p) => p.spans)).toEqual(whole.spans);
    expect(pages.flatMap((p) => p.timeline)).toEqual(whole.timeline);
    // The thinking span's end (no event) stays right after its start and event, on the first page.
    expect(pages[0].timeline.slice(0, 5).map((t: { what: string; kind: string }) => `${t.what}:${t.kind}`)).toEqual(['span_start:agent', 'event:agent', 'span_start:thinking', 'event:thinking', 'span_end:thinking']);

    // Pages of 999: a tool starts on one page and ends on the next; its end item comes with its end event.
    const odd = await pagesOf('limit=999');
    expect(odd.map((p) => p.events.length)).toEqual([999, 999, 603]);
    expect(odd.flatMap((p) => p.timeline)).toEqual(whole.timeline);
    expect(odd[0].events.at(-1)).toMatchObject({ seq: 999, type: 'tool_executing' });
    expect(odd[1].timeline[0]).toMatchObject({ what: 'span_end', kind: 'tool', span_id: odd[0].events.at(-1).span_id });
    expect(odd[1].spans.map((x: { span_id: string }) => x.span_id)).not.toContain(odd[0].events.at(-1).span_id);

    // A page past the end is empty.
    const end = (await getJson(sc, `/api/runs/${runId}?cursor=${Buffer.from('seq:2601').toString('base64url')}`)).body;
    expect(end).toMatchObject({ events: [], spans: [], timeline: [], next_cursor: null, expected: 2601 });
  });

  it('keeps judged runs bounded by runsMaxCount and runsMaxAgeMillis', async () => {
    sc = await startTestSidecar({ graceMillis: 0, runsMaxCount: 5, runsMaxAgeMillis: 400, runTimeoutMillis: 200 });
    const s = sc;
    const { tracer } = inProcessTracer(sc);
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) {
      ids.push(tinyRun(tracer, 'alpha', 'u9'));
      await sleep(2);
    }
    await until(() => s.tw.ledger.judgedCount === 5 && s.tw.ledger.inFlightCount === 0, 3000, 'judged');
    await until(() => (s.tw.ledger.get(ids[11]!)?.judgement !== undefined), 3000, 'last verdict');
    const listed = (await getJson(sc, '/api/runs')).body.runs.map((r: Summary) => r.run_id);
    expect(listed).toEqual(ids.slice(7).reverse());
    expect((await getJson(sc, `/api/runs/${ids[0]}`)).status).toBe(404);
    expect((await getJson(sc, `/api/runs/${ids[11]}`)).status).toBe(200);
    expect(await metricValue(sc, 'tracewire_runs_trimmed_total', { reason: 'max_count' })).toBe(7);
    expect(await metricValue(sc, 'tracewire_runs_kept')).toBe(5);
    // A tiny run: agent_started and agent_completed, counted as 512 + 2 × 240 bytes, plus a byte per character of its
    // strings: run, trace and span ids (49 + 32 + 16), agent "alpha" (the run's and its span's name), user "u9" (the
    // run's, its verdict sentence's, and the span's own attribute).
    expect(await metricValue(sc, 'tracewire_runs_kept_bytes')).toBe(5 * (992 + 97 + 2 * 5 + 3 * 2));
    await sleep(450);
    expect((await getJson(sc, `/api/runs/${ids[11]}`)).status).toBe(404);
    expect((await getJson(sc, '/api/runs')).body.runs).toEqual([]);
    await until(() => s.tw.ledger.judgedCount === 0, 2000, 'expired runs released');
    // Expiry by age is not a bound giving runs up early: not counted.
    expect(await metricValue(sc, 'tracewire_runs_trimmed_total')).toBe(7);
    expect(await metricValue(sc, 'tracewire_runs_kept_bytes')).toBe(0);
  });

  it('keeps judged runs within runsMaxBytes: large runs push the earliest judged out, the last one always stays', async () => {
    sc = await startTestSidecar({ graceMillis: 0, runsMaxBytes: 200_000 }, true);
    const s = sc;
    const b = sc.tw.otlpBridges;
    /** A run of one agent and `tools` tools, whole in one request: 2 + 2 × tools expected events. */
    const bigRun = (tools: number): string => {
      const traceId = randomBytes(16).toString('hex');
      const top = randomBytes(8).toString('hex');
      const t0 = Date.now() - 100;
      const spans: SpanInput[] = Array.from({ length: tools }, (_, k) => ({ traceId, spanId: randomBytes(8).toString('hex'), parentSpanId: top, name: 'execute_tool lookup', startMs: t0 + k * 0.01, endMs: t0 + k * 0.01 + 0.005, attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'lookup' }, statusCode: 0 }));
      spans.push({ traceId, spanId: top, name: 'invoke_agent big', startMs: t0 - 1, endMs: t0 + 50, attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'big', 'user.id': 'nobody' }, statusCode: 0 });
      b.ingest(spans, (err) => {
        throw err;
      });
      return `${traceId}-${top}`;
    };
    // 5 runs of 199 tools (400 events, 96,512 bytes each, plus 1,315 bytes of strings: run, trace and span ids 97,
    // agent "big" twice, user "nobody" three times, 199 tool names "lookup"): two fit in 200,000.
    const strings = (tools: number): number => 97 + 2 * 3 + 3 * 6 + tools * 6;
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      ids.push(bigRun(199));
      await until(() => s.tw.ledger.get(ids[i]!)?.judgement !== undefined, 3000, 'verdict');
    }
    expect(s.tw.ledger.judgedCount).toBe(2);
    expect((await getJson(sc, '/api/runs')).body.runs.map((r: Summary) => r.run_id)).toEqual([ids[4], ids[3]]);
    expect((await getJson(sc, `/api/runs/${ids[2]}`)).status).toBe(404);
    expect(await metricValue(sc, 'tracewire_runs_trimmed_total', { reason: 'max_bytes' })).toBe(3);
    expect(await metricValue(sc, 'tracewire_runs_kept_bytes')).toBe(2 * (96_512 + strings(199)));
    // One run larger than the bound on its own is still kept (the last judged stays), alone.
    const huge = bigRun(500);
    await until(() => s.tw.ledger.get(huge)?.judgement !== undefined, 3000, 'verdict');
    expect(s.tw.ledger.judgedCount).toBe(1);
    expect((await getJson(sc, `/api/runs/${huge}`)).status).toBe(200);
    expect(await metricValue(sc, 'tracewire_runs_kept_bytes')).toBe(512 + 240 * 1002 + strings(500));
    expect(await metricValue(sc, 'tracewire_runs_trimmed_total', { reason: 'max_bytes' })).toBe(5);
  });

  it('a span whose clock is far outside a Date\'s range (set by hand in process) still lists, shows and streams', async () => {
    sc = await startTestSidecar({ graceMillis: 20 });
    const s = sc;
    const client = await connectAcked(s, 'clock');
    const { tracer } = inProcessTracer(s);
    const span = tracer.startSpan('invoke_agent skewed', { startTime: 1e300, attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'skewed', 'user.id': 'clock' } });
    span.end(1e300);
    const id = runIdOf(span.spanContext());
    await client.until((c) => c.events.length === 2, 3000, 'both events');
    expect(client.events.map((e) => e.type)).toEqual(['agent_started', 'agent_completed']);
    // Shown at the end of a Date's range rather than failing the frame.
    expect(client.events[0]!.ts).toBe('+275760-09-13T00:00:00.000Z');
    await until(() => s.tw.ledger.get(id)?.judgement !== undefined, 3000, 'the verdict');
    const list = await getJson(s, '/api/runs');
    expect(list.status).toBe(200);
    expect(list.body.runs.map((r: Summary) => r.run_id)).toContain(id);
    const one = await getJson(s, `/api/runs/${id}`);
    expect(one.status).toBe(200);
    expect(one.body.started_at).toBe('+275760-09-13T00:00:00.000Z');
    expect(await s.tw.metrics.internalErrors.get().then((m) => m.values.reduce((a, v) => a + v.value, 0))).toBe(0);
  });
});
