// OTLP/HTTP trace request bodies, built once with the OpenTelemetry JS
// serializers the real exporters use (@opentelemetry/otlp-transformer), from
// spans recorded by a real SDK: run-shaped traces of 4 spans each (agent, LLM,
// tool, and an HTTP client span under the tool), all ended, in the order a
// BatchSpanProcessor exports them (children first). 8 spans = 2 runs,
// 512 spans = 128 runs. Each body knows where its trace ids are, so a sender can
// make every request's traces new (`stamp(body, n)`) without re-serialising.
import { ROOT_CONTEXT, trace } from '@opentelemetry/api';
import { JsonTraceSerializer, ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';

export const SPANS_PER_TRACE = 4;

export function recordSpans(spanCount, userCount = 100) {
  const exporter = new InMemorySpanExporter();
  const tracer = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }).getTracer('bench-otlp');
  for (let r = 0; r < spanCount / SPANS_PER_TRACE; r++) {
    const user = `otlp-user-${r % userCount}`;
    const agent = tracer.startSpan('invoke_agent supervisor', {
      attributes: { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': 'supervisor', 'gen_ai.conversation.id': `c-${user}`, 'user.id': user },
    }, ROOT_CONTEXT);
    const ctx = trace.setSpan(ROOT_CONTEXT, agent);
    const llm = tracer.startSpan('chat gpt-4o', { attributes: { 'gen_ai.operation.name': 'chat', 'gen_ai.request.model': 'gpt-4o', 'gen_ai.usage.input_tokens': 812, 'gen_ai.usage.output_tokens': 64 } }, ctx);
    llm.end();
    const tool = tracer.startSpan('execute_tool search_docs', { attributes: { 'gen_ai.operation.name': 'execute_tool', 'gen_ai.tool.name': 'search_docs', 'gen_ai.tool.call.id': `call_${r}` } }, ctx);
    const http = tracer.startSpan('GET', { attributes: { 'http.request.method': 'GET', 'url.full': 'https://docs.example.com/search?q=otlp', 'http.response.status_code': 200 } }, trace.setSpan(ctx, tool));
    http.end();
    tool.end();
    agent.end();
  }
  return exporter.getFinishedSpans();
}

/** Offsets of every occurrence of `needle` in `hay`. */
function occurrences(hay, needle) {
  const out = [];
  let i = hay.indexOf(needle);
  while (i >= 0) {
    out.push(i);
    i = hay.indexOf(needle, i + 1);
  }
  return out;
}

/**
 * @returns {{ encoding: 'protobuf'|'json', spans: number, body: Buffer, contentType: string, offsets: number[] }}
 * `offsets`: where each trace id starts (raw 16 bytes in protobuf, 32 hex chars in JSON).
 */
export function buildBody(encoding, spanCount) {
  const spans = recordSpans(spanCount);
  const traceIds = [...new Set(spans.map((s) => s.spanContext().traceId))];
  const nanos = new Set();
  for (const s of spans) for (const t of [s.startTime, s.endTime]) nanos.add(BigInt(t[0]) * 1_000_000_000n + BigInt(t[1]));
  let body;
  const offsets = [];
  const times = []; // [offset, original ns]
  if (encoding === 'protobuf') {
    body = Buffer.from(ProtobufTraceSerializer.serializeRequest(spans));
    for (const t of traceIds) offsets.push(...occurrences(body, Buffer.from(t, 'hex')));
    for (const ns of nanos) {
      const le = Buffer.alloc(8);
      le.writeBigUInt64LE(ns);
      for (const o of occurrences(body, le)) times.push([o, ns]);
    }
  } else {
    body = Buffer.from(JsonTraceSerializer.serializeRequest(spans));
    for (const t of traceIds) offsets.push(...occurrences(body, Buffer.from(t)));
    for (const ns of nanos) for (const o of occurrences(body, Buffer.from(`"${ns}"`))) times.push([o + 1, ns]);
  }
  if (offsets.length !== spans.length) throw new Error(`trace id offsets: found ${offsets.length}, expected ${spans.length}`);
  if (times.length !== spans.length * 2) throw new Error(`time offsets: found ${times.length}, expected ${spans.length * 2}`);
  const builtAtNs = BigInt(Date.now()) * 1_000_000n;
  return { encoding, spans: spans.length, body, contentType: encoding === 'protobuf' ? 'application/x-protobuf' : 'application/json', offsets, times, builtAtNs };
}

/**
 * Make the body's traces new and current: the first 4 bytes of every trace id
 * become `n`, and every start/end time moves by the time since the body was
 * built (spans look like they just happened, in order, as an exporter sends them).
 */
export function stamp(b, n) {
  const shift = BigInt(Date.now()) * 1_000_000n - b.builtAtNs;
  if (b.encoding === 'protobuf') {
    for (const o of b.offsets) b.body.writeUInt32BE(n >>> 0, o);
    for (const [o, ns] of b.times) b.body.writeBigUInt64LE(ns + shift, o);
  } else {
    const h = (n >>> 0).toString(16).padStart(8, '0');
    for (const o of b.offsets) b.body.write(h, o, 'latin1');
    for (const [o, ns] of b.times) b.body.write(String(ns + shift), o, 'latin1');
  }
}
