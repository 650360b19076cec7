import { afterEach, describe, expect, it } from 'vitest';
import { DEMO_EXPECTED, runDemoAgent } from '../../src/demo/demoAgent.js';
import type { TracewireOptions } from '../../src/Tracewire.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, inProcessTracer, startTestSidecar, until, type TestClient } from '../helpers.js';

/**
 * The hub's bounded buffers on /metrics: events held for users with no
 * connection (count and bytes), the resume window (runs and bytes), and the
 * delivered events the window gave up to a bound before their run expired,
 * by bound.
 */

const N = DEMO_EXPECTED.length; // events of one demo run

let sc: Sidecar | undefined;
// Closing the sidecar closes its connections too.
afterEach(async () => {
  await sc?.close();
  sc = undefined;
});

async function sidecar(opts: TracewireOptions): Promise<Sidecar> {
  sc = await startTestSidecar(opts);
  return sc;
}

/** A sidecar with `opts` and one connected client of `user`. */
async function listening(opts: TracewireOptions, user: string): Promise<{ s: Sidecar; c: TestClient }> {
  const s = await sidecar(opts);
  return { s, c: await connectAcked(s, user) };
}

/** A series' value as GET /metrics shows it (Prometheus text format). */
async function scraped(s: Sidecar, series: string): Promise<number> {
  const text = await (await fetch(`${s.publicUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  if (line === undefined) throw new Error(`${series} not on /metrics`);
  return Number(line.slice(series.length + 1));
}

async function runFor(s: Sidecar, user: string): Promise<void> {
  await runDemoAgent(inProcessTracer(s).tracer, { user, stepMillis: 1 });
}

describe('hub buffer metrics', () => {
  it('events held for a user with no connection show as tracewire_held_events and _bytes, and leave them on connect', async () => {
    const s = await sidecar({});
    expect(await scraped(s, 'tracewire_held_events')).toBe(0);
    await runFor(s, 'absent');
    await until(() => s.tw.hub.stats().held === N, 3000, 'held events');
    expect(await scraped(s, 'tracewire_held_events')).toBe(N);
    const bytes = await scraped(s, 'tracewire_held_event_bytes');
    expect(bytes).toBeGreaterThan(N * 100);
    expect(bytes).toBe(s.tw.hub.stats().heldBytes);

    const c = await connectAcked(s, 'absent');
    await c.until((x) => x.events.length === N, 3000, 'the held events');
    expect(await scraped(s, 'tracewire_held_events')).toBe(0);
    expect(await scraped(s, 'tracewire_held_event_bytes')).toBe(0);
    // Delivered, they entered the resume window.
    expect(await scraped(s, 'tracewire_resume_window_runs')).toBe(1);
    expect(await scraped(s, 'tracewire_resume_window_bytes')).toBeGreaterThan(0);
  });

  it('events the window gives up to replayMaxEventsPerRun are counted as run_events', async () => {
    const { s, c } = await listening({ replayMaxEventsPerRun: 4 }, 'ann');
    await runFor(s, 'ann');
    await c.until((x) => x.events.length === N, 3000, 'the run');
    expect(await scraped(s, 'tracewire_resume_window_trimmed_total{reason="run_events"}')).toBe(N - 4);
    expect(await scraped(s, 'tracewire_resume_window_trimmed_total{reason="run_bytes"}')).toBe(0);
    expect(await scraped(s, 'tracewire_resume_window_trimmed_total{reason="total_bytes"}')).toBe(0);
    expect(await scraped(s, 'tracewire_resume_window_runs')).toBe(1);
  });

  it('runs the window drops for replayMaxTotalBytes count their events as total_bytes; the window stays within the bound', async () => {
    // About one demo run's worth: each later run pushes the one before it out.
    const { s, c } = await listening({ replayMaxTotalBytes: 6000 }, 'bea');
    for (let i = 1; i <= 3; i++) {
      await runFor(s, 'bea');
      await c.until((x) => x.events.length === i * N, 3000, `run ${i}`);
    }
    const trimmed = await scraped(s, 'tracewire_resume_window_trimmed_total{reason="total_bytes"}');
    expect(trimmed).toBeGreaterThanOrEqual(N);
    const runs = await scraped(s, 'tracewire_resume_window_runs');
    expect(runs).toBeLessThan(3);
    expect(await scraped(s, 'tracewire_resume_window_bytes')).toBeLessThanOrEqual(6000);
    // Every event given up is one of the 3 runs' events that a resuming tab can no longer get.
    const tab = await connectAcked(s, 'bea', 'resume_all=1');
    await until(() => tab.events.length === 3 * N - trimmed, 3000, 'the kept events replayed');
    await new Promise((r) => setTimeout(r, 100));
    expect(tab.events).toHaveLength(3 * N - trimmed);
    expect(new Set(tab.events.map((e) => e.run_id)).size).toBe(runs);
  });
});
