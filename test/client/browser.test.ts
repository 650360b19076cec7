import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Browser, Page } from 'playwright-core';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEMO_EXPECTED, runDemoAgent } from '../../src/demo/demoAgent.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { CHROMIUM, hasChromium, inProcessTracer, launchChromium, startTestSidecar, until } from '../helpers.js';
import { FaultProxy } from './support.js';

/**
 * The client in a real browser (Debian's Chromium, headless): the module
 * loaded as a browser loads it (ES module, its one import resolved by URL),
 * the browser's own WebSocket, the token in the subprotocol; a connection
 * reset mid-run by a TCP proxy.
 */

if (!hasChromium && process.env.CI) throw new Error(`${CHROMIUM} is missing: the browser client test needs it in CI`);

const N = DEMO_EXPECTED.length;

/** The client's modules as JavaScript, at the paths their imports name. */
function modules(): Map<string, string> {
  const out = new Map<string, string>();
  for (const [url, file] of [
    ['/client/TracewireClient.js', '../../src/client/TracewireClient.ts'],
    ['/errors/codes.js', '../../src/errors/codes.ts'],
  ] as const) {
    const src = readFileSync(new URL(file, import.meta.url), 'utf8');
    out.set(url, ts.transpileModule(src, { compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 } }).outputText);
  }
  return out;
}

const PAGE = `<!doctype html><meta charset="utf-8"><title>chat</title>
<script type="module">
import { TracewireClient } from '/client/TracewireClient.js';
window.TracewireClient = TracewireClient;
window.ready = true;
</script>`;

let sc: Sidecar;
let browser: Browser;
let web: http.Server;
let webUrl: string;
let proxy: FaultProxy;

describe.skipIf(!hasChromium)('TracewireClient in headless Chromium', () => {
  beforeAll(async () => {
    sc = await startTestSidecar();
    proxy = await new FaultProxy(Number(new URL(sc.publicUrl).port)).start();
    const js = modules();
    web = http.createServer((req, res) => {
      if (req.url === '/favicon.ico') return void res.writeHead(204).end();
      const body = req.url === '/' ? PAGE : js.get(req.url ?? '');
      if (body === undefined) res.writeHead(404).end();
      else res.writeHead(200, { 'content-type': req.url === '/' ? 'text/html' : 'text/javascript' }).end(body);
    });
    await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
    webUrl = `http://127.0.0.1:${(web.address() as AddressInfo).port}/`;
    browser = await launchChromium();
  });

  afterAll(async () => {
    await browser?.close();
    await proxy?.close();
    await new Promise((r) => web?.close(r));
    await sc?.close();
  });

  async function openPage(): Promise<{ page: Page; problems: string[] }> {
    const page = await browser.newPage();
    const problems: string[] = [];
    page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console: ${m.text()}`);
    });
    await page.goto(webUrl);
    await page.waitForFunction(() => (globalThis as unknown as { ready?: boolean }).ready === true);
    return { page, problems };
  }

  it('gets a run in order through a reset connection, resuming with the browser WebSocket and the token in the subprotocol', async () => {
    const { page, problems } = await openPage();
    const token = await sc.tw.token('hal');
    await page.evaluate(
      ({ url, token }) => {
        const w = globalThis as unknown as Record<string, unknown>;
        const Client = w.TracewireClient as new (o: object) => { on: (k: string, f: (x: unknown) => void) => void; connect: () => void; status: string };
        const events: Array<{ seq: number; type: string; run_id: string }> = [];
        const states: string[] = [];
        const c = new Client({ url, token, minRetryDelayMillis: 20, maxRetryDelayMillis: 100 });
        c.on('event', (e) => events.push(e as { seq: number; type: string; run_id: string }));
        c.on('status', (s) => states.push((s as { state: string }).state));
        c.connect();
        Object.assign(w, { client: c, events, states });
      },
      { url: proxy.url, token },
    );
    await page.waitForFunction(() => (globalThis as unknown as { client: { status: string } }).client.status === 'open');
    const seqs = (): Promise<number[]> => page.evaluate(() => (globalThis as unknown as { events: Array<{ seq: number }> }).events.map((e) => e.seq));

    const { tracer } = inProcessTracer(sc);
    const run = runDemoAgent(tracer, { user: 'hal', stepMillis: 40 });
    await expect.poll(async () => (await seqs()).length, { timeout: 5000 }).toBeGreaterThanOrEqual(3);
    proxy.cut();
    const ids = await run;
    const runId = `${ids.traceId}-${ids.spanId}`;
    await expect.poll(async () => (await seqs()).length, { timeout: 8000 }).toBe(N);
    await new Promise((r) => setTimeout(r, 100));
    expect(await seqs()).toEqual(Array.from({ length: N }, (_, i) => i + 1));
    const types = await page.evaluate(() => (globalThis as unknown as { events: Array<{ type: string }> }).events.map((e) => e.type));
    expect(types).toEqual(DEMO_EXPECTED.map((e) => e.type));
    expect(await page.evaluate(() => (globalThis as unknown as { states: string[] }).states)).toEqual(['connecting', 'open', 'reconnecting', 'connecting', 'open']);
    // The browser's second upgrade resumed the run from the last seq it had; no token in either URL.
    expect(proxy.requestLines).toHaveLength(2);
    expect(proxy.requestLines[1]).toMatch(new RegExp(`[?&]resume=${runId}%3A\\d+`));
    for (const line of proxy.requestLines) expect(line).not.toContain('access_token');
    // The browser acknowledged the whole run.
    await until(() => sc.tw.ledger.get(runId)?.events.every((e) => e.acked) === true, 5000, 'acks');
    expect(problems).toEqual([]);
    await page.close();
  });
});
