//! The narrow handle through which NATS consumers reach the bus: offer an
//! event to a plugin's queue, ask whether a plugin is quarantined, announce
//! a `plugbus.nats.*` meta-event. The bus implements it; the nats modules
//! hold a `Weak<dyn NatsPort>` and never the bus's internals, so
//! dependencies run one way: `bus` → `nats` → `plugin`.

use std::time::Duration;

use crate::event::Event;
use crate::plugin::worker::Job;

/// What a NATS consumer may ask of the bus.
pub(crate) trait NatsPort: Send + Sync {
    /// Offers `job` to the plugin named `plugin` (its current version, after
    /// a hot swap), as a publish would; false when no such plugin is loaded.
    fn offer(&self, plugin: &str, job: Job) -> bool;

    /// While the plugin named `plugin` is quarantined: how long until it
    /// takes an event again. `None` when it takes events now (or is not
    /// loaded).
    fn quarantine_left(&self, plugin: &str) -> Option<Duration>;

    /// Publishes a meta-event of the bus (`plugbus.nats.*`).
    fn announce(&self, event: Event);
}
