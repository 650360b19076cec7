import type { OutboundEvent } from '../bridge/EventSink.js';

/** RFC 6455 §5.2 header length of an unmasked frame with `len` payload bytes. */
function headLength(len: number): number {
  return len < 126 ? 2 : len < 65536 ? 4 : 10;
}

/** Bytes of the text frame that carries `payload`. */
export function frameSize(payload: string): number {
  const len = Buffer.byteLength(payload);
  return headLength(len) + len;
}

/**
 * Builds a server-to-client WebSocket text frame (RFC 6455 §5.2: FIN, opcode
 * 0x1, no mask). permessage-deflate is off on the hub, so an event's frame is
 * the same bytes for every recipient: it is built once and shared when
 * several connections (or a resume) need it.
 */
function buildTextFrame(payload: string): Buffer {
  const len = Buffer.byteLength(payload);
  const buf = Buffer.allocUnsafe(headLength(len) + len);
  writeTextFrame(payload, len, buf, 0);
  return buf;
}

/** Write the text frame of `payload` (`len` UTF-8 bytes) into `buf` at `at`; returns the bytes written. */
function writeTextFrame(payload: string, len: number, buf: Buffer, at: number): number {
  const head = headLength(len);
  buf[at] = 0x81;
  if (len < 126) buf[at + 1] = len;
  else if (len < 65536) {
    buf[at + 1] = 126;
    buf.writeUInt16BE(len, at + 2);
  } else {
    buf[at + 1] = 127;
    buf.writeUInt32BE(Math.floor(len / 2 ** 32), at + 2);
    buf.writeUInt32BE(len >>> 0, at + 6);
  }
  buf.write(payload, at + head, 'utf8');
  return head + len;
}

/**
 * The event's frame, built once and cached on the event when several
 * connections share it (its JSON text is released: the frame holds it).
 */
export function frameOf(ev: OutboundEvent): Buffer {
  let f = ev.frame;
  if (f === undefined) {
    f = ev.frame = buildTextFrame(ev.payload);
    ev.bytes = f.length;
    ev.releasePayload();
  }
  return f;
}

/**
 * Copy the event's frame into a batch buffer at `at` (`ev.bytes` long): the
 * cached frame when there is one, else the frame is written straight from
 * the JSON text (no per-event buffer for an event only one connection gets).
 */
export function copyFrame(ev: OutboundEvent, buf: Buffer, at: number): number {
  if (ev.frame !== undefined) return ev.frame.copy(buf, at);
  const b = ev.bytes; // head + len, so the payload length follows from the header sizes
  return writeTextFrame(ev.payload, b < 128 ? b - 2 : b < 65540 ? b - 4 : b - 10, buf, at);
}
