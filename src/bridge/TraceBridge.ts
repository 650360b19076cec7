import type { DropReason, EventType, LifecycleKind } from '../audit/Metrics.js';
import { append } from '../util/arrays.js';
import { RunRecord } from '../audit/RunRecord.js';
import { classify } from '../conventions/classify.js';
import type { SpanEventInput, SpanInput } from '../conventions/SpanInput.js';
import { jsonString, type BridgeRegistry } from './BridgeRegistry.js';
import type { OutboundEvent } from './EventSink.js';

/** What the bridge keeps of one span of a trace. */
export interface SpanNode {
  readonly spanId: string;
  parentId: string | undefined;
  parentRemote: boolean;
  kind: LifecycleKind | undefined;
  name: string | undefined;
  callId: string | undefined;
  model: string | undefined;
  error: string | undefined;
  ownUser: string | undefined;
  ownConv: string | undefined;
  hintUser: string | undefined;
  hintConv: string | undefined;
  user: string | undefined;
  conv: string | undefined;
  startMs: number;
  endMs: number | undefined;
  seenEnd: boolean;
  anchored: boolean;
  held: boolean;
  heldAtMs: number;
  run: RunState | undefined;
  agentName: string | undefined;
  emittedStart: boolean;
  emittedEnd: boolean;
  counted: boolean;
  hookAt: number | undefined;
  summaryIndex: number;
  /** Audit mode: agent.event span events seen before the span was anchored. */
  pendingAudit: SpanEventInput[] | undefined;
}

/** A run in flight: one top-level agent span and everything below it. */
export class RunState {
  seq = 0;
  ended = false;
  // The run's user and conversation live on its record (`record.user`, `record.conversation`).
  /** Events produced before the run's user was known. */
  unrouted: OutboundEvent[] | undefined;

  constructor(
    readonly id: string,
    readonly trace: TraceBridge,
    readonly top: SpanNode,
    readonly record: RunRecord,
  ) {}
}

/** `"key":<value>,` (JSON, with a trailing comma), or '' when the value is undefined (JSON.stringify leaves the key out). */
function lead(key: string, value: string | undefined): string {
  return value === undefined ? '' : `"${key}":${jsonString(value)},`;
}

function orNull(value: string | undefined): string {
  return value === undefined ? 'null' : jsonString(value);
}

/** Shared empty map (never written: `hold()` swaps in a real one). */
const NO_WAITING: Map<string, SpanNode[]> = new Map();

const START_TYPE: Record<LifecycleKind, EventType> = { agent: 'agent_started', thinking: 'agent_thinking', tool: 'tool_executing' };

/**
 * The bridge of one trace (one request): it assembles the trace's spans,
 * assigns lifecycle spans to runs and emits each run's events in causal order
 * with contiguous `seq`s. Created at the trace's first span of interest and
 * released once its runs have ended; there is no global emitter.
 */
export class TraceBridge {
  readonly nodes = new Map<string, SpanNode>();
  /** Held spans by the parent id they wait for. */
  /** Created on the first held span: in-process traces never hold, and most OTLP traces hold briefly. */
  private waiting: Map<string, SpanNode[]> = NO_WAITING;
  heldCount = 0;
  activeRuns = 0;
  /** Runs opened in this trace, undefined until the first (a trace evicted as a whole releases them; OTLP keeps a trace that had runs until idle, for late spans). */
  runs: RunState[] | undefined;
  /** Span ids dropped by maxSpansPerRun (bounded), so a start and an end count once. */
  private droppedSpans: Set<string> | undefined;
  localRootEnded = false;
  lastSeenMs = 0;

  constructor(
    readonly traceId: string,
    private readonly reg: BridgeRegistry,
  ) {}

  handle(span: SpanInput, ended: boolean): void {
    const c = classify(span);
    let node = this.nodes.get(span.spanId);
    if (node === undefined) {
      const max = this.reg.opts.maxSpansPerRun;
      // Agent spans get headroom (up to twice the limit): over OTLP a big trace
      // arrives children first, and dropping its top-level agent span would
      // leave the whole run unjudged.
      if (this.nodes.size >= max && (c.kind !== 'agent' || this.nodes.size >= 2 * max)) {
        // Count each dropped span once, though its start and end both arrive.
        const dropped = (this.droppedSpans ??= new Set<string>());
        if (!dropped.has(span.spanId)) {
          if (dropped.size < 4096) dropped.add(span.spanId);
          this.reg.evicted('max_spans');
        }
        return;
      }
      node = {
        spanId: span.spanId,
        parentId: span.parentSpanId || undefined,
        parentRemote: span.parentIsRemote === true,
        kind: c.kind,
        name: c.name,
        callId: c.callId,
        model: c.model,
        error: undefined,
        ownUser: c.user,
        ownConv: c.conversation,
        hintUser: span.parentUser,
        hintConv: span.parentConversation,
        user: undefined,
        conv: undefined,
        startMs: span.startMs,
        endMs: undefined,
        seenEnd: false,
        anchored: false,
        held: false,
        heldAtMs: 0,
        run: undefined,
        agentName: undefined,
        emittedStart: false,
        emittedEnd: false,
        counted: false,
        hookAt: span.hookAt,
        summaryIndex: -1,
        pendingAudit: undefined,
      };
      this.nodes.set(span.spanId, node);
    } else {
      // A second start, a start after the end, or a second end: nothing new.
      if (!ended || node.seenEnd) return;
      if (node.kind === undefined && c.kind !== undefined) node.kind = c.kind;
      if (c.name !== undefined && node.kind !== 'agent') node.name = c.name;
      if (c.callId !== undefined) node.callId = c.callId;
      if (c.model !== undefined) node.model = c.model;
      if (c.user !== undefined) node.ownUser = c.user;
      if (c.conversation !== undefined) node.ownConv = c.conversation;
      if (span.hookAt !== undefined) node.hookAt = span.hookAt;
    }
    if (node.kind !== undefined && !node.counted) {
      node.counted = true;
      this.reg.metrics.lifecycleSpans.inc({ kind: node.kind });
    }
    if (ended) {
      node.seenEnd = true;
      node.endMs = span.endMs;
      node.error = c.error;
      if (!node.parentId || node.parentRemote) this.localRootEnded = true;
    }
    if (span.events !== undefined && span.events.length > 0) this.reg.noteSpanEvents(this, node, span.events);

    if (node.anchored) {
      this.visit(node, false);
      return;
    }
    if (this.canAnchor(node)) this.anchorTree(node);
    else if (!node.held) this.hold(node);
  }

  private canAnchor(node: SpanNode): boolean {
    if (node.parentId === undefined || node.parentRemote) return true;
    const parent = this.nodes.get(node.parentId);
    if (parent !== undefined) return parent.anchored;
    return this.reg.opts.parentsArriveFirst;
  }

  private hold(node: SpanNode): void {
    node.held = true;
    node.heldAtMs = this.reg.now();
    const list = this.waiting.get(node.parentId!);
    if (list) list.push(node);
    else (this.waiting === NO_WAITING ? (this.waiting = new Map()) : this.waiting).set(node.parentId!, [node]);
    this.heldCount++;
    this.reg.held(this, node);
  }

  /** Give up waiting for `node`'s ancestors: treat its parent as outside tracewire's view. */
  forceAnchor(node: SpanNode): void {
    if (!node.held || node.anchored) return;
    const list = this.waiting.get(node.parentId!);
    if (list) {
      const i = list.indexOf(node);
      if (i >= 0) list.splice(i, 1);
      if (list.length === 0) this.waiting.delete(node.parentId!);
    }
    node.held = false;
    this.heldCount--;
    this.reg.unheld(node);
    // Its own parent never came: anchor it as a local root.
    node.parentRemote = true;
    this.anchorTree(node);
  }

  private anchorTree(node: SpanNode): void {
    this.attach(node);
    this.visit(node, true);
  }

  /** Inherit run, agent, user and conversation from the (anchored) parent. */
  private attach(node: SpanNode): void {
    node.anchored = true;
    const parent = node.parentId !== undefined && !node.parentRemote ? this.nodes.get(node.parentId) : undefined;
    node.user = node.ownUser ?? parent?.user ?? node.hintUser;
    node.conv = node.ownConv ?? parent?.conv ?? node.hintConv;
    const parentRun = parent?.run;
    if (node.kind === 'agent') {
      node.agentName = node.name;
      if (parentRun !== undefined && !parentRun.ended) node.run = parentRun;
      else if (parentRun !== undefined && parentRun.ended) node.run = parentRun; // late sub-agent
      else node.run = this.reg.openRun(this, node);
    } else {
      node.run = parentRun;
      node.agentName = parent?.agentName;
    }
    const run = node.run;
    if (run !== undefined && run.record.user === undefined && node.user !== undefined) this.reg.resolveUser(run, node.user);
    if (run !== undefined && run.record.conversation === undefined && node.conv !== undefined) run.record.conversation = node.conv;
    if (node.pendingAudit !== undefined) {
      const evs = node.pendingAudit;
      node.pendingAudit = undefined;
      this.reg.noteSpanEvents(this, node, evs);
    }
  }

  /**
   * Emit what `node` now allows, in causal order: its start, then (when
   * `withChildren`) every held descendant that waited for it, then its end.
   */
  private visit(node: SpanNode, withChildren: boolean): void {
    this.emitStart(node);
    if (withChildren) {
      const kids = this.waiting.get(node.spanId);
      if (kids !== undefined) {
        this.waiting.delete(node.spanId);
        kids.sort((a, b) => a.startMs - b.startMs);
        for (const k of kids) {
          k.held = false;
          this.heldCount--;
          this.reg.unheld(k);
          this.attach(k);
          this.visit(k, true);
        }
      }
    }
    this.emitEnd(node);
  }

  private emitStart(node: SpanNode): void {
    if (node.emittedStart || node.kind === undefined) return;
    const run = node.run;
    if (run === undefined) {
      node.emittedStart = true;
      node.emittedEnd = true;
      this.reg.outsideRun(node);
      return;
    }
    node.emittedStart = true;
    const rec = run.record;
    if (rec.spans.length < this.reg.opts.maxSpansPerRun) {
      node.summaryIndex = rec.spans.length;
      rec.spans = append(rec.spans, { spanId: node.spanId, parentSpanId: node.parentId, kind: node.kind, name: node.name, startMs: node.startMs });
    }
    // `data` by hand (fixed shapes), as JSON.stringify writes it: undefined fields are left out.
    let data: string;
    if (node.kind === 'agent') {
      const parent = node === run.top ? undefined : this.parentAgentName(node);
      const agent = lead('agent', node.name);
      data = parent === undefined ? `{${agent.slice(0, -1)}}` : `{${agent}"parent_agent":${jsonString(parent)}}`;
    } else if (node.kind === 'thinking') {
      data = `{"model":${orNull(node.model)}}`;
    } else {
      data = `{${lead('tool', node.name)}"call_id":${orNull(node.callId)}}`;
    }
    this.reg.emit(run, node, START_TYPE[node.kind], node.startMs, data);
  }

  private emitEnd(node: SpanNode): void {
    if (!node.seenEnd || node.emittedEnd || !node.emittedStart || node.kind === undefined) return;
    node.emittedEnd = true;
    const run = node.run;
    if (run === undefined) return;
    const s = node.summaryIndex >= 0 ? run.record.spans[node.summaryIndex] : undefined;
    if (s !== undefined) {
      s.endMs = node.endMs;
      if (node.error !== undefined) s.error = node.error;
    }
    const d = node.endMs !== undefined ? Math.max(0, Math.round((node.endMs - node.startMs) * 1000) / 1000) : Number.NaN;
    // status, duration_ms and error, as JSON.stringify would write them (a non-finite duration is null).
    const tail = `"status":"${node.error === undefined ? 'ok' : 'error'}","duration_ms":${Number.isFinite(d) ? String(d) : 'null'}${node.error === undefined ? '' : `,"error":${jsonString(node.error)}`}}`;
    if (node.kind === 'tool') {
      this.reg.emit(run, node, 'tool_completed', node.endMs ?? node.startMs, `{${lead('tool', node.name)}"call_id":${orNull(node.callId)},${tail}`);
    } else if (node.kind === 'agent') {
      if (node === run.top && run.record.user === undefined && node.ownUser !== undefined) this.reg.resolveUser(run, node.ownUser);
      this.reg.emit(run, node, 'agent_completed', node.endMs ?? node.startMs, `{${lead('agent', node.name)}${tail}`);
      if (node === run.top) this.reg.endRun(run, node.endMs ?? node.startMs);
    }
  }

  private parentAgentName(node: SpanNode): string | undefined {
    let p = node.parentId !== undefined ? this.nodes.get(node.parentId) : undefined;
    while (p !== undefined) {
      if (p.kind === 'agent') return p.name;
      p = p.parentId !== undefined && !p.parentRemote ? this.nodes.get(p.parentId) : undefined;
    }
    return undefined;
  }

  /** The nearest lifecycle span at or above `node` (audit mode attributes agent.event to it). */
  lifecycleOwner(node: SpanNode): SpanNode | undefined {
    let p: SpanNode | undefined = node;
    while (p !== undefined) {
      if (p.kind !== undefined) return p;
      p = p.parentId !== undefined && !p.parentRemote ? this.nodes.get(p.parentId) : undefined;
    }
    return undefined;
  }

  /** Held spans, oldest first (for the orphan sweep). */
  heldNodes(): SpanNode[] {
    const out: SpanNode[] = [];
    for (const l of this.waiting.values()) out.push(...l);
    return out;
  }
}

export type { SpanEventInput, DropReason };
