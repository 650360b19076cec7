import type { EventType, LifecycleKind } from '../audit/Metrics.js';
import { append } from '../util/arrays.js';
import { RunRecord, type SpanSummary } from '../audit/RunRecord.js';
import { classify, type Classified } from '../conventions/classify.js';
import type { SpanEventInput, SpanInput } from '../conventions/SpanInput.js';
import type { BridgeRegistry, DoneEntry } from './BridgeRegistry.js';
import type { OutboundEvent } from './EventSink.js';

const PARENT_REMOTE = 1;
const SEEN_END = 2;
const ANCHORED = 4;
const HELD = 8;
const EMITTED_START = 16;
const EMITTED_END = 32;
const COUNTED = 64;
/** `user` / `conv` came from the span's own attributes (they outrank the parent's; baggage does not). */
const OWN_USER = 128;
const OWN_CONV = 256;
/** Inside a run that has ended and been let go (a compacted OTLP trace): its events are late. */
const IN_ENDED_RUN = 512;

/**
 * What the bridge keeps of one span of a trace. Kept small (one in-flight run
 * is at least one of these): booleans share one bit field, the model and the
 * tool call id share one slot, and a lifecycle span's node is also its entry
 * in the run's span list (`SpanSummary`) for the inspector.
 */
export class SpanNode {
  private flags = 0;
  kind: LifecycleKind | undefined;
  /** Agent name (agent), tool name (tool) or model (thinking). */
  name: string | undefined;
  /** The tool call id (tool), the model (thinking) or the parent agent's name (agent). */
  private detail: string | undefined;
  error: string | undefined = undefined;
  /** Before anchoring: the span's own user, else the parent-context hint, else baggage's; after: the resolved user. */
  user: string | undefined;
  conv: string | undefined;
  endMs: number | undefined = undefined;
  run: RunState | undefined = undefined;
  agentName: string | undefined = undefined;

  constructor(
    readonly spanId: string,
    public parentSpanId: string | undefined,
    parentRemote: boolean,
    c: Classified,
    span: SpanInput,
    readonly startMs: number,
  ) {
    this.kind = c.kind;
    this.name = c.name;
    this.detail = c.kind === 'tool' ? c.callId : c.kind === 'thinking' ? c.model : undefined;
    // Own attributes, then the nearest ancestor's (the parent node's at attach(), else the parent-context hint),
    // then W3C baggage (in process), which classify() marks as not the span's own.
    const ownUser = c.user !== undefined && !c.userFromBaggage;
    const ownConv = c.conversation !== undefined && !c.conversationFromBaggage;
    this.user = ownUser ? c.user : (span.parentUser ?? c.user);
    this.conv = ownConv ? c.conversation : (span.parentConversation ?? c.conversation);
    this.flags = (parentRemote ? PARENT_REMOTE : 0) | (ownUser ? OWN_USER : 0) | (ownConv ? OWN_CONV : 0);
  }

  get callId(): string | undefined {
    return this.kind === 'tool' ? this.detail : undefined;
  }
  get model(): string | undefined {
    return this.kind === 'thinking' ? this.detail : undefined;
  }
  /** A sub-agent's nearest enclosing agent, set when its start is emitted (an agent has no call id or model: the same slot). */
  get parentAgent(): string | undefined {
    return this.kind === 'agent' ? this.detail : undefined;
  }
  set parentAgent(name: string | undefined) {
    if (this.kind === 'agent') this.detail = name;
  }

  /** What the span's end says that its start did not (attributes set after start). */
  update(c: Classified): void {
    // A span that becomes an agent at its end (attributes set after its start) takes the name it now has;
    // an agent's name is otherwise the one its start announced.
    const becameAgent = this.kind === undefined && c.kind === 'agent';
    if (this.kind === undefined && c.kind !== undefined) this.kind = c.kind;
    if (c.name !== undefined && (this.kind !== 'agent' || becameAgent)) this.name = c.name;
    if (becameAgent && this.anchored) this.agentName = this.name;
    const detail = this.kind === 'tool' ? c.callId : this.kind === 'thinking' ? c.model : undefined;
    if (detail !== undefined) this.detail = detail;
    // After anchoring, the user only matters if none was inherited (the run's user, at its end);
    // the conversation of an anchored span is settled (its events already carry it).
    if (c.user !== undefined && (!this.anchored || this.user === undefined)) {
      this.user = c.user;
      this.flags |= OWN_USER;
    }
    if (c.conversation !== undefined && !this.anchored) {
      this.conv = c.conversation;
      this.flags |= OWN_CONV;
    }
  }

  get ownUser(): boolean {
    return (this.flags & OWN_USER) !== 0;
  }
  get ownConv(): boolean {
    return (this.flags & OWN_CONV) !== 0;
  }
  get parentRemote(): boolean {
    return (this.flags & PARENT_REMOTE) !== 0;
  }
  set parentRemote(v: boolean) {
    this.set(PARENT_REMOTE, v);
  }
  get seenEnd(): boolean {
    return (this.flags & SEEN_END) !== 0;
  }
  set seenEnd(v: boolean) {
    this.set(SEEN_END, v);
  }
  get anchored(): boolean {
    return (this.flags & ANCHORED) !== 0;
  }
  set anchored(v: boolean) {
    this.set(ANCHORED, v);
  }
  get held(): boolean {
    return (this.flags & HELD) !== 0;
  }
  set held(v: boolean) {
    this.set(HELD, v);
  }
  get emittedStart(): boolean {
    return (this.flags & EMITTED_START) !== 0;
  }
  set emittedStart(v: boolean) {
    this.set(EMITTED_START, v);
  }
  get emittedEnd(): boolean {
    return (this.flags & EMITTED_END) !== 0;
  }
  set emittedEnd(v: boolean) {
    this.set(EMITTED_END, v);
  }
  get counted(): boolean {
    return (this.flags & COUNTED) !== 0;
  }
  set counted(v: boolean) {
    this.set(COUNTED, v);
  }

  get inEndedRun(): boolean {
    return (this.flags & IN_ENDED_RUN) !== 0;
  }
  set inEndedRun(v: boolean) {
    this.set(IN_ENDED_RUN, v);
  }

  private set(bit: number, v: boolean): void {
    this.flags = v ? this.flags | bit : this.flags & ~bit;
  }
}

/**
 * A run in flight: one top-level agent span and everything below it. It is
 * the run's audit record too (one object per run); `trace` and `top` are let
 * go when the run is released, so a judged run kept for the runs API does not
 * keep its trace.
 */
export class RunState extends RunRecord {
  seq = 0;
  /** A span of it named a user id over the limit (UNROUTABLE_USER): no user is ever taken for it (its events go as no_user). */
  unroutable = false;
  /** Events produced before the run's user was known. */
  unrouted: OutboundEvent[] | undefined = undefined;
  /** Both let go when the run is released. */
  trace: TraceBridge | undefined;
  top: SpanNode | undefined;

  constructor(trace: TraceBridge, top: SpanNode, openedAtMs: number) {
    // join() makes a flat string; a template literal would keep a rope object besides its flattened copy.
    super([trace.traceId, top.spanId].join('-'), trace.traceId, top.spanId, top.name ?? 'unknown', top.startMs, openedAtMs);
    this.trace = trace;
    this.top = top;
  }

  /** Released: ended, evicted or judged early; no more events are emitted for it. */
  get ended(): boolean {
    return this.trace === undefined;
  }
}

const START_TYPE: Record<LifecycleKind, EventType> = { agent: 'agent_started', thinking: 'agent_thinking', tool: 'tool_executing' };
/** The completion event of a lifecycle kind (a thinking span has none). */
export const END_TYPE: Record<LifecycleKind, EventType | undefined> = { agent: 'agent_completed', thinking: undefined, tool: 'tool_completed' };

/**
 * The bridge of one trace (one request): it assembles the trace's spans,
 * assigns lifecycle spans to runs and emits each run's events in causal order
 * with contiguous `seq`s. Created at the trace's first span of interest and
 * released once its runs have ended; there is no global emitter.
 */
export class TraceBridge {
  /** The trace's spans: one node, a small list while there are few (most traces), a Map past SMALL_TRACE. */
  private nodes: SpanNode | SpanNode[] | Map<string, SpanNode> | undefined;
  /**
   * Held spans (waiting for their parent): none (in-process traces never hold), a small list in
   * hold order (most OTLP traces hold a few children briefly), or by parent id past SMALL_TRACE.
   */
  private waiting: SpanNode[] | Map<string, SpanNode[]> | undefined;
  /**
   * Spans of judged runs that are over (ended, emitted, let go), kept as ids
   * only: their 16-character ids one after the other while there are few
   * (most traces), a Set past DONE_AS_STRING. A late span below one of them
   * finds it (`node()` gives a stand-in) and is dropped as late.
   */
  private doneIds: string | Set<string> = '';
  heldCount = 0;
  activeRuns = 0;
  /** Runs opened in this trace (OTLP keeps a trace that had runs until idle, for late spans). */
  runCount = 0;
  /** Span ids dropped by maxSpansPerRun (bounded), so a start and an end count once. */
  private droppedSpans: Set<string> | undefined;
  localRootEnded = false;
  lastSeenMs = 0;
  /** OTLP: its entry in the registry's order of traces kept only for late spans, while it is one. */
  doneEntry: DoneEntry | undefined = undefined;

  constructor(
    readonly traceId: string,
    readonly reg: BridgeRegistry,
  ) {}

  /** Spans kept, as nodes or as ids of done spans (the bound of maxSpansPerRun counts both). */
  get size(): number {
    const n = this.nodes;
    const d = this.doneIds;
    return (n === undefined ? 0 : n instanceof SpanNode ? 1 : Array.isArray(n) ? n.length : n.size) + (typeof d === 'string' ? d.length / ID_CHARS : d.size);
  }

  node(spanId: string): SpanNode | undefined {
    const n = this.nodes;
    let found: SpanNode | undefined;
    if (n === undefined) found = undefined;
    else if (n instanceof SpanNode) found = n.spanId === spanId ? n : undefined;
    else if (!Array.isArray(n)) found = n.get(spanId);
    else {
      for (let i = 0; i < n.length; i++) {
        if (n[i]!.spanId === spanId) {
          found = n[i];
          break;
        }
      }
    }
    return found ?? (this.doneIds !== '' && this.hasDoneId(spanId) ? standIn(spanId, true, undefined, undefined) : undefined);
  }

  private hasDoneId(spanId: string): boolean {
    if (spanId.length !== ID_CHARS) return false;
    const ids = this.doneIds;
    if (typeof ids !== 'string') return ids.has(spanId);
    for (let i = ids.indexOf(spanId); i >= 0; i = ids.indexOf(spanId, i + 1)) if (i % ID_CHARS === 0) return true;
    return false;
  }

  /** Spans kept as nodes (not as done ids). */
  get nodeCount(): number {
    const n = this.nodes;
    return n === undefined ? 0 : n instanceof SpanNode ? 1 : Array.isArray(n) ? n.length : n.size;
  }

  private add(node: SpanNode): void {
    this.reg.nodesKept(1);
    const n = this.nodes;
    if (n === undefined) this.nodes = node;
    else if (n instanceof SpanNode) this.nodes = [n, node];
    else if (!Array.isArray(n)) n.set(node.spanId, node);
    else if (n.length < SMALL_TRACE) this.nodes = append(n, node);
    else {
      const m = new Map(n.map((x) => [x.spanId, x]));
      m.set(node.spanId, node);
      this.nodes = m;
    }
  }

  /** Every span of the trace kept as a node (done spans, kept as ids, have no runs left). Not a copy: do not add nodes while reading it. */
  nodeList(): readonly SpanNode[] {
    const n = this.nodes;
    return n === undefined ? [] : n instanceof SpanNode ? [n] : Array.isArray(n) ? n : [...n.values()];
  }

  handle(span: SpanInput, ended: boolean): void {
    const c = classify(span, this.reg.metrics.spanValuesLimitedCounts);
    let node = this.node(span.spanId);
    if (node === undefined) {
      const max = this.reg.opts.maxSpansPerRun;
      const size = this.size;
      // Agent spans get headroom (up to twice the limit): over OTLP a big trace
      // arrives children first, and dropping its top-level agent span would
      // leave the whole run unjudged.
      if (size >= max && (c.kind !== 'agent' || size >= 2 * max)) {
        // Count each dropped span once, though its start and end both arrive.
        const dropped = (this.droppedSpans ??= new Set<string>());
        if (!dropped.has(span.spanId)) {
          if (dropped.size < 4096) dropped.add(span.spanId);
          this.reg.evicted('max_spans');
        }
        return;
      }
      node = new SpanNode(span.spanId, span.parentSpanId || undefined, span.parentIsRemote === true, c, span, span.startMs);
      this.add(node);
    } else {
      // A second start, a start after the end, or a second end: nothing new.
      if (!ended || node.seenEnd) return;
      node.update(c);
    }
    if (node.kind !== undefined && !node.counted) {
      node.counted = true;
      this.reg.metrics.lifecycleSpans.inc({ kind: node.kind });
    }
    if (ended) {
      node.seenEnd = true;
      node.endMs = span.endMs;
      node.error = c.error;
      if (!node.parentSpanId || node.parentRemote) this.localRootEnded = true;
    }
    if (node.anchored) this.visit(node, false);
    else if (this.canAnchor(node)) this.anchorTree(node);
    else if (!node.held) this.hold(node);
    // Audit mode: outcomes recorded on the span (kept with a held span until it is anchored).
    if (span.events !== undefined && span.events.length > 0) this.reg.noteSpanEvents(this, node, span.events);
  }

  private canAnchor(node: SpanNode): boolean {
    if (node.parentSpanId === undefined) return true;
    const parent = this.node(node.parentSpanId);
    if (parent !== undefined) return parent.anchored;
    // A remote parent (another service's span) is not waited for across requests; it is used when it is
    // here. Within one request (a Collector or an exporter grouping several services' spans, children
    // first) a span with no user of its own waits for the request's end (its run would have no user).
    return node.parentRemote ? !this.reg.waitsInRequest(node) : this.reg.opts.parentsArriveFirst;
  }

  private hold(node: SpanNode): void {
    node.held = true;
    const w = this.waiting;
    if (w === undefined) this.waiting = [node];
    else if (Array.isArray(w) && w.length < SMALL_TRACE) w.push(node);
    else {
      const byParent = Array.isArray(w) ? groupByParent(w) : w;
      this.waiting = byParent;
      const list = byParent.get(node.parentSpanId!);
      if (list) list.push(node);
      else byParent.set(node.parentSpanId!, [node]);
    }
    this.heldCount++;
    this.reg.held(this, node);
  }

  /**
   * Give up waiting for `node`'s ancestors: treat the parent of its topmost
   * held ancestor as outside tracewire's view. (Anchoring `node` alone while
   * its parent waits too would put it outside the run that parent opens when
   * given up in turn: its events lost, and not even expected.)
   */
  forceAnchor(node: SpanNode): void {
    if (!node.held || node.anchored) return;
    // Up through the held ancestors (bounded: a parent cycle in malformed input ends the walk).
    for (let up = this.heldParent(node), steps = this.heldCount; up !== undefined && steps > 0; up = this.heldParent(up), steps--) node = up;
    const w = this.waiting;
    const list = Array.isArray(w) ? w : w?.get(node.parentSpanId!);
    if (list) {
      const i = list.indexOf(node);
      if (i >= 0) list.splice(i, 1);
      if (list.length === 0 && w instanceof Map) w.delete(node.parentSpanId!);
    }
    node.held = false;
    this.heldCount--;
    const audit = this.reg.unheld(node);
    // Its own parent never came: anchor it as a local root.
    node.parentRemote = true;
    this.anchorTree(node, audit);
  }

  /** The parent of `node` if it is a span of this trace that waits for its own ancestors. */
  private heldParent(node: SpanNode): SpanNode | undefined {
    if (node.parentSpanId === undefined) return undefined;
    const parent = this.node(node.parentSpanId);
    return parent !== undefined && parent.held && !parent.anchored ? parent : undefined;
  }

  private anchorTree(node: SpanNode, audit?: readonly SpanEventInput[]): void {
    this.attach(node, audit);
    this.visit(node, true);
  }

  /** Inherit run, agent, user and conversation from the (anchored) parent; then note the audit events it waited with. */
  private attach(node: SpanNode, audit: readonly SpanEventInput[] | undefined): void {
    node.anchored = true;
    // A remote parent too, when it arrived (both services send to the sidecar): a sub-agent called over HTTP stays in its caller's run.
    const parent = node.parentSpanId !== undefined ? this.node(node.parentSpanId) : undefined;
    if (parent !== undefined) {
      // Below its parent now, also a remote one (walks up to the parent agent go on through it).
      if (node.parentRemote) node.parentRemote = false;
      // The same id as the parent's own string: the decoder's copy is let go while it is young.
      node.parentSpanId = parent.spanId;
      // Own attributes first, then the parent's, then the hint from the parent context, then baggage (both set at construction).
      if (!node.ownUser && parent.user !== undefined) node.user = parent.user;
      if (!node.ownConv && parent.conv !== undefined) node.conv = parent.conv;
    }
    const parentRun = parent?.run;
    // Below a span of a run that ended and was let go: late, whatever its kind (no phantom run).
    if (parent !== undefined && parent.inEndedRun) node.inEndedRun = true;
    if (node.kind === 'agent') {
      node.agentName = node.name;
      // Inside a run (also a late sub-agent of an ended run: its events are dropped as late), else a new run.
      if (parentRun !== undefined) node.run = parentRun;
      else if (!node.inEndedRun) node.run = this.reg.openRun(this, node);
    } else {
      node.run = parentRun;
      node.agentName = parent?.agentName;
    }
    const run = node.run;
    if (run !== undefined && run.user === undefined && node.user !== undefined) this.reg.resolveUser(run, node.user);
    if (run !== undefined && run.conversation === undefined && node.conv !== undefined) run.conversation = node.conv;
    if (audit !== undefined) this.reg.noteSpanEvents(this, node, audit);
  }

  /**
   * Emit what `node` now allows, in causal order: its start, then (when
   * `withChildren`) every held descendant that waited for it, depth first,
   * each child's subtree before the next child (by start time), then its
   * end. Iterative: a chain of held spans can be as deep as maxSpansPerRun
   * (an exporter sends children first), deeper than the call stack allows.
   */
  private visit(node: SpanNode, withChildren: boolean): void {
    this.emitStart(node);
    const kids = withChildren ? this.heldChildren(node) : undefined;
    if (kids === undefined) {
      this.emitEnd(node);
      return;
    }
    // The path from `node` down: each node on it, its held children, and the index of the next one to visit.
    const path: SpanNode[] = [node];
    const pathKids: SpanNode[][] = [kids];
    const next: number[] = [0];
    while (path.length > 0) {
      const d = path.length - 1;
      const list = pathKids[d]!;
      const i = next[d]!;
      if (i < list.length) {
        next[d] = i + 1;
        const k = list[i]!;
        k.held = false;
        this.heldCount--;
        this.attach(k, this.reg.unheld(k));
        this.emitStart(k);
        const below = this.heldChildren(k);
        if (below === undefined) this.emitEnd(k);
        else {
          path.push(k);
          pathKids.push(below);
          next.push(0);
        }
      } else {
        const done = path.pop()!;
        pathKids.pop();
        next.pop();
        this.emitEnd(done);
      }
    }
  }

  /** The held spans waiting for `node` (taken out of waiting), in start order. */
  private heldChildren(node: SpanNode): SpanNode[] | undefined {
    if (this.waiting === undefined) return undefined;
    const kids = this.takeWaiting(node.spanId);
    if (kids !== undefined && kids.length > 1) kids.sort((a, b) => a.startMs - b.startMs);
    return kids;
  }

  /** Remove and return the held spans whose parent is `spanId`. */
  private takeWaiting(spanId: string): SpanNode[] | undefined {
    const w = this.waiting;
    if (w === undefined) return undefined;
    if (!Array.isArray(w)) {
      const kids = w.get(spanId);
      if (kids !== undefined) w.delete(spanId);
      return kids;
    }
    let kids: SpanNode[] | undefined;
    let j = 0;
    for (let i = 0; i < w.length; i++) {
      const n = w[i]!;
      if (n.parentSpanId === spanId) (kids ??= []).push(n);
      else w[j++] = n;
    }
    w.length = j;
    if (j === 0) this.waiting = undefined;
    return kids;
  }

  private emitStart(node: SpanNode): void {
    if (node.emittedStart || node.kind === undefined) return;
    const run = node.run;
    if (run === undefined) {
      node.emittedStart = true;
      if (node.inEndedRun) this.reg.lateEvent(START_TYPE[node.kind]);
      // A thinking or tool span with no agent above it is not part of any run: no events.
      else node.emittedEnd = true;
      return;
    }
    node.emittedStart = true;
    // The node is its own entry in the run's span list (a lifecycle node: kind is set).
    if (run.spans.length < this.reg.opts.maxSpansPerRun) run.spans = append(run.spans, node as SpanSummary);
    if (node.kind === 'agent' && node !== run.top) node.parentAgent = this.parentAgentName(node);
    this.reg.emit(run, node, START_TYPE[node.kind]);
  }

  private emitEnd(node: SpanNode): void {
    if (!node.seenEnd || node.emittedEnd || !node.emittedStart || node.kind === undefined) return;
    node.emittedEnd = true;
    const run = node.run;
    const type = END_TYPE[node.kind];
    if (run === undefined) {
      if (node.inEndedRun && type !== undefined) this.reg.lateEvent(type);
      return;
    }
    if (type === undefined) return;
    const top = node === run.top;
    if (top && run.user === undefined && node.user !== undefined) this.reg.resolveUser(run, node.user);
    this.reg.emit(run, node, type);
    if (top) this.reg.endRun(run, node.endMs ?? node.startMs);
  }

  private parentAgentName(node: SpanNode): string | undefined {
    let p = node.parentSpanId !== undefined ? this.node(node.parentSpanId) : undefined;
    while (p !== undefined) {
      if (p.kind === 'agent') return p.name;
      p = p.parentSpanId !== undefined && !p.parentRemote ? this.node(p.parentSpanId) : undefined;
    }
    return undefined;
  }

  /** The nearest lifecycle span at or above `node` (audit mode attributes agent.event to it). */
  lifecycleOwner(node: SpanNode): SpanNode | undefined {
    let p: SpanNode | undefined = node;
    while (p !== undefined) {
      if (p.kind !== undefined) return p;
      p = p.parentSpanId !== undefined && !p.parentRemote ? this.node(p.parentSpanId) : undefined;
    }
    return undefined;
  }

  /**
   * Let go of the runs that were judged (OTLP keeps a trace whose runs ended,
   * for late spans): their spans remember only that they were in an ended
   * run, so a late span below them is still dropped as late, and the runs'
   * records are kept by the ledger alone. (Until the verdict, a late span's
   * audit outcomes still count, so a run is kept until then.) Spans of those
   * runs that are over (ended, anchored, their events emitted or given up)
   * are then kept as ids only; the others stay nodes (a span outside every
   * run may still parent a new run and pass on its user; a span not ended yet
   * still counts its late end).
   */
  compact(): void {
    let keep: SpanNode[] | undefined;
    let done: string[] | undefined;
    for (const node of this.nodeList()) {
      forgetJudgedRun(node);
      if (isOver(node)) (done ??= []).push(node.spanId);
      else (keep ??= []).push(node);
    }
    if (done === undefined) return;
    const ids = this.doneIds;
    if (typeof ids !== 'string') for (const id of done) ids.add(id);
    else if (ids.length / ID_CHARS + done.length > DONE_AS_STRING) this.doneIds = new Set([...splitIds(ids), ...done]);
    else {
      if (ids !== '') done.unshift(ids);
      // join() makes one flat string (concatenation would keep a chain of the pieces).
      this.doneIds = done.join('');
    }
    // The kept nodes are added back (and counted again).
    this.reg.nodesKept(-this.nodeCount);
    this.nodes = undefined;
    if (keep !== undefined) for (const node of keep) this.add(node);
  }

  /**
   * What a trace released with no run (nothing held either) leaves for spans
   * of it that arrive later (OTLP): up to `max` of its span ids, each with
   * the user and conversation it passes on to its children. Past `max`, its
   * local roots first (a run started in the background most often hangs
   * below the request's own span), then the spans that arrived last (an
   * exporter sends children first, so the spans nearest the root come last).
   */
  ancestors(max: number): Ancestor[] {
    // Spans outside every run (a run's own spans pass on nothing: a span below them is late).
    const list = this.nodeList().filter((n) => n.run === undefined && !n.inEndedRun);
    let keep: readonly SpanNode[] = list;
    if (list.length > max) {
      const picked: SpanNode[] = [];
      for (const n of list) if (picked.length < max && isLocalRoot(n)) picked.push(n);
      for (let i = list.length - 1; i >= 0 && picked.length < max; i--) if (!isLocalRoot(list[i]!)) picked.push(list[i]!);
      keep = picked;
    }
    return keep.map((node) => [node.spanId, node.user, node.conv] as const);
  }

  /**
   * OTLP, when the trace is let go (released with no run, or dropped as idle
   * after its runs were judged): what it leaves for spans of it that arrive
   * later (a run started in the background, below the request's span): its
   * spans outside the runs (`ancestors`), and, if it had runs, their span ids
   * when there are few (most traces), so a late span below one of them is
   * still dropped as late instead of opening a phantom run.
   */
  memory(max: number): TraceMemory {
    const ids = this.doneIds;
    return { ancestors: this.ancestors(max), doneIds: typeof ids === 'string' && ids.length <= IDLE_DONE_IDS * ID_CHARS ? ids : '', hadRuns: this.runCount > 0 };
  }

  /** On a new trace, take back what a let-go one left (see `memory`): its ancestors anchored, ended, outside every run; its done ids. */
  restore(m: TraceMemory): void {
    for (const [spanId, user, conv] of m.ancestors) this.add(standIn(spanId, false, user, conv));
    if (m.doneIds !== '' && this.doneIds === '') this.doneIds = m.doneIds;
    // It had runs: kept for late spans again until idle.
    if (m.hadRuns) this.runCount++;
    this.localRootEnded = true;
  }

  /**
   * In-process, when the trace is released with its runs over: its lifecycle
   * spans inside a run that have not ended yet and will emit a completion
   * (a tool left running when its agent returned), each with its run's id;
   * undefined if none. Their ends then count as late in their runs'
   * verdicts. (Ids, not the nodes: a span that never ends must not keep its
   * run past the ledger's bounds; the run is looked up when it ends.)
   */
  openRunMembers(): Map<string, string> | undefined {
    let open: Map<string, string> | undefined;
    for (const node of this.nodeList()) {
      if (node.run === undefined || node.seenEnd || node.kind === undefined || END_TYPE[node.kind] === undefined) continue;
      (open ??= new Map()).set(node.spanId, node.run.runId);
    }
    return open;
  }

  /** Held spans (for eviction; not in hold order once they are grouped by parent). */
  heldNodes(): SpanNode[] {
    const out: SpanNode[] = [];
    const w = this.waiting;
    if (Array.isArray(w)) out.push(...w);
    else if (w !== undefined) for (const l of w.values()) out.push(...l);
    return out;
  }
}

/** Spans (and held spans) of a trace kept in a list (linear search) before they get a Map: a Map costs about 300 bytes. */
const SMALL_TRACE = 8;

/** Span ids are 16 hex characters (a span id of another length is never kept as done). */
const ID_CHARS = 16;
/** Done span ids kept in one string up to this many (a lookup scans it); a Set past it. */
const DONE_AS_STRING = 64;
/** Done span ids an idle trace leaves for spans that arrive after it was dropped, up to this many (else none). */
const IDLE_DONE_IDS = 16;

function splitIds(ids: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < ids.length; i += ID_CHARS) out.push(ids.slice(i, i + ID_CHARS));
  return out;
}

/** A span with no parent in this trace (or a parent in another process). */
function isLocalRoot(node: SpanNode): boolean {
  return node.parentSpanId === undefined || node.parentRemote;
}

/** A span of an ended run with nothing more to emit: late spans below it find only that. */
function isOver(node: SpanNode): boolean {
  return node.inEndedRun && node.run === undefined && node.anchored && !node.held && node.seenEnd && node.spanId.length === ID_CHARS && (node.kind === undefined || node.emittedEnd);
}

const NOT_LIFECYCLE: Classified = {
  kind: undefined, name: undefined, callId: undefined, model: undefined, user: undefined, conversation: undefined,
  userFromBaggage: false, conversationFromBaggage: false, error: undefined, convention: undefined,
};
const NO_SPAN: SpanInput = { traceId: '', spanId: '', name: '', startMs: 0, attributes: {}, statusCode: 0 };

/** A span id with the user and conversation it passes on to its children. */
export type Ancestor = readonly [spanId: string, user: string | undefined, conversation: string | undefined];

/** What a trace let go leaves for its later spans (`TraceBridge.memory`). */
export interface TraceMemory {
  readonly ancestors: readonly Ancestor[];
  /** Its done span ids (16 characters each, one after the other), or ''. */
  readonly doneIds: string;
  readonly hadRuns: boolean;
}

/**
 * A node for a span known only by its id: a done span of an ended run (a new
 * object per lookup: late spans are rare, and nothing is written to it), or
 * an ancestor a released trace left. Anchored, ended, nothing to emit.
 */
function standIn(spanId: string, inEndedRun: boolean, user: string | undefined, conv: string | undefined): SpanNode {
  const n = new SpanNode(spanId, undefined, true, NOT_LIFECYCLE, NO_SPAN, 0);
  n.anchored = true;
  n.seenEnd = true;
  n.emittedStart = true;
  n.emittedEnd = true;
  n.counted = true;
  n.inEndedRun = inEndedRun;
  n.user = user;
  n.conv = conv;
  return n;
}

function forgetJudgedRun(node: SpanNode): void {
  const run = node.run;
  if (run !== undefined && run.ended && run.judgement !== undefined) {
    node.run = undefined;
    node.inEndedRun = true;
  }
}

function groupByParent(nodes: readonly SpanNode[]): Map<string, SpanNode[]> {
  const m = new Map<string, SpanNode[]>();
  for (const n of nodes) {
    const l = m.get(n.parentSpanId!);
    if (l) l.push(n);
    else m.set(n.parentSpanId!, [n]);
  }
  return m;
}

