/**
 * TEST-ONLY REFERENCE: the OTLP request decoder as it was before the
 * hand-written wire reader (protobufjs messages or JSON.parse output walked
 * through one codec interface), kept so otlpDecodeDifferential.test.ts can
 * check the fast decoders against it. Not used by src/. Changed since only
 * where the OTLP/JSON walk now follows the proto3 JSON mapping more closely:
 * a null AnyValue member is absent, base64 ids may be unpadded, and an
 * intValue must be within int64.
 */
import type { AttributeValue, SpanEventInput, SpanInput } from '../../src/conventions/SpanInput.js';
import { otlpTypes } from '../../src/sources/otlp/schema.js';
import {
  badBody,
  MAX_VALUE_DEPTH,
  SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK,
  SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK,
  SpanReject,
  TooManySpansError,
  TWO_32,
  type DecodedRequest,
  type DecodeOptions,
  type RejectReason,
} from '../../src/sources/otlp/decodeShared.js';

/**
 * OTLP trace request bodies (protobuf or OTLP/JSON) to `SpanInput`s, in the
 * order the spans appear in the request. The envelope (resource spans, scope
 * spans, span lists) must be well formed or the whole body is refused
 * (TW_OTLP_BAD_BODY, 400); a span whose own fields are wrong is rejected
 * alone and counted, by reason, for the partial-success response.
 */

// The result types, bounds, rejection bookkeeping and errors are src's own (imported above: results and errors
// then compare directly); the walk below is the reference's own.

// ---- shared walk ---------------------------------------------------------------

/** How one encoding reads ids, times and values; the walk is the same for both. */
interface Codec {
  readonly name: 'protobuf' | 'json';
  /** A field by its lowerCamelCase name (OTLP/JSON also accepts the proto snake_case name). */
  field(o: Record<string, unknown>, camel: string, snake?: string): unknown;
  /** An id of `bytes` bytes as lowercase hex; '' when absent; undefined when malformed. */
  id(v: unknown, bytes: number): string | undefined;
  /** Unix nanos to epoch ms; 0 when absent or zero; undefined when malformed. */
  nanosToMs(v: unknown): number | undefined;
  uint32(v: unknown): number | undefined;
  anyValue(v: unknown, depth: number): AttributeValue | Record<string, unknown> | typeof EMPTY;
}

const EMPTY = Symbol('empty');

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

function list(v: unknown, what: string): unknown[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw badBody(`${what} is not a list`);
  return v;
}

/** Decode a request already turned into an object (protobufjs message or parsed JSON). */
function walk(root: unknown, codec: Codec, opts: DecodeOptions): DecodedRequest {
  if (!isObject(root)) throw badBody('the body is not an ExportTraceServiceRequest object');
  const resourceSpans = list(codec.field(root, 'resourceSpans', 'resource_spans'), 'resourceSpans');
  // Envelope first, so the span limit is checked before any span is mapped.
  const groups: unknown[][] = [];
  let total = 0;
  for (let r = 0; r < resourceSpans.length; r++) {
    const rs = resourceSpans[r];
    if (!isObject(rs)) throw badBody(`resourceSpans[${r}] is not an object`);
    const scopeSpans = list(codec.field(rs, 'scopeSpans', 'scope_spans'), `resourceSpans[${r}].scopeSpans`);
    for (let s = 0; s < scopeSpans.length; s++) {
      const ss = scopeSpans[s];
      if (!isObject(ss)) throw badBody(`resourceSpans[${r}].scopeSpans[${s}] is not an object`);
      const spans = list(codec.field(ss, 'spans'), `resourceSpans[${r}].scopeSpans[${s}].spans`);
      total += spans.length;
      groups.push(spans);
    }
  }
  if (total > opts.maxSpans) throw new TooManySpansError(total, opts.maxSpans);

  const out: SpanInput[] = [];
  const reasons = new Map<RejectReason, number>();
  let rejected = 0;
  let firstRejection: string | undefined;
  let index = 0;
  for (const spans of groups) {
    for (const raw of spans) {
      try {
        if (!isObject(raw)) throw new SpanReject('bad_field', 'not an object');
        out.push(mapSpan(raw, codec, opts.hookAt));
      } catch (err) {
        if (!(err instanceof SpanReject)) throw err;
        rejected++;
        reasons.set(err.reason, (reasons.get(err.reason) ?? 0) + 1);
        firstRejection ??= `span ${index}: ${err.message}`;
      }
      index++;
    }
  }
  return { spans: out, rejected, reasons, firstRejection };
}

function mapSpan(o: Record<string, unknown>, codec: Codec, hookAt: number | undefined): SpanInput {
  const traceId = codec.id(codec.field(o, 'traceId', 'trace_id'), 16);
  if (traceId === undefined || traceId === '' || isZero(traceId)) throw new SpanReject('bad_trace_id', 'trace_id must be 16 non-zero bytes');
  const spanId = codec.id(codec.field(o, 'spanId', 'span_id'), 8);
  if (spanId === undefined || spanId === '' || isZero(spanId)) throw new SpanReject('bad_span_id', 'span_id must be 8 non-zero bytes');
  const parent = codec.id(codec.field(o, 'parentSpanId', 'parent_span_id'), 8);
  if (parent === undefined) throw new SpanReject('bad_parent_span_id', 'parent_span_id must be empty or 8 bytes');
  const name = codec.field(o, 'name') ?? '';
  if (typeof name !== 'string') throw new SpanReject('bad_field', 'name is not a string');
  const startMs = codec.nanosToMs(codec.field(o, 'startTimeUnixNano', 'start_time_unix_nano'));
  if (startMs === undefined || startMs === 0) throw new SpanReject('bad_time', 'start_time_unix_nano is missing or not a uint64');
  const endMs = codec.nanosToMs(codec.field(o, 'endTimeUnixNano', 'end_time_unix_nano'));
  if (endMs === undefined) throw new SpanReject('bad_time', 'end_time_unix_nano is not a uint64');
  const flags = codec.uint32(codec.field(o, 'flags'));
  if (flags === undefined) throw new SpanReject('bad_field', 'flags is not a uint32');
  const status = codec.field(o, 'status') ?? {};
  if (!isObject(status)) throw new SpanReject('bad_field', 'status is not an object');
  const statusCode = statusCodeOf(codec.field(status, 'code'));
  const statusMessage = codec.field(status, 'message') ?? '';
  if (typeof statusMessage !== 'string') throw new SpanReject('bad_field', 'status.message is not a string');
  const attributes = attributesOf(codec.field(o, 'attributes'), codec, 'attributes');
  const ended = endMs !== 0;
  let events: SpanEventInput[] | undefined;
  // Events travel with the ended span only: a span exported before it ended is
  // exported again when it ends, with all its events.
  if (ended) {
    const raw = codec.field(o, 'events');
    if (raw !== undefined && raw !== null) {
      if (!Array.isArray(raw)) throw new SpanReject('bad_field', 'events is not a list');
      events = raw.map((e, i) => {
        if (!isObject(e)) throw new SpanReject('bad_field', `events[${i}] is not an object`);
        const en = codec.field(e, 'name') ?? '';
        if (typeof en !== 'string') throw new SpanReject('bad_field', `events[${i}].name is not a string`);
        const t = codec.nanosToMs(codec.field(e, 'timeUnixNano', 'time_unix_nano'));
        if (t === undefined) throw new SpanReject('bad_time', `events[${i}].time_unix_nano is not a uint64`);
        return { name: en, timeMs: t, attributes: attributesOf(codec.field(e, 'attributes'), codec, `events[${i}].attributes`) };
      });
    }
  }
  return {
    traceId,
    spanId,
    parentSpanId: parent === '' || isZero(parent) ? undefined : parent,
    parentIsRemote: (flags & SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK) !== 0 && (flags & SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK) !== 0,
    name,
    startMs,
    endMs: ended ? endMs : undefined,
    attributes,
    statusCode,
    statusMessage: statusMessage === '' ? undefined : statusMessage,
    events,
    hookAt,
  };
}

const STATUS_NAMES: Record<string, number> = { STATUS_CODE_UNSET: 0, STATUS_CODE_OK: 1, STATUS_CODE_ERROR: 2 };

function statusCodeOf(v: unknown): number {
  if (v === undefined || v === null) return 0;
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return v <= 2 ? v : 0;
  if (typeof v === 'string' && v in STATUS_NAMES) return STATUS_NAMES[v]!;
  throw new SpanReject('bad_field', 'status.code is not a StatusCode');
}

function isZero(hex: string): boolean {
  for (let i = 0; i < hex.length; i++) if (hex.charCodeAt(i) !== 48) return false;
  return true;
}

/** KeyValue list to a flat attribute record (kvlist values become dotted keys). */
function attributesOf(v: unknown, codec: Codec, what: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (v === undefined || v === null) return out;
  if (!Array.isArray(v)) throw new SpanReject('bad_field', `${what} is not a list`);
  addKeyValues(out, '', v, codec, what, 0);
  return out;
}

function addKeyValues(out: Record<string, unknown>, prefix: string, kvs: unknown[], codec: Codec, what: string, depth: number): void {
  for (let i = 0; i < kvs.length; i++) {
    const kv = kvs[i];
    if (!isObject(kv)) throw new SpanReject('bad_field', `${what}[${i}] is not a KeyValue`);
    const key = codec.field(kv, 'key');
    // No key: the attribute is left out (protobufjs leaves an empty string unset).
    if (key === undefined || key === null || key === '') continue;
    if (typeof key !== 'string') throw new SpanReject('bad_field', `${what}[${i}].key is not a string`);
    const full = prefix + key;
    if (full === '__proto__') continue;
    const value = codec.anyValue(codec.field(kv, 'value'), depth);
    if (value === EMPTY) continue;
    if (isObject(value)) {
      // A kvlist: flatten one level into dotted keys.
      const nested = value[KVLIST] as unknown[];
      if (depth + 1 > MAX_VALUE_DEPTH) {
        out[full] = null;
        continue;
      }
      addKeyValues(out, `${full}.`, nested, codec, `${what}[${i}].value`, depth + 1);
      continue;
    }
    out[full] = value;
  }
}

const KVLIST = '\u0000kvlist';

/** A converted array element: arrays hold scalars only (nested values become JSON text). */
function scalarOf(v: unknown): string | number | boolean | null {
  if (v === null || typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') return v;
  if (typeof v === 'bigint') return v.toString();
  try {
    return JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x)) ?? null;
  } catch {
    return null;
  }
}

function arrayOf(values: unknown[], codec: Codec, depth: number): Array<string | number | boolean | null> {
  const out: Array<string | number | boolean | null> = [];
  for (const x of values) {
    const v = codec.anyValue(x, depth + 1);
    if (v === EMPTY) out.push(null);
    else if (isObject(v)) out.push(scalarOf(kvlistToObject(v[KVLIST] as unknown[], codec, depth + 1)));
    else out.push(scalarOf(v));
  }
  return out;
}

function kvlistToObject(kvs: unknown[], codec: Codec, depth: number): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  addKeyValues(o, '', kvs, codec, 'kvlist', depth);
  return o;
}

function intFromParts(high: number, low: number, unsigned: boolean): number | bigint {
  const hi = unsigned ? high >>> 0 : high | 0;
  const n = hi * TWO_32 + (low >>> 0);
  if (Number.isSafeInteger(n)) return n;
  return (BigInt(hi) << 32n) + BigInt(low >>> 0);
}

// ---- protobuf ------------------------------------------------------------------

interface LongLike {
  low: number;
  high: number;
  unsigned?: boolean;
}

function isLong(v: unknown): v is LongLike {
  return typeof v === 'object' && v !== null && typeof (v as LongLike).low === 'number' && typeof (v as LongLike).high === 'number';
}

const hexOf = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

const PROTOBUF_CODEC: Codec = {
  name: 'protobuf',
  // Only fields present on the wire: protobufjs puts defaults on the prototype.
  field: (o, camel) => (Object.prototype.hasOwnProperty.call(o, camel) ? o[camel] : undefined),
  id(v, bytes) {
    if (v === undefined || v === null) return '';
    if (!(v instanceof Uint8Array)) return undefined;
    if (v.length === 0) return '';
    return v.length === bytes ? hexOf(v) : undefined;
  },
  nanosToMs(v) {
    if (v === undefined || v === null) return 0;
    if (typeof v === 'number') return v / 1e6;
    if (!isLong(v)) return undefined;
    return ((v.high >>> 0) * TWO_32) / 1e6 + (v.low >>> 0) / 1e6;
  },
  uint32(v) {
    if (v === undefined || v === null) return 0;
    return typeof v === 'number' ? v >>> 0 : undefined;
  },
  anyValue(v, depth) {
    if (!isObject(v)) return EMPTY;
    const which = (v as { value?: string }).value;
    switch (which) {
      case 'stringValue':
        return v.stringValue as string;
      case 'boolValue':
        return v.boolValue as boolean;
      case 'intValue': {
        const x = v.intValue;
        if (typeof x === 'number') return x;
        if (isLong(x)) return intFromParts(x.high, x.low, x.unsigned === true);
        return EMPTY;
      }
      case 'doubleValue':
        return v.doubleValue as number;
      case 'arrayValue': {
        const a = v.arrayValue as { values?: unknown[] } | undefined;
        return depth >= MAX_VALUE_DEPTH ? null : arrayOf(a?.values ?? [], PROTOBUF_CODEC, depth);
      }
      case 'kvlistValue': {
        const kv = v.kvlistValue as { values?: unknown[] } | undefined;
        return { [KVLIST]: kv?.values ?? [] };
      }
      case 'bytesValue':
        return Buffer.from(v.bytesValue as Uint8Array).toString('base64');
      default:
        return EMPTY;
    }
  },
};

/** Decode a binary protobuf ExportTraceServiceRequest. */
export function decodeProtobufReference(body: Uint8Array, opts: DecodeOptions): DecodedRequest {
  let msg: unknown;
  try {
    msg = otlpTypes().request.decode(body);
  } catch (err) {
    throw badBody(`protobuf: ${(err as Error).message}`);
  }
  return walk(msg, PROTOBUF_CODEC, opts);
}

// ---- OTLP/JSON -----------------------------------------------------------------

const HEX = /^[0-9a-fA-F]*$/;
const BASE64 = /^[A-Za-z0-9+/_-]*={0,2}$/;
const DIGITS = /^\d+$/;
const INT = /^-?\d+$/;

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

/** An int64: a decimal string within its range, or a JSON number no further out than the doubles nearest to its bounds (±2^63). */
function jsonInt(v: unknown, what: string): number | bigint {
  if (typeof v === 'number' && Number.isInteger(v) && Math.abs(v) <= 2 ** 63) return v;
  if (typeof v === 'string' && INT.test(v)) {
    const n = Number(v);
    if (Number.isSafeInteger(n)) return n;
    const b = BigInt(v);
    if (b >= INT64_MIN && b <= INT64_MAX) return b;
  }
  throw new SpanReject('bad_field', `${what} is not an int64`);
}

/** A member of a JSON object, by either name; JSON null is the same as absent (the proto3 JSON mapping). */
function member(o: Record<string, unknown>, camel: string, snake: string): unknown {
  const v = o[camel] ?? o[snake];
  return v === null ? undefined : v;
}

const JSON_CODEC: Codec = {
  name: 'json',
  field(o, camel, snake) {
    const v = o[camel];
    return v === undefined && snake !== undefined ? o[snake] : v;
  },
  id(v, bytes) {
    if (v === undefined || v === null || v === '') return '';
    if (typeof v !== 'string') return undefined;
    // OTLP/JSON ids are hex; base64 (the generic protobuf JSON mapping: padded or not, standard or URL-safe) is accepted too.
    if (v.length === bytes * 2 && HEX.test(v)) return v.toLowerCase();
    if ((v.length === Math.ceil(bytes / 3) * 4 || v.length === Math.ceil((bytes * 4) / 3)) && BASE64.test(v)) {
      const b = Buffer.from(v, v.includes('-') || v.includes('_') ? 'base64url' : 'base64');
      return b.length === bytes ? b.toString('hex') : undefined;
    }
    return undefined;
  },
  nanosToMs(v) {
    if (v === undefined || v === null) return 0;
    // A uint64: up to 2^64 - 1 (as a number, 2^64 is the nearest double).
    if (typeof v === 'number') return Number.isInteger(v) && v >= 0 && v <= 2 ** 64 ? v / 1e6 : undefined;
    if (typeof v === 'string' && DIGITS.test(v) && BigInt(v) <= 18446744073709551615n) {
      // Split so the integral milliseconds stay exact beyond 2^53 nanoseconds.
      if (v.length <= 6) return Number(v) / 1e6;
      return Number(v.slice(0, -6)) + Number(v.slice(-6)) / 1e6;
    }
    return undefined;
  },
  uint32(v) {
    if (v === undefined || v === null) return 0;
    if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < TWO_32) return v;
    if (typeof v === 'string' && DIGITS.test(v) && Number(v) < TWO_32) return Number(v);
    return undefined;
  },
  anyValue(v, depth) {
    if (v === undefined || v === null) return EMPTY;
    if (!isObject(v)) throw new SpanReject('bad_field', 'attribute value is not an AnyValue object');
    const s = member(v, 'stringValue', 'string_value');
    if (s !== undefined) {
      if (typeof s !== 'string') throw new SpanReject('bad_field', 'stringValue is not a string');
      return s;
    }
    const b = member(v, 'boolValue', 'bool_value');
    if (b !== undefined) {
      if (typeof b !== 'boolean') throw new SpanReject('bad_field', 'boolValue is not a boolean');
      return b;
    }
    const i = member(v, 'intValue', 'int_value');
    if (i !== undefined) return jsonInt(i, 'intValue');
    const d = member(v, 'doubleValue', 'double_value');
    if (d !== undefined) {
      if (typeof d === 'number') return d;
      if (typeof d === 'string' && d.trim() !== '' && !Number.isNaN(Number(d))) return Number(d);
      if (d === 'NaN' || d === 'Infinity' || d === '-Infinity') return Number(d);
      throw new SpanReject('bad_field', 'doubleValue is not a number');
    }
    const arr = member(v, 'arrayValue', 'array_value');
    if (arr !== undefined) {
      if (!isObject(arr)) throw new SpanReject('bad_field', 'arrayValue is not an object');
      const values = arr.values ?? [];
      if (!Array.isArray(values)) throw new SpanReject('bad_field', 'arrayValue.values is not a list');
      return depth >= MAX_VALUE_DEPTH ? null : arrayOf(values, JSON_CODEC, depth);
    }
    const kvl = member(v, 'kvlistValue', 'kvlist_value');
    if (kvl !== undefined) {
      if (!isObject(kvl)) throw new SpanReject('bad_field', 'kvlistValue is not an object');
      const values = kvl.values ?? [];
      if (!Array.isArray(values)) throw new SpanReject('bad_field', 'kvlistValue.values is not a list');
      return { [KVLIST]: values };
    }
    const bytes = member(v, 'bytesValue', 'bytes_value');
    if (bytes !== undefined) {
      if (typeof bytes !== 'string' || !BASE64.test(bytes)) throw new SpanReject('bad_field', 'bytesValue is not base64');
      return bytes;
    }
    return EMPTY;
  },
};

/** Decode an OTLP/JSON ExportTraceServiceRequest (UTF-8 text). */
export function decodeJsonReference(body: Uint8Array, opts: DecodeOptions): DecodedRequest {
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8'));
  } catch (err) {
    throw badBody(`JSON: ${(err as Error).message}`);
  }
  return walk(parsed, JSON_CODEC, opts);
}
