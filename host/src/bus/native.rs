//! Native Rust handlers: synchronous ones run inline on the emitting thread,
//! async ones are spawned. Both are isolated: a panic is caught, reported as
//! [`Failure::Panic`], and never reaches the emitter.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use crate::event::Event;
use crate::outcome::{Failure, Outcome};

pub(crate) type SyncFn = dyn Fn(&Event) + Send + Sync;
pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
pub(crate) type AsyncFn = dyn Fn(Event) -> BoxFuture + Send + Sync;

/// How a native handler is subscribed ([`Bus::on_with`](crate::Bus::on_with),
/// [`Bus::on_async_with`](crate::Bus::on_async_with)).
///
/// ```
/// use plugbus::HandlerOptions;
/// let guard = HandlerOptions::new().priority(100);
/// let first_only = HandlerOptions::new().once();
/// # let _ = (guard, first_only);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandlerOptions {
    priority: i32,
    once: bool,
}

impl HandlerOptions {
    /// Priority 0, every matching event.
    pub fn new() -> HandlerOptions {
        HandlerOptions::default()
    }

    /// Native handlers of one event run from the highest priority to the
    /// lowest; ties run in registration order. Default 0; negative values
    /// run after the default.
    pub fn priority(mut self, priority: i32) -> HandlerOptions {
        self.priority = priority;
        self
    }

    /// Run at most once, then unsubscribe (synchronous handlers only).
    pub fn once(mut self) -> HandlerOptions {
        self.once = true;
        self
    }

    pub(crate) fn priority_value(&self) -> i32 {
        self.priority
    }

    pub(crate) fn is_once(&self) -> bool {
        self.once
    }
}

/// A native synchronous handler.
pub(crate) struct SyncHandler {
    pub id: u64,
    pub f: Box<SyncFn>,
    /// `Some` for `once` handlers: set by the one call allowed to run.
    pub once: Option<AtomicBool>,
}

impl SyncHandler {
    /// Whether this call may run: always, except a `once` handler that has
    /// already fired (the swap makes that exact under concurrent emits).
    pub fn claim(&self) -> bool {
        self.once
            .as_ref()
            .is_none_or(|fired| !fired.swap(true, Ordering::AcqRel))
    }

    /// Runs the handler, catching a panic.
    pub fn call(&self, event: &Event) -> Outcome {
        match catch_unwind(AssertUnwindSafe(|| (self.f)(event))) {
            Ok(()) => Outcome::Ok,
            Err(panic) => Outcome::Failed(Failure::Panic(panic_message(&*panic))),
        }
    }
}

/// A native async handler.
pub(crate) struct AsyncHandler {
    pub id: u64,
    pub f: Box<AsyncFn>,
}

/// The text of a panic payload (`&str` or `String`, else a placeholder).
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Polls a future inside `catch_unwind`, turning a panic into an outcome.
pub(crate) struct CatchUnwind(pub BoxFuture);

impl Future for CatchUnwind {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let fut = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => Poll::Ready(Outcome::Ok),
            Err(panic) => Poll::Ready(Outcome::Failed(Failure::Panic(panic_message(&*panic)))),
        }
    }
}
