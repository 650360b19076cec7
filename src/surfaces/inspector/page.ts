/**
 * The run inspector: one static, self-contained page (no external resources,
 * inline script and style only, as the CSP allows) that reads the runs API.
 *
 * - Filters (verdict, agent, user) come from the URL (`?verdict=&agent=&user=`)
 *   and the form; applying them updates the URL so a filtered view can be shared.
 * - `?run=<run_id>` opens a run directly; clicking a run does the same.
 * - `?token=<api token>` is sent on API calls as a bearer token when the
 *   sidecar has an API token.
 * - Every URL is relative (`api/runs`), so the page works behind a path prefix.
 * - All data is rendered with textContent: agent names and ids are untrusted.
 */
export const INSPECTOR_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tracewire run inspector</title>
<style>
:root{--fg:#1d2330;--muted:#5d6675;--line:#e3e6eb;--bg:#fff;--panel:#f7f8fa;--accent:#2457c5;
--ok:#1b7f3b;--ok-bg:#e3f4e8;--warn:#8a5a00;--warn-bg:#fdf0d2;--bad:#b42318;--bad-bg:#fde4e1;--grey:#4b5260;--grey-bg:#eceef2;--blue:#1f4fb0;--blue-bg:#e3ebfb}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:var(--fg);background:var(--bg)}
header{display:flex;align-items:baseline;gap:1rem;padding:.8rem 1.2rem;border-bottom:1px solid var(--line);background:var(--panel)}
header h1{font-size:1.05rem;margin:0}
header .status{color:var(--muted);font-size:.85rem;margin-left:auto}
form#filters{display:flex;flex-wrap:wrap;gap:.6rem;align-items:end;padding:.7rem 1.2rem;border-bottom:1px solid var(--line)}
form#filters label{display:flex;flex-direction:column;font-size:.75rem;color:var(--muted);gap:.15rem}
form#filters input,form#filters select{font:inherit;padding:.25rem .4rem;border:1px solid #c8ccd4;border-radius:4px;min-width:9rem;color:var(--fg);background:#fff}
button{font:inherit;padding:.3rem .8rem;border:1px solid #c8ccd4;border-radius:4px;background:#fff;cursor:pointer;color:var(--fg)}
button.primary{background:var(--accent);border-color:var(--accent);color:#fff}
form#filters .check{flex-direction:row;align-items:center;gap:.3rem;font-size:.85rem;color:var(--fg);align-self:center}
form#filters .check input{min-width:0;margin:0}
main{display:grid;grid-template-columns:minmax(420px,1fr) minmax(480px,1.35fr);gap:0;min-height:calc(100vh - 110px)}
#list{border-right:1px solid var(--line);overflow:auto}
table{border-collapse:collapse;width:100%}
th,td{padding:.35rem .6rem;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{font-size:.72rem;text-transform:uppercase;letter-spacing:.03em;color:var(--muted);font-weight:600;background:var(--panel);position:sticky;top:0}
#runs{font-size:.93em}
#runs th,#runs td{padding:.35rem .5rem}
#runs td:last-child{overflow-wrap:anywhere}
#runs tbody tr{cursor:pointer}
#runs tbody tr:hover{background:#f3f6fc}
#runs tbody tr.selected{background:#e8effc}
#runs tbody tr:focus{outline:2px solid var(--accent);outline-offset:-2px}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.muted{color:var(--muted)}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.82rem}
.badge{display:inline-block;padding:.05rem .45rem;border-radius:999px;font-size:.75rem;font-weight:600;white-space:nowrap;border:1px solid transparent}
.v-complete,.o-delivered{color:var(--ok);background:var(--ok-bg)}
.v-partial,.o-held{color:var(--warn);background:var(--warn-bg)}
.v-missing_events,.o-dropped{color:var(--bad);background:var(--bad-bg)}
.v-abandoned,.v-interrupted,.o-emitted{color:var(--grey);background:var(--grey-bg)}
.v-in_flight,.v-ended{color:var(--blue);background:var(--blue-bg)}
.chip{display:inline-block;margin:0 .3rem .3rem 0;padding:.05rem .45rem;border-radius:4px;background:var(--grey-bg);font-size:.8rem}
#more{margin:.7rem 1.2rem}
#timeline-more{margin:.7rem 0}
#empty{padding:1.2rem;color:var(--muted)}
#detail{padding:1rem 1.4rem;overflow:auto}
#detail h2{font-size:1.15rem;margin:.1rem 0 .6rem;display:flex;gap:.6rem;align-items:center;flex-wrap:wrap}
#detail .explanation{font-size:1rem;padding:.7rem .9rem;border-left:4px solid var(--grey);background:var(--panel);margin:0 0 1rem}
#detail .explanation.v-complete{border-color:var(--ok)}
#detail .explanation.v-partial{border-color:#d99a00}
#detail .explanation.v-missing_events{border-color:var(--bad)}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:0 0 1rem}
dl.facts dt{color:var(--muted)}
dl.facts dd{margin:0;word-break:break-all}
#detail h3{font-size:.85rem;text-transform:uppercase;letter-spacing:.03em;color:var(--muted);margin:1.2rem 0 .4rem}
#timeline td{padding:.25rem .5rem}
#timeline tr.ev td{background:#fcfcfd}
#timeline tr.ev.o-dropped td{background:#fff6f5}
#timeline tr.span td.what{color:var(--muted)}
#timeline .indent{display:inline-block}
.kind{font-size:.72rem;color:var(--muted);margin-right:.35rem;text-transform:uppercase}
.err{color:var(--bad);font-weight:600}
#banner{display:none;margin:.7rem 1.2rem;padding:.6rem .8rem;border-radius:4px;background:var(--bad-bg);color:var(--bad)}
#banner.show{display:block}
.placeholder{color:var(--muted);padding:2rem 0}
a{color:var(--accent)}
.note{color:var(--muted);font-size:.78rem;margin:.6rem 0 0}
@media (max-width:1000px){main{grid-template-columns:1fr}#list{border-right:0;border-bottom:1px solid var(--line)}}
</style>
</head><body>
<header><h1>tracewire · run inspector</h1><span class="status" id="status">loading…</span></header>
<form id="filters" autocomplete="off">
  <label>verdict<select name="verdict" id="f-verdict">
    <option value="">any</option><option value="missing_events">missing_events</option><option value="partial">partial</option>
    <option value="complete">complete</option><option value="abandoned">abandoned</option><option value="interrupted">interrupted</option>
    <option value="in_flight">in flight</option></select></label>
  <label>agent<input name="agent" id="f-agent" placeholder="top-level agent"></label>
  <label>user<input name="user" id="f-user" placeholder="user id"></label>
  <button type="submit" class="primary">Apply</button>
  <button type="button" id="reset">Reset</button>
  <label class="check"><input type="checkbox" id="f-live"> auto-refresh</label>
</form>
<div id="banner" role="alert"></div>
<main>
  <section id="list" aria-label="runs">
    <table id="runs"><thead><tr><th>started</th><th>agent</th><th>user</th><th>verdict</th><th>delivered</th><th>reason</th><th id="th-sidecar" hidden>sidecar</th></tr></thead><tbody></tbody></table>
    <div id="empty" hidden>No runs match.</div>
    <button id="more" hidden>Load more</button>
  </section>
  <section id="detail" aria-live="polite"><p class="placeholder">Select a run to see what happened to each of its events.</p></section>
</main>
<script type="module">
const VERDICTS = ['complete', 'partial', 'missing_events', 'abandoned', 'interrupted', 'in_flight'];
const FILTERS = ['verdict', 'agent', 'user'];
const $ = (sel) => document.querySelector(sel);
const token = new URLSearchParams(location.search).get('token');
let nextCursor = null;
let selected = null;
let liveTimer = null;
/** Pages of the selected run's timeline shown (live refresh re-reads only a run shown on one page). */
let detailPages = 0;
/** Counts the detail renders: a "Show more" page that arrives after another render is dropped. */
let detailGen = 0;
/** A "Show more" page is being fetched: live refresh leaves the detail alone meanwhile. */
let loadingMore = false;

function el(tag, props, ...kids) {
  const e = document.createElement(tag);
  if (props) for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}

function badge(prefix, value, label) {
  return el('span', { class: 'badge ' + prefix + '-' + value, text: label || value });
}

function verdictWord(r) {
  return r.verdict || (r.status === 'ended' ? 'ended' : 'in_flight');
}

function pad(n, w) { return String(n).padStart(w || 2, '0'); }
function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds()) + '.' + pad(d.getMilliseconds(), 3);
}
function fmtDay(iso) {
  const d = new Date(iso);
  const today = new Date();
  return d.toDateString() === today.toDateString() ? '' : d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ';
}
function fmtMs(ms) {
  if (ms === null || ms === undefined) return '';
  if (ms < 1) return ms.toFixed(2) + ' ms';
  if (ms < 1000) return ms.toFixed(ms < 10 ? 1 : 0) + ' ms';
  return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + ' s';
}

async function api(path) {
  const headers = { accept: 'application/json' };
  if (token) headers.authorization = 'Bearer ' + token;
  const res = await fetch(path, { headers });
  let body = null;
  try { body = await res.json(); } catch { body = null; }
  if (!res.ok) {
    const err = new Error(body && body.message ? body.message : 'HTTP ' + res.status);
    err.code = body && body.code ? body.code : 'HTTP_' + res.status;
    throw err;
  }
  return body;
}

function showError(e) {
  const b = $('#banner');
  b.textContent = (e.code ? e.code + ': ' : '') + e.message;
  b.classList.add('show');
}
function clearError() { $('#banner').classList.remove('show'); }

function currentParams() {
  return new URLSearchParams(location.search);
}

function setUrl(params, push) {
  if (token) params.set('token', token);
  const qs = params.toString();
  const url = location.pathname + (qs ? '?' + qs : '');
  if (push) history.pushState(null, '', url); else history.replaceState(null, '', url);
}

function formToUrl(push) {
  const p = currentParams();
  for (const k of FILTERS) {
    const v = $('#f-' + k).value.trim();
    if (v) p.set(k, v); else p.delete(k);
  }
  if ($('#f-live').checked) p.set('live', '1'); else p.delete('live');
  setUrl(p, push);
}

function urlToForm() {
  const p = currentParams();
  const v = p.get('verdict') || '';
  $('#f-verdict').value = VERDICTS.includes(v) ? v : '';
  $('#f-agent').value = p.get('agent') || '';
  $('#f-user').value = p.get('user') || '';
  $('#f-live').checked = p.get('live') === '1';
}

function listQuery(cursor) {
  const p = currentParams();
  const q = new URLSearchParams();
  for (const k of FILTERS) if (p.get(k)) q.set(k, p.get(k));
  q.set('limit', '50');
  if (cursor) q.set('cursor', cursor);
  return 'api/runs?' + q;
}

function runRow(r) {
  const v = verdictWord(r);
  const tr = el('tr', { tabIndex: 0, 'data-run-id': r.run_id, 'data-verdict': v, title: r.explanation });
  if (r.run_id === selected) tr.classList.add('selected');
  tr.append(
    el('td', { class: 'num', title: r.started_at }, el('span', { class: 'muted', text: fmtDay(r.started_at) }), fmtTime(r.started_at)),
    el('td', { text: r.agent }),
    el('td', { text: r.user === null ? '—' : r.user, class: r.user === null ? 'muted' : '' }),
    el('td', null, badge('v', v)),
    el('td', { class: 'num', text: r.delivered + ' / ' + r.expected }),
    el('td', { class: 'muted', text: r.reason && r.reason !== 'none' ? r.reason : '' }),
  );
  // Several sidecars: the one that judged the run.
  if (r.sidecar !== undefined) tr.append(el('td', { class: 'muted mono', text: r.sidecar }));
  tr.addEventListener('click', () => select(r.run_id, true));
  tr.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); select(r.run_id, true); } });
  return tr;
}

async function loadList(append) {
  try {
    const body = await api(listQuery(append ? nextCursor : null));
    clearError();
    const tb = $('#runs tbody');
    if (!append) tb.textContent = '';
    for (const r of body.runs) tb.append(runRow(r));
    nextCursor = body.next_cursor;
    $('#more').hidden = !nextCursor;
    $('#empty').hidden = tb.children.length > 0;
    const n = tb.children.length;
    if (body.missing_sidecars !== undefined) $('#th-sidecar').hidden = false;
    const missing = body.missing_sidecars === -1 ? ' · other sidecars unreachable: only the runs of this sidecar'
      : body.missing_sidecars > 0 ? ' · ' + body.missing_sidecars + (body.missing_sidecars === 1 ? ' sidecar' : ' sidecars') + ' did not answer' : '';
    $('#status').textContent = n + (nextCursor ? '+' : '') + (n === 1 && !nextCursor ? ' run' : ' runs') + missing + ' · updated ' + fmtTime(new Date().toISOString());
  } catch (e) {
    showError(e);
    $('#status').textContent = 'error';
  }
}

function markSelected() {
  for (const tr of document.querySelectorAll('#runs tbody tr')) tr.classList.toggle('selected', tr.dataset.runId === selected);
}

async function select(id, push) {
  selected = id;
  markSelected();
  const p = currentParams();
  if (id) p.set('run', id); else p.delete('run');
  setUrl(p, push);
  await showRun(id);
}

function facts(pairs) {
  const dl = el('dl', { class: 'facts' });
  for (const [k, v] of pairs) if (v !== null && v !== undefined && v !== '') dl.append(el('dt', { text: k }), el('dd', null, v));
  return dl;
}

function chips(obj) {
  const entries = Object.entries(obj || {});
  if (entries.length === 0) return null;
  const span = el('span');
  for (const [k, n] of entries) span.append(el('span', { class: 'chip', text: k + ' ×' + n }));
  return span;
}

function timelineRow(t) {
  const indent = el('span', { class: 'indent' });
  indent.style.width = ((t.depth || 0) * 1.1) + 'rem';
  if (t.what === 'event') {
    const tr = el('tr', { class: 'ev o-' + t.outcome, 'data-what': 'event', 'data-outcome': t.outcome, 'data-type': t.type });
    const extra = [];
    if (t.late) extra.push('late');
    if (t.held && t.outcome !== 'held') extra.push('still held');
    if (t.acked) extra.push('acked');
    tr.append(
      el('td', { class: 'num muted', text: '+' + fmtMs(t.offset_ms), title: t.at }),
      el('td', { class: 'what' }, indent, el('span', { class: 'kind', text: 'event' }), el('strong', { text: t.type }), el('span', { class: 'muted', text: ' #' + t.seq })),
      el('td', null, badge('o', t.outcome)),
      el('td', { class: t.reason ? 'err' : 'muted', text: t.reason || '' }),
      el('td', { class: 'num', text: t.connections + ' conn' + (t.attempts !== t.connections ? ' (' + t.attempts + ' tried)' : ''), title: 'connections whose write completed (write attempts)' }),
      el('td', { class: 'muted', text: extra.join(', ') }),
    );
    return tr;
  }
  const tr = el('tr', { class: 'span', 'data-what': t.what });
  const label = t.what === 'span_start' ? '▸ start' : '▪ end';
  const tail = t.what === 'span_end' ? [fmtMs(t.duration_ms)] : [];
  tr.append(
    el('td', { class: 'num muted', text: '+' + fmtMs(t.offset_ms), title: t.at }),
    el('td', { class: 'what' }, indent, el('span', { class: 'kind', text: t.kind }), el('span', { text: label + ' ' + (t.name || '(unnamed)') })),
    el('td'),
    el('td', { class: 'err', text: t.error ? 'error: ' + t.error : '' }),
    el('td'),
    el('td', { class: 'muted', text: tail.join(' ') }),
  );
  return tr;
}

async function showRun(id) {
  const d = $('#detail');
  const gen = ++detailGen;
  detailPages = 0;
  if (!id) {
    d.textContent = '';
    d.append(el('p', { class: 'placeholder', text: 'Select a run to see what happened to each of its events.' }));
    return;
  }
  let r;
  try {
    r = await api('api/runs/' + encodeURIComponent(id));
  } catch (e) {
    d.textContent = '';
    d.append(el('h2', { text: 'Run ' + id }), el('p', { class: 'explanation v-missing_events', text: (e.code ? e.code + ': ' : '') + e.message }));
    return;
  }
  if (selected !== id) return; // a newer selection won
  const v = verdictWord(r);
  d.textContent = '';
  d.dataset.runId = r.run_id;
  d.append(el('h2', null, el('span', { text: r.agent }), badge('v', v), r.reason && r.reason !== 'none' ? el('span', { class: 'chip', text: r.reason }) : null));
  d.append(el('p', { class: 'explanation v-' + v, text: r.explanation }));
  const traceLink = r.trace_url ? el('a', { href: r.trace_url, target: '_blank', rel: 'noopener noreferrer', text: 'open trace ↗' }) : null;
  d.append(facts([
    ['delivered', r.delivered + ' of ' + r.expected + ' expected events'],
    ['undelivered', chips(r.undelivered_by_type)],
    ['reasons', chips(r.reasons)],
    ['user', r.user === null ? '(none)' : r.user],
    ['conversation', r.conversation_id],
    ['started', fmtDay(r.started_at) + fmtTime(r.started_at)],
    ['duration', r.duration_ms === null ? (r.status === 'judged' ? 'did not end' : 'running') : fmtMs(r.duration_ms)],
    ['connection seen', r.connection_seen ? 'yes' : 'no'],
    ['run id', el('span', { class: 'mono', text: r.run_id })],
    ['trace id', el('span', null, el('span', { class: 'mono', text: r.trace_id + ' ' }), traceLink)],
    ['sidecar', r.sidecar ? el('span', { class: 'mono', text: r.sidecar }) : null],
  ]));
  d.append(el('h3', { text: 'Timeline: spans and events' }));
  const table = el('table', { id: 'timeline' });
  table.append(el('thead', null, el('tr', null, el('th', { text: 'at' }), el('th', { text: 'span / event' }), el('th', { text: 'outcome' }), el('th', { text: 'reason' }), el('th', { text: 'delivered to' }), el('th', { text: 'notes' }))));
  const tb = el('tbody');
  for (const t of r.timeline) tb.append(timelineRow(t));
  table.append(tb);
  d.append(table);
  detailPages = 1;
  // A large run comes a page of events at a time (next_cursor): more rows on demand.
  let cursor = r.next_cursor;
  const more = el('button', { id: 'timeline-more', type: 'button', text: 'Show more events (' + r.events.length + ' of ' + r.expected + ' shown)' });
  more.hidden = !cursor;
  more.addEventListener('click', async () => {
    more.disabled = true;
    loadingMore = true;
    try {
      const page = await api('api/runs/' + encodeURIComponent(id) + '?cursor=' + encodeURIComponent(cursor));
      if (selected !== id || gen !== detailGen) return;
      for (const t of page.timeline) tb.append(timelineRow(t));
      detailPages++;
      cursor = page.next_cursor;
      const shown = tb.querySelectorAll('tr[data-what="event"]').length;
      more.textContent = 'Show more events (' + shown + ' of ' + page.expected + ' shown)';
      more.hidden = !cursor;
    } catch (e) {
      more.textContent = 'Could not load more: ' + (e.code ? e.code + ': ' : '') + e.message;
    } finally {
      more.disabled = false;
      loadingMore = false;
    }
  });
  d.append(more);
  d.append(el('p', { class: 'note', text: 'Rows are in causal order: events by seq (the order a client receives them), each span start before the event it caused. Times are offsets from the run start taken from the spans; span start times from OpenTelemetry JS have millisecond resolution, so neighbouring offsets may differ from that order by under a millisecond.' }));
}

async function refresh() {
  await loadList(false);
  markSelected();
}

function applyLive() {
  if (liveTimer) { clearInterval(liveTimer); liveTimer = null; }
  if ($('#f-live').checked) liveTimer = setInterval(() => { if (!nextCursor || $('#runs tbody').children.length <= 50) refresh(); if (selected && detailPages <= 1 && !loadingMore) showRun(selected); }, 5000);
}

$('#filters').addEventListener('submit', (e) => {
  e.preventDefault();
  formToUrl(true);
  applyLive();
  refresh();
});
$('#f-verdict').addEventListener('change', () => { formToUrl(true); refresh(); });
$('#f-live').addEventListener('change', () => { formToUrl(false); applyLive(); });
$('#reset').addEventListener('click', () => {
  for (const k of FILTERS) $('#f-' + k).value = '';
  formToUrl(true);
  refresh();
});
$('#more').addEventListener('click', () => loadList(true));
window.addEventListener('popstate', () => {
  urlToForm();
  selected = currentParams().get('run');
  refresh();
  showRun(selected);
});

urlToForm();
applyLive();
selected = currentParams().get('run');
refresh();
if (selected) showRun(selected);
</script></body></html>`;
