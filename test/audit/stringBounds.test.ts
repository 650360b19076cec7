import { randomBytes } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, metricValue, startTestSidecar } from '../helpers.js';
import { jsonRequest, postJson } from '../sources/otlpSupport.js';
import { getJson, judged } from './support.js';

/**
 * What tracewire keeps of a span's strings is bounded (conventions/classify.ts):
 * names, model, call id and error text are cut to 256 characters ending in "…";
 * user and conversation ids over 1,024 characters are ignored, never cut. And
 * tracewire_runs_kept_bytes counts the strings a judged run keeps, so
 * --runs-max-bytes bounds them. Real sidecar, real OTLP/JSON requests, real
 * WebSocket clients.
 */

let sc: Sidecar | undefined;
afterEach(async () => {
  await sc?.close();
  sc = undefined;
});

const MiB = 1024 * 1024;
const CUT = '\u2026';

type Attrs = Record<string, string>;
interface Span {
  readonly spanId: string;
  readonly parentSpanId?: string;
  readonly name: string;
  readonly attrs: Attrs;
  readonly errorMessage?: string;
}

/** One trace as an OTLP/JSON request: every span ended, children listed first (as exporters send them). */
function traceRequest(traceId: string, spans: readonly Span[]): Record<string, unknown> {
  const t0 = BigInt(Date.now() - 50) * 1_000_000n;
  return jsonRequest(
    spans.map((s, i) => ({
      traceId,
      spanId: s.spanId,
      ...(s.parentSpanId !== undefined ? { parentSpanId: s.parentSpanId } : {}),
      name: s.name,
      kind: 1,
      startTimeUnixNano: String(t0 + BigInt(s.parentSpanId === undefined ? 0 : 1000 + i)),
      endTimeUnixNano: String(t0 + BigInt(s.parentSpanId === undefined ? 5_000_000 : 2_000_000 + i)),
      attributes: Object.entries(s.attrs).map(([key, v]) => ({ key, value: { stringValue: v } })),
      status: s.errorMessage !== undefined ? { code: 2, message: s.errorMessage } : { code: 0 },
    })),
  );
}

const hex = (bytes: number): string => randomBytes(bytes).toString('hex');

/** A run: a top-level agent span with these attributes and one tool span below it; posts it, returns its run id. */
async function postRun(s: Sidecar, top: Attrs, tool: Attrs, toolError?: string): Promise<string> {
  const traceId = hex(16);
  const topId = hex(8);
  const req = traceRequest(traceId, [
    { spanId: hex(8), parentSpanId: topId, name: 'execute_tool', attrs: { 'gen_ai.operation.name': 'execute_tool', ...tool }, errorMessage: toolError },
    { spanId: topId, name: 'invoke_agent', attrs: { 'gen_ai.operation.name': 'invoke_agent', ...top } },
  ]);
  const r = await postJson(s.otlpUrl!, req, { timeoutMs: 30_000 });
  expect(r.status).toBe(200);
  return `${traceId}-${topId}`;
}

/** Wait until `n` runs were judged (counted in tracewire_runs_total: a judged run may have left the runs API already). */
async function verdicts(s: Sidecar, n: number): Promise<void> {
  for (let i = 0; i < 500 && (await metricValue(s, 'tracewire_runs_total')) < n; i++) await new Promise((r) => setTimeout(r, 20));
  expect(await metricValue(s, 'tracewire_runs_total')).toBe(n);
}

/** A full garbage collection (the flag can be set at run time; `gc` is then found in a new context). */
function collect(): void {
  setFlagsFromString('--expose_gc');
  const gc = runInNewContext('gc') as () => void;
  gc();
  gc();
}

describe('span strings are bounded on the way in, and counted in tracewire_runs_kept_bytes', () => {
  it('runs with megabyte-long names and ids keep a few KiB each, within --runs-max-bytes; the long user id gives no_user', async () => {
    const runsMaxBytes = 65_536;
    sc = await startTestSidecar({ graceMillis: 0, runsMaxBytes, replayRetentionMillis: 0 }, true);
    const s = sc;
    const big = (c: string, i: number): string => `${c.repeat(MiB)}${i}`;
    collect();
    const before = process.memoryUsage().heapUsed;
    const N = 16;
    const ids: string[] = [];
    // Each run carries six distinct 1 MiB strings: 96 MiB in all, which tracewire kept whole before.
    for (let i = 0; i < N; i++) {
      const top = { 'gen_ai.agent.name': big('a', i), 'user.id': big('u', i), 'gen_ai.conversation.id': big('c', i) };
      const tool = { 'gen_ai.tool.name': big('t', i), 'gen_ai.tool.call.id': big('k', i) };
      ids.push(await postRun(s, top, tool, big('e', i)));
    }
    await verdicts(s, N);
    collect();
    const grownMiB = (process.memoryUsage().heapUsed - before) / MiB;
    // About 15 MiB here (the process's own allocations, the last request's strings); 96 MiB and more if they were kept.
    expect(grownMiB).toBeLessThan(40);

    // All kept (each is small now), and the bytes reported are within the bound and count the kept strings.
    expect(s.tw.ledger.judgedCount).toBe(N);
    const kept = await metricValue(s, 'tracewire_runs_kept_bytes');
    expect(kept).toBeLessThanOrEqual(runsMaxBytes);
    // Per run: 512 + 4 events × 240, its ids (97), the agent name cut to 256 (the run's and its span's), the tool
    // name, call id and error cut to 256 each; no user, no conversation.
    expect(kept).toBe(N * (512 + 4 * 240 + 97 + 2 * 256 + 3 * 256));

    // The run as the runs API shows it: the agent name cut with a visible mark, no user, no conversation, no_user.
    const { body } = await getJson(s, `/api/runs/${ids[3]}`);
    expect(body.agent).toBe(`${'a'.repeat(255)}${CUT}`);
    expect(body).toMatchObject({ user: null, conversation_id: null, verdict: 'missing_events', reason: 'no_user', reasons: { no_user: 4 } });
    expect(body.explanation).toContain('the run carries no user id');
    expect(body.spans.find((x: { kind: string }) => x.kind === 'tool')).toMatchObject({ name: `${'t'.repeat(255)}${CUT}`, error: `${'e'.repeat(255)}${CUT}` });
    expect(await metricValue(s, 'tracewire_events_dropped_total', { reason: 'no_user' })).toBe(4 * N);
    for (const field of ['user_id', 'conversation_id', 'agent_name', 'tool_name', 'call_id', 'error']) {
      expect(await metricValue(s, 'tracewire_span_values_limited_total', { field })).toBe(N);
    }
    expect(await metricValue(s, 'tracewire_span_values_limited_total', { field: 'model' })).toBe(0);
  }, 60_000);

  it('a user id over 1,024 characters is never cut: the user whose id is its first 1,024 characters receives nothing', async () => {
    sc = await startTestSidecar({ graceMillis: 0 }, true);
    const s = sc;
    const prefix = `user-${'p'.repeat(1019)}`; // 1,024 characters: the longest id kept
    const prefixClient = await connectAcked(s, prefix);
    const longRun = await postRun(s, { 'gen_ai.agent.name': 'planner', 'user.id': `${prefix}-and-more` }, { 'gen_ai.tool.name': 'lookup' });
    expect(await judged(s, longRun)).toMatchObject({ user: undefined, judgement: { verdict: 'missing_events', mainReason: 'no_user' } });
    // Then a run of the prefix user itself: its events arrive on the same connection after anything of the first run would have.
    const ownRun = await postRun(s, { 'gen_ai.agent.name': 'planner', 'user.id': prefix }, { 'gen_ai.tool.name': 'lookup' });
    await prefixClient.until((c) => c.events.some((e) => e.type === 'agent_completed'), 5000, 'the prefix user\'s own run');
    expect(prefixClient.events.map((e) => `${e.run_id as string}:${e.type}`)).toEqual(
      ['agent_started', 'tool_executing', 'tool_completed', 'agent_completed'].map((t) => `${ownRun}:${t}`),
    );
    expect((await judged(s, ownRun)).judgement).toMatchObject({ verdict: 'complete' });
    expect(await metricValue(s, 'tracewire_span_values_limited_total', { field: 'user_id' })).toBe(1);
  });

  it('a span whose user id is over the limit is never routed to another user: not by its next key, not by its parent\'s user, not by a later span', async () => {
    sc = await startTestSidecar({ graceMillis: 0 }, true);
    const s = sc;
    const alice = await connectAcked(s, 'alice');
    const long = 'b'.repeat(1025);
    // (i) The same span names alice under another key.
    const both = await postRun(s, { 'gen_ai.agent.name': 'planner', 'user.id': long, 'enduser.id': 'alice' }, { 'gen_ai.tool.name': 'lookup' });
    // (ii) alice's request span above an agent span that names the long id; (iii) a tool below it names alice.
    const traceId = hex(16);
    const [reqId, agentId] = [hex(8), hex(8)];
    const r = await postJson(s.otlpUrl!, traceRequest(traceId, [
      { spanId: hex(8), parentSpanId: agentId, name: 'execute_tool', attrs: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'lookup', 'user.id': 'alice' } },
      { spanId: agentId, parentSpanId: reqId, name: 'invoke_agent', attrs: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'planner', 'user.id': long } },
      { spanId: reqId, name: 'POST /chat', attrs: { 'user.id': 'alice' } },
    ]));
    expect(r.status).toBe(200);
    for (const id of [both, `${traceId}-${agentId}`]) {
      expect(await judged(s, id)).toMatchObject({ user: undefined, judgement: { verdict: 'missing_events', mainReason: 'no_user' } });
    }
    expect(alice.events).toEqual([]);
  });

  it('a user sees an over-long tool name, call id and error cut to 256 characters ending in "…"', async () => {
    sc = await startTestSidecar({ graceMillis: 0 }, true);
    const s = sc;
    const client = await connectAcked(s, 'u-cut');
    const runId = await postRun(s, { 'gen_ai.agent.name': 'planner', 'user.id': 'u-cut' }, { 'gen_ai.tool.name': 'n'.repeat(300_000), 'gen_ai.tool.call.id': 'k'.repeat(257) }, 'e'.repeat(5000));
    await client.until((c) => c.events.some((e) => e.type === 'agent_completed'), 5000, 'the run');
    const done = client.events.find((e) => e.type === 'tool_completed')!;
    expect(done.run_id).toBe(runId);
    expect(done.data).toMatchObject({ tool: `${'n'.repeat(255)}${CUT}`, call_id: `${'k'.repeat(255)}${CUT}`, status: 'error', error: `${'e'.repeat(255)}${CUT}` });
    expect(client.events.find((e) => e.type === 'tool_executing')!.data).toMatchObject({ tool: `${'n'.repeat(255)}${CUT}`, call_id: `${'k'.repeat(255)}${CUT}` });
    expect((await judged(s, runId)).judgement).toMatchObject({ verdict: 'complete' });
  });

  it('kept bytes count the strings runs keep: runs at the limits push the earliest judged out (max_bytes)', async () => {
    const runsMaxBytes = 262_144;
    sc = await startTestSidecar({ graceMillis: 0, runsMaxBytes, replayRetentionMillis: 0 }, true);
    const s = sc;
    const TOOLS = 20;
    const user = `u-${'x'.repeat(998)}`; // 1,000 characters: kept
    const conv = `c-${'y'.repeat(998)}`;
    const ids: string[] = [];
    for (let r = 0; r < 8; r++) {
      const traceId = hex(16);
      const topId = hex(8);
      const spans: Span[] = [];
      // Every span carries the user and conversation ids itself (each decoded into its own string), as many SDKs do.
      for (let i = 0; i < TOOLS; i++) {
        spans.push({
          spanId: hex(8), parentSpanId: topId, name: 'execute_tool',
          attrs: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'n'.repeat(400), 'gen_ai.tool.call.id': 'k'.repeat(400), 'user.id': user, 'gen_ai.conversation.id': conv },
          errorMessage: 'e'.repeat(400),
        });
      }
      spans.push({ spanId: topId, name: 'invoke_agent', attrs: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'planner', 'user.id': user, 'gen_ai.conversation.id': conv } });
      expect((await postJson(s.otlpUrl!, traceRequest(traceId, spans))).status).toBe(200);
      ids.push(`${traceId}-${topId}`);
      await judged(s, ids[r]!);
    }
    // Per run: 512 + 42 events × 240 (10,592), its ids (97), agent "planner" twice, the user twice (id and verdict
    // sentence) and the conversation, the top span's own user and conversation, and per tool span its name, call id and
    // error (cut to 256) and its own user and conversation: 71,063 bytes. Three fit in 262,144.
    const perRun = 512 + 42 * 240 + 97 + 2 * 7 + 3 * 1000 + 2 * 1000 + TOOLS * (3 * 256 + 2 * 1000);
    expect(perRun).toBe(71_063);
    expect(s.tw.ledger.judgedCount).toBe(3);
    expect(await metricValue(s, 'tracewire_runs_kept_bytes')).toBe(3 * perRun);
    expect(await metricValue(s, 'tracewire_runs_kept_bytes')).toBeLessThanOrEqual(runsMaxBytes);
    expect(await metricValue(s, 'tracewire_runs_trimmed_total', { reason: 'max_bytes' })).toBe(5);
    expect((await getJson(s, '/api/runs')).body.runs.map((r: { run_id: string }) => r.run_id)).toEqual(ids.slice(5).reverse());
    // The ids were kept whole.
    expect((await getJson(s, `/api/runs/${ids[7]}`)).body).toMatchObject({ user, conversation_id: conv });
  });
});

describe('tracewire_span_values_limited_total per instance', () => {
  it('counts in the instance that saw the span, not in every instance of the process', async () => {
    const a = await startTestSidecar();
    const b = await startTestSidecar();
    try {
      const tracer = new (await import('@opentelemetry/sdk-trace-base')).BasicTracerProvider({ spanProcessors: [a.tw.spanProcessor()] }).getTracer('limits');
      tracer.startSpan('invoke_agent', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'n'.repeat(300), 'user.id': 'u' } }).end();
      await new Promise((r) => setTimeout(r, 50));
      expect(await metricValue(a, 'tracewire_span_values_limited_total', { field: 'agent_name' })).toBe(1);
      expect(await metricValue(b, 'tracewire_span_values_limited_total', { field: 'agent_name' })).toBe(0);
    } finally {
      await a.close();
      await b.close();
    }
  });
});
