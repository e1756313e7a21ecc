//! Feeding a bus a stream of events as fast as its plugins run, without
//! overflowing any plugin's queue: what `plugbus run` and a replay do.

use super::Bus;

/// Paces a publisher that has more events at hand than the plugins can
/// take (a file, a log being replayed) so that no queue overflows and no
/// plugin's worker waits for the next event.
///
/// It lets the publisher feed a *window* of events (half of
/// [`Bus::lossless_burst`]), then waits until the queues hold at most the
/// other half ([`Bus::drain_to`]) before the next window: every queue
/// stays within the lossless burst (half its capacity, the rest is room
/// for follow-ups), and while the publisher waits the plugins still have
/// half a burst to work on. Waiting for empty queues instead
/// ([`Bus::flush`]) leaves each worker idle for as long as the publisher
/// takes to wake and feed again.
///
/// The burst is computed again at each window, so plugins loaded or
/// unloaded meanwhile (`--watch`) are taken into account.
///
/// ```
/// # async fn demo() -> Result<(), plugbus::Error> {
/// let bus = plugbus::Bus::builder().plugin_dir("plugins/dist").build().await?;
/// let mut pacer = bus.pacer(1024);
/// for i in 0..10_000 {
///     bus.emit("tick", serde_json::json!({ "i": i }));
///     pacer.fed().await;
/// }
/// bus.flush().await;
/// # Ok(()) }
/// ```
pub struct Pacer<'a> {
    bus: &'a Bus,
    cap: usize,
    window: usize,
    fed: usize,
}

impl Bus {
    /// A [`Pacer`] for feeding this bus at most `cap` events per burst.
    pub fn pacer(&self, cap: usize) -> Pacer<'_> {
        let mut pacer = Pacer {
            bus: self,
            cap,
            window: 1,
            fed: 0,
        };
        pacer.window = pacer.burst().0;
        pacer
    }
}

impl Pacer<'_> {
    /// The window fed between two waits and the level waited for:
    /// together at most the lossless burst.
    fn burst(&self) -> (usize, usize) {
        let burst = self.bus.lossless_burst(self.cap);
        let window = (burst / 2).max(1);
        (window, burst - window)
    }

    /// Counts one event published; at the end of a window, waits until
    /// the queues are down to the other half of the burst. Returns whether
    /// it was the end of a window (a point where the caller may look at
    /// what the plugins did so far).
    pub async fn fed(&mut self) -> bool {
        self.fed += 1;
        if self.fed < self.window {
            return false;
        }
        self.fed = 0;
        let (window, level) = self.burst();
        self.window = window;
        self.bus.drain_to(level).await;
        true
    }
}
