/**
 * The one error catalogue. Every error a user can see (an HTTP response, a
 * WebSocket error frame or close code, a start-up failure, an error the
 * WebSocket client reports) has a stable code here, a message template and,
 * where it applies, an HTTP status and a WebSocket close code. README.md
 * documents each code; a test checks that. No imports: the browser client
 * (src/client) reads its codes from here too.
 */

export interface ErrorSpec {
  /** HTTP status when the error is an HTTP response. */
  readonly status?: number;
  /** WebSocket close code when the error closes a connection. */
  readonly closeCode?: number;
  /** Message template; `%s` placeholders are filled in order. */
  readonly message: string;
}

export const ERRORS = {
  // configuration
  TW_CONFIG_INVALID: { message: 'invalid configuration: %s' },
  // WebSocket authentication (connection accepted, error frame sent, then closed)
  TW_AUTH_MISSING: { status: 401, closeCode: 4401, message: 'no token: send Authorization: Bearer <jwt>, ?access_token=<jwt> or the subprotocol bearer.<jwt>' },
  TW_AUTH_INVALID: { status: 401, closeCode: 4403, message: 'invalid token: %s' },
  TW_AUTH_EXPIRED: { status: 401, closeCode: 4402, message: 'token expired at %s' },
  // WebSocket frames from the client
  TW_WS_BAD_FRAME: { closeCode: 4400, message: 'frame is not a JSON object: %s' },
  TW_WS_UNKNOWN_TYPE: { message: 'unknown frame type "%s"; expected resume, ack or ping' },
  TW_WS_BAD_FIELD: { message: 'bad field %s: %s' },
  TW_WS_TOO_MANY_BAD_FRAMES: { closeCode: 4400, message: 'closing after %s bad frames' },
  TW_WS_FRAME_TOO_LARGE: { closeCode: 1009, message: 'client frame over %s bytes' },
  // WebSocket delivery
  TW_WS_BACKPRESSURE: { closeCode: 4408, message: 'client is not reading: %s bytes buffered, limit %s; reconnect and resume' },
  TW_WS_HEARTBEAT_TIMEOUT: { closeCode: 4409, message: 'no pong within %s ms' },
  TW_WS_TOO_MANY_CONNECTIONS: { status: 503, closeCode: 4429, message: 'connection limit %s reached' },
  TW_WS_SHUTDOWN: { closeCode: 1001, message: 'server is shutting down; reconnect and resume' },
  // OTLP receiver
  TW_OTLP_BAD_BODY: { status: 400, message: 'cannot decode request body: %s' },
  TW_OTLP_TOO_LARGE: { status: 413, message: 'request body over %s bytes' },
  TW_OTLP_UNSUPPORTED_MEDIA: { status: 415, message: 'unsupported content type "%s"; use application/x-protobuf or application/json' },
  TW_OTLP_UNSUPPORTED_ENCODING: { status: 415, message: 'unsupported content encoding "%s"; use gzip or identity' },
  TW_OTLP_TOO_MANY_SPANS: { status: 400, message: 'request holds %s spans, limit %s' },
  TW_OTLP_UNAUTHORISED: { status: 401, message: 'ingest token missing or wrong' },
  TW_OTLP_OVERLOADED: { status: 503, message: 'ingest queue full; retry after %s s' },
  TW_OTLP_SHUTDOWN: { status: 503, message: 'the sidecar is shutting down; retry after %s s' },
  TW_OTLP_RATE_LIMITED: { status: 429, message: 'too many requests; retry after %s s' },
  // HTTP API
  TW_NOT_FOUND: { status: 404, message: 'no route %s' },
  TW_RUN_NOT_FOUND: { status: 404, message: 'no run "%s" (runs are kept for a bounded count and age)' },
  TW_BAD_QUERY: { status: 400, message: 'bad query parameter %s: %s' },
  TW_RUNS_BUSY: { status: 503, message: 'too many runs listings are waiting for the other sidecars; retry after %s s' },
  TW_BAD_REQUEST: { status: 400, message: 'malformed HTTP request: %s' },
  TW_HEADERS_TOO_LARGE: { status: 431, message: 'request head over %s bytes' },
  TW_REQUEST_TIMEOUT: { status: 408, message: 'request not received within %s ms' },
  TW_API_UNAUTHORISED: { status: 401, message: 'api token missing or wrong' },
  TW_INTERNAL: { status: 500, closeCode: 1011, message: 'internal error: %s' },
  // The WebSocket client (src/client): reported to its error listeners, never sent to the server
  TW_CLIENT_TOKEN: { message: 'no token: %s' },
  TW_CLIENT_CONNECT: { message: 'cannot open a WebSocket: %s' },
  TW_CLIENT_STOPPED: { message: 'not reconnecting after close %s: %s' },
  TW_CLIENT_GAVE_UP: { message: 'gave up after %s attempts in a row' },
  TW_CLIENT_BAD_FRAME: { message: 'a frame from the server is not a JSON object' },
  TW_CLIENT_HANDLER: { message: 'an event listener threw: %s' },
  TW_CLIENT_NO_PONG: { message: 'no frame from the server within %s ms of a ping; reconnecting' },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

export function formatMessage(code: ErrorCode, args: readonly unknown[]): string {
  let i = 0;
  return ERRORS[code].message.replace(/%s/g, () => (i < args.length ? String(args[i++]) : '%s'));
}

