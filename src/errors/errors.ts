import { STATUS_CODES } from 'node:http';
import { ERRORS, formatMessage, type ErrorCode, type ErrorSpec } from './codes.js';

export { ERRORS, formatMessage, type ErrorCode, type ErrorSpec };

/** A catalogue error (see codes.ts) as thrown and answered by the server side. */
export class TracewireError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly closeCode: number | undefined;

  constructor(code: ErrorCode, ...args: unknown[]) {
    super(formatMessage(code, args));
    this.name = 'TracewireError';
    this.code = code;
    const spec: ErrorSpec = ERRORS[code];
    this.status = spec.status ?? 500;
    this.closeCode = spec.closeCode;
  }

  /** The JSON body of an HTTP error response and of a WebSocket error frame. */
  toJSON(): { code: ErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}

/**
 * A whole HTTP/1.1 error response for a raw socket (before any request
 * object exists, or on an upgrade the hub refuses): the error's status,
 * `{code, message}` and the `x-tracewire-error` header; the connection closes.
 */
export function httpErrorResponse(e: TracewireError): string {
  const body = JSON.stringify(e.toJSON());
  return `HTTP/1.1 ${e.status} ${STATUS_CODES[e.status] ?? ''}\r\nContent-Type: application/json; charset=utf-8\r\nx-tracewire-error: ${e.code}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}
