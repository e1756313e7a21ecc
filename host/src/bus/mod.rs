//! The bus: subscription, emission, delivery to native handlers and plugin
//! queues, plugin loading and unloading, flush and shutdown.
//!
//! Ownership: [`Bus`] is a cheap handle to one `Shared`. The subscription
//! index is an immutable snapshot behind `arc-swap` (emit never locks); each
//! plugin's store lives in its worker task and nowhere else; the bus holds
//! only the worker's queue sender, counters and stop signal. Workers and
//! plugin stores refer back to the bus weakly, so dropping every `Bus`
//! handle closes the queues and stops the workers.

pub mod builder;
pub(crate) mod history;
pub(crate) mod lifecycle;
pub(crate) mod native;
pub mod pacer;
pub(crate) mod recent_ids;
pub(crate) mod registry;
pub(crate) mod retention;
pub mod startup;
pub(crate) mod watch;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::{Notify, oneshot};

use crate::bus::history::History;
use crate::bus::native::{AsyncHandler, BoxFuture, CatchUnwind, HandlerOptions, SyncHandler, panic_message};
use crate::bus::registry::{Entry, Registry, Target};
use crate::event::Event;
use crate::limits::Limits;
use crate::log::{EventLog, LogError, LogStatus};
use crate::outcome::{Delivery, DeliveryReport, DropReason, Failure, Outcome};
use crate::pattern::{Pattern, PatternError};
use crate::plugin::engine::PluginEngine;
use crate::plugin::port::{BusPort, Captured, FollowUps};
use crate::plugin::worker::{Job, PluginHandle};
use crate::plugin::{PluginInfo, PluginState};

/// Stops a helper task of the bus (the directory watcher) and waits for it.
pub(crate) type Stopper = Box<dyn FnOnce() -> BoxFuture + Send>;

/// Called for every hard failure: `(event, handler name, failure)`.
pub type FailureHook = Arc<dyn Fn(&Event, &str, &Failure) + Send + Sync>;

/// How long [`Bus::shutdown`] lets plugins drain their queues (and native
/// async handlers finish) before giving up on what is left. Ten seconds
/// drains a full default queue (1024 events) of any healthy plugin many
/// times over; a plugin that needs longer is stuck, not busy.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What [`Bus::publish_once_all`] published.
#[derive(Debug, Clone)]
pub struct Published {
    /// The events published, in order (without the duplicates).
    pub events: Vec<Event>,
    /// Events skipped because their id was taken before.
    pub duplicates: usize,
    /// On NATS, the stream sequence number of each published event.
    pub stream_seqs: Option<Vec<u64>>,
}

/// What [`Bus::shutdown_with`] did.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    /// Events plugins processed while shutting down (their queued backlog).
    pub drained: u64,
    /// Events dropped because the grace period ran out (0 when it did not).
    pub dropped: u64,
    /// True when the grace period ran out before every queue was drained.
    pub timed_out: bool,
    /// Every plugin's final state and counters.
    pub plugins: Vec<PluginInfo>,
}

/// A handle to an event bus. Cheap to clone, `Send + Sync`.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use serde_json::json;
/// let bus = plugbus::Bus::builder().plugin_dir("plugins/dist").history(100).build().await?;
/// bus.on("llm.*", |e| println!("{} {}", e.name(), e.payload()))?;
/// bus.emit("llm.call", json!({ "model": "m" }));
/// bus.flush().await;
/// bus.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bus {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("plugins", &lock(&self.shared.plugins).keys().collect::<Vec<_>>())
            .field("published", &self.published())
            .finish_non_exhaustive()
    }
}

/// A native subscription, returned by [`Bus::on`] and friends; pass it to
/// [`Bus::off`] to unsubscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    id: u64,
    pattern: String,
}

impl Subscription {
    /// The id, also the handler's name in reports: `native#<id>`.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The pattern subscribed to.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

/// A plugin file that could not be loaded from the plugin directory.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFailure {
    /// The file at fault.
    pub path: PathBuf,
    /// Why (the [`LoadError`](crate::LoadError) text).
    pub reason: String,
}

pub(crate) use crate::sync::lock;

fn native_name(id: u64) -> String {
    format!("native#{id}")
}

pub(crate) struct Shared {
    pub(crate) registry: ArcSwap<Registry>,
    /// Serialises registry updates (copy, modify, swap).
    pub(crate) writer: Mutex<()>,
    /// Orders the enqueue phase of publishing; see `dispatch`.
    pub(crate) publish_lock: Mutex<()>,
    /// Serialises redrives: two at once (a client retrying a slow one)
    /// would both send every letter.
    pub(crate) redriving: tokio::sync::Mutex<()>,
    /// Registry entry numbers (subscription ids): delivery order among handlers.
    pub(crate) next_entry: AtomicU64,
    /// The event log, when the bus has one: it numbers events.
    pub(crate) log: Option<EventLog>,
    /// Whether plugins keep their state beside the log (snapshots, dead
    /// letters, catch-up); false on a replay's bus, which must never touch
    /// the live plugins' files.
    keep_plugin_state: bool,
    /// Per plugin, the position of the snapshot it keeps beside the log:
    /// the log's retention floor is the lowest plus one. Seeded at open from
    /// the snapshot files, so a plugin not loaded yet (compiling, or failing
    /// to load this run) still holds back what it needs; an entry leaves
    /// only when its plugin is unloaded.
    kept_snapshots: Mutex<BTreeMap<String, u64>>,
    /// Plugins that kept a snapshot in this process: theirs may record a
    /// position at or past the log's end at open (events of this run).
    kept_this_run: Mutex<std::collections::BTreeSet<String>>,
    /// What becomes of plugins' follow-up events (published, or captured
    /// by a replay).
    pub(crate) follow_ups: FollowUps,
    /// Event schemas checked at emit; `None` when none are registered.
    schemas: Option<crate::schema::Schemas>,
    /// On NATS: events go to the stream, plugins pull from their consumers.
    #[cfg(feature = "nats")]
    pub(crate) nats: Option<crate::nats::NatsLink>,
    /// The last event sequence number handed out, when there is no log.
    event_seq: AtomicU64,
    /// Ids of events published idempotently ([`Bus::publish_once_all`]).
    recent_ids: Mutex<recent_ids::RecentIds>,
    pub(crate) plugins: Mutex<BTreeMap<String, Arc<PluginHandle>>>,
    pub(crate) engine: Arc<PluginEngine>,
    pub(crate) limits: Limits,
    /// What plugin signatures must be (checked on every load and reload).
    pub(crate) signatures: Arc<crate::signature::SignaturePolicy>,
    /// What manifests may grant, when a capability policy is set.
    pub(crate) policy: Option<crate::policy::Policy>,
    /// Plugins' outbound requests: the journal, and whether this bus replays.
    pub(crate) http: crate::http::send::HttpSetup,
    /// The request journal's compactions after log retention, which
    /// shutdown waits for.
    pub(crate) compactions: Arc<retention::Compactions>,
    /// Every plugin worker's state while it lives (loaded, or draining
    /// after an unload or a swap), by plugin name: the events each may
    /// still hand to its plugin hold that plugin's journaled requests.
    pub(crate) workers: Mutex<Vec<(String, Weak<crate::plugin::worker::WorkerState>)>>,
    history: Option<History>,
    on_failure: Option<FailureHook>,
    /// Events published since the bus was built.
    published: AtomicU64,
    /// Jobs queued or running, plus native async handlers running: what
    /// [`Bus::flush`] waits for.
    pending: AtomicUsize,
    idle: Notify,
    /// The level of `pending` a [`Bus::drain_to`] waits for (`usize::MAX`:
    /// none); `drained` is notified when `pending` falls to it.
    low_water: AtomicUsize,
    drained: Notify,
    pub(crate) closed: AtomicBool,
    pub(crate) runtime: Handle,
    pub(crate) load_failures: Mutex<Vec<LoadFailure>>,
    /// Serialises load, swap and unload, so two changes to one plugin never
    /// interleave.
    pub(crate) lifecycle: tokio::sync::Mutex<()>,
    /// Stops the directory watcher, when watching (dropping it stops it too).
    watcher: Mutex<Option<Stopper>>,
    /// The plugins of the directory loading in the background (`start`).
    pub(crate) startup: startup::Startup,
    /// This very `Shared`, for the calls through [`BusPort`] that need its `Arc`.
    me: Weak<Shared>,
}

/// Everything a bus is built from, resolved by the builder.
pub(crate) struct Parts {
    pub engine: PluginEngine,
    pub limits: Limits,
    pub history: Option<History>,
    pub on_failure: Option<FailureHook>,
    pub runtime: Handle,
    pub log: Option<EventLog>,
    pub keep_plugin_state: bool,
    /// The snapshots kept beside the log at open, by plugin.
    pub kept_snapshots: BTreeMap<String, u64>,
    pub follow_ups: FollowUps,
    pub schemas: Option<crate::schema::Schemas>,
    pub signatures: Arc<crate::signature::SignaturePolicy>,
    pub policy: Option<crate::policy::Policy>,
    pub http: crate::http::send::HttpSetup,
    #[cfg(feature = "nats")]
    pub nats: Option<crate::nats::NatsLink>,
}

impl Shared {
    pub(crate) fn new(parts: Parts, me: Weak<Shared>) -> Shared {
        let Parts {
            engine,
            limits,
            history,
            on_failure,
            runtime,
            log,
            keep_plugin_state,
            kept_snapshots,
            follow_ups,
            schemas,
            signatures,
            policy,
            http,
            #[cfg(feature = "nats")]
            nats,
        } = parts;
        Shared {
            registry: ArcSwap::from_pointee(Registry::default()),
            writer: Mutex::new(()),
            publish_lock: Mutex::new(()),
            redriving: tokio::sync::Mutex::new(()),
            next_entry: AtomicU64::new(1),
            log,
            keep_plugin_state,
            kept_snapshots: Mutex::new(kept_snapshots),
            kept_this_run: Mutex::new(std::collections::BTreeSet::new()),
            follow_ups,
            schemas,
            #[cfg(feature = "nats")]
            nats,
            event_seq: AtomicU64::new(0),
            recent_ids: Mutex::new(recent_ids::RecentIds::new(recent_ids::RECENT_IDS)),
            plugins: Mutex::new(BTreeMap::new()),
            engine: Arc::new(engine),
            limits,
            signatures,
            policy,
            http,
            compactions: Arc::default(),
            workers: Mutex::new(Vec::new()),
            history,
            on_failure,
            published: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            idle: Notify::new(),
            low_water: AtomicUsize::new(usize::MAX),
            drained: Notify::new(),
            closed: AtomicBool::new(false),
            runtime,
            load_failures: Mutex::new(Vec::new()),
            startup: startup::Startup::default(),
            lifecycle: tokio::sync::Mutex::new(()),
            watcher: Mutex::new(None),
            me,
        }
    }

    /// The log plugins keep their state beside (snapshots, dead letters,
    /// catch-up): the bus's log, unless this is a replay's bus.
    pub(crate) fn state_log(&self) -> Option<&EventLog> {
        self.log.as_ref().filter(|_| self.keep_plugin_state)
    }

    pub(crate) fn set_watcher(&self, stopper: Stopper) {
        *lock(&self.watcher) = Some(stopper);
    }
}

impl BusPort for Shared {
    fn publish(&self, event: Event) {
        // Dispatch spawns tasks that hold the bus: it needs the `Arc`.
        if let Some(me) = self.me.upgrade() {
            me.publish(event);
        }
    }

    fn follow_up(&self, follow_up: Captured) -> Result<(), String> {
        // On NATS, the parent's ack waits for this follow-up's store ack (or
        // Naks when it is not stored). Tracked before anything can refuse
        // it: a follow-up refused because the bus is closing (a shutdown
        // past its grace period, the parent's handler still running) then
        // answers the parent's wait with `ShutDown`, so the parent is Nak'd
        // and its next delivery produces the follow-ups, instead of being
        // acknowledged without them.
        #[cfg(feature = "nats")]
        let nats = match (&self.nats, &self.follow_ups) {
            (Some(nats), FollowUps::Publish) => {
                nats.publisher
                    .track(&follow_up.plugin, follow_up.parent_seq, follow_up.event.id());
                Some(nats)
            }
            _ => None,
        };
        if self.closed.load(Ordering::Acquire) {
            #[cfg(feature = "nats")]
            if let Some(nats) = nats {
                nats.publisher
                    .refuse(&follow_up.event, crate::nats::publisher::NotStored::ShutDown);
            }
            return Err("the bus is shutting down; event not accepted".into());
        }
        match &self.follow_ups {
            // Closing after the check above is answered by `dispatch`.
            FollowUps::Publish => BusPort::publish(self, follow_up.event),
            FollowUps::Capture(sink) => {
                let _ = sink.send(follow_up);
            }
            FollowUps::Discard(count) => {
                count.fetch_add(1, Ordering::Relaxed);
            }
            FollowUps::Republish(republish) => {
                if republish.logged.contains(follow_up.event.id()) {
                    republish.already_logged.fetch_add(1, Ordering::Relaxed);
                } else {
                    republish.published.fetch_add(1, Ordering::Relaxed);
                    BusPort::publish(self, follow_up.event);
                }
            }
        }
        Ok(())
    }

    fn job_done(&self) {
        self.done();
    }

    fn check_schema(&self, name: &str, payload: &Value) -> Result<(), String> {
        match &self.schemas {
            Some(schemas) => schemas.check(name, payload).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    fn report_failure(&self, event: &Event, handler: &str, failure: &Failure) {
        Shared::report_failure(self, event, handler, failure);
    }

    fn snapshot_kept(&self, plugin: &str, seq: Option<u64>) {
        let Some(log) = self.state_log() else { return };
        let mut kept = lock(&self.kept_snapshots);
        match seq {
            Some(seq) => {
                kept.insert(plugin.to_owned(), seq);
                lock(&self.kept_this_run).insert(plugin.to_owned());
            }
            None => {
                kept.remove(plugin);
            }
        }
        log.set_retention_floor(crate::plugin::recovery::floor_of(&kept));
    }

    fn under_publish_lock(&self, f: &mut dyn FnMut()) {
        let _order = lock(&self.publish_lock);
        f();
    }
}

#[cfg(feature = "nats")]
impl crate::nats::port::NatsPort for Shared {
    fn offer(
        &self,
        plugin: &str,
        job: Job,
        subscribed: &mut dyn FnMut(&[String]) -> bool,
    ) -> crate::nats::port::Offered {
        use crate::nats::port::Offered;
        let handle = lock(&self.plugins).get(plugin).cloned();
        match handle {
            Some(p) if !subscribed(&p.subscriptions) => Offered::NotSubscribed,
            Some(p) => {
                self.enqueue(&p, job);
                Offered::Queued
            }
            None => Offered::NotLoaded,
        }
    }

    fn quarantine_left(&self, plugin: &str) -> Option<Duration> {
        let handle = lock(&self.plugins).get(plugin).cloned()?;
        if handle.quarantined_now() {
            handle.state.retry_in()
        } else {
            None
        }
    }

    fn announce(&self, event: Event) {
        BusPort::publish(self, event);
    }
}

/// What `emit_and_wait` collects per handler.
enum Wait {
    Ready(Outcome),
    Task(tokio::task::JoinHandle<Outcome>),
    Reply(oneshot::Receiver<Outcome>),
}

impl Shared {
    /// Applies the schema policy to a new event from the embedder: `Err`
    /// when it must not be delivered (policy `Reject`). Counted and logged
    /// either way.
    /// The last position a kept snapshot of `plugin` may record: the log's
    /// end as this process found it, unless the plugin kept a snapshot in
    /// this run (then the log's end now). A snapshot past it is stale (the
    /// log lost a tail it never made durable, and this run's events reuse
    /// those numbers), however far the log has grown since.
    pub(crate) fn snapshot_end(&self, log: &EventLog, plugin: &str) -> u64 {
        if lock(&self.kept_this_run).contains(plugin) {
            log.last_seq()
        } else {
            log.opened_at().saturating_sub(1)
        }
    }

    fn admit(&self, event: &Event) -> Result<(), crate::SchemaError> {
        let Some(schemas) = &self.schemas else { return Ok(()) };
        let Err(e) = schemas.check(event.name(), event.payload()) else {
            return Ok(());
        };
        schemas.count_rejected();
        match schemas.policy {
            crate::SchemaPolicy::Reject => {
                tracing::warn!(event = event.name(), event_id = event.id(), path = %e.path, "event refused by its schema: {}", e.message);
                Err(e)
            }
            crate::SchemaPolicy::Warn => {
                tracing::warn!(event = event.name(), event_id = event.id(), path = %e.path, "event does not fit its schema (delivered: schema policy warn): {}", e.message);
                Ok(())
            }
        }
    }

    /// Publishes an event: records it, runs native sync handlers inline,
    /// spawns async ones and queues it for plugins. Never blocks, never fails.
    pub(crate) fn publish(self: &Arc<Self>, event: Event) -> Event {
        let event = event.unpublished();
        self.dispatch(&event, None, false);
        event
    }

    /// Delivers an event read back from a log, keeping its sequence number
    /// (and not logging it again): what replay feeds plugins.
    pub(crate) fn publish_replayed(self: &Arc<Self>, event: &Event) {
        self.dispatch(event, None, false);
    }

    /// Numbers the event (and queues it for the log). Called under the
    /// publish lock, so sequence order is publish order.
    /// Gives `event` its sequence number; with a log, appends it there.
    /// Returns whether the log took it (its writer's buffer may be full), or
    /// `true` without a log.
    fn sequence(&self, event: &Event, durable: bool) -> bool {
        match &self.log {
            Some(log) => log.append(event, durable).1,
            None => {
                let seq = self.event_seq.fetch_add(1, Ordering::Relaxed) + 1;
                event.set_seq(seq);
                true
            }
        }
    }

    /// Two phases. First, under `publish_lock`, the event is recorded in the
    /// history and offered to every matching plugin queue (`try_send`, never
    /// blocking): so all plugins and the history see one global order, and a
    /// follow-up emitted by a fast plugin can never reach another plugin's
    /// queue before its parent. Then, outside the lock, native handlers run
    /// in registration order (they may emit themselves).
    fn dispatch(self: &Arc<Self>, event: &Event, mut waits: Option<&mut Vec<(String, Wait)>>, durable: bool) {
        if self.closed.load(Ordering::Acquire) {
            tracing::debug!(event = event.name(), "bus is shut down; event not delivered");
            // Whoever waits for its store ack learns it will not come.
            #[cfg(feature = "nats")]
            if let Some(nats) = &self.nats {
                nats.publisher
                    .refuse(event, crate::nats::publisher::NotStored::ShutDown);
            }
            return;
        }
        // The snapshot is taken under the publish lock, where every plugin
        // change is stored too: once a plugin is swapped or unloaded, no
        // publish can still offer events to its old queue.
        // Measured before the lock: a large payload is walked while other
        // publishers go on.
        let history_size = self.history.as_ref().map(|_| event.approx_bytes());
        let registry = {
            let _order = lock(&self.publish_lock);
            let registry = self.registry.load_full();
            // A replayed event keeps the place it has in the log.
            let stored = event.seq().is_some() || self.sequence(event, durable);
            self.published.fetch_add(1, Ordering::Relaxed);
            if let (Some(history), Some(size)) = (&self.history, history_size) {
                history.push(event, size);
            }
            // On NATS the stream is the queue: plugins pull their events
            // from their consumers, on whichever host takes them.
            #[cfg(feature = "nats")]
            let local_plugins = match &self.nats {
                Some(nats) => {
                    nats.publisher.publish(event);
                    false
                }
                None => true,
            };
            #[cfg(not(feature = "nats"))]
            let local_plugins = true;
            registry.for_each_match(event.name(), |entry| {
                if !local_plugins {
                    return;
                }
                if let Target::Plugin(p) = &entry.target {
                    let (reply, rx) = match waits {
                        Some(_) => {
                            let (tx, rx) = oneshot::channel();
                            (Some(tx), Some(rx))
                        }
                        None => (None, None),
                    };
                    self.enqueue_live(
                        p,
                        Job {
                            event: event.clone(),
                            reply,
                        },
                        stored,
                    );
                    if let (Some(waits), Some(rx)) = (waits.as_deref_mut(), rx) {
                        waits.push((p.spec.name.to_string(), Wait::Reply(rx)));
                    }
                }
            });
            registry
        };
        registry.for_each_match(event.name(), |entry| match &entry.target {
            Target::Sync(h) => {
                if !h.claim() {
                    return;
                }
                if h.once.is_some() {
                    self.remove(entry.seq);
                }
                let outcome = h.call(event);
                if let Outcome::Failed(f) = &outcome {
                    let name = native_name(h.id);
                    tracing::error!(handler = %name, event = event.name(), event_id = event.id(), failure = f.kind(), "native handler failed: {f}");
                    self.report_failure(event, &name, f);
                }
                if let Some(waits) = waits.as_deref_mut() {
                    waits.push((native_name(h.id), Wait::Ready(outcome)));
                }
            }
            Target::Async(h) => {
                let task = self.spawn_async(h, event);
                if let Some(waits) = waits.as_deref_mut() {
                    waits.push((native_name(h.id), Wait::Task(task)));
                }
            }
            Target::Plugin(_) => {}
        });
    }

    /// Offers `job` to plugin `p`'s queue, counted as in flight for
    /// [`Bus::flush`]; a quarantined plugin refuses it at once.
    fn enqueue(&self, p: &PluginHandle, job: Job) {
        self.enqueue_by(p, job, p.quarantined_now(), PluginHandle::offer);
    }

    /// [`enqueue`](Self::enqueue) for an event published live, under the
    /// publish lock: on a bus with a log, one the queue cannot take is left
    /// in the log for the plugin to read back
    /// ([`PluginHandle::offer_live`]), still in flight until it has. While
    /// the plugin has events left there, a quarantine does not refuse the
    /// event: it joins them, and is read back once the quarantine is over
    /// or let go of (and counted dropped) with them. Refused, its number
    /// would fall inside what is read back: dropped and handled both.
    fn enqueue_live(&self, p: &PluginHandle, job: Job, stored: bool) {
        let refused = p.quarantined_now() && !p.reading_back();
        self.enqueue_by(p, job, refused, |p, job| p.offer_live(job, stored));
    }

    /// Both enqueues: `offer` answers whether `p` took the job (or will
    /// read it back), which then counts as in flight until it is done;
    /// `quarantined` refuses it at once.
    fn enqueue_by(
        &self,
        p: &PluginHandle,
        job: Job,
        quarantined: bool,
        offer: impl FnOnce(&PluginHandle, Job) -> bool,
    ) {
        if quarantined {
            p.refuse(job, DropReason::Quarantined);
        } else {
            self.pending.fetch_add(1, Ordering::AcqRel);
            if !offer(p, job) {
                self.done();
            }
        }
    }

    fn spawn_async(self: &Arc<Self>, h: &Arc<AsyncHandler>, event: &Event) -> tokio::task::JoinHandle<Outcome> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        let fut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (h.f)(event.clone())));
        let shared = self.clone();
        let event = event.clone();
        let id = h.id;
        self.runtime.spawn(async move {
            let outcome = match fut {
                Ok(fut) => CatchUnwind(fut).await,
                Err(panic) => Outcome::Failed(Failure::Panic(panic_message(&*panic))),
            };
            if let Outcome::Failed(f) = &outcome {
                let name = native_name(id);
                tracing::error!(handler = %name, event = event.name(), event_id = event.id(), failure = f.kind(), "native async handler failed: {f}");
                shared.report_failure(&event, &name, f);
            }
            shared.done();
            outcome
        })
    }

    /// One queued job or async handler finished.
    pub(crate) fn done(&self) {
        // SeqCst pairs with `drain_to`'s store of its level and load of
        // `pending`: either it sees this decrement or this sees its level.
        let left = self.pending.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0 {
            self.idle.notify_waiters();
        }
        // `pending` falls one at a time, so it passes through the level.
        if left == self.low_water.load(Ordering::SeqCst) {
            self.drained.notify_waiters();
        }
    }

    /// Runs the embedder's failure hook, isolated like any handler.
    pub(crate) fn report_failure(&self, event: &Event, handler: &str, failure: &Failure) {
        if let Some(hook) = &self.on_failure
            && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(event, handler, failure))).is_err()
        {
            tracing::error!(handler, event = event.name(), "the on_failure hook panicked");
        }
    }

    fn subscribe(&self, patterns: &[Pattern], priority: i32, make: impl FnOnce(u64) -> Target) -> u64 {
        let seq = self.next_entry.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            seq,
            priority,
            target: make(seq),
        };
        self.update_registry(|r| r.insert(patterns, entry));
        seq
    }

    pub(crate) fn remove(&self, seq: u64) -> bool {
        let mut removed = false;
        self.update_registry(|r| removed = r.remove(seq));
        removed
    }

    /// Copy, modify, swap. Writers are serialised by `writer`; the swap
    /// itself happens under `publish_lock` (see `dispatch`).
    pub(crate) fn update_registry(&self, f: impl FnOnce(&mut Registry)) {
        self.update_registry_at(f);
    }

    /// [`update_registry`](Self::update_registry), returning the last event
    /// sequence number handed out before the swap: events after it see the
    /// new registry, events up to it the old one (the catch-up cut).
    pub(crate) fn update_registry_at(&self, f: impl FnOnce(&mut Registry)) -> u64 {
        let _guard = lock(&self.writer);
        let mut next = Registry::clone(&self.registry.load());
        f(&mut next);
        let _order = lock(&self.publish_lock);
        self.registry.store(Arc::new(next));
        match &self.log {
            Some(log) => log.last_seq(),
            None => self.event_seq.load(Ordering::Relaxed),
        }
    }
}

impl Bus {
    /// Subscribes a native handler. It runs inline on the emitting thread, in
    /// registration order with the other native handlers of the same
    /// priority (see [`on_with`](Self::on_with)); a panic is caught and
    /// reported, never propagated.
    ///
    /// # Errors
    /// [`PatternError`] for an invalid pattern.
    pub fn on<F>(&self, pattern: &str, f: F) -> Result<Subscription, PatternError>
    where
        F: Fn(&Event) + Send + Sync + 'static,
    {
        self.on_with(pattern, HandlerOptions::new(), f)
    }

    /// Like [`on`](Self::on), but the handler runs at most once, even when
    /// several threads emit matching events at the same moment; it then
    /// unsubscribes itself.
    ///
    /// # Errors
    /// [`PatternError`] for an invalid pattern.
    pub fn once<F>(&self, pattern: &str, f: F) -> Result<Subscription, PatternError>
    where
        F: Fn(&Event) + Send + Sync + 'static,
    {
        self.on_with(pattern, HandlerOptions::new().once(), f)
    }

    /// Subscribes a native handler with [`HandlerOptions`]: a priority
    /// (higher runs first; ties in registration order) and/or `once`.
    ///
    /// Priority orders the native handlers of one event among themselves.
    /// Plugins are not part of that order: every matching plugin has the
    /// event queued before any native handler runs, and each runs on its own
    /// queue, concurrently with the emitter.
    ///
    /// ```
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use plugbus::HandlerOptions;
    /// let bus = plugbus::Bus::builder().build().await?;
    /// bus.on("tool.*", |e| println!("audit (registered first) {}", e.name()))?;
    /// bus.on_with("tool.*", HandlerOptions::new().priority(10), |e| {
    ///     println!("guard (runs first) {}", e.name())
    /// })?;
    /// bus.emit("tool.called", serde_json::json!({}));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`PatternError`] for an invalid pattern.
    pub fn on_with<F>(&self, pattern: &str, options: HandlerOptions, f: F) -> Result<Subscription, PatternError>
    where
        F: Fn(&Event) + Send + Sync + 'static,
    {
        let p = Pattern::parse(pattern)?;
        let once = options.is_once();
        let id = self
            .shared
            .subscribe(std::slice::from_ref(&p), options.priority_value(), |id| {
                Target::Sync(Arc::new(SyncHandler {
                    id,
                    f: Box::new(f),
                    once: once.then(|| AtomicBool::new(false)),
                }))
            });
        Ok(Subscription {
            id,
            pattern: pattern.to_owned(),
        })
    }

    /// Subscribes an async native handler: each matching event spawns
    /// `f(event)` as a task on the bus's runtime. A panic is caught and
    /// reported. [`flush`](Self::flush) waits for these tasks too.
    ///
    /// # Errors
    /// [`PatternError`] for an invalid pattern.
    pub fn on_async<F, Fut>(&self, pattern: &str, f: F) -> Result<Subscription, PatternError>
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_async_with(pattern, HandlerOptions::new(), f)
    }

    /// [`on_async`](Self::on_async) with a priority: tasks are spawned in
    /// priority order, then run concurrently. `once` is not available for
    /// async handlers (it is ignored).
    ///
    /// # Errors
    /// [`PatternError`] for an invalid pattern.
    pub fn on_async_with<F, Fut>(
        &self,
        pattern: &str,
        options: HandlerOptions,
        f: F,
    ) -> Result<Subscription, PatternError>
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let p = Pattern::parse(pattern)?;
        let f = move |e: Event| -> BoxFuture { Box::pin(f(e)) };
        let id = self
            .shared
            .subscribe(std::slice::from_ref(&p), options.priority_value(), |id| {
                Target::Async(Arc::new(AsyncHandler { id, f: Box::new(f) }))
            });
        Ok(Subscription {
            id,
            pattern: pattern.to_owned(),
        })
    }

    /// Removes a native subscription. Returns false if it was already gone
    /// (removed before, or a `once` handler that fired).
    pub fn off(&self, subscription: &Subscription) -> bool {
        self.shared.remove(subscription.id)
    }

    /// Emits an event from the host. Returns at once: native handlers have
    /// run, plugins have it queued. Never fails because of a handler.
    ///
    /// The name is not validated (the embedder is trusted); check names that
    /// come from outside with [`validate_event_name`](crate::validate_event_name),
    /// as `plugbus run` does. Names emitted by plugins are always validated.
    pub fn emit(&self, name: &str, payload: Value) -> Event {
        self.publish(Event::new(name, payload))
    }

    /// Publishes a prepared event (for a correlation id, say).
    pub fn publish(&self, event: Event) -> Event {
        match self.shared.admit(&event) {
            Ok(()) => self.shared.publish(event),
            // Refused by its schema: counted and logged; nobody gets it.
            Err(_) => event.unpublished(),
        }
    }

    /// Emits an event after checking it against its schema (see
    /// [`crate::schema`]); like [`emit`](Self::emit) otherwise.
    ///
    /// # Errors
    /// [`SchemaError`](crate::SchemaError) naming the failing path: nothing
    /// was published.
    pub fn try_emit(&self, name: &str, payload: Value) -> Result<Event, crate::SchemaError> {
        self.try_publish(Event::new(name, payload))
    }

    /// [`publish`](Self::publish) after checking the event against its schema.
    ///
    /// # Errors
    /// As for [`try_emit`](Self::try_emit).
    pub fn try_publish(&self, event: Event) -> Result<Event, crate::SchemaError> {
        self.check_schema(&event)?;
        Ok(self.shared.publish(event))
    }

    /// Checks an event against the schema registered for its name, without
    /// publishing it (`Ok` when there is none).
    ///
    /// # Errors
    /// As for [`try_emit`](Self::try_emit).
    pub fn check_schema(&self, event: &Event) -> Result<(), crate::SchemaError> {
        match &self.shared.schemas {
            Some(schemas) => schemas.check(event.name(), event.payload()),
            None => Ok(()),
        }
    }

    /// Events plain `emit` met that did not fit their schema (refused, or
    /// delivered under [`SchemaPolicy::Warn`](crate::SchemaPolicy::Warn)).
    pub fn schema_rejected(&self) -> u64 {
        self.shared.schemas.as_ref().map_or(0, |s| s.rejected())
    }

    /// Emits an event and returns once it is durable in the event log under
    /// the log's [`Durability`](crate::Durability) policy. Handlers get it
    /// exactly as with [`emit`](Self::emit) (this does not wait for them).
    /// Unlike `emit`, the event is never refused by a full log buffer.
    ///
    /// # Errors
    /// [`LogError::Disabled`] when the bus has no log, [`LogError::Closed`]
    /// when the bus is shut down, [`LogError::Failed`] when the log stopped
    /// on a write error, [`LogError::TooLarge`] (nothing published) when the
    /// event would not fit a frame of the log ([`crate::log::MAX_FRAME`]).
    pub async fn emit_durable(&self, name: &str, payload: Value) -> Result<Event, LogError> {
        self.publish_durable(Event::new(name, payload)).await
    }

    /// [`publish`](Self::publish), returning once the event is durable like
    /// [`emit_durable`](Self::emit_durable).
    ///
    /// # Errors
    /// As for [`emit_durable`](Self::emit_durable).
    pub async fn publish_durable(&self, event: Event) -> Result<Event, LogError> {
        let mut events = self.publish_durable_all([event]).await?;
        events.pop().ok_or(LogError::Closed)
    }

    /// Publishes several events in order, returning once all of them are
    /// durable (one wait for the group: the log is written in order).
    ///
    /// # Errors
    /// As for [`emit_durable`](Self::emit_durable).
    pub async fn publish_durable_all(&self, events: impl IntoIterator<Item = Event>) -> Result<Vec<Event>, LogError> {
        let Some(log) = &self.shared.log else {
            return Err(LogError::Disabled);
        };
        let events: Vec<Event> = events.into_iter().collect();
        self.admit_all(&events)?;
        self.publish_admitted_durable(log, events).await
    }

    /// All or nothing: a schema that refuses one event refuses the group,
    /// and so does (with a log) an event that would not fit a frame: never
    /// acknowledge what the log could not read back.
    fn admit_all(&self, events: &[Event]) -> Result<(), LogError> {
        for event in events {
            self.shared.admit(event).map_err(|e| LogError::Refused(e.to_string()))?;
            if let Some(log) = &self.shared.log {
                log.check_size(event)?;
            }
        }
        Ok(())
    }

    /// Publishes events already admitted to the bus with `log`, in order,
    /// returning once all of them are durable (one wait for the group: the
    /// log is written in order).
    async fn publish_admitted_durable(&self, log: &EventLog, events: Vec<Event>) -> Result<Vec<Event>, LogError> {
        let mut published = Vec::with_capacity(events.len());
        let mut last = 0;
        for event in events {
            let event = event.unpublished();
            self.shared.dispatch(&event, None, true);
            last = last.max(event.seq().ok_or(LogError::Closed)?);
            published.push(event);
        }
        log.wait_durable(last).await?;
        Ok(published)
    }

    /// Publishes `events` in order, skipping every event whose id this bus
    /// already took through this method: an idempotent ingest, for senders
    /// that retry a request with the same derived ids (an OTLP exporter).
    /// Returns once what was published is as safe as the bus makes it:
    /// durable in the log under its policy (with a log), stored by the
    /// stream (on NATS), or queued (neither).
    ///
    /// The window is the last [`RECENT_IDS`](recent_ids::RECENT_IDS) ids
    /// published this way, and with a log also the ids of the log's last
    /// that many events (read at the first call), so a retry that reaches a
    /// restarted host is recognised too. On NATS the stream's own duplicate
    /// window (`Nats-Msg-Id` = the event id) applies as well. Ids of a
    /// publish that failed are forgotten, so the sender's retry is taken.
    ///
    /// ```
    /// # async fn demo() -> Result<(), plugbus::LogError> {
    /// use plugbus::Event;
    /// let bus = plugbus::Bus::builder().build().await.unwrap();
    /// let first = bus.publish_once_all([Event::new("a", serde_json::Value::Null)]).await?;
    /// let retry = bus.publish_once_all(first.events.clone()).await?;
    /// assert_eq!((first.events.len(), retry.events.len(), retry.duplicates), (1, 0, 1));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`LogError::Refused`] when a schema refuses one of the events
    /// (nothing is published); otherwise as for
    /// [`publish_durable_all`](Self::publish_durable_all) with a log, or
    /// [`publish_to_stream`](Self::publish_to_stream) on NATS.
    pub async fn publish_once_all(&self, events: impl IntoIterator<Item = Event>) -> Result<Published, LogError> {
        let events: Vec<Event> = events.into_iter().collect();
        self.admit_all(&events)?;
        self.publish_once_admitted(events).await
    }

    /// Applies the schema policy to one new event, as every publish does
    /// (counted and logged): `Err` when the event must not be published.
    /// For a front end that refuses events one by one
    /// ([`publish_once_admitted`](Self::publish_once_admitted) then takes the rest).
    #[cfg(feature = "otlp")]
    pub(crate) fn admit_one(&self, event: &Event) -> Result<(), crate::SchemaError> {
        self.shared.admit(event)
    }

    /// [`publish_once_all`](Self::publish_once_all) for events already
    /// admitted ([`admit_one`](Self::admit_one), and the log's size check).
    pub(crate) async fn publish_once_admitted(&self, events: Vec<Event>) -> Result<Published, LogError> {
        let (fresh, duplicates) = {
            let mut recent = lock(&self.shared.recent_ids);
            if let Some(log) = &self.shared.log {
                recent.seed_from(log);
            }
            let before = events.len();
            let fresh: Vec<Event> = events.into_iter().filter(|e| recent.insert(e.id())).collect();
            let duplicates = before - fresh.len();
            (fresh, duplicates)
        };
        let ids: Vec<String> = fresh.iter().map(|e| e.id().to_owned()).collect();
        let stored = self.publish_fresh(fresh).await;
        if stored.is_err() {
            // Not (all) stored: the sender's retry must be taken.
            lock(&self.shared.recent_ids).forget(ids.iter().map(String::as_str));
        }
        let (events, stream_seqs) = stored?;
        Ok(Published {
            events,
            duplicates,
            stream_seqs,
        })
    }

    /// The publishing half of [`publish_once_all`](Self::publish_once_all):
    /// to the stream on NATS, durably with a log, else queued.
    async fn publish_fresh(&self, fresh: Vec<Event>) -> Result<(Vec<Event>, Option<Vec<u64>>), LogError> {
        #[cfg(feature = "nats")]
        if self.shared.nats.is_some() {
            let seqs = self.stream_admitted(fresh.clone()).await?;
            return Ok((fresh, Some(seqs)));
        }
        match &self.shared.log {
            Some(log) => Ok((self.publish_admitted_durable(log, fresh).await?, None)),
            None => Ok((fresh.into_iter().map(|e| self.shared.publish(e)).collect(), None)),
        }
    }

    /// The event log's progress and counters, when the bus has a log.
    pub fn log_status(&self) -> Option<LogStatus> {
        self.shared.log.as_ref().map(EventLog::status)
    }

    /// The event log, when the bus has one (for reading it back, say).
    pub fn event_log(&self) -> Option<&EventLog> {
        self.shared.log.as_ref()
    }

    /// Emits an event and waits until every handler it matched has finished
    /// with it, reporting each outcome.
    pub async fn emit_and_wait(&self, name: &str, payload: Value) -> DeliveryReport {
        self.publish_and_wait(Event::new(name, payload)).await
    }

    /// [`publish`](Self::publish), waiting for every handler like
    /// [`emit_and_wait`](Self::emit_and_wait).
    pub async fn publish_and_wait(&self, event: Event) -> DeliveryReport {
        let event = event.unpublished();
        if self.shared.admit(&event).is_err() {
            return DeliveryReport {
                event,
                deliveries: Vec::new(),
            };
        }
        let mut waits = Vec::new();
        self.shared.dispatch(&event, Some(&mut waits), false);
        let mut deliveries = Vec::with_capacity(waits.len());
        for (handler, wait) in waits {
            let outcome = match wait {
                Wait::Ready(outcome) => outcome,
                Wait::Task(task) => task
                    .await
                    .unwrap_or_else(|e| Outcome::Failed(Failure::Host(e.to_string()))),
                Wait::Reply(rx) => rx.await.unwrap_or(Outcome::Dropped(DropReason::Unloaded)),
            };
            deliveries.push(Delivery { handler, outcome });
        }
        DeliveryReport { event, deliveries }
    }

    /// Waits until every queued event (including follow-ups emitted while
    /// waiting) has been processed and every async handler has finished.
    pub async fn flush(&self) {
        loop {
            let notified = self.shared.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.pending.load(Ordering::Acquire) == 0 {
                break;
            }
            notified.await;
        }
        // On NATS, what was published is in the stream (or given up).
        #[cfg(feature = "nats")]
        if let Some(nats) = &self.shared.nats {
            nats.publisher.flush().await;
        }
    }

    /// Waits until at most `level` plugin jobs are queued or running on
    /// this host (one per event and plugin it goes to, follow-ups
    /// included), where [`flush`](Self::flush) waits for none: a feeder
    /// that tops the queues up from there keeps the plugins' workers busy
    /// while it waits. [`Bus::pacer`] does that for a stream of events.
    ///
    /// One level is watched per bus: when two callers wait at once with
    /// different levels, one of them may wake only when the bus is idle
    /// (later than its level, never earlier).
    pub async fn drain_to(&self, level: usize) {
        let shared = &self.shared;
        if shared.pending.load(Ordering::SeqCst) <= level {
            return;
        }
        shared.low_water.store(level, Ordering::SeqCst);
        // Reset when done or cancelled, unless another caller has set its
        // own level meanwhile.
        struct Reset<'a>(&'a AtomicUsize, usize);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                let _ = self
                    .0
                    .compare_exchange(self.1, usize::MAX, Ordering::SeqCst, Ordering::SeqCst);
            }
        }
        let _reset = Reset(&shared.low_water, level);
        loop {
            let drained = shared.drained.notified();
            let idle = shared.idle.notified();
            tokio::pin!(drained, idle);
            drained.as_mut().enable();
            idle.as_mut().enable();
            if shared.pending.load(Ordering::SeqCst) <= level {
                break;
            }
            tokio::select! {
                () = drained => {}
                () = idle => {}
            }
        }
    }

    /// Publishes `events` (as [`publish`](Self::publish) does, schemas
    /// included) and waits until the stream has stored each: their stream
    /// sequence numbers. What `POST /events` answers with on NATS, so a
    /// client that got its answer knows the events survive this host.
    ///
    /// # Errors
    /// [`LogError::Refused`] naming the first event that is not in the
    /// stream (refused by its schema, publish queue full, or every publish
    /// attempt failed), [`LogError::TooLargeForStream`] for one the stream
    /// refuses by its size; `Closed` when the bus is not on NATS or shut down.
    #[cfg(feature = "nats")]
    pub async fn publish_to_stream(&self, events: impl IntoIterator<Item = Event>) -> Result<Vec<u64>, LogError> {
        self.stream()?;
        let events: Vec<Event> = events.into_iter().collect();
        self.admit_all(&events)?;
        self.stream_admitted(events).await
    }

    /// The bus's NATS link, if it is on NATS and not shutting down.
    #[cfg(feature = "nats")]
    fn stream(&self) -> Result<&crate::nats::NatsLink, LogError> {
        let Some(nats) = &self.shared.nats else {
            return Err(LogError::Refused("this bus is not on NATS".into()));
        };
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(LogError::Refused("the host is shutting down; not published".into()));
        }
        Ok(nats)
    }

    /// [`publish_to_stream`](Self::publish_to_stream) for events already admitted.
    #[cfg(feature = "nats")]
    async fn stream_admitted(&self, events: Vec<Event>) -> Result<Vec<u64>, LogError> {
        let nats = self.stream()?;
        let mut confirmations = Vec::with_capacity(events.len());
        for event in events {
            confirmations.push((event.id().to_owned(), nats.publisher.confirm(event.id())));
            self.shared.publish(event);
        }
        let mut seqs = Vec::with_capacity(confirmations.len());
        for (id, confirmation) in confirmations {
            match confirmation.await {
                Ok(Ok(seq)) => seqs.push(seq),
                Ok(Err(crate::nats::NotStored::TooLarge(reason))) => {
                    return Err(LogError::TooLargeForStream(id, reason));
                }
                Ok(Err(reason)) => return Err(LogError::Refused(format!("event {id}: {reason}"))),
                Err(_) => return Err(LogError::Refused(format!("event {id}: the bus shut down"))),
            }
        }
        Ok(seqs)
    }

    /// On NATS, stops taking events from the stream: every consumer stops
    /// pulling, and what this host already took is finished and
    /// acknowledged (ok/`Err` → Ack, a trap → Term, a drop → Nak) before
    /// this returns. The first step of a graceful shutdown, before
    /// [`flush`](Self::flush) drains the queues (which would otherwise keep
    /// being refilled from the stream); [`shutdown`](Self::shutdown) does it
    /// too. Without NATS it does nothing.
    #[cfg(feature = "nats")]
    pub async fn stop_pulling(&self) {
        if let Some(nats) = &self.shared.nats {
            nats.stop_all().await;
        }
    }

    /// The bus's NATS side: the publisher's counters and each plugin's
    /// consumer; `None` when the bus is not on NATS.
    #[cfg(feature = "nats")]
    pub fn nats_status(&self) -> Option<crate::NatsStatus> {
        self.shared.nats.as_ref().map(|n| n.status())
    }

    /// A snapshot of every loaded plugin, by name.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        lock(&self.shared.plugins).values().map(|h| info(h)).collect()
    }

    /// Asks the named plugin's read model a question: `request` (JSON text
    /// by convention) goes to the plugin's `query` export, on its own worker
    /// between two events, under its `query_fuel` and `query_deadline`.
    /// The answer carries the sequence number of the last event the plugin
    /// had handled, so it reflects exactly the events up to that one.
    ///
    /// ```no_run
    /// # async fn demo(bus: plugbus::Bus) {
    /// match bus.query("agent-runs", r#"{"run": "run-42"}"#).await {
    ///     Ok(a) => println!("as of {:?}: {}", a.as_of_seq, a.answer.get()),
    ///     Err(e) => eprintln!("{e}"),
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`QueryError`](crate::QueryError): no such plugin, no `query` export,
    /// a request over [`MAX_QUERY_REQUEST_BYTES`](crate::query::MAX_QUERY_REQUEST_BYTES),
    /// the plugin's refusal, a limit hit or a trap (the plugin is rebuilt
    /// with its state), too many queries waiting, or shutting down.
    pub async fn query(&self, plugin: &str, request: &str) -> Result<crate::QueryAnswer, crate::QueryError> {
        use crate::query::{MAX_QUERY_REQUEST_BYTES, QueryError, QueryJob};
        if request.len() > MAX_QUERY_REQUEST_BYTES {
            return Err(QueryError::TooLarge(request.len()));
        }
        let sender = {
            let plugins = lock(&self.shared.plugins);
            let handle = plugins
                .get(plugin)
                .ok_or_else(|| QueryError::UnknownPlugin(plugin.to_owned()))?;
            if !handle.spec.has_query() {
                return Err(QueryError::NoQueryExport(plugin.to_owned()));
            }
            handle.queries.clone()
        };
        let (reply, answer) = oneshot::channel();
        let job = QueryJob {
            request: request.to_owned(),
            reply,
        };
        sender.try_send(job).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => QueryError::Busy(plugin.to_owned()),
            tokio::sync::mpsc::error::TrySendError::Closed(_) => QueryError::ShuttingDown(plugin.to_owned()),
        })?;
        // A dropped reply: the worker stopped before reaching the query.
        answer
            .await
            .unwrap_or_else(|_| Err(QueryError::ShuttingDown(plugin.to_owned())))
    }

    /// How many events may be queued for the plugins at once without any
    /// plugin's queue overflowing: half the smallest queue of the loaded
    /// plugins (at least 1; the other half is room for follow-ups), and at
    /// most `cap`. A [`Pacer`](crate::Pacer) keeps a feed within it, so
    /// `plugbus run` and a [`Replay`](crate::Replay) drop nothing into a
    /// plugin whose manifest gives it a small `queue_capacity`.
    ///
    /// ```
    /// # async fn demo() -> Result<(), plugbus::Error> {
    /// let bus = plugbus::Bus::builder().build().await?;
    /// assert_eq!(bus.lossless_burst(256), 256, "no plugin: the cap");
    /// # Ok(()) }
    /// ```
    pub fn lossless_burst(&self, cap: usize) -> usize {
        lock(&self.shared.plugins)
            .values()
            .map(|p| p.spec.limits.burst())
            .min()
            .unwrap_or(cap)
            .clamp(1, cap.max(1))
    }

    /// The dead letters of the named plugin (the events that made it fail
    /// hard, newest [`MAX_KEPT`](crate::dead_letter::MAX_KEPT)) this
    /// process met, oldest first; `None` if no plugin has that name. For all
    /// of them (the journal's, or on NATS every host's), see
    /// [`kept_dead_letters`](Self::kept_dead_letters).
    pub fn dead_letters(&self, plugin: &str) -> Option<Vec<crate::DeadLetter>> {
        lock(&self.shared.plugins).get(plugin).map(|h| h.dead_letters.list())
    }

    /// Every dead letter kept for the named plugin, oldest first: with a
    /// log, its journal (all of them, not only the newest in memory); on
    /// NATS, the stream's bucket (every host's letters); otherwise those in
    /// memory. With a log or on NATS, the letters of a plugin that is not
    /// loaded (still loading, removed, or failing to load) are read there
    /// too. `None` if no plugin has that name and none are kept for it.
    ///
    /// # Errors
    /// [`DeadLetterError`](crate::DeadLetterError) naming the journal file
    /// or the NATS bucket that could not be read.
    pub async fn kept_dead_letters(
        &self,
        plugin: &str,
    ) -> Option<Result<Vec<crate::DeadLetter>, crate::DeadLetterError>> {
        let handle = lock(&self.shared.plugins).get(plugin).cloned();
        if handle.is_none() && !crate::plugin::valid_plugin_name(plugin) {
            return None;
        }
        #[cfg(feature = "nats")]
        if let Some(nats) = &self.shared.nats {
            let letters = nats
                .letters
                .list(Some(plugin))
                .await
                .map_err(|reason| crate::DeadLetterError::Nats {
                    bucket: nats.letters.name().to_owned(),
                    reason,
                });
            return match letters {
                Ok(letters) if letters.is_empty() && handle.is_none() => None,
                letters => Some(letters),
            };
        }
        let Some(handle) = handle else {
            // Not loaded: what its journal beside the log keeps.
            let dir = self.shared.log.as_ref()?.dir().to_owned();
            let name = plugin.to_owned();
            // Damaged lines are skipped, as the store of a loaded plugin
            // skips them, and logged.
            let read = tokio::task::spawn_blocking(move || {
                crate::dead_letter::read_dead_letters_past_damage(&dir, Some(&name)).map(|(letters, damaged)| {
                    for e in damaged {
                        tracing::error!(plugin = name, error = %e, "a damaged dead letter is skipped");
                    }
                    letters
                })
            })
            .await
            .unwrap_or_else(|e| {
                Err(crate::DeadLetterError::Io {
                    path: PathBuf::from(crate::dead_letter::DIR),
                    reason: format!("reading the dead letters failed: {e}"),
                })
            });
            return match read {
                Ok(letters) if letters.is_empty() => None,
                read => Some(read),
            };
        };
        let store = handle.dead_letters.clone();
        Some(match tokio::task::spawn_blocking(move || store.all()).await {
            Ok(letters) => Ok(letters),
            Err(e) => {
                tracing::error!(plugin, error = %e, "reading the dead letters failed; using those in memory");
                Ok(handle.dead_letters.list())
            }
        })
    }

    /// Sends the named plugin's dead letters to it again, oldest first (after
    /// a fixed version was loaded, say), and waits for each outcome. Every
    /// letter is redriven, however many (with a log they are read from the
    /// journal; on NATS from the stream's bucket, so this host redrives
    /// every host's letters of the plugin, each claimed first so that
    /// redrives on several hosts never both send one, and a handled one is
    /// removed once its follow-ups are in the stream: a redrive cut short
    /// between the two applies it again, at least once). One redrive runs
    /// at a time on a bus; another waits for it. A letter is removed only
    /// once its outcome is known and kept: handled (ok or a guest `Err`)
    /// and, for a plugin with `state` on a bus with a log, included in a
    /// persisted snapshot. Letters that fail hard
    /// again, or cannot be delivered, stay. A redrive cut short (the process
    /// killed) leaves every letter whose removal was not committed, and the
    /// plugin's kept state without them: running it again applies each
    /// letter once. `None` if no plugin has that name.
    pub async fn redrive(&self, plugin: &str) -> Option<crate::dead_letter::Redrive> {
        let handle = lock(&self.shared.plugins).get(plugin).cloned()?;
        let _one_at_a_time = self.shared.redriving.lock().await;
        let letters = match self.kept_dead_letters(plugin).await {
            Some(Ok(letters)) => letters,
            Some(Err(e)) => {
                tracing::error!(plugin, error = %e, "reading the dead letters failed; nothing redriven");
                Vec::new()
            }
            None => Vec::new(),
        };
        let mut report = crate::dead_letter::Redrive::default();
        // Letters in flight at once: at most half the plugin's queue, so a
        // redrive never fills the queue live events need, and 64 at most,
        // so the worker commits removals in batches while the rest wait.
        let window = handle.spec.limits.burst().min(64);
        for chunk in letters.chunks(window) {
            let mut outcomes = Vec::with_capacity(chunk.len());
            // The chunk's claims, by the letter's place in `outcomes`: taken
            // when the letter is settled, renewed meanwhile.
            #[cfg(feature = "nats")]
            let held = Mutex::new(Vec::with_capacity(chunk.len()));
            for letter in chunk {
                #[cfg(feature = "nats")]
                if let Some(nats) = &self.shared.nats {
                    match nats.letters.claim(plugin, &letter.event.id).await {
                        Ok(Some(claim)) => lock(&held).push(Some(claim)),
                        Ok(None) => {
                            // Another host's redrive is sending it now.
                            report.claimed_elsewhere += 1;
                            continue;
                        }
                        Err(e) => {
                            tracing::error!(plugin, event_id = %letter.event.id, error = %e, "cannot claim a dead letter for this redrive; left for the next");
                            report.dropped += 1;
                            continue;
                        }
                    }
                }
                let (tx, rx) = oneshot::channel();
                let job = Job {
                    event: letter.event.clone().into_event(),
                    reply: Some(tx),
                };
                self.shared.enqueue(&handle, job);
                report.redriven += 1;
                outcomes.push((rx, letter));
            }
            let settle = async {
                #[cfg_attr(not(feature = "nats"), allow(unused_variables))]
                for (i, (rx, letter)) in outcomes.into_iter().enumerate() {
                    let handled = report.count(&rx.await.unwrap_or(Outcome::Dropped(DropReason::Unloaded)));
                    #[cfg(feature = "nats")]
                    if let Some(nats) = &self.shared.nats {
                        Self::settle_stream_letter(nats, plugin, letter, handled, &mut report).await;
                        // `None`: lost to another redrive (logged by the renewal).
                        let claim = lock(&held).get_mut(i).and_then(Option::take);
                        if let Some(claim) = claim {
                            nats.letters.release(claim).await;
                        }
                    }
                    #[cfg(not(feature = "nats"))]
                    let _ = (handled, letter);
                }
            };
            #[cfg(feature = "nats")]
            match &self.shared.nats {
                Some(nats) => Self::renewing_claims(&nats.letters, &held, plugin, settle).await,
                None => settle.await,
            }
            #[cfg(not(feature = "nats"))]
            settle.await;
        }
        tracing::info!(
            plugin,
            redriven = report.redriven,
            ok = report.ok,
            errors = report.errors,
            failed = report.failed,
            dropped = report.dropped,
            claimed_elsewhere = report.claimed_elsewhere,
            follow_ups_not_stored = report.follow_ups_not_stored,
            "dead letters redriven"
        );
        Some(report)
    }

    /// Runs `settle` (a redrive chunk's outcomes, each letter's claim taken
    /// from `held` as it is settled) while renewing the claims still held
    /// every third of the lease, so a chunk that runs longer than the lease
    /// (slow letters, an I/O budget of minutes, follow-ups waiting on the
    /// server) never lets another redrive take a letter it is handling.
    #[cfg(feature = "nats")]
    async fn renewing_claims<F: Future<Output = ()>>(
        letters: &crate::nats::dead_letters::LetterBucket,
        held: &Mutex<Vec<Option<crate::nats::dead_letters::Claim>>>,
        plugin: &str,
        settle: F,
    ) {
        let every = crate::nats::dead_letters::claim_lease() / 3;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut settle = std::pin::pin!(settle);
        loop {
            tokio::select! {
                () = &mut settle => return,
                _ = tick.tick() => {
                    // `settle` is not polled meanwhile: the claims taken out
                    // here are put back before it looks at them again.
                    let taken: Vec<(usize, crate::nats::dead_letters::Claim)> = lock(held)
                        .iter_mut()
                        .enumerate()
                        .filter_map(|(i, c)| c.take().map(|c| (i, c)))
                        .collect();
                    for (i, mut claim) in taken {
                        match letters.renew(&mut claim).await {
                            Ok(true) => lock(held)[i] = Some(claim),
                            Ok(false) => tracing::error!(
                                plugin,
                                claim = claim.key(),
                                "a redrive's claim on a dead letter lapsed (its host paused past the lease) and another redrive took it: that letter may be applied twice"
                            ),
                            Err(e) => {
                                tracing::warn!(plugin, error = %e, "cannot renew a redrive's claim on a dead letter; trying again");
                                lock(held)[i] = Some(claim);
                            }
                        }
                    }
                }
            }
        }
    }

    /// On NATS, after a redriven letter's outcome: once its follow-ups are
    /// in the stream (as a consumer waits for before its `Ack`), a handled
    /// letter leaves the stream's bucket; one whose follow-ups were not
    /// stored stays, counted. (There is no snapshot to wait for: plugin
    /// state on NATS lives in the host's memory.)
    #[cfg(feature = "nats")]
    async fn settle_stream_letter(
        nats: &crate::nats::NatsLink,
        plugin: &str,
        letter: &crate::DeadLetter,
        handled: bool,
        report: &mut crate::dead_letter::Redrive,
    ) {
        // Always taken: the publisher forgets them only here.
        let stored = nats.publisher.follow_ups_of(plugin, letter.event.seq).await;
        if !handled {
            return;
        }
        if let Err(reason) = stored {
            report.follow_ups_not_stored += 1;
            tracing::error!(plugin, event_id = %letter.event.id, %reason, "a redriven dead letter was handled but a follow-up was not stored: it stays a letter");
            return;
        }
        if let Err(e) = nats.letters.remove(plugin, &letter.event.id).await {
            tracing::error!(plugin, event_id = %letter.event.id, error = %e, "a redriven dead letter was handled but could not be removed: a later redrive applies it again");
        }
    }

    /// Events published since the bus was built (by the host and by plugins).
    pub fn published(&self) -> u64 {
        self.shared.published.load(Ordering::Relaxed)
    }

    /// Counters of the compiled-artifact cache; `None` when it is off.
    pub fn cache_stats(&self) -> Option<crate::CacheStats> {
        self.shared.engine.cache.as_ref().map(|c| c.stats())
    }

    /// Plugin files from the plugin directory that failed to load at build.
    pub fn load_failures(&self) -> Vec<LoadFailure> {
        lock(&self.shared.load_failures).clone()
    }

    /// The last `n` events published (oldest first), if history is enabled.
    pub fn history(&self, n: usize) -> Vec<Event> {
        self.shared.history.as_ref().map(|h| h.last(n)).unwrap_or_default()
    }

    /// [`shutdown_with`](Self::shutdown_with) the default grace period
    /// ([`DEFAULT_SHUTDOWN_GRACE`]).
    pub async fn shutdown(&self) -> ShutdownReport {
        self.shutdown_with(DEFAULT_SHUTDOWN_GRACE).await
    }

    /// Stops accepting events (later ones are ignored), stops watching, lets
    /// every plugin finish what is queued, and waits for native async
    /// handlers, all within `grace`. Past it, what is still queued is
    /// dropped and counted (a plugin in the middle of an event finishes
    /// that event, which its deadline bounds).
    pub async fn shutdown_with(&self, grace: Duration) -> ShutdownReport {
        let started = std::time::Instant::now();
        // Plugins still loading at start-up are not installed any more.
        self.shared.startup.abort();
        let watcher = lock(&self.shared.watcher).take();
        if let Some(stop) = watcher {
            stop().await;
        }
        // On NATS: stop pulling; what was taken finishes (its follow-ups are
        // still published) and is acknowledged, all within the grace period.
        #[cfg(feature = "nats")]
        if let Some(nats) = &self.shared.nats {
            let _ = tokio::time::timeout(grace, nats.stop_all()).await;
        }
        self.shared.closed.store(true, Ordering::Release);
        let _serial = self.shared.lifecycle.lock().await;
        let handles: Vec<_> = std::mem::take(&mut *lock(&self.shared.plugins)).into_values().collect();
        let before: Vec<(u64, u64)> = handles.iter().map(|h| counts(h)).collect();
        for h in &handles {
            self.shared.remove(h.seq);
            h.signal_stop();
        }
        let join_all = async {
            for h in &handles {
                h.join().await;
            }
        };
        let timed_out = tokio::time::timeout(grace, join_all).await.is_err();
        if timed_out {
            for h in &handles {
                h.abandon();
            }
            for h in &handles {
                h.join().await;
            }
        }
        let left = grace.saturating_sub(started.elapsed());
        let native_timed_out = tokio::time::timeout(left, self.flush()).await.is_err();
        if native_timed_out {
            tracing::warn!(
                pending = self.shared.pending.load(Ordering::Acquire),
                "native async handlers still running after the shutdown grace period"
            );
        }
        let (mut drained, mut dropped) = (0, 0);
        for (h, (delivered0, dropped0)) in handles.iter().zip(before) {
            let (delivered1, dropped1) = counts(h);
            drained += delivered1 - delivered0;
            dropped += dropped1 - dropped0;
        }
        if dropped > 0 {
            tracing::warn!(dropped, "shutdown grace period ran out; queued events dropped");
        }
        // On NATS: the consumers settle what they took (a stop cut short by
        // the grace period left them running), what was published gets its
        // ack (or is given up), and the client's queued acknowledgements
        // reach the server before the connection goes, within what is left
        // of the grace period.
        #[cfg(feature = "nats")]
        if let Some(nats) = &self.shared.nats {
            let left = grace.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
            nats.finish(left).await;
        }
        if let Some(log) = self.shared.log.clone() {
            // Writes and syncs what is queued; joining the writer thread blocks.
            if let Err(e) = tokio::task::spawn_blocking(move || log.close()).await {
                tracing::error!(error = %e, "closing the event log failed");
            }
        }
        // The log is closed: no compaction starts after these. One cut
        // short by the process ending leaves the journal as it was (the copy
        // is renamed over it only when whole), so what is left of the grace
        // period bounds the wait.
        let left = grace.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
        if tokio::time::timeout(left, self.shared.compactions.settle())
            .await
            .is_err()
        {
            tracing::warn!("the request journal's compaction still running after the shutdown grace period");
        }
        ShutdownReport {
            drained,
            dropped,
            timed_out: timed_out || native_timed_out,
            plugins: handles.iter().map(|h| info(h)).collect(),
        }
    }
}

fn counts(h: &PluginHandle) -> (u64, u64) {
    let s = h.stats.snapshot();
    (s.delivered, s.dropped)
}

pub(crate) fn info(h: &PluginHandle) -> PluginInfo {
    let state = h.state.get();
    PluginInfo {
        name: h.spec.name.to_string(),
        path: h.spec.path.clone(),
        version: h.spec.version.clone(),
        language: h.spec.language,
        size: h.spec.size,
        reload_error: lock(&h.reload_error).clone(),
        subscriptions: h.subscriptions.clone(),
        queryable: h.spec.has_query(),
        state,
        quarantine_retry_in_ms: match state {
            PluginState::Quarantined => h
                .state
                .retry_in()
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            _ => None,
        },
        queue_depth: h.tx.max_capacity() - h.tx.capacity(),
        queue_capacity: h.tx.max_capacity(),
        memory_limit_bytes: h.spec.limits.memory_bytes,
        signer: h.spec.signer.clone(),
        stats: h.stats.snapshot(),
        http_allow: h.spec.outbound.grant.allow.iter().map(|o| o.text.clone()).collect(),
        http: (!h.spec.outbound.grant.is_empty()).then(|| h.spec.outbound.stats.snapshot()),
        secrets: h.spec.manifest.secrets.keys().cloned().collect(),
    }
}
