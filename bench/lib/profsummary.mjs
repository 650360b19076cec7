// Summarises a V8 .cpuprofile (from `node --cpu-prof`): self time and
// inclusive time per function, top N. Usage:
//   node bench/lib/profsummary.mjs FILE.cpuprofile [N] [filter]
import { readFileSync } from 'node:fs';

export function summarise(profile, n = 30, filter = '') {
  const nodes = new Map(profile.nodes.map((x) => [x.id, x]));
  const parent = new Map();
  for (const x of profile.nodes) for (const c of x.children ?? []) parent.set(c, x.id);
  const selfTicks = new Map();
  for (const s of profile.samples) selfTicks.set(s, (selfTicks.get(s) ?? 0) + 1);
  const total = profile.samples.length;
  const key = (x) => {
    const f = x.callFrame;
    const file = f.url ? f.url.replace(/^.*\/(node_modules\/|dist\/|bench\/)/, '$1') : '';
    return `${f.functionName || '(anonymous)'} ${file}:${f.lineNumber + 1}`;
  };
  const self = new Map();
  const incl = new Map();
  for (const [id, ticks] of selfTicks) {
    const x = nodes.get(id);
    const k = key(x);
    self.set(k, (self.get(k) ?? 0) + ticks);
    // inclusive: every distinct function on the stack
    const seen = new Set();
    for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
      const kk = key(nodes.get(cur));
      if (seen.has(kk)) continue;
      seen.add(kk);
      incl.set(kk, (incl.get(kk) ?? 0) + ticks);
    }
  }
  const top = (m) =>
    [...m.entries()]
      .filter(([k]) => k.includes(filter))
      .sort((a, b) => b[1] - a[1])
      .slice(0, n)
      .map(([k, t]) => `${((100 * t) / total).toFixed(1).padStart(5)}%  ${k}`);
  return { total, self: top(self), inclusive: top(incl) };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const p = JSON.parse(readFileSync(process.argv[2], 'utf8'));
  const s = summarise(p, Number(process.argv[3] ?? 30), process.argv[4] ?? '');
  console.log(`samples: ${s.total}\n-- self --\n${s.self.join('\n')}\n-- inclusive --\n${s.inclusive.join('\n')}`);
}
