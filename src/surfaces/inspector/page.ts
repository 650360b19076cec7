/** The run inspector: one static page that reads the runs API. */
export const INSPECTOR_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tracewire run inspector</title>
<style>body{font:14px system-ui,sans-serif;margin:1.5rem}table{border-collapse:collapse}td,th{padding:.2rem .6rem;border-bottom:1px solid #ddd;text-align:left}</style>
</head><body><h1>tracewire runs</h1><div id="filters"></div><table id="runs"><thead><tr><th>started</th><th>agent</th><th>user</th><th>verdict</th><th>reason</th><th>explanation</th></tr></thead><tbody></tbody></table>
<section id="detail"></section>
<script type="module">
const params = new URLSearchParams(location.search);
async function load() {
  const q = new URLSearchParams();
  for (const k of ['verdict', 'agent', 'user']) if (params.get(k)) q.set(k, params.get(k));
  const res = await fetch('api/runs?' + q);
  const body = await res.json();
  const tb = document.querySelector('#runs tbody');
  tb.textContent = '';
  for (const r of body.runs) {
    const tr = document.createElement('tr');
    tr.dataset.runId = r.run_id;
    for (const v of [r.started_at, r.agent, r.user ?? '', r.verdict ?? r.status, r.reason ?? '', r.explanation]) {
      const td = document.createElement('td'); td.textContent = v; tr.append(td);
    }
    tr.onclick = () => show(r.run_id);
    tb.append(tr);
  }
  if (params.get('run')) show(params.get('run'));
}
async function show(id) {
  const res = await fetch('api/runs/' + encodeURIComponent(id));
  const d = document.querySelector('#detail');
  d.textContent = '';
  const r = await res.json();
  const h = document.createElement('h2'); h.textContent = r.run_id ? r.agent + ' — ' + (r.verdict ?? r.status) : r.message; d.append(h);
  const p = document.createElement('p'); p.className = 'explanation'; p.textContent = r.explanation ?? ''; d.append(p);
  const ol = document.createElement('ol');
  for (const t of r.timeline ?? []) {
    const li = document.createElement('li');
    li.textContent = t.what === 'event' ? t.at + ' event #' + t.seq + ' ' + t.type + ' ' + t.outcome + (t.reason ? ' (' + t.reason + ')' : '') : t.at + ' ' + t.what + ' ' + t.kind + ' ' + (t.name ?? '');
    ol.append(li);
  }
  d.append(ol);
}
load();
</script></body></html>`;
