import { isAscii } from 'node:buffer';
import { decodeJsonRequest } from './jsonSpans.js';
import { decodeProtobufRequest } from './protobufSpans.js';
import { badBody, type DecodeOptions, type DecodedRequest } from './decodeShared.js';
import { WireError } from './wire.js';

/**
 * OTLP trace request bodies (protobuf or OTLP/JSON) to `SpanInput`s, in the
 * order the spans appear in the request. The envelope (resource spans, scope
 * spans, span lists) must be well formed or the whole body is refused
 * (TW_OTLP_BAD_BODY, 400); a span whose own fields are wrong is rejected
 * alone and counted, by reason, for the partial-success response.
 *
 * Protobuf bodies are read straight from the wire bytes (protobufSpans.ts over
 * wire.ts); OTLP/JSON bodies are parsed with JSON.parse and walked directly
 * (jsonSpans.ts). Both give the same SpanInputs for the same spans.
 */

export { TooManySpansError, type DecodeOptions, type DecodedRequest } from './decodeShared.js';

/** Decode a binary protobuf ExportTraceServiceRequest. */
export function decodeProtobuf(body: Uint8Array, opts: DecodeOptions): DecodedRequest {
  try {
    return decodeProtobufRequest(body, opts);
  } catch (err) {
    if (err instanceof WireError) throw badBody(`protobuf: ${err.message}`);
    throw err;
  }
}

/** Decode an OTLP/JSON ExportTraceServiceRequest (UTF-8 text). */
export function decodeJson(body: Uint8Array, opts: DecodeOptions): DecodedRequest {
  const buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  let parsed: unknown;
  try {
    // ASCII text is the same string either way, and V8's JSON.parse is markedly
    // faster on the latin1-built one; anything else goes through UTF-8 decoding.
    parsed = JSON.parse(isAscii(buf) ? buf.toString('latin1') : buf.toString('utf8'));
  } catch (err) {
    throw badBody(`JSON: ${(err as Error).message}`);
  }
  return decodeJsonRequest(parsed, opts);
}
