// Shared helpers for the operations-bundle tests (test/ops/*.test.ts).
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { accessSync, constants, readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { load } from 'js-yaml';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

export const repoPath = (...parts: string[]): string => join(ROOT, ...parts);

export function readText(rel: string): string {
  return readFileSync(repoPath(rel), 'utf8');
}

export function readYaml<T = any>(rel: string): T {
  return load(readText(rel)) as T;
}

/** Absolute path of an executable on PATH, or undefined. */
export function which(bin: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, bin);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      /* not here */
    }
  }
  return undefined;
}

/**
 * Tests that need an external binary (promtool, prometheus) are skipped when it
 * is missing on a developer machine, and fail in CI (process.env.CI set).
 */
export function binaryGate(bin: string): { path: string | undefined; skip: boolean; missingInCi: boolean } {
  const path = which(bin);
  return { path, skip: path === undefined, missingInCi: path === undefined && !!process.env.CI };
}

export function run(cmd: string, args: readonly string[], opts: { cwd?: string; timeoutMs?: number } = {}): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { cwd: opts.cwd ?? ROOT, encoding: 'utf8', timeout: opts.timeoutMs ?? 60_000 });
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolvePort(port));
    });
  });
}

export interface DashboardPanel {
  id: number;
  type: string;
  title: string;
  datasource?: { type: string; uid: string };
  targets?: Array<{ refId: string; expr?: string; datasource?: { type: string; uid: string } }>;
  gridPos: { h: number; w: number; x: number; y: number };
  links?: Array<{ title: string; url: string }>;
  fieldConfig?: { defaults?: { links?: Array<{ title: string; url: string }> } };
  panels?: DashboardPanel[];
}

export interface Dashboard {
  uid: string;
  title: string;
  panels: DashboardPanel[];
  templating: { list: Array<{ name: string; type: string; allValue?: string; query?: unknown }> };
  links?: Array<{ title: string; url: string }>;
}

/** The dashboards Grafana loads (dashboards/grafana/*.json), by file name. */
export function dashboardFiles(): string[] {
  return readdirSync(repoPath('dashboards', 'grafana'))
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => `dashboards/grafana/${f}`);
}

/** All panels, including those nested in collapsed rows. */
export function allPanels(d: Dashboard): DashboardPanel[] {
  return d.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
}

/** Grafana built-in interval variables, replaced by values a plain Prometheus query accepts. */
export const BUILTIN_SUBSTITUTIONS: Readonly<Record<string, string>> = {
  __rate_interval: '1m',
  __interval: '15s',
  __range: '5m',
};

/**
 * Replace Grafana variables in a PromQL expression: built-ins by fixed
 * durations, template variables by `values` (e.g. the variable's allValue).
 * Throws on a variable it does not know, so a typo cannot pass silently.
 */
export function substituteVariables(expr: string, values: Readonly<Record<string, string>>): string {
  return expr.replace(/\$\{(\w+)(?::\w+)?\}|\$(\w+)/g, (_m, braced: string | undefined, bare: string | undefined) => {
    const name = (braced ?? bare)!;
    const v = BUILTIN_SUBSTITUTIONS[name] ?? values[name];
    if (v === undefined) throw new Error(`unknown Grafana variable $${name} in: ${expr}`);
    return v;
  });
}

/** Value for each template variable of a dashboard: its allValue, else its default. */
export function variableValues(d: Dashboard): Record<string, string> {
  const values: Record<string, string> = {};
  for (const v of d.templating.list) {
    if (v.allValue !== undefined) values[v.name] = v.allValue;
    else if (typeof v.query === 'string') values[v.name] = v.query;
  }
  return values;
}
