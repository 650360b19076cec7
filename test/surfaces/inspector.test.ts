import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runDemoAgent } from '../../src/demo/demoAgent.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { CHROMIUM, connectAcked, hasChromium, inProcessTracer, judgedToolRun, launchChromium, startTestSidecar, until } from '../helpers.js';

if (!hasChromium && process.env.CI) throw new Error(`${CHROMIUM} is missing: the inspector test needs it in CI`);

const TRACE_URL = 'http://tempo.example/explore?trace={trace_id}';

let sc: Sidecar;
let browser: Browser;
let proxy: http.Server;
let proxyUrl: string;
let okRun: { id: string; traceId: string };
let badRun: { id: string; traceId: string };

/** A reverse proxy that serves the sidecar under /tw/ (the inspector must work behind a prefix). */
function startPrefixProxy(target: string): Promise<http.Server> {
  const t = new URL(target);
  const server = http.createServer((req, res) => {
    if (!req.url?.startsWith('/tw/')) {
      res.writeHead(404).end('outside the prefix');
      return;
    }
    const up = http.request({ host: t.hostname, port: t.port, path: req.url.slice(3), method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    up.on('error', () => res.writeHead(502).end());
    req.pipe(up);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function openPage(url: string): Promise<{ page: Page; problems: string[] }> {
  const page = await browser.newPage({ viewport: { width: 1500, height: 1000 } });
  const problems: string[] = [];
  const origin = new URL(url).origin;
  // CSP violations and script errors surface as console errors; failed loads are checked by URL below
  // (Chromium asks for /favicon.ico on its own, which the sidecar does not serve).
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(`console: ${m.text()}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400 && !r.url().endsWith('/favicon.ico')) problems.push(`HTTP ${r.status()}: ${new URL(r.url()).pathname}`);
  });
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('request', (r) => {
    if (new URL(r.url()).origin !== origin) problems.push(`external request: ${r.url()}`);
  });
  await page.goto(url);
  return { page, problems };
}

const rows = (page: Page) => page.locator('#runs tbody tr');

describe.skipIf(!hasChromium)('run inspector (headless Chromium)', () => {
  beforeAll(async () => {
    sc = await startTestSidecar({ failWritesFor: (u) => u === 'dave', traceUrlTemplate: TRACE_URL });
    const { tracer } = inProcessTracer(sc);
    await connectAcked(sc, 'alice');
    await connectAcked(sc, 'dave');
    const a = await runDemoAgent(tracer, { user: 'alice' });
    const d = await runDemoAgent(tracer, { user: 'dave' });
    okRun = { id: `${a.traceId}-${a.spanId}`, traceId: a.traceId };
    badRun = { id: `${d.traceId}-${d.spanId}`, traceId: d.traceId };
    await until(() => sc.tw.ledger.get(okRun.id)?.judgement !== undefined && sc.tw.ledger.get(badRun.id)?.judgement !== undefined, 5000, 'verdicts');
    expect(sc.tw.ledger.get(okRun.id)!.judgement!.verdict).toBe('complete');
    expect(sc.tw.ledger.get(badRun.id)!.judgement!.verdict).toBe('missing_events');
    proxy = await startPrefixProxy(sc.publicUrl);
    proxyUrl = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
    browser = await launchChromium();
  });

  afterAll(async () => {
    await browser?.close();
    await new Promise((r) => proxy?.close(r));
    await sc?.close();
  });

  it('lists both runs with verdicts, filters to missing_events, and shows the send_failed run in detail', async () => {
    const { page, problems } = await openPage(`${sc.publicUrl}/inspector`);
    await expect.poll(() => rows(page).count()).toBe(2);
    // Newest first: dave's run started last.
    expect(await rows(page).evaluateAll((trs) => trs.map((tr) => [tr.getAttribute('data-run-id'), tr.getAttribute('data-verdict')]))).toEqual([
      [badRun.id, 'missing_events'],
      [okRun.id, 'complete'],
    ]);
    expect(await rows(page).nth(0).locator('.badge').textContent()).toBe('missing_events');
    expect(await rows(page).nth(1).locator('.badge').textContent()).toBe('complete');
    expect(await rows(page).nth(0).locator('td').nth(4).textContent()).toBe('0 / 11');
    expect(await rows(page).nth(1).locator('td').nth(4).textContent()).toBe('11 / 11');

    // Filter with the form control: the list and the URL follow.
    await page.selectOption('#f-verdict', 'missing_events');
    await expect.poll(() => rows(page).count()).toBe(1);
    expect(await rows(page).first().getAttribute('data-run-id')).toBe(badRun.id);
    expect(new URL(page.url()).searchParams.get('verdict')).toBe('missing_events');

    // Open the run: explanation, facts, trace link and a timeline of spans and events.
    await rows(page).first().click();
    const explanation = page.locator('#detail .explanation');
    await expect.poll(() => explanation.textContent()).toBe(
      'Agents ran (11 events expected) and none reached user dave although a connection of the user was open: send_failed ×11.',
    );
    expect(new URL(page.url()).searchParams.get('run')).toBe(badRun.id);
    expect(await page.locator('#detail h2 .badge').textContent()).toBe('missing_events');
    expect(await page.locator('#detail a[href^="http://tempo.example/"]').getAttribute('href')).toBe(`http://tempo.example/explore?trace=${badRun.traceId}`);
    const dropped = page.locator('#timeline tr[data-what="event"][data-outcome="dropped"]');
    expect(await dropped.count()).toBe(11);
    const first = dropped.first();
    expect(await first.getAttribute('data-type')).toBe('agent_started');
    const cells = await first.locator('td').allTextContents();
    expect(cells.slice(1, 5)).toEqual(['eventagent_started #1', 'dropped', 'send_failed', '0 conn (1 tried)']);
    expect(await page.locator('#timeline tr[data-what="span_start"]').count()).toBe(7);
    expect(await page.locator('#timeline tr[data-what="span_end"]').count()).toBe(7);
    expect(await page.locator('#timeline tbody tr').count()).toBe(25);
    expect(await page.locator('#timeline').textContent()).toContain('error: tool_error');

    await page.screenshot({ path: '/tmp/inspector.png', fullPage: true });
    expect(problems).toEqual([]);
    await page.close();
  });

  it('opens ?run=<id> directly and applies filters from the URL', async () => {
    const { page, problems } = await openPage(`${sc.publicUrl}/inspector?verdict=complete&run=${okRun.id}`);
    await expect.poll(() => page.locator('#detail .explanation').textContent()).toBe('All 11 expected events were delivered to user alice.');
    await expect.poll(() => rows(page).count()).toBe(1);
    expect(await rows(page).first().getAttribute('data-run-id')).toBe(okRun.id);
    expect(await rows(page).first().getAttribute('class')).toContain('selected');
    expect(await page.inputValue('#f-verdict')).toBe('complete');
    expect(await page.locator('#timeline tr[data-what="event"][data-outcome="delivered"]').count()).toBe(11);
    expect(await page.locator('#timeline tr[data-what="event"]').first().locator('td').nth(4).textContent()).toBe('1 conn');

    // Agent filter through the form: nothing matches.
    await page.fill('#f-agent', 'nobody');
    await page.click('#filters button[type="submit"]');
    await expect.poll(() => page.locator('#empty').isVisible()).toBe(true);
    expect(await rows(page).count()).toBe(0);
    expect(new URL(page.url()).searchParams.get('agent')).toBe('nobody');

    // An unknown run id shows the API's error code instead of a blank page.
    await page.goto(`${sc.publicUrl}/inspector?run=nope`);
    await expect.poll(() => page.locator('#detail .explanation').textContent()).toContain('TW_RUN_NOT_FOUND');
    expect(problems).toEqual(['HTTP 404: /api/runs/nope']);
    await page.close();
  });

  it('sends ?token= on its API calls when the sidecar requires an API token', async () => {
    const guarded = await startTestSidecar({ apiToken: 'inspector-token-0123' });
    try {
      const { tracer } = inProcessTracer(guarded);
      const ids = await runDemoAgent(tracer, { user: 'ivy' });
      const id = `${ids.traceId}-${ids.spanId}`;
      await until(() => guarded.tw.ledger.get(id)?.judgement !== undefined, 5000, 'verdict');
      expect((await fetch(`${guarded.publicUrl}/api/runs`)).status).toBe(401);
      const { page, problems } = await openPage(`${guarded.publicUrl}/inspector?token=inspector-token-0123`);
      await expect.poll(() => rows(page).count()).toBe(1);
      await rows(page).first().click();
      await expect.poll(() => page.locator('#detail .explanation').textContent()).toBe(
        'Agents ran (11 events expected) but none reached user ivy: nobody was connected (no_subscriber ×11).',
      );
      const url = new URL(page.url());
      expect([url.searchParams.get('token'), url.searchParams.get('run')]).toEqual(['inspector-token-0123', id]);
      expect(problems).toEqual([]);
      await page.close();
    } finally {
      await guarded.close();
    }
  });

  it('works behind a path prefix (relative URLs only)', async () => {
    const { page, problems } = await openPage(`${proxyUrl}/tw/inspector?run=${badRun.id}`);
    await expect.poll(() => rows(page).count()).toBe(2);
    await expect.poll(() => page.locator('#detail .explanation').textContent()).toContain('although a connection of the user was open');
    await page.selectOption('#f-verdict', 'complete');
    await expect.poll(() => rows(page).count()).toBe(1);
    expect(new URL(page.url()).pathname).toBe('/tw/inspector');
    expect(problems).toEqual([]);
    await page.close();
  });

  it('with auto-refresh on, a live redraw while "Show more events" is loading does not lose the page', async () => {
    const big = await startTestSidecar();
    try {
      await connectAcked(big, 'cy');
      const id = await judgedToolRun(big, 'cy', 600);
      const page = await browser.newPage({ viewport: { width: 1500, height: 1000 } });
      // The page's clock is driven by the test: the 5-s live refresh fires when the test says.
      await page.clock.install();
      // The second page is held back until the live refresh has had its turn.
      let release: () => void = () => undefined;
      const held = new Promise<void>((r) => (release = r));
      await page.route(/cursor=/, async (route) => {
        await held;
        await route.continue();
      });
      await page.goto(`${big.publicUrl}/inspector?run=${id}&live=1`);
      const events = page.locator('#timeline tr[data-what="event"]');
      await expect.poll(() => events.count()).toBe(1000);
      await page.click('#timeline-more');
      const detailReads = (): Promise<number> => page.evaluate(() => performance.getEntriesByType('resource').filter((e) => /api\/runs\/[^?]+$/.test(e.name)).length);
      const before = await detailReads();
      await page.clock.runFor(6000);
      await new Promise((r) => setTimeout(r, 300));
      // The live tick left the run alone while its next page was loading.
      expect(await detailReads()).toBe(before);
      release();
      await expect.poll(() => events.count()).toBe(1202);
      expect(await page.locator('#timeline-more').isHidden()).toBe(true);
      await page.close();
    } finally {
      await big.close();
    }
  });

  it('shows a large run a page of events at a time: "Show more events" appends the rest in order', async () => {
    const big = await startTestSidecar();
    try {
      await connectAcked(big, 'bo');
      // One agent with 600 tools: 1,202 expected events, more than one page (1,000).
      const id = await judgedToolRun(big, 'bo', 600);
      const { page, problems } = await openPage(`${big.publicUrl}/inspector?run=${id}`);
      const events = page.locator('#timeline tr[data-what="event"]');
      await expect.poll(() => events.count()).toBe(1000);
      await expect.poll(() => page.locator('#timeline-more').textContent()).toBe('Show more events (1000 of 1202 shown)');
      await page.click('#timeline-more');
      await expect.poll(() => events.count()).toBe(1202);
      expect(await page.locator('#timeline-more').isHidden()).toBe(true);
      // Every span start and end is there once, and the rows run in seq order across the pages.
      expect(await page.locator('#timeline tr[data-what="span_start"]').count()).toBe(601);
      expect(await page.locator('#timeline tr[data-what="span_end"]').count()).toBe(601);
      const seqs = (await events.locator('td.what .muted').allTextContents()).map((t) => Number(t.replace(' #', '')));
      expect(seqs).toEqual(Array.from({ length: 1202 }, (_, i) => i + 1));
      expect(await events.last().getAttribute('data-type')).toBe('agent_completed');
      expect(problems).toEqual([]);
      await page.close();
    } finally {
      await big.close();
    }
  });
});
