//! What happened when a handler got an event: outcomes, failure kinds and
//! the classification of wasmtime errors into them.
//!
//! Classification downcasts to [`wasmtime::Trap`] and to our own host error
//! types; it never inspects error strings.

use std::fmt;

use crate::event::Event;

/// The result of delivering one event to one handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler accepted the event.
    Ok,
    /// The plugin returned `err(message)`: a handled failure. Its instance is kept.
    Error(String),
    /// The handler failed hard (trap, limit, panic). A plugin's instance is
    /// discarded and rebuilt before its next event.
    Failed(Failure),
    /// The event never reached the handler.
    Dropped(DropReason),
}

/// Kinds of hard failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A native handler panicked, or a guest reported a panic through
    /// `host.abort` (the Rust SDK does so from its panic hook).
    Panic(String),
    /// The plugin burned all its fuel for this event.
    OutOfFuel,
    /// The plugin ran past its wall-clock deadline.
    Deadline,
    /// The plugin trapped after the memory cap refused to grow its memory.
    MemoryLimit,
    /// The plugin overflowed the wasm stack.
    StackOverflow,
    /// Any other trap (`unreachable`, out-of-bounds access, …), described.
    Trap(String),
    /// The host could not run the plugin (instantiation failed, a host call
    /// failed, bad data crossed the boundary), described.
    Host(String),
}

/// Why an event was not delivered to a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The plugin's queue was full.
    QueueFull,
    /// The plugin was unloaded, or the bus shut down, before the event ran.
    Unloaded,
    /// The plugin is quarantined after repeated failures.
    Quarantined,
    /// Not dropped: the plugin's queue was full on a bus with a log, which
    /// keeps the event; the plugin handles it from there once it has caught
    /// up (a waiter is answered at once with this).
    Deferred,
}

impl Failure {
    /// A short stable name for metrics and reports: `panic`, `out_of_fuel`,
    /// `deadline`, `memory_limit`, `stack_overflow`, `trap`, `host`.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Panic(_) => "panic",
            Failure::OutOfFuel => "out_of_fuel",
            Failure::Deadline => "deadline",
            Failure::MemoryLimit => "memory_limit",
            Failure::StackOverflow => "stack_overflow",
            Failure::Trap(_) => "trap",
            Failure::Host(_) => "host",
        }
    }

    /// Every kind name, in report order.
    pub const KINDS: [&'static str; 7] = [
        "panic",
        "out_of_fuel",
        "deadline",
        "memory_limit",
        "stack_overflow",
        "trap",
        "host",
    ];

    /// Position of this kind in [`Failure::KINDS`].
    pub(crate) fn index(&self) -> usize {
        match self {
            Failure::Panic(_) => 0,
            Failure::OutOfFuel => 1,
            Failure::Deadline => 2,
            Failure::MemoryLimit => 3,
            Failure::StackOverflow => 4,
            Failure::Trap(_) => 5,
            Failure::Host(_) => 6,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Panic(msg) => write!(f, "panic: {msg}"),
            Failure::OutOfFuel => f.write_str("out of fuel"),
            Failure::Deadline => f.write_str("deadline exceeded"),
            Failure::MemoryLimit => f.write_str("memory limit reached"),
            Failure::StackOverflow => f.write_str("stack overflow"),
            Failure::Trap(msg) => write!(f, "trap: {msg}"),
            Failure::Host(msg) => write!(f, "host error: {msg}"),
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropReason::QueueFull => "queue full",
            DropReason::Unloaded => "unloaded",
            DropReason::Quarantined => "quarantined",
            DropReason::Deferred => "deferred: the queue was full, the plugin reads it from the log",
        })
    }
}

/// One handler's outcome for an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The plugin's name, or `native#N` for a native handler (N is its
    /// subscription id).
    pub handler: String,
    /// What happened.
    pub outcome: Outcome,
}

/// Every handler's outcome for one event, from [`Bus::emit_and_wait`](crate::Bus::emit_and_wait).
#[derive(Debug, Clone)]
pub struct DeliveryReport {
    /// The event as published.
    pub event: Event,
    /// One entry per handler the event matched: plugins first, then native
    /// handlers, each group in registration order.
    pub deliveries: Vec<Delivery>,
}

impl DeliveryReport {
    /// The outcome for the named handler, if the event matched it.
    pub fn outcome(&self, handler: &str) -> Option<&Outcome> {
        self.deliveries
            .iter()
            .find(|d| d.handler == handler)
            .map(|d| &d.outcome)
    }
}

/// Raised by the `host.abort` import: the guest reported a panic.
#[derive(Debug, thiserror::Error)]
#[error("plugin aborted: {0}")]
pub(crate) struct GuestAbort(pub String);

/// Turns the error of a failed guest call into a [`Failure`].
///
/// `memory_refused` says whether the memory cap refused a grow during this
/// call: a guest typically reacts to that with an abort or `unreachable`, and
/// the root cause is the cap, not the trap it led to.
pub(crate) fn classify(err: &wasmtime::Error, memory_refused: bool) -> Failure {
    use wasmtime::Trap;
    if let Some(GuestAbort(msg)) = err.downcast_ref::<GuestAbort>() {
        if memory_refused {
            return Failure::MemoryLimit;
        }
        return Failure::Panic(crate::text::cap(msg.clone()));
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Failure::OutOfFuel,
        Some(Trap::Interrupt) => Failure::Deadline,
        Some(Trap::StackOverflow) => Failure::StackOverflow,
        Some(_) if memory_refused => Failure::MemoryLimit,
        Some(trap) => Failure::Trap(trap.to_string()),
        None if memory_refused => Failure::MemoryLimit,
        // Host errors can quote guest data: capped like any guest text.
        None => Failure::Host(crate::text::cap(format!("{err:#}"))),
    }
}

/// The function names of a trap's wasm backtrace, innermost first, when the
/// error carries one.
pub(crate) fn backtrace_frames(err: &wasmtime::Error) -> Vec<String> {
    err.downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|bt| {
            bt.frames()
                .iter()
                .take(16)
                .map(|f| match f.func_name() {
                    // Names come from the guest's name section: bounded.
                    Some(name) => crate::text::truncate(
                        &format!("{:#}", rustc_demangle::demangle(name)),
                        crate::text::MAX_FRAME_NAME,
                    )
                    .into_owned(),
                    None => format!("func[{}]", f.func_index()),
                })
                .collect()
        })
        .unwrap_or_default()
}
