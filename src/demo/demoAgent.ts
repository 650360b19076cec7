import { context as otelContext, SpanStatusCode, trace, type Context, type Span, type Tracer } from '@opentelemetry/api';
import type { EventType } from '../audit/Metrics.js';

/**
 * A demo agent instrumented only with the plain OpenTelemetry API and GenAI
 * semantic-convention attributes: no tracewire import, no emit call. A
 * supervisor thinks, searches the docs, hands off to a researcher sub-agent
 * (which thinks and fetches a page that fails), then thinks again and answers.
 */
export interface DemoRunOptions {
  readonly user: string;
  readonly conversation?: string;
  /** Parent context (defaults to the active one). */
  readonly parent?: Context;
  /** Milliseconds each step "works" (0: as fast as possible). */
  readonly stepMillis?: number;
  /** Put user.id on the agent span (default) or leave routing to baggage/ancestors. */
  readonly userOnSpan?: boolean;
  /** Called after the top-level agent span started, before any child (e.g. to assert live delivery). */
  readonly onStarted?: (span: Span) => void | Promise<void>;
}

/** The events a client of the run's user receives, in order. */
export const DEMO_EXPECTED: ReadonlyArray<{ type: EventType; agent: string; tool?: string; status?: string }> = [
  { type: 'agent_started', agent: 'supervisor' },
  { type: 'agent_thinking', agent: 'supervisor' },
  { type: 'tool_executing', agent: 'supervisor', tool: 'search_docs' },
  { type: 'tool_completed', agent: 'supervisor', tool: 'search_docs', status: 'ok' },
  { type: 'agent_started', agent: 'researcher' },
  { type: 'agent_thinking', agent: 'researcher' },
  { type: 'tool_executing', agent: 'researcher', tool: 'fetch_page' },
  { type: 'tool_completed', agent: 'researcher', tool: 'fetch_page', status: 'error' },
  { type: 'agent_completed', agent: 'researcher', status: 'ok' },
  { type: 'agent_thinking', agent: 'supervisor' },
  { type: 'agent_completed', agent: 'supervisor', status: 'ok' },
];

const sleep = (ms: number): Promise<void> => (ms > 0 ? new Promise((r) => setTimeout(r, ms)) : Promise.resolve());

async function step<T>(tracer: Tracer, parent: Context, name: string, attributes: Record<string, string>, ms: number, body: (ctx: Context, span: Span) => Promise<T>): Promise<T> {
  const span = tracer.startSpan(name, { attributes }, parent);
  const ctx = trace.setSpan(parent, span);
  try {
    const out = await body(ctx, span);
    await sleep(ms);
    return out;
  } catch (err) {
    span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
    span.setAttribute('error.type', (err as Error).name === 'Error' ? 'tool_error' : (err as Error).name);
    throw err;
  } finally {
    span.end();
  }
}

/** One run of the demo agent. Resolves when the top-level agent span has ended. */
export async function runDemoAgent(tracer: Tracer, opts: DemoRunOptions): Promise<{ traceId: string; spanId: string }> {
  const ms = opts.stepMillis ?? 0;
  const parent = opts.parent ?? otelContext.active();
  const conv = opts.conversation ?? `conv-${opts.user}`;
  const topAttrs: Record<string, string> = {
    'gen_ai.operation.name': 'invoke_agent',
    'gen_ai.agent.name': 'supervisor',
    'gen_ai.conversation.id': conv,
  };
  if (opts.userOnSpan !== false) topAttrs['user.id'] = opts.user;
  let ids = { traceId: '', spanId: '' };
  await step(tracer, parent, 'invoke_agent supervisor', topAttrs, 0, async (sup, supSpan) => {
    ids = { traceId: supSpan.spanContext().traceId, spanId: supSpan.spanContext().spanId };
    await opts.onStarted?.(supSpan);
    await step(tracer, sup, 'chat gpt-4o', { 'gen_ai.operation.name': 'chat', 'gen_ai.request.model': 'gpt-4o' }, ms, async () => undefined);
    await step(tracer, sup, 'execute_tool search_docs', { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'search_docs', 'gen_ai.tool.call.id': 'call_1' }, ms, async () => ['doc-1', 'doc-2']);
    await step(tracer, sup, 'invoke_agent researcher', { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'researcher' }, 0, async (res) => {
      await step(tracer, res, 'chat gpt-4o-mini', { 'gen_ai.operation.name': 'chat', 'gen_ai.request.model': 'gpt-4o-mini' }, ms, async () => undefined);
      try {
        await step(tracer, res, 'execute_tool fetch_page', { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'fetch_page', 'gen_ai.tool.call.id': 'call_2' }, ms, async () => {
          throw new Error('fetch_page: 503 from upstream');
        });
      } catch {
        // The researcher recovers from the failed tool and reports what it has.
      }
    });
    await step(tracer, sup, 'chat gpt-4o', { 'gen_ai.operation.name': 'chat', 'gen_ai.request.model': 'gpt-4o' }, ms, async () => undefined);
  });
  return ids;
}
