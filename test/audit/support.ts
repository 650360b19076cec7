import type { RunRecord } from '../../src/audit/RunRecord.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { until } from '../helpers.js';

export const runIdOf = (ids: { traceId: string; spanId: string }): string => `${ids.traceId}-${ids.spanId}`;

/** Wait until the run has its verdict; returns the record. */
export async function judged(sc: Sidecar, runId: string, timeoutMs = 5000): Promise<RunRecord> {
  await until(() => sc.tw.ledger.get(runId)?.judgement !== undefined, timeoutMs, `verdict of ${runId}`);
  return sc.tw.ledger.get(runId)!;
}

export async function getJson(sc: Sidecar, path: string, headers: Record<string, string> = {}): Promise<{ status: number; body: any }> {
  const res = await fetch(`${sc.publicUrl}${path}`, { headers });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

/** Per-type counts of a list of event types. */
export function countByType(types: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const t of types) out[t] = (out[t] ?? 0) + 1;
  return out;
}
