import { isoOf } from '../util/time.js';

/**
 * The tracewire.v1 event envelope, written by hand: the same bytes as
 * JSON.stringify of the envelope object (its shape is fixed), several times
 * faster. Shared by the bridge (which builds each event's `data`) and the
 * event object (which writes its envelope when a connection first needs it).
 */

let isoSecond = Number.NaN;
let isoPrefix = '';
/** `new Date(ms).toISOString()`, with the part up to the second cached (events come in time order). */
export function isoTime(ms: number): string {
  const sec = Math.floor(ms / 1000);
  if (sec !== isoSecond) {
    const d = new Date(sec * 1000);
    if (Number.isNaN(d.getTime())) return isoOf(ms);
    isoSecond = sec;
    isoPrefix = d.toISOString().slice(0, 20);
  }
  const frac = Math.floor(ms - sec * 1000);
  return `${isoPrefix}${frac < 10 ? '00' : frac < 100 ? '0' : ''}${frac}Z`;
}

// eslint-disable-next-line no-control-regex -- control characters are exactly what JSON must escape
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/;
/** JSON.stringify(s) for a string: most ids and names need no escaping, and the test is cheaper. */
export function jsonString(s: string): string {
  return NEEDS_ESCAPE.test(s) ? JSON.stringify(s) : `"${s}"`;
}

/** What an event's envelope is written from. */
export interface EnvelopeFields {
  readonly type: string;
  readonly runId: string;
  readonly traceId: string;
  readonly spanId: string;
  readonly seq: number;
  readonly tsMs: number;
  readonly agent: string | undefined;
  readonly conversation: string | undefined;
  /** The `data` object, already JSON. */
  readonly data: string;
}

// The run part of the envelope, kept for the run last written: a run's events come in bursts.
let headRunId: string | undefined;
let head = '';

/** The tracewire.v1 JSON text of one event. */
export function envelope(e: EnvelopeFields): string {
  if (e.runId !== headRunId) {
    headRunId = e.runId;
    head = `,"run_id":${jsonString(e.runId)},"trace_id":${jsonString(e.traceId)},"span_id":`;
  }
  const agent = e.agent;
  const conv = e.conversation;
  return (
    `{"type":"${e.type}"${head}${jsonString(e.spanId)},"seq":${e.seq},"ts":"${isoTime(e.tsMs)}",` +
    `"agent":${agent === undefined ? 'null' : jsonString(agent)},"conversation_id":${conv === undefined ? 'null' : jsonString(conv)},` +
    `"data":${e.data}}`
  );
}
