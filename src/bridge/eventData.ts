import type { EventType, LifecycleKind } from '../audit/Metrics.js';
import { jsonString } from './json.js';

/** What an event's `data` object is written from: the span the event is about (a bridge `SpanNode`). */
export interface EventDataSource {
  readonly kind: LifecycleKind | undefined;
  /** Agent name (agent), tool name (tool) or model (thinking). */
  readonly name: string | undefined;
  readonly callId: string | undefined;
  readonly model: string | undefined;
  /** A sub-agent's nearest enclosing agent (agent_started's `parent_agent`). */
  readonly parentAgent: string | undefined;
  readonly startMs: number;
  readonly endMs: number | undefined;
  readonly error: string | undefined;
}

/**
 * The JSON text of an event's `data` object, by hand (fixed shapes), exactly
 * as JSON.stringify writes it: undefined fields are left out, a non-finite
 * duration is null.
 */
export function eventData(type: EventType, s: EventDataSource): string {
  switch (type) {
    case 'agent_started': {
      const agent = lead('agent', s.name);
      return s.parentAgent === undefined ? `{${agent.slice(0, -1)}}` : `{${agent}"parent_agent":${jsonString(s.parentAgent)}}`;
    }
    case 'agent_thinking':
      return `{"model":${orNull(s.model)}}`;
    case 'tool_executing':
      return `{${lead('tool', s.name)}"call_id":${orNull(s.callId)}}`;
    case 'tool_completed':
      return `{${lead('tool', s.name)}"call_id":${orNull(s.callId)},${tail(s)}`;
    case 'agent_completed':
      return `{${lead('agent', s.name)}${tail(s)}`;
  }
}

/**
 * About what `eventData` will write, in characters, without writing it (the
 * byte bound of events held before they are serialised): exact for names and
 * ids that need no JSON escaping, except that a duration counts as 8
 * characters whatever it is.
 */
export function eventDataLength(type: EventType, s: EventDataSource): number {
  switch (type) {
    case 'agent_started':
      return 2 + (s.name === undefined ? 0 : s.name.length + (s.parentAgent === undefined ? 10 : 11)) + (s.parentAgent === undefined ? 0 : s.parentAgent.length + 17);
    case 'agent_thinking':
      return 10 + orNullLength(s.model);
    case 'tool_executing':
      return 12 + leadLength('tool', s.name) + orNullLength(s.callId);
    case 'tool_completed':
      return 12 + leadLength('tool', s.name) + orNullLength(s.callId) + tailLength(s);
    case 'agent_completed':
      return 1 + leadLength('agent', s.name) + tailLength(s);
  }
}

/** `"key":<value>,` (JSON, with a trailing comma), or '' when the value is undefined (JSON.stringify leaves the key out). */
function lead(key: string, value: string | undefined): string {
  return value === undefined ? '' : `"${key}":${jsonString(value)},`;
}

function orNull(value: string | undefined): string {
  return value === undefined ? 'null' : jsonString(value);
}

function durationMs(s: EventDataSource): number {
  return s.endMs !== undefined ? Math.max(0, Math.round((s.endMs - s.startMs) * 1000) / 1000) : Number.NaN;
}

/** status, duration_ms and error of a completion, and the closing brace. */
function tail(s: EventDataSource): string {
  const d = durationMs(s);
  return `"status":"${s.error === undefined ? 'ok' : 'error'}","duration_ms":${Number.isFinite(d) ? String(d) : 'null'}${s.error === undefined ? '' : `,"error":${jsonString(s.error)}`}}`;
}

function leadLength(key: string, value: string | undefined): number {
  return value === undefined ? 0 : key.length + value.length + 6;
}

function orNullLength(value: string | undefined): number {
  return value === undefined ? 4 : value.length + 2;
}

/** `tail`'s length with the duration counted as 8 characters. */
function tailLength(s: EventDataSource): number {
  return (s.error === undefined ? 14 : 28 + s.error.length) + 14 + 8 + 1;
}
