import { maxHeaderSize } from 'node:http';
import type { Socket } from 'node:net';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { runsApi } from '../audit/runsApi.js';
import { httpErrorResponse, TracewireError } from '../errors/errors.js';
import { bearerOf, safeEqual } from '../util/bearer.js';
import { otlpReceiver } from '../sources/otlp/otlpReceiver.js';
import type { Tracewire } from '../Tracewire.js';
import { INSPECTOR_HTML } from './inspector/page.js';

/**
 * Every error answer is `{code, message}` with a catalogue code and that
 * code's HTTP status; unknown errors are 500 TW_INTERNAL and the app keeps
 * serving. What fastify itself rejects is mapped too: a request on no route
 * (whatever its body) is 404 TW_NOT_FOUND, any other client error 400
 * TW_BAD_REQUEST.
 */
export function installErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((err: unknown, req: FastifyRequest, reply: FastifyReply) => {
    const tErr = toTracewireError(err, req);
    if (tErr.code === 'TW_INTERNAL') app.log.error(err);
    // Whatever is refused for now (busy, overloaded) says when to come back, as the OTLP receiver's answers do.
    if (tErr.status === 503 || tErr.status === 429) void reply.header('retry-after', '1');
    void reply.status(tErr.status).send(tErr.toJSON());
  });
  app.setNotFoundHandler((req, reply) => {
    const e = new TracewireError('TW_NOT_FOUND', `${req.method} ${shortPath(req.url)}`);
    void reply.status(e.status).send(e.toJSON());
  });
}

function toTracewireError(err: unknown, req: FastifyRequest): TracewireError {
  if (err instanceof TracewireError) return err;
  const e = err as { statusCode?: number; message?: string; code?: string };
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    // A body fastify could not read (bad JSON, too large, bad media type) sent to a path with no route.
    if (req.is404) return new TracewireError('TW_NOT_FOUND', `${req.method} ${shortPath(req.url)}`);
    return new TracewireError('TW_BAD_REQUEST', e.message ?? 'bad request');
  }
  return new TracewireError('TW_INTERNAL', e.message ?? String(err));
}

/** A request path for a message: no query string, at most 200 characters. */
function shortPath(url: string): string {
  const path = url.split('?')[0]!;
  return path.length > 200 ? `${path.slice(0, 200)}…` : path;
}

/**
 * Errors fastify's router raises before any route or hook runs (they would
 * otherwise be answered with fastify's own codes): a path that is not valid
 * percent-encoding is 400 TW_BAD_REQUEST; a path segment over the router's
 * parameter length cannot be a run id (a run id is 49 characters) so it is
 * 404 TW_RUN_NOT_FOUND under /api/runs/ and TW_NOT_FOUND elsewhere.
 */
export function frameworkErrors(err: FastifyError, req: FastifyRequest, reply: FastifyReply): void {
  const url = req.raw.url ?? '';
  let tErr: TracewireError;
  if (err.code === 'FST_ERR_BAD_URL') {
    tErr = new TracewireError('TW_BAD_REQUEST', `${JSON.stringify(shortPath(url))} is not a valid URL (bad percent-encoding)`);
  } else if (err.code === 'FST_ERR_MAX_PARAM_LENGTH') {
    const path = url.split('?')[0]!;
    tErr = path.startsWith('/api/runs/') ? new TracewireError('TW_RUN_NOT_FOUND', shortPath(path.slice('/api/runs/'.length))) : new TracewireError('TW_NOT_FOUND', `${req.raw.method} ${shortPath(url)}`);
  } else {
    tErr = toTracewireError(err, req);
  }
  void reply.status(tErr.status).send(tErr.toJSON());
}

/**
 * What Node's HTTP parser refuses before a request exists (fastify would
 * answer with its own body): a request that is not HTTP is 400
 * TW_BAD_REQUEST, a request head over Node's limit 431
 * TW_HEADERS_TOO_LARGE, a request not received within the server's
 * `requestTimeout` 408 TW_REQUEST_TIMEOUT; each as `{code, message}` with
 * the `x-tracewire-error` header, then the connection is closed.
 */
export function clientErrorHandler(err: Error & { code?: string }, socket: Socket): void {
  if (err.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
  }
  const server = (socket as Socket & { server?: { requestTimeout?: number } }).server;
  const e =
    err.code === 'HPE_HEADER_OVERFLOW'
      ? new TracewireError('TW_HEADERS_TOO_LARGE', maxHeaderSize)
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? new TracewireError('TW_REQUEST_TIMEOUT', server?.requestTimeout ?? 'the server\'s')
        : new TracewireError('TW_BAD_REQUEST', err.code ?? 'unreadable');
  socket.end(httpErrorResponse(e));
}

/**
 * Longest path parameter the router hands to a route (fastify's default is
 * 100, answered 414 before the route's hooks). Over any URL Node accepts
 * (16 KiB of request head by default), so a long run id gets the runs API's
 * own answer, after the API token check.
 */
const MAX_PARAM_LENGTH = 65_536;

/**
 * The public app: WebSocket endpoint `/v1/events`, `/metrics`, `/healthz`,
 * the runs API and the inspector page.
 */
export async function buildPublicApp(tw: Tracewire): Promise<FastifyInstance> {
  const app = Fastify({ logger: false, frameworkErrors, clientErrorHandler, routerOptions: { maxParamLength: MAX_PARAM_LENGTH } });
  installErrorHandling(app);
  // The sidecar closes tracewire itself (Sidecar.close); a listener that fails to start must not close it.
  await app.register(tw.fastifyPlugin, { closeWithApp: false });

  // Browsers ask for it on every inspector load; answer without a 404 in their console.
  app.get('/favicon.ico', async (_req, reply) => reply.status(204).send());

  app.get('/healthz', async (_req, reply) => {
    // Load balancers stop routing to a sidecar that is draining.
    if (tw.closing) void reply.status(503);
    return { status: tw.closing ? 'shutting_down' : 'ok', mode: tw.config.mode, connections: tw.hub.connectionCount, runs_in_flight: tw.ledger.inFlightCount };
  });

  app.get('/metrics', async (req, reply) => {
    const accept = String(req.headers.accept ?? '');
    if (accept.includes('application/openmetrics-text')) {
      void reply.header('content-type', 'application/openmetrics-text; version=1.0.0; charset=utf-8');
      return tw.metrics.openMetrics();
    }
    void reply.header('content-type', 'text/plain; version=0.0.4; charset=utf-8');
    return tw.metrics.text();
  });

  await app.register(async (scope) => {
    if (tw.config.apiToken !== '') {
      scope.addHook('onRequest', async (req) => {
        const given = bearerOf(req.headers.authorization) ?? (req.query as Record<string, string | undefined>).token ?? '';
        if (!safeEqual(given, tw.config.apiToken)) throw new TracewireError('TW_API_UNAUTHORISED');
      });
    }
    await runsApi(scope, { ledger: tw.ledger, traceUrlTemplate: tw.config.traceUrlTemplate || undefined, cluster: tw.runsCluster });
    scope.get('/inspector', async (_req, reply) => {
      void reply.header('content-type', 'text/html; charset=utf-8');
      void reply.header('content-security-policy', "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'");
      return INSPECTOR_HTML;
    });
  });
  return app;
}

/** The OTLP/HTTP app: `POST /v1/traces` feeding the OTLP bridges. */
export async function buildOtlpApp(tw: Tracewire): Promise<FastifyInstance> {
  // Slow uploads must not hold a request slot for Node's default 300 s.
  // return503OnClosing off: a request arriving during shutdown gets the receiver's own TW_OTLP_SHUTDOWN (with Retry-After).
  const app = Fastify({ logger: false, bodyLimit: tw.config.otlpMaxBodyBytes, requestTimeout: 30_000, connectionTimeout: 60_000, frameworkErrors, clientErrorHandler, return503OnClosing: false });
  installErrorHandling(app);
  await app.register(otlpReceiver, { tw });
  return app;
}

export interface Sidecar {
  readonly tw: Tracewire;
  readonly publicApp: FastifyInstance;
  readonly otlpApp: FastifyInstance | undefined;
  /** `http://host:port` of the public listener. */
  readonly publicUrl: string;
  readonly otlpUrl: string | undefined;
  close(): Promise<void>;
}

/** Start the sidecar's listeners (port 0 picks a free port; OTLP port 0 in `otlpListen` still listens). */
export async function startSidecar(tw: Tracewire, listen: { host: string; port: number }, otlpListen: { host: string; port: number } | undefined): Promise<Sidecar> {
  const publicApp = await buildPublicApp(tw);
  try {
    await listenOn(publicApp, listen, '--listen');
  } catch (e) {
    await publicApp.close();
    throw e;
  }
  const addr = publicApp.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : listen.port;
  let otlpApp: FastifyInstance | undefined;
  let otlpUrl: string | undefined;
  if (otlpListen !== undefined) {
    try {
      otlpApp = await buildOtlpApp(tw);
      await listenOn(otlpApp, otlpListen, '--otlp-listen');
    } catch (e) {
      // A half-started sidecar would keep the process alive.
      await otlpApp?.close();
      await publicApp.close();
      throw e;
    }
    const a = otlpApp.server.address();
    otlpUrl = `http://${hostForUrl(otlpListen.host)}:${typeof a === 'object' && a ? a.port : otlpListen.port}`;
  }
  let closing: Promise<void> | undefined;
  return {
    tw,
    publicApp,
    otlpApp,
    publicUrl: `http://${hostForUrl(listen.host)}:${port}`,
    otlpUrl,
    close() {
      return (closing ??= (async () => {
        // Stop taking spans first: no new OTLP connection; a request already being read gets a short while to
        // finish (a body that never ends, or a connection that never sends one, must not hold the shutdown).
        const drain = Math.min(OTLP_DRAIN_MILLIS, tw.config.shutdownTimeoutMillis / 4);
        const otlpClosed = otlpApp?.close();
        if (otlpApp !== undefined) {
          await Promise.race([otlpClosed, new Promise((r) => setTimeout(r, drain).unref())]);
          otlpApp.server.closeAllConnections();
          await otlpClosed;
        }
        // Then the hub flushes and closes its connections (1001), and the runs in flight are judged.
        await tw.close();
        // Whatever is left on the public listener (a request never finished, a connection that sent nothing) is cut.
        const publicClosed = publicApp.close();
        publicApp.server.closeAllConnections();
        await publicClosed;
      })());
    },
  };
}

/** How long an OTLP request already being read at shutdown may take to finish (at most a quarter of the shutdown bound). */
const OTLP_DRAIN_MILLIS = 1000;

/** Listen, turning the usual reasons a listener cannot start into TW_CONFIG_INVALID naming its option. */
async function listenOn(app: FastifyInstance, at: { host: string; port: number }, option: string): Promise<void> {
  try {
    await app.listen({ host: at.host, port: at.port });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why: Record<string, string> = { EADDRINUSE: 'the address is already in use', EACCES: 'permission denied', EADDRNOTAVAIL: 'the address is not on this machine', ENOTFOUND: 'the host name does not resolve' };
    if (code !== undefined && why[code] !== undefined) throw new TracewireError('TW_CONFIG_INVALID', `${option} ${at.host.includes(':') ? `[${at.host}]` : at.host}:${at.port}: cannot listen, ${why[code]} (${code})`);
    throw e;
  }
}

function hostForUrl(host: string): string {
  if (host === '0.0.0.0') return '127.0.0.1';
  return host.includes(':') ? `[${host}]` : host;
}
