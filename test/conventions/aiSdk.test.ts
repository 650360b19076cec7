import { context } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { generateText, jsonSchema, stepCountIs, streamText, tool } from 'ai';
import { convertArrayToReadableStream, MockLanguageModelV3 } from 'ai/test';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { RunRecord } from '../../src/audit/RunRecord.js';
import type { Sidecar } from '../../src/surfaces/server.js';
import { connectAcked, startTestSidecar, until, type Frame } from '../helpers.js';

// The AI SDK nests its spans with startActiveSpan: the active context must propagate across awaits.
const contextManager = new AsyncLocalStorageContextManager();
beforeAll(() => {
  context.setGlobalContextManager(contextManager.enable());
});
afterAll(() => {
  context.disable();
});

let sc: Sidecar | undefined;
afterEach(async () => {
  await sc?.close();
  sc = undefined;
});

type GenerateResult = Awaited<ReturnType<MockLanguageModelV3['doGenerate']>>;
type StreamPart = Awaited<ReturnType<MockLanguageModelV3['doStream']>>['stream'] extends ReadableStream<infer P> ? P : never;
const usage = {
  inputTokens: { total: 10, noCache: 10, cacheRead: undefined, cacheWrite: undefined },
  outputTokens: { total: 5, text: 5, reasoning: undefined },
};

/** A model that first calls getWeather, then answers with text. */
function weatherModel(): MockLanguageModelV3 {
  const results: GenerateResult[] = [
    {
      content: [{ type: 'tool-call', toolCallId: 'call-weather-1', toolName: 'getWeather', input: JSON.stringify({ city: 'Paris' }) }],
      finishReason: { unified: 'tool-calls', raw: 'tool_calls' },
      usage,
      warnings: [],
    },
    {
      content: [{ type: 'text', text: 'It is 18°C and sunny in Paris.' }],
      finishReason: { unified: 'stop', raw: 'stop' },
      usage,
      warnings: [],
    },
  ];
  return new MockLanguageModelV3({ modelId: 'mock-weather-model', doGenerate: results });
}

const getWeather = tool({
  description: 'Current weather in a city',
  inputSchema: jsonSchema<{ city: string }>({ type: 'object', properties: { city: { type: 'string' } }, required: ['city'], additionalProperties: false }),
  execute: async ({ city }) => {
    await new Promise((r) => setTimeout(r, 5));
    return { city, celsius: 18, sky: 'sunny' };
  },
});

function providerFor(s: Sidecar): { provider: BasicTracerProvider; exporter: InMemorySpanExporter } {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [s.tw.spanProcessor(), new SimpleSpanProcessor(exporter)] });
  return { provider, exporter };
}

function expectWeatherRun(evs: Frame[], topAgent: string): void {
  expect(evs.map((e) => [e.seq, e.type])).toEqual([
    [1, 'agent_started'],
    [2, 'agent_thinking'],
    [3, 'tool_executing'],
    [4, 'tool_completed'],
    [5, 'agent_thinking'],
    [6, 'agent_completed'],
  ]);
  expect(new Set(evs.map((e) => e.run_id)).size).toBe(1);
  expect(evs.every((e) => e.agent === topAgent)).toBe(true);
  expect(evs[0]!.data).toEqual({ agent: topAgent });
  expect(evs[1]!.data).toEqual({ model: 'mock-weather-model' });
  expect(evs[2]!.data).toEqual({ tool: 'getWeather', call_id: 'call-weather-1' });
  expect(evs[3]!.data).toMatchObject({ tool: 'getWeather', call_id: 'call-weather-1', status: 'ok', duration_ms: expect.any(Number) });
  expect(evs[4]!.data).toEqual({ model: 'mock-weather-model' });
  expect(evs[5]!.data).toMatchObject({ agent: topAgent, status: 'ok' });
}

describe('Vercel AI SDK telemetry (ai 6.x, real generateText/streamText with a mock model)', () => {
  it('generateText with one tool call: carol receives agent_started, 2× agent_thinking, tool_executing/completed, agent_completed', async () => {
    const verdicts: RunRecord[] = [];
    sc = await startTestSidecar({ onVerdict: (r) => verdicts.push(r) });
    const { provider, exporter } = providerFor(sc);
    const carol = await connectAcked(sc, 'carol');
    const other = await connectAcked(sc, 'dave');

    const result = await generateText({
      model: weatherModel(),
      prompt: 'What is the weather in Paris?',
      tools: { getWeather },
      stopWhen: stepCountIs(2),
      experimental_telemetry: { isEnabled: true, functionId: 'weather-agent', metadata: { userId: 'carol' }, tracer: provider.getTracer('ai') },
    });
    expect(result.text).toBe('It is 18°C and sunny in Paris.');
    expect(result.steps).toHaveLength(2);

    // The spans the AI SDK really produced (what classify() has to recognise).
    const spans = exporter.getFinishedSpans();
    expect(spans.map((s) => s.name).sort()).toEqual(['ai.generateText', 'ai.generateText.doGenerate', 'ai.generateText.doGenerate', 'ai.toolCall'].sort());
    const top = spans.find((s) => s.name === 'ai.generateText')!;
    expect(top.attributes).toMatchObject({ 'ai.operationId': 'ai.generateText', 'ai.telemetry.functionId': 'weather-agent', 'ai.telemetry.metadata.userId': 'carol' });
    const call = spans.find((s) => s.name === 'ai.toolCall')!;
    expect(call.attributes).toMatchObject({ 'ai.toolCall.name': 'getWeather', 'ai.toolCall.id': 'call-weather-1' });
    expect(spans.filter((s) => s !== top).every((s) => s.spanContext().traceId === top.spanContext().traceId)).toBe(true);

    await carol.until((c) => c.events.length >= 6, 5000, 'six events');
    await until(() => verdicts.length === 1, 5000, 'verdict');
    const evs = carol.events;
    expectWeatherRun(evs, 'weather-agent');
    expect(evs[0]!.run_id).toBe(`${top.spanContext().traceId}-${top.spanContext().spanId}`);
    expect(evs[0]!.span_id).toBe(top.spanContext().spanId);
    expect(evs[2]!.span_id).toBe(call.spanContext().spanId);
    expect(other.events).toEqual([]);
    expect(verdicts[0]).toMatchObject({ user: 'carol', agent: 'weather-agent' });
    expect(verdicts[0]!.judgement).toMatchObject({ verdict: 'complete', expected: 6, delivered: 6 });
  });

  it('streamText with one tool call (doStream spans) produces the same events', async () => {
    sc = await startTestSidecar();
    const { provider, exporter } = providerFor(sc);
    const carol = await connectAcked(sc, 'carol');
    let call = 0;
    const model = new MockLanguageModelV3({
      modelId: 'mock-weather-model',
      doStream: async () => {
        call++;
        const chunks: StreamPart[] =
          call === 1
            ? [
                { type: 'stream-start', warnings: [] },
                { type: 'tool-call', toolCallId: 'call-weather-1', toolName: 'getWeather', input: JSON.stringify({ city: 'Paris' }) },
                { type: 'finish', finishReason: { unified: 'tool-calls', raw: 'tool_calls' }, usage },
              ]
            : [
                { type: 'stream-start', warnings: [] },
                { type: 'text-start', id: 't1' },
                { type: 'text-delta', id: 't1', delta: 'Sunny, 18°C.' },
                { type: 'text-end', id: 't1' },
                { type: 'finish', finishReason: { unified: 'stop', raw: 'stop' }, usage },
              ];
        return { stream: convertArrayToReadableStream(chunks) };
      },
    });
    const result = streamText({
      model,
      prompt: 'Weather in Paris?',
      tools: { getWeather },
      stopWhen: stepCountIs(2),
      experimental_telemetry: { isEnabled: true, functionId: 'weather-streamer', metadata: { userId: 'carol' }, tracer: provider.getTracer('ai') },
    });
    expect(await result.text).toBe('Sunny, 18°C.');
    await carol.until((c) => c.events.length >= 6, 5000, 'six events');
    expect(exporter.getFinishedSpans().map((x) => x.name).sort()).toEqual(['ai.streamText', 'ai.streamText.doStream', 'ai.streamText.doStream', 'ai.toolCall'].sort());
    expectWeatherRun(carol.events, 'weather-streamer');
  });
});
