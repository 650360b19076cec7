import { isUtf8 } from 'node:buffer';

/**
 * A protobuf wire-format reader for OTLP trace requests: varints, fixed-width
 * numbers, length-delimited fields, and a schema-driven validator for the
 * messages the span decoder does not turn into values (resources, scopes,
 * links, the events of started spans, the parts of a rejected span).
 *
 * The acceptance rules copy those of the protobufjs decoder the receiver used
 * before (protobufjs 8 with the schema in schema.ts), so a body is refused
 * exactly when it was refused before:
 * - a tag is a varint of at most 5 bytes that fits 32 bits, field number 0 is illegal;
 * - a known varint field (int32, uint32, enum, int64, bool) has at most 10 bytes,
 *   an unknown one any number;
 * - a length prefix has at most 5 bytes (the 5th at most 7) and must fit the enclosing message;
 * - strings must be valid UTF-8 (proto3 `string`, protobufjs `stringVerify`);
 * - a known field with another wire type is skipped like an unknown field;
 * - wire types 4, 6 and 7 are refused; groups (3) are skipped up to the matching end tag;
 * - messages and groups nest at most MAX_NESTING deep.
 */

/** Malformed bytes; decode.ts answers it with TW_OTLP_BAD_BODY. */
export class WireError extends Error {}

/** protobufjs `Reader.recursionLimit` (protoc's default): deeper nesting refuses the body. */
const MAX_NESTING = 100;

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_DELIMITED = 2;
const WIRE_GROUP = 3;
const WIRE_FIXED32 = 5;

/** How the validator checks a known field; a message field is checked against its shape. */
const Scalar = { Varint: 0, Fixed64: 1, Bytes: 2, String: 3, Fixed32: 5 } as const;
type Scalar = (typeof Scalar)[keyof typeof Scalar];

export interface MessageShape {
  readonly name: string;
  /** Indexed by field number. */
  readonly fields: Array<Scalar | MessageShape | undefined>;
}

function wireTypeOf(f: Scalar | MessageShape): number {
  if (typeof f !== 'number') return WIRE_DELIMITED;
  return f === Scalar.String ? WIRE_DELIMITED : f;
}

const outOfRange = (): WireError => new WireError('index out of range');
const tooDeep = (): WireError => new WireError('max depth exceeded');

/** Strings decoded from the wire; `fatal` because protobufjs refused invalid UTF-8 the same way. */
const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * Short strings (attribute keys, span names, model and tool names) repeat from
 * span to span and request to request: a small cache of bytes -> string skips
 * the native decode and hands V8 strings it has already internalised as
 * property keys. Each slot keeps a copy of its bytes in one preallocated arena
 * (a hit compares bytes with bytes, a miss copies at most 32 bytes, nothing is
 * allocated). Two slots per hash, the newer first, so two hot strings that
 * collide both stay.
 */
const CACHE_BITS = 12;
const CACHE_MAX_BYTES = 32;
const cacheStrings: string[] = new Array<string>(1 << CACHE_BITS).fill('');
const cacheLengths = new Uint8Array(1 << CACHE_BITS);
const cacheBytes = new Uint8Array((1 << CACHE_BITS) * CACHE_MAX_BYTES);
const cacheView = new DataView(cacheBytes.buffer);

/** Hex digit char codes by nibble. */
const HEX_DIGITS = Uint8Array.from('0123456789abcdef', (c) => c.charCodeAt(0));
const HI = new Uint8Array(256);
const LO = new Uint8Array(256);
for (let i = 0; i < 256; i++) {
  HI[i] = HEX_DIGITS[i >> 4];
  LO[i] = HEX_DIGITS[i & 15];
}
const fromCharCode = String.fromCharCode;

export class WireReader {
  readonly buf: Buffer;
  /** The same bytes, for reading 4 at a time. */
  private readonly view: DataView;
  pos = 0;
  /** High 32 bits of the last `varint64` / `fixed64Low` read. */
  hi = 0;

  constructor(body: Uint8Array) {
    this.buf = Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
  }

  /** A field tag (field number << 3 | wire type). */
  tag(end: number): number {
    const buf = this.buf;
    let pos = this.pos;
    if (pos >= end) throw outOfRange();
    const b0 = buf[pos++];
    if (b0 < 128) {
      this.pos = pos;
      return b0;
    }
    let value = b0 & 127;
    for (let shift = 7; shift < 28; shift += 7) {
      if (pos >= end) throw outOfRange();
      const b = buf[pos++];
      value |= (b & 127) << shift;
      if (b < 128) {
        this.pos = pos;
        return value >>> 0;
      }
    }
    if (pos >= end) throw outOfRange();
    const b4 = buf[pos++];
    if (b4 >= 16) throw new WireError('invalid tag encoding');
    this.pos = pos;
    return (value | (b4 << 28)) >>> 0;
  }

  /** A length prefix; returns the end offset of the field's bytes, which start at `pos`. */
  delimited(end: number): number {
    const buf = this.buf;
    let pos = this.pos;
    if (pos >= end) throw outOfRange();
    let len = buf[pos++];
    if (len >= 128) {
      len &= 127;
      let shift = 7;
      for (; shift < 28; shift += 7) {
        if (pos >= end) throw outOfRange();
        const b = buf[pos++];
        len |= (b & 127) << shift;
        if (b < 128) break;
      }
      if (shift === 28) {
        if (pos >= end) throw outOfRange();
        const b4 = buf[pos++];
        if (b4 > 7) throw new WireError('invalid length encoding');
        len = (len | (b4 << 28)) >>> 0;
      }
    }
    const stop = pos + len;
    if (stop > end) throw outOfRange();
    this.pos = pos;
    return stop;
  }

  /** Steps over a length-delimited field: returns where its bytes start and leaves `pos` at their end. */
  skipDelimited(end: number): number {
    const stop = this.delimited(end);
    const at = this.pos;
    this.pos = stop;
    return at;
  }

  /**
   * A varint of a known field as 64 bits: returns the low 32 bits (unsigned),
   * leaves the high 32 bits in `hi`. At most 10 bytes; bits past 64 are dropped.
   */
  varint64(end: number): number {
    const buf = this.buf;
    let pos = this.pos;
    let lo = 0;
    let hi = 0;
    for (let i = 0; i < 10; i++) {
      if (pos >= end) throw outOfRange();
      const b = buf[pos++] & 127;
      if (i < 4) lo |= b << (7 * i);
      else if (i === 4) {
        lo |= b << 28;
        hi |= b >> 4;
      } else hi |= b << (7 * (i - 5) + 3);
      if (buf[pos - 1] < 128) {
        this.pos = pos;
        this.hi = hi >>> 0;
        return lo >>> 0;
      }
    }
    throw new WireError('invalid varint encoding');
  }

  /** A bool varint: true when any of its (at most 10) bytes has a payload bit set. */
  bool(end: number): boolean {
    const buf = this.buf;
    let pos = this.pos;
    let any = 0;
    for (let i = 0; i < 10; i++) {
      if (pos >= end) throw outOfRange();
      const b = buf[pos++];
      any |= b & 127;
      if (b < 128) {
        this.pos = pos;
        return any !== 0;
      }
    }
    throw new WireError('invalid varint encoding');
  }

  /** Skips the varint of a known field (at most 10 bytes). */
  skipVarint(end: number): void {
    const buf = this.buf;
    let pos = this.pos;
    for (let i = 0; i < 10; i++) {
      if (pos >= end) throw outOfRange();
      if (buf[pos++] < 128) {
        this.pos = pos;
        return;
      }
    }
    throw new WireError('invalid varint encoding');
  }

  fixed32(end: number): number {
    const pos = this.pos;
    if (pos + 4 > end) throw outOfRange();
    this.pos = pos + 4;
    return this.buf.readUInt32LE(pos);
  }

  /** A fixed64: returns the low 32 bits, leaves the high 32 bits in `hi`. */
  fixed64Low(end: number): number {
    const pos = this.pos;
    if (pos + 8 > end) throw outOfRange();
    const buf = this.buf;
    this.pos = pos + 8;
    this.hi = (buf[pos + 4] | (buf[pos + 5] << 8) | (buf[pos + 6] << 16) | (buf[pos + 7] << 24)) >>> 0;
    return (buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16) | (buf[pos + 3] << 24)) >>> 0;
  }

  double(end: number): number {
    const pos = this.pos;
    if (pos + 8 > end) throw outOfRange();
    this.pos = pos + 8;
    return this.buf.readDoubleLE(pos);
  }

  /** A length-delimited string ending at `stop` (from `delimited`), as UTF-8. */
  string(stop: number): string {
    const start = this.pos;
    this.pos = stop;
    const n = stop - start;
    if (n === 0) return '';
    return n <= CACHE_MAX_BYTES ? this.cachedString(start, stop) : this.utf8(start, stop);
  }

  private cachedString(start: number, stop: number): string {
    const n = stop - start;
    const slot = (this.hashOf(start, stop) >>> (32 - CACHE_BITS)) & ~1;
    if (this.cached(slot, start, n)) return cacheStrings[slot];
    if (this.cached(slot + 1, start, n)) return cacheStrings[slot + 1];
    const s = this.utf8(start, stop);
    // The newer string takes the first slot, the one it displaces the second.
    cacheBytes.copyWithin((slot + 1) * CACHE_MAX_BYTES, slot * CACHE_MAX_BYTES, (slot + 1) * CACHE_MAX_BYTES);
    cacheLengths[slot + 1] = cacheLengths[slot];
    cacheStrings[slot + 1] = cacheStrings[slot];
    const at = slot * CACHE_MAX_BYTES;
    const buf = this.buf;
    for (let i = 0; i < n; i++) cacheBytes[at + i] = buf[start + i];
    cacheLengths[slot] = n;
    cacheStrings[slot] = s;
    return s;
  }

  /** A hash of a sample of [start, stop) (length, both ends, the middle); the compare is exact. */
  private hashOf(start: number, stop: number): number {
    const n = stop - start;
    let h = Math.imul(n, 0x9e3779b1);
    if (n >= 4) {
      const view = this.view;
      h = Math.imul(h ^ view.getUint32(start), 0x85ebca6b);
      h = Math.imul(h ^ view.getUint32(stop - 4), 0xc2b2ae35);
      h = Math.imul(h ^ view.getUint32(start + (n >> 1) - 2), 0x9e3779b1);
    } else {
      const buf = this.buf;
      for (let i = start; i < stop; i++) h = Math.imul(h ^ buf[i], 0x85ebca6b);
    }
    return Math.imul(h ^ (h >>> 15), 0x2c1b3c6d) ^ (h >>> 13);
  }

  /** Whether cache slot `slot` holds the n bytes at `start`. */
  private cached(slot: number, start: number, n: number): boolean {
    if (cacheLengths[slot] !== n) return false;
    const at = slot * CACHE_MAX_BYTES;
    const view = this.view;
    let i = 0;
    for (; i + 4 <= n; i += 4) if (cacheView.getUint32(at + i) !== view.getUint32(start + i)) return false;
    const buf = this.buf;
    for (; i < n; i++) if (cacheBytes[at + i] !== buf[start + i]) return false;
    return true;
  }

  private utf8(start: number, stop: number): string {
    const buf = this.buf;
    for (let i = start; i < stop; i++) {
      if (buf[i] >= 128) {
        try {
          return STRICT_UTF8.decode(buf.subarray(start, stop));
        } catch {
          throw new WireError('invalid UTF-8 in a string field');
        }
      }
    }
    return buf.toString('latin1', start, stop);
  }

  /** Checks a string field's bytes [pos, stop) are valid UTF-8 and moves past them. */
  skipString(stop: number): void {
    const buf = this.buf;
    for (let i = this.pos; i < stop; i++) {
      if (buf[i] >= 128) {
        if (!isUtf8(buf.subarray(i, stop))) throw new WireError('invalid UTF-8 in a string field');
        break;
      }
    }
    this.pos = stop;
  }

  /** `bytes` bytes at [start, start + bytes) as lowercase hex (bytes is 8 or 16). */
  hex(start: number, bytes: 8 | 16): string {
    const b = this.buf;
    const s = start;
    const first = fromCharCode(HI[b[s]], LO[b[s]], HI[b[s + 1]], LO[b[s + 1]], HI[b[s + 2]], LO[b[s + 2]], HI[b[s + 3]], LO[b[s + 3]], HI[b[s + 4]], LO[b[s + 4]], HI[b[s + 5]], LO[b[s + 5]], HI[b[s + 6]], LO[b[s + 6]], HI[b[s + 7]], LO[b[s + 7]]);
    if (bytes === 8) return first;
    const t = s + 8;
    return first + fromCharCode(HI[b[t]], LO[b[t]], HI[b[t + 1]], LO[b[t + 1]], HI[b[t + 2]], LO[b[t + 2]], HI[b[t + 3]], LO[b[t + 3]], HI[b[t + 4]], LO[b[t + 4]], HI[b[t + 5]], LO[b[t + 5]], HI[b[t + 6]], LO[b[t + 6]], HI[b[t + 7]], LO[b[t + 7]]);
  }

  /** Whether [start, stop) are all zero bytes. */
  isZero(start: number, stop: number): boolean {
    const buf = this.buf;
    for (let i = start; i < stop; i++) if (buf[i] !== 0) return false;
    return true;
  }

  /** Whether [a, a + n) and [b, b + n) hold the same bytes. */
  sameBytes(a: number, b: number, n: number): boolean {
    const buf = this.buf;
    for (let i = 0; i < n; i++) if (buf[a + i] !== buf[b + i]) return false;
    return true;
  }

  /**
   * Skips a field the reader does not use, or a known field sent with another
   * wire type (protobufjs `skipType`). `depth` is the enclosing message's nesting.
   */
  skipField(wireType: number, field: number, end: number, depth: number): void {
    if (depth > MAX_NESTING) throw tooDeep();
    if (field === 0) throw new WireError('illegal tag: field number 0');
    switch (wireType) {
      case WIRE_VARINT: {
        const buf = this.buf;
        let pos = this.pos;
        do {
          if (pos >= end) throw outOfRange();
        } while (buf[pos++] >= 128);
        this.pos = pos;
        return;
      }
      case WIRE_FIXED64:
        if (this.pos + 8 > end) throw outOfRange();
        this.pos += 8;
        return;
      case WIRE_DELIMITED:
        this.pos = this.delimited(end);
        return;
      case WIRE_GROUP:
        this.skipGroup(field, end, depth);
        return;
      case WIRE_FIXED32:
        if (this.pos + 4 > end) throw outOfRange();
        this.pos += 4;
        return;
      default:
        throw new WireError(`invalid wire type ${wireType} at offset ${this.pos}`);
    }
  }

  private skipGroup(field: number, end: number, depth: number): void {
    for (;;) {
      const tag = this.tag(end);
      const nested = tag >>> 3;
      const wireType = tag & 7;
      if (nested === 0) throw new WireError('illegal tag: field number 0');
      if (wireType === 4) {
        if (nested !== field) throw new WireError('invalid end group tag');
        return;
      }
      this.skipField(wireType, nested, end, depth + 1);
    }
  }

  /** Checks the message [pos, end) against `shape` without building anything; leaves pos at end. */
  validate(shape: MessageShape, end: number, depth: number): void {
    if (depth > MAX_NESTING) throw tooDeep();
    const fields = shape.fields;
    while (this.pos < end) {
      const tag = this.tag(end);
      const field = tag >>> 3;
      const wireType = tag & 7;
      const f = field < fields.length ? fields[field] : undefined;
      if (f === undefined || wireTypeOf(f) !== wireType) {
        this.skipField(wireType, field, end, depth);
        continue;
      }
      if (typeof f !== 'number') {
        const stop = this.delimited(end);
        this.validate(f, stop, depth + 1);
        continue;
      }
      switch (f) {
        case Scalar.Varint:
          this.skipVarint(end);
          break;
        case Scalar.Fixed64:
          this.skipField(WIRE_FIXED64, field, end, depth);
          break;
        case Scalar.Fixed32:
          this.skipField(WIRE_FIXED32, field, end, depth);
          break;
        case Scalar.Bytes:
          this.pos = this.delimited(end);
          break;
        case Scalar.String:
          this.skipString(this.delimited(end));
          break;
      }
    }
  }

  /** `validate` over [start, stop). */
  validateRange(shape: MessageShape, start: number, stop: number, depth: number): void {
    this.pos = start;
    this.validate(shape, stop, depth);
  }
}

// ---- the OTLP trace schema, as the validator sees it (see schema.ts) -----------------

function shape(name: string): MessageShape & { fields: Array<Scalar | MessageShape | undefined> } {
  return { name, fields: [] };
}

function define(s: ReturnType<typeof shape>, fields: Record<number, Scalar | MessageShape>): void {
  for (const [no, f] of Object.entries(fields)) s.fields[Number(no)] = f;
}

export const ANY_VALUE = shape('AnyValue');
export const ARRAY_VALUE = shape('ArrayValue');
export const KEY_VALUE_LIST = shape('KeyValueList');
const KEY_VALUE = shape('KeyValue');
const INSTRUMENTATION_SCOPE = shape('InstrumentationScope');
const ENTITY_REF = shape('EntityRef');
const RESOURCE = shape('Resource');
export const EVENT = shape('Span.Event');
export const LINK = shape('Span.Link');
const STATUS = shape('Status');
export const SPAN = shape('Span');

define(ANY_VALUE, { 1: Scalar.String, 2: Scalar.Varint, 3: Scalar.Varint, 4: Scalar.Fixed64, 5: ARRAY_VALUE, 6: KEY_VALUE_LIST, 7: Scalar.Bytes });
define(ARRAY_VALUE, { 1: ANY_VALUE });
define(KEY_VALUE_LIST, { 1: KEY_VALUE });
define(KEY_VALUE, { 1: Scalar.String, 2: ANY_VALUE });
define(INSTRUMENTATION_SCOPE, { 1: Scalar.String, 2: Scalar.String, 3: KEY_VALUE, 4: Scalar.Varint });
define(ENTITY_REF, { 1: Scalar.String, 2: Scalar.String, 3: Scalar.String, 4: Scalar.String });
define(RESOURCE, { 1: KEY_VALUE, 2: Scalar.Varint, 3: ENTITY_REF });
define(EVENT, { 1: Scalar.Fixed64, 2: Scalar.String, 3: KEY_VALUE, 4: Scalar.Varint });
define(LINK, { 1: Scalar.Bytes, 2: Scalar.Bytes, 3: Scalar.String, 4: KEY_VALUE, 5: Scalar.Varint, 6: Scalar.Fixed32 });
define(STATUS, { 2: Scalar.String, 3: Scalar.Varint });
define(SPAN, {
  1: Scalar.Bytes,
  2: Scalar.Bytes,
  3: Scalar.String,
  4: Scalar.Bytes,
  5: Scalar.String,
  6: Scalar.Varint,
  7: Scalar.Fixed64,
  8: Scalar.Fixed64,
  9: KEY_VALUE,
  10: Scalar.Varint,
  11: EVENT,
  12: Scalar.Varint,
  13: LINK,
  14: Scalar.Varint,
  15: STATUS,
  16: Scalar.Fixed32,
});

/** ResourceSpans.resource and ScopeSpans.scope: validated, not used (the bridge reads span attributes only). */
export const RESOURCE_SHAPE: MessageShape = RESOURCE;
export const SCOPE_SHAPE: MessageShape = INSTRUMENTATION_SCOPE;
