import { afterEach, describe, expect, it } from 'vitest';
import { DEMO_EXPECTED, runDemoAgent } from '../../src/demo/demoAgent.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, inProcessTracer, startTestSidecar } from '../helpers.js';

let sc: Sidecar | undefined;
afterEach(async () => {
  await sc?.close();
  sc = undefined;
});

describe('in-process run', () => {
  it('streams the supervisor run to its user in causal order with seq 1..N', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const client = await connectAcked(sc, 'alice');
    const ids = await runDemoAgent(tracer, { user: 'alice' });
    await client.until((c) => c.events.length >= DEMO_EXPECTED.length, 5000, 'all events');
    const evs = client.events;
    expect(evs.map((e) => e.type)).toEqual(DEMO_EXPECTED.map((e) => e.type));
    expect(evs.map((e) => e.seq)).toEqual(DEMO_EXPECTED.map((_, i) => i + 1));
    expect(evs.map((e) => e.agent)).toEqual(DEMO_EXPECTED.map((e) => e.agent));
    expect(new Set(evs.map((e) => e.run_id))).toEqual(new Set([`${ids.traceId}-${ids.spanId}`]));
    const failed = evs.find((e) => e.type === 'tool_completed' && (e.data as { tool: string }).tool === 'fetch_page');
    expect(failed?.data).toMatchObject({ status: 'error', call_id: 'call_2', error: 'tool_error' });
    expect(evs.at(-1)).toMatchObject({ type: 'agent_completed', agent: 'supervisor', conversation_id: 'conv-alice' });
    expect(evs[4]!.data).toMatchObject({ agent: 'researcher', parent_agent: 'supervisor' });
  });
});
