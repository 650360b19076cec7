// A minimal WebSocket client over a raw TCP socket, for the client side of
// the benchmarks. It does the RFC 6455 handshake, then walks server frames by
// their headers: in counting mode it never copies or decodes a payload, so one
// client process can count millions of frames per second and the servers, not
// the clients, are what the figures measure. In capture mode it hands each
// text payload to a callback with the time its bytes were read from the socket.
import crypto from 'node:crypto';
import net from 'node:net';
import { nowNs } from './common.mjs';

export class RawWs {
  /**
   * @param {{ host?: string, port: number, path: string, headers?: Record<string,string>,
   *           onText?: (payload: Buffer, recvNs: number, c: RawWs) => void }} o
   */
  constructor(o) {
    this.o = o;
    /** Data frames (text or binary) received since `resetCount()`. */
    this.frames = 0;
    /** Hand text payloads to `onText` (else frames are only counted). */
    this.capture = true;
    this.closed = false;
    this.partial = null;
    this.remaining = 0;
    this.opcode = 0;
    this.parts = [];
    this.collecting = false;
  }

  /** Connects and completes the upgrade; resolves with this. */
  open() {
    const { host = '127.0.0.1', port, path, headers = {} } = this.o;
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host, port });
      this.sock = sock;
      sock.setNoDelay(true);
      const key = crypto.randomBytes(16).toString('base64');
      let upgraded = false;
      let hbuf = Buffer.alloc(0);
      sock.once('connect', () => {
        const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
        sock.write(
          `GET ${path} HTTP/1.1\r\nHost: ${host}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
            `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n${extra}\r\n`,
        );
      });
      sock.on('data', (chunk) => {
        const t = nowNs();
        if (!upgraded) {
          hbuf = hbuf.length === 0 ? chunk : Buffer.concat([hbuf, chunk]);
          const end = hbuf.indexOf('\r\n\r\n');
          if (end < 0) return;
          const status = hbuf.subarray(0, hbuf.indexOf('\r\n')).toString();
          if (!/^HTTP\/1\.1 101/.test(status)) {
            reject(new Error(`upgrade refused: ${status}`));
            sock.destroy();
            return;
          }
          upgraded = true;
          resolve(this);
          chunk = hbuf.subarray(end + 4);
          hbuf = Buffer.alloc(0);
          if (chunk.length === 0) return;
        }
        this.parse(chunk, t);
      });
      sock.on('error', (err) => {
        if (!upgraded) reject(err);
      });
      sock.on('close', () => {
        this.closed = true;
      });
    });
  }

  resetCount() {
    this.frames = 0;
  }

  parse(chunk, t) {
    let buf = chunk;
    if (this.partial !== null) {
      buf = Buffer.concat([this.partial, chunk]);
      this.partial = null;
    }
    const n = buf.length;
    let i = 0;
    while (i < n) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, n - i);
        if (this.collecting) this.parts.push(buf.subarray(i, i + take));
        i += take;
        this.remaining -= take;
        if (this.remaining === 0) this.finish(t);
        continue;
      }
      if (n - i < 2) {
        this.partial = Buffer.from(buf.subarray(i));
        return;
      }
      const b0 = buf[i];
      const b1 = buf[i + 1];
      const len7 = b1 & 0x7f;
      const masked = (b1 & 0x80) !== 0;
      const hlen = 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + (masked ? 4 : 0);
      if (n - i < hlen) {
        this.partial = Buffer.from(buf.subarray(i));
        return;
      }
      let len = len7;
      if (len7 === 126) len = buf.readUInt16BE(i + 2);
      else if (len7 === 127) len = buf.readUInt32BE(i + 2) * 2 ** 32 + buf.readUInt32BE(i + 6);
      this.opcode = b0 & 0x0f;
      this.collecting = this.capture && this.opcode === 1;
      i += hlen;
      this.remaining = len;
      if (len === 0) this.finish(t);
    }
  }

  finish(t) {
    const op = this.opcode;
    if (op === 1 || op === 2) {
      this.frames++;
      if (this.collecting) {
        const p = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts);
        this.parts = [];
        this.o.onText?.(p, t, this);
      }
    }
    this.collecting = false;
  }

  /** Sends a short masked text frame (client frames must be masked). */
  sendText(text) {
    const p = Buffer.from(text);
    if (p.length >= 126) throw new Error('sendText: payload too long for this client');
    const f = Buffer.allocUnsafe(6 + p.length);
    f[0] = 0x81;
    f[1] = 0x80 | p.length;
    const mask = crypto.randomBytes(4);
    mask.copy(f, 2);
    for (let k = 0; k < p.length; k++) f[6 + k] = p[k] ^ mask[k & 3];
    this.sock.write(f);
  }

  close() {
    this.sock?.destroy();
  }
}
