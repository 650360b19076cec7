// The load generator of the OTLP ingest figure, in its own process (forked by
// bench/otlp.mjs). Keep-alive HTTP/1.1 over raw sockets (no client library in
// the way): `concurrency` connections, each sending one request at a time, the
// next as soon as the response is complete. Bodies are built once per
// (encoding, size); before each request its trace ids are restamped with a
// request counter so every request carries new traces.
import net from 'node:net';
import { deadline } from './lib/common.mjs';
import { buildBody, stamp } from './lib/otlpBodies.mjs';

deadline(Number(process.env.BENCH_CLIENT_DEADLINE_MS ?? 300_000), 'otlpclient');
process.on('disconnect', () => process.exit(0));

let seq = 1;
let running = [];
const statuses = new Map();

function slot(port, path, proto) {
  const b = { ...proto, body: Buffer.from(proto.body) };
  const head = Buffer.from(`POST ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: ${b.contentType}\r\nContent-Length: ${b.body.length}\r\nConnection: keep-alive\r\n\r\n`);
  const sock = net.connect({ host: '127.0.0.1', port });
  sock.setNoDelay(true);
  const s = { stop: false, sock, done: 0 };
  let buf = null;
  const send = () => {
    if (s.stop) return sock.end();
    stamp(b, seq++);
    sock.cork();
    sock.write(head);
    sock.write(b.body);
    sock.uncork();
  };
  sock.on('connect', send);
  sock.on('data', (chunk) => {
    buf = buf === null ? chunk : Buffer.concat([buf, chunk]);
    for (;;) {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const headText = buf.subarray(0, end).toString('latin1');
      const status = Number(headText.slice(9, 12));
      const m = /content-length:\s*(\d+)/i.exec(headText);
      const len = m ? Number(m[1]) : 0;
      if (buf.length < end + 4 + len) return;
      buf = buf.length === end + 4 + len ? null : buf.subarray(end + 4 + len);
      statuses.set(status, (statuses.get(status) ?? 0) + 1);
      s.done++;
      send();
      if (buf === null) return;
    }
  });
  sock.on('error', () => {
    statuses.set('socket_error', (statuses.get('socket_error') ?? 0) + 1);
  });
  return s;
}

const cache = new Map();
process.on('message', (m) => {
  try {
    if (m.cmd === 'run') {
      const key = `${m.encoding}:${m.spans}`;
      if (!cache.has(key)) cache.set(key, buildBody(m.encoding, m.spans));
      statuses.clear();
      running = Array.from({ length: m.concurrency }, () => slot(m.port, m.path, cache.get(key)));
      process.send({ id: m.id, ok: true, bodyBytes: cache.get(key).body.length });
    } else if (m.cmd === 'stop') {
      let done = 0;
      for (const s of running) {
        s.stop = true;
        done += s.done;
      }
      running = [];
      process.send({ id: m.id, ok: true, requests: done, statuses: Object.fromEntries(statuses) });
    } else if (m.cmd === 'build') {
      for (const [e, n] of m.bodies) if (!cache.has(`${e}:${n}`)) cache.set(`${e}:${n}`, buildBody(e, n));
      process.send({ id: m.id, ok: true });
    } else if (m.cmd === 'exit') {
      process.exit(0);
    }
  } catch (err) {
    process.send({ id: m.id, ok: false, error: String(err?.stack ?? err) });
  }
});
process.send({ ready: true });
