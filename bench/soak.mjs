#!/usr/bin/env node
// Soak: a sidecar under steady load for a bounded time, with client churn, checking that no event is
// lost or duplicated and that memory stays flat. Loopback only; stops by itself.
//
//   npm run soak                        (builds, then: node bench/soak.mjs)
//   node bench/soak.mjs --duration-s 60 --clients 500 --users 250 --runs-per-s 100 --churn-per-s 10 --stalled 5
//   node bench/soak.mjs --client raw      (hand-written ws clients instead of tracewire/client)
//   node bench/soak.mjs --sidecars 3      (three sidecars on a redis-server broker: runs start on any of
//                                          them, every (re)connection goes to a random one)
//   SOAK_DEBUG=1 node bench/soak.mjs …    (prints every gap and error frame the shipped clients report)
//   SOAK_STALL=3000 node bench/soak.mjs … (the server's event loop stalls 3 s, 20 s in: a GC or a busy host)
//
// Three processes: this one (orchestrator: report), a server (Tracewire + startSidecar from dist/, an
// in-process tracer running the demo agent for random users) and a client process (every WebSocket).
//
// Each logical client belongs to a user (clients / users per user). Every second `churn` random clients
// drop their connection (half a clean close, half an abrupt terminate) and reconnect 50..500 ms later
// with ?resume=<every run it knows>:<its last contiguous seq>&resume_all=1. `stalled` extra clients
// stop reading right after their ack (the heartbeat or backpressure must close them; they are not counted).
// At the end every logical client must hold, for every run of its user, seqs 1..11 exactly once.
//
// --client tracewire (default): each logical client is the shipped TracewireClient (dist/client), which
// reconnects and resumes by itself; a drop closes or terminates its socket under it, and it must hand out
// every run's seqs once, in order, with no gap. --client raw: a hand-written ws client that resumes in the URL.
import { fork } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

const SELF = fileURLToPath(import.meta.url);
const SECRET = 'soak-secret-0123456789abcdef';

function args(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    if (!argv[i].startsWith('--')) continue;
    const k = argv[i].slice(2);
    const v = argv[i + 1] !== undefined && !argv[i + 1].startsWith('--') ? argv[++i] : 'true';
    out[k] = v;
  }
  return out;
}
const A = args(process.argv.slice(2));
const num = (k, d) => (A[k] === undefined ? d : Number(A[k]));
const CFG = {
  durationS: num('duration-s', 60),
  clients: num('clients', 500),
  users: num('users', 250),
  runsPerS: num('runs-per-s', 100),
  churnPerS: num('churn-per-s', 10),
  stalled: num('stalled', 5),
  stepMaxMs: num('step-max-ms', 20),
  replayRetentionMs: num('replay-retention-ms', 10_000),
  runsMaxCount: num('runs-max-count', 1000),
  heartbeatMs: num('heartbeat-ms', 2000),
  client: A.client ?? 'tracewire',
  sidecars: num('sidecars', 1),
};
if (CFG.client !== 'tracewire' && CFG.client !== 'raw') throw new Error(`--client must be tracewire or raw, not ${CFG.client}`);
const HARD_LIMIT_MS = (CFG.durationS + 90) * 1000;

// ---------------------------------------------------------------- server ----
async function server() {
  const { Tracewire, startSidecar, runDemoAgent } = await import('../dist/index.js');
  const { BasicTracerProvider } = await import('@opentelemetry/sdk-trace-base');
  // Several sidecars (in this one process) share a real redis-server on a unix socket.
  let redis;
  let brokerUrl = '';
  if (CFG.sidecars > 1) {
    const { spawn } = await import('node:child_process');
    const { existsSync, mkdtempSync, rmSync } = await import('node:fs');
    const dir = mkdtempSync(`${(await import('node:os')).tmpdir()}/tw-soak-redis-`);
    const socket = `${dir}/redis.sock`;
    redis = spawn('redis-server', ['--port', '0', '--unixsocket', socket, '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
    redis.cleanup = () => {
      redis.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    };
    while (!existsSync(socket)) await sleep(20);
    brokerUrl = `unix://${socket}`;
  }
  const tws = [];
  const scs = [];
  for (let i = 0; i < CFG.sidecars; i++) {
    const tw = new Tracewire({
      jwtSecret: SECRET,
      // Several sidecars: outcomes and resumes take a broker round trip; the grace must exceed the report timeout.
      graceMillis: CFG.sidecars > 1 ? 2000 : 500,
      wsHeartbeatMillis: CFG.heartbeatMs,
      replayRetentionMillis: CFG.replayRetentionMs,
      runsMaxCount: CFG.runsMaxCount,
      runsMaxAgeMillis: 60_000,
      logLevel: 'silent',
      ...(brokerUrl ? { brokerUrl, brokerPrefix: 'soak', instanceId: `s${i}`, brokerPresenceMillis: 1000 } : {}),
    });
    tws.push(tw);
    scs.push(await startSidecar(tw, { host: '127.0.0.1', port: 0 }, undefined));
  }
  await Promise.all(tws.map((tw) => tw.fanoutReady));
  if (CFG.sidecars > 1) {
    // Every sidecar has heard of every other before the clients come.
    const peers = async (tw) => (await tw.metrics.registry.getSingleMetric('tracewire_broker_peers').get()).values[0]?.value ?? 0;
    for (const tw of tws) while ((await peers(tw)) < CFG.sidecars - 1) await sleep(50);
  }
  const tw = tws[0];
  const tracers = tws.map((t) => new BasicTracerProvider({ spanProcessors: [t.spanProcessor()] }).getTracer('soak'));
  const t0 = Date.now();
  let tick = 0;
  const sampler = setInterval(() => {
    // Every 5th sample, after a full GC: the retained heap, the honest "is memory flat" figure.
    const gcNow = ++tick % 5 === 0 && typeof globalThis.gc === 'function';
    if (process.env.SOAK_STALL && tick === 20) { const until = Date.now() + Number(process.env.SOAK_STALL); while (Date.now() < until); }
    if (gcNow) globalThis.gc();
    const m = process.memoryUsage();
    const h = { connections: 0, held: 0, replayBytes: 0, queuedBytes: 0 };
    for (const t of tws) for (const [k, v] of Object.entries(t.hub.stats())) if (k in h) h[k] += v;
    const total = (f) => tws.reduce((a, t) => a + f(t), 0);
    process.send({ type: 'sample', t: Date.now() - t0, rss: m.rss, heap: m.heapUsed, heapTotal: m.heapTotal, ext: m.external + m.arrayBuffers, conns: h.connections, held: h.held, replayBytes: h.replayBytes, queued: h.queuedBytes, inFlight: total((t) => t.ledger.inFlightCount), judged: total((t) => t.ledger.judgedCount), traces: total((t) => t.inProcessBridges.traceCount), afterGc: gcNow });
  }, 1000);
  // Summed over the sidecars.
  const metric = async (name, by) => {
    const out = {};
    for (const t of tws) {
      const m = t.metrics.registry.getSingleMetric(name);
      if (!m) continue;
      for (const v of (await m.get()).values) {
        if (v.value === 0) continue;
        const k = by ? String(v.labels[by]) : 'total';
        out[k] = (out[k] ?? 0) + v.value;
      }
    }
    return out;
  };
  process.on('message', async (msg) => {
    if (msg.type === 'start') {
      const runsByUser = {};
      const inflight = new Set();
      let started = 0;
      let budget = 0;
      const end = Date.now() + msg.durationMs;
      let last = Date.now();
      while (Date.now() < end) {
        const now = Date.now();
        budget += ((now - last) / 1000) * msg.runsPerS;
        last = now;
        while (budget >= 1 && inflight.size < 2000) {
          budget--;
          const user = `u-${Math.floor(Math.random() * msg.users)}`;
          const tracer = tracers[Math.floor(Math.random() * tracers.length)];
          const p = runDemoAgent(tracer, { user, stepMillis: Math.floor(Math.random() * (msg.stepMaxMs + 1)) }).then((ids) => {
            (runsByUser[user] ??= []).push(`${ids.traceId}-${ids.spanId}`);
            inflight.delete(p);
          });
          inflight.add(p);
          started++;
        }
        await sleep(10);
      }
      await Promise.all([...inflight]);
      process.send({ type: 'generated', runsByUser, started });
    } else if (msg.type === 'report') {
      await sleep(1500); // past the grace period: the last runs are judged
      process.send({
        type: 'report',
        emitted: await metric('tracewire_events_emitted_total'),
        delivered: await metric('tracewire_events_delivered_total'),
        late: await metric('tracewire_events_delivered_late_total'),
        dropped: await metric('tracewire_events_dropped_total', 'reason'),
        replayed: await metric('tracewire_events_replayed_total'),
        disconnects: await metric('tracewire_ws_disconnects_total', 'reason'),
        verdicts: await metric('tracewire_runs_total', 'verdict'),
        accepted: await metric('tracewire_ws_connection_attempts_total', 'result'),
        broker: CFG.sidecars > 1 ? await metric('tracewire_broker_messages_total', 'kind') : undefined,
        brokerDropped: CFG.sidecars > 1 ? await metric('tracewire_broker_dropped_total', 'reason') : undefined,
      });
    } else if (msg.type === 'exit') {
      clearInterval(sampler);
      await Promise.all(scs.map((sc) => sc.close()));
      redis?.cleanup();
      process.exit(0);
    }
  });
  process.send({ type: 'ready', url: scs[0].publicUrl, urls: scs.map((sc) => sc.publicUrl) });
}

// --------------------------------------------------------------- clients ----
async function clients() {
  const { default: WebSocket } = await import('ws');
  const { JwtVerifier } = await import('../dist/index.js');
  const verifier = new JwtVerifier(SECRET);
  let url = '';
  /** Every sidecar's URL: each (re)connection goes to a random one. */
  let urls = [];
  const pick = () => (urls.length > 1 ? urls[Math.floor(Math.random() * urls.length)] : url);
  let churning = false;
  const all = [];

  class Logical {
    constructor(i, user) {
      this.i = i;
      this.user = user;
      this.runs = new Map(); // runId -> { seqs: Set, contiguous }
      this.dups = 0;
      this.outOfOrder = 0;
      this.reconnects = 0;
      this.errors = 0;
      this.expired = 0;
      this.ws = undefined;
      this.open = false;
    }
    url(resume) {
      if (!resume) return `${pick().replace('http', 'ws')}/v1/events`;
      // Runs whose last event is well past the resume window (retention + a margin for the server's sweep
      // interval) cannot be resumed: not worth naming. Closer to the window they must still be named, or
      // resume_all sends them again.
      const horizon = Date.now() - CFG.replayRetentionMs - 5000;
      const parts = [...this.runs].filter(([, r]) => r.lastAt > horizon).map(([id, r]) => `${id}:${r.contiguous}`);
      return `${pick().replace('http', 'ws')}/v1/events?resume=${parts.join(',')}&resume_all=1`;
    }
    connect(resume) {
      return new Promise((resolve) => {
        const ws = new WebSocket(this.url(resume), { headers: { authorization: `Bearer ${this.token}` } });
        this.ws = ws;
        ws.on('message', (d) => {
          const f = JSON.parse(d.toString());
          if (f.type === 'ack') {
            this.open = true;
            resolve();
            return;
          }
          if (f.type === 'error') {
            // Expected: a named run that is past the resume window (retention). Anything else is counted apart.
            if (/outside the resume window/.test(f.message)) this.expired++;
            else this.errors++;
            return;
          }
          if (typeof f.seq !== 'number') return;
          let r = this.runs.get(f.run_id);
          if (r === undefined) this.runs.set(f.run_id, (r = { seqs: new Set(), contiguous: 0, lastAt: 0 }));
          r.lastAt = Date.now();
          if (r.seqs.has(f.seq)) {
            this.dups++;
            return;
          }
          if (f.seq !== r.contiguous + 1) {
            this.outOfOrder++;
            // A run we never heard of, seen from the middle: ask for its start.
            if (r.contiguous === 0 && ws.readyState === 1) ws.send(JSON.stringify({ type: 'resume', runs: { [f.run_id]: 0 } }));
          }
          r.seqs.add(f.seq);
          while (r.seqs.has(r.contiguous + 1)) r.contiguous++;
        });
        ws.on('close', () => {
          this.open = false;
          resolve();
        });
        ws.on('error', () => undefined);
      });
    }
    async drop() {
      if (!this.open) return;
      this.open = false;
      if (Math.random() < 0.5) this.ws.close();
      else this.ws.terminate();
      await sleep(50 + Math.random() * 450);
      this.reconnects++;
      await this.connect(true);
    }
  }

  /** The shipped client: it reconnects and resumes by itself; drop() cuts its socket under it. */
  const { TracewireClient } = await import('../dist/client/TracewireClient.js');
  class Shipped extends Logical {
    constructor(i, user) {
      super(i, user);
      this.gaps = 0;
    }
    connect() {
      if (this.client !== undefined) return Promise.resolve();
      const self = this;
      // The socket the client opens, kept to cut it under the client.
      // Several sidecars: each connection the client opens goes to a random one (a load balancer).
      class Socket extends WebSocket {
        constructor(address, protocols) {
          super(urls.length > 1 ? address.replace(url.replace('http', 'ws'), pick().replace('http', 'ws')) : address, protocols);
          self.ws = this;
        }
      }
      this.client = new TracewireClient({
        url: `${url.replace('http', 'ws')}/v1/events`,
        token: this.token,
        WebSocket: Socket,
        minRetryDelayMillis: 50,
        maxRetryDelayMillis: 500,
        pingIntervalMillis: 0,
        resumeWindowMillis: CFG.replayRetentionMs + 5000,
      });
      this.client.on('event', (f) => {
        let r = this.runs.get(f.run_id);
        if (r === undefined) this.runs.set(f.run_id, (r = { seqs: new Set(), contiguous: 0, lastAt: 0 }));
        if (r.seqs.has(f.seq)) this.dups++;
        else if (f.seq !== r.contiguous + 1) this.outOfOrder++;
        r.seqs.add(f.seq);
        while (r.seqs.has(r.contiguous + 1)) r.contiguous++;
      });
      this.client.on('gap', (g) => {
        this.gaps++;
        if (process.env.SOAK_DEBUG) console.error('gap', this.user, JSON.stringify(g));
      });
      this.client.on('error', (e) => {
        if (process.env.SOAK_DEBUG) console.error('error', this.user, `#${this.i}`, JSON.stringify(e));
        if (/outside the resume window/.test(e.message)) this.expired++;
        else this.errors++;
      });
      return new Promise((resolve) => {
        this.client.on('status', (st) => {
          this.open = st.state === 'open';
          if (st.state === 'open') resolve();
        });
        this.client.connect();
      });
    }
    async drop() {
      if (!this.open) return;
      this.open = false;
      this.reconnects++;
      // Half a clean close, half an abrupt terminate, under the client: it must come back and resume.
      if (Math.random() < 0.5) this.ws.close();
      else this.ws.terminate();
    }
  }

  const stalled = [];
  process.on('message', async (msg) => {
    if (msg.type === 'connect') {
      url = msg.url;
      urls = msg.urls ?? [msg.url];
      for (let i = 0; i < msg.clients; i++) {
        const c = CFG.client === 'tracewire' ? new Shipped(i, `u-${i % msg.users}`) : new Logical(i, `u-${i % msg.users}`);
        c.token = await verifier.sign(c.user, 3600);
        all.push(c);
      }
      for (let i = 0; i < all.length; i += 50) await Promise.all(all.slice(i, i + 50).map((c) => c.connect(false)));
      for (let i = 0; i < msg.stalled; i++) {
        const token = await verifier.sign(`u-${i % msg.users}`, 3600);
        const ws = new WebSocket(`${url.replace('http', 'ws')}/v1/events`, { headers: { authorization: `Bearer ${token}` }, autoPong: false });
        ws.on('error', () => undefined);
        await new Promise((r) => ws.once('message', r));
        ws._socket.pause();
        stalled.push(ws);
      }
      process.send({ type: 'connected', open: all.filter((c) => c.open).length });
    } else if (msg.type === 'churn') {
      churning = true;
      (async () => {
        while (churning) {
          for (let k = 0; k < msg.perS; k++) {
            const c = all[Math.floor(Math.random() * all.length)];
            void c.drop();
          }
          await sleep(1000);
        }
      })();
    } else if (msg.type === 'finish') {
      churning = false;
      const expected = msg.runsByUser;
      const complete = (c) => (expected[c.user] ?? []).every((id) => c.runs.get(id)?.contiguous === 11);
      const deadline = Date.now() + 20_000;
      while (Date.now() < deadline) {
        if (CFG.client === 'raw') for (const c of all) if (!c.open && c.ws.readyState >= 2) await c.connect(true);
        if (all.every(complete)) break;
        await sleep(200);
      }
      let expectedEvents = 0;
      let received = 0;
      let missing = 0;
      let dups = 0;
      let outOfOrder = 0;
      let reconnects = 0;
      let errors = 0;
      let expired = 0;
      let extraRuns = 0;
      let gaps = 0;
      let clientDups = 0;
      const missingExamples = [];
      for (const c of all) {
        const mine = new Set(expected[c.user] ?? []);
        for (const id of mine) {
          expectedEvents += 11;
          const got = c.runs.get(id)?.seqs.size ?? 0;
          received += Math.min(got, 11);
          if (got < 11) {
            missing += 11 - got;
            if (missingExamples.length < 5) missingExamples.push(`${c.user}#${c.i} ${id} has ${[...(c.runs.get(id)?.seqs ?? [])].sort((a, b) => a - b).join(',')}`);
          }
        }
        for (const id of c.runs.keys()) if (!mine.has(id)) extraRuns++;
        dups += c.dups;
        outOfOrder += c.outOfOrder;
        reconnects += c.reconnects;
        errors += c.errors;
        expired += c.expired;
        gaps += c.gaps ?? 0;
        clientDups += c.client?.stats.duplicates ?? 0;
      }
      process.send({ type: 'result', expectedEvents, received, missing, dups, outOfOrder, reconnects, errors, expired, extraRuns, gaps, clientDups, missingExamples });
    } else if (msg.type === 'exit') {
      for (const c of all) {
        c.client?.close();
        c.ws?.terminate();
      }
      for (const w of stalled) w.terminate();
      setTimeout(() => process.exit(0), 100);
    }
  });
  process.send({ type: 'ready' });
}

// ---------------------------------------------------------- orchestrator ----
function child(role) {
  const p = fork(SELF, ['--role', role, ...process.argv.slice(2)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: role === 'server' ? ['--expose-gc'] : [] });
  const waiting = new Map();
  const on = new Map();
  p.on('message', (m) => {
    on.get(m.type)?.(m);
    const w = waiting.get(m.type);
    if (w) {
      waiting.delete(m.type);
      w(m);
    }
  });
  return {
    p,
    next: (type) => new Promise((resolve) => waiting.set(type, resolve)),
    on: (type, f) => on.set(type, f),
    send: (m) => p.send(m),
  };
}

const mib = (b) => (b / 2 ** 20).toFixed(1);

async function orchestrate() {
  const started = Date.now();
  const hard = setTimeout(() => {
    console.error(`soak: hard limit ${HARD_LIMIT_MS} ms reached, killing`);
    process.exit(2);
  }, HARD_LIMIT_MS);
  console.log(`soak: ${CFG.client === 'tracewire' ? 'tracewire/client' : 'raw ws'} clients${CFG.sidecars > 1 ? ` on ${CFG.sidecars} sidecars` : ''}, ${CFG.durationS} s, ${CFG.clients} clients over ${CFG.users} users (+${CFG.stalled} stalled), ${CFG.runsPerS} runs/s, churn ${CFG.churnPerS}/s, replay retention ${CFG.replayRetentionMs} ms`);
  const srv = child('server');
  const cli = child('clients');
  const srvReady = srv.next('ready');
  const cliReady = cli.next('ready');
  const kill = () => {
    srv.p.kill('SIGKILL');
    cli.p.kill('SIGKILL');
  };
  process.on('exit', kill);
  const samples = [];
  srv.on('sample', (s) => {
    samples.push(s);
    if (s.afterGc) console.log(`  t=${String(Math.round(s.t / 1000)).padStart(3)} s  rss ${mib(s.rss)} MiB  heap after GC ${mib(s.heap)} MiB (total ${mib(s.heapTotal)})  ext ${mib(s.ext)} MiB  conns ${s.conns}  runs in flight ${s.inFlight} judged ${s.judged}  traces ${s.traces}  held ${s.held}  replay ${mib(s.replayBytes)} MiB  queued ${mib(s.queued)} MiB`);
  });
  const { url, urls } = await srvReady;
  await cliReady;
  const connected = cli.next('connected');
  cli.send({ type: 'connect', url, urls, clients: CFG.clients, users: CFG.users, stalled: CFG.stalled });
  const conn = await connected;
  console.log(`soak: ${conn.open} clients connected to ${urls.length > 1 ? `${urls.length} sidecars on a redis-server broker` : url}`);
  const gen = srv.next('generated');
  const tLoad = Date.now();
  srv.send({ type: 'start', durationMs: CFG.durationS * 1000, runsPerS: CFG.runsPerS, users: CFG.users, stepMaxMs: CFG.stepMaxMs });
  cli.send({ type: 'churn', perS: CFG.churnPerS });
  const { runsByUser, started: runs } = await gen;
  const loadS = (Date.now() - tLoad) / 1000;
  const res = cli.next('result');
  cli.send({ type: 'finish', runsByUser });
  const r = await res;
  const rep = srv.next('report');
  srv.send({ type: 'report' });
  const m = await rep;
  cli.send({ type: 'exit' });
  srv.send({ type: 'exit' });
  clearTimeout(hard);

  // RSS over time: first and last thirds of the load phase, and the extremes.
  const load = samples.filter((s) => s.t >= 0);
  const third = Math.max(1, Math.floor(load.length / 3));
  const avg = (xs) => xs.reduce((a, s) => a + s.rss, 0) / Math.max(1, xs.length);
  const rssFirst = avg(load.slice(third, 2 * third));
  const rssLast = avg(load.slice(-third));
  const gcs = load.filter((s) => s.afterGc);
  const g3 = Math.max(1, Math.floor(gcs.length / 3));
  const heapAvg = (xs) => xs.reduce((a, s) => a + s.heap, 0) / Math.max(1, xs.length);
  const heapMid = heapAvg(gcs.slice(g3, 2 * g3));
  const heapLast = heapAvg(gcs.slice(-g3));
  const rssMax = Math.max(...load.map((s) => s.rss));
  const rssMin = Math.min(...load.map((s) => s.rss));
  const sum = (o) => Object.values(o ?? {}).reduce((a, b) => a + b, 0);
  const rows = [
    ['duration (load phase)', `${loadS.toFixed(1)} s (total ${((Date.now() - started) / 1000).toFixed(1)} s)`],
    ['clients / users', `${CFG.clients} / ${CFG.users} (+${CFG.stalled} stalled clients, not counted below)`],
    ['runs', `${runs} (${(runs / loadS).toFixed(0)}/s), ${runs * 11} events emitted (metric: ${sum(m.emitted)})`],
    ['events expected at clients', String(r.expectedEvents)],
    ['events received (unique)', String(r.received)],
    ['events missing', String(r.missing)],
    ['duplicates received', String(r.dups)],
    [CFG.client === 'tracewire' ? 'handed out out of order / gaps reported' : 'out-of-order arrivals', CFG.client === 'tracewire' ? `${r.outOfOrder} / ${r.gaps}` : String(r.outOfOrder)],
    ['client reconnects (resume)', `${r.reconnects}, events replayed ${sum(m.replayed)}` + (CFG.client === 'tracewire' ? ` (${r.clientDups} of them dropped by the clients as already handed out)` : '')],
    ['error frames', `${r.errors} (plus ${r.expired} "run outside the resume window" for old runs a client named)`],
    ['delivered / late / dropped (metric)', `${sum(m.delivered)} / ${sum(m.late)} / ${JSON.stringify(m.dropped)}`],
    ['verdicts', JSON.stringify(m.verdicts)],
    ['disconnects by reason', JSON.stringify(m.disconnects)],
    ...(m.broker ? [['broker messages by kind (in + out) / fan-out drops', `${JSON.stringify(m.broker)} / ${JSON.stringify(m.brokerDropped)}`]] : []),
    ['server RSS min / max', `${mib(rssMin)} / ${mib(rssMax)} MiB`],
    ['server RSS 2nd third / last third (avg)', `${mib(rssFirst)} / ${mib(rssLast)} MiB (${rssLast >= rssFirst ? '+' : ''}${mib(rssLast - rssFirst)} MiB)`],
    ['server heap after full GC, 2nd third / last third', `${mib(heapMid)} / ${mib(heapLast)} MiB (${heapLast >= heapMid ? '+' : ''}${mib(heapLast - heapMid)} MiB)`],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  console.log('\nsoak summary');
  console.log(`| ${'measure'.padEnd(w)} | value |`);
  console.log(`|${'-'.repeat(w + 2)}|-------|`);
  for (const [k, v] of rows) console.log(`| ${k.padEnd(w)} | ${v} |`);
  console.log('\nRSS samples (MiB, every 5 s):', gcs.map((s) => mib(s.rss)).join(' '));
  console.log('heap after full GC (MiB, every 5 s):', gcs.map((s) => mib(s.heap)).join(' '));
  if (r.missing > 0) console.log('missing examples:', r.missingExamples);
  // The shipped client promises order and says every gap: both must be nil too.
  const ok = r.missing === 0 && r.dups === 0 && r.extraRuns === 0 && r.errors === 0 && (CFG.client === 'raw' || (r.outOfOrder === 0 && r.gaps === 0));
  console.log(ok ? '\nsoak: OK, no event lost or duplicated' : '\nsoak: FAILED');
  await sleep(200);
  process.exit(ok ? 0 : 1);
}

if (A.role === 'server') await server();
else if (A.role === 'clients') await clients();
else await orchestrate();
