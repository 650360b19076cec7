import { Histogram, Registry, type OpenMetricsContentType } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { HotHistogram } from '../../src/audit/Metrics.js';

const BOUNDS = [0.00001, 0.0001, 0.001, 0.01, 0.1, 1];
const VALUES = [0.000005, 0.00001, 0.00002, 0.0005, 0.0005, 0.003, 0.2, 0.999, 1, 3.5, 42];

function registries(): { ours: Registry; theirs: Registry } {
  const ours = new Registry();
  const theirs = new Registry();
  return { ours, theirs };
}

describe('HotHistogram (the delivery histogram)', () => {
  it('renders exactly what a prom-client Histogram renders for the same observations (Prometheus text)', async () => {
    const { ours, theirs } = registries();
    const hot = new HotHistogram('x_seconds', 'help text', 'type', BOUNDS, [ours]);
    const ref = new Histogram({ name: 'x_seconds', help: 'help text', labelNames: ['type'], buckets: BOUNDS, registers: [theirs] });
    VALUES.forEach((v, i) => {
      const type = i % 3 === 0 ? 'agent_started' : 'tool_completed';
      hot.observe(type, v);
      ref.observe({ type }, v);
    });
    hot.observe('agent_started', Number.NaN); // ignored (prom-client refuses it with a TypeError)
    expect(await ours.metrics()).toBe(await theirs.metrics());
    expect(await ours.getMetricsAsJSON()).toEqual(await theirs.getMetricsAsJSON());
  });

  it('renders OpenMetrics exemplars on the bucket of the observation, the latest one per bucket', async () => {
    const ours = new Registry<OpenMetricsContentType>();
    ours.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
    const theirs = new Registry<OpenMetricsContentType>();
    theirs.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
    const hot = new HotHistogram('x_seconds', 'help text', 'type', BOUNDS, [ours as unknown as Registry]);
    const ref = new Histogram({ name: 'x_seconds', help: 'help text', labelNames: ['type'], buckets: BOUNDS, enableExemplars: true, registers: [theirs as unknown as Registry] });
    VALUES.forEach((v, i) => {
      const ex = i % 2 === 0 ? { trace_id: `t${i}` } : undefined;
      hot.observe('agent_started', v, ex);
      ref.observe({ labels: { type: 'agent_started' }, value: v, exemplarLabels: (ex ?? {}) as Record<string, string> as never });
    });
    // Exemplar timestamps are the observation time: compare without them.
    const strip = (s: string): string => s.replace(/ (\d+(\.\d+)?)$/gm, (m, ts: string) => (Number(ts) > 1e9 ? ' <ts>' : m));
    const a = strip(await ours.metrics());
    expect(a).toBe(strip(await theirs.metrics()));
    expect(a).toContain('x_seconds_bucket{le="0.001",type="agent_started"} 5 # {trace_id="t4"} 0.0005 <ts>');
    expect(a).toContain('x_seconds_bucket{le="+Inf",type="agent_started"} 11 # {trace_id="t10"} 42 <ts>');
  });
});
