import { describe, it, expect } from 'vitest';
import { load } from 'js-yaml';
import { readText, readYaml } from './support.js';

type Section = Record<string, any>;
interface CollectorConfig {
  extensions?: Section;
  receivers?: Section;
  processors?: Section;
  exporters?: Section;
  connectors?: Section;
  service: {
    extensions?: string[];
    pipelines: Record<string, { receivers?: string[]; processors?: string[]; exporters?: string[] }>;
    telemetry?: Section;
  };
}

const FILE = 'otel-collector.yaml';
const main = (): CollectorConfig => readYaml<CollectorConfig>(FILE);

/** The YAML between `# BEGIN name` and `# END name` in the collector file, uncommented. */
function commentedBlock(name: string): Section {
  const lines = readText(FILE).split('\n');
  const begin = lines.indexOf(`# BEGIN ${name}`);
  const end = lines.indexOf(`# END ${name}`);
  expect(begin, `# BEGIN ${name}`).toBeGreaterThanOrEqual(0);
  expect(end, `# END ${name}`).toBeGreaterThan(begin);
  const body = lines.slice(begin + 1, end).map((l) => {
    expect(l.startsWith('#'), `uncommented line inside ${name}: ${l}`).toBe(true);
    return l.replace(/^# ?/, '');
  });
  return load(body.join('\n')) as Section;
}

const KNOWN_TYPES: Record<string, readonly string[]> = {
  receivers: ['otlp'],
  processors: ['memory_limiter', 'batch'],
  exporters: ['otlp', 'otlphttp', 'loadbalancing', 'debug'],
  extensions: ['health_check'],
};
const typeOf = (id: string) => id.split('/')[0]!;

/** Problems with a collector config: unknown types, dangling references, pipelines without receivers or exporters. */
function problems(cfg: CollectorConfig): string[] {
  const out: string[] = [];
  for (const kind of ['receivers', 'processors', 'exporters', 'extensions'] as const) {
    for (const id of Object.keys(cfg[kind] ?? {})) {
      if (!/^[a-z_]+(\/[\w.-]+)?$/.test(id)) out.push(`${kind}: bad component id "${id}"`);
      if (!KNOWN_TYPES[kind]!.includes(typeOf(id))) out.push(`${kind}: unknown component type "${typeOf(id)}" (${id})`);
    }
  }
  const pipelines = Object.entries(cfg.service?.pipelines ?? {});
  if (pipelines.length === 0) out.push('service.pipelines is empty');
  const used = { receivers: new Set<string>(), processors: new Set<string>(), exporters: new Set<string>() };
  for (const [name, p] of pipelines) {
    if (!/^(traces|metrics|logs)(\/[\w.-]+)?$/.test(name)) out.push(`pipeline "${name}": not traces|metrics|logs[/name]`);
    if (!p.receivers?.length) out.push(`pipeline "${name}": no receivers`);
    if (!p.exporters?.length) out.push(`pipeline "${name}": no exporters`);
    for (const kind of ['receivers', 'processors', 'exporters'] as const) {
      for (const id of p[kind] ?? []) {
        used[kind].add(id);
        if (!(cfg[kind] && id in cfg[kind]!)) out.push(`pipeline "${name}": ${kind} "${id}" is not defined`);
      }
    }
  }
  for (const kind of ['receivers', 'exporters'] as const) {
    for (const id of Object.keys(cfg[kind] ?? {})) if (!used[kind].has(id)) out.push(`${kind} "${id}" is defined but in no pipeline`);
  }
  for (const id of cfg.service?.extensions ?? []) if (!(cfg.extensions && id in cfg.extensions)) out.push(`service.extensions: "${id}" is not defined`);
  return out;
}

/** host:port with a 1..65535 port. */
function hostPort(s: string): { host: string; port: number } {
  const m = /^([\w.-]+|\[[0-9a-f:]+\]):(\d{1,5})$/.exec(s);
  expect(m, `"${s}" is not host:port`).not.toBeNull();
  const port = Number(m![2]);
  expect(port).toBeGreaterThan(0);
  expect(port).toBeLessThanOrEqual(65535);
  return { host: m![1]!, port };
}

function httpUrl(s: string): URL {
  const u = new URL(s);
  expect(['http:', 'https:']).toContain(u.protocol);
  expect(u.hostname).toBeTruthy();
  return u;
}

describe('otel-collector.yaml', () => {
  it('is a consistent collector config: every pipeline references defined components', () => {
    expect(problems(main())).toEqual([]);
  });

  it('receives OTLP on gRPC 4317 and HTTP 4318 on all interfaces (inside its container)', () => {
    const otlp = main().receivers!.otlp.protocols;
    expect(hostPort(otlp.grpc.endpoint)).toEqual({ host: '0.0.0.0', port: 4317 });
    expect(hostPort(otlp.http.endpoint)).toEqual({ host: '0.0.0.0', port: 4318 });
  });

  it('exports to tracewire over OTLP/HTTP at http://tracewire:4318, unbatched', () => {
    const cfg = main();
    const ep = httpUrl(cfg.exporters!['otlphttp/tracewire'].endpoint);
    expect(ep.href).toBe('http://tracewire:4318/');
    const pipeline = Object.values(cfg.service.pipelines).find((p) => p.exporters?.includes('otlphttp/tracewire'))!;
    expect(pipeline.receivers).toEqual(['otlp']);
    // A batch processor would hold span starts back and delay the live events.
    expect((pipeline.processors ?? []).some((id) => typeOf(id) === 'batch')).toBe(false);
  });

  it('keeps a trace\'s requests in order (one queue consumer) and sends the ingest token compose gives tracewire', () => {
    const exp = main().exporters!['otlphttp/tracewire'];
    expect(exp.sending_queue.num_consumers).toBe(1);
    expect(exp.headers).toEqual({ authorization: 'Bearer ${env:TRACEWIRE_OTLP_TOKEN}' });
    const compose = readYaml<Section>('docker-compose.yml');
    for (const svc of ['tracewire', 'otel-collector']) expect(compose.services[svc].environment.TRACEWIRE_OTLP_TOKEN, svc).toBe('${TRACEWIRE_OTLP_TOKEN:-}');
  });

  it('exports to Tempo over OTLP/gRPC on the port Tempo listens on', () => {
    const cfg = main();
    const exp = cfg.exporters!['otlp/tempo'];
    expect(hostPort(exp.endpoint)).toEqual({ host: 'tempo', port: 4317 });
    expect(exp.tls?.insecure).toBe(true);
    const tempo = readYaml<Section>('tempo/tempo.yaml');
    expect(hostPort(tempo.distributor.receivers.otlp.protocols.grpc.endpoint).port).toBe(4317);
  });

  it('matches the tracewire OTLP listener of docker-compose.yml', () => {
    const compose = readYaml<Section>('docker-compose.yml');
    const cmd: string[] = compose.services.tracewire.command;
    expect(cmd[cmd.indexOf('--otlp-listen') + 1]).toBe('0.0.0.0:4318');
    for (const id of Object.keys(main().exporters!)) {
      const ep: string = main().exporters![id].endpoint;
      const host = ep.includes('://') ? new URL(ep).hostname : hostPort(ep).host;
      expect(Object.keys(compose.services), `${id} -> ${host}`).toContain(host);
    }
  });

  it('exposes its own metrics on 8888 for the Prometheus otel-collector job', () => {
    const reader = main().service.telemetry!.metrics.readers[0].pull.exporter.prometheus;
    expect(reader).toEqual({ host: '0.0.0.0', port: 8888 });
    const prom = readYaml<Section>('prometheus/prometheus.yml');
    const job = prom.scrape_configs.find((s: Section) => s.job_name === 'otel-collector');
    expect(job.static_configs[0].targets).toEqual(['otel-collector:8888']);
  });
});

describe('otel-collector.yaml, commented load-balancing variant', () => {
  it('routes by traceID with the loadbalancing exporter and a DNS resolver', () => {
    const gw = commentedBlock('loadbalancing-gateway');
    const lb = gw.exporters['loadbalancing/tracewire'];
    expect(lb.routing_key).toBe('traceID');
    expect(Object.keys(lb.protocol)).toEqual(['otlp']);
    expect(Object.keys(lb.resolver)).toEqual(['dns']);
    expect(lb.resolver.dns.hostname).toMatch(/^[a-z0-9.-]+$/);
    expect(lb.resolver.dns.port).toBe(4317);
    // Parallel consumers (the exporter's default is 10) would reorder a trace's requests.
    expect(lb.protocol.otlp.sending_queue.num_consumers).toBe(1);
  });

  it('is a consistent config once uncommented into the main file', () => {
    const base = main();
    const gw = commentedBlock('loadbalancing-gateway');
    const merged: CollectorConfig = {
      ...base,
      exporters: { ...base.exporters, ...gw.exporters },
      service: { ...base.service, pipelines: { ...base.service.pipelines, ...gw.service.pipelines } },
    };
    // otlphttp/tracewire is replaced by the load balancer, so it leaves the config too.
    delete merged.exporters!['otlphttp/tracewire'];
    expect(problems(merged)).toEqual([]);
    expect(merged.service.pipelines['traces/tracewire']!.exporters).toEqual(['loadbalancing/tracewire']);
  });

  it('has a relay per sidecar that receives the balanced gRPC and forwards OTLP/HTTP to the local sidecar', () => {
    const relay = commentedBlock('loadbalancing-relay') as CollectorConfig;
    expect(problems(relay)).toEqual([]);
    const gw = commentedBlock('loadbalancing-gateway');
    expect(hostPort(relay.receivers!.otlp.protocols.grpc.endpoint).port).toBe(gw.exporters['loadbalancing/tracewire'].resolver.dns.port);
    expect(httpUrl(relay.exporters!['otlphttp/tracewire'].endpoint).href).toBe('http://127.0.0.1:4318/');
    expect(relay.exporters!['otlphttp/tracewire'].sending_queue.num_consumers).toBe(1);
    expect(relay.exporters!['otlphttp/tracewire'].headers).toEqual({ authorization: 'Bearer ${env:TRACEWIRE_OTLP_TOKEN}' });
  });
});
