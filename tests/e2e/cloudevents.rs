//! CloudEvents 1.0 into `plugbus serve`: structured, batched and binary
//! mode, each checked in the event log; invalid ones refused naming the
//! attribute. (The Python SDK posts to a real server in
//! bindings/python/tests/test_cloudevents.py.)

use serde_json::{Value, json};

use crate::support;

fn logged(log: &std::path::Path) -> Vec<plugbus::log::Record> {
    plugbus::LogReader::open(log, 0).unwrap().map(|r| r.unwrap()).collect()
}

#[test]
fn cloudevents_in_every_http_mode_become_plugbus_events() {
    let dir = support::plugin_dir(&["console-logger"]);
    let log = tempfile::tempdir().unwrap();
    let (mut child, addr, _stderr) = support::serve_logged(dir.path(), log.path());
    let structured = json!({
        "specversion": "1.0", "id": "s-1", "source": "/agents/a", "type": "tool.called",
        "time": "2026-12-02T00:00:00Z", "correlationid": "run-1", "data": {"tool": "search"}
    });
    let (status, body) = support::http_with(
        &addr,
        "POST",
        "/events",
        &[("Content-Type", "application/cloudevents+json; charset=utf-8")],
        structured.to_string().as_bytes(),
    );
    assert_eq!(status, 202, "{body}");
    let batch = json!([
        {"specversion": "1.0", "id": "b-1", "source": "/s", "type": "model_responded", "data": {"n": 1}},
        {"specversion": "1.0", "id": "b-2", "source": "/s", "type": "agent.note",
         "datacontenttype": "text/plain", "data_base64": "aGk="}
    ]);
    let (status, body) = support::http_with(
        &addr,
        "POST",
        "/events",
        &[("Content-Type", "application/cloudevents-batch+json")],
        batch.to_string().as_bytes(),
    );
    assert_eq!(status, 202, "{body}");
    let (status, body) = support::http_with(
        &addr,
        "POST",
        "/events",
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "bin-1"),
            // Percent-encoded, as the HTTP binding says header values are.
            ("ce-source", "/b%69n"),
            ("ce-type", "agent.completed"),
            ("ce-correlationid", "run-1"),
            ("Content-Type", "application/json"),
        ],
        br#"{"steps": 4}"#,
    );
    assert_eq!(status, 202, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["ids"], json!(["bin-1"]));

    // Refusals name the attribute; nothing of a bad batch is taken.
    for (headers, body, attribute) in [
        (
            vec![("Content-Type", "application/cloudevents+json")],
            json!({"specversion": "1.0", "id": "x", "source": "/s"}).to_string(),
            "`type`",
        ),
        (
            vec![("Content-Type", "application/cloudevents-batch+json")],
            json!([{"specversion": "1.0", "id": "ok", "source": "/s", "type": "fine"},
                   {"specversion": "2.0", "id": "x", "source": "/s", "type": "t"}])
            .to_string(),
            "event 1: CloudEvent attribute `specversion`",
        ),
        (
            vec![
                ("ce-specversion", "1.0"),
                ("ce-id", "x"),
                ("ce-type", "t"),
                ("Content-Type", "application/json"),
            ],
            "{}".to_owned(),
            "`source`",
        ),
        (
            vec![
                ("ce-specversion", "1.0"),
                ("ce-id", "x"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
                ("Content-Type", "application/json"),
            ],
            "{oops".to_owned(),
            "`data`",
        ),
        (
            // The binary mode's other attributes without its version.
            vec![
                ("ce-id", "x"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
                ("Content-Type", "application/json"),
            ],
            "{}".to_owned(),
            "`specversion`: required",
        ),
        (
            vec![
                ("ce-specversion", "1.0"),
                ("ce-id", "x"),
                ("ce-source", "/s"),
                ("ce-type", "t"),
                ("ce-correlationid", "run-%FE"),
                ("Content-Type", "application/json"),
            ],
            "{}".to_owned(),
            "`correlationid`: not UTF-8",
        ),
    ] {
        let (status, answer) = support::http_with(&addr, "POST", "/events", &headers, body.as_bytes());
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains(attribute), "{attribute}: {answer}");
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let records = logged(log.path());
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["s-1", "b-1", "b-2", "bin-1"]);
    let s = &records[0];
    assert_eq!((s.name.as_str(), s.source.as_str()), ("tool.called", "/agents/a"));
    assert_eq!(s.correlation_id.as_deref(), Some("run-1"));
    assert_eq!(s.time_unix_nanos, 1_796_169_600_000_000_000);
    assert_eq!(s.payload, json!({"tool": "search"}));
    assert_eq!(records[2].payload, json!("hi"));
    assert_eq!(records[3].payload, json!({"steps": 4}));
    assert_eq!(records[3].source, "/bin");
}
