//! The per-plugin store data: what a running plugin instance can reach.
//!
//! A [`PluginCtx`] lives inside its plugin's `Store`, which the plugin's
//! worker task owns. It implements the WIT `host` interface (log, emit,
//! config, abort) and `batch-host.begin-event`, the WASI view (an empty
//! context plus the manifest's directory grants, each only while it is still
//! the directory pinned at load, through the write gate of `granted_dirs`),
//! the `wasi:http` view (every
//! request through `http::send`), the memory limiter, and the per-event
//! budgets.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreContextMut, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::filesystem::WasiFilesystemCtxView;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::event::Event;
use crate::http::send::{Outbound, PluginHttp};
use crate::limits::{Limits, MAX_CASCADE_DEPTH};
use crate::manifest::{PinnedDir, Secret};
use crate::outcome::GuestAbort;
use crate::pattern::validate_event_name;
use crate::plugin::bindings::plugbus::observer::{host, types};
use crate::plugin::determinism::Determinism;
use crate::plugin::granted_dirs::{GatedView, WriteGate};
use crate::plugin::port::{BusPort, Captured};
use crate::text::truncate;

/// Largest payload a plugin may emit, in bytes. Bounds host memory per emit;
/// 1 MiB is far above any observer's follow-up event.
const MAX_EMIT_PAYLOAD: usize = 1 << 20;

/// What a call's follow-ups and log lines become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Voice {
    /// Published and written: an event handled for the first time.
    Live,
    /// Follow-ups published, log lines and changes to granted directories
    /// dropped: an event run again after the batch it was in failed, once
    /// the batch had written its lines and files but published nothing.
    Hushed,
    /// All dropped: an event replayed to rebuild state (its follow-ups
    /// were published, its lines and files written the first time).
    Silent,
}

impl Voice {
    /// `Silent` when `quiet`, else `Live`.
    pub fn quiet_if(quiet: bool) -> Voice {
        if quiet { Voice::Silent } else { Voice::Live }
    }
}

/// `[config]`, shared by a plugin's instances.
pub(crate) type Config = Arc<BTreeMap<String, String>>;
/// `[secrets]`, shared by a plugin's instances.
pub(crate) type Secrets = Arc<BTreeMap<String, Secret>>;

/// Store data for one plugin instance.
pub(crate) struct PluginCtx {
    pub plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    config: Config,
    /// `[secrets]`: also served by `config`, never logged.
    secrets: Secrets,
    bus: Weak<dyn BusPort>,
    http_ctx: WasiHttpCtx,
    /// The hook every outgoing request passes, and its per-event state.
    pub http: PluginHttp,
    /// When the current event's own deadline ends (time waited on requests
    /// is added to it, up to the grant's I/O budget).
    pub deadline_at: Instant,
    /// When the current event began, shared with the host's timer around a
    /// call: a batch's timer bounds each event from its own start.
    pub event_clock: Arc<EventClock>,
    /// The event being handled; `None` during `subscriptions()`.
    pub current: Option<Event>,
    pub emits_left: u32,
    /// Follow-ups emitted while handling `current`: part of their ids.
    emit_index: u32,
    /// What follow-ups and log lines of the current call become.
    voice: Voice,
    /// True during a `query` call: a query may not change what later events
    /// see, so `emit` is refused.
    pub querying: bool,
    determinism: Determinism,
    pub logs: Arc<LogBudget>,
    log_line_bytes: usize,
    /// The batch `on-events` is handling, while it runs.
    pub batch: Option<Batch>,
    /// Closed while an event is handled again: its changes to granted
    /// directories are discarded (`granted_dirs`).
    write_gate: WriteGate,
    /// The follow-ups of the call being made, in emit order, held until it
    /// returns: published then (so native handlers on them run outside the
    /// plugin's deadline), or dropped if it failed (a failed batch's events
    /// then run again and emit again).
    pub held: Vec<Captured>,
}

/// A batch being handled by `on-events`: its events, which one the guest
/// is on, and what each finished event cost. Its follow-ups are held in
/// [`PluginCtx::held`] as every call's are.
pub(crate) struct Batch {
    events: Vec<Event>,
    /// The event begun last (`begin-event`), if any yet.
    at: Option<usize>,
    /// Per finished event, in order: fuel burned and time taken.
    pub marks: Vec<Mark>,
    /// When the current event began, and the fuel it was given.
    began: Instant,
    fuel: u64,
    /// Each event's budgets, as `arm` would set them for a single event.
    limits: EventBudgets,
    /// One event's wall-clock deadline.
    deadline: Duration,
}

/// What one event of a batch cost.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Mark {
    pub fuel: u64,
    pub elapsed: Duration,
}

/// The budgets one event starts with.
#[derive(Clone, Copy)]
struct EventBudgets {
    fuel: u64,
    ticks: u64,
    emits: u32,
    log_lines: u32,
}

impl Batch {
    /// Whether the guest began every event (the last one included).
    pub fn all_begun(&self) -> bool {
        self.events.is_empty() || self.at == Some(self.events.len() - 1)
    }

    /// Closes the current event's mark with the fuel left now.
    fn close(&mut self, fuel_left: u64, now: Instant) {
        if self.at.is_some() {
            let mark = self.mark_at(fuel_left, now);
            self.marks.push(mark);
        }
    }

    /// What the current event has cost so far, with `fuel_left` now.
    fn current_mark(&self, fuel_left: u64) -> Mark {
        self.mark_at(fuel_left, Instant::now())
    }

    fn mark_at(&self, fuel_left: u64, now: Instant) -> Mark {
        Mark {
            fuel: self.fuel.saturating_sub(fuel_left),
            elapsed: now.saturating_duration_since(self.began),
        }
    }

    /// The event the call failed on, with what it cost, when the call failed
    /// inside an event it had begun (`None` when it failed before its
    /// first `begin-event`, or after its last event finished).
    pub fn failed_in(&self, fuel_left: u64) -> Option<(usize, Mark)> {
        self.at
            .filter(|at| *at == self.marks.len())
            .map(|at| (at, self.current_mark(fuel_left)))
    }

    /// Closes the last event's mark when the call has returned.
    pub fn finish(&mut self, fuel_left: u64) {
        if self.marks.len() < self.events.len() {
            self.close(fuel_left, Instant::now());
        }
    }
}

impl PluginCtx {
    /// A context granting exactly what the manifest lists: nothing else.
    pub fn new(
        plugin: Arc<str>,
        limits: &Limits,
        (config, secrets): (Config, Secrets),
        dirs: &[PinnedDir],
        outbound: Arc<Outbound>,
        bus: Weak<dyn BusPort>,
    ) -> wasmtime::Result<PluginCtx> {
        let logs = Arc::new(LogBudget::default());
        let determinism = Determinism::new(plugin.clone());
        let mut wasi = WasiCtx::builder();
        wasi.wall_clock(determinism.wall_clock())
            .monotonic_clock(determinism.monotonic_clock())
            .secure_random(determinism.random())
            .insecure_random(determinism.random())
            .insecure_random_seed(determinism.insecure_seed());
        for pinned in dirs {
            // The directory the policy allowed at load, or none: a grant
            // moved away and replaced since (by a symlink elsewhere, say) is
            // refused, and so is the instance.
            pinned.verify().map_err(wasmtime::Error::msg)?;
            let d = &pinned.grant;
            let perms = if d.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(&d.host, &d.guest, perms)?;
        }
        wasi.stdout(GuestOutput::new(
            plugin.clone(),
            "stdout",
            logs.clone(),
            limits.log_line_bytes,
        ));
        wasi.stderr(GuestOutput::new(
            plugin.clone(),
            "stderr",
            logs.clone(),
            limits.log_line_bytes,
        ));
        let http = PluginHttp::new(outbound);
        Ok(PluginCtx {
            plugin,
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(limits.memory_bytes),
            config,
            secrets,
            bus,
            http_ctx: WasiHttpCtx::new(),
            http,
            deadline_at: Instant::now() + limits.deadline,
            event_clock: Arc::default(),
            current: None,
            emits_left: limits.emits_per_event,
            emit_index: 0,
            voice: Voice::Live,
            querying: false,
            determinism,
            logs,
            log_line_bytes: limits.log_line_bytes,
            batch: None,
            write_gate: WriteGate::default(),
            held: Vec::new(),
        })
    }

    /// Starts a batch call over `events` (see [`Batch`]); `ticks` is one
    /// event's epoch deadline. The first `begin-event` starts event 0.
    pub fn begin_batch(&mut self, events: Vec<Event>, limits: &Limits, ticks: u64, voice: Voice) {
        self.begin(None, limits, voice);
        self.batch = Some(Batch {
            marks: Vec::with_capacity(events.len()),
            events,
            at: None,
            began: Instant::now(),
            fuel: limits.fuel,
            deadline: limits.deadline,
            limits: EventBudgets {
                fuel: limits.fuel,
                ticks,
                emits: limits.emits_per_event,
                log_lines: if voice == Voice::Live {
                    limits.log_lines_per_event
                } else {
                    0
                },
            },
        });
    }

    /// Warns about the log lines the event just finished had to drop.
    pub fn report_dropped_logs(&self) {
        let dropped = self.logs.dropped();
        if dropped > 0 && self.voice == Voice::Live {
            tracing::warn!(
                plugin = &*self.plugin,
                event = self.event_name(),
                dropped,
                "log lines over the per-event budget were dropped"
            );
        }
    }

    /// Resets the per-event budgets, virtual time and randomness before a
    /// call; `voice` says what its emits and log lines become.
    pub fn begin(&mut self, event: Option<Event>, limits: &Limits, voice: Voice) {
        self.determinism.begin(event.as_ref());
        self.http.begin(event.clone(), voice != Voice::Live);
        self.current = event;
        self.emits_left = limits.emits_per_event;
        self.emit_index = 0;
        self.voice = voice;
        self.write_gate.set_open(voice == Voice::Live);
        self.held.clear();
        self.querying = false;
        self.limiter.refused = false;
        self.logs.reset(if voice == Voice::Live {
            limits.log_lines_per_event
        } else {
            0
        });
    }

    fn event_name(&self) -> &str {
        self.current.as_ref().map_or("", Event::name)
    }

    /// A query begins: emits and requests are refused while it runs.
    pub fn begin_query(&mut self) {
        self.querying = true;
        self.http.begin_query();
    }

    /// At the epoch deadline: how many more ticks the call may run because
    /// it waited on requests (the time waited, up to the grant's I/O
    /// budget, added to the event's own deadline), or `None`: stop it.
    pub fn io_extension(&self) -> Option<u64> {
        let waited = Duration::from_nanos(self.http.io_waited.load(Ordering::Relaxed));
        let until = self.deadline_at + waited.min(self.http.io_budget());
        let left = until.checked_duration_since(Instant::now())?;
        let ticks = left.as_micros() / crate::plugin::engine::EPOCH_TICK.as_micros();
        (ticks > 0).then_some(ticks as u64)
    }
}

impl WasiHttpView for PluginCtx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

impl PluginCtx {
    /// Lets the call being armed change granted directories whatever its
    /// voice (a snapshot: silent, but taken once).
    pub(crate) fn open_writes(&self) {
        self.write_gate.set_open(true);
    }

    /// Its granted directories, through the write gate.
    pub(crate) fn granted_dirs(&mut self) -> GatedView<'_> {
        let fs = WasiFilesystemCtxView {
            ctx: self.wasi.filesystem(),
            table: &mut self.table,
        };
        GatedView::new(fs, &self.write_gate)
    }
}

impl WasiView for PluginCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for PluginCtx {}

impl host::Host for PluginCtx {
    fn log(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
        if !self.logs.take() {
            return Ok(());
        }
        let message = truncate(&message, self.log_line_bytes);
        let (plugin, event) = (&*self.plugin, self.event_name());
        match level {
            types::Level::Trace => {
                tracing::trace!(target: "plugbus::guest", plugin, event, "{message}")
            }
            types::Level::Debug => {
                tracing::debug!(target: "plugbus::guest", plugin, event, "{message}")
            }
            types::Level::Info => {
                tracing::info!(target: "plugbus::guest", plugin, event, "{message}")
            }
            types::Level::Warn => {
                tracing::warn!(target: "plugbus::guest", plugin, event, "{message}")
            }
            types::Level::Error => {
                tracing::error!(target: "plugbus::guest", plugin, event, "{message}")
            }
        }
        Ok(())
    }

    fn emit(&mut self, name: String, payload: String) -> wasmtime::Result<Result<(), String>> {
        if self.querying {
            return Ok(Err(
                "emit is refused during a query: a query may not change what later events see".into(),
            ));
        }
        let Some(parent) = self.current.clone() else {
            return Ok(Err("emit is only allowed while handling an event".into()));
        };
        if self.emits_left == 0 {
            return Ok(Err("emit budget for this event is used up".into()));
        }
        self.emits_left -= 1;
        if parent.depth() >= MAX_CASCADE_DEPTH {
            tracing::warn!(plugin = &*self.plugin, event = parent.name(), emitted = %name, "follow-up refused: cascade depth limit");
            return Ok(Err(format!("cascade depth limit ({MAX_CASCADE_DEPTH}) reached")));
        }
        if let Err(e) = validate_event_name(&name) {
            return Ok(Err(e.to_string()));
        }
        if payload.len() > MAX_EMIT_PAYLOAD {
            return Ok(Err(format!("payload is larger than {MAX_EMIT_PAYLOAD} bytes")));
        }
        let payload = match serde_json::from_str(&payload) {
            Ok(v) => v,
            Err(e) => return Ok(Err(format!("payload is not valid JSON: {e}"))),
        };
        // One level more than every reader of the log reads back.
        if crate::event::nested_deeper_than(&payload, crate::event::MAX_PAYLOAD_DEPTH) {
            return Ok(Err(format!(
                "payload nests arrays and objects deeper than {} levels",
                crate::event::MAX_PAYLOAD_DEPTH
            )));
        }
        let index = self.emit_index;
        self.emit_index += 1;
        if self.voice == Voice::Silent {
            // Published when the event was first handled.
            return Ok(Ok(()));
        }
        let Some(bus) = self.bus.upgrade() else {
            return Ok(Err("the bus is shutting down; event not accepted".into()));
        };
        if let Err(reason) = bus.check_schema(&name, &payload) {
            return Ok(Err(reason));
        }
        let event = Event::follow_up(&parent, &self.plugin, index, name, payload);
        let captured = Captured {
            parent_seq: parent.seq().unwrap_or(0),
            plugin: self.plugin.clone(),
            index,
            event,
        };
        // Published when the call returns (see `held`).
        self.held.push(captured);
        Ok(Ok(()))
    }

    fn event_seq(&mut self) -> wasmtime::Result<Option<u64>> {
        Ok(self.current.as_ref().and_then(Event::seq))
    }

    fn config(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(match self.config.get(&key) {
            Some(value) => Some(value.clone()),
            None => self.secrets.get(&key).map(|s| s.expose().to_owned()),
        })
    }

    fn abort(&mut self, message: String) -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(GuestAbort(
            truncate(&message, self.log_line_bytes).into_owned(),
        )))
    }
}

/// `batch-host.begin-event`: moves a batch call to `events[index]`, closing
/// the previous event's mark and giving the new one the budgets a call of
/// its own would have (fuel, deadline, emits, log lines, virtual time and
/// randomness). Takes the store, not just the context: fuel and the epoch
/// deadline live there. An index out of order is an error that stops the
/// call (it then fails like a trap).
pub(crate) fn begin_event(mut store: StoreContextMut<'_, PluginCtx>, index: u32) -> wasmtime::Result<()> {
    let fuel_left = store.get_fuel().unwrap_or(0);
    let ctx = store.data_mut();
    let Some(batch) = ctx.batch.as_mut() else {
        return Ok(());
    };
    let expected = batch.at.map_or(0, |at| at + 1);
    if index as usize != expected || expected >= batch.events.len() {
        let len = batch.events.len();
        return Err(wasmtime::Error::msg(format!(
            "batch-host.begin-event({index}) out of order: the next event of this {len}-event batch is {expected}"
        )));
    }
    // One clock read ends the last event and starts this one.
    let now = Instant::now();
    batch.close(fuel_left, now);
    batch.at = Some(expected);
    batch.began = now;
    let budgets = batch.limits;
    let deadline = batch.deadline;
    batch.fuel = budgets.fuel;
    let event = batch.events[expected].clone();
    if expected > 0 {
        ctx.report_dropped_logs();
    }
    ctx.determinism.begin(Some(&event));
    let replaying = ctx.voice != Voice::Live;
    ctx.http.begin(Some(event.clone()), replaying);
    ctx.deadline_at = now + deadline;
    ctx.event_clock.start(now);
    ctx.current = Some(event);
    ctx.emits_left = budgets.emits;
    ctx.emit_index = 0;
    ctx.logs.reset(budgets.log_lines);
    store.set_fuel(budgets.fuel)?;
    store.set_epoch_deadline(budgets.ticks);
    Ok(())
}

/// When a plugin's current event began, readable by the host's timer while
/// the call holds the store (an atomic, written by the worker's thread only).
#[derive(Debug, Default)]
pub(crate) struct EventClock(AtomicU64);

impl EventClock {
    /// The instant every clock counts from.
    fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    /// The current event began at `at`.
    pub fn start(&self, at: Instant) {
        let nanos = at.saturating_duration_since(Self::epoch()).as_nanos();
        self.0
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// When the current event began.
    pub fn began(&self) -> Instant {
        Self::epoch() + Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

/// The memory cap, recording whether it refused a grow so that the trap that
/// usually follows is reported as [`Failure::MemoryLimit`](crate::Failure::MemoryLimit).
pub(crate) struct MemoryLimiter {
    limits: StoreLimits,
    pub refused: bool,
    /// Linear memory granted to the instance so far, over all its memories:
    /// every memory is created and grown through `memory_growing`, so this is
    /// what the instance holds (wasm memories never shrink).
    pub granted: usize,
}

/// Core instances, tables and memories per plugin. Components built by
/// wit-component hold 3–5 core instances; interpreted runtimes more. 64 is
/// ample while stopping a component that instantiates without bound.
const MAX_INSTANCES: usize = 64;
/// Table elements per table: interpreted runtimes have large function tables.
const MAX_TABLE_ELEMENTS: usize = 200_000;

impl MemoryLimiter {
    fn new(memory_bytes: usize) -> MemoryLimiter {
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory_bytes)
            .table_elements(MAX_TABLE_ELEMENTS)
            .instances(MAX_INSTANCES)
            .tables(MAX_INSTANCES)
            .memories(MAX_INSTANCES)
            .build();
        MemoryLimiter {
            limits,
            refused: false,
            granted: 0,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        self.refused |= !allowed;
        if allowed {
            self.granted = self.granted.saturating_add(desired.saturating_sub(current));
        }
        Ok(allowed)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Log lines left for the current event, shared by `host.log` and the
/// stdout/stderr capture. Lines past the budget are dropped and counted.
#[derive(Default)]
pub(crate) struct LogBudget {
    left: AtomicU32,
    dropped: AtomicU32,
}

impl LogBudget {
    fn reset(&self, lines: u32) {
        self.left.store(lines, Ordering::Relaxed);
        self.dropped.store(0, Ordering::Relaxed);
    }

    fn take(&self) -> bool {
        let ok = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if !ok {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Lines dropped during the current event.
    pub fn dropped(&self) -> u32 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Guest stdout or stderr, forwarded line by line into `tracing`.
struct GuestOutput {
    plugin: Arc<str>,
    stream: &'static str,
    logs: Arc<LogBudget>,
    max_line: usize,
}

impl GuestOutput {
    fn new(plugin: Arc<str>, stream: &'static str, logs: Arc<LogBudget>, max_line: usize) -> GuestOutput {
        GuestOutput {
            plugin,
            stream,
            logs,
            max_line,
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            plugin: self.plugin.clone(),
            stream: self.stream,
            logs: self.logs.clone(),
            max_line: self.max_line,
            line: Vec::new(),
            overflow: 0,
        })
    }
}

/// Buffers one line at most `max_line` bytes long; the rest of a longer line
/// is counted, not kept, so a guest cannot grow host memory by never writing
/// a newline.
struct LineWriter {
    plugin: Arc<str>,
    stream: &'static str,
    logs: Arc<LogBudget>,
    max_line: usize,
    line: Vec<u8>,
    overflow: usize,
}

impl LineWriter {
    fn push(&mut self, bytes: &[u8]) {
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            let (body, ends) = match chunk.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (chunk, false),
            };
            let room = self.max_line.saturating_sub(self.line.len());
            self.line.extend_from_slice(&body[..body.len().min(room)]);
            self.overflow += body.len().saturating_sub(room);
            if ends {
                self.emit_line();
            }
        }
    }

    fn emit_line(&mut self) {
        if self.logs.take() {
            let text = String::from_utf8_lossy(&self.line);
            let text = text.trim_end_matches('\r');
            if self.overflow > 0 {
                tracing::info!(target: "plugbus::guest", plugin = &*self.plugin, stream = self.stream, "{text}… [{} bytes truncated]", self.overflow);
            } else {
                tracing::info!(target: "plugbus::guest", plugin = &*self.plugin, stream = self.stream, "{text}");
            }
        }
        self.line.clear();
        self.overflow = 0;
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.get_mut().push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.line.is_empty() {
            this.emit_line();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit_line();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_truncated_and_budget_counts() {
        let logs = Arc::new(LogBudget::default());
        logs.reset(2);
        let mut w = LineWriter {
            plugin: "p".into(),
            stream: "stdout",
            logs: logs.clone(),
            max_line: 8,
            line: vec![],
            overflow: 0,
        };
        w.push(b"0123456789abcdef");
        assert_eq!(w.line.len(), 8, "never buffers more than one line's limit");
        assert_eq!(w.overflow, 8);
        w.push(b"\nshort\nthird\n");
        assert!(w.line.is_empty());
        assert_eq!(logs.dropped(), 1, "the third line is over the budget of two");
    }
}
