import type { LifecycleKind } from '../audit/Metrics.js';
import { STATUS_ERROR, type Attributes, type SpanInput } from './SpanInput.js';

/**
 * What the conventions say about one span. `kind` undefined means the span is
 * not a lifecycle span (it still matters for ancestry and inheritance).
 */
export interface Classified {
  readonly kind: LifecycleKind | undefined;
  /** Agent name (agent), tool name (tool) or model (thinking). */
  readonly name: string | undefined;
  readonly callId: string | undefined;
  readonly model: string | undefined;
  readonly user: string | undefined;
  readonly conversation: string | undefined;
  /** error.type, or the status message, when the span failed. */
  readonly error: string | undefined;
  readonly convention: 'gen_ai' | 'openinference' | 'openllmetry' | 'vercel_ai' | undefined;
}

// `create_agent` creates an agent (no run happens in it): not a lifecycle span.
const GENAI_AGENT = new Set(['invoke_agent', 'invoke_workflow']);
const GENAI_THINKING = new Set(['chat', 'text_completion', 'generate_content', 'plan']);
const TRACELOOP_AGENT = new Set(['agent', 'workflow']);
const VERCEL_TOP = new Set(['ai.generateText', 'ai.streamText', 'ai.generateObject', 'ai.streamObject']);
const VERCEL_MODEL = new Set([
  'ai.generateText.doGenerate', 'ai.streamText.doStream', 'ai.generateObject.doGenerate', 'ai.streamObject.doStream',
]);

function str(v: unknown): string | undefined {
  if (typeof v === 'string') return v === '' ? undefined : v;
  if (typeof v === 'number' || typeof v === 'bigint') return String(v);
  return undefined;
}

function after(name: string, prefix: string): string | undefined {
  return name.length > prefix.length && name.startsWith(prefix) ? name.slice(prefix.length) : undefined;
}

/** User id from the span's own attributes (not inherited). */
export function userOf(a: Attributes): string | undefined {
  return str(a['user.id']) ?? str(a['enduser.id']) ?? str(a['ai.telemetry.metadata.userId']);
}

/** Conversation id from the span's own attributes (not inherited). */
export function conversationOf(a: Attributes): string | undefined {
  return (
    str(a['gen_ai.conversation.id']) ?? str(a['session.id']) ??
    str(a['ai.telemetry.metadata.conversationId']) ?? str(a['ai.telemetry.metadata.sessionId'])
  );
}

function errorOf(span: SpanInput): string | undefined {
  const et = str(span.attributes['error.type']);
  if (et !== undefined) return et;
  if (span.statusCode === STATUS_ERROR) return span.statusMessage || 'error';
  return undefined;
}

/** A span's kind and the convention that said so (shared constants: no allocation per span). */
interface Kind {
  readonly kind: LifecycleKind | undefined;
  readonly convention: Classified['convention'];
}
const K_AGENT_GEN_AI: Kind = { kind: 'agent', convention: 'gen_ai' };
const K_AGENT_OPENINFERENCE: Kind = { kind: 'agent', convention: 'openinference' };
const K_AGENT_OPENLLMETRY: Kind = { kind: 'agent', convention: 'openllmetry' };
const K_AGENT_VERCEL_AI: Kind = { kind: 'agent', convention: 'vercel_ai' };
const K_THINKING_GEN_AI: Kind = { kind: 'thinking', convention: 'gen_ai' };
const K_THINKING_OPENINFERENCE: Kind = { kind: 'thinking', convention: 'openinference' };
const K_THINKING_OPENLLMETRY: Kind = { kind: 'thinking', convention: 'openllmetry' };
const K_THINKING_VERCEL_AI: Kind = { kind: 'thinking', convention: 'vercel_ai' };
const K_TOOL_GEN_AI: Kind = { kind: 'tool', convention: 'gen_ai' };
const K_TOOL_OPENINFERENCE: Kind = { kind: 'tool', convention: 'openinference' };
const K_TOOL_OPENLLMETRY: Kind = { kind: 'tool', convention: 'openllmetry' };
const K_TOOL_VERCEL_AI: Kind = { kind: 'tool', convention: 'vercel_ai' };
const K_NONE: Kind = { kind: undefined, convention: undefined };

function kindOf(span: SpanInput): Kind {
  const a = span.attributes;
  const op = a['gen_ai.operation.name'];
  if (typeof op === 'string') {
    if (GENAI_AGENT.has(op)) return K_AGENT_GEN_AI;
    if (op === 'execute_tool') return K_TOOL_GEN_AI;
    if (GENAI_THINKING.has(op)) return K_THINKING_GEN_AI;
  }
  // An explicit GenAI operation that is none of the above (embeddings, create_agent, ...) is authoritative.
  const genaiNamed = typeof op !== 'string';
  const oi = a['openinference.span.kind'];
  if (typeof oi === 'string') {
    if (oi === 'AGENT') return K_AGENT_OPENINFERENCE;
    if (oi === 'LLM') return K_THINKING_OPENINFERENCE;
    if (oi === 'TOOL') return K_TOOL_OPENINFERENCE;
  }
  const tl = a['traceloop.span.kind'];
  if (typeof tl === 'string') {
    if (TRACELOOP_AGENT.has(tl)) return K_AGENT_OPENLLMETRY;
    if (tl === 'tool') return K_TOOL_OPENLLMETRY;
  }
  if (typeof a['llm.request.type'] === 'string') return K_THINKING_OPENLLMETRY;
  const aiOp = a['ai.operationId'];
  const vercelOp = typeof aiOp === 'string' ? aiOp : span.name;
  if (VERCEL_TOP.has(vercelOp)) return K_AGENT_VERCEL_AI;
  if (VERCEL_MODEL.has(vercelOp)) return K_THINKING_VERCEL_AI;
  if (vercelOp === 'ai.toolCall') return K_TOOL_VERCEL_AI;
  // GenAI span names ("{operation} {name}"), for spans whose attributes are set after start.
  if (!genaiNamed) return K_NONE;
  const n = span.name;
  const sp = n.indexOf(' ');
  const first = sp > 0 ? n.slice(0, sp) : n;
  if (GENAI_AGENT.has(first)) return K_AGENT_GEN_AI;
  if (first === 'execute_tool') return K_TOOL_GEN_AI;
  if (sp > 0 && GENAI_THINKING.has(first)) return K_THINKING_GEN_AI;
  return K_NONE;
}

/** The model in a GenAI thinking span name ("chat gpt-4o"), before its attributes are set. */
function genaiNameSuffix(name: string): string | undefined {
  const sp = name.indexOf(' ');
  return sp > 0 && GENAI_THINKING.has(name.slice(0, sp)) ? str(name.slice(sp + 1).trim()) : undefined;
}

export function classify(span: SpanInput): Classified {
  const a = span.attributes;
  const { kind, convention } = kindOf(span);
  let name: string | undefined;
  let callId: string | undefined;
  let model: string | undefined;
  if (kind === 'agent') {
    name =
      str(a['gen_ai.agent.name']) ?? after(span.name, 'invoke_agent ') ?? after(span.name, 'invoke_workflow ') ??
      str(a['ai.telemetry.functionId']) ?? str(a['agent.name']) ?? str(a['traceloop.entity.name']) ??
      str(a['gen_ai.workflow.name']) ?? span.name;
    model = str(a['gen_ai.request.model']);
  } else if (kind === 'tool') {
    name =
      str(a['gen_ai.tool.name']) ?? after(span.name, 'execute_tool ') ?? str(a['ai.toolCall.name']) ??
      str(a['tool.name']) ?? str(a['traceloop.entity.name']) ?? span.name;
    callId = str(a['gen_ai.tool.call.id']) ?? str(a['ai.toolCall.id']) ?? str(a['tool_call.id']);
  } else if (kind === 'thinking') {
    model =
      str(a['gen_ai.request.model']) ?? str(a['ai.model.id']) ?? str(a['llm.model_name']) ?? str(a['llm.request.model']) ??
      (convention === 'gen_ai' ? genaiNameSuffix(span.name) : undefined);
    name = model;
  }
  return {
    kind,
    name,
    callId,
    model,
    user: userOf(a) ?? span.baggageUser,
    conversation: conversationOf(a) ?? span.baggageConversation,
    error: kind === undefined ? undefined : errorOf(span),
    convention,
  };
}
