import { propagation, ROOT_CONTEXT, trace } from '@opentelemetry/api';
import { afterEach, describe, expect, it } from 'vitest';
import { classify, type Classified } from '../../src/conventions/classify.js';
import { STATUS_ERROR, STATUS_OK, STATUS_UNSET, type SpanInput } from '../../src/conventions/SpanInput.js';
import { DEMO_EXPECTED, runDemoAgent } from '../../src/demo/demoAgent.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import type { RunRecord } from '../../src/audit/RunRecord.js';
import { connectAcked, inProcessTracer, startTestSidecar, until, type TestClient } from '../helpers.js';

function span(name: string, attributes: Record<string, unknown> = {}, extra: Partial<SpanInput> = {}): SpanInput {
  return { traceId: 't'.repeat(32), spanId: 's'.repeat(16), name, startMs: 0, attributes, statusCode: STATUS_UNSET, ...extra };
}

const NONE: Classified = {
  kind: undefined, name: undefined, callId: undefined, model: undefined,
  user: undefined, conversation: undefined, userFromBaggage: false, conversationFromBaggage: false, error: undefined, convention: undefined,
};

describe('classify: OTel GenAI semantic conventions (gen_ai.operation.name)', () => {
  it.each(['invoke_agent', 'invoke_workflow'])('%s is an agent span named by gen_ai.agent.name', (op) => {
    expect(classify(span(`${op} planner`, { 'gen_ai.operation.name': op, 'gen_ai.agent.name': 'supervisor', 'gen_ai.request.model': 'gpt-4o' }))).toEqual({
      ...NONE, kind: 'agent', name: 'supervisor', model: 'gpt-4o', convention: 'gen_ai',
    });
  });

  it('an agent with no gen_ai.agent.name is named after "invoke_agent "', () => {
    expect(classify(span('invoke_agent researcher', { 'gen_ai.operation.name': 'invoke_agent' }))).toMatchObject({ kind: 'agent', name: 'researcher', convention: 'gen_ai' });
    expect(classify(span('invoke_workflow nightly', { 'gen_ai.operation.name': 'invoke_workflow' }))).toMatchObject({ kind: 'agent', name: 'nightly' });
  });

  it.each(['chat', 'text_completion', 'generate_content', 'plan'])('%s is a thinking span whose name is the model', (op) => {
    expect(classify(span(`${op} gpt-4o`, { 'gen_ai.operation.name': op, 'gen_ai.request.model': 'gpt-4o' }))).toEqual({
      ...NONE, kind: 'thinking', name: 'gpt-4o', model: 'gpt-4o', convention: 'gen_ai',
    });
  });

  it('execute_tool is a tool span with gen_ai.tool.name and gen_ai.tool.call.id', () => {
    expect(classify(span('execute_tool x', { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'search_docs', 'gen_ai.tool.call.id': 'call_1' }))).toEqual({
      ...NONE, kind: 'tool', name: 'search_docs', callId: 'call_1', convention: 'gen_ai',
    });
  });

  it('a tool span with only its name set (attributes come later) is recognised at start', () => {
    expect(classify(span('execute_tool search_docs'))).toEqual({ ...NONE, kind: 'tool', name: 'search_docs', convention: 'gen_ai' });
  });

  it('agent and thinking spans with only their name set are recognised', () => {
    expect(classify(span('invoke_agent supervisor'))).toEqual({ ...NONE, kind: 'agent', name: 'supervisor', convention: 'gen_ai' });
    expect(classify(span('invoke_workflow billing'))).toMatchObject({ kind: 'agent', name: 'billing', convention: 'gen_ai' });
    expect(classify(span('chat gpt-4o'))).toEqual({ ...NONE, kind: 'thinking', name: 'gpt-4o', model: 'gpt-4o', convention: 'gen_ai' });
    expect(classify(span('text_completion davinci'))).toMatchObject({ kind: 'thinking', model: 'davinci', convention: 'gen_ai' });
    expect(classify(span('generate_content gemini-2.0'))).toMatchObject({ kind: 'thinking', model: 'gemini-2.0' });
  });

  it('span-name matching is by the whole operation word', () => {
    expect(classify(span('invoke_agents_batch')).kind).toBeUndefined();
    expect(classify(span('execute_tools_cleanup')).kind).toBeUndefined();
    expect(classify(span('chatty logger')).kind).toBeUndefined();
    expect(classify(span('chat')).kind).toBeUndefined();
  });

  it('an explicit non-lifecycle gen_ai.operation.name is not overridden by the span name', () => {
    expect(classify(span('chat gpt-4o', { 'gen_ai.operation.name': 'embeddings' })).kind).toBeUndefined();
    expect(classify(span('invoke_agent x', { 'gen_ai.operation.name': 'create_agent' })).kind).toBeUndefined();
  });

  it('other GenAI operations are not lifecycle spans', () => {
    for (const op of ['embeddings', 'create_agent', 'retrieval']) {
      expect(classify(span(`${op} x`, { 'gen_ai.operation.name': op, 'gen_ai.agent.name': 'a' })).kind, op).toBeUndefined();
    }
  });

  it('ordinary spans are not lifecycle spans and carry no error even when they failed', () => {
    expect(classify(span('GET /chat', { 'http.request.method': 'GET' }, { statusCode: STATUS_ERROR, statusMessage: 'boom' }))).toEqual(NONE);
    expect(classify(span('chatroom.join'))).toEqual(NONE);
    expect(classify(span('SELECT users'))).toEqual(NONE);
  });
});

describe('classify: OpenInference (openinference.span.kind)', () => {
  it('AGENT is an agent span', () => {
    expect(classify(span('research_agent', { 'openinference.span.kind': 'AGENT', 'agent.name': 'researcher' }))).toEqual({ ...NONE, kind: 'agent', name: 'researcher', convention: 'openinference' });
    expect(classify(span('research_agent', { 'openinference.span.kind': 'AGENT' }))).toMatchObject({ kind: 'agent', name: 'research_agent' });
  });

  it('LLM is a thinking span, model from llm.model_name', () => {
    expect(classify(span('ChatOpenAI', { 'openinference.span.kind': 'LLM', 'llm.model_name': 'gpt-4o-mini' }))).toEqual({
      ...NONE, kind: 'thinking', name: 'gpt-4o-mini', model: 'gpt-4o-mini', convention: 'openinference',
    });
  });

  it('TOOL is a tool span, name from tool.name, call id from tool_call.id', () => {
    expect(classify(span('search', { 'openinference.span.kind': 'TOOL', 'tool.name': 'web_search', 'tool_call.id': 'tc_9' }))).toEqual({
      ...NONE, kind: 'tool', name: 'web_search', callId: 'tc_9', convention: 'openinference',
    });
  });

  it('CHAIN, RETRIEVER and EMBEDDING are not lifecycle spans', () => {
    for (const k of ['CHAIN', 'RETRIEVER', 'EMBEDDING', 'RERANKER']) expect(classify(span('x', { 'openinference.span.kind': k })).kind, k).toBeUndefined();
  });

  it('user and conversation from user.id and session.id', () => {
    expect(classify(span('a', { 'openinference.span.kind': 'AGENT', 'user.id': 'u1', 'session.id': 's1' }))).toMatchObject({ user: 'u1', conversation: 's1' });
  });
});

describe('classify: OpenLLMetry (traceloop.span.kind, llm.request.type)', () => {
  it.each(['agent', 'workflow'])('%s is an agent span named by traceloop.entity.name', (k) => {
    expect(classify(span(`joke_${k}.${k}`, { 'traceloop.span.kind': k, 'traceloop.entity.name': 'joke_teller' }))).toEqual({
      ...NONE, kind: 'agent', name: 'joke_teller', convention: 'openllmetry',
    });
  });

  it('tool is a tool span named by traceloop.entity.name', () => {
    expect(classify(span('get_weather.tool', { 'traceloop.span.kind': 'tool', 'traceloop.entity.name': 'get_weather' }))).toEqual({
      ...NONE, kind: 'tool', name: 'get_weather', convention: 'openllmetry',
    });
  });

  it('an LLM request span (llm.request.type) is a thinking span', () => {
    expect(classify(span('openai.chat', { 'llm.request.type': 'chat', 'llm.request.model': 'gpt-4' }))).toEqual({
      ...NONE, kind: 'thinking', name: 'gpt-4', model: 'gpt-4', convention: 'openllmetry',
    });
    expect(classify(span('anthropic.completion', { 'llm.request.type': 'completion', 'gen_ai.request.model': 'claude-3' }))).toMatchObject({ kind: 'thinking', model: 'claude-3' });
  });

  it('task spans are not lifecycle spans', () => {
    expect(classify(span('step.task', { 'traceloop.span.kind': 'task', 'traceloop.entity.name': 'step' })).kind).toBeUndefined();
  });
});

describe('classify: Vercel AI SDK telemetry', () => {
  const base = { 'ai.telemetry.functionId': 'weather-agent', 'ai.telemetry.metadata.userId': 'carol', 'ai.model.id': 'mock-model-id' };

  it.each(['ai.generateText', 'ai.streamText', 'ai.generateObject', 'ai.streamObject'])('the top-level %s span is an agent named by ai.telemetry.functionId', (op) => {
    expect(classify(span(op, { ...base, 'ai.operationId': op }))).toEqual({ ...NONE, kind: 'agent', name: 'weather-agent', user: 'carol', convention: 'vercel_ai' });
  });

  it('without a functionId the agent is named after the operation', () => {
    expect(classify(span('ai.generateText', { 'ai.operationId': 'ai.generateText' }))).toMatchObject({ kind: 'agent', name: 'ai.generateText' });
  });

  it.each(['ai.generateText.doGenerate', 'ai.streamText.doStream', 'ai.generateObject.doGenerate', 'ai.streamObject.doStream'])('the model call %s is a thinking span', (op) => {
    expect(classify(span(op, { ...base, 'ai.operationId': op }))).toEqual({
      ...NONE, kind: 'thinking', name: 'mock-model-id', model: 'mock-model-id', user: 'carol', convention: 'vercel_ai',
    });
  });

  it('ai.toolCall is a tool span named by ai.toolCall.name with ai.toolCall.id', () => {
    expect(classify(span('ai.toolCall', { ...base, 'ai.operationId': 'ai.toolCall', 'ai.toolCall.name': 'getWeather', 'ai.toolCall.id': 'call-1' }))).toEqual({
      ...NONE, kind: 'tool', name: 'getWeather', callId: 'call-1', user: 'carol', convention: 'vercel_ai',
    });
  });

  it('recognised by span name when ai.operationId is absent', () => {
    expect(classify(span('ai.streamText')).kind).toBe('agent');
    expect(classify(span('ai.streamText.doStream')).kind).toBe('thinking');
    expect(classify(span('ai.toolCall', { 'ai.toolCall.name': 't' }))).toMatchObject({ kind: 'tool', name: 't' });
  });

  it('embedding operations are not lifecycle spans', () => {
    for (const op of ['ai.embed', 'ai.embed.doEmbed', 'ai.embedMany', 'ai.embedMany.doEmbed']) expect(classify(span(op, { 'ai.operationId': op })).kind, op).toBeUndefined();
  });

  it('conversation from ai.telemetry.metadata.conversationId or sessionId', () => {
    expect(classify(span('ai.generateText', { 'ai.telemetry.metadata.conversationId': 'c-7' })).conversation).toBe('c-7');
    expect(classify(span('ai.generateText', { 'ai.telemetry.metadata.sessionId': 's-7' })).conversation).toBe('s-7');
  });
});

describe('classify: first match wins across conventions', () => {
  it('gen_ai.operation.name beats openinference.span.kind beats traceloop.span.kind', () => {
    expect(classify(span('x', { 'gen_ai.operation.name': 'execute_tool', 'openinference.span.kind': 'AGENT', 'gen_ai.tool.name': 't' }))).toMatchObject({ kind: 'tool', convention: 'gen_ai' });
    expect(classify(span('x', { 'openinference.span.kind': 'LLM', 'traceloop.span.kind': 'agent' }))).toMatchObject({ kind: 'thinking', convention: 'openinference' });
    expect(classify(span('x', { 'traceloop.span.kind': 'tool', 'llm.request.type': 'chat' }))).toMatchObject({ kind: 'tool', convention: 'openllmetry' });
  });

  it('gen_ai.operation.name attributes beat the Vercel span name (AI SDK spans carry gen_ai.* too)', () => {
    expect(classify(span('ai.generateText.doGenerate', { 'gen_ai.operation.name': 'chat', 'gen_ai.request.model': 'm' }))).toMatchObject({ kind: 'thinking', convention: 'gen_ai', model: 'm' });
  });
});

describe('classify: user, conversation, model, errors', () => {
  it('user from user.id, then enduser.id, then ai.telemetry.metadata.userId, then baggage', () => {
    const a = { 'gen_ai.operation.name': 'invoke_agent' };
    expect(classify(span('x', { ...a, 'user.id': 'u1', 'enduser.id': 'u2', 'ai.telemetry.metadata.userId': 'u3' }, { baggageUser: 'u4' })).user).toBe('u1');
    expect(classify(span('x', { ...a, 'enduser.id': 'u2', 'ai.telemetry.metadata.userId': 'u3' }, { baggageUser: 'u4' })).user).toBe('u2');
    expect(classify(span('x', { ...a, 'ai.telemetry.metadata.userId': 'u3' }, { baggageUser: 'u4' })).user).toBe('u3');
    expect(classify(span('x', a, { baggageUser: 'u4' })).user).toBe('u4');
    expect(classify(span('x', { ...a, 'user.id': '' })).user).toBeUndefined();
    expect(classify(span('x', { ...a, 'user.id': 42 })).user).toBe('42');
  });

  it('user and conversation are read from non-lifecycle spans too (they are inherited)', () => {
    expect(classify(span('POST /chat', { 'user.id': 'bob', 'session.id': 'c-9' }))).toEqual({ ...NONE, user: 'bob', conversation: 'c-9' });
  });

  it('conversation from gen_ai.conversation.id, then session.id, then baggage', () => {
    const a = { 'gen_ai.operation.name': 'invoke_agent' };
    expect(classify(span('x', { ...a, 'gen_ai.conversation.id': 'c1', 'session.id': 's1' }, { baggageConversation: 'b1' })).conversation).toBe('c1');
    expect(classify(span('x', { ...a, 'session.id': 's1' }, { baggageConversation: 'b1' })).conversation).toBe('s1');
    expect(classify(span('x', a, { baggageConversation: 'b1' })).conversation).toBe('b1');
  });

  it('model from gen_ai.request.model, then ai.model.id, llm.model_name, llm.request.model', () => {
    const t = { 'gen_ai.operation.name': 'chat' };
    expect(classify(span('x', { ...t, 'gen_ai.request.model': 'a', 'ai.model.id': 'b' })).model).toBe('a');
    expect(classify(span('x', { ...t, 'ai.model.id': 'b', 'llm.model_name': 'c' })).model).toBe('b');
    expect(classify(span('x', { ...t, 'llm.model_name': 'c', 'llm.request.model': 'd' })).model).toBe('c');
    expect(classify(span('x', { ...t, 'llm.request.model': 'd' })).model).toBe('d');
    expect(classify(span('chat', t)).model).toBeUndefined();
  });

  it('tool call id from gen_ai.tool.call.id, then ai.toolCall.id, then tool_call.id', () => {
    const t = { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 't' };
    expect(classify(span('x', { ...t, 'gen_ai.tool.call.id': 'a', 'ai.toolCall.id': 'b' })).callId).toBe('a');
    expect(classify(span('x', { ...t, 'ai.toolCall.id': 'b', 'tool_call.id': 'c' })).callId).toBe('b');
    expect(classify(span('x', { ...t, 'tool_call.id': 'c' })).callId).toBe('c');
  });

  it('errors: error.type wins, else the ERROR status message, else "error"', () => {
    const t = { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 't' };
    expect(classify(span('x', { ...t, 'error.type': 'timeout' }, { statusCode: STATUS_ERROR, statusMessage: 'took too long' })).error).toBe('timeout');
    expect(classify(span('x', t, { statusCode: STATUS_ERROR, statusMessage: 'took too long' })).error).toBe('took too long');
    expect(classify(span('x', t, { statusCode: STATUS_ERROR })).error).toBe('error');
    expect(classify(span('x', { ...t, 'error.type': 'rate_limited' }, { statusCode: STATUS_UNSET })).error).toBe('rate_limited');
    expect(classify(span('x', t, { statusCode: STATUS_OK })).error).toBeUndefined();
    expect(classify(span('x', t, { statusCode: STATUS_UNSET, statusMessage: 'ignored' })).error).toBeUndefined();
  });
});

// ---- in process: routing by an ancestor's attributes or by W3C baggage ------------------

let sc: Sidecar | undefined;
afterEach(async () => {
  await sc?.close();
  sc = undefined;
});

async function expectDemoRun(client: TestClient, ids: { traceId: string; spanId: string }, conversation: string): Promise<void> {
  await client.until((c) => c.events.length >= DEMO_EXPECTED.length, 5000, 'all events');
  await new Promise((r) => setTimeout(r, 50));
  const evs = client.events;
  expect(evs.map((e) => e.type)).toEqual(DEMO_EXPECTED.map((e) => e.type));
  expect(evs.map((e) => e.seq)).toEqual(DEMO_EXPECTED.map((_, i) => i + 1));
  expect(new Set(evs.map((e) => e.run_id))).toEqual(new Set([`${ids.traceId}-${ids.spanId}`]));
  expect(new Set(evs.map((e) => e.conversation_id))).toEqual(new Set([conversation]));
}

describe('in process: user and conversation inherited from outside the agent span', () => {
  it('an HTTP root span with user.id routes its child agent run to that user', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const bob = await connectAcked(sc, 'bob');
    const other = await connectAcked(sc, 'eve');
    const http = tracer.startSpan('POST /chat', { attributes: { 'http.request.method': 'POST', 'user.id': 'bob' } });
    const ids = await runDemoAgent(tracer, { user: 'bob', conversation: 'c-http', userOnSpan: false, parent: trace.setSpan(ROOT_CONTEXT, http) });
    http.end();
    await expectDemoRun(bob, ids, 'c-http');
    expect(other.events).toEqual([]);
  });

  it('a conversation set only on the HTTP root span is inherited too', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const bob = await connectAcked(sc, 'bob');
    const narrowed = await connectAcked(sc, 'bob', 'conversation_id=c-root');
    const http = tracer.startSpan('POST /chat', { attributes: { 'enduser.id': 'bob', 'session.id': 'c-root' } });
    // The demo agent always sets gen_ai.conversation.id on its top span; build a run without it.
    const parent = trace.setSpan(ROOT_CONTEXT, http);
    const agent = tracer.startSpan('invoke_agent helper', { attributes: { 'gen_ai.operation.name': 'invoke_agent' } }, parent);
    const tool = tracer.startSpan('execute_tool lookup', {}, trace.setSpan(parent, agent));
    tool.end();
    agent.end();
    http.end();
    await narrowed.until((c) => c.events.length >= 4, 5000, 'narrowed events');
    await bob.until((c) => c.events.length >= 4, 5000, 'events');
    for (const c of [bob, narrowed]) {
      expect(c.events.map((e) => [e.type, e.seq, e.conversation_id])).toEqual([
        ['agent_started', 1, 'c-root'], ['tool_executing', 2, 'c-root'], ['tool_completed', 3, 'c-root'], ['agent_completed', 4, 'c-root'],
      ]);
    }
    expect(bob.events[1]!.data).toMatchObject({ tool: 'lookup' });
  });

  // DESIGN: "Spans inherit user and conversation from their nearest ancestor in the trace."
  // Known bug (reported): the in-process processor reads only the immediate parent's attributes and
  // the registry drops non-lifecycle spans before a run exists, so a user two levels up is lost and the
  // run's events are dropped as no_user. Flip to `it` once TracewireSpanProcessor carries inherited identity.
  it('a user.id on a grandparent non-lifecycle span (HTTP span > middleware span > agent) routes the run', async () => {
    const verdicts: RunRecord[] = [];
    sc = await startTestSidecar({ onVerdict: (r) => verdicts.push(r) });
    const { tracer } = inProcessTracer(sc);
    const bob = await connectAcked(sc, 'bob');
    const http = tracer.startSpan('POST /chat', { attributes: { 'user.id': 'bob' } });
    const httpCtx = trace.setSpan(ROOT_CONTEXT, http);
    const mw = tracer.startSpan('auth middleware', {}, httpCtx);
    const ids = await runDemoAgent(tracer, { user: 'bob', conversation: 'c-gp', userOnSpan: false, parent: trace.setSpan(httpCtx, mw) });
    mw.end();
    http.end();
    await until(() => verdicts.length === 1, 5000, 'verdict');
    expect(verdicts[0]!.user).toBe('bob');
    await expectDemoRun(bob, ids, 'c-gp');
  });

  it('W3C baggage user.id / gen_ai.conversation.id on the parent context routes the run', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const dora = await connectAcked(sc, 'dora');
    const other = await connectAcked(sc, 'eve');
    const bag = propagation.createBaggage({ 'user.id': { value: 'dora' }, 'gen_ai.conversation.id': { value: 'c-bag' } });
    const ids = await runDemoAgent(tracer, { user: 'dora', conversation: 'c-bag', userOnSpan: false, parent: propagation.setBaggage(ROOT_CONTEXT, bag) });
    await expectDemoRun(dora, ids, 'c-bag');
    expect(other.events).toEqual([]);
  });

  // README: a span's own attributes, then its nearest ancestor's user and conversation, then W3C baggage.
  it('a parent span\'s user.id outranks W3C baggage user.id; with no ancestor user, the baggage routes the run', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const ann = await connectAcked(sc, 'ann');
    const bea = await connectAcked(sc, 'bea');
    // The request came in with baggage naming bea; the server span names the user it authenticated, ann.
    const bagged = propagation.setBaggage(ROOT_CONTEXT, propagation.createBaggage({ 'user.id': { value: 'bea' } }));
    const http = tracer.startSpan('POST /chat', { attributes: { 'http.request.method': 'POST', 'user.id': 'ann' } }, bagged);
    const ids = await runDemoAgent(tracer, { user: 'ann', conversation: 'c-ann', userOnSpan: false, parent: trace.setSpan(bagged, http) });
    http.end();
    await expectDemoRun(ann, ids, 'c-ann');
    expect(bea.events).toEqual([]);
    expect(sc.tw.ledger.get(`${ids.traceId}-${ids.spanId}`)!.user).toBe('ann');
    // The same baggage, and no ancestor with a user: bea's run.
    const anon = tracer.startSpan('POST /chat', { attributes: { 'http.request.method': 'POST' } }, bagged);
    const ids2 = await runDemoAgent(tracer, { user: 'bea', conversation: 'c-bea', userOnSpan: false, parent: trace.setSpan(bagged, anon) });
    anon.end();
    await expectDemoRun(bea, ids2, 'c-bea');
    expect(ann.events).toHaveLength(DEMO_EXPECTED.length);
  });

  it('a parent span\'s session.id outranks W3C baggage gen_ai.conversation.id', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const ann = await connectAcked(sc, 'ann');
    const bagged = propagation.setBaggage(ROOT_CONTEXT, propagation.createBaggage({ 'gen_ai.conversation.id': { value: 'c-bag' } }));
    const http = tracer.startSpan('POST /chat', { attributes: { 'user.id': 'ann', 'session.id': 'c-parent' } }, bagged);
    const parent = trace.setSpan(bagged, http);
    // The demo agent sets gen_ai.conversation.id on its top span; build a run without it.
    const agent = tracer.startSpan('invoke_agent helper', { attributes: { 'gen_ai.operation.name': 'invoke_agent' } }, parent);
    tracer.startSpan('execute_tool lookup', {}, trace.setSpan(parent, agent)).end();
    agent.end();
    http.end();
    await ann.until((c) => c.events.length >= 4, 5000, 'events');
    expect(ann.events.map((e) => [e.type, e.conversation_id])).toEqual([
      ['agent_started', 'c-parent'], ['tool_executing', 'c-parent'], ['tool_completed', 'c-parent'], ['agent_completed', 'c-parent'],
    ]);
  });

  it('W3C baggage enduser.id routes the run', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    const dora = await connectAcked(sc, 'dora');
    const bag = propagation.createBaggage({ 'enduser.id': { value: 'dora' } });
    const ids = await runDemoAgent(tracer, { user: 'dora', conversation: 'c-e', userOnSpan: false, parent: propagation.setBaggage(ROOT_CONTEXT, bag) });
    await expectDemoRun(dora, ids, 'c-e');
  });
});
