import type { AttributeValue, SpanEventInput, SpanInput } from '../../conventions/SpanInput.js';
import { isObject } from '../../util/guards.js';
import { MAX_VALUE_DEPTH, RequestResult, SpanReject, TooManySpansError, TWO_32, badBody, isZeroHex, scalarOf, spanInput, type DecodeOptions, type DecodedRequest } from './decodeShared.js';

/**
 * A parsed OTLP/JSON ExportTraceServiceRequest -> SpanInputs. Fields are read
 * directly by their lowerCamelCase name, then by the proto snake_case name the
 * OTLP/JSON spec also accepts (only when the camelCase one is undefined).
 */


/** The span fields read, under both spellings. */
interface JsonSpan {
  traceId?: unknown;
  trace_id?: unknown;
  spanId?: unknown;
  span_id?: unknown;
  parentSpanId?: unknown;
  parent_span_id?: unknown;
  name?: unknown;
  startTimeUnixNano?: unknown;
  start_time_unix_nano?: unknown;
  endTimeUnixNano?: unknown;
  end_time_unix_nano?: unknown;
  flags?: unknown;
  status?: unknown;
  attributes?: unknown;
  events?: unknown;
}

interface JsonAnyValue {
  stringValue?: unknown;
  string_value?: unknown;
  boolValue?: unknown;
  bool_value?: unknown;
  intValue?: unknown;
  int_value?: unknown;
  doubleValue?: unknown;
  double_value?: unknown;
  arrayValue?: unknown;
  array_value?: unknown;
  kvlistValue?: unknown;
  kvlist_value?: unknown;
  bytesValue?: unknown;
  bytes_value?: unknown;
}

const EMPTY = Symbol('empty');

/** A kvlist AnyValue's KeyValues, flattened by the caller into dotted keys. */
class KvList {
  constructor(readonly values: unknown[]) {}
}

const LOWER_HEX = /^[0-9a-f]*$/;
const HEX = /^[0-9a-fA-F]*$/;
const BASE64 = /^[A-Za-z0-9+/_-]*={0,2}$/;
const DIGITS = /^\d+$/;
const INT = /^-?\d+$/;
const STATUS_NAMES: Record<string, number> = { STATUS_CODE_UNSET: 0, STATUS_CODE_OK: 1, STATUS_CODE_ERROR: 2 };

function list(v: unknown, what: () => string): unknown[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw badBody(`${what()} is not a list`);
  return v;
}

/** Decode a request already parsed with JSON.parse. */
export function decodeJsonRequest(root: unknown, opts: DecodeOptions): DecodedRequest {
  if (!isObject(root)) throw badBody('the body is not an ExportTraceServiceRequest object');
  // Envelope first, so the span limit is checked before any span is mapped.
  let rsField = root.resourceSpans;
  if (rsField === undefined) rsField = root.resource_spans;
  const resourceSpans = list(rsField, () => 'resourceSpans');
  const groups: unknown[][] = [];
  let total = 0;
  for (let r = 0; r < resourceSpans.length; r++) {
    const rs = resourceSpans[r];
    if (!isObject(rs)) throw badBody(`resourceSpans[${r}] is not an object`);
    let ssField = rs.scopeSpans;
    if (ssField === undefined) ssField = rs.scope_spans;
    const scopeSpans = list(ssField, () => `resourceSpans[${r}].scopeSpans`);
    for (let s = 0; s < scopeSpans.length; s++) {
      const ss = scopeSpans[s];
      if (!isObject(ss)) throw badBody(`resourceSpans[${r}].scopeSpans[${s}] is not an object`);
      const spans = list(ss.spans, () => `resourceSpans[${r}].scopeSpans[${s}].spans`);
      total += spans.length;
      groups.push(spans);
    }
  }
  if (total > opts.maxSpans) throw new TooManySpansError(total, opts.maxSpans);

  const result = new RequestResult();
  let index = 0;
  for (const spans of groups) {
    for (const raw of spans) {
      try {
        if (!isObject(raw)) throw new SpanReject('bad_field', 'not an object');
        result.spans.push(mapSpan(raw as JsonSpan, opts.hookAt));
      } catch (err) {
        if (!(err instanceof SpanReject)) throw err;
        result.reject(err, index);
      }
      index++;
    }
  }
  return result.finish();
}

function mapSpan(o: JsonSpan, hookAt: number | undefined): SpanInput {
  const traceId = idOf(o.traceId === undefined ? o.trace_id : o.traceId, 16);
  if (traceId === undefined || traceId === '' || isZeroHex(traceId)) throw new SpanReject('bad_trace_id', 'trace_id must be 16 non-zero bytes');
  const spanId = idOf(o.spanId === undefined ? o.span_id : o.spanId, 8);
  if (spanId === undefined || spanId === '' || isZeroHex(spanId)) throw new SpanReject('bad_span_id', 'span_id must be 8 non-zero bytes');
  const parent = idOf(o.parentSpanId === undefined ? o.parent_span_id : o.parentSpanId, 8);
  if (parent === undefined) throw new SpanReject('bad_parent_span_id', 'parent_span_id must be empty or 8 bytes');
  const name = o.name ?? '';
  if (typeof name !== 'string') throw new SpanReject('bad_field', 'name is not a string');
  const startMs = nanosToMs(o.startTimeUnixNano === undefined ? o.start_time_unix_nano : o.startTimeUnixNano);
  if (startMs === undefined || startMs === 0) throw new SpanReject('bad_time', 'start_time_unix_nano is missing or not a uint64');
  const endMs = nanosToMs(o.endTimeUnixNano === undefined ? o.end_time_unix_nano : o.endTimeUnixNano);
  if (endMs === undefined) throw new SpanReject('bad_time', 'end_time_unix_nano is not a uint64');
  const flags = uint32Of(o.flags);
  if (flags === undefined) throw new SpanReject('bad_field', 'flags is not a uint32');
  const status = o.status ?? {};
  if (!isObject(status)) throw new SpanReject('bad_field', 'status is not an object');
  const statusCode = statusCodeOf(status.code);
  const statusMessage = status.message ?? '';
  if (typeof statusMessage !== 'string') throw new SpanReject('bad_field', 'status.message is not a string');
  const attributes = attributesOf(o.attributes, 'attributes');
  const ended = endMs !== 0;
  let events: SpanEventInput[] | undefined;
  // Events travel with the ended span only: a span exported before it ended is
  // exported again when it ends, with all its events.
  if (ended && o.events !== undefined && o.events !== null) events = eventsOf(o.events);
  return spanInput(
    traceId,
    spanId,
    parent === '' || isZeroHex(parent) ? undefined : parent,
    flags,
    name,
    startMs,
    ended ? endMs : undefined,
    attributes,
    statusCode,
    statusMessage,
    events,
    hookAt,
  );
}

function eventsOf(raw: unknown): SpanEventInput[] {
  if (!Array.isArray(raw)) throw new SpanReject('bad_field', 'events is not a list');
  const out: SpanEventInput[] = [];
  for (let i = 0; i < raw.length; i++) {
    const e: unknown = raw[i];
    if (!isObject(e)) throw new SpanReject('bad_field', `events[${i}] is not an object`);
    const name = e.name ?? '';
    if (typeof name !== 'string') throw new SpanReject('bad_field', `events[${i}].name is not a string`);
    const timeMs = nanosToMs(e.timeUnixNano === undefined ? e.time_unix_nano : e.timeUnixNano);
    if (timeMs === undefined) throw new SpanReject('bad_time', `events[${i}].time_unix_nano is not a uint64`);
    out.push({ name, timeMs, attributes: attributesOf(e.attributes, `events[${i}].attributes`) });
  }
  return out;
}

/**
 * OTLP/JSON ids are hex; base64 (the generic protobuf JSON mapping: padded or
 * not, standard or URL-safe) is accepted too. '' when absent; undefined when
 * malformed or not `bytes` bytes.
 */
function idOf(v: unknown, bytes: number): string | undefined {
  if (v === undefined || v === null || v === '') return '';
  if (typeof v !== 'string') return undefined;
  // Exporters send lowercase hex: test for it first and skip toLowerCase().
  if (v.length === bytes * 2) return LOWER_HEX.test(v) ? v : HEX.test(v) ? v.toLowerCase() : undefined;
  // Padded (24 characters for 16 bytes, 12 for 8) or not (22, 11); the decoded length is checked below.
  if ((v.length === Math.ceil(bytes / 3) * 4 || v.length === Math.ceil((bytes * 4) / 3)) && BASE64.test(v)) {
    const b = Buffer.from(v, v.includes('-') || v.includes('_') ? 'base64url' : 'base64');
    return b.length === bytes ? b.toString('hex') : undefined;
  }
  return undefined;
}

/** Unix nanos (a decimal string or a number) to epoch ms; 0 when absent; undefined when malformed or past uint64. */
function nanosToMs(v: unknown): number | undefined {
  if (v === undefined || v === null) return 0;
  if (typeof v === 'string') return isUint64Decimal(v) ? decimalNanosToMs(v) : undefined;
  // 2^64 is the double nearest to the largest uint64 (a JSON number cannot say which of the two it meant).
  if (typeof v === 'number') return Number.isInteger(v) && v >= 0 && v <= TWO_64 ? v / 1e6 : undefined;
  return undefined;
}

const UINT64_MAX = '18446744073709551615';
const TWO_64 = 2 ** 64;

/** Decimal digits of a value that fits a uint64 (leading zeros allowed). */
function isUint64Decimal(v: string): boolean {
  return v.length < UINT64_MAX.length || digitsAtMost(v, 0, UINT64_MAX);
}

/**
 * The decimal digits of `v` from index `from` (leading zeros allowed) are at
 * most `max` (digits, no leading zero). A non-digit fails the caller's check anyway.
 */
function digitsAtMost(v: string, from: number, max: string): boolean {
  let i = from;
  while (i < v.length - 1 && v.charCodeAt(i) === 48) i++;
  const n = v.length - i;
  if (n !== max.length) return n < max.length;
  // Same length: digit strings compare as numbers.
  return v.slice(i) <= max;
}

/** Longest millisecond part read digit by digit: below 2^53, so the sum is exact, as Number() would be. */
const MAX_EXACT_MS_DIGITS = 15;

/**
 * Decimal nanos to ms, split so the integral milliseconds stay exact beyond
 * 2^53 nanoseconds: Number(ms digits) + Number(last 6 digits) / 1e6, with the
 * digits read in place rather than through two slices and two Number() calls.
 */
function decimalNanosToMs(v: string): number | undefined {
  if (!DIGITS.test(v)) return undefined;
  const n = v.length;
  if (n <= 6) return Number(v) / 1e6;
  const split = n - 6;
  if (split > MAX_EXACT_MS_DIGITS) return Number(v.slice(0, split)) + Number(v.slice(split)) / 1e6;
  let ms = 0;
  for (let i = 0; i < split; i++) ms = ms * 10 + (v.charCodeAt(i) - 48);
  let ns = 0;
  for (let i = split; i < n; i++) ns = ns * 10 + (v.charCodeAt(i) - 48);
  return ms + ns / 1e6;
}

function uint32Of(v: unknown): number | undefined {
  if (v === undefined || v === null) return 0;
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < TWO_32) return v;
  if (typeof v === 'string' && DIGITS.test(v) && Number(v) < TWO_32) return Number(v);
  return undefined;
}

function statusCodeOf(v: unknown): number {
  if (v === undefined || v === null) return 0;
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return v <= 2 ? v : 0;
  if (typeof v === 'string' && v in STATUS_NAMES) return STATUS_NAMES[v]!;
  throw new SpanReject('bad_field', 'status.code is not a StatusCode');
}

const TWO_63 = 2 ** 63;
const INT64_MAX = '9223372036854775807';
const INT64_MIN_DIGITS = '9223372036854775808';

/**
 * An int64 intValue: a decimal string within int64 (a safe integer as a
 * number, else a BigInt) or a JSON number up to ±2^63, the doubles nearest
 * to the int64 bounds (a JSON number cannot say which integer it meant).
 */
function intOf(v: unknown): number | bigint {
  if (typeof v === 'number' && Number.isInteger(v) && v <= TWO_63 && v >= -TWO_63) return v;
  if (typeof v === 'string' && INT.test(v)) {
    const n = Number(v);
    if (Number.isSafeInteger(n)) return n;
    if (isInt64Decimal(v)) return BigInt(v);
  }
  throw new SpanReject('bad_field', 'intValue is not an int64');
}

/** An optionally signed decimal (leading zeros allowed) within int64, checked on its digits before BigInt() reads it. */
function isInt64Decimal(v: string): boolean {
  return v.charCodeAt(0) === 45 ? digitsAtMost(v, 1, INT64_MIN_DIGITS) : digitsAtMost(v, 0, INT64_MAX);
}

/** KeyValue list to a flat attribute record (kvlist values become dotted keys). */
function attributesOf(v: unknown, what: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (v === undefined || v === null) return out;
  if (!Array.isArray(v)) throw new SpanReject('bad_field', `${what} is not a list`);
  addKeyValues(out, '', v, what, 0);
  return out;
}

function addKeyValues(out: Record<string, unknown>, prefix: string, kvs: unknown[], what: string, depth: number): void {
  for (let i = 0; i < kvs.length; i++) {
    const kv: unknown = kvs[i];
    if (!isObject(kv)) throw new SpanReject('bad_field', `${what}[${i}] is not a KeyValue`);
    const key = kv.key;
    // No key (OTLP requires one; proto3 JSON: absent, null or ""): the attribute is left out, not the span.
    if (key === undefined || key === null || key === '') continue;
    if (typeof key !== 'string') throw new SpanReject('bad_field', `${what}[${i}].key is not a string`);
    const full = prefix === '' ? key : prefix + key;
    if (full === '__proto__') continue;
    const value = anyValueOf(kv.value, depth);
    if (value === EMPTY) continue;
    if (value instanceof KvList) {
      if (depth + 1 > MAX_VALUE_DEPTH) {
        out[full] = null;
        continue;
      }
      addKeyValues(out, `${full}.`, value.values, `${what}[${i}].value`, depth + 1);
      continue;
    }
    out[full] = value;
  }
}

/**
 * One AnyValue. The members are tried in the order the codec walk tried them
 * (string, bool, int, double, array, kvlist, bytes), camelCase then snake_case.
 * A member whose value is JSON null is absent (the proto3 JSON mapping): an
 * AnyValue with only null members is empty, like `{}`.
 */
function anyValueOf(raw: unknown, depth: number): AttributeValue | KvList | typeof EMPTY {
  if (raw === undefined || raw === null) return EMPTY;
  if (!isObject(raw)) throw new SpanReject('bad_field', 'attribute value is not an AnyValue object');
  const v = raw as JsonAnyValue;
  // The common case first: one string member under its camelCase name.
  const s = v.stringValue;
  if (typeof s === 'string') return s;
  // proto3 JSON: a member that is null is absent (the snake_case name is read in its place).
  const x = s ?? v.string_value;
  if (x !== undefined && x !== null) {
    if (typeof x !== 'string') throw new SpanReject('bad_field', 'stringValue is not a string');
    return x;
  }
  const b = v.boolValue ?? v.bool_value;
  if (b !== undefined && b !== null) {
    if (typeof b !== 'boolean') throw new SpanReject('bad_field', 'boolValue is not a boolean');
    return b;
  }
  const i = v.intValue ?? v.int_value;
  if (i !== undefined && i !== null) return intOf(i);
  const d = v.doubleValue ?? v.double_value;
  if (d !== undefined && d !== null) return doubleOf(d);
  const arr = v.arrayValue ?? v.array_value;
  if (arr !== undefined && arr !== null) {
    const values = containerValues(arr, 'arrayValue');
    return depth >= MAX_VALUE_DEPTH ? null : arrayOf(values, depth);
  }
  const kvl = v.kvlistValue ?? v.kvlist_value;
  if (kvl !== undefined && kvl !== null) return new KvList(containerValues(kvl, 'kvlistValue'));
  const bytes = v.bytesValue ?? v.bytes_value;
  if (bytes !== undefined && bytes !== null) {
    if (typeof bytes !== 'string' || !BASE64.test(bytes)) throw new SpanReject('bad_field', 'bytesValue is not base64');
    return bytes;
  }
  return EMPTY;
}

function doubleOf(d: unknown): number {
  if (typeof d === 'number') return d;
  if (typeof d === 'string' && d.trim() !== '' && !Number.isNaN(Number(d))) return Number(d);
  if (d === 'NaN' || d === 'Infinity' || d === '-Infinity') return Number(d);
  throw new SpanReject('bad_field', 'doubleValue is not a number');
}

/** `values` of an ArrayValue or KeyValueList object. */
function containerValues(c: unknown, what: 'arrayValue' | 'kvlistValue'): unknown[] {
  if (!isObject(c)) throw new SpanReject('bad_field', `${what} is not an object`);
  const values = c.values ?? [];
  if (!Array.isArray(values)) throw new SpanReject('bad_field', `${what}.values is not a list`);
  return values;
}

function arrayOf(values: unknown[], depth: number): Array<string | number | boolean | null> {
  const out: Array<string | number | boolean | null> = [];
  for (const x of values) {
    const v = anyValueOf(x, depth + 1);
    if (v === EMPTY) out.push(null);
    else if (v instanceof KvList) {
      const o: Record<string, unknown> = {};
      addKeyValues(o, '', v.values, 'kvlist', depth + 1);
      out.push(scalarOf(o));
    } else out.push(scalarOf(v));
  }
  return out;
}
