import type { FastifyInstance } from 'fastify';
import { TracewireError } from '../errors/errors.js';
import { VERDICTS } from './Metrics.js';
import { EV_DELIVERED, EV_DROPPED, EV_HELD, type RunRecord } from './RunRecord.js';
import type { RunLedger } from './RunLedger.js';

export interface RunsApiOptions {
  readonly ledger: RunLedger;
  /** Link template to a trace backend, `{trace_id}` replaced. */
  readonly traceUrlTemplate?: string;
}

const STATE_NAMES = ['pending', 'delivered', 'dropped', 'held'];

export function runSummary(r: RunRecord, traceUrlTemplate?: string): Record<string, unknown> {
  const j = r.judgement;
  return {
    run_id: r.runId,
    trace_id: r.traceId,
    agent: r.agent,
    user: r.user ?? null,
    conversation_id: r.conversation ?? null,
    started_at: new Date(r.startMs).toISOString(),
    ended_at: r.endMs !== undefined ? new Date(r.endMs).toISOString() : null,
    status: j ? 'judged' : r.endMs !== undefined ? 'ended' : 'in_flight',
    verdict: j?.verdict ?? null,
    reason: j?.mainReason ?? null,
    expected: j?.expected ?? r.events.length,
    delivered: j?.delivered ?? r.events.filter((e) => e.state === EV_DELIVERED).length,
    undelivered_by_type: j?.undeliveredByType ?? {},
    reasons: j?.reasons ?? {},
    explanation: j?.explanation ?? (r.endMs !== undefined ? 'The run ended; its verdict comes after the grace period.' : 'The run is in flight.'),
    trace_url: traceUrlTemplate ? traceUrlTemplate.replace('{trace_id}', r.traceId) : null,
  };
}

/** One timeline: spans (start/end) and each expected event with its outcome, by time. */
export function runDetail(r: RunRecord, traceUrlTemplate?: string): Record<string, unknown> {
  const events = r.events.map((e) => ({
    seq: e.seq,
    type: e.type,
    span_id: e.spanId,
    ts: new Date(e.tsMs).toISOString(),
    outcome: STATE_NAMES[e.state] ?? 'pending',
    reason: e.state === EV_DROPPED ? e.reason ?? null : e.state === EV_HELD ? 'no_subscriber' : null,
    connections: e.connections,
    attempts: e.attempts,
    delivered_at: e.deliveredAtMs !== undefined ? new Date(e.deliveredAtMs).toISOString() : null,
    late: e.late === true,
    acked: e.acked === true,
  }));
  const spans = r.spans.map((s) => ({
    span_id: s.spanId,
    parent_span_id: s.parentSpanId ?? null,
    kind: s.kind,
    name: s.name ?? null,
    start: new Date(s.startMs).toISOString(),
    end: s.endMs !== undefined ? new Date(s.endMs).toISOString() : null,
    duration_ms: s.endMs !== undefined ? Math.round((s.endMs - s.startMs) * 1000) / 1000 : null,
    error: s.error ?? null,
  }));
  type Item = { at: number; order: number; item: Record<string, unknown> };
  const timeline: Item[] = [];
  r.spans.forEach((s, i) => {
    timeline.push({ at: s.startMs, order: 0, item: { at: spans[i]!.start, what: 'span_start', span_id: s.spanId, kind: s.kind, name: s.name ?? null } });
    if (s.endMs !== undefined) timeline.push({ at: s.endMs, order: 2, item: { at: spans[i]!.end, what: 'span_end', span_id: s.spanId, kind: s.kind, name: s.name ?? null, error: s.error ?? null } });
  });
  r.events.forEach((e, i) => timeline.push({ at: e.tsMs, order: 1, item: { at: events[i]!.ts, what: 'event', ...events[i]! } }));
  timeline.sort((a, b) => a.at - b.at || a.order - b.order);
  return { ...runSummary(r, traceUrlTemplate), spans, events, timeline: timeline.map((t) => t.item) };
}

function parseTime(name: string, v: string | undefined): number | undefined {
  if (v === undefined || v === '') return undefined;
  const n = /^\d+$/.test(v) ? Number(v) : Date.parse(v);
  if (!Number.isFinite(n)) throw new TracewireError('TW_BAD_QUERY', name, 'expected epoch milliseconds or an ISO 8601 time');
  return n;
}

/**
 * `GET /api/runs` (filters: verdict, agent, user, since, until; newest first;
 * `limit` and `cursor` paginate) and `GET /api/runs/:run_id`.
 */
export async function runsApi(app: FastifyInstance, opts: RunsApiOptions): Promise<void> {
  const { ledger } = opts;
  app.get('/api/runs', async (req) => {
    const q = req.query as Record<string, string | undefined>;
    if (q.verdict !== undefined && q.verdict !== 'in_flight' && !(VERDICTS as readonly string[]).includes(q.verdict)) {
      throw new TracewireError('TW_BAD_QUERY', 'verdict', `one of ${[...VERDICTS, 'in_flight'].join(', ')}`);
    }
    let limit: number | undefined;
    if (q.limit !== undefined) {
      limit = Number(q.limit);
      if (!Number.isInteger(limit) || limit < 1 || limit > 500) throw new TracewireError('TW_BAD_QUERY', 'limit', 'an integer from 1 to 500');
    }
    if (q.cursor !== undefined && !/^\d+$/.test(q.cursor)) throw new TracewireError('TW_BAD_QUERY', 'cursor', 'use next_cursor from the previous page');
    const { runs, nextCursor } = ledger.list({
      verdict: q.verdict,
      agent: q.agent,
      user: q.user,
      sinceMs: parseTime('since', q.since),
      untilMs: parseTime('until', q.until),
      limit,
      cursor: q.cursor,
    });
    return { runs: runs.map((r) => runSummary(r, opts.traceUrlTemplate)), next_cursor: nextCursor ?? null };
  });
  app.get('/api/runs/:run_id', async (req) => {
    const { run_id } = req.params as { run_id: string };
    const r = ledger.get(run_id);
    if (r === undefined) throw new TracewireError('TW_RUN_NOT_FOUND', run_id);
    return runDetail(r, opts.traceUrlTemplate);
  });
}
