//! The event log under faults, seen from the bus: what is acknowledged can
//! always be read back. (The writer's failpoints and the power-loss model
//! are exercised by the unit tests of `plugbus::log`, which can hold the
//! process-wide failpoint registry alone.)

use plugbus::{Bus, LogError, LogReader};
use serde_json::json;

use crate::support;

#[tokio::test]
async fn an_event_too_large_for_the_log_is_refused_when_durable_and_not_logged_when_plain() {
    let empty = tempfile::tempdir().unwrap();
    let log = tempfile::tempdir().unwrap();
    let bus = Bus::builder()
        .plugin_dir(empty.path())
        .log_dir(log.path())
        .build()
        .await
        .unwrap();
    let seen = support::Recorder::attach(&bus, "big");
    let big = json!({ "blob": "x".repeat(plugbus::log::MAX_FRAME) });
    match bus.emit_durable("big", big.clone()).await {
        Err(e @ LogError::TooLarge { bytes, limit }) => {
            assert!(bytes > limit && limit == plugbus::log::MAX_FRAME, "{e}");
            assert!(e.to_string().contains(&limit.to_string()), "names the limit: {e}");
        }
        other => panic!("a durable emit over the frame limit must be refused, got {other:?}"),
    }
    assert!(seen.events().is_empty(), "refused: nobody got it");
    // A plain emit never fails: delivered live, not logged, counted.
    bus.emit("big", big);
    let after = bus.emit_durable("after", json!(1)).await.unwrap();
    bus.flush().await;
    assert_eq!(seen.named("big").len(), 1, "the plain emit was delivered live");
    let status = bus.log_status().unwrap();
    assert_eq!((status.lost, status.oversize), (1, 1), "{status:?}");
    bus.shutdown().await;
    // Everything in the log reads back; the big event is a gap.
    let records: Vec<plugbus::Record> = LogReader::open(log.path(), 0).unwrap().map(|r| r.unwrap()).collect();
    assert!(records.iter().all(|r| r.name != "big"));
    assert!(records.iter().any(|r| r.name == "after" && Some(r.seq) == after.seq()));
}
