// plugbus dashboard: live operator view for `plugbus serve` (plain ES2020, no dependencies).
// Reads snapshots from the SSE stream /dashboard/stream and updates the DOM in place.
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
const CHART = { line: '#2563eb', fill: 'rgba(37, 99, 235, 0.12)', grid: '#e5e7eb',
  text: '#6b7280', font: '11px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace' };

const $ = (id) => document.getElementById(id);
const ui = {
  connection: $('connection'), connectionAge: $('connection-age'),
  published: $('stat-published'), rate: $('stat-rate'),
  pluginCount: $('stat-plugins'), rejected: $('stat-rejected'),
  chart: $('rate-chart'), pluginRows: $('plugin-rows'), pluginsEmpty: $('plugins-empty'),
  loadFailures: $('load-failures'), loadFailuresPanel: $('load-failures-panel'), log: $('log'),
  form: $('filter-form'), pattern: $('filter-pattern'), correlation: $('filter-correlation'),
  clear: $('filter-clear'), pause: $('pause-tail'), activeFilter: $('filter-active'),
  filterError: $('filter-error'),
  skipped: $('events-skipped'), eventRows: $('event-rows'), tailEmpty: $('tail-empty'),
};

const state = {
  source: null, filter: { pattern: '', correlation_id: '' }, reconnectTimer: null,
  lastSnapshotAt: 0, lastRate: [], loadFailuresKey: '',
  plugins: new Map(), // plugin name -> row record
  tailIds: new Set(), // ids of the events currently shown in the tail
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
  renderLog(snap.log, plugins);
  renderEvents(snap.events || [], snap.events_skipped || 0);
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
  setText(cells.language, `${p.language || 'unknown'} · ${fmtBytes(p.size_bytes)}`);
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

// ---- filter and controls ---------------------------------------------------

function filterParams(filter) {
  const params = new URLSearchParams();
  if (filter.pattern) params.set('pattern', filter.pattern);
  if (filter.correlation_id) params.set('correlation_id', filter.correlation_id);
  return params;
}

function readFilterFromLocation() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const query = new URLSearchParams(location.search);
  const pick = (key) => (hash.get(key) ?? query.get(key) ?? '').trim();
  return { pattern: pick('pattern'), correlation_id: pick('correlation_id') };
}

function applyFilter(filter) {
  ui.pattern.value = filter.pattern;
  ui.correlation.value = filter.correlation_id;
  const params = filterParams(filter).toString();
  history.replaceState(null, '', `${location.pathname}${params ? `#${params}` : ''}`);
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
  window.addEventListener('hashchange', () => applyFilter(readFilterFromLocation()));
  new ResizeObserver(() => drawChart(state.lastRate)).observe(ui.chart);
}

function start() {
  wireControls();
  applyFilter(readFilterFromLocation());
  setInterval(tick, TICK_MS);
}

start();
