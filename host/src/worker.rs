//! A plugin's worker: the task that owns the plugin's `Store` and runs its
//! events one at a time, in queue order.
//!
//! After a hard failure the store is thrown away (wasmtime poisons a store
//! once a call traps) and a fresh instance is built from the `InstancePre`
//! before the next event. A guest `err` keeps the instance and its state.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};

use crate::bus::Shared;
use crate::event::Event;
use crate::outcome::Outcome;
use crate::plugin::{Instance, PluginSpec, PluginState};
use crate::stats::StatsCell;

/// One queued event, with an optional channel for its outcome
/// ([`Bus::emit_and_wait`](crate::Bus::emit_and_wait)).
pub(crate) struct Job {
    pub event: Event,
    pub reply: Option<oneshot::Sender<Outcome>>,
}

/// Shared, read-mostly view of a worker's state.
#[derive(Default)]
pub(crate) struct WorkerState(AtomicU8);

impl WorkerState {
    pub fn get(&self) -> PluginState {
        match self.0.load(Ordering::Relaxed) {
            0 => PluginState::Ready,
            1 => PluginState::Recovering,
            _ => PluginState::Unloaded,
        }
    }

    fn set(&self, s: PluginState) {
        let v = match s {
            PluginState::Ready => 0,
            PluginState::Recovering => 1,
            PluginState::Unloaded => 2,
        };
        self.0.store(v, Ordering::Relaxed);
    }
}

pub(crate) struct Worker {
    pub spec: Arc<PluginSpec>,
    pub instance: Option<Instance>,
    pub stats: Arc<StatsCell>,
    pub state: Arc<WorkerState>,
    pub bus: Weak<Shared>,
}

impl Worker {
    /// Runs until `stop` fires (then drains what is queued) or every sender
    /// is gone. With a `gate`, waits for it first: a hot-swapped version
    /// starts only once its predecessor has drained, so a plugin's events
    /// stay in order across the swap.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Job>,
        mut stop: oneshot::Receiver<()>,
        gate: Option<oneshot::Receiver<()>>,
    ) {
        if let Some(gate) = gate {
            // An error only means the swap was abandoned: run anyway.
            let _ = gate.await;
        }
        let mut stopping = false;
        loop {
            let job = if stopping {
                rx.recv().await
            } else {
                tokio::select! {
                    biased;
                    _ = &mut stop => {
                        // Refuse new events, keep those already queued.
                        rx.close();
                        stopping = true;
                        continue;
                    }
                    job = rx.recv() => job,
                }
            };
            let Some(job) = job else { break };
            let started = std::time::Instant::now();
            let outcome = self.handle(&job.event).await;
            self.stats.observe(started.elapsed());
            if let Some(reply) = job.reply {
                let _ = reply.send(outcome);
            }
            if let Some(bus) = self.bus.upgrade() {
                bus.done();
            }
        }
        self.state.set(PluginState::Unloaded);
        tracing::debug!(plugin = &*self.spec.name, "plugin worker stopped");
    }

    async fn handle(&mut self, event: &Event) -> Outcome {
        let spec = self.spec.clone();
        let name = &*spec.name;
        let instance = match self.instance.take() {
            Some(instance) => instance,
            None => match spec.instantiate().await {
                Ok(instance) => {
                    self.stats.restarted();
                    tracing::info!(plugin = name, "plugin re-instantiated");
                    instance
                }
                Err(e) => {
                    let outcome = Outcome::Failed(e.failure);
                    self.finish(event, &outcome, 0, &e.frames);
                    return outcome;
                }
            },
        };
        let mut instance = instance;
        let (result, fuel) = spec.on_event(&mut instance, event).await;
        let (outcome, frames) = match result {
            Ok(Ok(())) => (Outcome::Ok, Vec::new()),
            Ok(Err(msg)) => (Outcome::Error(msg), Vec::new()),
            Err(e) => (Outcome::Failed(e.failure), e.frames),
        };
        if matches!(outcome, Outcome::Failed(_)) {
            // The store is poisoned: drop it; the next event gets a fresh one.
            self.state.set(PluginState::Recovering);
        } else {
            self.state.set(PluginState::Ready);
            self.instance = Some(instance);
        }
        self.finish(event, &outcome, fuel, &frames);
        outcome
    }

    fn finish(&self, event: &Event, outcome: &Outcome, fuel: u64, frames: &[String]) {
        let plugin = &*self.spec.name;
        self.stats.record(outcome, fuel);
        match outcome {
            Outcome::Ok | Outcome::Dropped(_) => {}
            Outcome::Error(msg) => {
                tracing::warn!(plugin, event = event.name(), event_id = event.id(), error = %msg, "plugin returned an error");
            }
            Outcome::Failed(failure) => {
                self.state.set(PluginState::Recovering);
                tracing::error!(
                    plugin,
                    event = event.name(),
                    event_id = event.id(),
                    failure = failure.kind(),
                    backtrace = ?frames,
                    "plugin failed: {failure}"
                );
                if let Some(bus) = self.bus.upgrade() {
                    bus.report_failure(event, plugin, failure);
                }
            }
        }
    }
}

/// What the bus holds of a running plugin: cheap to share; the worker task
/// owns the store.
pub(crate) struct PluginHandle {
    pub spec: Arc<PluginSpec>,
    pub seq: u64,
    pub subscriptions: Vec<String>,
    pub tx: mpsc::Sender<Job>,
    pub stats: Arc<StatsCell>,
    pub state: Arc<WorkerState>,
    /// Why the last hot reload of this plugin failed (the old version keeps
    /// running); cleared by a successful one.
    pub reload_error: std::sync::Mutex<Option<String>>,
    /// Fired to make the worker drain its queue and stop.
    pub stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    pub task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PluginHandle {
    /// Queues `job` without waiting. A full or closed queue drops the event
    /// for this plugin, counts it, and answers the waiter if there is one.
    /// Returns whether the job was queued.
    pub fn offer(&self, job: Job) -> bool {
        let (job, reason) = match self.tx.try_send(job) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Full(job)) => (job, crate::DropReason::QueueFull),
            Err(mpsc::error::TrySendError::Closed(job)) => (job, crate::DropReason::Unloaded),
        };
        let outcome = Outcome::Dropped(reason);
        self.stats.record(&outcome, 0);
        tracing::debug!(plugin = &*self.spec.name, event = job.event.name(), %reason, "event dropped for plugin");
        if let Some(reply) = job.reply {
            let _ = reply.send(outcome);
        }
        false
    }

    /// Asks the worker to drain and stop, and waits for it.
    pub async fn stop_and_join(&self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = stop.send(());
        }
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(plugin = &*self.spec.name, error = %e, "plugin worker ended abnormally");
        }
        self.state.set(PluginState::Unloaded);
    }
}
