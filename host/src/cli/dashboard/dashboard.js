// plugbus dashboard: live operator view for `plugbus serve` (plain ES2020, no dependencies).
// Reads snapshots from the SSE stream /dashboard/stream and updates the DOM in place.
// The Runs view asks a plugin that answers agent-runs' queries (GET /plugins/NAME/query)
// and reads a run's timeline from GET /runs/ID/events.
// All server data is untrusted: it reaches the page only through textContent and attributes.
'use strict';

const TAIL_MAX = 200;
const STALE_MS = 3000;
const TICK_MS = 250;
const RECONNECT_MS = 2000;
const CHART_WINDOW_S = 300;
const STATES = ['ready', 'recovering', 'quarantined', 'unloaded'];
const PLUGIN_COLUMNS = ['name', 'state', 'language', 'counts', 'failures', 'dropped',
  'restarts', 'queue', 'latency', 'fuel', 'memory', 'dead_letters'];
const NUMERIC_COLUMNS = ['counts', 'dropped', 'restarts', 'latency', 'fuel', 'dead_letters'];
const RUNS_LIMIT = 100; // rows in the runs table
const RUNS_QUERY_MS = 1000; // at most one plugin query per second, only while the Runs view shows
const AGENTS_EVERY_MS = 10000;
const RUN_SUMMARY_EVERY_MS = 5000;
const TIMELINE_POLL_MS = 2000;
const TIMELINE_PAGE = 500; // events per timeline request (the server's default)
const TIMELINE_MAX = 5000; // events the page holds for one run
const TIMELINE_MAX_DEPTH = 16; // indentation levels shown (deeper spans stay at the last)
const RUN_STATUSES = ['running', 'completed', 'failed'];
const CHART = { line: '#2563eb', fill: 'rgba(37, 99, 235, 0.12)', grid: '#e5e7eb',
  text: '#6b7280', font: '11px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace' };

const $ = (id) => document.getElementById(id);
const ui = {
  connection: $('connection'), connectionAge: $('connection-age'),
  published: $('stat-published'), rate: $('stat-rate'),
  pluginCount: $('stat-plugins'), rejected: $('stat-rejected'),
  chart: $('rate-chart'), pluginRows: $('plugin-rows'), pluginsEmpty: $('plugins-empty'),
  loadFailures: $('load-failures'), loadFailuresPanel: $('load-failures-panel'), log: $('log'),
  startupPanel: $('startup-panel'), startupCount: $('startup-count'), startupLoading: $('startup-loading'),
  form: $('filter-form'), pattern: $('filter-pattern'), correlation: $('filter-correlation'),
  clear: $('filter-clear'), pause: $('pause-tail'), activeFilter: $('filter-active'),
  filterError: $('filter-error'),
  skipped: $('events-skipped'), eventRows: $('event-rows'), tailEmpty: $('tail-empty'),
  tabs: { overview: $('tab-overview'), runs: $('tab-runs') },
  views: { overview: $('view-overview'), runs: $('view-runs') },
  runsSource: $('runs-source'), runsStatus: $('runs-status'), runsAgent: $('runs-agent'),
  runsCount: $('runs-count'), runsError: $('runs-error'), runRows: $('run-rows'), runsEmpty: $('runs-empty'),
  runDetail: $('run-detail'), runId: $('run-id'), runClose: $('run-close'), runSummary: $('run-summary'),
  runErrors: $('run-errors'), timeline: $('timeline'), timelineInfo: $('timeline-info'),
  timelineEmpty: $('timeline-empty'), timelineMore: $('timeline-more'), timelineNote: $('timeline-note'),
};

const state = {
  source: null, filter: { pattern: '', correlation_id: '' }, reconnectTimer: null,
  lastSnapshotAt: 0, lastRate: [], loadFailuresKey: '',
  plugins: new Map(), // plugin name -> row record
  tailIds: new Set(), // ids of the events currently shown in the tail
  view: 'overview', // the view asked for (Runs shows only once a plugin answers runs queries)
};

// The Runs view: which plugin answers, the table, the open run and its timeline.
const runs = {
  source: null, // name of the plugin answering {"runs": …}; null: the view is hidden
  candidatesKey: '', // the queryable plugins (name@version) the source was picked among
  probe: 0, // token of the latest detection; older ones give up
  filter: { status: '', agent: '' },
  rows: new Map(), // run id -> row record
  agents: [], agentsKey: '',
  inFlight: false, lastQueryAt: 0, pumpTimer: null,
  listedAt: 0, listKey: '', agentsAt: 0,
  open: null, // the open run: { id, summary, summaryAt, listed, events, lastSeq, truncated, ... }
  expanded: new Set(), // timeline rows the operator opened (span or event keys)
};

// ---- DOM helpers -----------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

const setText = (node, text) => { if (node.textContent !== text) node.textContent = text; };
const setAttr = (node, name, value) => { if (node.getAttribute(name) !== value) node.setAttribute(name, value); };
const setClass = (node, cls, on) => node.classList.toggle(cls, Boolean(on));

function setCount(node, value, alertClass) {
  setText(node, fmtInt(value));
  setClass(node, alertClass, value > 0);
}

// ---- formatting ------------------------------------------------------------

const intFormat = new Intl.NumberFormat('en-US');
const fmtInt = (n) => (n == null ? '—' : intFormat.format(n));
const fmtMiB = (n) => (n / 1048576).toFixed(1);
const pad = (n, width = 2) => String(n).padStart(width, '0');

function fmtBytes(n) {
  if (n == null) return '—';
  const [div, unit] = [[1073741824, 'GiB'], [1048576, 'MiB'], [1024, 'KiB']].find(([d]) => n >= d) || [];
  return div ? `${(n / div).toFixed(1)} ${unit}` : `${n} B`;
}

function fmtMicros(us) {
  if (us == null) return '—';
  if (us < 1000) return `${us < 10 ? us.toFixed(1) : Math.round(us)} µs`;
  if (us < 1e6) return `${(us / 1000).toFixed(us < 1e4 ? 2 : 1)} ms`;
  return `${(us / 1e6).toFixed(2)} s`;
}

function fmtSi(n) {
  if (n == null) return '—';
  const [div, unit] = [[1e9, 'G'], [1e6, 'M'], [1e3, 'k']].find(([d]) => Math.abs(n) >= d) || [];
  return div ? `${(n / div).toFixed(1)} ${unit}` : String(Math.round(n));
}

const fmtRate = (rate) => (rate == null ? '—'
  : `${rate < 10 ? rate.toFixed(1) : intFormat.format(Math.round(rate))}/s`);

function fmtDuration(ms) {
  const s = ms / 1000;
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
}

function fmtClock(ms, withMillis = false) {
  const d = new Date(ms);
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return withMillis ? `${hms}.${pad(d.getMilliseconds(), 3)}` : hms;
}

function fmtBacktrace(frames) {
  if (!frames || frames.length === 0) return '(no backtrace)';
  const width = String(frames.length - 1).length;
  return frames.map((frame, i) => `${String(i).padStart(width)}  ${frame}`).join('\n');
}

// ---- connection ------------------------------------------------------------

function connect(filter) {
  disconnect();
  state.filter = filter;
  const source = new EventSource(`/dashboard/stream?${filterParams(filter)}`);
  source.addEventListener('snapshot', onSnapshotMessage);
  source.addEventListener('open', updateConnection);
  source.addEventListener('error', () => {
    // EventSource retries by itself, except after an HTTP error: a rejected
    // filter (400) is shown to the operator, anything else is retried here.
    if (source === state.source && source.readyState === EventSource.CLOSED) {
      filterRejection(filter).then((reason) => {
        if (source !== state.source) return;
        setFilterError(reason);
        if (!reason) state.reconnectTimer = setTimeout(() => connect(filter), RECONNECT_MS);
      });
    }
    updateConnection();
  });
  state.source = source;
  updateConnection();
}

// Why the server refuses this filter (the same check on the one-shot endpoint), or null.
async function filterRejection(filter) {
  try {
    const response = await fetch(`/dashboard/snapshot?${filterParams(filter)}`);
    if (response.status === 400) return String((await response.json()).error || 'invalid filter');
  } catch (err) { /* unreachable or not JSON: treat as transient */ }
  return null;
}

function setFilterError(reason) {
  setText(ui.filterError, reason ? `filter rejected: ${reason}` : '');
  ui.filterError.hidden = !reason;
}

function disconnect() {
  clearTimeout(state.reconnectTimer);
  if (state.source) state.source.close();
  state.source = null;
}

function updateConnection() {
  const open = state.source !== null && state.source.readyState === EventSource.OPEN;
  const age = state.lastSnapshotAt ? Date.now() - state.lastSnapshotAt : null;
  const status = open && age !== null && age < STALE_MS ? 'live' : 'reconnecting';
  setText(ui.connection, status);
  setAttr(ui.connection, 'data-status', status);
  setText(ui.connectionAge, status === 'live' ? ''
    : age === null ? 'waiting for first snapshot' : `last snapshot ${fmtDuration(age)} ago`);
}

function onSnapshotMessage(message) {
  let snap;
  try { snap = JSON.parse(message.data); } catch (err) { return console.warn('plugbus dashboard: bad snapshot', err); }
  state.lastSnapshotAt = Date.now();
  render(snap, state.lastSnapshotAt);
}

function render(snap, arrival) {
  const plugins = snap.plugins || [];
  state.lastRate = snap.rate || [];
  renderTotals(snap, plugins);
  renderPlugins(plugins, arrival);
  renderLoadFailures(snap.load_failures || []);
  renderStartup(snap.startup);
  renderLog(snap.log, plugins);
  renderEvents(snap.events || [], snap.events_skipped || 0);
  considerRunsSources(plugins);
  if (runsVisible()) { pumpRuns(); pollTimeline(); }
  updateConnection();
  drawChart(state.lastRate); // last: the log panel showing up changes the chart's width
}

function tick() {
  updateConnection();
  const now = Date.now();
  for (const row of state.plugins.values()) updateCountdown(row, now);
}

// ---- header totals and rate chart ------------------------------------------

function renderTotals(snap, plugins) {
  const rate = state.lastRate;
  setText(ui.published, fmtInt(snap.published));
  setText(ui.rate, fmtRate(rate.length ? rate[rate.length - 1][1] : null));
  setText(ui.pluginCount, fmtInt(plugins.length));
  setCount(ui.rejected, snap.schema_rejected, 'bad');
}

function niceCeil(value) {
  const step = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 2.5, 5, 10].map((m) => m * step).find((v) => v >= value);
}

function drawChart(rate) {
  const canvas = ui.chart;
  const { width, height } = canvas.getBoundingClientRect();
  if (!width || !height) return;
  const dpr = window.devicePixelRatio || 1;
  const size = { width: Math.round(width * dpr), height: Math.round(height * dpr) };
  if (canvas.width !== size.width || canvas.height !== size.height) Object.assign(canvas, size);
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const plot = { left: 56, right: width - 8, top: 10, bottom: height - 20 };
  const end = rate.length ? rate[rate.length - 1][0] : Date.now() / 1000;
  const yMax = niceCeil(Math.max(1, ...rate.map((point) => point[1])));
  drawAxes(ctx, plot, yMax);
  drawSeries(ctx, plot, rate, end - CHART_WINDOW_S, yMax);
}

function drawAxes(ctx, plot, yMax) {
  const middle = (plot.top + plot.bottom) / 2;
  ctx.strokeStyle = CHART.grid;
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (const y of [plot.top, middle, plot.bottom].map((v) => Math.round(v) + 0.5)) {
    ctx.moveTo(plot.left, y);
    ctx.lineTo(plot.right, y);
  }
  ctx.stroke();
  ctx.fillStyle = CHART.text;
  ctx.font = CHART.font;
  const labels = [
    [fmtRate(yMax), plot.left - 6, plot.top, 'right', 'middle'],
    [fmtRate(yMax / 2), plot.left - 6, middle, 'right', 'middle'],
    ['0', plot.left - 6, plot.bottom, 'right', 'middle'],
    ['5 min ago', plot.left, plot.bottom + 5, 'left', 'top'],
    ['now', plot.right, plot.bottom + 5, 'right', 'top'],
  ];
  for (const [text, x, y, align, baseline] of labels) {
    ctx.textAlign = align;
    ctx.textBaseline = baseline;
    ctx.fillText(text, x, y);
  }
}

function drawSeries(ctx, plot, rate, start, yMax) {
  const visible = rate.filter((point) => point[0] >= start);
  if (visible.length === 0) return;
  const x = (t) => plot.left + ((t - start) / CHART_WINDOW_S) * (plot.right - plot.left);
  const y = (v) => plot.bottom - (v / yMax) * (plot.bottom - plot.top);
  ctx.beginPath();
  visible.forEach(([t, v], i) => (i === 0 ? ctx.moveTo(x(t), y(v)) : ctx.lineTo(x(t), y(v))));
  ctx.strokeStyle = CHART.line;
  ctx.lineWidth = 1.5;
  ctx.stroke();
  ctx.lineTo(x(visible[visible.length - 1][0]), plot.bottom);
  ctx.lineTo(x(visible[0][0]), plot.bottom);
  ctx.fillStyle = CHART.fill;
  ctx.fill();
}

// ---- plugin table ----------------------------------------------------------

function meter() {
  const text = el('span', { class: 'meter-text' });
  const fill = el('span', { class: 'meter-fill' });
  return { text, fill, node: el('span', { class: 'meter' }, text, el('span', { class: 'meter-bar' }, fill)) };
}

function updateMeter(m, used, capacity, text) {
  const fraction = capacity > 0 ? Math.min(Math.max(used / capacity, 0), 1) : 0;
  setText(m.text, text);
  const width = `${(fraction * 100).toFixed(1)}%`; // CSSOM, so a strict CSP still allows it
  if (m.fill.style.width !== width) m.fill.style.width = width;
  setClass(m.node, 'hot', fraction > 0.8);
}

function createPluginRow(name) {
  const tr = el('tr', { 'data-plugin': name });
  const cells = {};
  for (const field of PLUGIN_COLUMNS) tr.append((cells[field] = el('td', { 'data-field': field })));
  for (const field of NUMERIC_COLUMNS) cells[field].className = 'num';
  const parts = {
    subs: el('span', { class: 'subs' }),
    reloadError: el('span', { class: 'reload-error', hidden: '' }),
    badge: el('span', { class: 'badge' }),
    countdown: el('span', { class: 'countdown' }),
    delivered: el('span'), ok: el('span'), errors: el('span'),
    queue: meter(), memory: meter(),
  };
  cells.name.append(el('span', { class: 'plugin-name', text: name }), parts.subs, parts.reloadError);
  cells.state.append(parts.badge, parts.countdown);
  cells.counts.append(parts.delivered, ' / ', parts.ok, ' / ', parts.errors);
  cells.queue.append(parts.queue.node);
  cells.memory.append(parts.memory.node);
  return { tr, cells, parts, failure: null, failureOpen: true, retryDeadline: null };
}

function updatePluginRow(row, p, arrival) {
  const { cells, parts } = row;
  setText(parts.subs, (p.subscriptions || []).join(', '));
  setText(parts.reloadError, p.reload_error ? `reload failed: ${p.reload_error}` : '');
  parts.reloadError.hidden = !p.reload_error;
  updateStateCell(row, p, arrival);
  const signed = p.signed_by ? ` · signed ${p.signed_by}` : '';
  const h = p.http;
  const http = h ? ` · http ${fmtInt(h.sent)} sent, ${fmtInt(h.refused)} refused, ${fmtInt(h.failed)} failed, ${fmtInt(h.replayed)} replayed` : '';
  setText(cells.language, `${p.language || 'unknown'} · ${fmtBytes(p.size_bytes)}${signed}${http}`);
  setAttr(cells.language, 'title', p.version ? `version ${p.version}` : '');
  setText(parts.delivered, fmtInt(p.delivered));
  setText(parts.ok, fmtInt(p.ok));
  setCount(parts.errors, p.errors, 'bad');
  updateFailuresCell(cells.failures, p.failures);
  setCount(cells.dropped, p.dropped, 'bad');
  setCount(cells.restarts, p.restarts, 'warn');
  updateMeter(parts.queue, p.queue_depth, p.queue_capacity,
    `${fmtInt(p.queue_depth)} / ${fmtInt(p.queue_capacity)}`);
  const noLatency = p.latency_p50_us == null && p.latency_p99_us == null;
  setText(cells.latency, noLatency ? '—' : `${fmtMicros(p.latency_p50_us)} / ${fmtMicros(p.latency_p99_us)}`);
  setText(cells.fuel, fmtSi(p.fuel_per_event));
  const used = p.memory_bytes || 0;
  const limit = p.memory_limit_bytes;
  updateMeter(parts.memory, used, limit, limit ? `${fmtMiB(used)} / ${fmtMiB(limit)} MiB` : `${fmtMiB(used)} MiB`);
  setCount(cells.dead_letters, p.dead_letters, 'warn');
  updateFailureRow(row, p.last_failure);
}

// Non-zero failure kinds, e.g. "panic 2, out_of_fuel 1"; each item kept on one line.
function updateFailuresCell(cell, failures) {
  const items = Object.entries(failures || {}).filter(([, n]) => n > 0).map(([kind, n]) => `${kind} ${fmtInt(n)}`);
  const text = items.length ? items.join(', ') : '—';
  if (cell.textContent === text) return;
  const spans = items.map((item, i) => [i ? ', ' : '', el('span', { class: 'failure-count', text: item })]);
  cell.replaceChildren(...(items.length ? spans.flat() : ['—']));
  setClass(cell, 'bad', items.length > 0);
}

function updateStateCell(row, p, arrival) {
  const name = STATES.includes(p.state) ? p.state : 'unknown';
  setText(row.parts.badge, String(p.state || 'unknown'));
  setAttr(row.parts.badge, 'class', `badge state-${name}`);
  setAttr(row.tr, 'data-state', name);
  const retry = p.quarantine_retry_in_ms;
  row.retryDeadline = name === 'quarantined' && retry != null ? arrival + retry : null;
  updateCountdown(row, Date.now());
}

function updateCountdown(row, now) {
  const left = row.retryDeadline === null ? null : row.retryDeadline - now;
  setText(row.parts.countdown, left === null ? '' : left <= 0 ? ' · probe due' : ` · retry in ${fmtDuration(left)}`);
}

function createFailureRow(row) {
  const parts = {
    kind: el('span', { class: 'failure-kind' }),
    at: el('span', { class: 'failure-time' }),
    message: el('span', { class: 'failure-message' }),
    event: el('span', { class: 'failure-event mono' }),
    eventId: el('span', { class: 'failure-event-id mono' }),
    backtrace: el('pre', { class: 'backtrace' }),
  };
  const summary = el('summary', {}, parts.kind, ' ', parts.at, ' ', parts.message);
  const meta = el('div', { class: 'failure-meta' }, 'event ', parts.event, ' · id ', parts.eventId);
  const details = el('details', {}, summary, meta, parts.backtrace);
  details.open = row.failureOpen;
  details.addEventListener('toggle', () => { row.failureOpen = details.open; });
  const td = el('td', { colspan: PLUGIN_COLUMNS.length }, details);
  return { tr: el('tr', { class: 'failure', 'data-failure-of': row.tr.dataset.plugin }, td), parts };
}

function updateFailureRow(row, failure) {
  if (!failure) {
    row.failure?.tr.remove();
    row.failure = null;
    return;
  }
  if (!row.failure) row.failure = createFailureRow(row);
  const f = row.failure.parts;
  setText(f.kind, failure.kind || 'failure');
  setText(f.at, failure.at_unix_ms ? fmtClock(failure.at_unix_ms) : '');
  setText(f.message, failure.message || '');
  setAttr(f.message, 'title', failure.message || '');
  setText(f.event, failure.event || '—');
  setText(f.eventId, failure.event_id || '—');
  setText(f.backtrace, fmtBacktrace(failure.backtrace));
}

function renderPlugins(plugins, arrival) {
  const present = new Set();
  for (const p of plugins) {
    present.add(p.name);
    if (!state.plugins.has(p.name)) state.plugins.set(p.name, createPluginRow(p.name));
    updatePluginRow(state.plugins.get(p.name), p, arrival);
  }
  for (const [name, row] of state.plugins) {
    if (present.has(name)) continue;
    row.tr.remove();
    row.failure?.tr.remove();
    state.plugins.delete(name);
  }
  placePluginRows(plugins);
  ui.pluginsEmpty.hidden = plugins.length > 0;
}

// Keeps rows in snapshot order, moving a row only when it is out of place.
function placePluginRows(plugins) {
  const body = ui.pluginRows;
  let cursor = body.firstElementChild;
  const place = (tr) => {
    if (tr !== cursor) body.insertBefore(tr, cursor);
    else cursor = cursor.nextElementSibling;
  };
  for (const p of plugins) {
    const row = state.plugins.get(p.name);
    place(row.tr);
    if (row.failure) place(row.failure.tr);
  }
}

// The plugins still loading while the host starts (it listens at once).
function renderStartup(startup) {
  const loading = startup && !startup.ready ? (startup.loading || []) : [];
  ui.startupPanel.hidden = loading.length === 0;
  if (loading.length === 0) return;
  const note = startup.catches_up ? 'events sent meanwhile are caught up from the log'
    : 'events are refused (503) until they are in';
  setText(ui.startupCount, `${fmtInt(loading.length)} plugin${loading.length === 1 ? '' : 's'} (${note})`);
  const names = loading.map((path) => String(path).split('/').pop());
  const key = names.join('\n');
  if (ui.startupLoading.dataset.key === key) return;
  ui.startupLoading.dataset.key = key;
  ui.startupLoading.replaceChildren(...names.map((name) => el('li', { class: 'mono', text: name })));
}

function renderLoadFailures(failures) {
  const key = JSON.stringify(failures);
  if (key === state.loadFailuresKey) return;
  state.loadFailuresKey = key;
  ui.loadFailures.replaceChildren(...failures.map((f) => el('li', {},
    el('span', { class: 'mono', text: f.path || '?' }), ': ', el('span', { text: f.reason || '' }))));
  ui.loadFailuresPanel.hidden = failures.length === 0;
}

// ---- log panel -------------------------------------------------------------

function renderLog(log, plugins) {
  ui.log.hidden = !log;
  if (!log) return;
  const field = (name) => ui.log.querySelector(`[data-field="${name}"]`);
  setText(field('dir'), log.dir || '—');
  setText(field('durability'), log.durability || '—');
  for (const name of ['last_seq', 'written_seq', 'durable_seq', 'queued']) setText(field(name), fmtInt(log[name]));
  setCount(field('lost'), log.lost, 'bad');
  setText(field('failed'), log.failed == null ? 'no' : String(log.failed));
  setClass(field('failed'), 'bad', log.failed != null);
  setCount(field('dead_letters'), plugins.reduce((sum, p) => sum + (p.dead_letters || 0), 0), 'warn');
}

// ---- event tail ------------------------------------------------------------

function createEventRow(ev) {
  const ms = ev.time_unix_nanos == null ? null : ev.time_unix_nanos / 1e6;
  const cell = (field, text, extra) => el('td', { 'data-field': field, text, ...extra });
  // The server cuts long payloads to a preview and says so.
  const payload = (ev.payload || '') + (ev.truncated ? '…' : '');
  return el('tr', { 'data-event-id': ev.id || '' },
    cell('time', ms == null ? '—' : fmtClock(ms, true), { class: 'mono' }),
    cell('seq', ev.seq == null ? '—' : String(ev.seq), { class: 'num' }),
    cell('name', ev.name || '', { class: 'mono', title: ev.source ? `source: ${ev.source}` : '' }),
    cell('correlation_id', ev.correlation_id || '', { class: 'mono corr' }),
    cell('payload', payload, { class: 'payload', title: payload }));
}

function renderEvents(events, skipped) {
  setText(ui.skipped, skipped > 0 ? `${fmtInt(skipped)} events skipped (rate too high for the tail)` : '');
  ui.skipped.hidden = !(skipped > 0);
  if (ui.pause.checked || events.length === 0) return;
  const fragment = document.createDocumentFragment();
  for (const ev of events) { // oldest first: each newer row goes above the previous one
    if (ev.id && state.tailIds.has(ev.id)) continue; // resent after a reconnect
    if (ev.id) state.tailIds.add(ev.id);
    fragment.prepend(createEventRow(ev));
  }
  ui.eventRows.prepend(fragment);
  trimTail();
}

function trimTail() {
  const body = ui.eventRows;
  while (body.rows.length > TAIL_MAX) {
    state.tailIds.delete(body.lastElementChild.dataset.eventId);
    body.lastElementChild.remove();
  }
  ui.tailEmpty.hidden = body.rows.length > 0;
}

function clearTail() {
  ui.eventRows.replaceChildren();
  state.tailIds.clear();
  trimTail();
}

// ---- runs view ---------------------------------------------------------------
// Which plugin answers: among the plugins that export `query` (`queryable` in the
// snapshot) and are not unloaded, `agent-runs` first and then by name, the first
// that answers {"runs": {"limit": 1}} with a `runs` array. Picked again whenever
// that set of plugins (or a version) changes, or the picked one stops answering.

async function queryPlugin(name, request) {
  try {
    const response = await fetch(`/plugins/${encodeURIComponent(name)}/query`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(request),
    });
    const body = await response.json().catch(() => null);
    if (response.ok && body && typeof body === 'object') return { ok: true, answer: body.answer };
    const error = body && typeof body.error === 'string' ? body.error : `HTTP ${response.status}`;
    return { ok: false, status: response.status, kind: body && body.kind, error };
  } catch (err) {
    return { ok: false, status: 0, error: String(err) };
  }
}

// The plugin no longer answers at all (unloaded, replaced by one without `query`).
const sourceGone = (result) => result.status === 404 || result.status === 501;
// Worth asking again later (busy, out of time, unreachable).
const transient = (result) => result.status === 0 || result.status >= 503;

function considerRunsSources(plugins) {
  const candidates = plugins.filter((p) => p.queryable && p.state !== 'unloaded');
  candidates.sort((a, b) => {
    if ((a.name === 'agent-runs') !== (b.name === 'agent-runs')) return a.name === 'agent-runs' ? -1 : 1;
    return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
  });
  const key = candidates.map((p) => `${p.name}@${p.version}`).join(' ');
  if (key === runs.candidatesKey) return;
  runs.candidatesKey = key;
  detectRunsSource(candidates.map((p) => p.name));
}

async function detectRunsSource(names) {
  const probe = ++runs.probe;
  let found = null;
  let retry = false;
  for (const name of names) {
    const result = await queryPlugin(name, { runs: { limit: 1 } });
    if (probe !== runs.probe) return; // a newer detection runs
    if (result.ok && result.answer && Array.isArray(result.answer.runs)) { found = name; break; }
    if (!result.ok && transient(result)) retry = true;
  }
  setRunsSource(found);
  // A candidate that could not answer now may later: look again in a while.
  if (!found && retry) setTimeout(() => { if (probe === runs.probe) runs.candidatesKey = ''; }, 5000);
}

function setRunsSource(name) {
  const changed = runs.source !== name;
  runs.source = name;
  ui.tabs.runs.hidden = !name;
  setText(ui.runsSource, name ? `from plugin ${name}` : '');
  if (changed) {
    runs.listedAt = 0;
    runs.agentsAt = 0;
    showView();
  }
}

const runsVisible = () => runs.source !== null && state.view === 'runs' && !document.hidden;

function showView() {
  const view = state.view === 'runs' && runs.source ? 'runs' : 'overview';
  for (const name of ['overview', 'runs']) {
    ui.views[name].hidden = name !== view;
    setAttr(ui.tabs[name], 'aria-selected', String(name === view));
  }
  if (view === 'overview') drawChart(state.lastRate);
  else { pumpRuns(); pollTimeline(true); }
}

function setView(view) {
  state.view = view;
  writeLocation();
  showView();
}

// One plugin query at a time, at most one a second, only while the view shows:
// the run list, or now and then the agents (for the filter) or the open run's summary.
function pumpRuns() {
  clearTimeout(runs.pumpTimer);
  runs.pumpTimer = null;
  if (!runsVisible() || runs.inFlight) return;
  const now = Date.now();
  const wait = runs.lastQueryAt + RUNS_QUERY_MS - now;
  if (wait > 0) {
    runs.pumpTimer = setTimeout(pumpRuns, wait);
    return;
  }
  const source = runs.source;
  const open = runs.open;
  let job;
  if (runs.listedAt && (!runs.agentsAt || now - runs.agentsAt >= AGENTS_EVERY_MS)) {
    job = queryPlugin(source, { agents: true }).then((result) => {
      runs.agentsAt = Date.now();
      if (result.ok && result.answer) renderAgents(result.answer.agents);
      return result;
    });
  } else if (runs.listedAt && open && !open.listed && now - open.summaryAt >= RUN_SUMMARY_EVERY_MS) {
    job = queryPlugin(source, { run: open.id }).then((result) => {
      open.summaryAt = Date.now();
      if (runs.open === open) {
        if (result.ok && result.answer) renderRunSummary(result.answer);
        // The plugin does not know the run (evicted, or never one of its runs): the timeline may still show it.
        else if (result.status === 422) {
          setText(ui.runSummary.querySelector('[data-field="status"]'), 'not known to the plugin');
        }
      }
      // Only a failure of the plugin itself concerns the list.
      return result.status === 422 ? { ok: true } : result;
    });
  } else {
    const filter = { ...runs.filter };
    const request = { limit: RUNS_LIMIT };
    if (filter.status) request.status = filter.status;
    if (filter.agent) request.agent = filter.agent;
    job = queryPlugin(source, { runs: request }).then((result) => {
      runs.listedAt = Date.now();
      // An answer for a filter that changed meanwhile is dropped (the next tick asks again).
      if (result.ok && filter.status === runs.filter.status && filter.agent === runs.filter.agent) {
        renderRuns(Array.isArray(result.answer && result.answer.runs) ? result.answer.runs : []);
      }
      return result;
    });
  }
  runs.inFlight = true;
  runs.lastQueryAt = now;
  job.then((result) => {
    runs.inFlight = false;
    setRunsError(result.ok ? null : result.error);
    if (!result.ok && sourceGone(result) && source === runs.source) {
      runs.candidatesKey = ''; // pick again on the next snapshot
      setRunsSource(null);
    }
  });
}

function setRunsError(reason) {
  setText(ui.runsError, reason ? `query failed: ${reason}` : '');
  ui.runsError.hidden = !reason;
}

const str = (v) => (typeof v === 'string' ? v : v == null ? '' : String(v));
const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);

function fmtCost(usd) {
  const n = num(usd);
  if (n === null) return '—';
  return n === 0 ? '$0' : n < 1 ? `$${n.toFixed(4)}` : `$${n.toFixed(2)}`;
}

function fmtMs(ms) {
  const n = num(ms);
  if (n === null) return '—';
  if (n === 0) return '0 ms';
  if (n < 1000) return `${n < 10 ? n.toFixed(1) : Math.round(n)} ms`;
  return fmtDuration(n);
}

// A span of nanoseconds (a relative time or a duration) for people.
function fmtNanos(ns) {
  if (ns < 1e3) return `${Math.round(ns)} ns`;
  if (ns < 1e6) return `${(ns / 1e3).toFixed(ns < 1e4 ? 2 : 1)} µs`;
  if (ns < 1e9) return `${(ns / 1e6).toFixed(ns < 1e7 ? 2 : 1)} ms`;
  return ns < 6e10 ? `${(ns / 1e9).toFixed(3)} s` : fmtDuration(ns / 1e6);
}

function statusBadge(status) {
  const name = RUN_STATUSES.includes(status) ? status : 'unknown';
  return { text: str(status) || 'unknown', cls: `badge run-${name}` };
}

function createRunRow(id) {
  const tr = el('tr', { 'data-run': id, tabindex: '0', title: 'open this run' });
  const cells = {};
  for (const field of ['run', 'status', 'agent', 'model_calls', 'tokens', 'cost_usd', 'tool_calls', 'errors',
    'duration_ms', 'last']) {
    tr.append((cells[field] = el('td', { 'data-field': field })));
  }
  for (const field of ['model_calls', 'tokens', 'cost_usd', 'tool_calls', 'errors', 'duration_ms']) {
    cells[field].className = 'num';
  }
  cells.run.className = 'mono run-link';
  cells.run.textContent = id;
  cells.agent.className = 'agent';
  cells.last.className = 'mono';
  const badge = el('span', { class: 'badge' });
  cells.status.append(badge);
  return { tr, cells, badge, data: null };
}

function updateRunRow(row, r) {
  const { cells } = row;
  row.data = r;
  const badge = statusBadge(r.status);
  setText(row.badge, badge.text);
  setAttr(row.badge, 'class', badge.cls);
  setAttr(row.tr, 'data-status', str(r.status));
  setText(cells.agent, str(r.agent));
  setAttr(cells.agent, 'title', str(r.agent));
  setText(cells.model_calls, fmtInt(num(r.model_calls)));
  setText(cells.tokens, fmtInt(num(r.tokens)));
  setText(cells.cost_usd, fmtCost(r.cost_usd));
  setText(cells.tool_calls, fmtInt(num(r.tool_calls)));
  const errors = Array.isArray(r.errors) ? r.errors.length : 0;
  setCount(cells.errors, errors, 'bad');
  setAttr(cells.errors, 'title', Array.isArray(r.errors) ? r.errors.map(str).join('\n') : '');
  setText(cells.duration_ms, fmtMs(r.duration_ms));
  const last = num(r.last_ns);
  setText(cells.last, last ? fmtClock(last / 1e6, true) : '—');
  setClass(row.tr, 'selected', runs.open !== null && runs.open.id === row.tr.dataset.run);
}

function renderRuns(list) {
  const present = new Set();
  const order = [];
  const { status, agent } = runs.filter;
  for (const r of list) {
    const id = str(r && r.run);
    if (!id || present.has(id)) continue;
    // A plugin that ignores a filter field still gets filtered here.
    if ((status && r.status !== status) || (agent && r.agent !== agent)) continue;
    present.add(id);
    order.push(id);
    if (!runs.rows.has(id)) runs.rows.set(id, createRunRow(id));
    updateRunRow(runs.rows.get(id), r);
    if (runs.open && runs.open.id === id) {
      runs.open.listed = true;
      renderRunSummary(r);
    }
  }
  if (runs.open && !present.has(runs.open.id)) runs.open.listed = false;
  for (const [id, row] of runs.rows) {
    if (present.has(id)) continue;
    row.tr.remove();
    runs.rows.delete(id);
  }
  // Newest first, as the plugin answers; move a row only when it is out of place.
  let cursor = ui.runRows.firstElementChild;
  for (const id of order) {
    const tr = runs.rows.get(id).tr;
    if (tr !== cursor) ui.runRows.insertBefore(tr, cursor);
    else cursor = cursor.nextElementSibling;
  }
  ui.runsEmpty.hidden = order.length > 0;
  const filtered = runs.filter.status || runs.filter.agent;
  setText(ui.runsEmpty, filtered ? 'No runs match the filter.' : 'No runs yet.');
  setText(ui.runsCount, order.length >= RUNS_LIMIT ? `newest ${fmtInt(RUNS_LIMIT)} runs`
    : `${fmtInt(order.length)} run${order.length === 1 ? '' : 's'}`);
  const agents = new Set(runs.agents);
  if (list.some((r) => r && typeof r.agent === 'string' && !agents.has(r.agent))) runs.agentsAt = 0;
}

function renderAgents(agents) {
  runs.agents = agents && typeof agents === 'object' ? Object.keys(agents).sort() : [];
  syncAgentOptions();
}

// The agent filter's options: every agent known, and the one chosen even if none has runs now.
function syncAgentOptions() {
  const names = [...runs.agents];
  if (runs.filter.agent && !names.includes(runs.filter.agent)) names.push(runs.filter.agent);
  const key = names.join('\n');
  if (key !== runs.agentsKey) {
    runs.agentsKey = key;
    ui.runsAgent.replaceChildren(el('option', { value: '', text: 'all agents' }),
      ...names.map((name) => el('option', { value: name, text: name })));
  }
  ui.runsAgent.value = runs.filter.agent;
}

// ---- one run: summary and timeline ---------------------------------------------

function openRun(id) {
  if (runs.open && runs.open.id === id) return;
  runs.open = {
    id, listed: runs.rows.has(id), summaryAt: 0, events: [], ids: new Set(), lastSeq: 0,
    truncated: false, from: '', historyCapacity: null, fetching: false, fetchedAt: 0, error: null, loaded: false,
  };
  runs.expanded.clear();
  setText(ui.runId, id);
  ui.runDetail.hidden = false;
  for (const field of ['status', 'agent', 'model_calls', 'tokens', 'cost_usd', 'tool_calls', 'errors',
    'duration_ms', 'tools']) {
    setText(ui.runSummary.querySelector(`[data-field="${field}"]`), '…');
  }
  ui.runErrors.replaceChildren();
  ui.runErrors.dataset.key = '';
  ui.runErrors.hidden = true;
  if (runs.rows.has(id)) renderRunSummary(runs.rows.get(id).data); // the figures the table has
  ui.timeline.replaceChildren();
  setText(ui.timelineInfo, 'loading…');
  ui.timelineEmpty.hidden = true;
  ui.timelineMore.hidden = true;
  setText(ui.timelineNote, '');
  for (const [rowId, row] of runs.rows) setClass(row.tr, 'selected', rowId === id);
  writeLocation();
  fetchTimeline(runs.open);
  if (!runs.open.listed) pumpRuns();
}

function closeRun() {
  runs.open = null;
  ui.runDetail.hidden = true;
  ui.timeline.replaceChildren();
  for (const row of runs.rows.values()) setClass(row.tr, 'selected', false);
  writeLocation();
}

function renderRunSummary(r) {
  if (!r || typeof r !== 'object') return;
  const field = (name) => ui.runSummary.querySelector(`[data-field="${name}"]`);
  const badge = statusBadge(r.status);
  const status = field('status');
  if (status.textContent !== badge.text || !status.firstElementChild) {
    status.replaceChildren(el('span', { class: badge.cls, text: badge.text }));
  }
  setText(field('agent'), str(r.agent) || '—');
  setText(field('model_calls'), fmtInt(num(r.model_calls)));
  setText(field('tokens'), fmtInt(num(r.tokens)));
  setText(field('cost_usd'), fmtCost(r.cost_usd));
  setText(field('tool_calls'), fmtInt(num(r.tool_calls)));
  const errors = Array.isArray(r.errors) ? r.errors.map(str) : [];
  setCount(field('errors'), errors.length, 'bad');
  setText(field('duration_ms'), fmtMs(r.duration_ms));
  setText(field('tools'), Array.isArray(r.tools) && r.tools.length ? r.tools.map(str).join(', ') : '—');
  const key = errors.join('\n');
  if (ui.runErrors.dataset.key !== key) {
    ui.runErrors.dataset.key = key;
    ui.runErrors.replaceChildren(...errors.map((e) => el('li', { text: e })));
    ui.runErrors.hidden = errors.length === 0;
  }
}

// Reads the open run's events: from the start, then (after=the last seq) what is new.
async function fetchTimeline(open) {
  if (open.fetching) return;
  open.fetching = true;
  open.fetchedAt = Date.now();
  const params = new URLSearchParams({ limit: String(TIMELINE_PAGE) });
  if (open.lastSeq) params.set('after', String(open.lastSeq));
  let body = null;
  let error = null;
  try {
    const response = await fetch(`/runs/${encodeURIComponent(open.id)}/events?${params}`);
    body = await response.json().catch(() => null);
    if (!response.ok) error = (body && typeof body.error === 'string') ? body.error : `HTTP ${response.status}`;
  } catch (err) {
    error = String(err);
  }
  open.fetching = false;
  if (runs.open !== open) return;
  if (error) {
    open.error = error;
    if (!open.loaded) {
      setText(ui.timelineInfo, '');
      setText(ui.timelineEmpty, error);
      ui.timelineEmpty.hidden = false;
    }
    return;
  }
  open.error = null;
  open.loaded = true;
  open.from = str(body && body.from);
  open.historyCapacity = num(body && body.history_capacity);
  let added = 0;
  for (const ev of Array.isArray(body && body.events) ? body.events : []) {
    if (!ev || typeof ev !== 'object' || open.events.length >= TIMELINE_MAX) continue;
    const id = str(ev.id);
    if (id && open.ids.has(id)) continue;
    if (id) open.ids.add(id);
    open.events.push(ev);
    added += 1;
    const seq = num(ev.seq);
    if (seq !== null && seq > open.lastSeq) open.lastSeq = seq;
  }
  open.truncated = Boolean(body && body.truncated);
  if (added > 0 || !ui.timeline.firstElementChild) renderTimeline(open);
  renderTimelineFoot(open);
}

// Live: what is new of the open run, every few seconds while the view shows.
function pollTimeline(now = false) {
  const open = runs.open;
  if (!open || !runsVisible() || open.fetching || open.truncated || !open.loaded) return;
  if (open.events.length >= TIMELINE_MAX) return;
  if (now || Date.now() - open.fetchedAt >= TIMELINE_POLL_MS) fetchTimeline(open);
}

function renderTimelineFoot(open) {
  const full = open.events.length >= TIMELINE_MAX;
  ui.timelineMore.hidden = !open.truncated || full;
  const from = open.from === 'log' ? 'from the event log'
    : open.from === 'history' ? `from the last ${fmtInt(open.historyCapacity)} events kept in memory (no --log)` : '';
  setText(ui.timelineInfo, `${fmtInt(open.events.length)} event${open.events.length === 1 ? '' : 's'} ${from}`);
  setText(ui.timelineNote, full
    ? `the page holds the first ${fmtInt(TIMELINE_MAX)} events; plugbus log show --correlation ${open.id} has them all`
    : open.truncated ? 'more events follow' : '');
  ui.timelineEmpty.hidden = open.events.length > 0;
  if (open.events.length === 0) setText(ui.timelineEmpty, 'No events.');
}

// The timeline's rows: OTel-fed events grouped by span, each span under its parent
// (otel.parent_span_id), the other events on their own; siblings by start time.
function buildTimeline(events) {
  const spans = new Map();
  const roots = [];
  let t0 = Infinity;
  let t1 = -Infinity;
  const seen = (t) => { if (t !== null) { t0 = Math.min(t0, t); t1 = Math.max(t1, t); } };
  events.forEach((ev, index) => {
    const time = num(ev.time_unix_nanos);
    const span = ev.span && typeof ev.span === 'object' && typeof ev.span.span_id === 'string' ? ev.span : null;
    if (!span) {
      seen(time);
      roots.push({ kind: 'event', key: `e:${str(ev.id) || index}`, ev, start: time ?? 0, end: null, order: index });
      return;
    }
    const key = `s:${str(span.trace_id)}/${span.span_id}`;
    let node = spans.get(key);
    if (!node) {
      node = { kind: 'span', key, trace: str(span.trace_id), id: span.span_id, parent: '', name: '', status: '',
        start: null, end: null, events: [], children: [], order: index };
      spans.set(key, node);
    }
    node.events.push(ev);
    node.parent = node.parent || str(span.parent_span_id);
    node.name = node.name || str(span.name);
    if (span.status && span.status !== 'unset') node.status = str(span.status);
    // The span's own start and end; the event's time only where the span lacks one.
    const start = num(span.start_unix_nano) ?? time;
    const end = num(span.end_unix_nano) ?? time;
    if (start !== null) node.start = node.start === null ? start : Math.min(node.start, start);
    if (end !== null) node.end = node.end === null ? end : Math.max(node.end, end);
    seen(start);
    seen(end);
  });
  const parentOf = (node) => (node.parent ? spans.get(`s:${node.trace}/${node.parent}`) : undefined);
  for (const node of spans.values()) {
    // A parent chain that loops (hostile or broken data) leaves the span at the top.
    const chain = new Set([node]);
    let parent = parentOf(node);
    for (let up = parent; up; up = parentOf(up)) {
      if (chain.has(up)) { parent = undefined; break; }
      chain.add(up);
    }
    if (parent) parent.children.push(node); else roots.push(node);
  }
  const byStart = (a, b) => (a.start ?? 0) - (b.start ?? 0) || a.order - b.order;
  const rows = [];
  const walk = (items, depth) => {
    items.sort(byStart);
    for (const item of items) {
      rows.push({ item, depth });
      if (item.kind === 'span') walk(item.children, depth + 1);
    }
  };
  walk(roots, 0);
  return { rows, t0: Number.isFinite(t0) ? t0 : 0, t1: Number.isFinite(t1) ? t1 : 0 };
}

function renderTimeline(open) {
  const { rows, t0, t1 } = buildTimeline(open.events);
  const range = Math.max(t1 - t0, 1);
  const pct = (t) => `${(Math.min(Math.max((t - t0) / range, 0), 1) * 100).toFixed(3)}%`;
  const fragment = document.createDocumentFragment();
  for (const { item, depth } of rows) {
    const row = el('div', { class: `tl-row tl-${item.kind}`, role: 'treeitem', tabindex: '0',
      'data-key': item.key, 'data-depth': String(depth) });
    const label = el('div', { class: 'tl-label' });
    label.style.paddingLeft = `${Math.min(depth, TIMELINE_MAX_DEPTH) * 18 + 4}px`;
    const track = el('div', { class: 'tl-track' });
    const when = el('div', { class: 'tl-time mono', text: `+${fmtNanos((item.start ?? t0) - t0)}` });
    const length = el('div', { class: 'tl-duration mono' });
    let details;
    if (item.kind === 'span') {
      row.setAttribute('data-span-id', item.id);
      if (item.parent) row.setAttribute('data-parent-span-id', item.parent);
      if (item.status) row.setAttribute('data-span-status', item.status);
      const names = item.events.map((ev) => str(ev.name));
      label.append(el('span', { class: 'tl-span-name', text: item.name || names[0] || item.id }),
        el('span', { class: 'tl-events', text: names.join(' → ') }));
      const bar = el('span', { class: `tl-bar${item.status === 'error' ? ' error' : ''}` });
      const start = item.start ?? t0;
      const share = ((item.end ?? start) - start) / range;
      bar.style.left = pct(start);
      bar.style.width = `max(2px, ${(share * 100).toFixed(3)}%)`;
      track.append(bar);
      length.textContent = item.end !== null && item.start !== null ? fmtNanos(item.end - item.start) : '';
      details = item.events;
    } else {
      const ev = item.ev;
      row.setAttribute('data-event-id', str(ev.id));
      label.append(el('span', { class: 'tl-event-name mono', text: str(ev.name) }),
        el('span', { class: 'tl-source', text: str(ev.source) }));
      const tick = el('span', { class: 'tl-tick' });
      tick.style.left = pct(item.start);
      track.append(tick);
      details = [ev];
    }
    row.append(when, label, track, length);
    fragment.append(row);
    if (runs.expanded.has(item.key)) fragment.append(timelineDetails(item.key, details, t0));
  }
  ui.timeline.replaceChildren(fragment);
}

// Under an opened row: each of its events with its seq, time, source and payload.
function timelineDetails(key, events, t0) {
  const box = el('div', { class: 'tl-details', 'data-details-of': key });
  for (const ev of events) {
    const time = num(ev.time_unix_nanos);
    const when = time === null ? '—' : `${fmtClock(time / 1e6, true)} (+${fmtNanos(time - t0)})`;
    const seq = ev.seq == null ? '—' : str(ev.seq);
    const head = el('div', { class: 'tl-details-head mono' }, el('span', { text: str(ev.name) }),
      el('span', { class: 'hint', text: ` seq ${seq} · ${when} · source ${str(ev.source)}` }));
    const payload = str(ev.payload) + (ev.payload_truncated ? '…' : '');
    box.append(head, el('pre', { class: 'tl-payload', text: payload }));
  }
  return box;
}

function toggleTimelineRow(row) {
  const key = row.dataset.key;
  if (!key || !runs.open) return;
  if (runs.expanded.has(key)) runs.expanded.delete(key); else runs.expanded.add(key);
  renderTimeline(runs.open);
  const again = [...ui.timeline.querySelectorAll('.tl-row')].find((r) => r.dataset.key === key);
  if (again) again.focus();
}

function wireRunsControls() {
  for (const [name, tab] of Object.entries(ui.tabs)) tab.addEventListener('click', () => setView(name));
  ui.runsStatus.addEventListener('change', () => {
    runs.filter = { ...runs.filter, status: ui.runsStatus.value };
    writeLocation();
    pumpRuns();
  });
  ui.runsAgent.addEventListener('change', () => {
    runs.filter = { ...runs.filter, agent: ui.runsAgent.value };
    writeLocation();
    pumpRuns();
  });
  const openFrom = (e) => {
    const tr = e.target.closest('tr[data-run]');
    if (tr) openRun(tr.dataset.run);
  };
  ui.runRows.addEventListener('click', openFrom);
  ui.runRows.addEventListener('keydown', (e) => { if (e.key === 'Enter') openFrom(e); });
  ui.runClose.addEventListener('click', closeRun);
  ui.timelineMore.addEventListener('click', () => { if (runs.open) fetchTimeline(runs.open); });
  ui.timeline.addEventListener('click', (e) => {
    const row = e.target.closest('.tl-row');
    if (row) toggleTimelineRow(row);
  });
  ui.timeline.addEventListener('keydown', (e) => {
    const row = e.target.closest('.tl-row');
    if (row && (e.key === 'Enter' || e.key === ' ')) { e.preventDefault(); toggleTimelineRow(row); }
  });
  document.addEventListener('visibilitychange', () => { if (runsVisible()) { pumpRuns(); pollTimeline(true); } });
}

// ---- filter and controls ---------------------------------------------------

function filterParams(filter) {
  const params = new URLSearchParams();
  if (filter.pattern) params.set('pattern', filter.pattern);
  if (filter.correlation_id) params.set('correlation_id', filter.correlation_id);
  return params;
}

// Everything the address keeps: the tail's filter, the view, the runs filter, the open run.
function readLocation() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const query = new URLSearchParams(location.search);
  const pick = (key) => (hash.get(key) ?? query.get(key) ?? '').trim();
  const status = pick('status');
  return {
    filter: { pattern: pick('pattern'), correlation_id: pick('correlation_id') },
    view: pick('view') === 'runs' ? 'runs' : 'overview',
    runsFilter: { status: RUN_STATUSES.includes(status) ? status : '', agent: pick('agent') },
    run: pick('run'),
  };
}

function writeLocation() {
  const params = filterParams(state.filter);
  if (state.view === 'runs') params.set('view', 'runs');
  if (runs.filter.status) params.set('status', runs.filter.status);
  if (runs.filter.agent) params.set('agent', runs.filter.agent);
  if (runs.open) params.set('run', runs.open.id);
  const text = params.toString();
  const url = `${location.pathname}${text ? `#${text}` : ''}`;
  if (`${location.pathname}${location.hash}` !== url) history.replaceState(null, '', url);
}

function applyLocation() {
  const wanted = readLocation();
  runs.filter = wanted.runsFilter;
  ui.runsStatus.value = runs.filter.status;
  syncAgentOptions();
  state.view = wanted.view;
  if (wanted.run !== (runs.open ? runs.open.id : '')) {
    if (wanted.run) openRun(wanted.run); else closeRun();
  }
  showView();
  const f = wanted.filter;
  if (f.pattern !== state.filter.pattern || f.correlation_id !== state.filter.correlation_id || !state.source) {
    applyFilter(f);
  } else {
    writeLocation();
  }
}

function applyFilter(filter) {
  ui.pattern.value = filter.pattern;
  ui.correlation.value = filter.correlation_id;
  state.filter = filter;
  writeLocation();
  const shown = [filter.pattern && `pattern ${filter.pattern}`,
    filter.correlation_id && `correlation ${filter.correlation_id}`].filter(Boolean);
  setText(ui.activeFilter, shown.length ? shown.join(' · ') : 'all events');
  clearTail();
  setFilterError(null);
  connect(filter);
}

function wireControls() {
  const formFilter = () => ({ pattern: ui.pattern.value.trim(), correlation_id: ui.correlation.value.trim() });
  ui.form.addEventListener('submit', (e) => { e.preventDefault(); applyFilter(formFilter()); });
  ui.clear.addEventListener('click', () => applyFilter({ pattern: '', correlation_id: '' }));
  ui.eventRows.addEventListener('click', (e) => { // click a correlation id to follow that run
    const cell = e.target.closest('td[data-field="correlation_id"]');
    if (cell && cell.textContent) applyFilter({ ...formFilter(), correlation_id: cell.textContent });
  });
  window.addEventListener('hashchange', applyLocation);
  new ResizeObserver(() => drawChart(state.lastRate)).observe(ui.chart);
  wireRunsControls();
}

function start() {
  wireControls();
  applyLocation();
  setInterval(tick, TICK_MS);
}

start();
