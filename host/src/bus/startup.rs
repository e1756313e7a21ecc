//! Start-up in the background: a bus opened with
//! [`BusBuilder::start`](crate::BusBuilder::start) accepts events at once
//! while the plugins of its directory compile and load, and says when they
//! are all in ([`Bus::startup`], [`Bus::ready`]).
//!
//! The promise, with an event log and kept plugin state: an event accepted
//! during start-up reaches every plugin that was in the directory, exactly
//! as if it had been loaded first. The log numbers every event from the
//! first one accepted (the start-up *floor*); a plugin installed while the
//! bus starts reads the log from the floor before its live events (the
//! catch-up of `plugin::catch_up`, with no gap and no duplicate at the
//! cut). Without a log (or on NATS, or with kept state off) there is
//! nothing to read back: events accepted before [`StartupStatus::ready`]
//! reach only the plugins loaded by then, which
//! [`StartupStatus::catches_up`] says, so a server can refuse them instead
//! (`plugbus serve` answers 503 with `Retry-After`).

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::watch;

use crate::bus::{Bus, lock};

/// Where a bus's start-up is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StartupStatus {
    /// Every plugin file of the directory at start has been loaded or
    /// refused ([`Bus::load_failures`]). Always true for a bus made by
    /// [`BusBuilder::build`](crate::BusBuilder::build), which returns only
    /// then.
    pub ready: bool,
    /// Files still loading (being verified, compiled, or caught up), by name.
    pub loading: Vec<PathBuf>,
    /// Plugins the start-up has loaded so far.
    pub loaded: usize,
    /// Files the start-up refused so far.
    pub failed: usize,
    /// Whether events accepted before `ready` reach the plugins still
    /// loading (read back from the event log once they are installed).
    /// False without a log, on NATS, or with kept plugin state off.
    pub catches_up: bool,
}

/// The bus's start-up state: its one owner is the loading task (through
/// [`Startup::loaded`] and [`Startup::finish`]); everyone else reads.
pub(crate) struct Startup {
    /// The status, and whether the start-up was stopped (shutdown).
    status: watch::Sender<(StartupStatus, bool)>,
    /// First sequence number accepted while starting; 0 when not starting.
    /// A plugin installed while it is set reads the log from there.
    floor: AtomicU64,
    /// Stops the loading task at shutdown.
    loader: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Default for Startup {
    /// A finished start-up (the state of a bus made by `build`).
    fn default() -> Self {
        Startup {
            status: watch::Sender::new((
                StartupStatus {
                    ready: true,
                    loading: Vec::new(),
                    loaded: 0,
                    failed: 0,
                    catches_up: false,
                },
                false,
            )),
            floor: AtomicU64::new(0),
            loader: Mutex::new(None),
        }
    }
}

impl Startup {
    /// Starts loading `files` in the background; `floor`: the first
    /// sequence number the log will hand out, when plugins catch up from it.
    pub fn begin(&self, files: &[PathBuf], floor: Option<u64>) {
        self.floor.store(floor.unwrap_or(0), Ordering::Release);
        self.status.send_replace((
            StartupStatus {
                ready: files.is_empty(),
                loading: files.to_vec(),
                loaded: 0,
                failed: 0,
                catches_up: floor.is_some(),
            },
            false,
        ));
    }

    /// The task loading the plugins, aborted by [`Startup::abort`].
    pub fn set_loader(&self, handle: tokio::task::AbortHandle) {
        *lock(&self.loader) = Some(handle);
    }

    /// Stops a start-up still loading (shutdown); the files not loaded yet
    /// stay listed in `loading`.
    pub fn abort(&self) {
        if let Some(handle) = lock(&self.loader).take() {
            handle.abort();
        }
        self.floor.store(0, Ordering::Release);
        self.status.send_modify(|(_, stopped)| *stopped = true);
    }

    /// One file is done, loaded or refused.
    pub fn loaded(&self, file: &std::path::Path, ok: bool) {
        self.status.send_modify(|(s, _)| {
            s.loading.retain(|f| f != file);
            if ok {
                s.loaded += 1;
            } else {
                s.failed += 1;
            }
        });
    }

    /// Every file is done: plugins installed from now on start live, as
    /// after `build`.
    pub fn finish(&self) {
        self.floor.store(0, Ordering::Release);
        lock(&self.loader).take();
        self.status.send_modify(|(s, _)| {
            s.ready = true;
            s.loading.clear();
        });
    }

    /// The floor a plugin installed now catches up from, while starting.
    pub fn floor(&self) -> Option<u64> {
        let floor = self.floor.load(Ordering::Acquire);
        (floor > 0).then_some(floor)
    }
}

impl Bus {
    /// Where the start-up is: whether every plugin of the directory is in,
    /// and which are still loading.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let bus = plugbus::Bus::builder().start().await.unwrap();
    /// let status = bus.ready().await;
    /// assert!(status.ready && status.loading.is_empty());
    /// # });
    /// ```
    pub fn startup(&self) -> StartupStatus {
        self.shared.startup.status.borrow().0.clone()
    }

    /// Waits until every plugin of the directory at start is loaded or
    /// refused, or the bus shuts down first (then `ready` is false).
    pub async fn ready(&self) -> StartupStatus {
        let mut rx = self.shared.startup.status.subscribe();
        // The sender lives as long as the bus: an error cannot happen here.
        let _ = rx.wait_for(|(s, stopped)| s.ready || *stopped).await;
        self.startup()
    }
}
