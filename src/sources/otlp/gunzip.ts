import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { TracewireError } from '../../errors/errors.js';

/** The decompressed body stream handed to fastify's body reader (it reads `receivedEncodedLength`). */
export interface LimitedStream extends Transform {
  /** Compressed bytes read from the request so far (fastify compares it with Content-Length). */
  receivedEncodedLength: number;
}

/**
 * Gunzip `src` with a streaming limit: compressed and decompressed bytes are
 * both capped at `limit`. Past it the stream fails with TW_OTLP_TOO_LARGE and
 * decompression stops at once (a gzip bomb costs at most `limit` bytes of
 * output and one zlib chunk of work past it). Corrupt gzip data fails with
 * TW_OTLP_BAD_BODY. The request stream itself is never destroyed, so the error
 * response can still be written.
 */
export function gunzipLimited(src: Readable, limit: number): LimitedStream {
  let inflated = 0;
  let failed = false;
  const gunzip = createGunzip();
  const out = new Transform({
    transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
      if (failed) return cb();
      inflated += chunk.length;
      if (inflated > limit) {
        fail(new TracewireError('TW_OTLP_TOO_LARGE', limit));
        return cb();
      }
      cb(null, chunk);
    },
  }) as LimitedStream;
  out.receivedEncodedLength = 0;

  const onData = (chunk: Buffer): void => {
    out.receivedEncodedLength += chunk.length;
    if (out.receivedEncodedLength > limit) fail(new TracewireError('TW_OTLP_TOO_LARGE', limit));
  };
  const onSrcError = (err: Error): void => fail(err);
  function fail(err: Error): void {
    if (failed) return;
    failed = true;
    src.removeListener('data', onData);
    src.removeListener('error', onSrcError);
    src.unpipe(gunzip);
    gunzip.destroy();
    out.destroy(err);
  }

  src.on('data', onData);
  src.on('error', onSrcError);
  gunzip.on('error', (err) => fail(new TracewireError('TW_OTLP_BAD_BODY', `gzip: ${err.message}`)));
  src.pipe(gunzip).pipe(out);
  return out;
}
