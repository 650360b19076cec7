/** tracewire public API. */
export { Tracewire, VERSION, type TracewireOptions } from './Tracewire.js';
export { TracewireSpanProcessor, type TracewireSpanProcessorOptions } from './sources/TracewireSpanProcessor.js';
export { EventHub, type EventHubOptions } from './hub/EventHub.js';
export { JwtVerifier, PROTOCOL } from './hub/auth.js';
export { BridgeRegistry, type BridgeOptions } from './bridge/BridgeRegistry.js';
export { OutboundEvent } from './bridge/EventSink.js';
export type { EventSink } from './bridge/EventSink.js';
export { classify, type Classified } from './conventions/classify.js';
export type { SpanInput, SpanEventInput } from './conventions/SpanInput.js';
export { Metrics, EVENT_TYPES, VERDICTS, DROP_REASONS, type EventType, type Verdict, type DropReason } from './audit/Metrics.js';
export { RunLedger, type RunQuery } from './audit/RunLedger.js';
export { RunRecord, type Judgement } from './audit/RunRecord.js';
export { resolveConfig, describeConfig, OPTIONS, type TracewireConfig } from './config/Config.js';
export { ERRORS, TracewireError, type ErrorCode } from './errors/errors.js';
export { buildPublicApp, buildOtlpApp, startSidecar, type Sidecar } from './surfaces/server.js';
export { probe, type ProbeOptions, type ProbeResult } from './surfaces/probe.js';
export { runDemoAgent, DEMO_EXPECTED } from './demo/demoAgent.js';
export { LiveSpanExporter, type LiveSpanExporterOptions } from './sources/LiveSpanExporter.js';
