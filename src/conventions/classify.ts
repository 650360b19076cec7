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

function kindOf(span: SpanInput): [LifecycleKind | undefined, Classified['convention']] {
  const a = span.attributes;
  const op = a['gen_ai.operation.name'];
  if (typeof op === 'string') {
    if (GENAI_AGENT.has(op)) return ['agent', 'gen_ai'];
    if (op === 'execute_tool') return ['tool', 'gen_ai'];
    if (GENAI_THINKING.has(op)) return ['thinking', 'gen_ai'];
  }
  // An explicit GenAI operation that is none of the above (embeddings, create_agent, ...) is authoritative.
  const genaiNamed = typeof op !== 'string';
  const oi = a['openinference.span.kind'];
  if (typeof oi === 'string') {
    if (oi === 'AGENT') return ['agent', 'openinference'];
    if (oi === 'LLM') return ['thinking', 'openinference'];
    if (oi === 'TOOL') return ['tool', 'openinference'];
  }
  const tl = a['traceloop.span.kind'];
  if (typeof tl === 'string') {
    if (TRACELOOP_AGENT.has(tl)) return ['agent', 'openllmetry'];
    if (tl === 'tool') return ['tool', 'openllmetry'];
  }
  if (typeof a['llm.request.type'] === 'string') return ['thinking', 'openllmetry'];
  const aiOp = a['ai.operationId'];
  const vercelOp = typeof aiOp === 'string' ? aiOp : span.name;
  if (VERCEL_TOP.has(vercelOp)) return ['agent', 'vercel_ai'];
  if (VERCEL_MODEL.has(vercelOp)) return ['thinking', 'vercel_ai'];
  if (vercelOp === 'ai.toolCall') return ['tool', 'vercel_ai'];
  // GenAI span names ("{operation} {name}"), for spans whose attributes are set after start.
  if (!genaiNamed) return [undefined, undefined];
  const n = span.name;
  const sp = n.indexOf(' ');
  const first = sp > 0 ? n.slice(0, sp) : n;
  if (GENAI_AGENT.has(first)) return ['agent', 'gen_ai'];
  if (first === 'execute_tool') return ['tool', 'gen_ai'];
  if (sp > 0 && GENAI_THINKING.has(first)) return ['thinking', 'gen_ai'];
  return [undefined, undefined];
}

/** The model in a GenAI thinking span name ("chat gpt-4o"), before its attributes are set. */
function genaiNameSuffix(name: string): string | undefined {
  const sp = name.indexOf(' ');
  return sp > 0 && GENAI_THINKING.has(name.slice(0, sp)) ? str(name.slice(sp + 1).trim()) : undefined;
}

export function classify(span: SpanInput): Classified {
  const a = span.attributes;
  const [kind, convention] = kindOf(span);
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
