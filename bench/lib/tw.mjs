// The tracewire build under test: dist/ by default, or another build (a
// prototype of a src/ change compiled elsewhere) via TRACEWIRE_DIST=/path/to/dist.
// BENCH_EXPERIMENT=name[,name] applies runtime experiments (bench/lib/experiments.mjs)
// to every Tracewire instance the benchmarks create.
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { applyExperiments } from './experiments.mjs';

const root = process.env.TRACEWIRE_DIST ? path.resolve(process.env.TRACEWIRE_DIST) : fileURLToPath(new URL('../../dist', import.meta.url));
export const distUrl = (p) => pathToFileURL(path.join(root, p)).href;
const TW = await import(distUrl('index.js'));
export const { startSidecar, RunRecord, OutboundEvent } = TW;

/** `new Tracewire(opts)` with the selected experiments applied. */
export function makeTracewire(opts) {
  return applyExperiments(new TW.Tracewire(opts));
}
