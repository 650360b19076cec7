import { ROOT_CONTEXT, SpanStatusCode, trace } from '@opentelemetry/api';
import { afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, inProcessTracer, startTestSidecar } from '../helpers.js';

let sc: Sidecar | undefined;
afterEach(async () => {
  await sc?.close();
  sc = undefined;
});

// Names a backend may well send: quotes, backslashes, control characters, non-ASCII, emoji, a lone surrogate.
const NASTY = ['say "hi"', 'C:\\tools\\run', 'line\nbreak\ttab\u0001', 'résumé 日本語', 'rocket 🚀', 'half \ud83d surrogate'];

describe('event JSON (serialised by hand in the bridge)', () => {
  it('every frame is exactly JSON.stringify of the tracewire.v1 envelope, whatever the names contain', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const client = await connectAcked(sc, 'u "1"');
    for (const name of NASTY) {
      const agent = tracer.startSpan(`invoke_agent ${name}`, { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': name, 'user.id': 'u "1"', 'gen_ai.conversation.id': `conv ${name}` } }, ROOT_CONTEXT);
      const ctx = trace.setSpan(ROOT_CONTEXT, agent);
      // A thinking span with no model, a tool with no call id that fails, a sub-agent.
      tracer.startSpan('chat', { attributes: { 'gen_ai.operation.name': 'chat' } }, ctx).end();
      const tool = tracer.startSpan(`execute_tool ${name}`, { attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': name } }, ctx);
      tool.setStatus({ code: SpanStatusCode.ERROR, message: `failed: ${name}` });
      tool.end();
      const sub = tracer.startSpan('invoke_agent helper', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'helper' } }, ctx);
      sub.setAttribute('error.type', name);
      sub.end();
      agent.end();
    }
    await client.until((c) => c.events.length >= NASTY.length * 7, 5000, 'all events');
    const texts = client.texts.filter((t) => !t.startsWith('{"type":"ack"'));
    expect(texts).toHaveLength(NASTY.length * 7);
    for (const t of texts) {
      const o = JSON.parse(t) as Record<string, unknown>;
      expect(t).toBe(JSON.stringify(o));
      expect(Object.keys(o)).toEqual(['type', 'run_id', 'trace_id', 'span_id', 'seq', 'ts', 'agent', 'conversation_id', 'data']);
      expect(new Date(o.ts as string).toISOString()).toBe(o.ts);
    }
    const evs = client.events;
    for (let i = 0; i < NASTY.length; i++) {
      const name = NASTY[i]!; // a lone surrogate is escaped (\ud83d) and parses back to itself
      const run = evs.slice(i * 7, i * 7 + 7);
      expect(run.map((e) => e.data)).toEqual([
        { agent: name },
        { model: null },
        { tool: name, call_id: null },
        { tool: name, call_id: null, status: 'error', duration_ms: expect.any(Number), error: `failed: ${name}` },
        { agent: 'helper', parent_agent: name },
        { agent: 'helper', status: 'error', duration_ms: expect.any(Number), error: name },
        { agent: name, status: 'ok', duration_ms: expect.any(Number) },
      ]);
      expect(run.every((e) => e.conversation_id === `conv ${name}`)).toBe(true);
    }
  });
});
