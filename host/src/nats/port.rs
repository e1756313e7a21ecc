//! The narrow handle through which NATS consumers reach the bus: offer an
//! event to a plugin's queue, ask whether a plugin is quarantined, announce
//! a `plugbus.nats.*` meta-event. The bus implements it; the nats modules
//! hold a `Weak<dyn NatsPort>` and never the bus's internals, so
//! dependencies run one way: `bus` → `nats` → `plugin`.

use std::time::Duration;

use crate::event::Event;
use crate::plugin::worker::Job;

/// What became of an event a consumer offered to its plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offered {
    /// Queued (or refused by the plugin's queue, which answers the job).
    Queued,
    /// The running version does not subscribe to it: not queued.
    NotSubscribed,
    /// No plugin of that name is loaded: not queued.
    NotLoaded,
}

/// What a NATS consumer may ask of the bus.
pub(crate) trait NatsPort: Send + Sync {
    /// Offers `job` to the plugin named `plugin` (its current version, after
    /// a hot swap), as a publish would, if `subscribed` says that version's
    /// subscriptions take it: the check and the offer see one version, so a
    /// hot reload never has one version's patterns decide for the other.
    fn offer(&self, plugin: &str, job: Job, subscribed: &mut dyn FnMut(&[String]) -> bool) -> Offered;

    /// While the plugin named `plugin` is quarantined: how long until it
    /// takes an event again. `None` when it takes events now (or is not
    /// loaded).
    fn quarantine_left(&self, plugin: &str) -> Option<Duration>;

    /// Publishes a meta-event of the bus (`plugbus.nats.*`).
    fn announce(&self, event: Event);
}
