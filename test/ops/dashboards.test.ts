import { describe, it, expect } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dump } from 'js-yaml';
import {
  allPanels, binaryGate, dashboardFiles, readText, readYaml, run, substituteVariables, variableValues,
  type Dashboard,
} from './support.js';

interface DatasourceFile {
  apiVersion: number;
  datasources: Array<{ name: string; uid: string; type: string; url: string; jsonData?: Record<string, any> }>;
}
interface ProviderFile {
  apiVersion: number;
  providers: Array<{ name: string; type: string; options: { path: string } }>;
}

const datasources = () => readYaml<DatasourceFile>('dashboards/provisioning/datasources/tracewire.yaml').datasources;
const promUid = () => datasources().find((d) => d.type === 'prometheus')!.uid;
const dashboards = (): Array<[string, Dashboard]> => dashboardFiles().map((f) => [f, JSON.parse(readText(f)) as Dashboard]);
const queryPanels = (d: Dashboard) => allPanels(d).filter((p) => p.type !== 'row');

describe('dashboard generator', () => {
  it('committed dashboards/grafana/*.json equal the output of dashboards/generate.mjs', () => {
    const res = run('node', ['dashboards/generate.mjs', '--stdout']);
    expect(res.status, res.stderr).toBe(0);
    const generated = JSON.parse(res.stdout) as Record<string, string>;
    expect(Object.keys(generated).map((k) => `dashboards/${k}`).sort()).toEqual(dashboardFiles());
    for (const [rel, text] of Object.entries(generated)) {
      expect(readText(`dashboards/${rel}`), `dashboards/${rel} is stale: run node dashboards/generate.mjs`).toBe(text);
    }
  });
});

describe('dashboard JSON', () => {
  it('has at least one dashboard, each valid JSON with a unique uid', () => {
    const ds = dashboards();
    expect(ds.length).toBeGreaterThan(0);
    const uids = ds.map(([, d]) => d.uid);
    expect(new Set(uids).size).toBe(uids.length);
    for (const [f, d] of ds) {
      expect(d.uid, f).toMatch(/^[a-zA-Z0-9_-]{1,40}$/);
      expect(d.title, f).toBeTruthy();
    }
  });

  it('gives every panel a unique id and every query panel targets with a PromQL expr and unique refIds', () => {
    for (const [f, d] of dashboards()) {
      const ids = allPanels(d).map((p) => p.id);
      expect(new Set(ids).size, `${f}: duplicate panel ids`).toBe(ids.length);
      expect(queryPanels(d).length).toBeGreaterThan(0);
      for (const p of queryPanels(d)) {
        expect(p.targets?.length, `${f}: panel "${p.title}" has no targets`).toBeGreaterThan(0);
        const refIds = p.targets!.map((t) => t.refId);
        expect(new Set(refIds).size, `${f}: panel "${p.title}" repeats a refId`).toBe(refIds.length);
        for (const t of p.targets!) expect(t.expr?.trim(), `${f}: panel "${p.title}" target ${t.refId}`).toBeTruthy();
      }
    }
  });

  it('references the provisioned Prometheus datasource uid on every panel and target', () => {
    const uid = promUid();
    for (const [f, d] of dashboards()) {
      for (const p of queryPanels(d)) {
        expect(p.datasource, `${f}: "${p.title}"`).toEqual({ type: 'prometheus', uid });
        for (const t of p.targets!) expect(t.datasource, `${f}: "${p.title}" ${t.refId}`).toEqual({ type: 'prometheus', uid });
      }
      for (const v of d.templating.list.filter((v) => v.type === 'query')) {
        expect((v as { datasource?: unknown }).datasource, `${f}: variable ${v.name}`).toEqual({ type: 'prometheus', uid });
      }
    }
  });

  it('uses only defined template variables, and lays panels out without overlap', () => {
    for (const [f, d] of dashboards()) {
      const values = variableValues(d);
      const cells = new Map<string, string>();
      for (const p of allPanels(d)) {
        for (const t of p.targets ?? []) expect(() => substituteVariables(t.expr!, values), f).not.toThrow();
        const { x, y, w, h } = p.gridPos;
        expect(x + w, `${f}: "${p.title}" wider than the grid`).toBeLessThanOrEqual(24);
        for (let i = x; i < x + w; i++) {
          for (let j = y; j < y + h; j++) {
            const key = `${i},${j}`;
            expect(cells.get(key), `${f}: "${p.title}" overlaps "${cells.get(key)}"`).toBeUndefined();
            cells.set(key, p.title);
          }
        }
      }
    }
  });

  it('shows the panels on-call needs', () => {
    const [, d] = dashboards().find(([, d]) => d.uid === 'tracewire-overview')!;
    const exprs = queryPanels(d).map((p) => ({ title: p.title, exprs: p.targets!.map((t) => t.expr!).join('\n') }));
    const find = (re: RegExp) => exprs.filter((p) => re.test(p.exprs)).map((p) => p.title);
    expect(find(/sum by \(verdict\) \(rate\(tracewire_runs_total/)).toContain('Run verdicts');
    expect(find(/sum by \(reason, agent\) \(rate\(tracewire_runs_total\{[^}]*verdict="missing_events"/)).toContain('Missing-event runs by reason and agent');
    expect(find(/tracewire_events_delivered_total[\s\S]*tracewire_events_emitted_total/)).toContain('Delivery ratio per event type');
    expect(find(/histogram_quantile\(0\.5,[\s\S]*histogram_quantile\(0\.99,/)).toContain('Delivery latency p50 / p99');
    expect(find(/tracewire_ws_connections\{/)).toContain('WebSocket connections');
    expect(find(/tracewire_runs_in_flight/)).toContain('In flight');
    expect(find(/tracewire_otlp_requests_total/)).toContain('OTLP requests');
    expect(find(/tracewire_otlp_spans_rejected_total/)).toContain('OTLP spans received and rejected');
    expect(find(/tracewire_broker_up[\s\S]*tracewire_broker_pending_deliveries[\s\S]*tracewire_broker_reopened_total/)).toContain('Broker and presence');
    expect(find(/tracewire_broker_messages_total/)).toContain('Broker messages');
    expect(find(/tracewire_broker_dropped_total/)).toContain('Fan-out losses');
  });

  it('links to the run inspector and runs API through ${tracewire_url}, and exemplars to Tempo', () => {
    const [, d] = dashboards().find(([, d]) => d.uid === 'tracewire-overview')!;
    const urls = [
      ...(d.links ?? []).map((l) => l.url),
      ...queryPanels(d).flatMap((p) => [...(p.links ?? []), ...(p.fieldConfig?.defaults?.links ?? [])].map((l) => l.url)),
    ];
    expect(urls).toContain('${tracewire_url}/inspector?verdict=missing_events');
    expect(urls).toContain('${tracewire_url}/inspector?verdict=missing_events&agent=${__field.labels.agent}');
    expect(urls).toContain('${tracewire_url}/api/runs?verdict=missing_events');
    expect(d.templating.list.find((v) => v.name === 'tracewire_url')?.type).toBe('textbox');
    // Exemplar -> Tempo: on the latency panel targets, resolved by the Prometheus datasource.
    const latency = queryPanels(d).find((p) => p.title === 'Delivery latency p50 / p99')!;
    expect(latency.targets!.every((t) => (t as { exemplar?: boolean }).exemplar === true)).toBe(true);
    const tempo = datasources().find((x) => x.type === 'tempo')!;
    expect(datasources().find((x) => x.type === 'prometheus')!.jsonData!.exemplarTraceIdDestinations).toEqual([{ name: 'trace_id', datasourceUid: tempo.uid }]);
    expect(urls.some((u) => u.startsWith('/explore?') && u.includes(encodeURIComponent(tempo.uid)))).toBe(true);
  });
});

describe('Grafana provisioning', () => {
  it('provisions Prometheus and Tempo with fixed uids and compose service URLs', () => {
    const file = readYaml<DatasourceFile>('dashboards/provisioning/datasources/tracewire.yaml');
    expect(file.apiVersion).toBe(1);
    const byType = Object.fromEntries(file.datasources.map((d) => [d.type, d]));
    expect(byType.prometheus).toMatchObject({ uid: 'tracewire-prometheus', url: 'http://prometheus:9090' });
    expect(byType.tempo).toMatchObject({ uid: 'tracewire-tempo', url: 'http://tempo:3200' });
    const uids = file.datasources.map((d) => d.uid);
    expect(new Set(uids).size).toBe(uids.length);
  });

  it('loads dashboards from the directory docker-compose.yml mounts dashboards/grafana on', () => {
    const prov = readYaml<ProviderFile>('dashboards/provisioning/dashboards/tracewire.yaml');
    expect(prov.apiVersion).toBe(1);
    expect(prov.providers).toHaveLength(1);
    expect(prov.providers[0]!.type).toBe('file');
    const compose = readYaml<{ services: Record<string, { volumes?: string[] }> }>('docker-compose.yml');
    const mounts = compose.services.grafana!.volumes ?? [];
    expect(mounts).toContain(`./dashboards/grafana:${prov.providers[0]!.options.path}:ro`);
  });
});

const promtool = binaryGate('promtool');

describe.skipIf(promtool.skip)('dashboard PromQL', () => {
  it('parses every panel expression (as recording rules, via promtool check rules)', () => {
    const rules: Array<{ record: string; expr: string }> = [];
    for (const [, d] of dashboards()) {
      const values = variableValues(d);
      for (const p of queryPanels(d)) {
        for (const t of p.targets!) rules.push({ record: `dashboard:panel${p.id}:${t.refId}`, expr: substituteVariables(t.expr!, values) });
      }
    }
    const dir = mkdtempSync(join(tmpdir(), 'tw-dash-'));
    try {
      const file = join(dir, 'panels.yml');
      writeFileSync(file, dump({ groups: [{ name: 'dashboard-panels', rules }] }));
      const res = run('promtool', ['check', 'rules', file]);
      expect(res.status, res.stdout + res.stderr).toBe(0);
      expect(res.stdout).toContain(`SUCCESS: ${rules.length} rules found`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('counts the first missing-events run of a new label set in the "Missing events, client connected" stat, as the alert does', () => {
    const [, d] = dashboards().find(([f]) => f.endsWith('tracewire-overview.json'))!;
    const panel = allPanels(d).find((p) => p.title === 'Missing events, client connected')!;
    const over = (range: string): string => substituteVariables(panel.targets![0]!.expr!.replaceAll('$__range', range), variableValues(d));
    const dir = mkdtempSync(join(tmpdir(), 'tw-dash-'));
    try {
      const series = (reason: string, values: string) => ({ series: `tracewire_runs_total{job="tracewire",instance="tw-1:8080",verdict="missing_events",reason="${reason}",agent="planner"}`, values });
      writeFileSync(join(dir, 'stat.test.yml'), dump({
        rule_files: [],
        evaluation_interval: '1m',
        tests: [{
          interval: '1m',
          input_series: [
            // Existed before the range, 2 more runs within it.
            series('send_failed', '4x40 6x40'),
            // First appears within the range at 1 (one run), which increase() cannot see.
            series('unauthorised', '_x50 1x30'),
            // Nobody listening: not counted.
            series('no_subscriber', '_x50 9x30'),
          ],
          promql_expr_test: [
            { expr: `round(${over('30m')})`, eval_time: '70m', exp_samples: [{ labels: '{}', value: 3 }] },
            // Nothing in the range: 0, not "no data".
            { expr: `round(${over('5m')})`, eval_time: '79m', exp_samples: [{ labels: '{}', value: 0 }] },
          ],
        }],
      }));
      const res = run('promtool', ['test', 'rules', 'stat.test.yml'], { cwd: dir });
      expect(res.status, res.stdout + res.stderr).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
