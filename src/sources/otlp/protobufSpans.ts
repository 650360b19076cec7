import type { AttributeValue, SpanEventInput, SpanInput } from '../../conventions/SpanInput.js';
import { MAX_VALUE_DEPTH, RequestResult, SpanReject, TooManySpansError, TWO_32, intFromParts, scalarOf, spanInput, type DecodeOptions, type DecodedRequest } from './decodeShared.js';
import { ANY_VALUE, ARRAY_VALUE, EVENT, KEY_VALUE_LIST, LINK, RESOURCE_SHAPE, SCOPE_SHAPE, SPAN, WireReader, type MessageShape } from './wire.js';

/**
 * Binary ExportTraceServiceRequest -> SpanInputs, straight from the wire bytes
 * (no intermediate message objects). The output is the one the protobufjs
 * messages walked by the shared codec produced before, including proto3 merge
 * rules (last value wins, a repeated singular message merges, a oneof keeps its
 * last member), and a body is refused (WireError) exactly when protobufjs
 * refused it. Only what becomes a SpanInput is decoded; the rest (resources,
 * scopes, links, events of started spans) is validated and skipped.
 */

// Tags (field number << 3 | wire type) of the fields read, by message.
const TAG_RESOURCE_SPANS = (1 << 3) | 2;
const TAG_RS_RESOURCE = (1 << 3) | 2;
const TAG_RS_SCOPE_SPANS = (2 << 3) | 2;
const TAG_RS_SCHEMA_URL = (3 << 3) | 2;
const TAG_SS_SCOPE = (1 << 3) | 2;
const TAG_SS_SPANS = (2 << 3) | 2;
const TAG_SS_SCHEMA_URL = (3 << 3) | 2;

const TAG_SPAN_TRACE_ID = (1 << 3) | 2;
const TAG_SPAN_SPAN_ID = (2 << 3) | 2;
const TAG_SPAN_TRACE_STATE = (3 << 3) | 2;
const TAG_SPAN_PARENT_SPAN_ID = (4 << 3) | 2;
const TAG_SPAN_NAME = (5 << 3) | 2;
const TAG_SPAN_KIND = (6 << 3) | 0;
const TAG_SPAN_START = (7 << 3) | 1;
const TAG_SPAN_END = (8 << 3) | 1;
const TAG_SPAN_ATTRIBUTES = (9 << 3) | 2;
const TAG_SPAN_DROPPED_ATTRIBUTES = (10 << 3) | 0;
const TAG_SPAN_EVENTS = (11 << 3) | 2;
const TAG_SPAN_DROPPED_EVENTS = (12 << 3) | 0;
const TAG_SPAN_LINKS = (13 << 3) | 2;
const TAG_SPAN_DROPPED_LINKS = (14 << 3) | 0;
const TAG_SPAN_STATUS = (15 << 3) | 2;
const TAG_SPAN_FLAGS = (16 << 3) | 5;

const TAG_STATUS_MESSAGE = (2 << 3) | 2;
const TAG_STATUS_CODE = (3 << 3) | 0;

const TAG_EVENT_TIME = (1 << 3) | 1;
const TAG_EVENT_NAME = (2 << 3) | 2;
const TAG_EVENT_ATTRIBUTES = (3 << 3) | 2;
const TAG_EVENT_DROPPED_ATTRIBUTES = (4 << 3) | 0;

const TAG_KV_KEY = (1 << 3) | 2;
const TAG_KV_VALUE = (2 << 3) | 2;
/** ArrayValue.values and KeyValueList.values. */
const TAG_VALUES = (1 << 3) | 2;

const TAG_ANY_STRING = (1 << 3) | 2;
const TAG_ANY_BOOL = (2 << 3) | 0;
const TAG_ANY_INT = (3 << 3) | 0;
const TAG_ANY_DOUBLE = (4 << 3) | 1;
const TAG_ANY_ARRAY = (5 << 3) | 2;
const TAG_ANY_KVLIST = (6 << 3) | 2;
const TAG_ANY_BYTES = (7 << 3) | 2;

/**
 * Message nesting as protobufjs counts it (the request is 0), for the
 * validator's depth limit. Decoded values stop at MAX_VALUE_DEPTH container
 * levels, far below the limit; deeper bytes go through the validator.
 */
const REQUEST_DEPTH = 0;
const RESOURCE_SPANS_DEPTH = 1;
const SCOPE_SPANS_DEPTH = 2;
const SPAN_DEPTH = 3;

const enum Kind {
  None,
  String,
  Bool,
  Int,
  Double,
  Array,
  KvList,
  Bytes,
}

const EMPTY = Symbol('empty');

/** A kvlist AnyValue: its KeyValueList byte ranges (merged occurrences) and their nesting depth. */
class KvList {
  constructor(
    readonly parts: number[],
    readonly depth: number,
  ) {}
}

type Value = AttributeValue | KvList | typeof EMPTY;

/** Decode a binary protobuf ExportTraceServiceRequest; throws WireError for malformed bytes. */
export function decodeProtobufRequest(body: Uint8Array, opts: DecodeOptions): DecodedRequest {
  const r = new WireReader(body);
  const ranges = spanRanges(r);
  const count = ranges.length / 2;
  if (count > opts.maxSpans) {
    // protobufjs parsed the whole body before the spans were counted: a
    // malformed span still makes it a bad body rather than too many spans.
    for (let i = 0; i < ranges.length; i += 2) r.validateRange(SPAN, ranges[i], ranges[i + 1], SPAN_DEPTH);
    throw new TooManySpansError(count, opts.maxSpans);
  }
  const result = new RequestResult();
  const decoder = new SpanDecoder(r, opts.hookAt);
  for (let i = 0; i < ranges.length; i += 2) {
    try {
      result.spans.push(decoder.span(ranges[i], ranges[i + 1]));
    } catch (err) {
      if (!(err instanceof SpanReject)) throw err;
      // A rejected span was left half read: the rest of its bytes must still be well formed.
      r.validateRange(SPAN, ranges[i], ranges[i + 1], SPAN_DEPTH);
      result.reject(err, i / 2);
    }
  }
  return result.finish();
}

/**
 * The envelope pass: validates everything above the spans (resources, scopes,
 * schema URLs) and returns each span's [start, end) byte range, in request order.
 */
function spanRanges(r: WireReader): number[] {
  const out: number[] = [];
  const end = r.buf.length;
  while (r.pos < end) {
    const tag = r.tag(end);
    if (tag === TAG_RESOURCE_SPANS) {
      const stop = r.delimited(end);
      resourceSpans(r, stop, out);
    } else r.skipField(tag & 7, tag >>> 3, end, REQUEST_DEPTH);
  }
  return out;
}

function resourceSpans(r: WireReader, end: number, out: number[]): void {
  while (r.pos < end) {
    const tag = r.tag(end);
    if (tag === TAG_RS_SCOPE_SPANS) scopeSpans(r, r.delimited(end), out);
    else if (tag === TAG_RS_RESOURCE) r.validate(RESOURCE_SHAPE, r.delimited(end), RESOURCE_SPANS_DEPTH + 1);
    else if (tag === TAG_RS_SCHEMA_URL) r.skipString(r.delimited(end));
    else r.skipField(tag & 7, tag >>> 3, end, RESOURCE_SPANS_DEPTH);
  }
}

function scopeSpans(r: WireReader, end: number, out: number[]): void {
  while (r.pos < end) {
    const tag = r.tag(end);
    if (tag === TAG_SS_SPANS) {
      const at = r.skipDelimited(end);
      out.push(at, r.pos);
    } else if (tag === TAG_SS_SCOPE) r.validate(SCOPE_SHAPE, r.delimited(end), SCOPE_SPANS_DEPTH + 1);
    else if (tag === TAG_SS_SCHEMA_URL) r.skipString(r.delimited(end));
    else r.skipField(tag & 7, tag >>> 3, end, SCOPE_SPANS_DEPTH);
  }
}

/** Maps the spans of one request; keeps per-request scratch state. */
class SpanDecoder {
  /** KeyValue ranges of the span being decoded (attributes wait until its ids and times are checked). */
  private readonly attributeRanges: number[] = [];
  private readonly eventRanges: number[] = [];
  private statusCode = 0;
  private statusMessage = '';
  /** Spans of one trace usually travel together: reuse the previous trace id's hex. */
  private lastTraceAt = -1;
  private lastTraceId = '';

  // The AnyValue being scanned (a oneof: the last member wins; message members merge).
  private kind = Kind.None;
  private str = '';
  private bool = false;
  private lo = 0;
  private hi = 0;
  private num = 0;
  private bytesAt = 0;
  private bytesEnd = 0;
  private parts: number[] = [];
  private partsDepth = 0;

  constructor(
    private readonly r: WireReader,
    private readonly hookAt: number | undefined,
  ) {}

  span(start: number, end: number): SpanInput {
    const r = this.r;
    // Scratch arrays reused from span to span: the counts say how much of them is this span's.
    const attributeRanges = this.attributeRanges;
    const eventRanges = this.eventRanges;
    let attributeEnd = 0;
    let eventEnd = 0;
    this.statusCode = 0;
    this.statusMessage = '';
    let traceAt = 0;
    let traceLen = 0;
    let spanAt = 0;
    let spanLen = 0;
    let parentAt = 0;
    let parentLen = 0;
    let name = '';
    let startLo = 0;
    let startHi = 0;
    let endLo = 0;
    let endHi = 0;
    let flags = 0;
    r.pos = start;
    while (r.pos < end) {
      const tag = r.tag(end);
      switch (tag) {
        case TAG_SPAN_TRACE_ID:
          traceAt = r.skipDelimited(end);
          traceLen = r.pos - traceAt;
          continue;
        case TAG_SPAN_SPAN_ID:
          spanAt = r.skipDelimited(end);
          spanLen = r.pos - spanAt;
          continue;
        case TAG_SPAN_PARENT_SPAN_ID:
          parentAt = r.skipDelimited(end);
          parentLen = r.pos - parentAt;
          continue;
        case TAG_SPAN_NAME:
          name = r.string(r.delimited(end));
          continue;
        case TAG_SPAN_START:
          startLo = r.fixed64Low(end);
          startHi = r.hi;
          continue;
        case TAG_SPAN_END:
          endLo = r.fixed64Low(end);
          endHi = r.hi;
          continue;
        case TAG_SPAN_FLAGS:
          flags = r.fixed32(end);
          continue;
        case TAG_SPAN_ATTRIBUTES:
          attributeRanges[attributeEnd++] = r.skipDelimited(end);
          attributeRanges[attributeEnd++] = r.pos;
          continue;
        case TAG_SPAN_EVENTS:
          eventRanges[eventEnd++] = r.skipDelimited(end);
          eventRanges[eventEnd++] = r.pos;
          continue;
        case TAG_SPAN_STATUS:
          this.status(r.delimited(end));
          continue;
        case TAG_SPAN_TRACE_STATE:
          r.skipString(r.delimited(end));
          continue;
        case TAG_SPAN_LINKS:
          r.validate(LINK, r.delimited(end), SPAN_DEPTH + 1);
          continue;
        case TAG_SPAN_KIND:
        case TAG_SPAN_DROPPED_ATTRIBUTES:
        case TAG_SPAN_DROPPED_EVENTS:
        case TAG_SPAN_DROPPED_LINKS:
          r.skipVarint(end);
          continue;
      }
      r.skipField(tag & 7, tag >>> 3, end, SPAN_DEPTH);
    }

    // The checks, in the order (and with the messages) of the shared walk.
    if (traceLen !== 16 || r.isZero(traceAt, traceAt + 16)) throw new SpanReject('bad_trace_id', 'trace_id must be 16 non-zero bytes');
    if (spanLen !== 8 || r.isZero(spanAt, spanAt + 8)) throw new SpanReject('bad_span_id', 'span_id must be 8 non-zero bytes');
    if (parentLen !== 0 && parentLen !== 8) throw new SpanReject('bad_parent_span_id', 'parent_span_id must be empty or 8 bytes');
    if (startLo === 0 && startHi === 0) throw new SpanReject('bad_time', 'start_time_unix_nano is missing or not a uint64');
    const code = this.statusCode;
    if (code < 0) throw new SpanReject('bad_field', 'status.code is not a StatusCode');

    const attributes: Record<string, unknown> = {};
    for (let i = 0; i < attributeEnd; i += 2) this.keyValue(attributes, '', attributeRanges[i], attributeRanges[i + 1], 'attributes', i / 2, 0, SPAN_DEPTH + 1);
    const ended = endLo !== 0 || endHi !== 0;
    let events: SpanEventInput[] | undefined;
    // Events travel with the ended span only: a span exported before it ended is
    // exported again when it ends, with all its events. (An ended span always
    // has a list, maybe empty, as protobufjs messages always had one.)
    if (ended) {
      events = [];
      for (let i = 0; i < eventEnd; i += 2) events.push(this.event(eventRanges[i], eventRanges[i + 1], i / 2));
    } else {
      for (let i = 0; i < eventEnd; i += 2) r.validateRange(EVENT, eventRanges[i], eventRanges[i + 1], SPAN_DEPTH + 1);
    }

    const statusMessage = this.statusMessage;
    return spanInput(
      this.traceHex(traceAt),
      r.hex(spanAt, 8),
      parentLen === 0 || r.isZero(parentAt, parentAt + 8) ? undefined : r.hex(parentAt, 8),
      flags,
      name,
      nanosToMs(startHi, startLo),
      ended ? nanosToMs(endHi, endLo) : undefined,
      attributes,
      code <= 2 ? code : 0,
      statusMessage,
      events,
      this.hookAt,
    );
  }

  private traceHex(at: number): string {
    const r = this.r;
    if (this.lastTraceAt >= 0 && r.sameBytes(this.lastTraceAt, at, 16)) return this.lastTraceId;
    this.lastTraceAt = at;
    this.lastTraceId = r.hex(at, 16);
    return this.lastTraceId;
  }

  /** Span.status; a second status field merges into the first (its set fields win). */
  private status(end: number): void {
    const r = this.r;
    while (r.pos < end) {
      const tag = r.tag(end);
      if (tag === TAG_STATUS_CODE) this.statusCode = r.varint64(end) | 0;
      else if (tag === TAG_STATUS_MESSAGE) this.statusMessage = r.string(r.delimited(end));
      else r.skipField(tag & 7, tag >>> 3, end, SPAN_DEPTH + 1);
    }
  }

  private event(start: number, end: number, index: number): SpanEventInput {
    const r = this.r;
    let name = '';
    let lo = 0;
    let hi = 0;
    let n = 0;
    let what: string | undefined;
    const attributes: Record<string, unknown> = {};
    r.pos = start;
    while (r.pos < end) {
      const tag = r.tag(end);
      if (tag === TAG_EVENT_TIME) {
        lo = r.fixed64Low(end);
        hi = r.hi;
      } else if (tag === TAG_EVENT_NAME) name = r.string(r.delimited(end));
      else if (tag === TAG_EVENT_ATTRIBUTES) {
        // Names and times cannot be rejected, so attributes can be mapped in wire order.
        const stop = r.delimited(end);
        what ??= `events[${index}].attributes`;
        this.keyValue(attributes, '', r.pos, stop, what, n++, 0, SPAN_DEPTH + 2);
        r.pos = stop;
      } else if (tag === TAG_EVENT_DROPPED_ATTRIBUTES) r.skipVarint(end);
      else r.skipField(tag & 7, tag >>> 3, end, SPAN_DEPTH + 1);
    }
    return { name, timeMs: nanosToMs(hi, lo), attributes };
  }

  /**
   * One KeyValue [start, end) into `out` (kvlist values flattened to dotted
   * keys). `depth` counts value nesting for MAX_VALUE_DEPTH, `nesting` the
   * KeyValue message's protobuf nesting.
   */
  private keyValue(out: Record<string, unknown>, prefix: string, start: number, end: number, what: string, index: number, depth: number, nesting: number): void {
    const r = this.r;
    let key: string | undefined;
    let valueAt = -1;
    let valueEnd = 0;
    let moreValues: number[] | undefined;
    r.pos = start;
    while (r.pos < end) {
      const tag = r.tag(end);
      if (tag === TAG_KV_KEY) {
        const k = r.string(r.delimited(end));
        // protobufjs leaves an empty string field unset.
        key = k === '' ? undefined : k;
      } else if (tag === TAG_KV_VALUE) {
        const at = r.skipDelimited(end);
        if (valueAt < 0) {
          valueAt = at;
          valueEnd = r.pos;
        } else (moreValues ??= []).push(at, r.pos);
      } else r.skipField(tag & 7, tag >>> 3, end, nesting);
    }
    if (valueAt < 0) return;
    // No key (OTLP requires one): the attribute is left out, not the span; its value must still be well formed.
    if (key === undefined || prefix + key === '__proto__') {
      r.validateRange(ANY_VALUE, valueAt, valueEnd, nesting + 1);
      if (moreValues !== undefined) this.validateParts(ANY_VALUE, moreValues, nesting + 1);
      return;
    }
    const full = prefix + key;
    const value = this.anyValue(valueAt, valueEnd, moreValues, depth, nesting + 1);
    if (value === EMPTY) return;
    if (value instanceof KvList) {
      if (depth + 1 > MAX_VALUE_DEPTH) {
        this.validateParts(KEY_VALUE_LIST, value.parts, value.depth);
        out[full] = null;
        return;
      }
      this.keyValueList(out, `${full}.`, value, `${what}[${index}].value`, depth + 1);
      return;
    }
    out[full] = value;
  }

  /** The KeyValues of a kvlist value, in order across its merged occurrences. */
  private keyValueList(out: Record<string, unknown>, prefix: string, list: KvList, what: string, depth: number): void {
    const r = this.r;
    const parts = list.parts;
    let index = 0;
    for (let p = 0; p < parts.length; p += 2) {
      const end = parts[p + 1];
      r.pos = parts[p];
      while (r.pos < end) {
        const tag = r.tag(end);
        if (tag === TAG_VALUES) {
          const stop = r.delimited(end);
          this.keyValue(out, prefix, r.pos, stop, what, index++, depth, list.depth + 1);
          r.pos = stop;
        } else r.skipField(tag & 7, tag >>> 3, end, list.depth);
      }
    }
  }

  /** An AnyValue made of one or more occurrences of the same field (merged as protobuf merges). */
  private anyValue(start: number, end: number, more: number[] | undefined, depth: number, nesting: number): Value {
    this.startAnyValue();
    this.scanAnyValue(start, end, nesting);
    if (more !== undefined) for (let i = 0; i < more.length; i += 2) this.scanAnyValue(more[i], more[i + 1], nesting);
    switch (this.kind) {
      case Kind.None:
        return EMPTY;
      case Kind.String:
        return this.str;
      case Kind.Bool:
        return this.bool;
      case Kind.Int:
        return intFromParts(this.hi, this.lo, false);
      case Kind.Double:
        return this.num;
      case Kind.Bytes:
        return this.r.buf.toString('base64', this.bytesAt, this.bytesEnd);
      case Kind.Array: {
        const parts = this.parts;
        if (depth >= MAX_VALUE_DEPTH) {
          this.validateParts(ARRAY_VALUE, parts, this.partsDepth);
          return null;
        }
        return this.arrayOf(parts, this.partsDepth, depth);
      }
      case Kind.KvList:
        return new KvList(this.parts, this.partsDepth);
    }
  }

  private startAnyValue(): void {
    this.kind = Kind.None;
  }

  private scanAnyValue(start: number, end: number, nesting: number): void {
    const r = this.r;
    r.pos = start;
    while (r.pos < end) {
      const tag = r.tag(end);
      switch (tag) {
        case TAG_ANY_STRING:
          this.str = r.string(r.delimited(end));
          this.setKind(Kind.String);
          continue;
        case TAG_ANY_BOOL:
          this.bool = r.bool(end);
          this.setKind(Kind.Bool);
          continue;
        case TAG_ANY_INT:
          this.lo = r.varint64(end);
          this.hi = r.hi;
          this.setKind(Kind.Int);
          continue;
        case TAG_ANY_DOUBLE:
          this.num = r.double(end);
          this.setKind(Kind.Double);
          continue;
        case TAG_ANY_BYTES:
          this.bytesAt = r.skipDelimited(end);
          this.bytesEnd = r.pos;
          this.setKind(Kind.Bytes);
          continue;
        case TAG_ANY_ARRAY:
        case TAG_ANY_KVLIST: {
          const stop = r.delimited(end);
          const kind = tag === TAG_ANY_ARRAY ? Kind.Array : Kind.KvList;
          if (this.kind === kind) this.parts.push(r.pos, stop);
          else {
            this.setKind(kind);
            this.parts = [r.pos, stop];
            this.partsDepth = nesting + 1;
          }
          r.pos = stop;
          continue;
        }
      }
      r.skipField(tag & 7, tag >>> 3, end, nesting);
    }
  }

  /** Switches the oneof member; a replaced array or kvlist is never mapped, so it is validated here. */
  private setKind(kind: Kind): void {
    const old = this.kind;
    if (old !== kind && (old === Kind.Array || old === Kind.KvList)) {
      const r = this.r;
      const pos = r.pos;
      this.validateParts(old === Kind.Array ? ARRAY_VALUE : KEY_VALUE_LIST, this.parts, this.partsDepth);
      r.pos = pos;
    }
    this.kind = kind;
  }

  private arrayOf(parts: number[], nesting: number, depth: number): Array<string | number | boolean | null> {
    const r = this.r;
    const out: Array<string | number | boolean | null> = [];
    for (let p = 0; p < parts.length; p += 2) {
      const end = parts[p + 1];
      r.pos = parts[p];
      while (r.pos < end) {
        const tag = r.tag(end);
        if (tag === TAG_VALUES) {
          const stop = r.delimited(end);
          out.push(this.element(r.pos, stop, depth, nesting + 1));
          r.pos = stop;
        } else r.skipField(tag & 7, tag >>> 3, end, nesting);
      }
    }
    return out;
  }

  private element(start: number, end: number, depth: number, nesting: number): string | number | boolean | null {
    const v = this.anyValue(start, end, undefined, depth + 1, nesting);
    if (v === EMPTY) return null;
    if (v instanceof KvList) {
      const o: Record<string, unknown> = {};
      this.keyValueList(o, '', v, 'kvlist', depth + 1);
      return scalarOf(o);
    }
    return scalarOf(v);
  }

  private validateParts(shape: MessageShape, parts: number[], nesting: number): void {
    for (let i = 0; i < parts.length; i += 2) this.r.validateRange(shape, parts[i], parts[i + 1], nesting);
  }
}

/** fixed64 unix nanos to epoch ms, with the arithmetic (and rounding) of the protobufjs Long path. */
function nanosToMs(hi: number, lo: number): number {
  return (hi * TWO_32) / 1e6 + lo / 1e6;
}
