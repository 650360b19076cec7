import { context, trace, type Span } from '@opentelemetry/api';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../../src/surfaces/server.js';
import type { TracewireOptions } from '../../../src/Tracewire.js';
import { connectAcked, hasChromium, inProcessTracer, judgedToolRun, launchChromium, metricValue, startTestSidecar, until, type TestClient } from '../../helpers.js';
import { BrokerProxy, RedisServer, redisGate } from './support.js';
import { FaultProxy, RecordingClient } from '../../client/support.js';

// Several sidecars behind one broker (DESIGN.md "Scale"): spans reach one sidecar (the origin), the user's
// WebSocket another (the edge). A real redis-server, real sidecars on port 0, real `ws` clients.

const EXPECTED = ['agent_started', 'tool_executing', 'tool_completed', 'tool_executing', 'tool_completed', 'agent_completed'];

/** A run of `user` started on `sc` through its in-process processor: `tool()` adds an ended tool span under it, `top.end()` ends it. */
function startRun(sc: Sidecar, user: string, attributes: Record<string, string> = {}): { top: Span; tool: () => void; runId: string } {
  const { tracer } = inProcessTracer(sc);
  const top = tracer.startSpan('invoke_agent planner', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'planner', 'user.id': user, ...attributes } });
  const ctx = trace.setSpan(context.active(), top);
  return {
    top,
    runId: `${top.spanContext().traceId}-${top.spanContext().spanId}`,
    tool: () => tracer.startSpan('execute_tool lookup', { attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'lookup' } }, ctx).end(),
  };
}

/** Poll an async check every 20 ms until it holds. */
async function eventually(check: () => Promise<boolean>, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe.skipIf(redisGate.skip && !redisGate.missingInCi)('fan-out across sidecars through Redis', () => {
  const redis = new RedisServer();
  const open: Sidecar[] = [];
  const clients: TestClient[] = [];
  let n = 0;

  beforeAll(async () => {
    if (redisGate.missingInCi) throw new Error('redis-server is not installed (CI must apt-get install redis-server)');
    await redis.start();
  });
  const proxies: BrokerProxy[] = [];
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    for (const sc of open.splice(0)) await sc.close();
    for (const p of proxies.splice(0)) await p.close();
  });
  afterAll(() => redis.destroy());

  /** A sidecar on the broker, subscribed; each test gets its own channel prefix. */
  async function sidecar(name: string, opts: TracewireOptions = {}): Promise<Sidecar> {
    const sc = await startTestSidecar({ brokerUrl: redis.url, brokerPrefix: `t${n}`, instanceId: name, brokerPresenceMillis: 200, logLevel: 'silent', ...opts });
    open.push(sc);
    await sc.tw.fanoutReady;
    return sc;
  }

  async function pair(opts: TracewireOptions = {}): Promise<[Sidecar, Sidecar]> {
    n++;
    return [await sidecar('origin', opts), await sidecar('edge', opts)];
  }

  async function client(sc: Sidecar, user: string, query?: string): Promise<TestClient> {
    const c = await connectAcked(sc, user, query);
    clients.push(c);
    return c;
  }

  /** An origin whose broker connections go through a BrokerProxy, an edge, and a client of `user` on the edge the origin knows of. */
  async function behindProxy(user: string): Promise<{ proxy: BrokerProxy; origin: Sidecar; edge: Sidecar; c: TestClient }> {
    n++;
    const proxy = await new BrokerProxy(redis.socket).start();
    proxies.push(proxy);
    const origin = await sidecar('origin', { brokerUrl: proxy.url, graceMillis: 10_000 });
    const edge = await sidecar('edge');
    const c = await client(edge, user);
    await heard(origin);
    return { proxy, origin, edge, c };
  }

  /** Wait until `origin` has heard of `count` users connected to other sidecars. */
  const heard = (origin: Sidecar, count = 1): Promise<void> => eventually(async () => (await metricValue(origin, 'tracewire_broker_remote_users')) >= count, 'presence');

  it("delivers a run's events to the user's connection on another sidecar, once and in order; the origin judges it complete and gets the acks", async () => {
    const [origin, edge] = await pair();
    const c = await client(edge, 'u1');
    await heard(origin);

    const runId = await judgedToolRun(origin, 'u1', 2);
    await c.until((x) => x.events.length >= 6, 5000, 'six events on the edge');
    expect(c.events.map((e) => e.type)).toEqual(EXPECTED);
    expect(c.events.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(new Set(c.events.map((e) => e.run_id))).toEqual(new Set([runId]));

    const run = origin.tw.ledger.get(runId)!;
    expect(run.judgement?.verdict).toBe('complete');
    expect(await metricValue(origin, 'tracewire_events_delivered_total')).toBe(6);
    // The edge relays; only the origin counts the run's events.
    expect(await metricValue(edge, 'tracewire_events_delivered_total')).toBe(0);
    expect(await metricValue(edge, 'tracewire_broker_messages_total', { direction: 'in', kind: 'events' })).toBeGreaterThan(0);
    expect(await metricValue(origin, 'tracewire_broker_pending_deliveries')).toBe(0);

    // An ack on the edge reaches the origin's record of the run.
    c.ws.send(JSON.stringify({ type: 'ack', run_id: runId, seq: 6 }));
    await until(() => run.events.every((e) => e.acked), 5000, 'acks at the origin');

    // A reconnect to the edge resumes from the edge's own resume window.
    const again = await client(edge, 'u1', `resume=${encodeURIComponent(runId)}:2`);
    await again.until((x) => x.events.length >= 4, 5000, 'the resumed events');
    expect(again.events.map((e) => e.seq)).toEqual([3, 4, 5, 6]);
    expect(again.frames.filter((f) => f.type === 'error')).toEqual([]);
  });

  it('sends the same run to every sidecar holding a connection of the user, and to none of anyone else', async () => {
    n++;
    const origin = await sidecar('origin');
    const e1 = await sidecar('edge-1');
    const e2 = await sidecar('edge-2');
    const a = await client(e1, 'u1');
    const b = await client(e2, 'u1');
    const other = await client(e2, 'someone-else');
    await heard(origin, 3);
    const runId = await judgedToolRun(origin, 'u1', 2);
    await a.until((x) => x.events.length >= 6, 5000, 'edge-1');
    await b.until((x) => x.events.length >= 6, 5000, 'edge-2');
    expect(a.events.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(b.texts.slice(1)).toEqual(a.texts.slice(1));
    expect(other.events).toEqual([]);
    expect(origin.tw.ledger.get(runId)!.judgement?.verdict).toBe('complete');
  });

  it('holds events of a user connected nowhere on the origin and releases them to the first sidecar that announces the user', async () => {
    const [origin, edge] = await pair({ graceMillis: 5000 });
    const { top, runId } = startRun(origin, 'late-user');
    top.end();
    await until(() => origin.tw.hub.stats().held === 2, 5000, 'two held events');

    const c = await client(edge, 'late-user');
    await c.until((x) => x.events.length >= 2, 5000, 'the held events');
    expect(c.events.map((e) => [e.type, e.seq, e.run_id])).toEqual([
      ['agent_started', 1, runId],
      ['agent_completed', 2, runId],
    ]);
    expect(origin.tw.hub.stats().held).toBe(0);
    // The edge's reports make them delivered (late) at the origin.
    const run = origin.tw.ledger.get(runId)!;
    await until(() => run.events.every((e) => e.state === 1 && e.late), 5000, 'delivered late at the origin');
    expect(await metricValue(origin, 'tracewire_events_delivered_late_total')).toBe(2);
  });

  it('sends what is held to a new connection of a user the origin already knows there (another conversation)', async () => {
    const [origin, edge] = await pair({ graceMillis: 4000 });
    await client(edge, 'u1', 'conversation_id=A');
    await heard(origin);
    const { top, runId } = startRun(origin, 'u1', { 'gen_ai.conversation.id': 'B' });
    top.end();
    // The edge's only connection is narrowed to conversation A: it turns the events down, the origin holds them.
    await until(() => origin.tw.hub.stats().held === 2, 5000, 'held after the edge turned them down');
    const b = await client(edge, 'u1', 'conversation_id=B');
    await b.until((x) => x.events.length >= 2, 5000, 'the held events on the new connection');
    expect(b.events.map((e) => [e.type, e.seq])).toEqual([
      ['agent_started', 1],
      ['agent_completed', 2],
    ]);
    await until(() => origin.tw.ledger.get(runId)?.judgement !== undefined, 8000, 'verdict');
    expect(origin.tw.ledger.get(runId)!.judgement!.verdict).toBe('complete');
  });

  it('a user who moves to another sidecar mid-run gets every event once and in order, those in flight to the old one included', async () => {
    n++;
    const origin = await sidecar('origin', { graceMillis: 5000 });
    // The old edge: a Redis client speaking the fan-out's protocol, so the test controls when it answers.
    const pub = await redis.client();
    const sub = pub.duplicate();
    sub.on('error', () => undefined);
    await sub.connect();
    const inFlight: number[] = [];
    await sub.subscribe(`t${n}:i:old-edge`, (m: string) => {
      const lines = m.split('\n').slice(1);
      for (let i = 0; i < lines.length; i += 2) inFlight.push((JSON.parse(lines[i]!) as number[])[0]!);
    });
    const presence = (k: string): Promise<unknown> => pub.publish(`t${n}:presence`, JSON.stringify({ k, o: 'old-edge', u: ['mover'] }));
    try {
      await presence('join');
      await heard(origin);
      const { tracer } = inProcessTracer(origin);
      const top = tracer.startSpan('invoke_agent planner', { attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'planner', 'user.id': 'mover' } });
      const ctx = trace.setSpan(context.active(), top);
      const tool = tracer.startSpan('execute_tool lookup', { attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'lookup' } }, ctx);
      await until(() => inFlight.length >= 2, 5000, 'seq 1 and 2 in flight to the old edge');
      // The user's connection there closed: it announces it; the run goes on (held at the origin) ...
      await presence('leave');
      await eventually(async () => (await metricValue(origin, 'tracewire_broker_remote_users')) === 0, 'the leave');
      tool.end();
      await until(() => origin.tw.hub.stats().held === 1, 5000, 'seq 3 held');
      // ... and what was in flight comes back: nobody took it there.
      await pub.publish(`t${n}:i:origin`, JSON.stringify({ k: 'rep', o: 'old-edge', r: inFlight.map((id) => [id, 'absent']) }));
      await until(() => origin.tw.hub.stats().held === 3, 5000, 'seq 1 and 2 held again');
      const edge = await sidecar('new-edge', { graceMillis: 5000 });
      const c = await client(edge, 'mover');
      await c.until((x) => x.events.length >= 3, 5000, 'the held events on the new edge');
      top.end();
      await c.until((x) => x.events.length >= 4, 5000, 'the last event');
      expect(c.events.map((e) => `${e.type}:${e.seq}`)).toEqual(['agent_started:1', 'tool_executing:2', 'tool_completed:3', 'agent_completed:4']);
    } finally {
      await sub.close();
      await pub.close();
    }
  });

  it('a sidecar restarted under the same id is not taken for the one before it: what it turned down reaches its new connection', async () => {
    n++;
    const origin = await sidecar('origin', { graceMillis: 4000 });
    const raw = await redis.client();
    try {
      // The sidecar before the restart had announced the user; the new one (same id) has no connection yet.
      await raw.publish(`t${n}:presence`, JSON.stringify({ k: 'join', o: 'edge', u: ['u1'] }));
      await heard(origin);
      const edge = await sidecar('edge');
      const { top } = startRun(origin, 'u1');
      top.end();
      await until(() => origin.tw.hub.stats().held === 2, 5000, 'held');
      const c = await client(edge, 'u1');
      await c.until((x) => x.events.length >= 2, 5000, 'the held events');
      expect(c.events.map((e) => e.type)).toEqual(['agent_started', 'agent_completed']);
    } finally {
      await raw.close();
    }
  });

  it('closing the origin waits for the outcomes of what it sent; closing an edge reports what it wrote before it goes', async () => {
    const [origin, edge] = await pair();
    const c = await client(edge, 'u1');
    await heard(origin);
    const { top, tool, runId } = startRun(origin, 'u1');
    for (let i = 0; i < 50; i++) tool();
    top.end();
    open.splice(open.indexOf(origin), 1);
    await origin.close();
    await c.until((x) => x.events.length >= 102, 5000, 'every event on the edge');
    expect(await metricValue(origin, 'tracewire_events_delivered_total')).toBe(102);
    expect(origin.tw.ledger.get(runId)!.judgement!.verdict).toBe('complete');

    // The other way round: an edge that shuts down while it writes a run's events.
    const [origin2, edge2] = await pair({ graceMillis: 2000 });
    const c2 = await client(edge2, 'u2');
    await heard(origin2);
    const deliverRemote = (edge2.tw.hub as unknown as { deliverRemote: (ev: unknown) => void }).deliverRemote.bind(edge2.tw.hub);
    let closing: Promise<void> | undefined;
    (edge2.tw.hub as unknown as { deliverRemote: (ev: unknown) => void }).deliverRemote = (ev) => {
      deliverRemote(ev);
      closing ??= Promise.resolve().then(() => edge2.close());
    };
    const runId2 = await judgedToolRun(origin2, 'u2', 20, 8000);
    await closing;
    open.splice(open.indexOf(edge2), 1);
    const j = origin2.tw.ledger.get(runId2)!.judgement!;
    // Whatever the client got is counted delivered; nothing is reported lost for want of a report.
    expect(j.delivered).toBe(c2.events.length);
    expect(c2.events.length).toBeGreaterThan(0);
    expect(j.reasons.broker_unconfirmed).toBeUndefined();
    void edge;
  });

  it('tells the edge when a relayed run ends, so its resume window lets the run go after the retention time', async () => {
    const [origin, edge] = await pair({ graceMillis: 300, replayRetentionMillis: 1000 });
    await client(edge, 'u1');
    await heard(origin);
    await judgedToolRun(origin, 'u1', 1);
    await eventually(async () => (await metricValue(edge, 'tracewire_resume_window_runs')) === 1, 'the run in the edge window');
    await eventually(async () => (await metricValue(edge, 'tracewire_resume_window_runs')) === 0, 'the run gone from the edge window after the retention time', 4000);
  });

  it('a client that reconnects through another sidecar resumes there: what it missed comes from the sidecar that relayed it, then the live rest, once and in order', async () => {
    n++;
    const origin = await sidecar('origin', { graceMillis: 3000 });
    const b = await sidecar('edge-b', { graceMillis: 3000 });
    const c = await sidecar('edge-c', { graceMillis: 3000 });
    const first = await client(b, 'u1');
    await heard(origin);
    await eventually(async () => (await metricValue(c, 'tracewire_broker_peers')) >= 2, 'edge-c knows the others');
    const { top, tool, runId } = startRun(origin, 'u1');
    for (let i = 0; i < 2; i++) tool();
    await first.until((x) => x.events.length >= 5, 5000, 'five events on edge-b');
    first.close();
    // The client saw up to seq 2 before its connection broke; the load balancer sends it to edge-c.
    const again = await client(c, 'u1', `resume=${encodeURIComponent(runId)}:2`);
    top.end();
    await again.until((x) => x.events.length >= 4, 5000, 'the missed events and the last one on edge-c');
    expect(again.events.map((e) => `${e.type}:${e.seq}`)).toEqual(['tool_completed:3', 'tool_executing:4', 'tool_completed:5', 'agent_completed:6']);
    expect(again.frames.filter((f) => f.type === 'error')).toEqual([]);
    // 3..5 came as a replay (6 too, when the origin had sent it before it answered: it is then not sent twice).
    expect(await metricValue(c, 'tracewire_events_replayed_total')).toBeGreaterThanOrEqual(3);
    // An ack on edge-c reaches the origin, which judges the run complete.
    again.ws.send(JSON.stringify({ type: 'ack', run_id: runId, seq: 6 }));
    const run = origin.tw.ledger.get(runId)!;
    await until(() => run.events.every((e) => e.acked), 5000, 'acks at the origin');
    await until(() => run.judgement !== undefined, 8000, 'verdict');
    expect(run.judgement!.verdict).toBe('complete');
    // And a later resume on edge-c is served from its own window.
    const third = await client(c, 'u1', `resume=${encodeURIComponent(runId)}:4`);
    await third.until((x) => x.events.length >= 2, 5000, 'from edge-c alone');
    expect(third.events.map((e) => e.seq)).toEqual([5, 6]);
  });

  it('a client back on the sidecar it left gets what went out while it was away (to the user\'s other tab on another sidecar)', async () => {
    const [origin, edge] = await pair({ graceMillis: 3000 });
    const home = await client(origin, 'u1');
    let away = await client(edge, 'u1');
    await heard(origin);
    const { top, tool, runId } = startRun(origin, 'u1');
    tool();
    await away.until((x) => x.events.length >= 3, 5000, 'three events on the edge');
    // The edge tab drops; the origin hears the user left the edge; the run goes on (to the other tab only).
    away.close();
    await eventually(async () => (await metricValue(origin, 'tracewire_broker_remote_users')) === 0, 'the leave');
    tool();
    await home.until((x) => x.events.length >= 5, 5000, 'the other tab');
    // Back on the same edge: its window has the run up to seq 3, the origin has the rest.
    away = await client(edge, 'u1', `resume=${encodeURIComponent(runId)}:3`);
    top.end();
    await away.until((x) => x.events.length >= 3, 5000, 'what went out meanwhile, and the end');
    expect(away.events.map((e) => e.seq)).toEqual([4, 5, 6]);
    expect(away.frames.filter((f) => f.type === 'error')).toEqual([]);
  });

  it('resume_all through another sidecar gets the runs the first one relayed; a run no sidecar has is named in the error', async () => {
    n++;
    const origin = await sidecar('origin');
    const b = await sidecar('edge-b');
    const c = await sidecar('edge-c');
    const first = await client(b, 'u1');
    await heard(origin);
    await eventually(async () => (await metricValue(c, 'tracewire_broker_peers')) >= 2, 'edge-c knows the others');
    const runId = await judgedToolRun(origin, 'u1', 1);
    await first.until((x) => x.events.length >= 4, 5000, 'the run on edge-b');
    first.close();
    const again = await client(c, 'u1', 'resume=no-such-run:3&resume_all=1');
    await again.until((x) => x.events.length >= 4 && x.frames.some((f) => f.type === 'error'), 5000, 'the run and the error');
    expect(again.events.map((e) => [e.run_id, e.seq])).toEqual([1, 2, 3, 4].map((q) => [runId, q]));
    const errors = again.frames.filter((f) => f.type === 'error');
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ code: 'TW_WS_BAD_FIELD', run_ids: ['no-such-run'] });
  });

  it('resume through another sidecar: a client up to date gets no error, a second tab gets the front of a run this sidecar only has the end of', async () => {
    n++;
    const origin = await sidecar('origin', { graceMillis: 3000 });
    const b = await sidecar('edge-b');
    const c = await sidecar('edge-c');
    const tab1 = await client(b, 'u1');
    await heard(origin);
    await eventually(async () => (await metricValue(c, 'tracewire_broker_peers')) >= 2, 'edge-c knows the others');
    const { tool, runId } = startRun(origin, 'u1');
    tool();
    tool();
    await tab1.until((x) => x.events.length >= 5, 5000, 'five events in tab 1');
    // Up to date: nothing after seq 5 anywhere yet; the run is known, so no error.
    const upToDate = await client(c, 'u1', `resume=${encodeURIComponent(runId)}:5`);
    await heard(origin, 2);
    tool();
    await upToDate.until((x) => x.events.length >= 2, 5000, 'the live events');
    expect(upToDate.events.map((e) => e.seq)).toEqual([6, 7]);
    // A second tab on edge-c (which has only 6 and 7 of the run) asks for it from the start.
    upToDate.ws.send(JSON.stringify({ type: 'resume', runs: { [runId]: 0 } }));
    await upToDate.until((x) => x.events.length >= 7, 5000, 'the front of the run');
    expect(upToDate.events.map((e) => e.seq)).toEqual([6, 7, 1, 2, 3, 4, 5]);
    expect(upToDate.frames.filter((f) => f.type === 'error')).toEqual([]);
  });

  it('a resume that waits for a sidecar that never answers holds live events back only briefly: the origin still gets their outcomes in time', async () => {
    n++;
    const origin = await sidecar('origin', { graceMillis: 4000 });
    const c = await sidecar('edge-c');
    // A sidecar that takes resume questions and never answers (hung).
    const silent = await redis.client();
    const sub = silent.duplicate();
    sub.on('error', () => undefined);
    await sub.connect();
    await sub.subscribe(`t${n}:resume`, () => undefined);
    await silent.publish(`t${n}:presence`, JSON.stringify({ k: 'sync', o: 'silent', u: [] }));
    try {
      const cl = await client(c, 'u1');
      await heard(origin);
      const { top, tool, runId } = startRun(origin, 'u1');
      tool();
      await cl.until((x) => x.events.length >= 3, 5000, 'three events');
      // Resume frames in a row for runs nobody has, while the run goes on.
      for (let i = 0; i < 5; i++) {
        cl.ws.send(JSON.stringify({ type: 'resume', runs: { [`gone-${i}`]: 0 } }));
        tool();
        await new Promise((r) => setTimeout(r, 150));
      }
      top.end();
      await cl.until((x) => x.events.length >= 14, 8000, 'every event');
      expect(cl.events.map((e) => e.seq)).toEqual(Array.from({ length: 14 }, (_, i) => i + 1));
      await until(() => origin.tw.ledger.get(runId)?.judgement !== undefined, 8000, 'verdict');
      expect(origin.tw.ledger.get(runId)!.judgement!.verdict).toBe('complete');
      // One question out at a time per connection, later frames merged into the next: five frames, fewer questions.
      expect(await metricValue(c, 'tracewire_broker_messages_total', { direction: 'out', kind: 'resumes' })).toBeLessThan(5);
      // Every run nobody has is named in an error (runs asked together share one).
      const told = cl.frames.filter((f) => f.type === 'error').map((f) => String(f.message)).join(' ');
      for (let i = 0; i < 5; i++) expect(told).toContain(`gone-${i}`);
    } finally {
      await sub.close();
      await silent.close();
    }
  });

  it('the shipped client gets every event of a run once and in order while its sidecar shuts down mid-run and the load balancer sends it to another', async () => {
    n++;
    const origin = await sidecar('origin', { graceMillis: 3000 });
    const b = await sidecar('edge-b');
    const c = await sidecar('edge-c');
    await eventually(async () => (await metricValue(c, 'tracewire_broker_peers')) >= 2, 'edge-c knows the others');
    const port = (sc: Sidecar): number => Number(new URL(sc.publicUrl).port);
    const proxy = await new FaultProxy(port(b)).start();
    const rc = new RecordingClient({ url: proxy.url, token: () => origin.tw.token('u1'), minRetryDelayMillis: 20, maxRetryDelayMillis: 100 });
    try {
      rc.client.connect();
      await rc.until((x) => x.opens() === 1, 5000, 'open on edge-b');
      await heard(origin);
      const { top, tool, runId } = startRun(origin, 'u1');
      for (let i = 0; i < 3; i++) tool();
      await rc.until((x) => x.events.length >= 7, 5000, 'seven events through edge-b');
      // A deploy: edge-b goes away (gracefully); the load balancer now sends new connections to edge-c.
      proxy.target = port(c);
      open.splice(open.indexOf(b), 1);
      const closing = b.close();
      for (let i = 0; i < 3; i++) tool();
      top.end();
      await closing;
      await rc.until((x) => x.events.length >= 14, 10_000, 'every event');
      expect(rc.seqs(runId)).toEqual(Array.from({ length: 14 }, (_, i) => i + 1));
      expect(rc.gaps).toEqual([]);
      expect(rc.opens()).toBeGreaterThanOrEqual(2);
      const run = origin.tw.ledger.get(runId)!;
      await until(() => run.judgement !== undefined, 8000, 'verdict');
      expect(run.judgement!.verdict).toBe('complete');
    } finally {
      rc.client.close();
      await proxy.close();
    }
  });

  it("the shipped client on another sidecar gets what its user's tab on the origin got while the broker was down, at the run's next event", async () => {
    const [origin, edge] = await pair({ graceMillis: 10_000 });
    const tab = await client(origin, 'u-miss');
    const rc = new RecordingClient({ url: `${edge.publicUrl.replace(/^http/, 'ws')}/v1/events`, token: () => origin.tw.token('u-miss') });
    try {
      rc.client.connect();
      await rc.until((x) => x.opens() === 1, 5000, 'open on the edge');
      await heard(origin);
      const { top, tool, runId } = startRun(origin, 'u-miss');
      await rc.until((x) => x.events.length === 1, 5000, 'agent_started on the edge');

      await redis.stop();
      await eventually(async () => (await metricValue(origin, 'tracewire_broker_up')) === 0, 'broker_up 0');
      tool(); // seqs 2 and 3: only the tab on the origin takes them
      await tab.until((x) => x.events.length >= 3, 5000, 'the tab on the origin');
      await redis.start();
      await eventually(async () => (await metricValue(origin, 'tracewire_broker_up')) === 1, 'broker_up 1', 15_000);
      await heard(origin);

      tool(); // seqs 4 and 5 reach the edge: its client sees 2 and 3 missing and asks for them
      await rc.until((x) => x.events.length >= 5, 3000, 'the missed events, well before gapTimeoutMillis');
      top.end();
      await rc.until((x) => x.events.length >= 6, 5000, 'the last event');
      expect(rc.seqs(runId)).toEqual([1, 2, 3, 4, 5, 6]);
      expect(rc.events.map((e) => e.type)).toEqual(EXPECTED);
      expect(rc.gaps).toEqual([]);
      expect(rc.errors).toEqual([]);
    } finally {
      rc.client.close();
    }
  }, 30_000);

  it("reports an edge's failed writes back to the origin, which judges the run with that reason", async () => {
    const [origin, edge] = await pair();
    await edge.close();
    open.pop();
    const failing = await sidecar('edge', { failWritesFor: (u) => u === 'u-fail' });
    await client(failing, 'u-fail');
    await heard(origin);
    const runId = await judgedToolRun(origin, 'u-fail', 1);
    const j = origin.tw.ledger.get(runId)!.judgement!;
    expect(j.verdict).toBe('missing_events');
    expect(j.reasons).toEqual({ send_failed: 4 });
    expect(j.explanation).toContain('although a connection of the user was open');
  });

  it('drops an event as broker_unconfirmed when the sidecar it went to never reports, and holds it when nobody listens there', async () => {
    n++;
    const origin = await sidecar('origin', { brokerReportTimeoutMillis: 300, graceMillis: 2000 });
    // A "sidecar" that announces a user and subscribes to its inbox, but never answers.
    const ghost = await redis.client();
    const sub = ghost.duplicate();
    sub.on('error', () => undefined);
    await sub.connect();
    let received = 0;
    await sub.subscribe(`t${n}:i:ghost`, () => received++);
    try {
      await ghost.publish(`t${n}:presence`, JSON.stringify({ k: 'join', o: 'ghost', u: ['u-ghost'] }));
      await heard(origin);
      const runId = await judgedToolRun(origin, 'u-ghost', 1, 8000);
      const j = origin.tw.ledger.get(runId)!.judgement!;
      expect(received).toBeGreaterThan(0);
      expect(j.verdict).toBe('missing_events');
      expect(j.reasons).toEqual({ broker_unconfirmed: 4 });
      expect(await metricValue(origin, 'tracewire_broker_dropped_total', { reason: 'unconfirmed' })).toBe(4);
      expect(await metricValue(origin, 'tracewire_events_dropped_total', { reason: 'broker_unconfirmed' })).toBe(4);

      // The ghost never refreshes its announcement: it expires after three presence intervals.
      await eventually(async () => (await metricValue(origin, 'tracewire_broker_remote_users')) === 0, 'the ghost expired');
      // Announced by a sidecar with no inbox subscriber (it died without a goodbye): Redis counts no receiver,
      // the origin forgets that sidecar's users and holds the events instead.
      await ghost.publish(`t${n}:presence`, JSON.stringify({ k: 'join', o: 'dead', u: ['u-dead'] }));
      await heard(origin);
      startRun(origin, 'u-dead').top.end();
      await until(() => origin.tw.hub.stats().held === 2, 5000, 'held after nobody received them');
      expect(await metricValue(origin, 'tracewire_broker_pending_deliveries')).toBe(0);
    } finally {
      await sub.close();
      await ghost.close();
    }
  });

  it('ignores and counts invalid broker messages, and keeps delivering', async () => {
    const [origin, edge] = await pair();
    const raw = await redis.client();
    try {
      const junk = [
        'not json',
        '[]',
        JSON.stringify({ k: 'ev' }),
        JSON.stringify({ k: 'ev', o: 'x y' }),
        // An event with a type that is none of the five; an event whose text line is missing; text that is not an object.
        `${JSON.stringify({ k: 'ev', o: 'origin' })}\n${JSON.stringify([1, 'u1', null, 'r', 't', 1, 'not_a_type', 0])}\n{}`,
        `${JSON.stringify({ k: 'ev', o: 'origin' })}\n${JSON.stringify([2, 'u1', null, 'r', 't', 1, 'agent_started', 0])}`,
        `${JSON.stringify({ k: 'ev', o: 'origin' })}\n${JSON.stringify([3, 'u1', null, 'r', 't', 1, 'agent_started', 0])}\nnot json`,
        JSON.stringify({ k: 'rep', o: 'edge', r: [[1, 'because']] }),
        JSON.stringify({ k: 'ack', o: 'edge', a: [['r', 'u1', -1]] }),
        JSON.stringify({ k: 'nope', o: 'edge' }),
      ];
      for (const j of junk) await raw.publish(`t${n}:i:edge`, j);
      await raw.publish(`t${n}:presence`, JSON.stringify({ k: 'join', o: 'x', u: 'not a list' }));
      await eventually(async () => (await metricValue(edge, 'tracewire_broker_dropped_total', { reason: 'invalid' })) >= junk.length, 'invalid messages counted');
      const c = await client(edge, 'u1');
      await heard(origin);
      await judgedToolRun(origin, 'u1', 2);
      await c.until((x) => x.events.length >= 6, 5000, 'events after the junk');
      expect(c.events.map((e) => e.type)).toEqual(EXPECTED);
    } finally {
      await raw.close();
    }
  });

  it('serves its own connections when the broker cannot be reached at start, shows it, and closes promptly', async () => {
    n++;
    const sc = await startTestSidecar({ brokerUrl: `unix://${redis.dir}/nobody-here.sock`, brokerPrefix: `t${n}`, logLevel: 'silent' });
    open.push(sc);
    const c = await client(sc, 'u-local');
    await judgedToolRun(sc, 'u-local', 1);
    await c.until((x) => x.events.length >= 4, 5000, 'local events');
    expect(await metricValue(sc, 'tracewire_broker_up')).toBe(0);
    const t0 = Date.now();
    open.pop();
    await sc.close();
    expect(Date.now() - t0).toBeLessThan(3000);
  });

  it('a sidecar that answers a resume after the wait still has its events sent, and nothing is reported lost meanwhile', async () => {
    n++;
    const c = await sidecar('edge-c', { graceMillis: 3000 });
    // A slow origin: it keeps a run (seqs 1..11) and answers resume questions after a second.
    const pub = await redis.client();
    const sub = pub.duplicate();
    sub.on('error', () => undefined);
    await sub.connect();
    const traceId = 'a'.repeat(32);
    const runId = `${traceId}-${'b'.repeat(16)}`;
    const line = (seq: number): string =>
      `${JSON.stringify(['slow-origin', 'u1', null, runId, traceId, seq, 'tool_executing', 0])}\n${JSON.stringify({ type: 'tool_executing', run_id: runId, seq })}`;
    await sub.subscribe(`t${n}:resume`, (m: string) => {
      const q = JSON.parse(m) as { o: string; q: number; r: Record<string, number> };
      const from = q.r[runId];
      if (from === undefined) return;
      setTimeout(() => {
        const lines = Array.from({ length: 11 - from }, (_, i) => line(from + 1 + i));
        void pub.publish(`t${n}:i:${q.o}`, `${JSON.stringify({ k: 'rp', o: 'slow-origin', q: q.q, last: { [runId]: 11 }, held: {} })}\n${lines.join('\n')}`);
      }, 1000);
    });
    await pub.publish(`t${n}:presence`, JSON.stringify({ k: 'sync', o: 'slow-origin', u: [] }));
    try {
      await eventually(async () => (await metricValue(c, 'tracewire_broker_peers')) >= 1, 'edge-c knows the slow origin');
      const tab = await client(c, 'u1', `resume=${runId}:3`);
      await tab.until((x) => x.events.length >= 8, 5000, 'the late answer');
      expect(tab.events.map((e) => e.seq)).toEqual([4, 5, 6, 7, 8, 9, 10, 11]);
      await new Promise((r) => setTimeout(r, 1700)); // past the report timeout: what is missing is told now
      expect(tab.frames.filter((f) => f.type === 'error')).toEqual([]);
    } finally {
      await sub.close();
      await pub.close();
    }
  });

  it('outcomes that arrived while this sidecar\'s loop stalled count: no broker_unconfirmed for events the edge delivered', async () => {
    const [origin, edge] = await pair({ graceMillis: 3000 });
    const c = await client(edge, 'u1');
    await heard(origin);
    const { top, tool, runId } = startRun(origin, 'u1');
    tool();
    await c.until((x) => x.events.length >= 3, 5000, 'three events');
    tool();
    top.end();
    // Stall right after sending (all sidecars of this test share the loop): the outcomes wait in the socket.
    await new Promise((r) => setImmediate(r));
    const until = Date.now() + 2000;
    while (Date.now() < until);
    await c.until((x) => x.events.length >= 6, 5000, 'every event');
    await eventually(async () => origin.tw.ledger.get(runId)?.judgement !== undefined, 'verdict', 8000);
    expect(origin.tw.ledger.get(runId)!.judgement!.verdict).toBe('complete');
    expect(await metricValue(origin, 'tracewire_events_dropped_total', { reason: 'broker_unconfirmed' })).toBe(0);
  });

  it("a sidecar's hello (it reconnected to the broker) does not make the others forget its users", async () => {
    const [origin, edge] = await pair();
    const c = await client(edge, 'u1');
    await heard(origin);
    const raw = await redis.client();
    try {
      await raw.publish(`t${n}:presence`, JSON.stringify({ k: 'hello', o: 'edge', u: [] }));
      await new Promise((r) => setTimeout(r, 50));
      expect(await metricValue(origin, 'tracewire_broker_remote_users')).toBe(1);
      await judgedToolRun(origin, 'u1', 1);
      await c.until((x) => x.events.length >= 4, 5000, 'the run on the edge');
    } finally {
      await raw.close();
    }
  });

  it('an event loop that stalls longer than the presence expiry does not make a sidecar forget the others', async () => {
    const [origin, edge] = await pair();
    const c = await client(edge, 'u1');
    await heard(origin);
    // Every sidecar of this test runs in this process: all of them stall (a long GC, a busy host).
    const until = Date.now() + 200 * 7;
    while (Date.now() < until);
    const runId = await judgedToolRun(origin, 'u1', 1);
    await c.until((x) => x.events.length >= 4, 5000, 'the run on the edge');
    expect(origin.tw.ledger.get(runId)!.judgement!.verdict).toBe('complete');
  });

  it('a broker connection that looks up but carries nothing (half-open) is given up and opened anew, and events flow again', async () => {
    const { proxy, origin, edge, c } = await behindProxy('u-half');
    expect(proxy.accepted).toBe(2);
    // The origin's path to the broker dies without a FIN or RST: its client still says it is connected.
    proxy.blackhole();
    // Within three presence intervals (200 ms here) none of its own presence has come back: new connections.
    await eventually(async () => (await metricValue(origin, 'tracewire_broker_reopened_total')) === 1, 'the connections reopened', 5000);
    await eventually(async () => (await metricValue(origin, 'tracewire_broker_up')) === 1, 'broker_up 1 again');
    expect(proxy.accepted).toBe(4);
    await heard(origin);
    // Redis never heard the old connections close: they are killed, so it counts one subscriber of the
    // origin's inbox again (the others' resumes wait for an answer from every subscriber).
    const rc = await redis.client();
    try {
      await eventually(async () => (await rc.sendCommand(['PUBSUB', 'NUMSUB', `t${n}:i:origin`]))?.toString() === `t${n}:i:origin,1`, 'one subscriber of the inbox');
    } finally {
      await rc.close();
    }

    startRun(origin, 'u-half').top.end();
    await c.until((x) => x.events.length >= 2, 5000, "the run's events through the new connections");
    expect(c.events.map((e) => [e.type, e.seq])).toEqual([
      ['agent_started', 1],
      ['agent_completed', 2],
    ]);
    // Healthy connections are left alone.
    await new Promise((r) => setTimeout(r, 1000));
    expect(await metricValue(origin, 'tracewire_broker_reopened_total')).toBe(1);
    expect(await metricValue(edge, 'tracewire_broker_reopened_total')).toBe(0);
  }, 20_000);

  it('new broker connections that connect but never answer (the path still dead) are replaced again until one answers', async () => {
    const { proxy, origin, c } = await behindProxy('u-dead-path');
    proxy.blackhole(true);
    await eventually(async () => (await metricValue(origin, 'tracewire_broker_reopened_total')) === 1, 'the connections reopened', 5000);
    // The new connections connect, then hear nothing; the path heals meanwhile.
    await new Promise((r) => setTimeout(r, 500));
    expect(await metricValue(origin, 'tracewire_broker_up')).toBe(0);
    proxy.heal();
    await eventually(async () => (await metricValue(origin, 'tracewire_broker_up')) === 1, 'broker_up 1 once connections that answer are open', 12_000);
    await heard(origin);
    startRun(origin, 'u-dead-path').top.end();
    await c.until((x) => x.events.length >= 2, 5000, "the run's events");
    expect(c.events.map((e) => e.type)).toEqual(['agent_started', 'agent_completed']);
  }, 30_000);

  it('the runs API of any sidecar lists the runs of every sidecar, newest first, pages through them once each, and opens a run kept by another', async () => {
    const [origin, edge] = await pair({ graceMillis: 50 });
    const a = await judgedToolRun(origin, 'u-api', 1);
    await new Promise((r) => setTimeout(r, 5));
    const b = await judgedToolRun(edge, 'u-api', 1);
    await new Promise((r) => setTimeout(r, 5));
    const c = await judgedToolRun(origin, 'u-other', 2);
    const get = async (sc: Sidecar, path: string): Promise<{ status: number; body: Record<string, unknown> }> => {
      const res = await fetch(`${sc.publicUrl}${path}`);
      return { status: res.status, body: (await res.json()) as Record<string, unknown> };
    };

    const all = await get(edge, '/api/runs');
    expect(all.status).toBe(200);
    const runs = all.body.runs as Array<{ run_id: string; sidecar: string; verdict: string }>;
    expect(runs.map((r) => [r.run_id, r.sidecar])).toEqual([
      [c, 'origin'],
      [b, 'edge'],
      [a, 'origin'],
    ]);
    // Nobody was connected: each judged on its own sidecar, as that sidecar's own listing shows it.
    expect(runs.every((r) => r.verdict === 'missing_events')).toBe(true);
    expect(all.body).toMatchObject({ next_cursor: null, missing_sidecars: 0 });
    // Filters apply on every sidecar.
    expect(((await get(origin, '/api/runs?user=u-api')).body.runs as Array<{ run_id: string }>).map((r) => r.run_id)).toEqual([b, a]);

    // One run a page: each once, in the same order, then the end.
    const seen: string[] = [];
    let cursor: string | null = null;
    for (let page = 0; page < 10; page++) {
      const res = await get(origin, `/api/runs?limit=1${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`);
      expect(res.status).toBe(200);
      seen.push(...(res.body.runs as Array<{ run_id: string }>).map((r) => r.run_id));
      cursor = res.body.next_cursor as string | null;
      if (cursor === null) break;
    }
    expect(seen).toEqual([c, b, a]);

    // A run of another sidecar by id (what the inspector opens), its pages too.
    const one = await get(edge, `/api/runs/${encodeURIComponent(a)}`);
    expect(one.status).toBe(200);
    expect(one.body).toMatchObject({ run_id: a, sidecar: 'origin', verdict: 'missing_events' });
    expect((one.body.events as unknown[]).length).toBe(4);
    expect((await get(origin, `/api/runs/${encodeURIComponent(a)}`)).body).toMatchObject({ run_id: a, sidecar: 'origin' });
    const none = await get(edge, '/api/runs/no-such-run');
    expect(none.status).toBe(404);
    expect(none.body).toMatchObject({ code: 'TW_RUN_NOT_FOUND' });
    // A single sidecar's cursor is not a cursor across sidecars.
    const bad = await get(edge, `/api/runs?cursor=${Buffer.from('1:1').toString('base64url')}`);
    expect(bad.status).toBe(400);
    expect(bad.body).toMatchObject({ code: 'TW_BAD_QUERY' });
    expect(await metricValue(edge, 'tracewire_broker_messages_total', { direction: 'out', kind: 'runs' })).toBeGreaterThan(0);
  });

  it.skipIf(!hasChromium)('the inspector of one sidecar lists and opens a run another sidecar judged, and names that sidecar', async () => {
    const [origin, edge] = await pair({ graceMillis: 50 });
    const a = await judgedToolRun(origin, 'u-inspect', 1);
    const browser = await launchChromium();
    try {
      const page = await browser.newPage();
      await page.goto(`${edge.publicUrl}/inspector?run=${encodeURIComponent(a)}`);
      await expect.poll(() => page.locator('#runs tbody tr').count()).toBe(1);
      expect(await page.locator('#runs tbody tr').first().getAttribute('data-run-id')).toBe(a);
      expect(await page.locator('#th-sidecar').isVisible()).toBe(true);
      expect(await page.locator('#runs tbody tr').first().locator('td').last().textContent()).toBe('origin');
      const facts = page.locator('#detail dl.facts');
      await expect.poll(() => facts.count()).toBe(1);
      const pairs = await facts.evaluate((dl) => [...dl.querySelectorAll('dt')].map((dt) => [dt.textContent, dt.nextElementSibling?.textContent]));
      expect(pairs).toContainEqual(['sidecar', 'origin']);
      expect(pairs).toContainEqual(['run id', a]);
    } finally {
      await browser.close();
    }
  });

  it('a sidecar that joins while a listing pages through starts where the listing is: its newer runs do not break the order', async () => {
    const [origin, edge] = await pair({ graceMillis: 50 });
    const a = await judgedToolRun(origin, 'u-page', 1);
    await new Promise((r) => setTimeout(r, 5));
    const b = await judgedToolRun(edge, 'u-page', 1);
    const page = async (cursor?: string): Promise<{ runs: Array<{ run_id: string }>; next_cursor: string | null }> =>
      (await fetch(`${edge.publicUrl}/api/runs?limit=1${cursor === undefined ? '' : `&cursor=${encodeURIComponent(cursor)}`}`)).json() as Promise<{ runs: Array<{ run_id: string }>; next_cursor: string | null }>;
    const first = await page();
    expect(first.runs.map((r) => r.run_id)).toEqual([b]);
    // A third sidecar comes up with a run newer than anything listed so far.
    const late = await sidecar('late', { graceMillis: 50 });
    await eventually(async () => (await metricValue(edge, 'tracewire_broker_peers')) >= 2, 'the edge knows the late sidecar');
    const c = await judgedToolRun(late, 'u-page', 1);
    const second = await page(first.next_cursor!);
    expect(second.runs.map((r) => r.run_id)).toEqual([a]);
    const third = second.next_cursor === null ? { runs: [], next_cursor: null } : await page(second.next_cursor);
    expect(third.runs).toEqual([]);
    expect(third.next_cursor).toBeNull();
    // A new listing has it first.
    expect((await page()).runs.map((r) => r.run_id)).toEqual([c]);
  });

  it('a known sidecar that does not answer is counted as missing, and the listing still ends', async () => {
    const [origin] = await pair({ graceMillis: 50 });
    const a = await judgedToolRun(origin, 'u-ghost', 1);
    // A sidecar the origin knows from its presence that does not answer runs questions (an older version, or stalled).
    const ghost = await redis.client();
    const talker = await redis.client();
    try {
      await ghost.subscribe(`t${n}:runs`, () => undefined);
      await talker.publish(`t${n}:presence`, JSON.stringify({ k: 'sync', o: 'ghost', u: [] }));
      await eventually(async () => (await metricValue(origin, 'tracewire_broker_peers')) === 2, 'the origin knows the edge and the ghost');
      const body = (await (await fetch(`${origin.publicUrl}/api/runs`)).json()) as { runs: Array<{ run_id: string }>; next_cursor: string | null; missing_sidecars: number };
      expect(body).toEqual({ runs: [expect.objectContaining({ run_id: a, sidecar: 'origin' })], next_cursor: null, missing_sidecars: 1 });
      // The inspector says so.
      if (hasChromium) {
        const browser = await launchChromium();
        try {
          const page = await browser.newPage();
          await page.goto(`${origin.publicUrl}/inspector`);
          await expect.poll(() => page.locator('#status').textContent(), { timeout: 5000 }).toMatch(/^1 run · 1 sidecar did not answer · updated /);
        } finally {
          await browser.close();
        }
      }
    } finally {
      await ghost.close();
      await talker.close();
    }
  });

  it('a run too large for one answer between sidecars comes a smaller page at a time; a sidecar with another API token shows nothing', async () => {
    const [origin, edge] = await pair({ graceMillis: 50 });
    const big = await judgedToolRun(origin, 'u-big', 1000, 15_000); // 2,002 events: over 1 MiB as one page
    const events: Array<{ seq: number }> = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const res = await fetch(`${edge.publicUrl}/api/runs/${encodeURIComponent(big)}?limit=5000${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`);
      expect(res.status).toBe(200);
      const body = (await res.json()) as { events: Array<{ seq: number }>; next_cursor: string | null; sidecar: string };
      expect(body.sidecar).toBe('origin');
      events.push(...body.events);
      cursor = body.next_cursor;
      pages++;
    } while (cursor !== null && pages < 20);
    expect(pages).toBeGreaterThan(1);
    expect(events.map((e) => e.seq)).toEqual(Array.from({ length: 2002 }, (_, i) => i + 1));

    // A third sidecar with an API token: it refuses the others' questions (they have none), and they say so.
    const locked = await sidecar('locked', { apiToken: 'locked-token-0123456789' });
    await eventually(async () => (await metricValue(edge, 'tracewire_broker_peers')) >= 2, 'the edge knows the locked sidecar');
    const secret = await judgedToolRun(locked, 'u-secret', 1);
    const list = (await (await fetch(`${edge.publicUrl}/api/runs?user=u-secret`)).json()) as { runs: unknown[]; missing_sidecars: number };
    expect(list.runs).toEqual([]);
    expect(list.missing_sidecars).toBe(1);
    expect((await fetch(`${edge.publicUrl}/api/runs/${encodeURIComponent(secret)}`)).status).toBe(404);
    // With its token, its own API lists it, and the others' runs too (they have no token: they answer anyone).
    const own = (await (await fetch(`${locked.publicUrl}/api/runs`, { headers: { authorization: 'Bearer locked-token-0123456789' } })).json()) as { runs: Array<{ run_id: string }> };
    expect(own.runs.map((r) => r.run_id)).toEqual(expect.arrayContaining([secret, big]));
  }, 30_000);

  it('pages cut to fit an answer keep the order: every run once, newest first, across sidecars', async () => {
    const [origin, edge] = await pair({ graceMillis: 50 });
    // Runs with 1,000-character user and conversation ids: a page of 500 of the origin's is over 1 MiB, so it comes cut.
    const long = (i: number): string => `${'u'.repeat(990)}-${String(i).padStart(6, '0')}`;
    const ids: string[] = [];
    for (let i = 0; i < 700; i++) {
      const sc = i % 7 === 3 ? edge : origin;
      ids.push(startRun(sc, long(i), { 'gen_ai.conversation.id': `c${long(i)}` }).runId);
      if (i % 50 === 0) await new Promise((r) => setTimeout(r, 2));
    }
    const seen: Array<{ run_id: string; started_at: string; sidecar: string }> = [];
    let cursor: string | null = null;
    let pages = 0;
    const sizes: number[] = [];
    do {
      const res = await fetch(`${edge.publicUrl}/api/runs?limit=500${cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`}`);
      expect(res.status).toBe(200);
      const body = (await res.json()) as { runs: typeof seen; next_cursor: string | null };
      seen.push(...body.runs);
      sizes.push(body.runs.length);
      cursor = body.next_cursor;
      pages++;
    } while (cursor !== null && pages < 50);
    // The first page stopped at the origin's cut (its last run sent), short of 500 though more were left.
    expect(sizes[0]).toBeLessThan(500);
    expect(pages).toBeGreaterThanOrEqual(2);
    expect(new Set(seen.map((r) => r.run_id)).size).toBe(seen.length);
    expect(new Set(seen.map((r) => r.run_id))).toEqual(new Set(ids));
    for (let i = 1; i < seen.length; i++) expect(seen[i - 1]!.started_at >= seen[i]!.started_at).toBe(true);
  }, 30_000);

  it('a runs listing does not wait past a second for a sidecar that never answers, and says how many did not', async () => {
    const [origin] = await pair({ graceMillis: 50 });
    const run = await judgedToolRun(origin, 'u-slow', 1);
    // A subscriber of the runs channel that never answers (a sidecar stuck in a long stall).
    const mute = await redis.client();
    try {
      await mute.subscribe(`t${n}:runs`, () => undefined);
      const t0 = Date.now();
      const res = await fetch(`${origin.publicUrl}/api/runs`);
      const body = (await res.json()) as { runs: Array<{ run_id: string }>; missing_sidecars: number };
      expect(Date.now() - t0).toBeLessThan(3000);
      expect(body.runs.map((r) => r.run_id)).toEqual([run]);
      expect(body.missing_sidecars).toBe(1);

      // At most four listings wait for answers at once; the others are told to retry (503, Retry-After).
      const many = await Promise.all(
        Array.from({ length: 10 }, async () => {
          const res = await fetch(`${origin.publicUrl}/api/runs`);
          const body = (await res.json()) as { missing_sidecars?: number; code?: string };
          return res.status === 200 ? `200 missing ${body.missing_sidecars}` : `${res.status} ${body.code} retry-after ${res.headers.get('retry-after')}`;
        }),
      );
      expect(many.filter((m) => m === '200 missing 1').length).toBe(4);
      expect(many.filter((m) => m === '503 TW_RUNS_BUSY retry-after 1').length).toBe(6);
      expect(await metricValue(origin, 'tracewire_broker_dropped_total', { reason: 'runs_busy' })).toBe(6);
    } finally {
      await mute.close();
    }
  });

  it('while the broker is down, events for users on other sidecars are held; they go out once it is back', async () => {
    const [origin, edge] = await pair({ graceMillis: 10_000 });
    const c = await client(edge, 'u-outage');
    await heard(origin);
    await redis.stop();
    await eventually(async () => (await metricValue(origin, 'tracewire_broker_up')) === 0, 'broker_up 0');
    startRun(origin, 'u-outage').top.end();
    await until(() => origin.tw.hub.stats().held === 2, 5000, 'held while the broker is down');

    await redis.start();
    await c.until((x) => x.events.length >= 2, 15_000, 'the held events after the broker came back');
    expect(c.events.map((e) => [e.type, e.seq])).toEqual([
      ['agent_started', 1],
      ['agent_completed', 2],
    ]);
    expect(await metricValue(origin, 'tracewire_broker_up')).toBe(1);
  }, 30_000);
});
