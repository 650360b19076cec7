/**
 * Builds a server-to-client WebSocket text frame (RFC 6455 §5.2: FIN, opcode
 * 0x1, no mask) once per event, so the same bytes go to every connection of
 * the user. permessage-deflate is off on the hub, so frames are identical for
 * all recipients.
 */
export function buildTextFrame(payload: string): Buffer {
  const len = Buffer.byteLength(payload);
  let head: number;
  if (len < 126) head = 2;
  else if (len < 65536) head = 4;
  else head = 10;
  const buf = Buffer.allocUnsafe(head + len);
  buf[0] = 0x81;
  if (len < 126) buf[1] = len;
  else if (len < 65536) {
    buf[1] = 126;
    buf.writeUInt16BE(len, 2);
  } else {
    buf[1] = 127;
    buf.writeUInt32BE(Math.floor(len / 2 ** 32), 2);
    buf.writeUInt32BE(len >>> 0, 6);
  }
  buf.write(payload, head, 'utf8');
  return buf;
}
