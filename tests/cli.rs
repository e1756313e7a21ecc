//! The `plugbus` binary, driven end to end.

mod support;

use std::process::{Command, Output};

use support::{plugbus_bin, plugin_dir, wasm};

fn plugbus(args: &[&str]) -> Output {
    Command::new(plugbus_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run plugbus")
}

#[test]
fn run_reports_json_and_survives_bad_lines_and_plugins() {
    let dir = plugin_dir(&["cost-tracker", "console-logger", "misbehave"]);
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        concat!(
            r#"{"name":"model_responded","payload":{"model":"m","usage":{"prompt_tokens":1000,"completion_tokens":500},"cost_usd":0.04},"correlation_id":"r1"}"#,
            "\n",
            "this is not json\n",
            "\n",
            r#"{"name":"misbehave.spin"}"#,
            "\n",
            r#"{"name":"model_responded","payload":{"model":"m","usage":{"prompt_tokens":1000,"completion_tokens":500},"cost_usd":0.04},"correlation_id":"r1"}"#,
            "\n",
            r#"{"name":"bad..name"}"#,
            "\n",
        ),
    )
    .unwrap();
    let out = plugbus(&[
        "run",
        "--plugins",
        dir.path().to_str().unwrap(),
        "--report",
        "json",
        events.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("events.jsonl:2:"),
        "line number of the bad line: {stderr}"
    );
    assert!(stderr.contains("events.jsonl:6:"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert_eq!(report["events"], 3);
    assert_eq!(report["invalid_lines"], 2);
    let plugin = |name: &str| {
        report["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()
            .clone()
    };
    let fixture = plugin("misbehave");
    assert_eq!(fixture["delivered"], 1);
    assert_eq!(fixture["failures"]["out_of_fuel"], 1);
    for key in ["state", "ok", "errors", "dropped", "restarts", "fuel_consumed"] {
        assert!(fixture.get(key).is_some(), "missing {key}");
    }
    for kind in plugbus::Failure::KINDS {
        assert!(fixture["failures"].get(kind).is_some(), "missing failures.{kind}");
    }
    // console-logger sees the 3 events plus cost-tracker's budget_exceeded.
    assert_eq!(plugin("console-logger")["delivered"], 4);
    assert_eq!(plugin("cost-tracker")["ok"], 2);
}

#[test]
fn run_with_a_missing_directory_fails_naming_it() {
    let out = plugbus(&["run", "--plugins", "/no/such/dir", "-"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/dir"));
}

#[test]
fn check_describes_a_plugin_and_refuses_a_bad_one() {
    let out = plugbus(&["check", wasm("cost-tracker").to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("cost-tracker") && stdout.contains("model_responded"),
        "{stdout}"
    );
    assert!(stdout.contains("plugbus:observer/host@0.1.0"), "{stdout}");

    let out = plugbus(&["check", "--json", wasm("misbehave").to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["subscriptions"], serde_json::json!(["misbehave.*"]));

    let out = plugbus(&["check", wasm("wrong-world").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("wrong-world.wasm") && stderr.contains("not a plugbus observer"),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_exit_with_2() {
    assert_eq!(plugbus(&["run"]).status.code(), Some(2));
    assert_eq!(plugbus(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn new_scaffolds_a_plugin_that_builds_and_runs() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("long-answers");
    let out = plugbus(&["new", "long-answers", "--dir", root.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "README.md",
        "events.jsonl",
        "long-answers.toml",
        ".cargo/config.toml",
    ] {
        assert!(root.join(file).is_file(), "missing {file}");
    }
    // Build it exactly as its README says (target dir shared to keep reruns fast).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = support::workspace_root().join("target/scaffold-test");
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet"])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(status.success(), "the scaffold does not build");

    let plugins = work.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::copy(
        target.join("wasm32-wasip2/release/long_answers.wasm"),
        plugins.join("long-answers.wasm"),
    )
    .unwrap();
    std::fs::copy(root.join("long-answers.toml"), plugins.join("long-answers.toml")).unwrap();
    let out = plugbus(&[
        "run",
        "--plugins",
        plugins.to_str().unwrap(),
        "--report",
        "json",
        root.join("events.jsonl").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &report["plugins"][0];
    assert_eq!(p["name"], "long-answers");
    // 5 events from the file + its own `long-answers.long_answer` follow-up (it subscribes to `*`).
    assert_eq!((p["delivered"].as_u64(), p["ok"].as_u64()), (Some(6), Some(6)), "{p}");
}

#[test]
fn new_refuses_bad_names_and_existing_folders() {
    let work = tempfile::tempdir().unwrap();
    let out = plugbus(&["new", "Bad Name", "--dir", work.path().join("x").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid plugin name"));
    std::fs::write(work.path().join("keep.txt"), "mine").unwrap();
    let out = plugbus(&["new", "ok-name", "--dir", work.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(
        std::fs::read_to_string(work.path().join("keep.txt")).unwrap(),
        "mine",
        "nothing overwritten"
    );
}
