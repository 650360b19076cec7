import { buildBody } from './bench/lib/otlpBodies.mjs';
import { otlpTypes } from './dist/sources/otlp/schema.js';
const b = buildBody('protobuf', 512);
const T = otlpTypes();
let t = process.hrtime.bigint();
for (let i = 0; i < 200; i++) T.request.decode(b.body);
console.log('protobufjs decode ns/span', Number(process.hrtime.bigint() - t) / 200 / 512);
