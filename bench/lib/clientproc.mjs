// Server-side handle on the client process (bench/clients.mjs), forked with IPC.
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const CLIENTS = fileURLToPath(new URL('../clients.mjs', import.meta.url));

export class ClientProcess {
  static async start(script = CLIENTS) {
    const cp = new ClientProcess(script);
    await cp.ready;
    return cp;
  }

  constructor(script = CLIENTS) {
    this.child = fork(script, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: { ...process.env } });
    this.nextId = 1;
    this.pending = new Map();
    this.ready = new Promise((resolve, reject) => {
      this.child.once('error', reject);
      this.child.on('message', (m) => {
        if (m.ready) return resolve();
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        if (m.ok) p.resolve(m);
        else p.reject(new Error(`client process: ${m.error}`));
      });
      this.child.once('exit', (code) => {
        for (const p of this.pending.values()) p.reject(new Error(`client process exited (${code})`));
        this.pending.clear();
      });
    });
  }

  request(msg) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.child.send({ ...msg, id });
    });
  }

  open(group, kind, port, conns, capture = false) {
    return this.request({ cmd: 'open', group, kind, port, conns, capture });
  }

  async count(group) {
    return this.request({ cmd: 'count', group });
  }

  collect(group) {
    return this.request({ cmd: 'collect', group });
  }

  close(group) {
    return this.request({ cmd: 'close', group });
  }

  async stop() {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.send({ cmd: 'exit', id: 0 });
    const t = setTimeout(() => this.child.kill('SIGKILL'), 2000);
    await exited;
    clearTimeout(t);
  }
}
