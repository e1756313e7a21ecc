//! Native Rust handlers on the bus: patterns, order, `once` under
//! concurrency, `off`, panic isolation, async handlers, history.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use plugbus::{Bus, Failure, Outcome, PatternError};
use serde_json::json;
use support::Recorder;

async fn bus() -> Bus {
    Bus::builder().history(16).build().await.unwrap()
}

#[tokio::test]
async fn wildcards_route_events_and_off_unsubscribes() {
    let bus = bus().await;
    let one = Recorder::attach(&bus, "llm.*");
    let many = Recorder::attach(&bus, "llm.**");
    let all = Recorder::attach(&bus, "*");
    let exact_hits = Arc::new(AtomicUsize::new(0));
    let hits = exact_hits.clone();
    let exact = bus
        .on("llm.call", move |_| {
            hits.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    for name in ["llm.call", "llm.call.start", "llm", "tool.called"] {
        bus.emit(name, json!({}));
    }
    let names = |r: &Recorder| r.events().iter().map(|e| e.name().to_owned()).collect::<Vec<_>>();
    assert_eq!(names(&one), ["llm.call"]);
    assert_eq!(names(&many), ["llm.call", "llm.call.start"]);
    assert_eq!(names(&all), ["llm.call", "llm.call.start", "llm", "tool.called"]);
    assert_eq!(exact_hits.load(Ordering::SeqCst), 1);
    assert!(bus.off(&exact));
    assert!(!bus.off(&exact), "a second off finds nothing");
    bus.emit("llm.call", json!({}));
    assert_eq!(exact_hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn invalid_patterns_are_refused() {
    let bus = bus().await;
    assert!(matches!(bus.on("a..b", |_| {}), Err(PatternError::EmptySegment(_))));
    assert!(matches!(
        bus.on("**.a", |_| {}),
        Err(PatternError::MisplacedDoubleStar(_))
    ));
    assert!(matches!(bus.on("", |_| {}), Err(PatternError::Empty(_))));
    assert!(bus.on_async("a.", |_| async {}).is_err());
}

#[tokio::test]
async fn handlers_run_in_registration_order_and_a_panic_stays_isolated() {
    let bus = bus().await;
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (o1, o3) = (order.clone(), order.clone());
    bus.on("x", move |_| o1.lock().unwrap().push(1)).unwrap();
    let bad = bus.on("*", |_| panic!("observer bug")).unwrap();
    bus.on("x", move |_| o3.lock().unwrap().push(3)).unwrap();
    let report = bus.emit_and_wait("x", json!({})).await;
    assert_eq!(
        *order.lock().unwrap(),
        [1, 3],
        "the handler after the panicking one still ran"
    );
    let outcomes: Vec<_> = report.deliveries.iter().map(|d| d.outcome.clone()).collect();
    assert_eq!(outcomes[0], Outcome::Ok);
    assert_eq!(outcomes[1], Outcome::Failed(Failure::Panic("observer bug".into())));
    assert_eq!(outcomes[2], Outcome::Ok);
    assert_eq!(report.deliveries[1].handler, format!("native#{}", bad.id()));
    // Plain emit: no error surfaces, nothing unwinds into the caller.
    let ev = bus.emit("x", json!({ "n": 2 }));
    assert_eq!(ev.payload()["n"], 2);
}

#[tokio::test]
async fn once_fires_exactly_once_under_concurrent_emits() {
    let bus = bus().await;
    let fired = Arc::new(AtomicUsize::new(0));
    let f = fired.clone();
    let sub = bus
        .once("budget_exceeded", move |_| {
            f.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (bus, barrier) = (bus.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..200 {
                    bus.emit("budget_exceeded", json!({}));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(fired.load(Ordering::SeqCst), 1);
    assert!(!bus.off(&sub), "a fired once-handler has removed itself");
}

#[tokio::test]
async fn async_handlers_are_spawned_awaited_by_flush_and_isolated() {
    let bus = bus().await;
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    bus.on_async("tool.**", move |e| {
        let d = d.clone();
        async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            assert_eq!(e.name(), "tool.called.search");
            d.fetch_add(1, Ordering::SeqCst);
        }
    })
    .unwrap();
    bus.on_async("tool.**", |_| async { panic!("async observer bug") })
        .unwrap();
    for _ in 0..5 {
        bus.emit("tool.called.search", json!({}));
    }
    bus.flush().await;
    assert_eq!(done.load(Ordering::SeqCst), 5);
    let report = bus.emit_and_wait("tool.called.search", json!({})).await;
    assert_eq!(report.deliveries[0].outcome, Outcome::Ok);
    assert_eq!(
        report.deliveries[1].outcome,
        Outcome::Failed(Failure::Panic("async observer bug".into()))
    );
}

#[tokio::test]
async fn history_keeps_the_latest_events_oldest_first() {
    let bus = bus().await;
    for i in 0..20 {
        bus.publish(plugbus::Event::new(format!("e.n{i}"), json!(i)).with_correlation_id("run"));
    }
    let h = bus.history(3);
    let names: Vec<_> = h.iter().map(|e| e.name().to_owned()).collect();
    assert_eq!(names, ["e.n17", "e.n18", "e.n19"]);
    assert_eq!(bus.history(100).len(), 16, "bounded by the configured capacity");
    assert!(
        h.iter()
            .all(|e| e.correlation_id() == Some("run") && e.source() == "host")
    );
}

#[tokio::test]
async fn events_after_shutdown_are_ignored() {
    let bus = bus().await;
    let rec = Recorder::attach(&bus, "*");
    bus.emit("a", json!({}));
    bus.shutdown().await;
    bus.emit("b", json!({}));
    assert_eq!(rec.events().len(), 1);
}

#[tokio::test]
async fn priority_orders_native_handlers_and_ties_keep_registration_order() {
    use plugbus::HandlerOptions;
    use std::sync::Mutex;
    let bus = bus().await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let subscribe = |label: &'static str, pattern: &str, priority: Option<i32>| {
        let order = order.clone();
        let f = move |_: &plugbus::Event| order.lock().unwrap().push(label);
        match priority {
            None => bus.on(pattern, f).unwrap(),
            Some(p) => bus.on_with(pattern, HandlerOptions::new().priority(p), f).unwrap(),
        }
    };
    subscribe("audit", "tool.*", None);
    subscribe("late", "tool.called", Some(-1));
    subscribe("guard", "**", Some(10));
    subscribe("metrics", "tool.called", None);
    let guard_too = subscribe("guard-2", "tool.called", Some(10));
    let once_first = bus
        .on_with("tool.called", HandlerOptions::new().priority(99).once(), {
            let order = order.clone();
            move |_| order.lock().unwrap().push("once")
        })
        .unwrap();
    bus.emit("tool.called", json!({}));
    bus.emit("tool.called", json!({}));
    let seen = std::mem::take(&mut *order.lock().unwrap());
    assert_eq!(
        seen,
        [
            "once", "guard", "guard-2", "audit", "metrics", "late", // first event
            "guard", "guard-2", "audit", "metrics", "late", // `once` is gone
        ]
    );
    assert!(!bus.off(&once_first), "the once handler removed itself");
    assert!(bus.off(&guard_too));
    bus.emit("tool.done", json!({}));
    assert_eq!(*order.lock().unwrap(), ["guard", "audit"]);
}

#[tokio::test]
async fn async_handlers_are_spawned_in_priority_order() {
    use plugbus::HandlerOptions;
    use std::sync::Mutex;
    let bus = bus().await;
    let order = Arc::new(Mutex::new(Vec::new()));
    for (label, priority) in [("low", -3), ("default", 0), ("high", 7)] {
        let order = order.clone();
        bus.on_async_with("run.*", HandlerOptions::new().priority(priority), move |_| {
            // Recorded before the first await: the spawn order.
            order.lock().unwrap().push(label);
            async {}
        })
        .unwrap();
    }
    bus.emit("run.started", json!({}));
    bus.flush().await;
    // Tasks may be polled in any order on a multi-threaded runtime; the
    // closure (which records) runs at spawn time, in priority order.
    assert_eq!(*order.lock().unwrap(), ["high", "default", "low"]);
}
