import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { execFile, spawn } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { DEMO_EXPECTED, runDemoAgent } from '../../src/demo/demoAgent.js';
import { otlpTypes } from '../../src/sources/otlp/schema.js';
import type { Frame, TestClient } from '../helpers.js';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));

type Hr = [number, number];
const nanos = (t: Hr): string => (BigInt(t[0]) * 1_000_000_000n + BigInt(t[1])).toString();

/** One demo run for `user`, recorded with an in-memory exporter: finished spans in end order (children first). */
export async function recordDemo(user: string): Promise<{ spans: ReadableSpan[]; traceId: string; spanId: string }> {
  const mem = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(mem)] });
  const ids = await runDemoAgent(provider.getTracer('otlp-test'), { user });
  await provider.forceFlush();
  const spans = mem.getFinishedSpans().slice();
  await provider.shutdown();
  return { spans, ...ids };
}

function anyValue(v: unknown): Record<string, unknown> {
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (typeof v === 'number') return Number.isInteger(v) ? { intValue: String(v) } : { doubleValue: v };
  if (Array.isArray(v)) return { arrayValue: { values: v.map(anyValue) } };
  return {};
}

const kvs = (a: Record<string, unknown>): Array<Record<string, unknown>> => Object.entries(a).map(([key, value]) => ({ key, value: anyValue(value) }));

export interface JsonSpanOptions {
  /** Export as "started": end time 0, no status, no events. */
  readonly started?: boolean;
  /** Audit mode: add the agent.event span events a backend that delivers its own events records. */
  readonly audit?: (span: ReadableSpan) => Array<{ type: string; outcome: string; reason?: string }>;
}

/** A recorded span as an OTLP/JSON span object (hex ids, int64 nanos as strings, enums as numbers). */
export function jsonSpan(s: ReadableSpan, o: JsonSpanOptions = {}): Record<string, unknown> {
  const ctx = s.spanContext();
  const events = s.events.map((e) => ({ timeUnixNano: nanos(e.time as Hr), name: e.name, attributes: kvs(e.attributes ?? {}) }));
  for (const a of o.audit?.(s) ?? []) {
    const attrs: Record<string, unknown> = { 'agent.event.type': a.type, 'agent.event.outcome': a.outcome };
    if (a.reason) attrs['agent.event.reason'] = a.reason;
    events.push({ timeUnixNano: nanos(s.endTime as Hr), name: 'agent.event', attributes: kvs(attrs) });
  }
  const out: Record<string, unknown> = {
    traceId: ctx.traceId,
    spanId: ctx.spanId,
    name: s.name,
    kind: s.kind + 1,
    startTimeUnixNano: nanos(s.startTime as Hr),
    endTimeUnixNano: o.started ? '0' : nanos(s.endTime as Hr),
    attributes: kvs(s.attributes),
    flags: 0x100 | ctx.traceFlags | (s.parentSpanContext?.isRemote ? 0x200 : 0),
  };
  if (s.parentSpanContext?.spanId) out.parentSpanId = s.parentSpanContext.spanId;
  if (!o.started) {
    out.events = events;
    out.status = s.status.message ? { code: s.status.code, message: s.status.message } : { code: s.status.code };
  }
  return out;
}

/** An OTLP/JSON ExportTraceServiceRequest holding these span objects. */
export function jsonRequest(spans: Array<Record<string, unknown>>): Record<string, unknown> {
  return {
    resourceSpans: [
      {
        resource: { attributes: [{ key: 'service.name', value: { stringValue: 'otlp-test' } }] },
        scopeSpans: [{ scope: { name: 'otlp-test' }, spans }],
      },
    ],
  };
}

/** The same request as binary protobuf, encoded with the project's schema (ids as bytes, nanos as fixed64). */
export function protobufRequest(spans: Array<Record<string, unknown>>): Uint8Array {
  const hexToBytes = (h: unknown): Buffer | undefined => (typeof h === 'string' ? Buffer.from(h, 'hex') : undefined);
  const req = jsonRequest(
    spans.map((s) => ({
      ...s,
      traceId: hexToBytes(s.traceId),
      spanId: hexToBytes(s.spanId),
      parentSpanId: hexToBytes(s.parentSpanId),
    })),
  );
  const t = otlpTypes().request;
  return t.encode(t.fromObject(req)).finish();
}

export function gzip(b: Uint8Array | string): Buffer {
  return gzipSync(typeof b === 'string' ? Buffer.from(b) : b);
}

export interface PostOptions {
  readonly token?: string;
  readonly contentType?: string;
  readonly encoding?: string;
  readonly timeoutMs?: number;
}

/** POST a body to `${otlpUrl}/v1/traces` with fetch; returns status, headers and the raw body. */
export async function post(otlpUrl: string, body: Uint8Array | string, o: PostOptions = {}): Promise<{ status: number; headers: Headers; body: Buffer }> {
  const headers: Record<string, string> = { 'content-type': o.contentType ?? 'application/json' };
  if (o.token !== undefined) headers.authorization = `Bearer ${o.token}`;
  if (o.encoding !== undefined) headers['content-encoding'] = o.encoding;
  const res = await fetch(`${otlpUrl}/v1/traces`, { method: 'POST', headers, body, signal: AbortSignal.timeout(o.timeoutMs ?? 5000) });
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

export async function postJson(otlpUrl: string, req: unknown, o: PostOptions = {}): Promise<{ status: number; headers: Headers; json: Record<string, unknown> }> {
  const r = await post(otlpUrl, JSON.stringify(req), o);
  return { status: r.status, headers: r.headers, json: JSON.parse(r.body.toString() || '{}') as Record<string, unknown> };
}

/** Decode a protobuf error body: google.rpc.Status with an ErrorInfo detail. */
export function decodeStatus(body: Uint8Array): { code: number; message: string; reason: string | undefined } {
  const t = otlpTypes();
  const st = t.rpcStatus.toObject(t.rpcStatus.decode(body)) as { code?: number; message?: string; details?: Array<{ typeUrl: string; value: Uint8Array }> };
  const d = st.details?.[0];
  const info = d ? (t.errorInfo.toObject(t.errorInfo.decode(d.value)) as { reason?: string }) : undefined;
  return { code: st.code ?? 0, message: st.message ?? '', reason: info?.reason };
}

/** The client's events of one run. */
export function runEvents(client: TestClient, runId: string): Frame[] {
  return client.events.filter((e) => e.run_id === runId);
}

/** Wait for the 11 demo events of `runId`, then check them: types, agents, tools, statuses, seq 1..11, no extras. */
export async function expectDemoRun(client: TestClient, runId: string, timeoutMs = 5000): Promise<Frame[]> {
  await client.until((c) => runEvents(c, runId).length >= DEMO_EXPECTED.length, timeoutMs, `the demo run ${runId}`);
  // A short settle: duplicates or late extras would show up here.
  await new Promise((r) => setTimeout(r, 50));
  const evs = runEvents(client, runId);
  const shape = evs.map((e) => {
    const d = (e.data ?? {}) as { tool?: string; status?: string };
    const x: { type: unknown; agent: unknown; tool?: string; status?: string } = { type: e.type, agent: e.agent };
    if (d.tool !== undefined) x.tool = d.tool;
    if (d.status !== undefined && (e.type === 'tool_completed' || e.type === 'agent_completed')) x.status = d.status;
    return x;
  });
  const want = DEMO_EXPECTED.map((e) => {
    const x: { type: unknown; agent: unknown; tool?: string; status?: string } = { type: e.type, agent: e.agent };
    if (e.tool !== undefined) x.tool = e.tool;
    if (e.status !== undefined) x.status = e.status;
    return x;
  });
  if (JSON.stringify(shape) !== JSON.stringify(want)) throw new Error(`unexpected events: ${JSON.stringify(shape)}`);
  const seqs = evs.map((e) => e.seq);
  if (JSON.stringify(seqs) !== JSON.stringify(DEMO_EXPECTED.map((_, i) => i + 1))) throw new Error(`unexpected seqs: ${JSON.stringify(seqs)}`);
  return evs;
}

const DEMO_JS = `${ROOT}dist/demo/demoAgent.js`;
const DEMO_TS = `${ROOT}src/demo/demoAgent.ts`;

/** Build dist/ when dist/demo/demoAgent.js is missing or older than its source (the child process imports it). */
export async function ensureBuiltDemo(): Promise<void> {
  if (existsSync(DEMO_JS) && statSync(DEMO_JS).mtimeMs >= statSync(DEMO_TS).mtimeMs) return;
  await new Promise<void>((resolve) => {
    execFile(process.execPath, [`${ROOT}node_modules/typescript/bin/tsc`, '-p', `${ROOT}tsconfig.build.json`], { cwd: ROOT, timeout: 120_000 }, () => resolve());
  });
  // Type errors elsewhere in the tree still emit; only the demo module matters here.
  if (!existsSync(DEMO_JS)) throw new Error('npm run build did not produce dist/demo/demoAgent.js');
}

/** Run test/sources/fixtures/exportDemo.mjs in a child `node`; resolves with the run's ids it prints. */
export function runExportChild(exporter: 'proto' | 'http', url: string, user: string, timeoutMs = 15_000): Promise<{ traceId: string; spanId: string }> {
  const script = fileURLToPath(new URL('./fixtures/exportDemo.mjs', import.meta.url));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, exporter, url, user], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`exportDemo.mjs timed out; stderr: ${err}`));
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (code !== 0) {
        reject(new Error(`exportDemo.mjs exited ${code}; stderr: ${err}; stdout: ${out}`));
        return;
      }
      try {
        resolve(JSON.parse(out.trim().split('\n').at(-1)!) as { traceId: string; spanId: string });
      } catch {
        reject(new Error(`exportDemo.mjs printed no ids: ${out} ${err}`));
      }
    });
  });
}
