import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { SPAN_LIMITED_FIELDS } from '../../src/audit/Metrics.js';
import { classify, conversationOf, MAX_ID_CHARS, MAX_NAME_CHARS, UNROUTABLE_USER, userOf } from '../../src/conventions/classify.js';
import { STATUS_ERROR, STATUS_UNSET, type SpanInput } from '../../src/conventions/SpanInput.js';

function span(name: string, attributes: Record<string, unknown> = {}, extra: Partial<SpanInput> = {}): SpanInput {
  return { traceId: 't'.repeat(32), spanId: 's'.repeat(16), name, startMs: 0, endMs: 1, attributes, statusCode: STATUS_UNSET, ...extra };
}

const cut = (c: string): string => `${c.repeat(MAX_NAME_CHARS - 1)}\u2026`;

describe('classify: names, model, call id and error are cut to 256 characters', () => {
  it('keeps 256 characters whole and cuts 257 to 255 and "…"', () => {
    expect(MAX_NAME_CHARS).toBe(256);
    const at = 'a'.repeat(256);
    expect(classify(span('invoke_agent', { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': at })).name).toBe(at);
    const over = classify(span('invoke_agent', { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'a'.repeat(257) })).name!;
    expect(over).toBe(cut('a'));
    expect(over).toHaveLength(256);
  });

  it('cuts every name, model, call id and error, whichever convention or fallback it came from', () => {
    const long = (c: string): string => c.repeat(100_000);
    expect(classify(span(`invoke_agent ${long('a')}`, { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.request.model': long('m') }))).toMatchObject({ kind: 'agent', name: cut('a'), model: cut('m') });
    expect(classify(span(long('v'), { 'openinference.span.kind': 'AGENT' })).name).toBe(cut('v'));
    expect(classify(span(`execute_tool ${long('t')}`, { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.call.id': long('k') }))).toMatchObject({ kind: 'tool', name: cut('t'), callId: cut('k') });
    expect(classify(span('ai.toolCall', { 'ai.toolCall.name': long('t'), 'ai.toolCall.id': long('k') }))).toMatchObject({ kind: 'tool', name: cut('t'), callId: cut('k') });
    expect(classify(span(`chat ${long('m')}`, { 'gen_ai.operation.name': 'chat' }))).toMatchObject({ kind: 'thinking', name: cut('m'), model: cut('m') });
    expect(classify(span('x', { 'openinference.span.kind': 'LLM', 'llm.model_name': long('m') }))).toMatchObject({ name: cut('m'), model: cut('m') });
    expect(classify(span('execute_tool t', { 'gen_ai.operation.name': 'execute_tool', 'error.type': long('e') })).error).toBe(cut('e'));
    expect(classify(span('execute_tool t', { 'gen_ai.operation.name': 'execute_tool' }, { statusCode: STATUS_ERROR, statusMessage: long('s') })).error).toBe(cut('s'));
  });

  it('never splits a surrogate pair at the cut', () => {
    const name = `${'a'.repeat(254)}\u{1F600}${'b'.repeat(10)}`; // the emoji's halves at 254 and 255
    const c = classify(span('execute_tool', { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': name })).name!;
    expect(c).toBe(`${'a'.repeat(254)}\u2026`);
    expect(() => encodeURIComponent(c)).not.toThrow(); // a lone surrogate throws URIError
  });

  it('a cut name is a copy: the original string is not kept alive through it', () => {
    setFlagsFromString('--expose_gc');
    const gc = runInNewContext('gc') as () => void;
    gc();
    const before = process.memoryUsage().heapUsed;
    const kept: unknown[] = [];
    for (let i = 0; i < 16; i++) {
      // A flat string on the heap, as the OTLP/JSON decoder makes them ('a'.repeat() makes a tree of shared pieces,
      // a few bytes; a Buffer's toString() a string outside the heap).
      const name = JSON.parse(`"${String.fromCharCode(97 + i).repeat(4 * 1024 * 1024)}"`) as string;
      const c = classify(span('invoke_agent', { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': name }));
      kept.push(c);
    }
    gc();
    // 16 × 4 MiB if a slice of each original were kept.
    expect((process.memoryUsage().heapUsed - before) / 2 ** 20).toBeLessThan(16);
    expect(kept).toHaveLength(16);
  });
});

describe('classify: user and conversation ids over 1,024 characters are ignored, never cut', () => {
  it('keeps an id of 1,024 characters whole; a user id of 1,025 is a user nobody can be, a conversation id of 1,025 is absent', () => {
    expect(MAX_ID_CHARS).toBe(1024);
    const id = 'u'.repeat(1024);
    const c = classify(span('invoke_agent', { 'gen_ai.operation.name': 'invoke_agent', 'user.id': id, 'gen_ai.conversation.id': id }));
    expect(c).toMatchObject({ user: id, conversation: id });
    const over = classify(span('invoke_agent', { 'gen_ai.operation.name': 'invoke_agent', 'user.id': `${id}x`, 'session.id': `${id}x` }));
    expect(over.user).toBe(UNROUTABLE_USER);
    expect(over.conversation).toBeUndefined();
    // Also for the span processor's reading of a parent's attributes.
    expect(userOf({ 'enduser.id': `${id}x` })).toBe(UNROUTABLE_USER);
    expect(conversationOf({ 'gen_ai.conversation.id': `${id}x` })).toBeUndefined();
  });

  it('an over-long user id stops the search: no other key and no baggage names the user (they could be someone else\'s); over-long baggage is unroutable too', () => {
    const long = 'u'.repeat(2000);
    expect(classify(span('x', { 'user.id': long, 'enduser.id': 'alice' })).user).toBe(UNROUTABLE_USER);
    expect(classify(span('x', { 'user.id': long }, { baggageUser: 'bob', baggageConversation: long })).user).toBe(UNROUTABLE_USER);
    expect(classify(span('x', {}, { baggageUser: long, baggageConversation: long }))).toMatchObject({ user: UNROUTABLE_USER, conversation: undefined });
  });

  it('counts each value over a limit once per span, at its end, into the counts it is given', () => {
    const counts = new Float64Array(SPAN_LIMITED_FIELDS.length);
    const attrs = { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 't'.repeat(300), 'gen_ai.tool.call.id': 'k'.repeat(300), 'user.id': 'u'.repeat(1025), 'gen_ai.conversation.id': 'c'.repeat(1025) };
    classify(span('execute_tool', attrs, { endMs: undefined }), counts); // its start: not counted
    classify(span('execute_tool', attrs, { statusCode: STATUS_ERROR, statusMessage: 'e'.repeat(300) }), counts);
    classify(span('execute_tool', { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'short', 'user.id': 'u' }), counts);
    classify(span('execute_tool', attrs)); // no counts given: counted nowhere
    const now = Object.fromEntries(SPAN_LIMITED_FIELDS.map((f, i) => [f, counts[i]]));
    expect(now).toEqual({ user_id: 1, conversation_id: 1, agent_name: 0, tool_name: 1, model: 0, call_id: 1, error: 1 });
  });
});
