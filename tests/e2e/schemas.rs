//! Event schemas at emit: `try_emit` names the failing path, plain `emit`
//! follows the policy, a plugin's follow-up is refused with the reason, and
//! `POST /events` answers 422.

use plugbus::{Bus, Outcome, SchemaPolicy};
use serde_json::{Value, json};

use crate::support;

fn usage_schema() -> Value {
    json!({
        "type": "object",
        "required": ["usage"],
        "properties": {
            "usage": {"type": "object", "properties": {"prompt_tokens": {"type": "integer", "minimum": 0}}}
        }
    })
}

#[tokio::test]
async fn invalid_events_are_caught_at_the_call_site() {
    let dir = support::plugin_dir(&["token-counter"]);
    let bus = Bus::builder()
        .plugin_dir(dir.path())
        .schema("model_responded", usage_schema())
        .build()
        .await
        .unwrap();
    let seen = support::Recorder::attach(&bus, "model_responded");
    let e = bus
        .try_emit("model_responded", json!({"usage": {"prompt_tokens": -5}}))
        .unwrap_err();
    assert_eq!(
        (e.event.as_str(), e.path.as_str()),
        ("model_responded", "/usage/prompt_tokens")
    );
    assert!(
        bus.try_emit("model_responded", json!({"usage": {"prompt_tokens": 5}}))
            .is_ok()
    );
    assert!(
        bus.try_emit("unschemad", json!("anything")).is_ok(),
        "names without a schema pass"
    );
    // Plain emit under the default policy: refused, counted, never delivered.
    let refused = bus.emit("model_responded", json!({"tokens": 3}));
    assert_eq!(refused.seq(), None);
    let report = bus.emit_and_wait("model_responded", json!("not an object")).await;
    assert!(report.deliveries.is_empty());
    bus.flush().await;
    assert_eq!(bus.schema_rejected(), 2);
    assert_eq!(seen.named("model_responded").len(), 1);
    let tc = bus.plugins().into_iter().find(|p| p.name == "token-counter").unwrap();
    assert_eq!(tc.stats.delivered, 1);
    bus.shutdown().await;

    // Policy warn: delivered, still counted.
    let bus = Bus::builder()
        .schema("model_responded", usage_schema())
        .schema_policy(SchemaPolicy::Warn)
        .build()
        .await
        .unwrap();
    let seen = support::Recorder::attach(&bus, "model_responded");
    assert!(bus.emit("model_responded", json!({})).seq().is_some());
    bus.flush().await;
    assert_eq!((bus.schema_rejected(), seen.named("model_responded").len()), (1, 1));
    bus.shutdown().await;
}

#[tokio::test]
async fn a_plugins_follow_up_is_refused_with_the_reason() {
    let dir = support::plugin_dir(&["cost-tracker"]);
    std::fs::write(
        dir.path().join("cost-tracker.toml"),
        "[config]\nbudget_usd = \"0.01\"\n",
    )
    .unwrap();
    let bus = Bus::builder()
        .plugin_dir(dir.path())
        .schema(
            "budget_exceeded",
            json!({"type": "object", "required": ["approved_by"]}),
        )
        .build()
        .await
        .unwrap();
    let exceeded = support::Recorder::attach(&bus, "budget_exceeded");
    let payload = json!({"usage": {"prompt_tokens": 10, "completion_tokens": 10}, "cost_usd": 1.0});
    let report = bus.emit_and_wait("model_responded", payload).await;
    match report.outcome("cost-tracker") {
        Some(Outcome::Error(reason)) => {
            assert!(
                reason.contains("budget_exceeded") && reason.contains("approved_by"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    bus.flush().await;
    assert!(exceeded.named("budget_exceeded").is_empty());
    bus.shutdown().await;
}

#[test]
fn post_events_answers_422_with_the_path_and_bad_schemas_are_named() {
    let dir = support::plugin_dir(&["console-logger"]);
    let schemas = tempfile::tempdir().unwrap();
    std::fs::write(
        schemas.path().join("model_responded.schema.json"),
        usage_schema().to_string(),
    )
    .unwrap();
    let (mut child, addr, _stderr) = support::serve(&[
        "--plugins",
        dir.path().to_str().unwrap(),
        "--schemas",
        schemas.path().to_str().unwrap(),
    ]);
    let body = concat!(
        r#"{"name": "model_responded", "payload": {"usage": {"prompt_tokens": 1}}}"#,
        "\n",
        r#"{"name": "model_responded", "payload": {"usage": {"prompt_tokens": "many"}}}"#,
    );
    let (status, answer) = support::http(&addr, "POST", "/events", body.as_bytes());
    assert_eq!(status, 422, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["index"], 1);
    assert_eq!(answer["path"], "/usage/prompt_tokens");
    let (status, _) = support::http(
        &addr,
        "POST",
        "/events",
        br#"{"name": "model_responded", "payload": {"usage": {"prompt_tokens": 1}}}"#,
    );
    assert_eq!(status, 202);
    child.kill().unwrap();
    child.wait().unwrap();

    // A schema that is not JSON, or not a schema, stops start-up naming the file.
    std::fs::write(schemas.path().join("tool.called.schema.json"), "{oops").unwrap();
    let out = std::process::Command::new(support::plugbus_bin())
        .args(["run", "--plugins"])
        .arg(dir.path())
        .arg("--schemas")
        .arg(schemas.path())
        .arg("/dev/null")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tool.called.schema.json") && stderr.contains("not JSON"),
        "{stderr}"
    );
}
