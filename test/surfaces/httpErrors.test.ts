import http from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERRORS, type ErrorCode, type ErrorSpec } from '../../src/errors/errors.js';
import { buildPublicApp, clientErrorHandler, type Sidecar } from '../../src/surfaces/server.js';
import { Tracewire } from '../../src/Tracewire.js';
import { startTestSidecar, TEST_SECRET } from '../helpers.js';

/**
 * Every error answer of both listeners is `{code, message}` with a code of
 * the catalogue and that code's HTTP status, including what fastify itself
 * rejects before any route runs; and the sidecar keeps serving after it.
 */

interface Answer {
  status: number;
  body: { code?: string; message?: string };
}

/** One raw HTTP request on its own connection (no URL normalisation, any method, header and body). */
function request(base: string, method: string, path: string, headers: Record<string, string> = {}, body?: string | Buffer): Promise<Answer> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, method, path, headers, agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode!, body: JSON.parse(text) as Answer['body'] });
        } catch {
          reject(new Error(`${method} ${path}: ${res.statusCode} ${text.slice(0, 200)}`));
        }
      });
    });
    req.on('error', reject);
    if (body !== undefined) req.end(body);
    else req.end();
  });
}

/** The answer carries `code`, a catalogue code, with the catalogue's status for it. */
function expectCatalogued(a: Answer, code: ErrorCode, what: string): void {
  expect(a.body.code, `${what}: ${a.status} ${JSON.stringify(a.body).slice(0, 300)}`).toBe(code);
  expect(a.status, what).toBe((ERRORS[code] as ErrorSpec).status);
  expect(typeof a.body.message, what).toBe('string');
}

let sc: Sidecar;
let guarded: Sidecar;
const API_TOKEN = 'runs-api-token-0123';
beforeAll(async () => {
  sc = await startTestSidecar({ logLevel: 'silent' }, true);
  guarded = await startTestSidecar({ logLevel: 'silent', apiToken: API_TOKEN });
});
afterAll(async () => {
  await sc?.close();
  await guarded?.close();
});

async function stillServing(s: Sidecar): Promise<void> {
  const h = await fetch(`${s.publicUrl}/healthz`);
  expect(h.status).toBe(200);
  expect(((await h.json()) as { status: string }).status).toBe('ok');
}

describe('HTTP errors fastify raises before any route', () => {
  it('a path that is not valid percent-encoding is 400 TW_BAD_REQUEST on both listeners', async () => {
    for (const [base, path] of [[sc.publicUrl, '/api/runs/%zz'], [sc.publicUrl, '/%zz'], [sc.publicUrl, '/inspector/%E0%A4%A'], [sc.otlpUrl!, '/v1/traces/%zz']] as const) {
      const a = await request(base, 'GET', path);
      expectCatalogued(a, 'TW_BAD_REQUEST', path);
      expect(a.body.message).toContain(`"${path}" is not a valid URL (bad percent-encoding)`);
    }
    await stillServing(sc);
  });

  it('a run id longer than any run id is 404 TW_RUN_NOT_FOUND, after the API token check', async () => {
    const id = 'a'.repeat(200);
    expectCatalogued(await request(sc.publicUrl, 'GET', `/api/runs/${id}`), 'TW_RUN_NOT_FOUND', 'long id');
    // With --api-token, a caller without it learns nothing more than for any other id.
    expectCatalogued(await request(guarded.publicUrl, 'GET', `/api/runs/${id}`), 'TW_API_UNAUTHORISED', 'long id, no token');
    const a = await request(guarded.publicUrl, 'GET', `/api/runs/${id}`, { authorization: `Bearer ${API_TOKEN}` });
    expectCatalogued(a, 'TW_RUN_NOT_FOUND', 'long id, token');
    expect(a.body.message).toBe(`no run "${id}" (runs are kept for a bounded count and age)`);
    // As long as the request head Node accepts (16 KiB by default).
    expectCatalogued(await request(sc.publicUrl, 'GET', `/api/runs/${'b'.repeat(15_000)}`), 'TW_RUN_NOT_FOUND', '15,000-character id');
    await stillServing(sc);
    await stillServing(guarded);
  });

  it('a body sent to a path with no route is 404 TW_NOT_FOUND, whatever it holds', async () => {
    const json = { 'content-type': 'application/json' };
    const cases: Array<[string, string, string, Record<string, string>, string | Buffer | undefined]> = [
      [sc.publicUrl, 'POST', '/api/runs', json, '{not json'],
      [sc.publicUrl, 'POST', '/api/runs', json, ''],
      [sc.publicUrl, 'PUT', '/api/runs/x', json, '{"__proto__":{"polluted":1}}'],
      [sc.publicUrl, 'POST', '/nope', json, Buffer.alloc(2 * 1024 * 1024, 0x20)], // over fastify's 1 MiB body limit
      [sc.publicUrl, 'POST', '/healthz', { 'content-type': '///' }, 'x'], // a content type that does not parse
      [sc.publicUrl, 'DELETE', '/metrics', {}, undefined],
      [sc.otlpUrl!, 'POST', '/nope', json, '{not json'],
      [sc.otlpUrl!, 'GET', '/v1/traces', {}, undefined],
    ];
    for (const [base, method, path, headers, body] of cases) {
      const a = await request(base, method, path, headers, body);
      expectCatalogued(a, 'TW_NOT_FOUND', `${method} ${path} ${JSON.stringify(headers)}`);
      expect(a.body.message).toBe(`no route ${method} ${path}`);
    }
    await stillServing(sc);
  });

  it('a path parameter over the router limit (a raised Node header size) is still a catalogue 404', async () => {
    // Past 16 KiB Node itself refuses the request head, so this is only reachable with
    // --max-http-header-size raised; fastify's router is asked directly here.
    const tw = new Tracewire({ jwtSecret: TEST_SECRET, logLevel: 'silent', wsHeartbeatMillis: 0 });
    const app = await buildPublicApp(tw);
    try {
      const res = await app.inject({ method: 'GET', url: `/api/runs/${'c'.repeat(70_000)}` });
      expectCatalogued({ status: res.statusCode, body: res.json() }, 'TW_RUN_NOT_FOUND', '70,000-character id');
    } finally {
      await app.close();
      await tw.close();
    }
  });
});

/** Raw bytes on a fresh connection; resolves with the status, the x-tracewire-error header and the JSON body of the answer. */
function raw(base: string, bytes: string, endAfterWrite = true): Promise<{ status: number; header: string | undefined; body: { code?: string; message?: string } }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    let text = '';
    const s = net.connect(Number(u.port), u.hostname, () => {
      s.write(bytes);
      if (endAfterWrite) s.end();
    });
    s.on('data', (d) => (text += d.toString('utf8')));
    s.on('error', reject);
    s.on('close', () => {
      const [head, body = ''] = text.split('\r\n\r\n');
      const status = Number(/^HTTP\/1\.1 (\d+)/.exec(head ?? '')?.[1]);
      const header = /x-tracewire-error: (\S+)/i.exec(head ?? '')?.[1];
      try {
        resolve({ status, header, body: JSON.parse(body) as { code?: string; message?: string } });
      } catch {
        reject(new Error(`not a JSON answer: ${text.slice(0, 300)}`));
      }
    });
  });
}

describe('HTTP errors Node refuses before a request exists', () => {
  it('bytes that are not HTTP are 400 TW_BAD_REQUEST, a request head over Node\'s limit 431 TW_HEADERS_TOO_LARGE, on both listeners', async () => {
    for (const base of [sc.publicUrl, sc.otlpUrl!]) {
      const bad = await raw(base, 'GARBAGE \x00\x01\r\n\r\n');
      expectCatalogued({ status: bad.status, body: bad.body }, 'TW_BAD_REQUEST', `${base} garbage`);
      expect(bad.header).toBe('TW_BAD_REQUEST');
      const big = await raw(base, `GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
      expectCatalogued({ status: big.status, body: big.body }, 'TW_HEADERS_TOO_LARGE', `${base} big head`);
      expect(big.body.message).toBe(`request head over ${http.maxHeaderSize} bytes`);
    }
    await stillServing(sc);
  });

  it('a request not received within the server\'s requestTimeout is 408 TW_REQUEST_TIMEOUT', async () => {
    // The handler both listeners install, on a server whose timeout a test can wait for (the OTLP listener's is 30 s).
    const server = http.createServer({ requestTimeout: 200, connectionsCheckingInterval: 50 }, (_req, res) => res.end('ok'));
    server.on('clientError', clientErrorHandler);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const base = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
      // A head that never ends.
      const slow = await raw(base, 'POST /v1/traces HTTP/1.1\r\nHost: a\r\n', false);
      expectCatalogued({ status: slow.status, body: slow.body }, 'TW_REQUEST_TIMEOUT', 'slow head');
      expect(slow.body.message).toBe('request not received within 200 ms');
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});
