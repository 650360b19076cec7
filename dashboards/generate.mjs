#!/usr/bin/env node
// Generates the Grafana dashboard JSON that Grafana loads (dashboards/grafana/*.json).
// The committed JSON is the source Grafana reads; this script is how it is written.
// test/ops/dashboards.test.ts checks that the committed files equal this output.
//
//   node dashboards/generate.mjs            write the files
//   node dashboards/generate.mjs --check    exit 1 if a committed file differs
//   node dashboards/generate.mjs --stdout   print { file: dashboard } as JSON
//
// Series names come from src/audit/Metrics.ts.

import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

export const PROMETHEUS = { type: 'prometheus', uid: 'tracewire-prometheus' };
export const TEMPO_UID = 'tracewire-tempo';

const SEL = 'instance=~"$instance"';
const AGENT = 'agent=~"$agent"';
const RI = '$__rate_interval';

/** A URL on the tracewire sidecar (runs API, inspector), from the tracewire_url variable. */
const tw = (path) => '${tracewire_url}' + path;

let nextId = 1;

function target(refId, expr, legendFormat, extra = {}) {
  return { refId, datasource: PROMETHEUS, expr, legendFormat, range: true, instant: false, editorMode: 'code', ...extra };
}

function timeseries({ title, description, x, y, w = 12, h = 8, targets, unit = 'short', links = [], dataLinks = [], min, max, stack = false, overrides = [], noValue }) {
  const defaults = {
    unit,
    links: dataLinks,
    custom: {
      drawStyle: 'line',
      lineWidth: 1,
      fillOpacity: stack ? 30 : 10,
      showPoints: 'never',
      spanNulls: false,
      stacking: { mode: stack ? 'normal' : 'none', group: 'A' },
    },
  };
  if (min !== undefined) defaults.min = min;
  if (max !== undefined) defaults.max = max;
  if (noValue !== undefined) defaults.noValue = noValue;
  return {
    id: nextId++,
    type: 'timeseries',
    title,
    description,
    datasource: PROMETHEUS,
    gridPos: { h, w, x, y },
    targets,
    fieldConfig: { defaults, overrides },
    options: {
      legend: { showLegend: true, displayMode: 'table', placement: 'bottom', calcs: ['lastNotNull', 'max'] },
      tooltip: { mode: 'multi', sort: 'desc' },
    },
    links,
  };
}

function stat({ title, description, x, y, w = 6, h = 4, targets, unit = 'short', links = [], thresholds, noValue, decimals }) {
  const defaults = {
    unit,
    noValue,
    thresholds: { mode: 'absolute', steps: thresholds },
    color: { mode: 'thresholds' },
  };
  if (decimals !== undefined) defaults.decimals = decimals;
  return {
    id: nextId++,
    type: 'stat',
    title,
    description,
    datasource: PROMETHEUS,
    gridPos: { h, w, x, y },
    targets,
    fieldConfig: { defaults, overrides: [] },
    options: {
      reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
      colorMode: 'background',
      graphMode: 'area',
      textMode: 'auto',
      justifyMode: 'auto',
      orientation: 'auto',
    },
    links,
  };
}

function row(title, y) {
  return { id: nextId++, type: 'row', title, collapsed: false, gridPos: { h: 1, w: 24, x: 0, y }, panels: [] };
}

const green = (v = null) => ({ color: 'green', value: v });
const red = (v) => ({ color: 'red', value: v });
const orange = (v) => ({ color: 'orange', value: v });

// Connected-user delivery ratio: delivered / (delivered + drops other than no_subscriber).
// Same expression as the TracewireDeliveryRatioLow alert, over the dashboard's rate interval.
const delivered = `sum by (type) (rate(tracewire_events_delivered_total{${SEL}}[${RI}]))`;
const connectedDrops = `sum by (type) (rate(tracewire_events_dropped_total{${SEL}, reason!="no_subscriber"}[${RI}]))`;
export const DELIVERY_RATIO_EXPR = `${delivered}\n/\n(\n  ${delivered}\n  + (${connectedDrops} or 0 * ${delivered})\n)`;

// Missing-event runs with a client connected over the dashboard range: increase() for the label sets
// that existed at its start, and the whole value of those that appeared within it (whose first run
// increase() cannot see).
const MISSING = `tracewire_runs_total{${SEL}, ${AGENT}, verdict="missing_events", reason!="no_subscriber"}`;
const NEW_MISSING = `(${MISSING} unless ${MISSING} offset $__range)`;
export const MISSING_WHILE_CONNECTED_EXPR = `(sum(increase(${MISSING}[$__range]) unless ${NEW_MISSING}) or vector(0))\n+\n(sum(${NEW_MISSING}) or vector(0))`;

function overview() {
  nextId = 1;
  const panels = [];
  let y = 0;

  // --- Runs and verdicts --------------------------------------------------------------------
  panels.push(row('Runs and verdicts', y++));
  panels.push(
    stat({
      title: 'Missing events, client connected',
      description: 'Runs judged missing_events whose main reason is not no_subscriber, over the dashboard range: agents ran, the user was connected, and nothing was delivered. Should be 0. (A label set that first appeared within the range counts with its whole value: increase() cannot see its first run, as the alert TracewireMissingEventsWhileConnected does not miss it.)',
      x: 0, y, targets: [target('A', MISSING_WHILE_CONNECTED_EXPR, 'runs')],
      thresholds: [green(), red(1)], noValue: '0', decimals: 0,
      links: [{ title: 'Inspector: missing_events runs', url: tw('/inspector?verdict=missing_events'), targetBlank: true }],
    }),
    stat({
      title: 'Runs judged',
      description: 'Runs that received a verdict over the dashboard range.',
      x: 6, y, targets: [target('A', `sum(increase(tracewire_runs_total{${SEL}, ${AGENT}}[$__range]))`, 'runs')],
      thresholds: [{ color: 'blue', value: null }], noValue: '0', decimals: 0,
      links: [{ title: 'Run inspector', url: tw('/inspector'), targetBlank: true }],
    }),
    stat({
      title: 'Complete runs',
      description: 'Share of judged runs whose every expected event was delivered, over the dashboard range.',
      x: 12, y, unit: 'percentunit', decimals: 1,
      targets: [target('A', `sum(increase(tracewire_runs_total{${SEL}, ${AGENT}, verdict="complete"}[$__range]))\n/\nsum(increase(tracewire_runs_total{${SEL}, ${AGENT}}[$__range]))`, 'complete')],
      thresholds: [red(), orange(0.9), green(0.99)], noValue: 'no runs',
    }),
    stat({
      title: 'Sidecars up',
      description: 'tracewire scrape targets that answered their last scrape (up == 1).',
      x: 18, y, targets: [target('A', 'sum(up{job="tracewire", instance=~"$instance"})', 'up')],
      thresholds: [red(), green(1)], noValue: '0', decimals: 0,
    }),
  );
  y += 4;
  panels.push(
    timeseries({
      title: 'Run verdicts',
      description: 'Judged runs per second by verdict. Click a series to open those runs in the inspector.',
      x: 0, y, stack: true, unit: 'reqps',
      targets: [target('A', `sum by (verdict) (rate(tracewire_runs_total{${SEL}, ${AGENT}}[${RI}]))`, '{{verdict}}')],
      dataLinks: [{ title: 'Open ${__field.labels.verdict} runs in the inspector', url: tw('/inspector?verdict=${__field.labels.verdict}'), targetBlank: true }],
      links: [
        { title: 'Run inspector', url: tw('/inspector'), targetBlank: true },
        { title: 'Runs API', url: tw('/api/runs'), targetBlank: true },
      ],
    }),
    timeseries({
      title: 'Missing-event runs by reason and agent',
      description: 'Runs where lifecycle spans occurred and no event was delivered, by main reason and top-level agent. no_subscriber means nobody was listening; any other reason means a client was connected and still got nothing (alert TracewireMissingEventsWhileConnected).',
      x: 12, y, unit: 'reqps',
      targets: [target('A', `sum by (reason, agent) (rate(tracewire_runs_total{${SEL}, ${AGENT}, verdict="missing_events"}[${RI}]))`, '{{reason}} / {{agent}}')],
      dataLinks: [
        { title: 'Inspector: missing_events runs of ${__field.labels.agent}', url: tw('/inspector?verdict=missing_events&agent=${__field.labels.agent}'), targetBlank: true },
        { title: 'Runs API: missing_events runs of ${__field.labels.agent}', url: tw('/api/runs?verdict=missing_events&agent=${__field.labels.agent}'), targetBlank: true },
      ],
      links: [
        { title: 'Inspector: missing_events runs', url: tw('/inspector?verdict=missing_events'), targetBlank: true },
        { title: 'Runs API: missing_events runs', url: tw('/api/runs?verdict=missing_events'), targetBlank: true },
      ],
    }),
  );
  y += 8;

  // --- Delivery -------------------------------------------------------------------------------
  panels.push(row('Event delivery', y++));
  panels.push(
    timeseries({
      title: 'Delivery ratio per event type',
      description: 'Connected users: delivered / (delivered + dropped for a reason other than no_subscriber), the TracewireDeliveryRatioLow alert (fires under 95%). All users: delivered / emitted, which also counts users who were offline.',
      x: 0, y, unit: 'percentunit', min: 0, max: 1.05,
      targets: [
        target('A', DELIVERY_RATIO_EXPR, '{{type}} (connected users)'),
        target('B', `sum by (type) (rate(tracewire_events_delivered_total{${SEL}}[${RI}]))\n/\nsum by (type) (rate(tracewire_events_emitted_total{${SEL}}[${RI}]))`, '{{type}} (all users)'),
      ],
      overrides: [{ matcher: { id: 'byFrameRefID', options: 'B' }, properties: [{ id: 'custom.lineStyle', value: { fill: 'dash', dash: [10, 10] } }] }],
      links: [{ title: 'Inspector: partial runs', url: tw('/inspector?verdict=partial'), targetBlank: true }],
    }),
    timeseries({
      title: 'Dropped events by reason',
      description: 'Events not delivered, by reason. no_subscriber: the user had no connection. send_failed, backpressure, unauthorised: a connection existed and the write failed or was refused. evicted, overflow, late_span, shutdown: bounded state or timing. not_recorded, reported_dropped: audit mode.',
      x: 12, y, unit: 'ops', stack: true,
      targets: [target('A', `sum by (reason) (rate(tracewire_events_dropped_total{${SEL}}[${RI}]))`, '{{reason}}')],
      noValue: '0',
      links: [{ title: 'Inspector: partial runs', url: tw('/inspector?verdict=partial'), targetBlank: true }],
    }),
  );
  y += 8;
  panels.push(
    timeseries({
      title: 'Delivery latency p50 / p99',
      description: 'From the span hook to the completed WebSocket write, per event type (histogram_quantile over tracewire_event_delivery_seconds). Exemplars carry the trace id: click one to open the trace in Tempo.',
      x: 0, y, unit: 's',
      targets: [
        target('A', `histogram_quantile(0.5, sum by (le, type) (rate(tracewire_event_delivery_seconds_bucket{${SEL}}[${RI}])))`, 'p50 {{type}}', { exemplar: true }),
        target('B', `histogram_quantile(0.99, sum by (le, type) (rate(tracewire_event_delivery_seconds_bucket{${SEL}}[${RI}])))`, 'p99 {{type}}', { exemplar: true }),
      ],
    }),
    timeseries({
      title: 'Lifecycle spans and emitted events',
      description: 'Agent, thinking and tool spans recognised, next to the events produced from them. Connections with no lifecycle spans at all is the "only acks" signature (alert TracewireLifecycleSpansAbsent).',
      x: 12, y, unit: 'ops',
      targets: [
        target('A', `sum by (kind) (rate(tracewire_lifecycle_spans_total{${SEL}}[${RI}]))`, 'spans: {{kind}}'),
        target('B', `sum(rate(tracewire_events_emitted_total{${SEL}}[${RI}]))`, 'events emitted'),
        target('C', `sum by (source) (rate(tracewire_spans_seen_total{${SEL}}[${RI}]))`, 'span starts+ends: {{source}}'),
      ],
    }),
  );
  y += 8;

  // --- Connections and state ------------------------------------------------------------------
  panels.push(row('Connections and state', y++));
  panels.push(
    timeseries({
      title: 'WebSocket connections',
      description: 'Open authenticated connections, connection attempts by result and disconnects by reason.',
      x: 0, y, w: 8,
      targets: [
        target('A', `sum(tracewire_ws_connections{${SEL}})`, 'open'),
        target('B', `sum by (result) (rate(tracewire_ws_connection_attempts_total{${SEL}}[${RI}]))`, 'attempts/s: {{result}}'),
        target('C', `sum by (reason) (rate(tracewire_ws_disconnects_total{${SEL}}[${RI}]))`, 'disconnects/s: {{reason}}'),
      ],
    }),
    timeseries({
      title: 'In flight',
      description: 'Runs started and not judged yet, traces tracked, spans held until their ancestors arrive, events held for users with no connection, and judged runs kept for the runs API. A steady climb means runs are not ending (see abandoned verdicts), users are not connecting, or limits are close.',
      x: 8, y, w: 8,
      targets: [
        target('A', `sum(tracewire_runs_in_flight{${SEL}})`, 'runs'),
        target('B', `sum(tracewire_traces_in_flight{${SEL}})`, 'traces'),
        target('C', `sum(tracewire_held_spans{${SEL}})`, 'held spans'),
        target('D', `sum(tracewire_held_events{${SEL}})`, 'held events'),
        target('E', `sum(tracewire_runs_kept{${SEL}})`, 'judged runs kept'),
      ],
    }),
    timeseries({
      title: 'Evictions and internal errors',
      description: 'State given up by bounded limits, by reason (bridge state, delivered events the resume window gave up before their run expired, and judged runs the runs API gave up before their age), and faults caught inside tracewire, by component. All are normally flat; "No data" means none happened since the sidecar started.',
      x: 16, y, w: 8, unit: 'ops', noValue: '0',
      targets: [
        target('A', `sum by (reason) (rate(tracewire_bridge_evictions_total{${SEL}}[${RI}]))`, 'evicted: {{reason}}'),
        target('B', `sum by (component) (rate(tracewire_internal_errors_total{${SEL}}[${RI}]))`, 'error: {{component}}'),
        target('C', `sum by (reason) (rate(tracewire_resume_window_trimmed_total{${SEL}}[${RI}]))`, 'resume window gave up: {{reason}}'),
        target('D', `sum by (reason) (rate(tracewire_runs_trimmed_total{${SEL}}[${RI}]))`, 'runs API gave up: {{reason}}'),
      ],
    }),
  );
  y += 8;

  // --- OTLP ingest ------------------------------------------------------------------------------
  panels.push(row('OTLP ingest', y++));
  panels.push(
    timeseries({
      title: 'OTLP requests',
      description: 'OTLP/HTTP export requests to POST /v1/traces by encoding and response status.',
      x: 0, y, unit: 'reqps',
      targets: [target('A', `sum by (encoding, status) (rate(tracewire_otlp_requests_total{${SEL}}[${RI}]))`, '{{encoding}} {{status}}')],
    }),
    timeseries({
      title: 'OTLP spans received and rejected',
      description: 'Spans accepted from OTLP requests, and spans rejected by reason (alert TracewireOtlpSpansRejected).',
      x: 12, y, unit: 'ops',
      targets: [
        target('A', `sum(rate(tracewire_otlp_spans_received_total{${SEL}}[${RI}]))`, 'received'),
        target('B', `sum by (reason) (rate(tracewire_otlp_spans_rejected_total{${SEL}}[${RI}]))`, 'rejected: {{reason}}'),
      ],
    }),
  );

  y += 8;

  // --- Several sidecars -----------------------------------------------------------------------------
  panels.push(row('Several sidecars (fan-out through the broker)', y++));
  panels.push(
    timeseries({
      title: 'Broker and presence',
      description: 'Sidecars with --broker-url only ("No data" without one). Per sidecar: 1 while its broker connections are up (alert TracewireBrokerDown), the other sidecars it has heard from, the (user, sidecar) pairs it knows of, and the events it sent to other sidecars whose outcome has not come back. Reopened: connections given up because the sidecar\'s own presence stopped coming back (half-open).',
      x: 0, y, w: 8, noValue: 'no broker',
      targets: [
        target('A', `min by (instance) (tracewire_broker_up{${SEL}})`, 'up: {{instance}}'),
        target('B', `max by (instance) (tracewire_broker_peers{${SEL}})`, 'peers heard: {{instance}}'),
        target('C', `sum(tracewire_broker_remote_users{${SEL}})`, 'users elsewhere'),
        target('D', `sum(tracewire_broker_pending_deliveries{${SEL}})`, 'awaiting an outcome'),
        target('E', `sum(increase(tracewire_broker_reopened_total{${SEL}}[${RI}]))`, 'reopened'),
      ],
    }),
    timeseries({
      title: 'Broker messages',
      description: 'Messages published (out) and received (in) per second, by kind; each carries a batch. Events out and reports in should move together: reports that stop coming back end as broker_unconfirmed drops.',
      x: 8, y, w: 8, unit: 'ops', noValue: 'no broker',
      targets: [target('A', `sum by (direction, kind) (rate(tracewire_broker_messages_total{${SEL}}[${RI}]))`, '{{direction}} {{kind}}')],
    }),
    timeseries({
      title: 'Fan-out losses',
      description: 'What the fan-out gave up, by reason: publishes the broker refused, invalid messages, outcomes that never came back (the events count as broker_unconfirmed in "Dropped events by reason"), full tables, acks for runs never relayed. Normally flat.',
      x: 16, y, w: 8, unit: 'ops', noValue: 'no broker',
      targets: [target('A', `sum by (reason) (rate(tracewire_broker_dropped_total{${SEL}}[${RI}]))`, '{{reason}}')],
    }),
  );

  const tempoExplore = '/explore?schemaVersion=1&panes=' + encodeURIComponent(JSON.stringify({
    tw: {
      datasource: TEMPO_UID,
      queries: [{ refId: 'A', datasource: { type: 'tempo', uid: TEMPO_UID }, queryType: 'traceqlSearch', limit: 20 }],
      range: { from: 'now-1h', to: 'now' },
    },
  }));

  return {
    uid: 'tracewire-overview',
    title: 'tracewire: delivery overview',
    description: 'Spans in, agent events out, silence flagged. Verdicts, delivery, connections and OTLP ingest of the tracewire sidecars.',
    tags: ['tracewire'],
    editable: false,
    graphTooltip: 1,
    schemaVersion: 39,
    version: 1,
    refresh: '30s',
    time: { from: 'now-1h', to: 'now' },
    timepicker: {},
    timezone: '',
    fiscalYearStartMonth: 0,
    liveNow: false,
    annotations: {
      list: [{
        builtIn: 1, datasource: { type: 'grafana', uid: '-- Grafana --' }, enable: true, hide: true,
        iconColor: 'rgba(0, 211, 255, 1)', name: 'Annotations & Alerts', type: 'dashboard',
      }],
    },
    links: [
      { title: 'Run inspector', type: 'link', url: tw('/inspector'), targetBlank: true, icon: 'dashboard', tooltip: 'tracewire run inspector (per-run events, drop reasons)' },
      { title: 'Runs with missing events', type: 'link', url: tw('/inspector?verdict=missing_events'), targetBlank: true, icon: 'bolt' },
      { title: 'Traces in Tempo', type: 'link', url: tempoExplore, targetBlank: true, icon: 'external link', tooltip: 'Search traces in Tempo (datasource ' + TEMPO_UID + ')' },
    ],
    templating: {
      list: [
        {
          name: 'instance', label: 'Sidecar', type: 'query', datasource: PROMETHEUS,
          definition: 'label_values(tracewire_build_info, instance)',
          query: { query: 'label_values(tracewire_build_info, instance)', refId: 'instance' },
          includeAll: true, multi: true, allValue: '.*', refresh: 2, sort: 1, hide: 0,
          current: { selected: true, text: ['All'], value: ['$__all'] }, options: [], regex: '',
        },
        {
          name: 'agent', label: 'Agent', type: 'query', datasource: PROMETHEUS,
          definition: 'label_values(tracewire_runs_total{instance=~"$instance"}, agent)',
          query: { query: 'label_values(tracewire_runs_total{instance=~"$instance"}, agent)', refId: 'agent' },
          includeAll: true, multi: true, allValue: '.*', refresh: 2, sort: 1, hide: 0,
          current: { selected: true, text: ['All'], value: ['$__all'] }, options: [], regex: '',
        },
        {
          name: 'tracewire_url', label: 'tracewire URL', type: 'textbox', hide: 0,
          description: 'Base URL of the sidecar public listener, for the inspector and runs API links.',
          query: 'http://localhost:8080',
          current: { text: 'http://localhost:8080', value: 'http://localhost:8080' },
          options: [{ selected: true, text: 'http://localhost:8080', value: 'http://localhost:8080' }],
        },
      ],
    },
    panels,
  };
}

/** Output files, relative to dashboards/, and their JSON text. */
export function render() {
  return { 'grafana/tracewire-overview.json': JSON.stringify(overview(), null, 2) + '\n' };
}

function main(argv) {
  const files = render();
  if (argv.includes('--stdout')) {
    process.stdout.write(JSON.stringify(files));
    return 0;
  }
  let stale = 0;
  for (const [rel, text] of Object.entries(files)) {
    const path = join(here, rel);
    if (argv.includes('--check')) {
      let current = '';
      try { current = readFileSync(path, 'utf8'); } catch { /* missing counts as stale */ }
      if (current !== text) { console.error(`dashboards/${rel} is not the generator output; run: node dashboards/generate.mjs`); stale++; }
    } else {
      mkdirSync(dirname(path), { recursive: true });
      writeFileSync(path, text);
      console.log(`wrote dashboards/${rel}`);
    }
  }
  return stale === 0 ? 0 : 1;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) process.exitCode = main(process.argv.slice(2));
