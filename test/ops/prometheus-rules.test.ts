import { describe, it, expect } from 'vitest';
import { binaryGate, readText, readYaml, repoPath, run } from './support.js';

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface RuleFile {
  groups: Array<{ name: string; rules: Rule[] }>;
}
interface RuleTestFile {
  rule_files: string[];
  tests: Array<{ name: string; alert_rule_test?: Array<{ alertname: string; eval_time: string; exp_alerts?: unknown[] }> }>;
}

const alerts = (): Rule[] => readYaml<RuleFile>('prometheus/alerts.yml').groups.flatMap((g) => g.rules).filter((r) => r.alert);

const promtool = binaryGate('promtool');

describe('prometheus/alerts.yml content', () => {
  it('covers the alerts the on-call runbook describes', () => {
    expect(alerts().map((r) => r.alert).sort()).toEqual([
      'TracewireBrokerDown',
      'TracewireCapacityEvictions',
      'TracewireDeliveryRatioLow',
      'TracewireDown',
      'TracewireInternalErrors',
      'TracewireLifecycleSpansAbsent',
      'TracewireMetricsAbsent',
      'TracewireMissingEventsWhileConnected',
      'TracewireOtlpRequestsRejected',
      'TracewireOtlpSpansRejected',
      'TracewireRunsAbandoned',
    ]);
  });

  it('gives every alert a severity and summary, description and runbook annotations', () => {
    for (const r of alerts()) {
      expect(['critical', 'warning'], r.alert).toContain(r.labels?.severity);
      expect(r.annotations?.summary, r.alert).toBeTruthy();
      expect(r.annotations?.description, r.alert).toBeTruthy();
      expect(r.annotations?.runbook, r.alert).toMatch(/^docs\/operations\.md#[a-z0-9-]+$/);
    }
  });

  it('points every runbook at an existing section of docs/operations.md', () => {
    // GitHub-style anchors of the markdown headings.
    const anchors = new Set(
      readText('docs/operations.md')
        .split('\n')
        .filter((l) => /^#{1,6} /.test(l))
        .map((l) => l.replace(/^#+ /, '').trim().toLowerCase().replace(/[^\w\- ]/g, '').replace(/ /g, '-')),
    );
    for (const r of alerts()) {
      const anchor = r.annotations!.runbook!.split('#')[1]!;
      expect(anchors.has(anchor), `${r.alert}: no heading for #${anchor} in docs/operations.md`).toBe(true);
    }
  });

  it('pages (critical) on missing events only when a client was connected', () => {
    const r = alerts().find((a) => a.alert === 'TracewireMissingEventsWhileConnected')!;
    expect(r.labels!.severity).toBe('critical');
    expect(r.expr).toContain('verdict="missing_events"');
    expect(r.expr).toContain('reason!="no_subscriber"');
  });

  it('has a unit test where each alert fires and one where it does not', () => {
    const tests = readYaml<RuleTestFile>('prometheus/alerts.test.yml');
    expect(tests.rule_files).toEqual(['alerts.yml']);
    const cases = tests.tests.flatMap((t) => t.alert_rule_test ?? []);
    for (const r of alerts()) {
      const mine = cases.filter((c) => c.alertname === r.alert);
      expect(mine.some((c) => (c.exp_alerts ?? []).length > 0), `${r.alert} never expected to fire`).toBe(true);
      expect(mine.some((c) => (c.exp_alerts ?? []).length === 0), `${r.alert} never expected to stay quiet`).toBe(true);
    }
  });

  it('scrapes tracewire under job="tracewire", the job the alerts select', () => {
    const cfg = readYaml<{ rule_files: string[]; scrape_configs: Array<{ job_name: string; static_configs: Array<{ targets: string[] }> }> }>('prometheus/prometheus.yml');
    expect(cfg.rule_files).toEqual(['alerts.yml']);
    const job = cfg.scrape_configs.find((s) => s.job_name === 'tracewire');
    expect(job?.static_configs[0]!.targets).toEqual(['tracewire:8080']);
    for (const r of alerts()) {
      const jobs = [...r.expr.matchAll(/job="([^"]+)"/g)].map((m) => m[1]);
      for (const j of jobs) expect(j, r.alert).toBe('tracewire');
    }
  });
});

describe.skipIf(promtool.skip)('promtool', () => {
  it('accepts prometheus/prometheus.yml (check config, no DNS needed)', () => {
    const res = run('promtool', ['check', 'config', 'prometheus/prometheus.yml']);
    expect(res.status, res.stdout + res.stderr).toBe(0);
  });

  it('accepts prometheus/alerts.yml (check rules)', () => {
    const res = run('promtool', ['check', 'rules', 'prometheus/alerts.yml']);
    expect(res.status, res.stdout + res.stderr).toBe(0);
    expect(res.stdout).toContain(`SUCCESS: ${alerts().length} rules found`);
  });

  it('passes the alert unit tests (test rules prometheus/alerts.test.yml)', () => {
    const res = run('promtool', ['test', 'rules', 'alerts.test.yml'], { cwd: repoPath('prometheus') });
    expect(res.status, res.stdout + res.stderr).toBe(0);
    expect(res.stdout).toContain('SUCCESS');
  });
});

describe.runIf(promtool.missingInCi)('promtool in CI', () => {
  it('is installed', () => {
    throw new Error('promtool is not on PATH; CI must install Prometheus (e.g. apt-get install prometheus)');
  });
});
