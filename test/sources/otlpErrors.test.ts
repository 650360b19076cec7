import { request as httpRequest } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEMO_EXPECTED } from '../../src/demo/demoAgent.js';
import { otlpTypes } from '../../src/sources/otlp/schema.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, metricValue, startTestSidecar, type TestClient } from '../helpers.js';
import { decodeStatus, expectDemoRun, gzip, jsonRequest, jsonSpan, post, postJson, protobufRequest, recordDemo } from './otlpSupport.js';

const TOKEN = 'ingest-token-0123456789';
const LIMIT = 256 * 1024;
const USER = 'erin';

let sc: Sidecar;
let client: TestClient;
let url: string;
beforeAll(async () => {
  sc = await startTestSidecar({ otlpToken: TOKEN, otlpMaxBodyBytes: LIMIT, otlpMaxSpansPerRequest: 20 }, true);
  url = sc.otlpUrl!;
  client = await connectAcked(sc, USER);
});
afterAll(async () => {
  client?.close();
  await sc?.close();
});

/** A valid request right after an error: answered 200 and its run's events arrive. */
async function validRunStillWorks(encoding: 'json' | 'protobuf' = 'json'): Promise<void> {
  const { spans, traceId, spanId } = await recordDemo(USER);
  const objs = spans.map((s) => jsonSpan(s));
  const r =
    encoding === 'json'
      ? await post(url, JSON.stringify(jsonRequest(objs)), { token: TOKEN })
      : await post(url, protobufRequest(objs), { token: TOKEN, contentType: 'application/x-protobuf' });
  expect(r.status).toBe(200);
  await expectDemoRun(client, `${traceId}-${spanId}`);
}

function expectJsonError(r: { status: number; headers: Headers; body: Buffer }, status: number, code: string): void {
  expect(r.status).toBe(status);
  expect(r.headers.get('content-type')).toMatch(/^application\/json/);
  expect(r.headers.get('x-tracewire-error')).toBe(code);
  // The JSON form of a google.rpc.Status: its code the gRPC one (an int32), the tracewire code in ErrorInfo and the message.
  const body = JSON.parse(r.body.toString()) as { code: number; message: string; details: Array<{ '@type': string; reason: string; domain: string }> };
  expect(body.code).toBe(({ 400: 3, 401: 16, 413: 8, 415: 3, 503: 14 } as Record<number, number>)[status]);
  expect(body.message.startsWith(`${code}: `)).toBe(true);
  expect(body.details).toEqual([{ '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason: code, domain: 'tracewire' }]);
  // Read as a google.rpc.Status by the schema's own JSON reader, as a Collector does.
  expect(otlpTypes().rpcStatus.verify({ code: body.code, message: body.message })).toBeNull();
}

function expectProtobufError(r: { status: number; headers: Headers; body: Buffer }, status: number, code: string, grpc: number): void {
  expect(r.status).toBe(status);
  expect(r.headers.get('content-type')).toBe('application/x-protobuf');
  expect(r.headers.get('x-tracewire-error')).toBe(code);
  const st = decodeStatus(r.body);
  expect(st).toMatchObject({ code: grpc, reason: code });
  expect(st.message.startsWith(`${code}: `)).toBe(true);
}

describe('OTLP receiver errors, each followed by a valid request', () => {
  it('truncated protobuf: 400 TW_OTLP_BAD_BODY as a google.rpc.Status', async () => {
    const { spans } = await recordDemo(USER);
    const full = protobufRequest(spans.map((s) => jsonSpan(s)));
    const r = await post(url, full.subarray(0, Math.floor(full.length / 2)), { token: TOKEN, contentType: 'application/x-protobuf' });
    expectProtobufError(r, 400, 'TW_OTLP_BAD_BODY', 3);
    await validRunStillWorks('protobuf');
  });

  it('invalid JSON: 400 TW_OTLP_BAD_BODY', async () => {
    const r = await post(url, '{"resourceSpans": [', { token: TOKEN });
    expectJsonError(r, 400, 'TW_OTLP_BAD_BODY');
    await validRunStillWorks();
  });

  it('wrong field types in the envelope: 400 TW_OTLP_BAD_BODY', async () => {
    for (const bad of [[1, 2], { resourceSpans: { not: 'a list' } }, { resourceSpans: [{ scopeSpans: [{ spans: 'x' }] }] }, { resourceSpans: ['x'] }]) {
      const r = await post(url, JSON.stringify(bad), { token: TOKEN });
      expectJsonError(r, 400, 'TW_OTLP_BAD_BODY');
    }
    await validRunStillWorks();
  });

  it('a gzip bomb (100 MB of zeros) is cut off at the body limit: 413 TW_OTLP_TOO_LARGE', async () => {
    // 100 concatenated gzip members of 1 MiB of zeros: one valid gzip stream of 100 MiB, ~100 KB on the wire.
    const member = gzip(Buffer.alloc(1024 * 1024));
    const bomb = Buffer.concat(Array.from({ length: 100 }, () => member));
    // Under the compressed limit, so only the inflated size can trip.
    expect(bomb.length).toBeLessThan(LIMIT);
    const t0 = Date.now();
    expectJsonError(await post(url, bomb, { token: TOKEN, encoding: 'gzip' }), 413, 'TW_OTLP_TOO_LARGE');
    expectProtobufError(await post(url, bomb, { token: TOKEN, encoding: 'gzip', contentType: 'application/x-protobuf' }), 413, 'TW_OTLP_TOO_LARGE', 8);
    expect(Date.now() - t0).toBeLessThan(3000);
    // Over the compressed limit too: refused from Content-Length before anything is inflated.
    const huge = Buffer.concat(Array.from({ length: 4 }, () => bomb));
    expectJsonError(await post(url, huge, { token: TOKEN, encoding: 'gzip' }), 413, 'TW_OTLP_TOO_LARGE');
    await validRunStillWorks();
  });

  it('gzip: a compressed valid request is accepted, corrupt gzip is 400, unknown encodings 415', async () => {
    const { spans, traceId, spanId } = await recordDemo(USER);
    const ok = await post(url, gzip(JSON.stringify(jsonRequest(spans.map((s) => jsonSpan(s))))), { token: TOKEN, encoding: 'gzip' });
    expect(ok.status).toBe(200);
    await expectDemoRun(client, `${traceId}-${spanId}`);
    const corrupt = Buffer.from(gzip('{"resourceSpans":[]}'));
    corrupt[12] ^= 0xff;
    corrupt[13] ^= 0xff;
    expectJsonError(await post(url, corrupt, { token: TOKEN, encoding: 'gzip' }), 400, 'TW_OTLP_BAD_BODY');
    expectJsonError(await post(url, '{}', { token: TOKEN, encoding: 'br' }), 415, 'TW_OTLP_UNSUPPORTED_ENCODING');
    await validRunStillWorks();
  });

  it('oversized body: 413 TW_OTLP_TOO_LARGE', async () => {
    const big = `{"resourceSpans":[],"pad":"${'x'.repeat(LIMIT)}"}`;
    expectJsonError(await post(url, big, { token: TOKEN }), 413, 'TW_OTLP_TOO_LARGE');
    // Without Content-Length (chunked), the limit applies while reading.
    const chunked = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = httpRequest(`${url}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}` } }, (res) => {
        let b = '';
        res.on('data', (d: Buffer) => (b += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b }));
      });
      req.on('error', reject);
      req.setTimeout(5000, () => req.destroy(new Error('timeout')));
      for (let i = 0; i < 4; i++) req.write('x'.repeat(LIMIT / 2));
      req.end();
    });
    expect(chunked.status).toBe(413);
    expect(JSON.parse(chunked.body)).toMatchObject({ code: 8, details: [{ reason: 'TW_OTLP_TOO_LARGE' }] });
    await validRunStillWorks();
  });

  it('unsupported content type: 415 TW_OTLP_UNSUPPORTED_MEDIA', async () => {
    expectJsonError(await post(url, 'hello', { token: TOKEN, contentType: 'text/plain' }), 415, 'TW_OTLP_UNSUPPORTED_MEDIA');
    expectJsonError(await post(url, '{}', { token: TOKEN, contentType: 'application/grpc' }), 415, 'TW_OTLP_UNSUPPORTED_MEDIA');
    await validRunStillWorks();
  });

  it('missing or wrong ingest token: 401 TW_OTLP_UNAUTHORISED', async () => {
    const body = JSON.stringify(jsonRequest([]));
    expectJsonError(await post(url, body), 401, 'TW_OTLP_UNAUTHORISED');
    expectJsonError(await post(url, body, { token: 'wrong' }), 401, 'TW_OTLP_UNAUTHORISED');
    expectProtobufError(await post(url, protobufRequest([]), { token: `${TOKEN}x`, contentType: 'application/x-protobuf' }), 401, 'TW_OTLP_UNAUTHORISED', 16);
    await validRunStillWorks();
  });

  it('too many spans in one request: 400 TW_OTLP_TOO_MANY_SPANS, nothing ingested', async () => {
    const { spans } = await recordDemo(USER);
    const objs = Array.from({ length: 3 }, () => spans.map((s) => jsonSpan(s))).flat(); // 21 > 20
    const before = client.events.length;
    expectJsonError(await post(url, JSON.stringify(jsonRequest(objs)), { token: TOKEN }), 400, 'TW_OTLP_TOO_MANY_SPANS');
    expect(await metricValue(sc, 'tracewire_otlp_spans_rejected_total', { reason: 'too_many_spans' })).toBe(21);
    await validRunStillWorks();
    expect(client.events.length - before).toBe(DEMO_EXPECTED.length);
  });

  it('counts requests by encoding and status', async () => {
    expect(await metricValue(sc, 'tracewire_otlp_requests_total', { encoding: 'json', status: '401' })).toBeGreaterThanOrEqual(2);
    expect(await metricValue(sc, 'tracewire_otlp_requests_total', { encoding: 'protobuf', status: '400' })).toBeGreaterThanOrEqual(1);
    expect(await metricValue(sc, 'tracewire_otlp_requests_total', { encoding: 'unsupported', status: '415' })).toBeGreaterThanOrEqual(2);
    expect(await metricValue(sc, 'tracewire_otlp_requests_total', { encoding: 'json', status: '200' })).toBeGreaterThanOrEqual(5);
  });
});

describe('partial success', () => {
  it('JSON: invalid spans are rejected and counted, the valid ones are delivered', async () => {
    const { spans, traceId, spanId } = await recordDemo(USER);
    const good = spans.map((s) => jsonSpan(s));
    const badId = { ...good[0]!, spanId: 'abc' };
    const noTrace = { ...good[1]!, traceId: undefined };
    const zeroTrace = { ...good[1]!, traceId: '0'.repeat(32) };
    const badTime = { ...good[2]!, startTimeUnixNano: 'yesterday' };
    const badAttr = { ...good[2]!, attributes: [{ key: 'k', value: { intValue: 'x' } }] };
    const before = await metricValue(sc, 'tracewire_otlp_spans_rejected_total', { reason: 'bad_span_id' });
    const r = await postJson(url, jsonRequest([badId, ...good.slice(0, 3), noTrace, zeroTrace, ...good.slice(3), badTime, badAttr]), { token: TOKEN });
    expect(r.status).toBe(200);
    const ps = r.json.partialSuccess as { rejectedSpans: string; errorMessage: string };
    expect(Number(ps.rejectedSpans)).toBe(5);
    expect(ps.errorMessage).toContain('bad_span_id 1');
    expect(ps.errorMessage).toContain('bad_trace_id 2');
    expect(ps.errorMessage).toContain('span 0: span_id');
    await expectDemoRun(client, `${traceId}-${spanId}`);
    expect(await metricValue(sc, 'tracewire_otlp_spans_rejected_total', { reason: 'bad_span_id' })).toBe(before + 1);
    expect(await metricValue(sc, 'tracewire_otlp_spans_rejected_total', { reason: 'bad_field' })).toBeGreaterThanOrEqual(1);
  });

  it('protobuf: the response is an ExportTraceServiceResponse with partial_success', async () => {
    const { spans, traceId, spanId } = await recordDemo(USER);
    const good = spans.map((s) => jsonSpan(s));
    const shortParent = { ...good[0]!, parentSpanId: 'abcd' };
    const r = await post(url, protobufRequest([...good, shortParent]), { token: TOKEN, contentType: 'application/x-protobuf' });
    expect(r.status).toBe(200);
    const t = otlpTypes().response;
    const res = t.toObject(t.decode(r.body), { longs: Number }) as { partialSuccess?: { rejectedSpans: number; errorMessage: string } };
    expect(res.partialSuccess?.rejectedSpans).toBe(1);
    expect(res.partialSuccess?.errorMessage).toContain('bad_parent_span_id');
    await expectDemoRun(client, `${traceId}-${spanId}`);
  });
});

describe('overload', () => {
  it('past otlpMaxConcurrentRequests: 503 TW_OTLP_OVERLOADED with Retry-After, then serves again', async () => {
    const s2 = await startTestSidecar({ otlpMaxConcurrentRequests: 1 }, true);
    try {
      const c2 = await connectAcked(s2, USER);
      // One request whose body is still being sent holds the only slot.
      const slow = httpRequest(`${s2.otlpUrl}/v1/traces`, { method: 'POST', headers: { 'content-type': 'application/json', 'content-length': '2' } });
      const slowDone = new Promise<number>((resolve, reject) => {
        slow.on('response', (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        slow.on('error', reject);
      });
      slow.write('{');
      await new Promise((r) => setTimeout(r, 100));
      const r = await post(s2.otlpUrl!, '{}');
      expectJsonError(r, 503, 'TW_OTLP_OVERLOADED');
      expect(r.headers.get('retry-after')).toBe('1');
      slow.end('}');
      expect(await slowDone).toBe(200);
      const { spans, traceId, spanId } = await recordDemo(USER);
      expect((await post(s2.otlpUrl!, JSON.stringify(jsonRequest(spans.map((s) => jsonSpan(s)))))).status).toBe(200);
      await expectDemoRun(c2, `${traceId}-${spanId}`);
      c2.close();
    } finally {
      await s2.close();
    }
  });
});
