/**
 * The one shape both span sources hand to the bridge: the in-process
 * SpanProcessor builds it from a ReadableSpan, the OTLP receiver from a
 * decoded request. Times are epoch milliseconds (fractional).
 */
export type AttributeValue = string | number | boolean | bigint | ReadonlyArray<string | number | boolean | null> | null | undefined;
export type Attributes = Readonly<Record<string, AttributeValue | unknown>>;

export interface SpanEventInput {
  readonly name: string;
  readonly timeMs: number;
  readonly attributes: Attributes;
}

export const STATUS_UNSET = 0;
export const STATUS_OK = 1;
export const STATUS_ERROR = 2;

export interface SpanInput {
  readonly traceId: string;
  readonly spanId: string;
  /** Empty or undefined for a root span. */
  readonly parentSpanId?: string;
  /** The parent lives in another process (W3C context propagated in). */
  readonly parentIsRemote?: boolean;
  readonly name: string;
  readonly startMs: number;
  /** Undefined while the span has not ended (a start, or a live/partial export). */
  readonly endMs?: number;
  readonly attributes: Attributes;
  readonly statusCode: number;
  readonly statusMessage?: string;
  readonly events?: readonly SpanEventInput[];
  /** In-process only: user and conversation from W3C baggage of the parent context. */
  readonly baggageUser?: string;
  readonly baggageConversation?: string;
  /** In-process only: user/conversation read from a parent span the bridge never saw. */
  readonly parentUser?: string;
  readonly parentConversation?: string;
  /** High-resolution time (performance.now()) the hook ran, for the delivery histogram. */
  readonly hookAt?: number;
}
