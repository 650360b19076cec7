import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { performance } from 'node:perf_hooks';
import type { Readable } from 'node:stream';
import { TracewireError } from '../../errors/errors.js';
import { bearerOf, safeEqual } from '../../util/bearer.js';
import type { Tracewire } from '../../Tracewire.js';
import { decodeJson, decodeProtobuf, TooManySpansError, type DecodedRequest } from './decode.js';
import { gunzipLimited } from './gunzip.js';
import { causalOrder } from './requestOrder.js';
import { otlpTypes } from './schema.js';

/**
 * OTLP/HTTP trace receiver (`POST /v1/traces`) feeding the OTLP bridges.
 *
 * - Bodies: `application/x-protobuf` (binary ExportTraceServiceRequest) and
 *   `application/json` (OTLP/JSON), optionally `Content-Encoding: gzip`.
 * - Limits: `otlpMaxBodyBytes` on the compressed and on the decompressed body
 *   (a gzip bomb is cut off while streaming: 413), `otlpMaxSpansPerRequest`
 *   spans (400), `otlpMaxConcurrentRequests` requests in flight (503 with
 *   Retry-After), `otlpToken` as `Authorization: Bearer` (401).
 * - Responses follow the OTLP/HTTP spec and the request's encoding: 200 with an
 *   ExportTraceServiceResponse (`partial_success` when spans were rejected);
 *   errors carry a google.rpc.Status (protobuf) or a JSON body, both with
 *   tracewire's stable error code (`x-tracewire-error` header too).
 * - Spans go to `tw.otlpBridges` in request order: a span with no end time is
 *   a start (live export), an ended span is its start and its end.
 */
export async function otlpReceiver(app: FastifyInstance, opts: { tw: Tracewire }): Promise<void> {
  const tw = opts.tw;
  const cfg = tw.config;
  const limit = cfg.otlpMaxBodyBytes;
  const token = cfg.otlpToken;
  let inFlight = 0;
  const onClose = (): void => {
    inFlight--;
  };

  // Per-request state on the request object (a fastify decoration: one shape for every request).
  app.decorateRequest('tracewire', null);
  const stateOf = (req: FastifyRequest): RequestState => {
    const r = req as FastifyRequest & { tracewire: RequestState | null };
    return (r.tracewire ??= { encoding: encodingOf(req.headers['content-type']), gzip: false });
  };

  // Only the two OTLP media types, read as raw bytes within the body limit.
  app.removeAllContentTypeParsers();
  const raw = (_req: FastifyRequest, body: Buffer | string, done: (err: Error | null, body?: unknown) => void): void => done(null, body);
  app.addContentTypeParser('application/x-protobuf', { parseAs: 'buffer', bodyLimit: limit }, raw);
  app.addContentTypeParser('application/json', { parseAs: 'buffer', bodyLimit: limit }, raw);

  app.setErrorHandler((err: unknown, req: FastifyRequest, reply: FastifyReply) => {
    const tErr = toTracewireError(err, limit);
    if (tErr.code === 'TW_INTERNAL') {
      tw.metrics.internalErrors.inc({ component: 'otlp' });
      tw.diag.repeated('otlp_internal', 'otlpReceiver', (n) => `${n} request(s) failed: ${(err as Error)?.stack ?? String(err)}`);
    }
    sendError(reply, stateOf(req).encoding, tErr);
  });

  // Callback-style hooks: an async hook costs a promise per request.
  app.addHook('onResponse', (req, reply, done) => {
    tw.metrics.otlpRequests.inc({ encoding: stateOf(req).encoding, status: String(reply.statusCode) });
    done();
  });

  app.route({
    method: 'POST',
    url: '/v1/traces',
    bodyLimit: limit,
    onRequest: (req, reply, done) => {
      const state = stateOf(req);
      // A request on a connection kept alive into the shutdown: spans it carries would be lost; the exporter retries (elsewhere).
      if (tw.closing) return done(new TracewireError('TW_OTLP_SHUTDOWN', RETRY_AFTER_SECONDS));
      if (token !== '' && !safeEqual(bearerOf(req.headers.authorization) ?? '', token)) return done(new TracewireError('TW_OTLP_UNAUTHORISED'));
      if (state.encoding === 'unsupported') return done(new TracewireError('TW_OTLP_UNSUPPORTED_MEDIA', mediaType(req.headers['content-type']) || '(none)'));
      const enc = contentEncodingOf(req.headers['content-encoding']);
      if (enc === undefined) return done(new TracewireError('TW_OTLP_UNSUPPORTED_ENCODING', String(req.headers['content-encoding'])));
      state.gzip = enc === 'gzip';
      const len = Number(req.headers['content-length']);
      if (Number.isFinite(len) && len > limit) return done(new TracewireError('TW_OTLP_TOO_LARGE', limit));
      if (inFlight >= cfg.otlpMaxConcurrentRequests) return done(new TracewireError('TW_OTLP_OVERLOADED', RETRY_AFTER_SECONDS));
      inFlight++;
      // 'close' fires once, after the response finished or the connection dropped.
      reply.raw.once('close', onClose);
      done();
    },
    preParsing: (req, _reply, payload, done) => {
      if (!stateOf(req).gzip) return done(null, payload);
      done(null, gunzipLimited(payload as Readable, limit));
    },
    handler: async (req, reply) => {
      const state = stateOf(req);
      const body = req.body instanceof Uint8Array ? req.body : new Uint8Array(0);
      const hookAt = performance.now();
      const decodeOpts = { maxSpans: cfg.otlpMaxSpansPerRequest, hookAt };
      let decoded: DecodedRequest;
      try {
        decoded = state.encoding === 'protobuf' ? decodeProtobuf(body, decodeOpts) : decodeJson(body, decodeOpts);
      } catch (err) {
        if (err instanceof TooManySpansError) tw.metrics.otlpRejectedSpans.inc({ reason: 'too_many_spans' }, err.spanCount);
        throw err;
      }
      ingest(tw, decoded);
      let partial: { rejectedSpans: number; errorMessage: string } | undefined;
      if (decoded.rejected > 0) {
        const by = [...decoded.reasons].map(([r, n]) => `${r} ${n}`).join(', ');
        partial = { rejectedSpans: decoded.rejected, errorMessage: `${decoded.rejected} span(s) rejected (${by}); first: ${decoded.firstRejection ?? ''}` };
      }
      sendSuccess(reply, state.encoding, partial);
      return reply;
    },
  });
}

type Encoding = 'protobuf' | 'json' | 'unsupported';

interface RequestState {
  readonly encoding: Encoding;
  gzip: boolean;
}

/** The response to a request with every span accepted: an empty ExportTraceServiceResponse. */
const EMPTY_PROTOBUF_RESPONSE = Buffer.alloc(0);

const RETRY_AFTER_SECONDS = 1;

/** Hand the decoded spans to the OTLP bridges, in request order but each span's end after its children's (`causalOrder`), and count them. */
function ingest(tw: Tracewire, decoded: DecodedRequest): void {
  const m = tw.metrics;
  for (const [reason, n] of decoded.reasons) m.otlpRejectedSpans.inc({ reason }, n);
  if (decoded.spans.length === 0) return;
  // One bad span must not fail the request or stop the others.
  tw.otlpBridges.ingest(causalOrder(decoded.spans), (err) => {
    m.internalErrors.inc({ component: 'otlp' });
    tw.diag.repeated('otlp_bridge_fault', 'otlpReceiver', (n) => `${n} span(s) failed in the bridge: ${(err as Error)?.stack ?? String(err)}`);
  });
  m.otlpSpans.inc({}, decoded.spans.length);
  m.spansSeen.inc({ source: 'otlp' }, decoded.spans.length);
}

function mediaType(header: string | undefined): string {
  return (header ?? '').split(';')[0]!.trim().toLowerCase();
}

function encodingOf(header: string | undefined): Encoding {
  const t = mediaType(header);
  if (t === 'application/x-protobuf') return 'protobuf';
  if (t === 'application/json') return 'json';
  return 'unsupported';
}

function contentEncodingOf(header: string | string[] | undefined): 'gzip' | 'identity' | undefined {
  if (header === undefined) return 'identity';
  const v = (Array.isArray(header) ? header.join(',') : header).trim().toLowerCase();
  if (v === '' || v === 'identity') return 'identity';
  if (v === 'gzip' || v === 'x-gzip') return 'gzip';
  return undefined;
}

/** Any error of the route as a catalogue error (fastify's body errors included). */
function toTracewireError(err: unknown, limit: number): TracewireError {
  if (err instanceof TracewireError) return err;
  const e = err as { statusCode?: number; message?: string; code?: string };
  if (e.statusCode === 413 || e.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return new TracewireError('TW_OTLP_TOO_LARGE', limit);
  if (e.statusCode === 415 || e.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return new TracewireError('TW_OTLP_UNSUPPORTED_MEDIA', '(unknown)');
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) return new TracewireError('TW_OTLP_BAD_BODY', e.message ?? 'bad request');
  return new TracewireError('TW_INTERNAL', e.message ?? String(err));
}

/** google.rpc.Code for each HTTP status the receiver answers with. */
function grpcCode(status: number): number {
  switch (status) {
    case 400:
    case 415:
      return 3; // INVALID_ARGUMENT
    case 401:
      return 16; // UNAUTHENTICATED
    case 413:
    case 429:
      return 8; // RESOURCE_EXHAUSTED
    case 503:
      return 14; // UNAVAILABLE
    default:
      return 13; // INTERNAL
  }
}

const ERROR_DOMAIN = 'tracewire';
const ERROR_INFO_TYPE = 'type.googleapis.com/google.rpc.ErrorInfo';

/**
 * An error response in the request's encoding: a google.rpc.Status (message
 * prefixed with the code, an ErrorInfo detail whose reason is the code) for
 * protobuf requests; `{code, message, details}` JSON otherwise.
 */
function sendError(reply: FastifyReply, encoding: Encoding, err: TracewireError): void {
  const status = err.status;
  void reply.status(status).header('x-tracewire-error', err.code);
  if (status === 503 || status === 429) void reply.header('retry-after', String(RETRY_AFTER_SECONDS));
  if (encoding === 'protobuf') {
    const t = otlpTypes();
    const info = t.errorInfo.encode({ reason: err.code, domain: ERROR_DOMAIN }).finish();
    const body = t.rpcStatus.encode({ code: grpcCode(status), message: `${err.code}: ${err.message}`, details: [{ typeUrl: ERROR_INFO_TYPE, value: info }] }).finish();
    void reply.header('content-type', 'application/x-protobuf').send(Buffer.from(body.buffer, body.byteOffset, body.byteLength));
    return;
  }
  // OTLP/JSON: the JSON form of the same google.rpc.Status (code an int32, as a Collector's exporter parses it).
  void reply.header('content-type', 'application/json; charset=utf-8').send(
    JSON.stringify({ code: grpcCode(status), message: `${err.code}: ${err.message}`, details: [{ '@type': ERROR_INFO_TYPE, reason: err.code, domain: ERROR_DOMAIN }] }),
  );
}

function sendSuccess(reply: FastifyReply, encoding: Encoding, partial: { rejectedSpans: number; errorMessage: string } | undefined): void {
  void reply.status(200);
  if (encoding === 'protobuf') {
    if (partial === undefined) {
      void reply.header('content-type', 'application/x-protobuf').send(EMPTY_PROTOBUF_RESPONSE);
      return;
    }
    const body = otlpTypes().response.encode({ partialSuccess: partial }).finish();
    void reply.header('content-type', 'application/x-protobuf').send(Buffer.from(body.buffer, body.byteOffset, body.byteLength));
    return;
  }
  // OTLP/JSON: lowerCamelCase fields, int64 as a decimal string.
  const json = partial === undefined ? {} : { partialSuccess: { rejectedSpans: String(partial.rejectedSpans), errorMessage: partial.errorMessage } };
  void reply.header('content-type', 'application/json').send(JSON.stringify(json));
}
