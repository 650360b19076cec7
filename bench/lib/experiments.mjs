// Runtime experiments for the analysis of missed targets (not used by a plain
// `npm run bench`). BENCH_EXPERIMENT=name[,name]:
//
//   noop-metrics   every prom-client call of the instance does nothing: the
//                  upper bound of what cheaper metric updates can save
//   no-exemplar    the delivery histogram is observed without an exemplar
//
// They patch one Tracewire instance's metric objects; nothing in src/ changes.
const wanted = new Set((process.env.BENCH_EXPERIMENT ?? '').split(',').filter(Boolean));

export function applyExperiments(tw) {
  if (wanted.size === 0) return tw;
  const m = tw.metrics;
  if (wanted.has('noop-metrics')) {
    for (const v of Object.values(m)) {
      if (v === null || typeof v !== 'object' || typeof v.get !== 'function') continue;
      for (const fn of ['inc', 'dec', 'set', 'observe']) if (typeof v[fn] === 'function') v[fn] = () => {};
    }
  }
  if (wanted.has('no-exemplar')) {
    const h = m.deliverySeconds;
    const observe = h.observe.bind(h);
    h.observe = (type, value) => observe(type, value, undefined);
  }
  return tw;
}
