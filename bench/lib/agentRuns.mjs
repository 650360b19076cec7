// Run-shaped spans, the same for tracewire and for every baseline: a top-level
// agent span (GenAI invoke_agent, user and conversation on it), one LLM span
// (chat) and one tool span (execute_tool) under it, each started and ended.
// One run = 3 spans = 6 span hooks = 5 tracewire events
// (agent_started, agent_thinking, tool_executing, tool_completed, agent_completed).
import { ROOT_CONTEXT, trace } from '@opentelemetry/api';
import { performance } from 'node:perf_hooks';

export const OPS_PER_RUN = 6;
export const SPANS_PER_RUN = 3;
export const EVENTS_PER_RUN = 5;

const agentAttrs = (user, conv) => ({
  'gen_ai.operation.name': 'invoke_agent',
  'gen_ai.agent.name': 'supervisor',
  'gen_ai.conversation.id': conv,
  'user.id': user,
});
const llmAttrs = () => ({ 'gen_ai.operation.name': 'chat', 'gen_ai.request.model': 'gpt-4o' });
const toolAttrs = (callId) => ({ 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'search_docs', 'gen_ai.tool.call.id': callId });

/** One whole run, synchronously (the hook-overhead loop). */
export function runOnce(tracer, user, conv) {
  const agent = tracer.startSpan('invoke_agent supervisor', { attributes: agentAttrs(user, conv) }, ROOT_CONTEXT);
  const ctx = trace.setSpan(ROOT_CONTEXT, agent);
  const llm = tracer.startSpan('chat gpt-4o', { attributes: llmAttrs() }, ctx);
  llm.end();
  const tool = tracer.startSpan('execute_tool search_docs', { attributes: toolAttrs('call_1') }, ctx);
  tool.end();
  agent.end();
}

/**
 * The same run, one span operation at a time, so a load generator can pace
 * individual starts and ends. `step()` performs the next operation and returns
 * the event it causes (what a hand-written emitter would send at that point,
 * with tracewire's `run_id`/`seq`), or undefined for the LLM span's end, which
 * causes no event.
 */
export class RunStepper {
  constructor(tracer, users) {
    this.tracer = tracer;
    this.users = users;
    this.k = 0;
    this.runs = 0;
  }

  step() {
    const op = this.k++ % OPS_PER_RUN;
    switch (op) {
      case 0: {
        const user = this.users[this.runs % this.users.length];
        const conv = `c-${user}-${this.runs}`;
        this.runs++;
        const agent = this.tracer.startSpan('invoke_agent supervisor', { attributes: agentAttrs(user, conv) }, ROOT_CONTEXT);
        const sc = agent.spanContext();
        this.cur = { agent, ctx: trace.setSpan(ROOT_CONTEXT, agent), user, conv, traceId: sc.traceId, agentSpanId: sc.spanId, runId: `${sc.traceId}-${sc.spanId}`, t0: performance.now() };
        return this.ev(1, 'agent_started', sc.spanId, { agent: 'supervisor' });
      }
      case 1: {
        const c = this.cur;
        c.llm = this.tracer.startSpan('chat gpt-4o', { attributes: llmAttrs() }, c.ctx);
        return this.ev(2, 'agent_thinking', c.llm.spanContext().spanId, { model: 'gpt-4o' });
      }
      case 2:
        this.cur.llm.end();
        return undefined;
      case 3: {
        const c = this.cur;
        c.tool = this.tracer.startSpan('execute_tool search_docs', { attributes: toolAttrs('call_1') }, c.ctx);
        c.toolT0 = performance.now();
        return this.ev(3, 'tool_executing', c.tool.spanContext().spanId, { tool: 'search_docs', call_id: 'call_1' });
      }
      case 4: {
        const c = this.cur;
        c.tool.end();
        const d = Math.round((performance.now() - c.toolT0) * 1000) / 1000;
        return this.ev(4, 'tool_completed', c.tool.spanContext().spanId, { tool: 'search_docs', call_id: 'call_1', status: 'ok', duration_ms: d });
      }
      default: {
        const c = this.cur;
        c.agent.end();
        const d = Math.round((performance.now() - c.t0) * 1000) / 1000;
        return this.ev(5, 'agent_completed', c.agentSpanId, { agent: 'supervisor', status: 'ok', duration_ms: d });
      }
    }
  }

  ev(seq, type, spanId, data) {
    const c = this.cur;
    return { user: c.user, runId: c.runId, seq, type, traceId: c.traceId, spanId, conv: c.conv, data };
  }
}

/** The tracewire.v1 event object a hand-written emitter builds for `e`. */
export function eventObject(e) {
  return {
    type: e.type,
    run_id: e.runId,
    trace_id: e.traceId,
    span_id: e.spanId,
    seq: e.seq,
    ts: new Date().toISOString(),
    agent: 'supervisor',
    conversation_id: e.conv,
    data: e.data,
  };
}

/** A SpanProcessor that does nothing: the baseline of the hook-overhead figure. */
export class NoopSpanProcessor {
  onStart() {}
  onEnd() {}
  forceFlush() {
    return Promise.resolve();
  }
  shutdown() {
    return Promise.resolve();
  }
}
