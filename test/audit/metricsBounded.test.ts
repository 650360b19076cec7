import type { Tracer } from '@opentelemetry/api';
import { afterEach, describe, expect, it } from 'vitest';
import { runDemoAgent } from '../../src/demo/demoAgent.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, inProcessTracer, startTestSidecar, until } from '../helpers.js';
import { judged, runIdOf } from './support.js';

let sc: Sidecar | undefined;
afterEach(async () => {
  await sc?.close();
  sc = undefined;
});

const MAX_AGENT_LABELS = 20;

async function scrape(s: Sidecar, accept?: string): Promise<{ contentType: string; text: string }> {
  const res = await fetch(`${s.publicUrl}/metrics`, { headers: accept ? { accept } : {} });
  expect(res.status).toBe(200);
  return { contentType: res.headers.get('content-type') ?? '', text: await res.text() };
}

const samples = (text: string): string[] => text.split('\n').filter((l) => l !== '' && !l.startsWith('#'));

/** Label values of `label` on samples of `metric`. */
function labelValues(text: string, metric: string, label: string): Set<string> {
  const out = new Set<string>();
  const re = new RegExp(`^${metric}\\{[^}]*\\b${label}="([^"]*)"`);
  for (const l of samples(text)) {
    const m = re.exec(l);
    if (m) out.add(m[1]!);
  }
  return out;
}

/** Runs made of one invoke_agent span each, every one with its own agent name and user. */
async function tinyRuns(tracer: Tracer, from: number, to: number): Promise<void> {
  for (let i = from; i < to; i++) {
    const id = String(i).padStart(5, '0');
    tracer.startSpan(`invoke_agent agent-${id}`, { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': `agent-${id}`, 'user.id': `user-${id}` } }).end();
    if (i % 500 === 499) await new Promise((r) => setImmediate(r));
  }
}

describe('metrics stay bounded', () => {
  it('10,000 distinct agent names and users leave the number of series bounded and no ids in /metrics', async () => {
    let verdicts = 0;
    sc = await startTestSidecar({ maxAgentLabels: MAX_AGENT_LABELS, graceMillis: 20, onVerdict: () => verdicts++ });
    const s = sc;
    const { tracer } = inProcessTracer(sc);

    await tinyRuns(tracer, 0, 1000);
    await until(() => verdicts === 1000, 10_000, '1,000 verdicts');
    const first = await scrape(s);

    await tinyRuns(tracer, 1000, 10_000);
    await until(() => verdicts === 10_000, 15_000, '10,000 verdicts');
    const { contentType, text } = await scrape(s);
    expect(contentType).toContain('text/plain; version=0.0.4');

    // Same series after 1,000 and after 10,000 distinct agents/users: nothing grows with them.
    const lines = samples(text);
    expect(lines.length).toBe(samples(first.text).length);
    expect(lines.length).toBeLessThan(300);

    // Agent label: the first MAX_AGENT_LABELS names, then "other".
    const agents = labelValues(text, 'tracewire_runs_total', 'agent');
    expect(agents.size).toBe(MAX_AGENT_LABELS + 1);
    expect(agents.has('other')).toBe(true);
    for (const a of agents) if (a !== 'other') expect(a).toMatch(/^agent-000(0\d|1\d)$/);
    const total = (re: RegExp): number => lines.filter((l) => re.test(l)).reduce((n, l) => n + Number(l.split(' ').at(-1)), 0);
    expect(total(/^tracewire_runs_total\{/)).toBe(10_000);
    expect(total(/^tracewire_runs_total\{[^}]*agent="other"/)).toBe(10_000 - MAX_AGENT_LABELS);
    expect(total(/^tracewire_lifecycle_spans_total\{kind="agent"\}/)).toBe(10_000);

    // No user, run or trace ids and no uncapped agent names in the plain text format (it carries no exemplars).
    expect(text).not.toMatch(/user-\d{5}/);
    expect(text).not.toMatch(/[0-9a-f]{32}/);
    expect(text).not.toMatch(/[0-9a-f]{16}/);
    expect(text).not.toContain('agent-00020');
    expect(text).not.toContain('agent-09999');
    expect(text).not.toContain(' # {');

    // The judged runs kept for the API are bounded too (default runsMaxCount 10000).
    expect(s.tw.ledger.judgedCount).toBeLessThanOrEqual(s.tw.config.runsMaxCount);
    expect(s.tw.ledger.inFlightCount).toBe(0);
  });

  it('OpenMetrics scrapes carry trace_id exemplars on the delivery histogram after a delivered run', async () => {
    sc = await startTestSidecar();
    const { tracer } = inProcessTracer(sc);
    await connectAcked(sc, 'alice');
    const ids = await runDemoAgent(tracer, { user: 'alice' });
    await judged(sc, runIdOf(ids));

    const om = await scrape(sc, 'application/openmetrics-text; version=1.0.0');
    expect(om.contentType).toContain('application/openmetrics-text');
    expect(om.text.trimEnd().endsWith('# EOF')).toBe(true);
    const withExemplar = om.text.split('\n').filter((l) => l.startsWith('tracewire_event_delivery_seconds_bucket{') && l.includes(' # {'));
    expect(withExemplar.length).toBeGreaterThan(0);
    for (const l of withExemplar) expect(l).toMatch(/ # \{trace_id="[0-9a-f]{32}"\} [0-9.e-]+ [0-9.]+$/);
    expect(withExemplar.some((l) => l.includes(`trace_id="${ids.traceId}"`))).toBe(true);
    // Exemplars only there: no other sample carries one.
    expect(om.text.split('\n').filter((l) => l.includes(' # {') && !l.startsWith('tracewire_event_delivery_seconds_bucket{'))).toEqual([]);

    const plain = await scrape(sc);
    expect(plain.text).not.toContain(ids.traceId);
    expect(plain.text).not.toContain('alice');
  });
});

describe('the OpenMetrics exposition Prometheus asks for', () => {
  it('names each metric family once (a gauge X and a counter X_total would both be family X)', async () => {
    sc = await startTestSidecar();
    const res = await fetch(`${sc.publicUrl}/metrics`, { headers: { accept: 'application/openmetrics-text; version=1.0.0' } });
    expect(res.headers.get('content-type')).toMatch(/^application\/openmetrics-text/);
    const families = (await res.text())
      .split('\n')
      .filter((l) => l.startsWith('# TYPE '))
      .map((l) => l.split(' ')[2]!);
    expect(families.length).toBeGreaterThan(20);
    expect(families.filter((f, i) => families.indexOf(f) !== i)).toEqual([]);
  });
});
