import type { LifecycleKind } from '../audit/Metrics.js';
import { STATUS_ERROR, type Attributes, type SpanInput } from './SpanInput.js';

/**
 * Length limits on what tracewire keeps from a span (as OTel SDKs limit
 * attribute lengths), so a judged run kept for the runs API holds bounded
 * strings whatever a sender puts in its spans.
 *
 * Names, model, tool call id and error text longer than MAX_NAME_CHARS are
 * cut to that length, the last character being "…" (U+2026). Tool and model
 * names, call ids and error types are far shorter (tool names are at most 64
 * characters at the major model APIs); 256 keeps every real one whole and an
 * event frame small.
 *
 * User and conversation ids are never cut: two ids sharing a prefix would
 * become one, and one user would receive another's events. An id longer than
 * MAX_ID_CHARS is treated as absent (the run then has no user, or no
 * conversation, unless it inherits one): user ids are UUIDs, e-mail addresses
 * (at most 254 characters) or OIDC subjects (at most 255), so 1,024 leaves room
 * for any real id.
 *
 * Both are counted in tracewire_span_values_limited_total{field}, once per span
 * when its end is classified.
 */
export const MAX_NAME_CHARS = 256;
export const MAX_ID_CHARS = 1024;
/**
 * The user of a span whose user id is over MAX_ID_CHARS: not a user anyone
 * can have (a run that meets it is never routed, its events dropped as
 * no_user), and it stops the search: a span that names a user must not fall
 * back to another key, a parent's user or baggage, which could be someone
 * else's.
 */
export const UNROUTABLE_USER = '\u0000(user id over 1024 characters)';
/** The last character of a cut value. */
export const CUT_MARK = '\u2026';

// Indexes into spanValuesLimited (the order of SPAN_LIMITED_FIELDS in Metrics).
const F_USER = 0;
const F_CONVERSATION = 1;
const F_AGENT = 2;
const F_TOOL = 3;
const F_MODEL = 4;
const F_CALL_ID = 5;
const F_ERROR = 6;

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
  /**
   * `user` / `conversation` came from W3C baggage (in process), not from the
   * span's attributes: they rank below the nearest ancestor's (the bridge and
   * the processor's inheritance apply the same order).
   */
  readonly userFromBaggage: boolean;
  readonly conversationFromBaggage: boolean;
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

/**
 * `s` cut to MAX_NAME_CHARS (counted under `field` when `count`). The cut is
 * a flat copy: a slice (or a slice plus the mark) would keep the whole
 * original string alive.
 */
function capped(s: string | undefined, field: number, counts: Float64Array | undefined): string | undefined {
  if (s === undefined || s.length <= MAX_NAME_CHARS) return s;
  if (counts !== undefined) counts[field]!++;
  let end = MAX_NAME_CHARS - 1;
  // Not between the two halves of a surrogate pair.
  const c = s.charCodeAt(end - 1);
  if (c >= 0xd800 && c <= 0xdbff) end--;
  return [s.slice(0, end), CUT_MARK].join('');
}

/** An id value; undefined when absent, `over` when longer than MAX_ID_CHARS (counted under `field` into `counts`). */
function idOf(v: unknown, field: number, counts: Float64Array | undefined, over: string | undefined): string | undefined {
  const s = str(v);
  if (s === undefined || s.length <= MAX_ID_CHARS) return s;
  if (counts !== undefined) counts[field]!++;
  return over;
}

function after(name: string, prefix: string): string | undefined {
  return name.length > prefix.length && name.startsWith(prefix) ? name.slice(prefix.length) : undefined;
}

/** User id from the span's own attributes (not inherited); UNROUTABLE_USER for one over MAX_ID_CHARS. */
export function userOf(a: Attributes): string | undefined {
  return userIn(a, undefined);
}

/** Conversation id from the span's own attributes (not inherited); one over MAX_ID_CHARS is absent. */
export function conversationOf(a: Attributes): string | undefined {
  return conversationIn(a, undefined);
}

function userIn(a: Attributes, counts: Float64Array | undefined): string | undefined {
  return (
    idOf(a['user.id'], F_USER, counts, UNROUTABLE_USER) ?? idOf(a['enduser.id'], F_USER, counts, UNROUTABLE_USER) ??
    idOf(a['ai.telemetry.metadata.userId'], F_USER, counts, UNROUTABLE_USER)
  );
}

function conversationIn(a: Attributes, counts: Float64Array | undefined): string | undefined {
  return (
    idOf(a['gen_ai.conversation.id'], F_CONVERSATION, counts, undefined) ?? idOf(a['session.id'], F_CONVERSATION, counts, undefined) ??
    idOf(a['ai.telemetry.metadata.conversationId'], F_CONVERSATION, counts, undefined) ?? idOf(a['ai.telemetry.metadata.sessionId'], F_CONVERSATION, counts, undefined)
  );
}

function errorOf(span: SpanInput, counts: Float64Array | undefined): string | undefined {
  const et = str(span.attributes['error.type']);
  if (et !== undefined) return capped(et, F_ERROR, counts);
  if (span.statusCode === STATUS_ERROR) return capped(span.statusMessage || 'error', F_ERROR, counts);
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

/**
 * What the conventions say about `span`, its strings within the limits above
 * (MAX_NAME_CHARS, MAX_ID_CHARS): the one place both span sources go through.
 * Within the limits (nearly every span) this costs a length check per value.
 */
export function classify(span: SpanInput, limited?: Float64Array): Classified {
  const a = span.attributes;
  const { kind, convention } = kindOf(span);
  // A value over a limit is counted (into `limited`, by field) once per span: at its end (a span that never ends is not counted).
  const count = span.endMs !== undefined ? limited : undefined;
  let name: string | undefined;
  let callId: string | undefined;
  let model: string | undefined;
  if (kind === 'agent') {
    name = capped(
      str(a['gen_ai.agent.name']) ?? after(span.name, 'invoke_agent ') ?? after(span.name, 'invoke_workflow ') ??
        str(a['ai.telemetry.functionId']) ?? str(a['agent.name']) ?? str(a['traceloop.entity.name']) ??
        str(a['gen_ai.workflow.name']) ?? span.name,
      F_AGENT, count,
    );
    model = capped(str(a['gen_ai.request.model']), F_MODEL, count);
  } else if (kind === 'tool') {
    name = capped(
      str(a['gen_ai.tool.name']) ?? after(span.name, 'execute_tool ') ?? str(a['ai.toolCall.name']) ??
        str(a['tool.name']) ?? str(a['traceloop.entity.name']) ?? span.name,
      F_TOOL, count,
    );
    callId = capped(str(a['gen_ai.tool.call.id']) ?? str(a['ai.toolCall.id']) ?? str(a['tool_call.id']), F_CALL_ID, count);
  } else if (kind === 'thinking') {
    model = capped(
      str(a['gen_ai.request.model']) ?? str(a['ai.model.id']) ?? str(a['llm.model_name']) ?? str(a['llm.request.model']) ??
        (convention === 'gen_ai' ? genaiNameSuffix(span.name) : undefined),
      F_MODEL, count,
    );
    name = model;
  }
  const ownUser = userIn(a, count);
  const ownConversation = conversationIn(a, count);
  const user = ownUser ?? idOf(span.baggageUser, F_USER, count, UNROUTABLE_USER);
  const conversation = ownConversation ?? idOf(span.baggageConversation, F_CONVERSATION, count, undefined);
  return {
    kind,
    name,
    callId,
    model,
    user,
    conversation,
    userFromBaggage: ownUser === undefined && user !== undefined,
    conversationFromBaggage: ownConversation === undefined && conversation !== undefined,
    error: kind === undefined ? undefined : errorOf(span, count),
    convention,
  };
}
