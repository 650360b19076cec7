import { randomBytes } from 'node:crypto';
import WebSocket from 'ws';
import { JwtVerifier } from '../hub/auth.js';

export interface ProbeOptions {
  /** Public base URL of the deployment (`http://host:8080`). */
  readonly url: string;
  /** OTLP/HTTP base URL (`http://host:4318`). */
  readonly otlpUrl: string;
  readonly jwtSecret: string;
  readonly otlpToken?: string;
  readonly timeoutMillis?: number;
}

export interface ProbeResult {
  readonly ok: boolean;
  readonly runId: string;
  readonly received: Array<{ type: string; seq: number }>;
  readonly problem?: string;
  readonly millis: number;
}

export const PROBE_EXPECTED = ['agent_started', 'agent_thinking', 'tool_executing', 'tool_completed', 'agent_completed'] as const;

const hex = (n: number): string => randomBytes(n).toString('hex');

/** An OTLP/JSON request holding one finished probe run for `user` (agent → thinking, tool). */
export function probeRunRequest(user: string, traceId: string, agentId: string): Record<string, unknown> {
  const t0 = BigInt(Date.now()) * 1_000_000n;
  const ns = (ms: number): string => String(t0 + BigInt(ms) * 1_000_000n);
  const attr = (key: string, value: string) => ({ key, value: { stringValue: value } });
  const thinkId = hex(8);
  const toolId = hex(8);
  return {
    resourceSpans: [{
      resource: { attributes: [attr('service.name', 'tracewire-probe')] },
      scopeSpans: [{
        scope: { name: 'tracewire-probe' },
        spans: [
          { traceId, spanId: thinkId, parentSpanId: agentId, name: 'chat probe-model', kind: 3, startTimeUnixNano: ns(1), endTimeUnixNano: ns(2), attributes: [attr('gen_ai.operation.name', 'chat'), attr('gen_ai.request.model', 'probe-model')], status: {} },
          { traceId, spanId: toolId, parentSpanId: agentId, name: 'execute_tool probe_tool', kind: 1, startTimeUnixNano: ns(3), endTimeUnixNano: ns(4), attributes: [attr('gen_ai.operation.name', 'execute_tool'), attr('gen_ai.tool.name', 'probe_tool'), attr('gen_ai.tool.call.id', 'probe_call')], status: {} },
          { traceId, spanId: agentId, name: 'invoke_agent tracewire-probe', kind: 1, startTimeUnixNano: ns(0), endTimeUnixNano: ns(5), attributes: [attr('gen_ai.operation.name', 'invoke_agent'), attr('gen_ai.agent.name', 'tracewire-probe'), attr('user.id', user)], status: {} },
        ],
      }],
    }],
  };
}

/**
 * Checks a live deployment end to end: connects as a fresh probe user, sends
 * one finished agent run to the OTLP receiver, and expects the five event
 * types in order with seq 1..5 on the WebSocket.
 */
export async function probe(opts: ProbeOptions): Promise<ProbeResult> {
  const started = Date.now();
  const timeout = opts.timeoutMillis ?? 10_000;
  const user = `probe-${hex(6)}`;
  const traceId = hex(16);
  const agentId = hex(8);
  const runId = `${traceId}-${agentId}`;
  const token = await new JwtVerifier(opts.jwtSecret).sign(user, 300);
  const wsUrl = `${opts.url.replace(/^http/, 'ws').replace(/\/$/, '')}/v1/events`;
  const received: Array<{ type: string; seq: number }> = [];
  const done = (ok: boolean, problem?: string): ProbeResult => ({ ok, runId, received, problem, millis: Date.now() - started });

  const ws = new WebSocket(wsUrl, { headers: { authorization: `Bearer ${token}` } });
  ws.on('error', () => undefined);
  // The OTLP request is aborted when the probe ends: a receiver that never answers must not keep the process alive.
  const otlp = new AbortController();
  let otlpPending = false;
  try {
    return await new Promise<ProbeResult>((resolve) => {
      const timer = setTimeout(() => {
        const why = otlpPending ? `; the OTLP request to ${opts.otlpUrl} got no answer` : '';
        resolve(done(false, `timed out after ${timeout} ms with ${received.length} of 5 events${why}`));
      }, timeout);
      const finish = (r: ProbeResult): void => {
        clearTimeout(timer);
        resolve(r);
      };
      ws.on('close', (code, reason) => finish(done(false, `connection closed: ${code} ${reason.toString()}`)));
      ws.on('error', (err) => finish(done(false, `cannot connect to ${wsUrl}: ${err.message}`)));
      ws.on('message', (data) => {
        let f: { type?: string; seq?: number; run_id?: string; code?: string; message?: string };
        try {
          f = JSON.parse(data.toString());
        } catch {
          return finish(done(false, 'server sent a frame that is not JSON'));
        }
        if (f.type === 'error') return finish(done(false, `server error ${f.code}: ${f.message}`));
        if (f.type === 'ack') {
          const headers: Record<string, string> = { 'content-type': 'application/json' };
          if (opts.otlpToken) headers.authorization = `Bearer ${opts.otlpToken}`;
          otlpPending = true;
          fetch(`${opts.otlpUrl.replace(/\/$/, '')}/v1/traces`, { method: 'POST', headers, body: JSON.stringify(probeRunRequest(user, traceId, agentId)), signal: otlp.signal }).then(
            async (res) => {
              otlpPending = false;
              if (res.status !== 200) finish(done(false, `OTLP receiver answered ${res.status}: ${await res.text()}`));
            },
            (err: Error) => {
              otlpPending = false;
              if (!otlp.signal.aborted) finish(done(false, `cannot reach the OTLP receiver: ${err.message}`));
            },
          );
          return;
        }
        if (f.run_id !== runId || typeof f.type !== 'string' || typeof f.seq !== 'number') return;
        received.push({ type: f.type, seq: f.seq });
        const i = received.length - 1;
        if (f.type !== PROBE_EXPECTED[i] || f.seq !== i + 1) {
          return finish(done(false, `event ${i + 1} was ${f.type} seq ${f.seq}; expected ${PROBE_EXPECTED[i]} seq ${i + 1}`));
        }
        if (received.length === PROBE_EXPECTED.length) finish(done(true));
      });
    });
  } finally {
    otlp.abort();
    ws.terminate();
  }
}
