import { createHash } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { TracewireError } from '../errors/errors.js';
import { VERDICTS } from './Metrics.js';
import { EV_DELIVERED, EV_DROPPED, EV_HELD, type EventRecord, type RunRecord, type SpanSummary } from './RunRecord.js';
import { decodeCursor, encodeCursor, LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT, type RunLedger, type RunQuery } from './RunLedger.js';
import { isoOf as iso } from '../util/time.js';
import { isObject } from '../util/guards.js';
import { INSTANCE_ID } from '../config/Config.js';

export interface RunsApiOptions {
  readonly ledger: RunLedger;
  /** Link template to a trace backend, `{trace_id}` replaced. */
  readonly traceUrlTemplate?: string;
  /** Several sidecars (a broker): the API answers for all of them (README "Scale"). */
  readonly cluster?: RunsCluster;
}

/** The other sidecars, for the runs API (through the fan-out's broker). */
export interface RunsCluster {
  /** This sidecar's id: the `sidecar` of its runs. */
  readonly self: string;
  /**
   * Ask every other sidecar (each answers with `answerRunsQuestion`):
   * undefined when no question can go out (the broker is down), `busy` when
   * too many are out already.
   */
  ask(question: RunsQuestion): Promise<{ answers: ReadonlyArray<{ from: string; answer: unknown }>; missing: number }> | 'busy' | undefined;
}

/** The answer of a sidecar whose --api-token differs from the asker's: it does not show its runs (counted as missing). */
const REFUSED = { refused: 'api_token' } as const;

/** Whether an answer is a refusal (the asker's API token is not this sidecar's). */
export function isRefusal(answer: unknown): boolean {
  return isObject(answer) && answer.refused === REFUSED.refused;
}

type ListFilter = Pick<RunQuery, 'verdict' | 'agent' | 'user' | 'sinceMs' | 'untilMs'>;

/**
 * Where a listing across sidecars is: the last run it listed, as start ms,
 * sidecar id and that sidecar's open order. The runs of all sidecars are in
 * one order (start time newest first, then sidecar id, then open order
 * newest first: each sidecar's own order), so the next page is what comes
 * after it in that order, on every sidecar.
 */
type Position = readonly [startMs: number, sidecar: string, openSeq: number];

/**
 * A runs API question to the other sidecars: one run's detail page, or a
 * page of runs after a position. `t`: a tag of the asker's --api-token (set
 * by the cluster), so a sidecar with a token answers only sidecars with the
 * same one.
 */
export type RunsQuestion =
  | { readonly kind: 'get'; readonly run: string; readonly after: number; readonly limit: number; readonly t?: string }
  | { readonly kind: 'list'; readonly filter: ListFilter; readonly limit: number; readonly at: Position | null; readonly t?: string };

/** A tag of an API token for runs questions ("" for none): a hash, so the token itself does not travel. */
export function apiTokenTag(apiToken: string): string {
  return apiToken === '' ? '' : createHash('sha256').update(`tracewire runs api token\0${apiToken}`).digest('base64url').slice(0, 32);
}

/** One sidecar's page of a listing: each run's summary and its key (start ms, open order); `more`: it has runs after them. */
interface ListPart {
  readonly runs: Array<{ s: Record<string, unknown>; k: [number, number] }>;
  readonly more: boolean;
}

/** This sidecar's cursor for what comes after `at` in the order across sidecars (undefined: from its newest run). */
function cursorAfter(at: Position | null, self: string): string | undefined {
  if (at === null) return undefined;
  const [startMs, sidecar, openSeq] = at;
  // Of the same start ms: a sidecar of a smaller id came before the position, one of a larger id comes after it.
  return encodeCursor(startMs, self === sidecar ? openSeq : self > sidecar ? Number.MAX_SAFE_INTEGER : 0);
}

/** A page of this sidecar's runs for a listing across sidecars. */
function listPart(ledger: RunLedger, filter: ListFilter, limit: number, at: Position | null, self: string, template: string | undefined): ListPart {
  const { runs, nextCursor } = ledger.list({ ...filter, limit, cursor: cursorAfter(at, self) });
  return { runs: runs.map((r) => ({ s: runSummary(r, template), k: [r.startMs, r.openSeq] })), more: nextCursor !== undefined };
}

const optStr = (v: unknown): boolean => v === undefined || typeof v === 'string';
const optNum = (v: unknown): boolean => v === undefined || (typeof v === 'number' && Number.isFinite(v));

function isPosition(v: unknown): v is Position {
  return Array.isArray(v) && v.length === 3 && typeof v[0] === 'number' && Number.isFinite(v[0]) && typeof v[1] === 'string' && INSTANCE_ID.test(v[1]) && Number.isSafeInteger(v[2]) && (v[2] as number) >= 0;
}

/**
 * Another sidecar's runs API asks (`RunsCluster.ask`): this sidecar's answer,
 * the run's detail page (null if it does not keep the run) or its page of the
 * listing, made smaller to fit `maxBytes`; undefined for a question it does
 * not understand.
 */
export function answerRunsQuestion(ledger: RunLedger, traceUrlTemplate: string | undefined, self: string, q: unknown, tokenTag = '', maxBytes = 1024 * 1024): unknown {
  if (!isObject(q)) return undefined;
  // This sidecar's own API needs a token: only a sidecar with the same one sees its runs.
  if (tokenTag !== '' && q.t !== tokenTag) return REFUSED;
  const limit = q.limit;
  if (q.kind === 'get' && typeof q.run === 'string' && Number.isSafeInteger(q.after) && Number.isInteger(limit) && (limit as number) >= 1 && (limit as number) <= DETAIL_MAX_LIMIT) {
    const r = ledger.get(q.run);
    if (r === undefined) return null;
    return fitted(limit as number, maxBytes, (n) => runDetail(r, traceUrlTemplate, { afterSeq: q.after as number, limit: n }));
  }
  const f = q.filter;
  if (
    q.kind === 'list' && isObject(f) && Number.isInteger(limit) && (limit as number) >= 1 && (limit as number) <= LIST_MAX_LIMIT &&
    optStr(f.verdict) && optStr(f.agent) && optStr(f.user) && optNum(f.sinceMs) && optNum(f.untilMs) && (q.at === null || isPosition(q.at))
  ) {
    const at = q.at as Position | null;
    return fitted(limit as number, maxBytes, (n) => listPart(ledger, f as ListFilter, n, at, self, traceUrlTemplate));
  }
  return undefined;
}

/** A page of at most `limit` items, made smaller (halved) until its JSON fits `maxBytes` (UTF-8, as Redis counts). */
function fitted(limit: number, maxBytes: number, page: (limit: number) => unknown): unknown {
  for (let n = limit; ; n = Math.ceil(n / 2)) {
    const p = page(n);
    if (n === 1 || Buffer.byteLength(JSON.stringify(p), 'utf8') <= maxBytes) return p;
  }
}

/** A listing's cursor across sidecars: `m.` + base64url JSON of its position. */
function encodeClusterCursor(at: Position): string {
  return 'm.' + Buffer.from(JSON.stringify(at), 'utf8').toString('base64url');
}

function decodeClusterCursor(cursor: string): Position | undefined {
  if (!/^m\.[A-Za-z0-9_-]{1,1024}$/.test(cursor)) return undefined;
  try {
    const v: unknown = JSON.parse(Buffer.from(cursor.slice(2), 'base64url').toString('utf8'));
    return isPosition(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

/** Order across sidecars: start time newest first, then sidecar id, then open order newest first. */
function before(a: { from: string; k: readonly [number, number] }, b: { from: string; k: readonly [number, number] }): number {
  return b.k[0] - a.k[0] || (a.from < b.from ? -1 : a.from > b.from ? 1 : 0) || b.k[1] - a.k[1];
}

/**
 * A page of runs across sidecars: this sidecar's part and the others'
 * answers, each its runs after the position, merged in the order across
 * sidecars, `limit` of them. A sidecar whose page was cut (it has more than
 * it sent: `limit`, or less to fit an answer) may have runs before the ones
 * of others below its last: the page stops at the earliest such last run.
 * The next cursor is the last run listed; a sidecar that did not answer is
 * counted in `missing_sidecars`, and its runs between this page's position
 * and the next are not listed.
 */
async function clusterList(opts: RunsApiOptions & { cluster: RunsCluster }, filter: ListFilter, limit: number, at: Position | null): Promise<Record<string, unknown>> {
  const { cluster } = opts;
  const asked = cluster.ask({ kind: 'list', filter, limit, at });
  if (asked === 'busy') throw new TracewireError('TW_RUNS_BUSY', 1);
  const parts = new Map<string, ListPart>([[cluster.self, listPart(opts.ledger, filter, limit, at, cluster.self, opts.traceUrlTemplate)]]);
  const got = asked === undefined ? undefined : await asked;
  // Refusals (another API token) and answers that are no page (over the size budget) count as missing.
  let unusable = 0;
  for (const { from, answer } of got?.answers ?? []) {
    if (!isObject(answer) || !Array.isArray(answer.runs) || typeof answer.more !== 'boolean' || parts.has(from) || !INSTANCE_ID.test(from)) {
      unusable++;
      continue;
    }
    const runs = (answer.runs as unknown[]).filter(
      (x): x is ListPart['runs'][number] => isObject(x) && isObject(x.s) && Array.isArray(x.k) && x.k.length === 2 && Number.isFinite(x.k[0]) && Number.isSafeInteger(x.k[1]),
    );
    parts.set(from, { runs, more: answer.more || runs.length < answer.runs.length });
  }
  const all: Array<{ from: string; k: [number, number]; s: Record<string, unknown> }> = [];
  let stop: { from: string; k: [number, number] } | undefined;
  for (const [from, part] of parts) {
    for (const run of part.runs) all.push({ from, k: run.k, s: run.s });
    const last = part.runs[part.runs.length - 1];
    if (part.more && last !== undefined && (stop === undefined || before({ from, k: last.k }, stop) < 0)) stop = { from, k: last.k };
  }
  all.sort(before);
  const taken = [];
  for (const r of all) {
    if (taken.length === limit || (stop !== undefined && before(r, stop) > 0)) break;
    taken.push(r);
  }
  const done = taken.length === all.length && ![...parts.values()].some((p) => p.more);
  const last = taken[taken.length - 1];
  return {
    runs: taken.map((t) => ({ ...t.s, sidecar: t.from })),
    next_cursor: done || last === undefined ? null : encodeClusterCursor([last.k[0], last.from, last.k[1]]),
    missing_sidecars: got === undefined ? -1 : got.missing + unusable,
  };
}

export function traceUrl(template: string | undefined, traceId: string): string | null {
  return template ? template.split('{trace_id}').join(encodeURIComponent(traceId)) : null;
}

/** A run's state word: judged, ended (waiting for its verdict) or in_flight. */
function statusOf(r: RunRecord): 'judged' | 'ended' | 'in_flight' {
  return r.judgement ? 'judged' : r.endMs !== undefined ? 'ended' : 'in_flight';
}

export function runSummary(r: RunRecord, traceUrlTemplate?: string): Record<string, unknown> {
  const j = r.judgement;
  let undeliveredByType = j?.undeliveredByType;
  let reasons = j?.reasons;
  if (j === undefined) {
    // In flight: what is undelivered so far (held or dropped); pending writes are not counted yet.
    const byType: Record<string, number> = {};
    const byReason: Record<string, number> = {};
    for (const e of r.events) {
      const reason = e.state === EV_DROPPED ? e.reason ?? 'send_failed' : e.state === EV_HELD ? 'no_subscriber' : undefined;
      if (reason === undefined) continue;
      byType[e.type] = (byType[e.type] ?? 0) + 1;
      byReason[reason] = (byReason[reason] ?? 0) + 1;
    }
    undeliveredByType = byType;
    reasons = byReason;
  }
  return {
    run_id: r.runId,
    trace_id: r.traceId,
    span_id: r.spanId,
    agent: r.agent,
    user: r.user ?? null,
    conversation_id: r.conversation ?? null,
    started_at: iso(r.startMs),
    ended_at: r.endMs !== undefined ? iso(r.endMs) : null,
    duration_ms: r.endMs !== undefined ? Math.round((r.endMs - r.startMs) * 1000) / 1000 : null,
    status: statusOf(r),
    verdict: j?.verdict ?? null,
    reason: j?.mainReason ?? null,
    judged_at: j ? iso(j.judgedAtMs) : null,
    expected: j?.expected ?? r.events.length,
    delivered: j?.delivered ?? r.events.filter((e) => e.state === EV_DELIVERED).length,
    undelivered_by_type: undeliveredByType,
    reasons,
    connection_seen: r.sawConnection,
    explanation:
      j?.explanation ??
      (r.endMs !== undefined
        ? `The run ended; its verdict comes after the grace period (${r.events.length} events so far).`
        : `The run is in flight (${r.events.length} events so far).`),
    trace_url: traceUrl(traceUrlTemplate, r.traceId),
  };
}

/**
 * What became of one expected event: `delivered`, `dropped` (with a reason),
 * `held` (waiting for a connection of the user; `no_subscriber`), or
 * `emitted` (no outcome yet). Once the run is judged, an event still held
 * counts as dropped for `no_subscriber` (as in the verdict), with `held: true`.
 */
function eventView(e: EventRecord, judged: boolean): Record<string, unknown> {
  let outcome: string;
  let reason: string | null = null;
  if (e.state === EV_DELIVERED) outcome = 'delivered';
  else if (e.state === EV_DROPPED) {
    outcome = 'dropped';
    reason = e.reason ?? 'send_failed';
  } else if (e.state === EV_HELD) {
    outcome = judged ? 'dropped' : 'held';
    reason = 'no_subscriber';
  } else outcome = 'emitted';
  return {
    seq: e.seq,
    type: e.type,
    span_id: e.spanId,
    ts: iso(e.tsMs),
    outcome,
    reason,
    connections: e.connections,
    attempts: e.attempts,
    delivered_at: e.deliveredAtMs !== undefined ? iso(e.deliveredAtMs) : null,
    late: e.late === true,
    held: e.state === EV_HELD,
    acked: e.acked === true,
  };
}

const START_EVENTS: ReadonlySet<string> = new Set(['agent_started', 'agent_thinking', 'tool_executing']);

type TimelineItem = Record<string, unknown> & { readonly what: string; readonly at: string };
interface Placed {
  readonly atMs: number;
  /** A start time with millisecond resolution only (OTel JS takes span starts from Date.now()). */
  readonly coarseStart: boolean;
  readonly item: TimelineItem;
}

/** Events per page of `GET /api/runs/:run_id` when no `limit` is given, and the most one page may ask for. */
export const DETAIL_DEFAULT_LIMIT = 1000;
export const DETAIL_MAX_LIMIT = 5000;

/** One page of a run's detail: the events after seq `afterSeq`, at most `limit` of them. */
export interface DetailPage {
  readonly afterSeq: number;
  readonly limit: number;
}

/** Detail cursor: base64url of `seq:<n>`, the last event seq of the page before. */
export function encodeDetailCursor(seq: number): string {
  return Buffer.from(`seq:${seq}`, 'utf8').toString('base64url');
}

export function decodeDetailCursor(cursor: string): number | undefined {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(cursor)) return undefined;
  const m = /^seq:(\d{1,15})$/.exec(Buffer.from(cursor, 'base64url').toString('utf8'));
  return m === null ? undefined : Number(m[1]);
}

/**
 * One page of the run's detail: its expected events with seq above
 * `page.afterSeq` (at most `page.limit`, in seq order), the spans whose
 * start event is among them (on the first page also the spans that have no
 * start event, such as late spans), and the timeline of that page in causal
 * order: the events in seq order (the order the user's client receives
 * them), each span's start just before the event its start caused and its
 * end just before the event its end caused. Ends that cause no event
 * (thinking spans) are placed by time after their start, within the page of
 * their start; a start time that is a whole millisecond may lie anywhere in
 * that millisecond, so an end within it is placed before it. The pages of a
 * run put together are its whole timeline (`next_cursor` names the next
 * page); the work per page is proportional to the page, plus one pass over
 * the run's span and event lists when the run changed since its last page
 * (`runIndex`).
 */
export function runDetail(r: RunRecord, traceUrlTemplate?: string, page: DetailPage = { afterSeq: 0, limit: DETAIL_DEFAULT_LIMIT }): Record<string, unknown> {
  const judged = r.judgement !== undefined;
  const all = r.events;
  // Events are in seq order: the page starts at the first seq above afterSeq.
  let lo = 0;
  let hi = all.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (all[mid]!.seq <= page.afterSeq) lo = mid + 1;
    else hi = mid;
  }
  const first = lo;
  const last = Math.min(all.length, first + page.limit);
  const pageEvents = all.slice(first, last);
  const events = pageEvents.map((e) => eventView(e, judged));

  const { index, depthOf, startedByEvent, endedByEvent } = runIndex(r);

  // The page's spans, in the run's span order.
  const inPage = new Uint8Array(r.spans.length);
  for (const e of pageEvents) {
    const i = index.get(e.spanId);
    if (i !== undefined && START_EVENTS.has(e.type)) inPage[i] = 1;
  }
  if (first === 0) for (let i = 0; i < r.spans.length; i++) if (startedByEvent[i] === 0) inPage[i] = 1;
  const views = new Map<number, SpanView>();
  const viewOf = (i: number): SpanView => {
    let v = views.get(i);
    if (v === undefined) views.set(i, (v = spanView(r.spans[i]!, depthOf[i]!)));
    return v;
  };
  const pageSpans: number[] = [];
  for (let i = 0; i < r.spans.length; i++) if (inPage[i] === 1) pageSpans.push(i);
  const spans = pageSpans.map(viewOf);

  const offset = (ms: number): number => Math.round((ms - r.startMs) * 1000) / 1000;
  const startItem = (i: number): Placed => {
    const s = r.spans[i]!;
    const v = viewOf(i);
    return {
      atMs: s.startMs,
      coarseStart: Number.isInteger(s.startMs),
      item: { at: v.start, offset_ms: offset(s.startMs), what: 'span_start', span_id: s.spanId, kind: s.kind, name: v.name, depth: v.depth },
    };
  };
  const endItem = (i: number): Placed => {
    const s = r.spans[i]!;
    const v = viewOf(i);
    return {
      atMs: s.endMs!,
      coarseStart: false,
      item: { at: v.end!, offset_ms: offset(s.endMs!), what: 'span_end', span_id: s.spanId, kind: s.kind, name: v.name, depth: v.depth, duration_ms: v.duration_ms, error: v.error },
    };
  };
  const line: Placed[] = [];
  const startPos = new Map<number, number>();
  const endPos = new Map<number, number>();
  pageEvents.forEach((e, k) => {
    const i = index.get(e.spanId);
    const isStart = START_EVENTS.has(e.type);
    if (i !== undefined) {
      if (isStart && !startPos.has(i)) {
        startPos.set(i, line.length);
        line.push(startItem(i));
      } else if (!isStart && r.spans[i]!.endMs !== undefined && !endPos.has(i)) {
        endPos.set(i, line.length);
        line.push(endItem(i));
      }
    }
    const s = i !== undefined ? r.spans[i] : undefined;
    line.push({
      atMs: e.tsMs,
      coarseStart: isStart && Number.isInteger(e.tsMs),
      item: { at: events[k]!.ts as string, offset_ms: offset(e.tsMs), what: 'event', kind: s?.kind ?? null, name: s?.name ?? null, depth: i !== undefined ? depthOf[i]! : 0, ...events[k]! },
    });
  });
  // Span starts and ends that caused no event go by time, after the span's own start and before
  // its parent's end: before the first later item (a whole-millisecond start may be anywhere in it).
  const positionFrom = (atMs: number, from: number): number => {
    let j = from;
    while (j < line.length) {
      const q = line[j]!;
      if (atMs < (q.coarseStart ? q.atMs + 1 : q.atMs)) break;
      j++;
    }
    return j;
  };
  const extra: Array<{ pos: number; order: number; p: Placed }> = [];
  for (const i of pageSpans) {
    const s = r.spans[i]!;
    let from = startPos.get(i);
    if (from === undefined) {
      from = positionFrom(s.startMs, 0);
      extra.push({ pos: from, order: extra.length, p: startItem(i) });
    } else from += 2; // after the span's start and the event it caused
    // An end that caused an event is placed with that event (in this page or a later one).
    if (s.endMs === undefined || endedByEvent[i] === 1) continue;
    let pos = positionFrom(s.endMs, from);
    // End times carry the start's millisecond error too: a span ends before its parent does.
    const parentEnd = s.parentSpanId !== undefined ? endPos.get(index.get(s.parentSpanId) ?? -1) : undefined;
    if (parentEnd !== undefined && parentEnd >= from) pos = Math.min(pos, parentEnd);
    extra.push({ pos, order: extra.length, p: endItem(i) });
  }
  let timeline: Placed[] = line;
  if (extra.length > 0) {
    extra.sort((a, b) => a.pos - b.pos || a.p.atMs - b.p.atMs || a.order - b.order);
    timeline = [];
    let x = 0;
    for (let j = 0; j <= line.length; j++) {
      while (x < extra.length && extra[x]!.pos === j) timeline.push(extra[x++]!.p);
      if (j < line.length) timeline.push(line[j]!);
    }
  }
  const nextCursor = last < all.length ? encodeDetailCursor(all[last - 1]!.seq) : null;
  return { ...runSummary(r, traceUrlTemplate), spans, events, timeline: timeline.map((p) => p.item), next_cursor: nextCursor };
}

/** What every page of a run's detail needs from the whole run: each span's index and depth, and which spans' starts and ends caused events. */
interface RunIndex {
  /** The run's span and event counts it was built at (both only grow). */
  readonly spans: number;
  readonly events: number;
  readonly index: Map<string, number>;
  readonly depthOf: number[];
  readonly startedByEvent: Uint8Array;
  readonly endedByEvent: Uint8Array;
}

/** Built once per run and kept while the run is (a run read page after page, or by the inspector's live mode, is indexed once). */
const runIndexes = new WeakMap<RunRecord, RunIndex>();

/**
 * The run's index, rebuilt when spans or events were added since. A span
 * whose end causes an event has that event only once it ended, so the
 * counts say when `endedByEvent` can have changed.
 */
function runIndex(r: RunRecord): RunIndex {
  const cached = runIndexes.get(r);
  if (cached !== undefined && cached.spans === r.spans.length && cached.events === r.events.length) return cached;
  const index = new Map<string, number>();
  const depthOf: number[] = [];
  r.spans.forEach((s, i) => {
    index.set(s.spanId, i);
    const p = s.parentSpanId !== undefined ? index.get(s.parentSpanId) : undefined;
    depthOf.push(p !== undefined ? depthOf[p]! + 1 : 0);
  });
  const startedByEvent = new Uint8Array(r.spans.length);
  const endedByEvent = new Uint8Array(r.spans.length);
  for (const e of r.events) {
    const i = index.get(e.spanId);
    if (i === undefined) continue;
    if (START_EVENTS.has(e.type)) startedByEvent[i] = 1;
    else if (r.spans[i]!.endMs !== undefined) endedByEvent[i] = 1;
  }
  const built = { spans: r.spans.length, events: r.events.length, index, depthOf, startedByEvent, endedByEvent };
  runIndexes.set(r, built);
  return built;
}

interface SpanView {
  readonly span_id: string;
  readonly parent_span_id: string | null;
  readonly depth: number;
  readonly kind: string;
  readonly name: string | null;
  readonly start: string;
  readonly end: string | null;
  readonly duration_ms: number | null;
  readonly error: string | null;
}

function spanView(s: SpanSummary, depth: number): SpanView {
  return {
    span_id: s.spanId,
    parent_span_id: s.parentSpanId ?? null,
    depth,
    kind: s.kind,
    name: s.name ?? null,
    start: iso(s.startMs),
    end: s.endMs !== undefined ? iso(s.endMs) : null,
    duration_ms: s.endMs !== undefined ? Math.round((s.endMs - s.startMs) * 1000) / 1000 : null,
    error: s.error ?? null,
  };
}

function single(q: Record<string, unknown>, name: string): string | undefined {
  const v = q[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new TracewireError('TW_BAD_QUERY', name, 'give it once');
  return v;
}

/** A `limit` query value, 1..max; undefined when not given. */
function parseLimit(raw: string | undefined, max: number): number | undefined {
  if (raw === undefined) return undefined;
  const limit = /^\d+$/.test(raw) ? Number(raw) : Number.NaN;
  if (!Number.isInteger(limit) || limit < 1 || limit > max) throw new TracewireError('TW_BAD_QUERY', 'limit', `an integer from 1 to ${max}`);
  return limit;
}

function parseTime(name: string, v: string | undefined): number | undefined {
  if (v === undefined || v === '') return undefined;
  const n = /^\d+$/.test(v) ? Number(v) : /^\d{4}-\d{2}-\d{2}/.test(v) ? Date.parse(v) : Number.NaN;
  if (!Number.isFinite(n)) throw new TracewireError('TW_BAD_QUERY', name, 'expected epoch milliseconds or an ISO 8601 time');
  return n;
}

const VERDICT_FILTERS: readonly string[] = [...VERDICTS, 'in_flight'];

/**
 * `GET /api/runs`: kept runs, newest first. Filters `verdict` (a verdict or
 * `in_flight`), `agent` (the top-level agent's name, or the `agent` label of
 * tracewire_runs_total a judged run was counted under, such as `other`),
 * `user`, `since`, `until` (epoch ms or ISO 8601, on the start time); `limit` (1..500, default 50) and `cursor` (the previous
 * page's `next_cursor`) paginate. `GET /api/runs/:run_id`: one run with its
 * spans, events and timeline, `limit` events a page (1..5000, default 1000)
 * from `cursor` (the previous page's `next_cursor`). Errors: 400
 * TW_BAD_QUERY, 404 TW_RUN_NOT_FOUND.
 */
export async function runsApi(app: FastifyInstance, opts: RunsApiOptions): Promise<void> {
  const { ledger } = opts;
  app.get('/api/runs', async (req) => {
    const q = (req.query ?? {}) as Record<string, unknown>;
    const verdict = single(q, 'verdict') || undefined;
    if (verdict !== undefined && !VERDICT_FILTERS.includes(verdict)) {
      throw new TracewireError('TW_BAD_QUERY', 'verdict', `one of ${VERDICT_FILTERS.join(', ')}`);
    }
    const limit = parseLimit(single(q, 'limit'), LIST_MAX_LIMIT);
    const cursor = single(q, 'cursor') || undefined;
    const cluster = opts.cluster;
    const at = cluster !== undefined && cursor !== undefined ? decodeClusterCursor(cursor) : undefined;
    if (cursor !== undefined && (cluster !== undefined ? at === undefined : decodeCursor(cursor) === undefined)) {
      throw new TracewireError('TW_BAD_QUERY', 'cursor', 'use next_cursor from the previous page');
    }
    const sinceMs = parseTime('since', single(q, 'since'));
    const untilMs = parseTime('until', single(q, 'until'));
    if (sinceMs !== undefined && untilMs !== undefined && sinceMs > untilMs) throw new TracewireError('TW_BAD_QUERY', 'since', 'must not be after until');
    const filter: ListFilter = { verdict, agent: single(q, 'agent') || undefined, user: single(q, 'user') || undefined, sinceMs, untilMs };
    if (cluster !== undefined) return clusterList({ ...opts, cluster }, filter, limit ?? LIST_DEFAULT_LIMIT, at ?? null);
    const { runs, nextCursor } = ledger.list({ ...filter, limit, cursor });
    return { runs: runs.map((r) => runSummary(r, opts.traceUrlTemplate)), next_cursor: nextCursor ?? null };
  });
  app.get('/api/runs/:run_id', async (req) => {
    const { run_id } = req.params as { run_id: string };
    const q = (req.query ?? {}) as Record<string, unknown>;
    const limit = parseLimit(single(q, 'limit'), DETAIL_MAX_LIMIT) ?? DETAIL_DEFAULT_LIMIT;
    const cursor = single(q, 'cursor') || undefined;
    const afterSeq = cursor === undefined ? 0 : decodeDetailCursor(cursor);
    if (afterSeq === undefined) throw new TracewireError('TW_BAD_QUERY', 'cursor', 'use next_cursor from the previous page of this run');
    const r = ledger.get(run_id);
    const cluster = opts.cluster;
    if (r !== undefined) return cluster === undefined ? runDetail(r, opts.traceUrlTemplate, { afterSeq, limit }) : { ...runDetail(r, opts.traceUrlTemplate, { afterSeq, limit }), sidecar: cluster.self };
    // Several sidecars: the run's origin keeps it.
    const asked = cluster?.ask({ kind: 'get', run: run_id, after: afterSeq, limit });
    if (asked === 'busy') throw new TracewireError('TW_RUNS_BUSY', 1);
    for (const { from, answer } of (asked === undefined ? undefined : await asked)?.answers ?? []) if (isObject(answer) && !isRefusal(answer)) return { ...answer, sidecar: from };
    throw new TracewireError('TW_RUN_NOT_FOUND', run_id);
  });
}
