import { describe, it, expect } from 'vitest';
import { existsSync, statSync } from 'node:fs';
import { boundsMemory, boundsMemoryWarning, resolveConfig } from '../../src/config/Config.js';
import { readText, readYaml, repoPath, run } from './support.js';

type Section = Record<string, any>;
const compose = (): Section => readYaml<Section>('docker-compose.yml');

/** Short-syntax volume `src:dst[:mode]` split; src is a bind mount when it starts with . or /. */
function parseVolume(v: string): { src: string; dst: string; mode?: string; bind: boolean } {
  const [src, dst, mode] = v.split(':') as [string, string, string | undefined];
  return { src, dst, mode, bind: src.startsWith('.') || src.startsWith('/') };
}

/** The instructions of the Dockerfile, continuation lines joined. */
function dockerfile(): Array<{ op: string; args: string }> {
  return readText('Dockerfile')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => {
      const [op, ...rest] = l.split(/\s+/);
      return { op: op!.toUpperCase(), args: rest.join(' ') };
    });
}

describe('docker-compose.yml', () => {
  it('passes dclint (compose-spec schema and lint rules) with exit code 0', () => {
    const res = run(process.execPath, [repoPath('node_modules', 'dclint', 'bin', 'dclint.cjs'), 'docker-compose.yml', '--max-warnings', '0'], { timeoutMs: 60_000 });
    expect(res.status, res.stdout + res.stderr).toBe(0);
  });

  it('runs the whole staging stack', () => {
    expect(Object.keys(compose().services).sort()).toEqual(['grafana', 'otel-collector', 'prometheus', 'tempo', 'tracewire']);
  });

  it('mounts only files and directories that exist in the repository, read-only', () => {
    const c = compose();
    const named = new Set(Object.keys(c.volumes ?? {}));
    for (const [name, svc] of Object.entries<Section>(c.services)) {
      for (const v of (svc.volumes ?? []) as string[]) {
        const vol = parseVolume(v);
        if (vol.bind) {
          expect(existsSync(repoPath(vol.src)), `${name}: ${vol.src} does not exist`).toBe(true);
          expect(vol.mode, `${name}: ${vol.src} should be :ro`).toBe('ro');
        } else {
          expect(named.has(vol.src), `${name}: volume ${vol.src} is not declared`).toBe(true);
        }
      }
    }
  });

  it('pins every image to a version', () => {
    for (const [name, svc] of Object.entries<Section>(compose().services)) {
      if (svc.build) continue;
      expect(svc.image, name).toMatch(/^[\w./-]+:v?\d+\.\d+\.\d+$/);
    }
  });

  it('builds tracewire from the Dockerfile and runs `serve` on all interfaces with the JWT secret from the environment', () => {
    const tw = compose().services.tracewire;
    expect(tw.build).toEqual({ context: '.', dockerfile: 'Dockerfile' });
    const entrypoint = JSON.parse(dockerfile().find((i) => i.op === 'ENTRYPOINT')!.args) as string[];
    expect([...entrypoint, ...tw.command]).toEqual(['node', 'bin/tracewire.js', 'serve', '--listen', '0.0.0.0:8080', '--otlp-listen', '0.0.0.0:4318']);
    expect(tw.environment.TRACEWIRE_JWT_SECRET).toMatch(/^\$\{TRACEWIRE_JWT_SECRET:\?[^}]*\}$/);
    expect(tw.ports).toEqual(['0.0.0.0:8080:8080']);
    expect(tw.healthcheck.test.join(' ')).toContain('http://127.0.0.1:8080/healthz');
    expect(tw.environment.TRACEWIRE_TRACE_URL).toContain('{trace_id}');
    expect(tw.environment.TRACEWIRE_TRACE_URL).not.toContain('$');
  });

  it('gives tracewire a heap its default bounds fit in (no start-up memory warning)', () => {
    const m = /^\$\{TRACEWIRE_NODE_OPTIONS:-(.*)\}$/.exec(compose().services.tracewire.environment.NODE_OPTIONS as string);
    expect(m).not.toBeNull();
    const mib = Number(/^--max-old-space-size=(\d+)$/.exec(m![1]!)?.[1]);
    expect(mib).toBeGreaterThan(0);
    // V8's heap limit is the old space plus the young generation: the old space alone is the safe side.
    expect(boundsMemoryWarning(resolveConfig({}), mib * 2 ** 20)).toBeUndefined();
    expect(boundsMemory(resolveConfig({})).total).toBeLessThan(mib * 2 ** 20 * 0.9);
  });

  it('has a Dockerfile whose COPY sources exist and whose CMD matches the compose command', () => {
    const steps = dockerfile();
    expect(steps[0]).toEqual({ op: 'FROM', args: 'node:20-slim AS build' });
    for (const s of steps.filter((i) => i.op === 'COPY' && !i.args.startsWith('--from'))) {
      const parts = s.args.split(/\s+/);
      for (const src of parts.slice(0, -1)) expect(existsSync(repoPath(src)), `COPY ${src}`).toBe(true);
    }
    expect(steps.some((s) => s.op === 'RUN' && s.args.includes('npm ci') )).toBe(true);
    expect(steps.some((s) => s.op === 'RUN' && s.args.includes('npm run build'))).toBe(true);
    expect(JSON.parse(steps.find((i) => i.op === 'CMD')!.args)).toEqual(compose().services.tracewire.command);
    expect(readText('bin/tracewire.js')).toContain('../dist/surfaces/cli.js');
  });

  it('gives Prometheus its config and the alert rules side by side, with exemplar storage', () => {
    const p = compose().services.prometheus;
    const mounts = (p.volumes as string[]).map(parseVolume);
    const dst = (src: string) => mounts.find((m) => m.src === src)?.dst;
    expect(dst('./prometheus/prometheus.yml')).toBe('/etc/prometheus/prometheus.yml');
    expect(dst('./prometheus/alerts.yml')).toBe('/etc/prometheus/alerts.yml');
    expect(p.command).toContain('--config.file=/etc/prometheus/prometheus.yml');
    expect(p.command).toContain('--enable-feature=exemplar-storage');
    const prom = readYaml<Section>('prometheus/prometheus.yml');
    const services = Object.keys(compose().services);
    for (const job of prom.scrape_configs) {
      for (const target of job.static_configs[0].targets as string[]) {
        const host = target.split(':')[0]!;
        if (host !== 'localhost') expect(services, `${job.job_name} -> ${target}`).toContain(host);
      }
    }
  });

  it('provisions Grafana with the datasources, the dashboard provider and the dashboards', () => {
    const g = compose().services.grafana;
    const mounts = (g.volumes as string[]).map(parseVolume);
    const dst = (src: string) => mounts.find((m) => m.src === src)?.dst;
    expect(dst('./dashboards/provisioning/datasources')).toBe('/etc/grafana/provisioning/datasources');
    expect(dst('./dashboards/provisioning/dashboards')).toBe('/etc/grafana/provisioning/dashboards');
    const home = g.environment.GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH as string;
    const dashDir = dst('./dashboards/grafana')!;
    expect(home.startsWith(dashDir + '/')).toBe(true);
    expect(statSync(repoPath('dashboards/grafana', home.slice(dashDir.length + 1))).isFile()).toBe(true);
  });

  it('mounts the collector and Tempo configs where their commands read them', () => {
    const c = compose().services;
    const col = (c['otel-collector'].volumes as string[]).map(parseVolume);
    expect(c['otel-collector'].command).toEqual([`--config=${col.find((m) => m.src === './otel-collector.yaml')!.dst}`]);
    const tempo = (c.tempo.volumes as string[]).map(parseVolume);
    expect(c.tempo.command).toEqual([`-config.file=${tempo.find((m) => m.src === './tempo/tempo.yaml')!.dst}`]);
    expect(c['otel-collector'].depends_on.tracewire.condition).toBe('service_healthy');
  });
});
