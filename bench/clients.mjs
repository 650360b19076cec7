// The client process of the latency, fan-out and memory benchmarks. Forked by a
// server process (child_process.fork), it opens WebSocket connections on
// command over IPC, counts or timestamps what they receive, and reports back.
// It runs on the other core, so clients never compete with the server process.
//
// Commands (IPC): {id, cmd:'open', group, kind:'tw'|'ws'|'sio', port, conns:[{path, headers}], capture}
//                 {id, cmd:'count', group}   -> frames received since ready (sum)
//                 {id, cmd:'collect', group} -> {keys, times} of captured events since last collect
//                 {id, cmd:'close', group}
//                 {id, cmd:'poll', on}       -> keep the event loop polling (true) or let it sleep (false)
import { deadline, nowNs } from './lib/common.mjs';
import { RawWs } from './lib/rawws.mjs';

deadline(Number(process.env.BENCH_CLIENT_DEADLINE_MS ?? 600_000), 'clients');
process.on('disconnect', () => process.exit(0));

const groups = new Map();

// Polling reader ({cmd:'poll', on:true}): a setImmediate loop keeps the event loop from sleeping in
// epoll_wait, so a frame is read as soon as it arrives rather than after the OS wakes the process.
let polling = false;
const poll = () => {
  if (polling) setImmediate(poll);
};

function makeGroup(name, capture) {
  return { name, capture, conns: [], keys: [], times: [] };
}

async function openOne(g, kind, port, spec) {
  let readyResolve;
  const ready = new Promise((r) => (readyResolve = r));
  const onText = (payload, t, c) => {
    if (!c.isReady) {
      const s = payload.toString();
      if (kind === 'tw') {
        // The first frame is the ack; anything else before it is a refusal.
        if (s.includes('"type":"ack"')) markReady(c);
        else throw new Error(`tracewire refused the connection: ${s}`);
      } else if (kind === 'sio') {
        if (s.startsWith('0')) c.sendText('40'); // engine.io open -> socket.io CONNECT to "/"
        else if (s.startsWith('40')) markReady(c);
      }
      return;
    }
    // Latency capture: the receive time was taken when the bytes were read, before parsing.
    const o = JSON.parse(kind === 'sio' ? s2obj(payload) : payload.toString());
    if (o !== null && typeof o.run_id === 'string') {
      g.keys.push(`${o.run_id}:${o.seq}`);
      g.times.push(t);
    }
  };
  const markReady = (c) => {
    c.isReady = true;
    c.capture = g.capture;
    c.resetCount();
    readyResolve();
  };
  const c = new RawWs({ port, path: spec.path, headers: spec.headers, onText });
  c.isReady = false;
  await c.open();
  if (kind === 'ws') markReady(c);
  g.conns.push(c);
  await ready;
  // Frames that arrived in the same chunk as the readiness frame were already counted: start clean.
  c.resetCount();
}

// socket.io event frame "42[\"event\",{...}]" -> the event object's JSON.
function s2obj(payload) {
  const s = payload.toString();
  const i = s.indexOf(',');
  return s.slice(i + 1, -1);
}

process.on('message', async (m) => {
  try {
    let out = {};
    if (m.cmd === 'open') {
      const g = groups.get(m.group) ?? makeGroup(m.group, m.capture === true);
      groups.set(m.group, g);
      // A few at a time: connection setup is not what is measured.
      const specs = [...m.conns];
      while (specs.length > 0) await Promise.all(specs.splice(0, 20).map((s) => openOne(g, m.kind, m.port, s)));
      out = { open: g.conns.length };
    } else if (m.cmd === 'count') {
      const g = groups.get(m.group);
      let n = 0;
      let closed = 0;
      for (const c of g.conns) {
        n += c.frames;
        if (c.closed) closed++;
      }
      out = { count: n, closed };
    } else if (m.cmd === 'collect') {
      const g = groups.get(m.group);
      out = { keys: g.keys, times: g.times };
      g.keys = [];
      g.times = [];
    } else if (m.cmd === 'close') {
      const g = groups.get(m.group);
      if (g) for (const c of g.conns) c.close();
      groups.delete(m.group);
    } else if (m.cmd === 'poll') {
      const was = polling;
      polling = m.on === true;
      if (polling && !was) setImmediate(poll);
      out = { polling };
    } else if (m.cmd === 'clock') {
      out = { t: nowNs() };
    } else if (m.cmd === 'exit') {
      process.exit(0);
    }
    process.send({ id: m.id, ok: true, ...out });
  } catch (err) {
    process.send({ id: m.id, ok: false, error: String(err?.stack ?? err) });
  }
});
process.send({ ready: true });
