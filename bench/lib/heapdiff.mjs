// Heap snapshot aggregation for the memory figure's analysis: total self size
// and count per (node type, constructor/name), and the difference of two
// snapshots. Usage: node bench/lib/heapdiff.mjs BEFORE.heapsnapshot AFTER.heapsnapshot [N] [perDivisor]
import { readFileSync } from 'node:fs';

export function aggregate(file) {
  const snap = JSON.parse(readFileSync(file, 'utf8'));
  const f = snap.snapshot.meta.node_fields;
  const types = snap.snapshot.meta.node_types[0];
  const stride = f.length;
  const iType = f.indexOf('type');
  const iName = f.indexOf('name');
  const iSize = f.indexOf('self_size');
  const nodes = snap.nodes;
  const strings = snap.strings;
  const agg = new Map();
  for (let i = 0; i < nodes.length; i += stride) {
    const type = types[nodes[i + iType]];
    let name = type === 'string' || type === 'concatenated string' || type === 'sliced string' ? '(string)' : strings[nodes[i + iName]];
    if (type === 'number') name = '(heap number)';
    if (type === 'array' || type === 'hidden' || type === 'code') name = `${name}`.slice(0, 60);
    const key = `${type}:${name}`;
    const a = agg.get(key) ?? { count: 0, size: 0 };
    a.count++;
    a.size += nodes[i + iSize];
    agg.set(key, a);
  }
  return agg;
}

export function diff(before, after) {
  const out = [];
  for (const [k, a] of after) {
    const b = before.get(k) ?? { count: 0, size: 0 };
    out.push({ key: k, count: a.count - b.count, size: a.size - b.size });
  }
  return out.sort((x, y) => y.size - x.size);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const d = diff(aggregate(process.argv[2]), aggregate(process.argv[3]));
  const n = Number(process.argv[4] ?? 30);
  const per = Number(process.argv[5] ?? 1);
  let total = 0;
  for (const x of d) total += x.size;
  console.log(`total self-size delta: ${total} B (${(total / per).toFixed(1)} per unit)`);
  for (const x of d.slice(0, n)) console.log(`${String((x.size / per).toFixed(1)).padStart(9)} B/unit ${String((x.count / per).toFixed(2)).padStart(7)} objs/unit  ${x.key}`);
}
