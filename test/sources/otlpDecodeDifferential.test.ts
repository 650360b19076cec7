import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Attributes } from '@opentelemetry/api';
import { JsonTraceSerializer, ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { describe, expect, it } from 'vitest';
import { TracewireError } from '../../src/errors/errors.js';
import { decodeJson, decodeProtobuf, type DecodedRequest, type DecodeOptions } from '../../src/sources/otlp/decode.js';
import { otlpTypes } from '../../src/sources/otlp/schema.js';
import { decodeJsonReference, decodeProtobufReference } from './otlpDecodeReference.js';

/**
 * The wire-format protobuf decoder and the direct JSON walk against the
 * decoders they replaced (protobufjs messages / JSON.parse output walked
 * through the codec interface, kept in otlpDecodeReference.ts): same spans,
 * same rejections, and the same bodies refused, for bodies from the real
 * OpenTelemetry serializers, from protobufjs with the project's schema, and
 * hand-made wire bytes (unknown fields, merges, groups, malformed varints,
 * truncations and random corruption).
 */

const OPTS: DecodeOptions = { maxSpans: 1000, hookAt: 42.5 };
/** Random cases per fuzz test; raise it (and vary the seed) for a longer local run. */
const FUZZ_CASES = Number(process.env.TW_FUZZ_CASES ?? 1500);
const FUZZ_SEED = Number(process.env.TW_FUZZ_SEED ?? 20240601);

type Outcome = { ok: DecodedRequest } | { error: string; spanCount?: number };

function outcome(decode: (b: Uint8Array, o: DecodeOptions) => DecodedRequest, body: Uint8Array, opts: DecodeOptions = OPTS): Outcome {
  try {
    return { ok: decode(body, opts) };
  } catch (err) {
    // Anything but a TracewireError (a crash) fails the test here.
    if (!(err instanceof TracewireError)) throw err;
    const spanCount = (err as { spanCount?: number }).spanCount;
    return spanCount === undefined ? { error: err.code } : { error: err.code, spanCount };
  }
}

/** The new protobuf decoder behaves exactly as the protobufjs-based one on this body. */
function expectSameProtobuf(body: Uint8Array, opts: DecodeOptions = OPTS): Outcome {
  const got = outcome(decodeProtobuf, body, opts);
  expect(got).toStrictEqual(outcome(decodeProtobufReference, body, opts));
  return got;
}

function expectSameJson(body: Uint8Array, opts: DecodeOptions = OPTS): Outcome {
  const got = outcome(decodeJson, body, opts);
  expect(got).toStrictEqual(outcome(decodeJsonReference, body, opts));
  return got;
}

function decoded(o: Outcome): DecodedRequest {
  if (!('ok' in o)) throw new Error(`expected a decoded request, got ${o.error}`);
  return o.ok;
}

// ---- hand-made wire bytes ------------------------------------------------------------

function varint(n: number | bigint): number[] {
  let v = BigInt.asUintN(64, BigInt(n));
  const out: number[] = [];
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return out;
}
const tag = (field: number, wire: number): number[] => varint((field << 3) | wire);
const cat = (...parts: Array<number[] | Uint8Array>): Uint8Array => Buffer.concat(parts.map((p) => Buffer.from(p)));
const ld = (field: number, bytes: Uint8Array | number[] | string): Uint8Array => {
  const b = typeof bytes === 'string' ? Buffer.from(bytes) : Buffer.from(bytes);
  return cat(tag(field, 2), varint(b.length), b);
};
const vint = (field: number, n: number | bigint): Uint8Array => cat(tag(field, 0), varint(n));
const fixed64 = (field: number, n: bigint): Uint8Array => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt.asUintN(64, n));
  return cat(tag(field, 1), b);
};
const fixed32 = (field: number, n: number): Uint8Array => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return cat(tag(field, 5), b);
};
const double = (field: number, n: number): Uint8Array => {
  const b = Buffer.alloc(8);
  b.writeDoubleLE(n);
  return cat(tag(field, 1), b);
};

/** A request with one resource and one scope holding these encoded spans. */
function request(spans: Uint8Array[], resourceExtra: Uint8Array = new Uint8Array(0), scopeExtra: Uint8Array = new Uint8Array(0)): Uint8Array {
  const scopeSpans = cat(ld(1, ld(1, 'scope')), ...spans.map((s) => ld(2, s)), scopeExtra);
  const resourceSpans = cat(ld(1, ld(1, kv('service.name', str('svc')))), ld(2, scopeSpans), resourceExtra);
  return ld(1, resourceSpans);
}

const TRACE = Buffer.from('0af7651916cd43dd8448eb211c80319c', 'hex');
const SPAN = Buffer.from('b7ad6b7169203331', 'hex');
const PARENT = Buffer.from('00f067aa0ba902b7', 'hex');
const START = 1_700_000_000_123_456_789n;
const END = 1_700_000_000_987_654_321n;

/** A valid span's fields; `extra` bytes are appended (later fields win or merge, as protobuf says). */
function span(...extra: Uint8Array[]): Uint8Array {
  return cat(ld(1, TRACE), ld(2, SPAN), ld(4, PARENT), ld(5, 'invoke_agent a'), fixed64(7, START), fixed64(8, END), ...extra);
}

const str = (s: string | Uint8Array): Uint8Array => ld(1, typeof s === 'string' ? Buffer.from(s) : s);
const kv = (key: string | Uint8Array, ...values: Uint8Array[]): Uint8Array => cat(ld(1, typeof key === 'string' ? Buffer.from(key) : key), ...values.map((v) => ld(2, v)));
const attr = (key: string | Uint8Array, ...values: Uint8Array[]): Uint8Array => ld(9, kv(key, ...values));
const arrayOf = (...values: Uint8Array[]): Uint8Array => ld(5, cat(...values.map((v) => ld(1, v))));
const kvlistOf = (...kvs: Uint8Array[]): Uint8Array => ld(6, cat(...kvs.map((k) => ld(1, k))));
const event = (name: string, time: bigint, ...attrs: Uint8Array[]): Uint8Array => ld(11, cat(fixed64(1, time), ld(2, name), ...attrs.map((a) => ld(3, a))));

const INVALID_UTF8 = [Buffer.from([0xc3, 0x28]), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from([0xf0, 0x82, 0x82, 0xac]), Buffer.from([0x61, 0xe2, 0x82]), Buffer.from([0xff])];

/** Deterministic PRNG (mulberry32) so failures reproduce. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function timesOf(d: DecodedRequest): number[] {
  return d.spans.flatMap((s) => [s.startMs, s.endMs ?? -1, ...(s.events ?? []).map((e) => e.timeMs)]);
}

function withoutTimes(d: DecodedRequest): unknown {
  return { ...d, spans: d.spans.map((s) => ({ ...s, startMs: 0, endMs: 0, events: s.events?.map((e) => ({ ...e, timeMs: 0 })) })) };
}

// ---- spans from the real SDK and serializers ------------------------------------------

function recordVariedSpans(): ReadableSpan[] {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': 'différentiel', 'service.version': '1.2.3', 'host.cores': 8 }),
    spanProcessors: [new SimpleSpanProcessor(exporter)],
  });
  const tracer = provider.getTracer('differential', '0.0.1');
  const remote = trace.setSpanContext(ROOT_CONTEXT, { traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7', traceFlags: 1, isRemote: true });
  const local = trace.setSpanContext(ROOT_CONTEXT, { traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '1111111111111111', traceFlags: 0, isRemote: false });
  const values: Attributes[] = [
    { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'supervisor', 'user.id': 'u-1' },
    { 'gen_ai.operation.name': 'chat', 'gen_ai.request.model': 'gpt-4o', 'gen_ai.usage.input_tokens': 812, 'gen_ai.usage.output_tokens': 64, temperature: 0.25 },
    { 'naïve.clé': 'héllo wörld', emoji: '🙂👍', cjk: '日本語のテキスト', bom: '\uFEFFstart', empty: '', ok: true, no: false },
    { big: 2 ** 60, negative: -7, negBig: -(2 ** 55), zero: 0, negZero: -0, nan: NaN, inf: Infinity, tiny: 5e-324 },
    { strings: ['a', 'b', 'ç'], ints: [1, 2, 3], doubles: [0.5, 1.5], bools: [true, false], emptyArr: [], withNull: ['x', null as unknown as string, 'y'] },
    { long: 'x'.repeat(33), longer: 'long value with some ünïcödé '.repeat(8), key32: 'k'.repeat(32), ['k'.repeat(40)]: 'long key' },
    { 'url.full': 'https://docs.example.com/search?q=otlp', 'http.response.status_code': 200, 'http.request.method': 'GET' },
  ];
  for (let i = 0; i < 21; i++) {
    const ctx = i % 3 === 0 ? remote : i % 3 === 1 ? local : ROOT_CONTEXT;
    const s = tracer.startSpan(i % 4 === 0 ? 'invoke_agent supervisor' : `span ${i} ñ`, {
      kind: (i % 5) as SpanKind,
      attributes: values[i % values.length],
      links: i % 4 === 1 ? [{ context: { traceId: 'a'.repeat(32), spanId: 'b'.repeat(16), traceFlags: 1 }, attributes: { 'link.attr': 'v' } }] : [],
    }, ctx);
    if (i % 2 === 0) s.addEvent('agent.event', { 'agent.event.type': 'agent_started', n: i });
    if (i % 3 === 0) s.addEvent('exception', { 'exception.message': 'bøøm', 'exception.type': 'Error' }, [1_700_000_000, 5]);
    if (i % 6 === 2) s.setStatus({ code: SpanStatusCode.ERROR, message: i % 12 === 2 ? 'it failed ✗' : '' });
    if (i % 6 === 4) s.setStatus({ code: SpanStatusCode.OK });
    s.end();
  }
  return exporter.getFinishedSpans().slice();
}

describe('decoders against the reference decoders', () => {
  const spans = recordVariedSpans();

  it('real OTel protobuf and JSON bodies: same spans as the reference, and protobuf = JSON', () => {
    const pb = Buffer.from(ProtobufTraceSerializer.serializeRequest(spans)!);
    const js = Buffer.from(JsonTraceSerializer.serializeRequest(spans)!);
    const fromPb = decoded(expectSameProtobuf(pb));
    decoded(expectSameJson(js));
    expect(fromPb.rejected).toBe(0);
    expect(fromPb.spans).toHaveLength(spans.length);
    // Across encodings, for values OTLP/JSON can carry (no NaN, ±Infinity, -0 or
    // integers past 2^53: the JSON serializer writes those as JSON numbers or null).
    const portable = spans.filter((s) => !('nan' in s.attributes));
    const pbPortable = decoded(outcome(decodeProtobuf, Buffer.from(ProtobufTraceSerializer.serializeRequest(portable)!)));
    const jsonPortable = decoded(outcome(decodeJson, Buffer.from(JsonTraceSerializer.serializeRequest(portable)!)));
    expect(withoutTimes(pbPortable)).toStrictEqual(withoutTimes(jsonPortable));
    // Nanos to ms: the fixed64 and the decimal-string conversions round differently in the last bit.
    expect(timesOf(pbPortable).every((t, i) => Math.abs(t - timesOf(jsonPortable)[i]!) < 1e-3)).toBe(true);
    // Spot checks that the comparison is about real content.
    expect(fromPb.spans.some((s) => s.parentIsRemote === true)).toBe(true);
    expect(fromPb.spans.some((s) => s.events?.some((e) => e.name === 'exception'))).toBe(true);
    expect(fromPb.spans.find((s) => 'big' in s.attributes)!.attributes.big).toBe(2n ** 60n);
    expect(fromPb.spans.find((s) => 'emoji' in s.attributes)!.attributes.emoji).toBe('🙂👍');
  });

  it('a plain Uint8Array body decodes like a Buffer', () => {
    const pb = ProtobufTraceSerializer.serializeRequest(spans)!;
    const copy = new Uint8Array(pb.length);
    copy.set(pb);
    expect(outcome(decodeProtobuf, copy)).toStrictEqual(outcome(decodeProtobuf, Buffer.from(pb)));
  });

  it('bodies encoded by protobufjs with the project schema, edge values included', () => {
    const t = otlpTypes().request;
    const hex = (h: string): Buffer => Buffer.from(h, 'hex');
    const base = { traceId: hex('0af7651916cd43dd8448eb211c80319c'), spanId: hex('b7ad6b7169203331'), name: 'n', startTimeUnixNano: '1700000000000000000', endTimeUnixNano: '1700000000250000000' };
    const deepKv = (d: number): Record<string, unknown> => (d === 0 ? { stringValue: 'leaf' } : { kvlistValue: { values: [{ key: `d${d}`, value: deepKv(d - 1) }, { key: 'side', value: { intValue: d } }] } });
    const deepArr = (d: number): Record<string, unknown> => (d === 0 ? { boolValue: true } : { arrayValue: { values: [deepArr(d - 1), { stringValue: `a${d}` }] } });
    const objects: Array<Record<string, unknown>> = [
      base,
      { ...base, traceId: undefined },
      { ...base, traceId: Buffer.alloc(0) },
      { ...base, traceId: Buffer.alloc(16) },
      { ...base, traceId: Buffer.alloc(17, 1) },
      { ...base, spanId: Buffer.alloc(7, 1) },
      { ...base, spanId: Buffer.alloc(8) },
      { ...base, parentSpanId: Buffer.alloc(8) },
      { ...base, parentSpanId: Buffer.alloc(4, 3) },
      { ...base, parentSpanId: hex('00f067aa0ba902b7') },
      { ...base, startTimeUnixNano: '0' },
      { ...base, startTimeUnixNano: '18446744073709551615', endTimeUnixNano: '9007199254740993123' },
      { ...base, endTimeUnixNano: '0', events: [{ name: 'ignored', timeUnixNano: '5', attributes: [{ value: { stringValue: 'keyless' } }] }] },
      { ...base, events: [{ name: '', timeUnixNano: '0' }, { name: 'e', attributes: [{ key: 'x', value: { intValue: '-1' } }] }] },
      { ...base, events: [{ name: 'bad', attributes: [{ value: { stringValue: 'keyless' } }] }] },
      ...[0, 0x100, 0x200, 0x300, 0xffffffff, 0x301].map((flags) => ({ ...base, flags })),
      ...[0, 1, 2, 3, 77, -1].map((code) => ({ ...base, status: { code, message: code === 2 ? 'boom' : '' } })),
      { ...base, name: '' },
      { ...base, name: 'ünïcödé ✓ 🙂', status: { message: '\uFEFF' } },
      {
        ...base,
        attributes: [
          { key: 'i', value: { intValue: '-5' } },
          { key: 'max', value: { intValue: '9223372036854775807' } },
          { key: 'min', value: { intValue: '-9223372036854775808' } },
          { key: 'above53', value: { intValue: '9007199254740993' } },
          { key: 'below53', value: { intValue: '-9007199254740993' } },
          { key: 'safe', value: { intValue: '9007199254740991' } },
          { key: 'd', value: { doubleValue: -0 } },
          { key: 'nan', value: { doubleValue: NaN } },
          { key: 'bytes', value: { bytesValue: Buffer.from([1, 2, 3, 255]) } },
          { key: 'emptyBytes', value: { bytesValue: Buffer.alloc(0) } },
          { key: 'emptyString', value: { stringValue: '' } },
          { key: 'false', value: { boolValue: false } },
          { key: 'none', value: {} },
          { key: 'absent' },
          { key: '__proto__', value: { stringValue: 'no' } },
          { key: 'constructor', value: { stringValue: 'yes' } },
          { key: 'arr', value: { arrayValue: { values: [{ stringValue: 'a' }, { intValue: '9223372036854775807' }, {}, { kvlistValue: { values: [{ key: 'k', value: { intValue: 1 } }, { key: '2', value: { stringValue: 'two' } }] } }, { arrayValue: { values: [{ doubleValue: 1.5 }] } }, { bytesValue: Buffer.from('hi') }] } } },
          { key: 'emptyArr', value: { arrayValue: {} } },
          { key: 'emptyKv', value: { kvlistValue: {} } },
          { key: 'kv', value: { kvlistValue: { values: [{ key: 'inner', value: { stringValue: 'y' } }, { key: '__proto__', value: { stringValue: 'z' } }] } } },
          { key: 'deepKv', value: deepKv(12) },
          { key: 'deepArr', value: deepArr(12) },
          { key: 'arrOfDeepKv', value: { arrayValue: { values: [deepKv(10)] } } },
        ],
      },
      { ...base, attributes: [{ key: 'fine', value: { stringValue: 'x' } }, { key: '', value: { stringValue: 'empty key' } }] },
      { ...base, attributes: [{ key: 'kv', value: { kvlistValue: { values: [{ value: { stringValue: 'keyless inside' } }] } } }] },
      { ...base, attributes: [{ key: 'arr', value: { arrayValue: { values: [{ kvlistValue: { values: [{ value: { boolValue: true } }] } }] } } }] },
      { ...base, links: [{ traceId: Buffer.alloc(3), spanId: Buffer.alloc(1), traceState: 'a=b', attributes: [{ key: 'l', value: { stringValue: 'v' } }], flags: 1 }] },
      { ...base, traceState: 'congo=t61rcWkgMzE', kind: 3, droppedAttributesCount: 4, droppedEventsCount: 5, droppedLinksCount: 6 },
    ];
    for (const o of objects) {
      const body = t.encode(t.fromObject({ resourceSpans: [{ resource: { attributes: [{ key: 'service.name', value: { stringValue: 's' } }] }, scopeSpans: [{ scope: { name: 'sc', version: '1' }, spans: [o] }] }] })).finish();
      expectSameProtobuf(body);
    }
    // All of them in one request: order, counts and the first rejection.
    const all = t.encode(t.fromObject({ resourceSpans: [{ scopeSpans: [{ spans: objects.slice(0, 20) }, { spans: [] }, { spans: objects.slice(20) }] }, {}, { scopeSpans: [{ spans: [base] }] }] })).finish();
    const d = decoded(expectSameProtobuf(all));
    expect(d.rejected).toBeGreaterThan(5);
    expect(d.spans.length).toBeGreaterThan(10);
  });

  it('unknown fields, wrong wire types and groups are skipped; bad wire types and field 0 refuse the body', () => {
    const unknowns = [vint(99, 5), vint(99, 2n ** 64n - 1n), fixed64(98, 7n), fixed32(97, 9), ld(96, 'unknown'), cat(tag(95, 3), vint(1, 1), ld(2, 'in group'), cat(tag(94, 3), tag(94, 4)), tag(95, 4))];
    // Known field numbers with another wire type are unknown fields too.
    const mistyped = [vint(1, 5), fixed32(2, 1), vint(5, 3), ld(7, 'x'), ld(16, 'y'), fixed64(9, 1n), vint(15, 1), cat(tag(11, 3), tag(11, 4))];
    for (const u of [...unknowns, ...mistyped]) {
      expect(decoded(expectSameProtobuf(request([span(u)]))).rejected).toBe(0);
      expectSameProtobuf(request([span(attr('k', cat(str('v'), u)))]));
      expectSameProtobuf(request([span(attr('k', str('v')), ld(9, cat(kv('u', str('x')), u)))]));
      expectSameProtobuf(request([span()], u, u));
      expectSameProtobuf(cat(request([span()]), u));
    }
    const refused = [
      tag(93, 4), // an end group without a start
      tag(93, 6),
      tag(93, 7),
      cat(tag(0, 0), [0]),
      cat(tag(0, 2), [0]),
      cat(tag(92, 3), vint(1, 1), tag(91, 4)), // mismatched end group
      cat(tag(92, 3), vint(1, 1)), // no end group
      cat(tag(92, 3), cat(tag(0, 0), [1]), tag(92, 4)),
      cat(tag(90, 0), Array(10).fill(0x80)), // an unterminated varint
      [0x80, 0x80, 0x80, 0x80, 0x10], // a tag beyond 32 bits
      cat(tag(90, 2), [0x80, 0x80, 0x80, 0x80, 0x08]), // a length beyond 2^31
    ];
    for (const bad of refused.map((b) => Buffer.from(b))) {
      expect(expectSameProtobuf(request([span(bad)]))).toStrictEqual({ error: 'TW_OTLP_BAD_BODY' });
      expect(expectSameProtobuf(request([span()], bad))).toStrictEqual({ error: 'TW_OTLP_BAD_BODY' });
      expect(expectSameProtobuf(request([span(event('e', 1n, kv('k', cat(str('v'), bad))))]))).toStrictEqual({ error: 'TW_OTLP_BAD_BODY' });
    }
    // A known varint field has at most 10 bytes, an unknown one any number (field 6 is Span.kind, unknown in ResourceSpans).
    const long = cat(tag(6, 0), Array(10).fill(0x80), [0]);
    expect(expectSameProtobuf(request([span(long)]))).toStrictEqual({ error: 'TW_OTLP_BAD_BODY' });
    expect(expectSameProtobuf(request([span(attr('b', cat(tag(2, 0), Array(10).fill(0x80), [0])))]))).toStrictEqual({ error: 'TW_OTLP_BAD_BODY' });
    expect(decoded(expectSameProtobuf(request([span()], long))).spans).toHaveLength(1);
    // A 5-byte tag ending in a small byte is fine.
    expectSameProtobuf(request([span(cat(tag(90, 0), Array(12).fill(0x80), [0]))]));
    expectSameProtobuf(request([span(cat([0x80, 0x80, 0x80, 0x80, 0x0f], [0]))]));
  });

  it('proto3 merges: last scalar wins, messages merge, a oneof keeps its last member', () => {
    const cases = [
      span(ld(1, Buffer.alloc(0))), // a later empty trace id unsets it
      span(ld(2, Buffer.from('2222222222222222', 'hex'))),
      span(fixed64(7, 0n)),
      span(fixed64(8, 0n), event('dropped with the start', 5n)),
      span(ld(5, 'renamed'), ld(5, '')),
      span(ld(15, cat(vint(3, 2), ld(2, 'first'))), ld(15, vint(3, 1))),
      span(ld(15, ld(2, 'msg')), ld(15, ld(2, ''))),
      span(ld(15, vint(3, -1))),
      span(fixed32(16, 0x300), fixed32(16, 0x100)),
      span(attr('k', str('a'), cat(vint(3, 5)))), // two values in one KeyValue merge: the int wins
      span(attr('k', arrayOf(str('a')), arrayOf(str('b')))), // arrays merge
      span(attr('k', cat(arrayOf(str('a')), str('x'), arrayOf(str('b'))))), // a oneof switch drops the first array
      span(attr('k', cat(kvlistOf(kv('a', str('1'))), kvlistOf(kv('b', str('2')))))),
      span(attr('k', cat(kvlistOf(kv('a', str('1'))), vint(2, 1)))),
      span(attr('k', cat(kvlistOf(kv('a', cat(str('1'), vint(2, 0)))), vint(2, 1)))),
      span(attr('k', cat(str('s'), vint(2, 1), double(4, 2.5), ld(7, [1]), vint(3, 3)))),
      span(attr('k', cat(vint(2, 2n ** 63n)))), // a bool with only a high bit set
      span(attr('k', cat(tag(2, 0), Array(9).fill(0x80), [0x02]))), // payload past 64 bits
      span(attr('k', cat(tag(3, 0), Array(9).fill(0xff), [0x7f]))), // an int64 varint with extra bits
      span(attr(ld(1, 'ignored key in a value'), str('v'))),
      span(attr(cat(Buffer.from('first')), str('v')), ld(9, cat(ld(1, 'a'), ld(1, ''), ld(2, str('v'))))), // the later empty key unsets the key
      span(event('e', 1n), fixed64(8, 0n)), // not ended after all: no events
      span(ld(11, cat(ld(2, 'name'), ld(2, 'renamed'), fixed64(1, 3n), fixed64(1, 4n)))),
    ];
    for (const c of cases) expectSameProtobuf(request([c]));
    expectSameProtobuf(request(cases));
  });

  it('strings: non-ASCII decodes, invalid UTF-8 refuses the body wherever it is', () => {
    for (const s of ['é', '日本語', '🙂', '\uFEFF', 'a'.repeat(31) + 'é', 'é'.repeat(40), 'x'.repeat(70) + '🙂', '\u0000nul']) {
      expectSameProtobuf(request([span(ld(5, s), attr(s, str(s)), ld(15, ld(2, s)), event(s, 2n, kv(s, str(s))))]));
    }
    for (const bad of INVALID_UTF8) {
      for (const long of [bad, cat(Buffer.from('a'.repeat(70)), bad), cat(bad, Buffer.from('b'.repeat(20)))]) {
        const places = [
          request([span(ld(5, long))]),
          request([span(attr(long, str('v')))]),
          request([span(attr('k', str(long)))]),
          request([span(attr('k', arrayOf(str(long))))]),
          request([span(ld(3, long))]), // trace_state, never used
          request([span(ld(15, ld(2, long)))]),
          request([span(fixed64(8, 0n), event(long.toString('latin1'), 1n), ld(11, ld(2, long)))]), // an event of a started span
          request([span(ld(13, ld(3, long)))]), // a link's trace_state
          request([span(attr('__proto__', str(long)))]),
          request([span(ld(1, Buffer.alloc(3)), attr('k', str(long)))]), // in a span rejected for its trace id
          request([span()], ld(3, long)), // a schema URL
          request([span()], ld(1, ld(1, kv(long, str('v'))))), // a resource attribute
          request([span()], new Uint8Array(0), ld(1, ld(2, long))), // a scope version
          request([span(attr('k', str(long), str('ok')))]), // replaced by a later value
        ];
        for (const body of places) expect(expectSameProtobuf(body)).toStrictEqual({ error: 'TW_OTLP_BAD_BODY' });
      }
    }
  });

  it('kvlist and array values past the depth limit, and nesting past protobuf’s recursion limit', () => {
    let kvDeep = str('leaf');
    for (let d = 0; d < 40; d++) kvDeep = kvlistOf(kv(`k${d}`, kvDeep));
    let arrDeep = str('leaf');
    for (let d = 0; d < 60; d++) arrDeep = arrayOf(arrDeep, vint(3, d));
    expectSameProtobuf(request([span(attr('deep', kvDeep))]));
    expectSameProtobuf(request([span(attr('deep', arrDeep))]));
    expectSameProtobuf(request([span(attr('deep', arrayOf(kvDeep)))]));
    expectSameProtobuf(request([span()], ld(1, ld(1, kv('deep', kvDeep)))));
    expectSameProtobuf(request([span(event('e', 1n, kv('deep', kvDeep)))]));
    let tooDeep = str('leaf');
    for (let d = 0; d < 50; d++) tooDeep = arrayOf(tooDeep);
    for (const body of [request([span(attr('x', tooDeep))]), request([span()], ld(1, ld(1, kv('x', tooDeep)))), request([span(fixed64(8, 0n), event('e', 1n, kv('x', tooDeep)))])]) {
      expect(expectSameProtobuf(body)).toStrictEqual({ error: 'TW_OTLP_BAD_BODY' });
    }
    let groups: number[] = [];
    for (let d = 0; d < 120; d++) groups = [...tag(90, 3), ...groups, ...tag(90, 4)];
    expect(expectSameProtobuf(request([span(cat(groups))]))).toStrictEqual({ error: 'TW_OTLP_BAD_BODY' });
    groups = [];
    for (let d = 0; d < 90; d++) groups = [...tag(90, 3), ...groups, ...tag(90, 4)];
    expectSameProtobuf(request([span(cat(groups))]));
  });

  it('the span limit is checked before mapping, after the body is known to be well formed', () => {
    const five = request(Array.from({ length: 5 }, () => span()));
    expect(expectSameProtobuf(five, { maxSpans: 4 })).toStrictEqual({ error: 'TW_OTLP_TOO_MANY_SPANS', spanCount: 5 });
    expect(decoded(expectSameProtobuf(five, { maxSpans: 5 })).spans).toHaveLength(5);
    const malformed = request([...Array.from({ length: 4 }, () => span()), span(ld(5, INVALID_UTF8[0]!))]);
    expect(expectSameProtobuf(malformed, { maxSpans: 4 })).toStrictEqual({ error: 'TW_OTLP_BAD_BODY' });
    const rejectedToo = request([...Array.from({ length: 4 }, () => span()), span(ld(1, Buffer.alloc(2)))]);
    expect(expectSameProtobuf(rejectedToo, { maxSpans: 4 })).toStrictEqual({ error: 'TW_OTLP_TOO_MANY_SPANS', spanCount: 5 });
  });

  it('a body truncated at every byte offset is refused or decoded exactly like the reference', () => {
    const small = request([
      span(attr('gen_ai.operation.name', str('chat')), attr('n', vint(3, -3)), attr('kv', kvlistOf(kv('a', arrayOf(str('é'), double(4, 1))))), ld(15, cat(vint(3, 2), ld(2, 'boom'))), fixed32(16, 0x300), event('e', 3n, kv('x', str('y')))),
      span(ld(2, Buffer.from('3333333333333333', 'hex')), vint(99, 1)),
    ]);
    for (let n = 0; n <= small.length; n++) expectSameProtobuf(small.subarray(0, n));
    const real = Buffer.from(ProtobufTraceSerializer.serializeRequest(spans.slice(0, 3))!);
    for (let n = 0; n <= real.length; n++) expectSameProtobuf(real.subarray(0, n));
  });

  it('randomly corrupted bodies are refused or decoded exactly like the reference', () => {
    const real = Buffer.from(ProtobufTraceSerializer.serializeRequest(spans.slice(0, 6))!);
    const handmade = request([span(attr('k', arrayOf(str('a'), vint(3, 1))), attr('kv', kvlistOf(kv('x', str('y')))), event('e', 2n, kv('z', vint(2, 1))))]);
    const rnd = prng(FUZZ_SEED);
    for (const original of [real, handmade]) {
      for (let i = 0; i < FUZZ_CASES; i++) {
        const body = Buffer.from(original);
        const edits = 1 + Math.floor(rnd() * 3);
        for (let e = 0; e < edits; e++) {
          const at = Math.floor(rnd() * body.length);
          const r = rnd();
          // Mostly small changes to varints and lengths, sometimes any byte.
          body[at] = r < 0.3 ? body[at]! ^ (1 << Math.floor(rnd() * 8)) : r < 0.6 ? (body[at]! + 1) & 255 : Math.floor(rnd() * 256);
        }
        expectSameProtobuf(body, { maxSpans: 1000 });
      }
    }
  });

  it('OTLP/JSON spans with random values in random places match the reference walk', () => {
    const rnd = prng(FUZZ_SEED + 1);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
    const pool: unknown[] = [null, 0, -1, 1.5, 2 ** 32, '', 'x', '12', '-3', 'AQID', '0af7651916cd43dd8448eb211c80319c', 'b7ad6b7169203331', [], [null], {}, true, 'STATUS_CODE_ERROR', { stringValue: 's' }, { intValue: '9007199254740993' }, { kvlistValue: { values: [{ key: 'k', value: { boolValue: true } }] } }, { arrayValue: { values: [{ doubleValue: 'NaN' }] } }, 'CvdlGRbNQ92ESOshHIAxnA', 't61rcWkgMzE', { stringValue: null }, { intValue: '-9223372036854775809' }];
    const template = (): Record<string, unknown> => ({
      traceId: '0af7651916cd43dd8448eb211c80319c',
      spanId: 'b7ad6b7169203331',
      parentSpanId: '00f067aa0ba902b7',
      name: 'n',
      startTimeUnixNano: '1700000000000000000',
      endTimeUnixNano: '1700000000000000500',
      flags: 768,
      status: { code: 2, message: 'm' },
      attributes: [{ key: 'a', value: { stringValue: 'v' } }, { key: 'kv', value: { kvlistValue: { values: [{ key: 'in', value: { arrayValue: { values: [{ intValue: 1 }] } } }] } } }],
      events: [{ name: 'e', timeUnixNano: '1700000000000000100', attributes: [{ key: 'b', value: { boolValue: false } }] }],
    });
    /** Replace one random value anywhere in the tree (or drop it). */
    const mutate = (node: unknown): void => {
      if (typeof node !== 'object' || node === null) return;
      const keys = Object.keys(node);
      if (keys.length === 0) return;
      const k = pick(keys);
      const child = (node as Record<string, unknown>)[k];
      if (typeof child === 'object' && child !== null && rnd() < 0.6) return mutate(child);
      if (rnd() < 0.15) delete (node as Record<string, unknown>)[k];
      else (node as Record<string, unknown>)[k] = structuredClone(pick(pool));
    };
    for (let i = 0; i < FUZZ_CASES; i++) {
      const spansJson = Array.from({ length: 3 }, () => {
        const s = template();
        for (let m = Math.floor(rnd() * 3); m >= 0; m--) mutate(s);
        return s;
      });
      expectSameJson(Buffer.from(JSON.stringify({ resourceSpans: [{ scopeSpans: [{ spans: spansJson }] }] })));
    }
  });

  it('OTLP/JSON edge cases match the reference walk', () => {
    const id = { traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', startTimeUnixNano: '1700000000000000000' };
    const spansJson: unknown[] = [
      id,
      { ...id, trace_id: 'ignored', traceId: undefined },
      { trace_id: id.traceId, span_id: id.spanId, start_time_unix_nano: 1700000000000000000, end_time_unix_nano: '1700000000000000001', parent_span_id: 'AAAAAAAAAAE=' },
      { ...id, traceId: null, trace_id: id.traceId },
      { ...id, traceId: 'CvdlGRbNQ92ESOshHIAxnA==' },
      { ...id, traceId: 'CvdlGRbNQ92ESOshHIAxn_==' },
      { ...id, traceId: '0AF7651916CD43DD8448EB211C80319C' },
      { ...id, traceId: 'CvdlGRbNQ92ESOshHIAxnA', spanId: 't61rcWkgMzE', parentSpanId: 'APBnqgupArc' },
      { ...id, traceId: '-_8-CvdlGRbNQ92ESOsh_g', spanId: '-_8-CvdlGf4', parentSpanId: 'A+8L//v/AAE' },
      { ...id, traceId: 'CvdlGRbNQ92ESOshHIAx==' },
      { ...id, traceId: 'CvdlGRbNQ92ESOshHIAxn' },
      { ...id, spanId: 't61rcWkgMz=' },
      { ...id, spanId: 'AAAAAAAAAAA' },
      { ...id, parentSpanId: 'APBnqgupAr' },
      { ...id, spanId: 5 },
      { ...id, parentSpanId: 'zz' },
      { ...id, name: 7 },
      { ...id, startTimeUnixNano: '-1' },
      { ...id, startTimeUnixNano: 1.5 },
      { ...id, endTimeUnixNano: '18446744073709551615123' },
      { ...id, endTimeUnixNano: '18446744073709551616' },
      { ...id, endTimeUnixNano: '018446744073709551615' },
      { ...id, endTimeUnixNano: 1e300 },
      { ...id, endTimeUnixNano: 'x' },
      { ...id, flags: '768' },
      { ...id, flags: 2 ** 32 },
      { ...id, status: [] },
      { ...id, status: { code: 'STATUS_CODE_OK', message: 'fine' } },
      { ...id, status: { code: 'NOPE' } },
      { ...id, status: { code: 7 } },
      { ...id, status: { message: 3 } },
      { ...id, attributes: {} },
      { ...id, attributes: [null] },
      { ...id, attributes: [{ key: 1 }] },
      { ...id, attributes: [{ key: 'a', value: 'raw' }] },
      {
        ...id,
        attributes: [
          { key: '', value: { stringValue: 'empty key is fine in JSON' } },
          { key: 's', value: { stringValue: null, string_value: 'snake' } },
          { key: 'b', value: { bool_value: true } },
          { key: 'i', value: { int_value: '-12' } },
          { key: 'big', value: { intValue: '-9223372036854775808' } },
          { key: 'f', value: { intValue: 1.5 } },
          { key: 'd', value: { doubleValue: 'Infinity' } },
          { key: 'd2', value: { double_value: ' 2.5 ' } },
          { key: 'd3', value: { doubleValue: '' } },
        ],
      },
      { ...id, attributes: ['stringValue', 'string_value', 'boolValue', 'bool_value', 'intValue', 'int_value', 'doubleValue', 'double_value', 'arrayValue', 'array_value', 'kvlistValue', 'kvlist_value', 'bytesValue', 'bytes_value'].map((m) => ({ key: m, value: { [m]: null } })) },
      { ...id, attributes: [{ key: 'x', value: { stringValue: null, boolValue: null, double_value: null, intValue: '7' } }, { key: 'a', value: { arrayValue: { values: [{ stringValue: null }, { kvlistValue: null }] } } }, { key: 'k', value: { kvlist_value: { values: [{ key: 'b', value: { bytes_value: null, bytesValue: 'AQID' } }] } } }] },
      { ...id, attributes: [{ key: 'max', value: { intValue: '9223372036854775807' } }, { key: 'min', value: { int_value: '-9223372036854775808' } }, { key: 'zeros', value: { intValue: '-0009223372036854775808' } }, { key: 'n', value: { intValue: 2 ** 63 } }, { key: 'm', value: { intValue: -(2 ** 63) } }] },
      { ...id, attributes: [{ key: 'x', value: { intValue: '9223372036854775808' } }] },
      { ...id, attributes: [{ key: 'x', value: { int_value: '-9223372036854775809' } }] },
      { ...id, attributes: [{ key: 'x', value: { intValue: '-00000000000000000000000000009223372036854775809' } }] },
      { ...id, attributes: [{ key: 'x', value: { intValue: 1e300 } }] },
      { ...id, attributes: [{ key: 'x', value: { intValue: -(2 ** 64) } }] },
      { ...id, attributes: [{ key: 'x', value: { stringValue: 5 } }] },
      { ...id, attributes: [{ key: 'x', value: { boolValue: 'yes' } }] },
      { ...id, attributes: [{ key: 'x', value: { doubleValue: 'abc' } }] },
      { ...id, attributes: [{ key: 'x', value: { arrayValue: [] } }] },
      { ...id, attributes: [{ key: 'x', value: { arrayValue: { values: {} } } }] },
      { ...id, attributes: [{ key: 'x', value: { kvlist_value: { values: [{ key: 'y', value: { array_value: { values: [{ kvlistValue: { values: [{ key: 'z', value: { intValue: '99999999999999999999' } }] } }, { arrayValue: { values: [{ stringValue: 'n' }] } }] } } }] } } }] },
      { ...id, attributes: [{ key: 'x', value: { kvlistValue: 1 } }] },
      { ...id, attributes: [{ key: 'x', value: { bytesValue: 'not base64!' } }] },
      { ...id, attributes: [{ key: 'x', value: { bytes_value: 'AQID' } }] },
      { ...id, endTimeUnixNano: '1700000000000000009', events: {} },
      { ...id, endTimeUnixNano: '1700000000000000009', events: [1] },
      { ...id, endTimeUnixNano: '1700000000000000009', events: [{ name: 1 }] },
      { ...id, endTimeUnixNano: '1700000000000000009', events: [{ time_unix_nano: 'x' }] },
      { ...id, endTimeUnixNano: '1700000000000000009', events: [{ time_unix_nano: '12', attributes: [{ key: 'a', value: { boolValue: false } }] }, { attributes: 'no' }] },
      { ...id, endTimeUnixNano: '0', events: 'ignored when not ended' },
    ];
    for (const s of spansJson) expectSameJson(Buffer.from(JSON.stringify({ resourceSpans: [{ scopeSpans: [{ spans: [s] }] }] })));
    expectSameJson(Buffer.from(JSON.stringify({ resource_spans: [{ scope_spans: [{ spans: spansJson }] }, { scopeSpans: null }] })));
    for (const body of ['', 'null', '[]', '"x"', '{}', '{"resourceSpans":1}', '{"resourceSpans":[1]}', '{"resourceSpans":[{"scopeSpans":{}}]}', '{"resourceSpans":[{"scopeSpans":[null]}]}', '{"resourceSpans":[{"scopeSpans":[{"spans":{}}]}]}', '{"resourceSpans":null}', '{"resourceSpans":[{"scopeSpans":[{"spans":null}]}]}']) {
      expectSameJson(Buffer.from(body));
    }
    const many = Buffer.from(JSON.stringify({ resourceSpans: [{ scopeSpans: [{ spans: [id, id, id] }] }] }));
    expect(expectSameJson(many, { maxSpans: 2 })).toStrictEqual({ error: 'TW_OTLP_TOO_MANY_SPANS', spanCount: 3 });
  });
});
