import { buildBody } from './bench/lib/otlpBodies.mjs';
import { decodeProtobuf, decodeJson } from './dist/sources/otlp/decode.js';
import { Tracewire } from './dist/index.js';
const enc = process.argv[2] ?? 'protobuf';
const b = buildBody(enc, 512);
const dec = enc === 'protobuf' ? decodeProtobuf : decodeJson;
let t = process.hrtime.bigint();
for (let i = 0; i < 200; i++) dec(b.body, { maxSpans: 100000 });
console.log(enc, 'decode only ns/span', Number(process.hrtime.bigint() - t) / 200 / 512);
const tw = new Tracewire({ jwtSecret: 'x'.repeat(20), replayRetentionMillis: 0, graceMillis: 10, logLevel: 'silent' });
const reg = tw.otlpBridges;
const d = dec(b.body, { maxSpans: 100000 });
// fresh trace ids per iteration
t = process.hrtime.bigint();
for (let i = 0; i < 200; i++) {
  const r = dec(b.body, { maxSpans: 100000 });
  for (const s of r.spans) { const x = { ...s, traceId: i.toString(16).padStart(8, '0') + s.traceId.slice(8) }; if (x.endMs === undefined) reg.startSpan(x); else reg.endSpan(x); }
}
console.log(enc, 'decode+bridge ns/span', Number(process.hrtime.bigint() - t) / 200 / 512);
process.exit(0);
