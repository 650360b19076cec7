import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { TracewireError } from '../../src/errors/errors.js';
import { decodeJson, decodeProtobuf, TooManySpansError } from '../../src/sources/otlp/decode.js';
import { gunzipLimited } from '../../src/sources/otlp/gunzip.js';
import { otlpTypes } from '../../src/sources/otlp/schema.js';
import { connectAcked, startTestSidecar } from '../helpers.js';
import { expectDemoRun, gzip, jsonRequest, jsonSpan, postJson, protobufRequest, recordDemo } from './otlpSupport.js';

const TRACE = '0af7651916cd43dd8448eb211c80319c';
const SPAN = 'b7ad6b7169203331';
const PARENT = '00f067aa0ba902b7';
const opts = { maxSpans: 100 };
const json = (v: unknown): Uint8Array => Buffer.from(JSON.stringify(v));

function span(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { traceId: TRACE, spanId: SPAN, name: 'invoke_agent a', startTimeUnixNano: '1700000000000000000', endTimeUnixNano: '1700000000250000000', ...extra };
}

describe('OTLP/JSON decoding', () => {
  it('maps ids, times, status, flags and events', () => {
    const d = decodeJson(
      json(
        jsonRequest([
          span({
            parentSpanId: PARENT,
            flags: 0x301,
            status: { code: 2, message: 'boom' },
            events: [{ timeUnixNano: '1700000000100000000', name: 'agent.event', attributes: [{ key: 'agent.event.type', value: { stringValue: 'agent_started' } }] }],
          }),
        ]),
      ),
      opts,
    );
    expect(d.rejected).toBe(0);
    expect(d.spans[0]).toMatchObject({
      traceId: TRACE,
      spanId: SPAN,
      parentSpanId: PARENT,
      parentIsRemote: true,
      name: 'invoke_agent a',
      startMs: 1700000000000,
      endMs: 1700000000250,
      statusCode: 2,
      statusMessage: 'boom',
      events: [{ name: 'agent.event', timeMs: 1700000000100, attributes: { 'agent.event.type': 'agent_started' } }],
    });
  });

  it('flattens AnyValue attributes', () => {
    const attrs = [
      { key: 's', value: { stringValue: 'x' } },
      { key: 'b', value: { boolValue: true } },
      { key: 'i', value: { intValue: '42' } },
      { key: 'n', value: { intValue: 7 } },
      { key: 'big', value: { intValue: '9223372036854775807' } },
      { key: 'd', value: { doubleValue: 1.5 } },
      { key: 'arr', value: { arrayValue: { values: [{ stringValue: 'a' }, { intValue: '2' }, {}] } } },
      { key: 'kv', value: { kvlistValue: { values: [{ key: 'inner', value: { stringValue: 'y' } }, { key: 'deep', value: { kvlistValue: { values: [{ key: 'z', value: { boolValue: false } }] } } }] } } },
      { key: 'bytes', value: { bytesValue: 'AQID' } },
      { key: 'empty', value: {} },
      { key: '__proto__', value: { stringValue: 'no' } },
    ];
    const a = decodeJson(json(jsonRequest([span({ attributes: attrs })])), opts).spans[0]!.attributes;
    expect(a).toEqual({ s: 'x', b: true, i: 42, n: 7, big: 9223372036854775807n, d: 1.5, arr: ['a', 2, null], 'kv.inner': 'y', 'kv.deep.z': false, bytes: 'AQID' });
    expect(Object.getPrototypeOf(a)).toBe(Object.prototype);
  });

  it('end time 0 or absent is a started span, without events', () => {
    for (const end of ['0', 0, undefined]) {
      const d = decodeJson(json(jsonRequest([span({ endTimeUnixNano: end, events: [{ name: 'x', timeUnixNano: '1' }] })])), opts);
      expect(d.spans[0]!.endMs).toBeUndefined();
      expect(d.spans[0]!.events).toBeUndefined();
    }
  });

  it('accepts snake_case fields, base64 ids, numeric nanos and enum names', () => {
    const d = decodeJson(
      json({
        resource_spans: [{ scope_spans: [{ spans: [{ trace_id: Buffer.from(TRACE, 'hex').toString('base64'), span_id: Buffer.from(SPAN, 'hex').toString('base64'), name: 'n', start_time_unix_nano: 1700000000000000000, status: { code: 'STATUS_CODE_ERROR' } }] }] }],
      }),
      opts,
    );
    expect(d.rejected).toBe(0);
    expect(d.spans[0]).toMatchObject({ traceId: TRACE, spanId: SPAN, statusCode: 2, parentIsRemote: false });
    expect(d.spans[0]!.parentSpanId).toBeUndefined();
  });

  it('keeps request order and rejects bad spans one by one', () => {
    const d = decodeJson(
      json(
        jsonRequest([
          span({ spanId: '1111111111111111' }),
          span({ spanId: 'nothex!!nothex!!' }),
          span({ spanId: '2222222222222222', startTimeUnixNano: '0' }),
          span({ spanId: '3333333333333333', parentSpanId: '0000000000000000' }),
          span({ spanId: '4444444444444444', flags: -1 }),
          span({ spanId: '5555555555555555', name: 5 }),
          'not a span' as unknown as Record<string, unknown>,
        ]),
      ),
      opts,
    );
    expect(d.spans.map((s) => s.spanId)).toEqual(['1111111111111111', '3333333333333333']);
    expect(d.spans[1]!.parentSpanId).toBeUndefined();
    expect(d.rejected).toBe(5);
    expect(Object.fromEntries(d.reasons)).toEqual({ bad_span_id: 1, bad_time: 1, bad_field: 3 });
    expect(d.firstRejection).toMatch(/^span 1: span_id/);
  });

  it('rejects OTLP/JSON times past uint64 nanoseconds (bad_time), which no Date could show; keeps the largest uint64', () => {
    const d = decodeJson(
      json(
        jsonRequest([
          span({ spanId: '1111111111111111', startTimeUnixNano: '18446744073709551616' }),
          span({ spanId: '2222222222222222', endTimeUnixNano: '99999999999999999999999999999' }),
          span({ spanId: '3333333333333333', startTimeUnixNano: 1e300 }),
          span({ spanId: '4444444444444444', endTimeUnixNano: '18446744073709551615' }),
          span({ spanId: '5555555555555555', endTimeUnixNano: '0000018446744073709551615' }),
        ]),
      ),
      opts,
    );
    expect(d.spans.map((s) => s.spanId)).toEqual(['4444444444444444', '5555555555555555']);
    expect(d.spans[0]!.endMs).toBe(18446744073709.55);
    expect(Object.fromEntries(d.reasons)).toEqual({ bad_time: 3 });
  });

  it('a null AnyValue member is absent, as the proto3 JSON mapping says: the span and its user.id are kept', () => {
    const members = ['stringValue', 'string_value', 'boolValue', 'bool_value', 'intValue', 'int_value', 'doubleValue', 'double_value', 'arrayValue', 'array_value', 'kvlistValue', 'kvlist_value', 'bytesValue', 'bytes_value'];
    const attributes = [
      { key: 'user.id', value: { stringValue: 'ann' } },
      // Only a null member: an empty AnyValue, left out as `{}` is.
      ...members.map((m) => ({ key: m, value: { [m]: null } })),
      { key: 'snake', value: { stringValue: null, string_value: 'from snake_case' } },
      { key: 'next', value: { stringValue: null, boolValue: null, intValue: '3' } },
      { key: 'arr', value: { arrayValue: { values: [{ doubleValue: null }, {}, { stringValue: 'x' }] } } },
      { key: 'kv', value: { kvlistValue: { values: [{ key: 'gone', value: { bytesValue: null } }, { key: 'in', value: { bool_value: null, boolValue: false } }] } } },
    ];
    const d = decodeJson(json(jsonRequest([span({ attributes })])), opts);
    expect(d.rejected).toBe(0);
    expect(d.spans[0]!.attributes).toEqual({ 'user.id': 'ann', snake: 'from snake_case', next: 3, arr: [null, null, 'x'], 'kv.in': false });
    // A member that is there and of the wrong type still rejects the span.
    const bad = decodeJson(json(jsonRequest([span({ attributes: [{ key: 'user.id', value: { stringValue: 'ann' } }, { key: 'x', value: { stringValue: 5 } }] })])), opts);
    expect(bad.firstRejection).toBe('span 0: stringValue is not a string');
  });

  it('base64 ids (the proto3 JSON mapping) with or without padding, standard or URL-safe; anything not 16 or 8 bytes is rejected as before', () => {
    // Ids whose base64 has "+" and "/" (URL-safe: "-" and "_").
    const trace = 'fbff3e0af7651916cd43dd8448eb21fe';
    const spanId = 'fbff3e0af76519fe';
    const parent = '03ef0bfffbff0001';
    const forms = (hex: string): string[] => {
      const b = Buffer.from(hex, 'hex');
      return [b.toString('base64'), b.toString('base64').replace(/=+$/, ''), b.toString('base64url'), `${b.toString('base64url')}==`.slice(0, b.toString('base64').length)];
    };
    expect(forms(trace)).toEqual(['+/8+CvdlGRbNQ92ESOsh/g==', '+/8+CvdlGRbNQ92ESOsh/g', '-_8-CvdlGRbNQ92ESOsh_g', '-_8-CvdlGRbNQ92ESOsh_g==']);
    const ok = forms(trace).flatMap((t, i) => [span({ traceId: t, spanId: forms(spanId)[i], parentSpanId: forms(parent)[i] }), span({ trace_id: t, traceId: undefined, span_id: forms(spanId)[(i + 1) % 4], spanId: undefined })]);
    const d = decodeJson(json(jsonRequest(ok)), opts);
    expect(d.rejected).toBe(0);
    expect(d.spans.map((s) => [s.traceId, s.spanId, s.parentSpanId])).toEqual(forms(trace).flatMap(() => [[trace, spanId, parent], [trace, spanId, undefined]]));
    const b64 = (n: number): string => Buffer.alloc(n, 0xab).toString('base64');
    const wrong = decodeJson(
      json(
        jsonRequest([
          span({ traceId: b64(15).replace(/=+$/, '') }), // 20 characters: 15 bytes
          span({ traceId: `${b64(16).slice(0, 20)}==` }), // 22 characters, but 15 bytes
          span({ traceId: b64(16).slice(0, 21) }), // 21 characters
          span({ traceId: b64(17).replace(/=+$/, '') }),
          span({ spanId: `${b64(8).slice(0, 10)}=` }), // 11 characters, but 7 bytes
          span({ spanId: b64(8).slice(0, 10) }),
          span({ spanId: b64(9) }),
          span({ spanId: 'AAAAAAAAAAA' }), // 8 zero bytes
          span({ parentSpanId: b64(7).replace(/=+$/, '') }),
          span({ parentSpanId: b64(8).slice(0, 11).replace('q', '!') }),
        ]),
      ),
      opts,
    );
    expect(wrong.spans).toEqual([]);
    expect(Object.fromEntries(wrong.reasons)).toEqual({ bad_trace_id: 4, bad_span_id: 4, bad_parent_span_id: 2 });
    expect(wrong.firstRejection).toBe('span 0: trace_id must be 16 non-zero bytes');
  });

  it('an intValue outside int64 rejects its span (bad_field); the int64 extremes are kept', () => {
    const ints: unknown[] = [
      '9223372036854775807', '-9223372036854775808', '0009223372036854775807', '9007199254740993', '-42', 2 ** 60, 2 ** 63, -(2 ** 63),
      '9223372036854775808', '-9223372036854775809', '99999999999999999999999', '-99999999999999999999999', '1'.repeat(1000), 2 ** 64, 1e300, -(2 ** 64),
    ];
    const spans = ints.map((v, i) => span({ spanId: (i + 1).toString(16).padStart(16, '0'), attributes: [{ key: 'user.id', value: { stringValue: 'ann' } }, { key: 'n', value: { intValue: v } }] }));
    const d = decodeJson(json(jsonRequest(spans)), opts);
    expect(d.spans.map((s) => s.attributes.n)).toEqual([9223372036854775807n, -9223372036854775808n, 9223372036854775807n, 9007199254740993n, -42, 2 ** 60, 2 ** 63, -(2 ** 63)]);
    expect(Object.fromEntries(d.reasons)).toEqual({ bad_field: 8 });
    expect(d.firstRejection).toBe('span 8: intValue is not an int64');
  });

  it('refuses bodies that are not an ExportTraceServiceRequest', () => {
    for (const body of ['', 'null', '[]', '"x"', '{"resourceSpans":1}', '{"resourceSpans":[{"scopeSpans":{}}]}']) {
      expect(() => decodeJson(Buffer.from(body), opts)).toThrowError(TracewireError);
    }
    expect(decodeJson(Buffer.from('{}'), opts).spans).toEqual([]);
  });

  it('counts spans before mapping them against the limit', () => {
    const many = Array.from({ length: 5 }, () => span());
    expect(() => decodeJson(json(jsonRequest(many)), { maxSpans: 4 })).toThrowError(TooManySpansError);
    expect(decodeJson(json(jsonRequest(many)), { maxSpans: 5 }).spans).toHaveLength(5);
  });
});

describe('OTLP/JSON written as the generic proto3 JSON mapping writes it, through the receiver', () => {
  it('unpadded URL-safe base64 ids and null AnyValue members: the run reaches its user', async () => {
    const sc = await startTestSidecar({}, true);
    try {
      const client = await connectAcked(sc, 'ann');
      const { spans, traceId, spanId } = await recordDemo('ann');
      const b64 = (hex: unknown): unknown => (typeof hex === 'string' ? Buffer.from(hex, 'hex').toString('base64url') : hex);
      const objs = spans.map((s) => {
        const o = jsonSpan(s);
        const attributes = [...(o.attributes as unknown[]), { key: 'http.route', value: { stringValue: null } }, { key: 'retry', value: { boolValue: null, intValue: '2' } }];
        return { ...o, traceId: b64(o.traceId), spanId: b64(o.spanId), parentSpanId: b64(o.parentSpanId), attributes };
      });
      expect(objs[0]!.traceId).toHaveLength(22);
      const r = await postJson(sc.otlpUrl!, jsonRequest(objs));
      expect(r.status).toBe(200);
      expect(r.json).toEqual({});
      await expectDemoRun(client, `${traceId}-${spanId}`);
      client.close();
    } finally {
      await sc.close();
    }
  });
});

describe('protobuf decoding', () => {
  it('decodes what the schema encodes, with 64-bit times and ints', () => {
    const body = protobufRequest([
      span({ parentSpanId: PARENT, flags: 0x101, attributes: [{ key: 'i', value: { intValue: '-5' } }, { key: 'big', value: { intValue: '9007199254740993' } }, { key: 'arr', value: { arrayValue: { values: [{ doubleValue: 0.5 }, { boolValue: true }] } } }] }),
    ]);
    const d = decodeProtobuf(body, opts);
    expect(d.rejected).toBe(0);
    expect(d.spans[0]).toMatchObject({ traceId: TRACE, spanId: SPAN, parentSpanId: PARENT, parentIsRemote: false, startMs: 1700000000000, endMs: 1700000000250 });
    expect(d.spans[0]!.attributes).toEqual({ i: -5, big: 9007199254740993n, arr: [0.5, true] });
  });

  it('an attribute with no key is left out, not its span, alike in protobuf and JSON', () => {
    const attributes = [{ key: '', value: { stringValue: 'x' } }, { value: { intValue: '1' } }, { key: 'user.id', value: { stringValue: 'ann' } }, { key: 'kv', value: { kvlistValue: { values: [{ key: '', value: { boolValue: true } }, { key: 'in', value: { intValue: '2' } }] } } }];
    const p = decodeProtobuf(protobufRequest([span({ attributes })]), opts);
    const j = decodeJson(json(jsonRequest([span({ attributes: [...attributes, { key: null, value: { stringValue: 'y' } }] })])), opts);
    for (const d of [p, j]) {
      expect(d.rejected).toBe(0);
      expect(d.spans[0]!.attributes).toEqual({ 'user.id': 'ann', 'kv.in': 2 });
    }
    // A key that is there but not a string is still a bad span (JSON).
    expect(decodeJson(json(jsonRequest([span({ attributes: [{ key: 7, value: { stringValue: 'x' } }] })])), opts).rejected).toBe(1);
  });

  it('an empty body is an empty request; garbage is TW_OTLP_BAD_BODY', () => {
    expect(decodeProtobuf(new Uint8Array(0), opts).spans).toEqual([]);
    expect(() => decodeProtobuf(Buffer.from('{"resourceSpans":[]}'), opts)).toThrowError(/cannot decode request body: protobuf/);
  });

  it('rejects ids of the wrong length', () => {
    const t = otlpTypes().request;
    const body = t
      .encode(t.fromObject({ resourceSpans: [{ scopeSpans: [{ spans: [{ traceId: Buffer.alloc(15, 1), spanId: Buffer.alloc(8, 1), name: 'x', startTimeUnixNano: '1' }] }] }] }))
      .finish();
    const d = decodeProtobuf(body, opts);
    expect(d.rejected).toBe(1);
    expect(d.reasons.get('bad_trace_id')).toBe(1);
  });
});

describe('gunzipLimited', () => {
  it('stops inflating a gzip bomb at the limit without reading the rest', async () => {
    const member = gzip(Buffer.alloc(1024 * 1024));
    const bomb = Buffer.concat(Array.from({ length: 100 }, () => member));
    const chunks: Buffer[] = [];
    for (let i = 0; i < bomb.length; i += 1024) chunks.push(bomb.subarray(i, i + 1024));
    const src = Readable.from(chunks, { objectMode: false });
    const out = gunzipLimited(src, 256 * 1024);
    let inflated = 0;
    const err = await new Promise<Error | undefined>((resolve) => {
      out.on('data', (c: Buffer) => (inflated += c.length));
      out.on('error', resolve);
      out.on('end', () => resolve(undefined));
    });
    expect(err).toBeInstanceOf(TracewireError);
    expect((err as TracewireError).code).toBe('TW_OTLP_TOO_LARGE');
    expect(inflated).toBeLessThanOrEqual(256 * 1024);
    expect(out.receivedEncodedLength).toBeLessThan(bomb.length / 4);
  });

  it('passes a small body through and counts its compressed length', async () => {
    const body = gzip('{"resourceSpans":[]}');
    const out = gunzipLimited(Readable.from([body]), 1024);
    let text = '';
    for await (const c of out) text += (c as Buffer).toString();
    expect(text).toBe('{"resourceSpans":[]}');
    expect(out.receivedEncodedLength).toBe(body.length);
  });
});
