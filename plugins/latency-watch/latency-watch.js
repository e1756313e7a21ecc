// latency-watch: per-tool and per-model latency, with alerts.
//
// Reads `latency_ms` from the payload of `tool.**` events (keyed by
// `tool:<payload.tool>`) and `model_responded` events (keyed by
// `model:<payload.model>`), keeps the last WINDOW samples per key, and emits
// `alert.latency` when one call takes longer than the threshold. The alert
// carries the key, the call's latency, the key's rolling p95 and the id of the
// event that was slow, so an alerting observer can link back to it.
//
// Events mapped from OpenTelemetry GenAI spans (docs/opentelemetry.md) carry
// the same fields: `latency_ms` is the span's duration (microsecond
// precision) on `model_responded` and `tool.result`, and a model is keyed by
// the response model the span names (`model:gpt-4o-2024-08-06`), which is
// what a per-key threshold must name.
//
// Configuration (the manifest's `[config]`):
//   threshold_ms         alert above this (default 2000)
//   threshold_ms.<key>   per-key override, e.g. `threshold_ms.tool:web_search`
//   window               samples kept per key for the p95 (default 100)
//   report_every         log a p95 table every N samples (default 0: never)
//
// Host calls are not possible while the engine snapshots the module at build
// time, so configuration is read on the first event, never at import.
//
// Its windows are durable: it exports `state` (world
// `stateful-batch-observer`), so the host snapshots them and hands them back
// after a trap, a hot reload or a restart with the event log, and the p95s go
// on from where they were. It also exports `batchHandler`: the events waiting
// in its queue come in one call.

import * as host from "plugbus:observer/host@0.1.3";
import * as batchHost from "plugbus:observer/batch-host@0.1.3";

let settings = null;
let windows = new Map(); // key -> { samples: number[], next: number, count: number }
let seen = 0;

function configNumber(key, fallback) {
  const text = host.config(key);
  if (text === null || text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isFinite(value) || value < 0) {
    throw `config ${key} = ${JSON.stringify(text)} is not a non-negative number`;
  }
  return value;
}

function loadSettings() {
  return {
    threshold: configNumber("threshold_ms", 2000),
    window: Math.max(1, Math.floor(configNumber("window", 100))),
    reportEvery: Math.floor(configNumber("report_every", 0)),
    perKey: new Map(), // key -> threshold, filled lazily
  };
}

function thresholdFor(key) {
  let threshold = settings.perKey.get(key);
  if (threshold === undefined) {
    threshold = configNumber(`threshold_ms.${key}`, settings.threshold);
    settings.perKey.set(key, threshold);
  }
  return threshold;
}

function record(key, latency) {
  let w = windows.get(key);
  if (w === undefined) {
    w = { samples: [], next: 0, count: 0 };
    windows.set(key, w);
  }
  if (w.samples.length < settings.window) {
    w.samples.push(latency);
  } else {
    w.samples[w.next] = latency;
    w.next = (w.next + 1) % settings.window;
  }
  w.count += 1;
  return w;
}

// Nearest-rank p95 over the window: a copy sorted per call is cheap at the
// default window of 100 and exact, unlike a streaming estimate.
function p95(samples) {
  const sorted = samples.slice().sort((a, b) => a - b);
  const rank = Math.ceil(0.95 * sorted.length) - 1;
  return sorted[Math.max(0, rank)];
}

function keyOf(event, payload) {
  if (event.name === "model_responded") {
    return typeof payload.model === "string" ? `model:${payload.model}` : null;
  }
  return typeof payload.tool === "string" ? `tool:${payload.tool}` : null;
}

function report() {
  const rows = [...windows.entries()]
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([key, w]) => `${key} p95=${p95(w.samples)}ms n=${w.count}`);
  host.log("info", `latency p95: ${rows.join(", ")}`);
}

export const handler = {
  subscriptions() {
    return ["tool.**", "model_responded"];
  },

  onEvent(event) {
    handle(event);
  },
};

export const batchHandler = {
  onEvents(batch) {
    return batch.map((event, i) => {
      // Before each event: its emits, logs and budgets are its own.
      batchHost.beginEvent(i);
      try {
        handle(event);
        return { tag: "ok", val: undefined };
      } catch (e) {
        return { tag: "err", val: String(e) };
      }
    });
  },
};

function handle(event) {
  if (settings === null) settings = loadSettings();
  let payload;
  try {
    payload = JSON.parse(event.payload);
  } catch (e) {
    throw `payload of ${event.name} is not JSON: ${e}`;
  }
  const latency = payload.latency_ms;
  if (typeof latency !== "number" || !Number.isFinite(latency)) return;
  const key = keyOf(event, payload);
  if (key === null) return;

  const w = record(key, latency);
  const threshold = thresholdFor(key);
  if (latency > threshold) {
    const alert = {
      key,
      latency_ms: latency,
      threshold_ms: threshold,
      p95_ms: p95(w.samples),
      samples: w.samples.length,
      event_id: event.id,
      event_name: event.name,
    };
    host.log("warn", `${key} took ${latency}ms (threshold ${threshold}ms, p95 ${alert.p95_ms}ms)`);
    host.emit("alert.latency", JSON.stringify(alert));
  }
  seen += 1;
  if (settings.reportEvery > 0 && seen % settings.reportEvery === 0) report();
}

// Text to bytes and back as UTF-8 (QuickJS has no TextEncoder).
function utf8(text) {
  return Uint8Array.from(unescape(encodeURIComponent(text)), (c) => c.charCodeAt(0));
}

function fromUtf8(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    text += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return decodeURIComponent(escape(text));
}

export const state = {
  snapshot() {
    return utf8(JSON.stringify({ seen, windows: [...windows.entries()] }));
  },

  restore(bytes) {
    let kept;
    try {
      kept = JSON.parse(fromUtf8(bytes));
    } catch (e) {
      throw `not a latency-watch snapshot: ${e}`;
    }
    if (!Array.isArray(kept.windows)) throw "not a latency-watch snapshot: no windows";
    seen = kept.seen ?? 0;
    windows = new Map(kept.windows);
  },
};
