import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { runsApi } from '../audit/runsApi.js';
import { TracewireError } from '../errors/errors.js';
import { bearerOf, safeEqual } from '../util/bearer.js';
import { otlpReceiver } from '../sources/otlp/otlpReceiver.js';
import type { Tracewire } from '../Tracewire.js';
import { INSPECTOR_HTML } from './inspector/page.js';

/** Errors become `{code, message}` with their status; unknown errors are 500 TW_INTERNAL and the app keeps serving. */
export function installErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((err: unknown, _req: FastifyRequest, reply: FastifyReply) => {
    if (err instanceof TracewireError) {
      void reply.status(err.status).send(err.toJSON());
      return;
    }
    const e = err as { statusCode?: number; message?: string; code?: string };
    if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
      void reply.status(e.statusCode).send({ code: 'TW_BAD_QUERY', message: e.message ?? 'bad request' });
      return;
    }
    app.log.error(err);
    void reply.status(500).send(new TracewireError('TW_INTERNAL', e.message ?? String(err)).toJSON());
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.status(404).send(new TracewireError('TW_NOT_FOUND', `${req.method} ${req.url.split('?')[0]}`).toJSON());
  });
}

/**
 * The public app: WebSocket endpoint `/v1/events`, `/metrics`, `/healthz`,
 * the runs API and the inspector page.
 */
export async function buildPublicApp(tw: Tracewire): Promise<FastifyInstance> {
  const app = Fastify({ logger: false });
  installErrorHandling(app);
  await app.register(tw.fastifyPlugin);

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
    await runsApi(scope, { ledger: tw.ledger, traceUrlTemplate: tw.config.traceUrlTemplate || undefined });
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
  const app = Fastify({ logger: false, bodyLimit: tw.config.otlpMaxBodyBytes, requestTimeout: 30_000, connectionTimeout: 60_000 });
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
  await publicApp.listen({ host: listen.host, port: listen.port });
  const addr = publicApp.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : listen.port;
  let otlpApp: FastifyInstance | undefined;
  let otlpUrl: string | undefined;
  if (otlpListen !== undefined) {
    otlpApp = await buildOtlpApp(tw);
    await otlpApp.listen({ host: otlpListen.host, port: otlpListen.port });
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
        // Stop taking spans first, then let the hub flush and close connections.
        await otlpApp?.close();
        await tw.close();
        await publicApp.close();
      })());
    },
  };
}

function hostForUrl(host: string): string {
  if (host === '0.0.0.0') return '127.0.0.1';
  return host.includes(':') ? `[${host}]` : host;
}
