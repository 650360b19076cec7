import { TracewireError } from '../../errors/errors.js';
import type { SpanInput } from '../../conventions/SpanInput.js';

/**
 * What the protobuf and OTLP/JSON decoders share: the result type, the
 * rejection bookkeeping, and the value conversions whose output must be the
 * same for both encodings.
 */

/** Why a span of an accepted request was rejected (bounded label set). */
export const REJECT_REASONS = ['bad_trace_id', 'bad_span_id', 'bad_parent_span_id', 'bad_time', 'bad_field'] as const;
export type RejectReason = (typeof REJECT_REASONS)[number];

export interface DecodedRequest {
  /** Valid spans in request order; `endMs` undefined means "started, not ended". */
  readonly spans: SpanInput[];
  readonly rejected: number;
  readonly reasons: Map<RejectReason, number>;
  /** Human-readable description of the first rejected span. */
  readonly firstRejection: string | undefined;
}

export interface DecodeOptions {
  readonly maxSpans: number;
  /** performance.now() of the request, for the delivery latency histogram. */
  readonly hookAt?: number;
}

export const SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK = 0x100;
export const SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK = 0x200;
/** kvlist attribute values are flattened to dotted keys, this deep at most. */
export const MAX_VALUE_DEPTH = 8;
export const TWO_32 = 4294967296;

/** A span whose own fields are wrong: it is dropped and counted, the request goes on. */
export class SpanReject extends Error {
  constructor(
    readonly reason: RejectReason,
    message: string,
  ) {
    super(message);
  }
}

/** More spans in one request than `otlpMaxSpansPerRequest` (the whole request is refused). */
export class TooManySpansError extends TracewireError {
  constructor(
    readonly spanCount: number,
    max: number,
  ) {
    super('TW_OTLP_TOO_MANY_SPANS', spanCount, max);
  }
}

export function badBody(msg: string): TracewireError {
  return new TracewireError('TW_OTLP_BAD_BODY', msg);
}

/** Accepted spans and rejection counts of one request, in request order. */
export class RequestResult {
  readonly spans: SpanInput[] = [];
  readonly reasons = new Map<RejectReason, number>();
  rejected = 0;
  firstRejection: string | undefined;

  reject(err: SpanReject, index: number): void {
    this.rejected++;
    this.reasons.set(err.reason, (this.reasons.get(err.reason) ?? 0) + 1);
    this.firstRejection ??= `span ${index}: ${err.message}`;
  }

  finish(): DecodedRequest {
    return { spans: this.spans, rejected: this.rejected, reasons: this.reasons, firstRejection: this.firstRejection };
  }
}

/** A signed or unsigned 64-bit integer from its halves: a number when exact, else a bigint. */
export function intFromParts(high: number, low: number, unsigned: boolean): number | bigint {
  const hi = unsigned ? high >>> 0 : high | 0;
  const n = hi * TWO_32 + (low >>> 0);
  if (Number.isSafeInteger(n)) return n;
  return (BigInt(hi) << 32n) + BigInt(low >>> 0);
}

/** A converted array element: arrays hold scalars only (nested values become JSON text). */
export function scalarOf(v: unknown): string | number | boolean | null {
  if (v === null || typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') return v;
  if (typeof v === 'bigint') return v.toString();
  try {
    return JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x)) ?? null;
  } catch {
    return null;
  }
}

/** Whether a hex id is all zeros (an invalid trace or span id). */
export function isZeroHex(hex: string): boolean {
  for (let i = 0; i < hex.length; i++) if (hex.charCodeAt(i) !== 48) return false;
  return true;
}

/** The SpanInput of valid fields; one object shape for every span, whatever the encoding. */
export function spanInput(
  traceId: string,
  spanId: string,
  parentSpanId: string | undefined,
  flags: number,
  name: string,
  startMs: number,
  endMs: number | undefined,
  attributes: Record<string, unknown>,
  statusCode: number,
  /** '' (proto3's unset) becomes undefined. */
  statusMessage: string,
  events: SpanInput['events'],
  hookAt: number | undefined,
): SpanInput {
  return {
    traceId,
    spanId,
    parentSpanId,
    parentIsRemote: (flags & SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK) !== 0 && (flags & SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK) !== 0,
    name,
    startMs,
    endMs,
    attributes,
    statusCode,
    statusMessage: statusMessage === '' ? undefined : statusMessage,
    events,
    hookAt,
  };
}
