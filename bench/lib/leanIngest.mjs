// An experiment, not tracewire: how fast could the OTLP ingest path be if
// in-flight state were a few objects per run instead of several per span?
//
// `LeanIngest` does the logical work tracewire's bridge, ledger and hub do
// for the figure-4 workload (absent users), with the state kept in columns:
// - per request, spans grouped by trace (an exporter sends a trace's spans
//   together) and put in parent-first order with a scratch index, so children
//   that arrive first are not held as objects;
// - real `classify()` per span; user and conversation inherited down the tree;
// - per run ONE object: its span ids as one string, its spans' kinds, times
//   and names in typed arrays / one array, its events as (span index, type,
//   state) in one Int32Array, in causal order with contiguous seqs;
// - events for users with no connection held in a bounded ring (run, event
//   index), the oldest given up and counted as dropped;
// - verdicts after the grace period from a queue, counted from the event
//   column; judged runs kept for the runs API in a bounded ring;
// - traces kept for late spans (their done span ids, one string) until idle,
//   bounded, with their runs' ids in flight in a Map.
// What it leaves out (so its figure is a ceiling, not a like-for-like): spans
// whose parent comes in a later request (held across requests), audit mode,
// live (unended) spans, the resume window, metrics' label maps, the run index
// sorted for the runs API, frames for connected users.
//
// Used by `bench/analysis.mjs lean` beside the real bridge on the same
// decoded requests.
import { distUrl } from './tw.mjs';

const { classify } = await import(distUrl('conventions/classify.js'));

// Ablations (what the bridge's object model costs): LEAN_EVENT_OBJECTS=1 keeps an object per event (like
// EventRecord) besides the column; LEAN_SPAN_OBJECTS=1 keeps an object per span (like SpanNode) until the
// run's verdict.
const EVENT_OBJECTS = process.env.LEAN_EVENT_OBJECTS === '1';
const SPAN_OBJECTS = process.env.LEAN_SPAN_OBJECTS === '1';

class EventObject {
  constructor(seq, type, span, run) {
    this.bits = 0;
    this.connections = 0;
    this.attempts = 0;
    this.deliveredAfterMs = -1;
    this.seq = seq;
    this.type = type;
    this.span = span;
    this.run = run;
  }
}

class SpanObject {
  constructor(spanId, parentSpanId, kind, name, user, conv, startMs, endMs) {
    this.flags = 0;
    this.kind = kind;
    this.name = name;
    this.detail = undefined;
    this.error = undefined;
    this.user = user;
    this.conv = conv;
    this.endMs = endMs;
    this.run = undefined;
    this.agentName = undefined;
    this.spanId = spanId;
    this.parentSpanId = parentSpanId;
    this.startMs = startMs;
  }
}

const KIND_CODE = { agent: 1, thinking: 2, tool: 3 };
// Event types: 1 agent_started, 2 agent_completed, 3 agent_thinking, 4 tool_executing, 5 tool_completed.
const START_CODE = [0, 1, 3, 4];
const END_CODE = [0, 2, 0, 5];
const EV_PENDING = 0;
const EV_HELD = 1;
const EV_DROPPED = 2;
const EV_DELIVERED = 3;

class LeanRun {
  constructor(traceId, spanId, agent, startMs) {
    this.runId = `${traceId}-${spanId}`;
    this.traceId = traceId;
    this.agent = agent;
    this.startMs = startMs;
    this.endMs = -1;
    this.user = undefined;
    this.conversation = undefined;
    /** Span ids (joined into one string when the run ends). */
    this.spanIds = [];
    this.names = [];
    /** kind, start ms, end ms per span (3 doubles). */
    this.spanCols = undefined;
    /** (span index << 8 | type << 2 | state) per event, seq = index + 1. */
    this.events = undefined;
    this.eventCount = 0;
    this.verdict = 0;
    this.delivered = 0;
    this.dropped = 0;
    /** Ablations only. */
    this.eventObjects = EVENT_OBJECTS ? [] : undefined;
    this.spanObjects = SPAN_OBJECTS ? [] : undefined;
  }
}

export class LeanIngest {
  constructor({ graceMillis = 2000, maxHeld = 200_000, runsMaxCount = 10_000, maxTraces = 400_000, idleMillis = 10_000, now = Date.now } = {}) {
    this.opts = { graceMillis, maxHeld, runsMaxCount, maxTraces, idleMillis };
    this.now = now;
    this.inFlight = new Map();
    // Verdict queue: runs and due times, as rings.
    this.dueRuns = [];
    this.dueAt = new Float64Array(1 << 20);
    this.dueHead = 0;
    this.dueTail = 0;
    // Hold ring: run and event index.
    this.heldRuns = new Array(maxHeld);
    this.heldIdx = new Int32Array(maxHeld);
    this.heldHead = 0;
    this.heldSize = 0;
    // Judged runs kept (a ring).
    this.judged = new Array(runsMaxCount);
    this.judgedMap = new Map();
    this.judgedNext = 0;
    // Traces kept for late spans: id -> done span ids; idle order as a ring of ids and times.
    this.traces = new Map();
    this.traceRing = new Array(maxTraces);
    this.traceAt = new Float64Array(maxTraces);
    this.traceHead = 0;
    this.traceSize = 0;
    // Scratch per trace group.
    this.order = new Int32Array(1024);
    this.parentIdx = new Int32Array(1024);
    this.kinds = new Uint8Array(1024);
    this.classified = [];
    this.runOf = [];
    this.userOf = [];
    this.convOf = [];
    this.doneIds = [];
    this.emitted = 0;
    this.droppedHeld = 0;
    this.verdicts = 0;
  }

  /** One request's decoded spans. */
  ingest(spans) {
    const at = this.now();
    let from = 0;
    for (let i = 1; i <= spans.length; i++) {
      if (i === spans.length || spans[i].traceId !== spans[from].traceId) {
        this.trace(spans, from, i, at);
        from = i;
      }
    }
    this.judgeDue(at);
  }

  trace(spans, from, to, at) {
    const n = to - from;
    const traceId = spans[from].traceId;
    if (this.traces.has(traceId)) return; // late spans of a kept trace: dropped as late (not counted here)
    if (n > this.order.length) throw new Error(`LeanIngest: ${n} spans of one trace in one request (scratch holds ${this.order.length})`);
    const parentIdx = this.parentIdx;
    const kinds = this.kinds;
    const cls = this.classified;
    // Parent index within the group (linear scan: traces are small).
    for (let i = 0; i < n; i++) {
      const s = spans[from + i];
      const c = classify(s);
      cls[i] = c;
      kinds[i] = c.kind === undefined ? 0 : KIND_CODE[c.kind];
      let p = -1;
      const pid = s.parentSpanId;
      if (pid !== undefined) for (let j = 0; j < n; j++) if (spans[from + j].spanId === pid) { p = j; break; }
      parentIdx[i] = p;
    }
    // Parent-first order: roots, then each placed span's children (by start time) right after it
    // (breadth within a parent, depth across: a span always comes after its parent).
    const order = this.order;
    let k = 0;
    for (let i = 0; i < n; i++) if (parentIdx[i] < 0) order[k++] = i;
    for (let o = 0; o < k; o++) {
      const parent = order[o];
      const first = k;
      for (let j = 0; j < n; j++) {
        if (parentIdx[j] !== parent) continue;
        let q = k++;
        while (q > first && spans[from + order[q - 1]].startMs > spans[from + j].startMs) {
          order[q] = order[q - 1];
          q--;
        }
        order[q] = j;
      }
    }
    // Runs, users and events in that order.
    const runs = this.runOf;
    const users = this.userOf;
    const convs = this.convOf;
    const doneIds = this.doneIds;
    doneIds.length = 0;
    for (let o = 0; o < k; o++) {
      const i = order[o];
      const s = spans[from + i];
      const c = cls[i];
      const p = parentIdx[i];
      users[i] = c.user ?? (p >= 0 ? users[p] : undefined);
      convs[i] = c.conversation ?? (p >= 0 ? convs[p] : undefined);
      let run = p >= 0 ? runs[p] : undefined;
      if (kinds[i] === 1 && run === undefined) {
        run = new LeanRun(traceId, s.spanId, c.name ?? 'unknown', s.startMs);
        this.inFlight.set(run.runId, run);
      }
      runs[i] = run;
      if (run !== undefined && run.spanObjects !== undefined) run.spanObjects.push(new SpanObject(s.spanId, s.parentSpanId, c.kind, c.name, users[i], convs[i], s.startMs, s.endMs));
      if (run === undefined || kinds[i] === 0) continue;
      if (run.user === undefined && users[i] !== undefined) run.user = users[i];
      if (run.conversation === undefined && convs[i] !== undefined) run.conversation = convs[i];
      const si = this.addSpan(run, s, kinds[i], c.name);
      this.addEvent(run, si, START_CODE[kinds[i]], at);
    }
    // Ends, children before parents (reverse order), then each run's end.
    for (let o = k - 1; o >= 0; o--) {
      const i = order[o];
      const run = runs[i];
      doneIds.push(spans[from + i].spanId);
      if (run === undefined || kinds[i] === 0) continue;
      const s = spans[from + i];
      const t = END_CODE[kinds[i]];
      if (t !== 0) this.addEvent(run, run.spanIds.indexOf(s.spanId), t, at);
      if (kinds[i] === 1 && run.spanIds[0] === s.spanId) {
        run.endMs = s.endMs;
        run.spanIds = run.spanIds.join('');
        this.dueRuns[this.dueTail & 0xfffff] = run;
        this.dueAt[this.dueTail++ & 0xfffff] = at + this.opts.graceMillis;
      }
    }
    // Keep the trace for late spans until idle (bounded: the oldest goes).
    if (this.traceSize === this.opts.maxTraces) {
      this.traces.delete(this.traceRing[this.traceHead]);
      this.traceHead = (this.traceHead + 1) % this.opts.maxTraces;
      this.traceSize--;
    }
    this.traces.set(traceId, doneIds.join(''));
    const slot = (this.traceHead + this.traceSize++) % this.opts.maxTraces;
    this.traceRing[slot] = traceId;
    this.traceAt[slot] = at;
    while (this.traceSize > 0 && this.traceAt[this.traceHead] + this.opts.idleMillis <= at) {
      this.traces.delete(this.traceRing[this.traceHead]);
      this.traceRing[this.traceHead] = undefined;
      this.traceHead = (this.traceHead + 1) % this.opts.maxTraces;
      this.traceSize--;
    }
  }

  addSpan(run, s, kind, name) {
    const i = run.spanIds.length;
    run.spanIds.push(s.spanId);
    run.names.push(name);
    let cols = run.spanCols;
    if (cols === undefined || cols.length < (i + 1) * 3) {
      const grown = new Float64Array(Math.max(12, (i + 1) * 6));
      if (cols !== undefined) grown.set(cols);
      run.spanCols = cols = grown;
    }
    cols[i * 3] = kind;
    cols[i * 3 + 1] = s.startMs;
    cols[i * 3 + 2] = s.endMs ?? -1;
    return i;
  }

  addEvent(run, spanIndex, type, at) {
    let evs = run.events;
    const i = run.eventCount++;
    if (evs === undefined || evs.length === i) {
      const grown = new Int32Array(Math.max(8, i * 2));
      if (evs !== undefined) grown.set(evs);
      run.events = evs = grown;
    }
    evs[i] = (spanIndex << 8) | (type << 2) | EV_PENDING;
    if (run.eventObjects !== undefined) run.eventObjects.push(new EventObject(i + 1, type, spanIndex, run));
    this.emitted++;
    // No connection for the user (the figure's workload): held, the oldest given up past the bound.
    if (this.heldSize === this.opts.maxHeld) {
      const r = this.heldRuns[this.heldHead];
      const e = this.heldIdx[this.heldHead];
      if ((r.events[e] & 3) === EV_HELD) r.events[e] = (r.events[e] & ~3) | EV_DROPPED;
      this.droppedHeld++;
      this.heldHead = (this.heldHead + 1) % this.opts.maxHeld;
      this.heldSize--;
    }
    const slot = (this.heldHead + this.heldSize++) % this.opts.maxHeld;
    this.heldRuns[slot] = run;
    this.heldIdx[slot] = i;
    evs[i] = (evs[i] & ~3) | EV_HELD;
  }

  judgeDue(now) {
    while (this.dueHead < this.dueTail && this.dueAt[this.dueHead & 0xfffff] <= now) {
      const run = this.dueRuns[this.dueHead & 0xfffff];
      this.dueRuns[this.dueHead++ & 0xfffff] = undefined;
      let delivered = 0;
      let dropped = 0;
      for (let i = 0; i < run.eventCount; i++) {
        const st = run.events[i] & 3;
        if (st === EV_DELIVERED) delivered++;
        else dropped++;
      }
      run.delivered = delivered;
      run.dropped = dropped;
      run.verdict = dropped === 0 ? 1 : delivered === 0 ? 2 : 3;
      this.verdicts++;
      run.spanObjects = undefined; // the bridge lets go of a judged run's spans (the trace keeps ids only)
      this.inFlight.delete(run.runId);
      const old = this.judged[this.judgedNext];
      if (old !== undefined) this.judgedMap.delete(old.runId);
      this.judged[this.judgedNext] = run;
      this.judgedMap.set(run.runId, run);
      this.judgedNext = (this.judgedNext + 1) % this.opts.runsMaxCount;
    }
  }
}
