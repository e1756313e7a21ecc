//! The `plugbus` binary, driven end to end.

use crate::support;

use std::process::Command;

use support::{http, plugbus, plugbus_bin, plugin_dir, wasm};

#[test]
fn run_reports_json_and_survives_bad_lines_and_plugins() {
    let dir = plugin_dir(&["cost-tracker", "console-logger", "misbehave"]);
    let events = dir.path().join("events.jsonl");
    // The file starts with a byte-order mark, as Windows tools write one.
    let mut bytes = concat!(
            "\u{feff}",
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
    )
    .as_bytes()
    .to_vec();
    // A line that is not UTF-8 is that line's error; the next line (ending
    // in CR LF) is still read. Before, the run stopped there, with no report.
    bytes.extend_from_slice(b"{\"name\":\"x\",\"payload\":\"caf\xe9\"}\n{\"name\":\"ping\"}\r\n");
    std::fs::write(&events, bytes).unwrap();
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
    assert!(
        stderr.contains("events.jsonl:7: not UTF-8 (byte 27 of the line)"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert_eq!(report["events"], 4);
    assert_eq!(report["invalid_lines"], 3);
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
    // console-logger sees the 4 events plus cost-tracker's budget_exceeded.
    assert_eq!(plugin("console-logger")["delivered"], 5);
    assert_eq!(plugin("cost-tracker")["ok"], 2);
}

/// `plugbus run` waits for the plugins often enough that none drops an
/// event, also one whose manifest gives it a queue of 2 (it waited every
/// 256 events: 279 of 300 were dropped).
#[test]
fn run_drops_nothing_into_a_plugin_with_a_small_queue() {
    let dir = tempfile::tempdir().unwrap();
    support::install(
        dir.path(),
        &wasm("misbehave"),
        "misbehave",
        "[limits]\nqueue_capacity = 2\n",
    );
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "{\"name\":\"misbehave.clock\"}\n".repeat(300)).unwrap();
    let out = plugbus(&[
        "run",
        "--plugins",
        dir.path().to_str().unwrap(),
        "--report",
        "json",
        events.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plugin = &report["plugins"][0];
    assert_eq!(
        (&plugin["delivered"], &plugin["dropped"]),
        (&300.into(), &0.into()),
        "{plugin}"
    );
}

#[test]
fn run_with_a_missing_directory_fails_naming_it() {
    let out = plugbus(&["run", "--plugins", "/no/such/dir", "-"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/dir"));
}

/// A directory whose every plugin is refused leaves the events nothing to
/// reach: `run` says so and exits 1 instead of reporting a run that did
/// nothing as a success. One plugin that loads is enough to run.
#[test]
fn run_with_every_plugin_refused_fails_naming_the_directory() {
    let dir = plugin_dir(&[]);
    std::fs::write(dir.path().join("broken.wasm"), b"not wasm").unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "{\"name\": \"a\", \"payload\": {}}\n").unwrap();
    let (plugins, input) = (dir.path().to_str().unwrap(), events.to_str().unwrap());
    let out = plugbus(&["run", "--plugins", plugins, input]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("broken.wasm") && stderr.contains("no plugin in"),
        "{stderr}"
    );
    assert!(stderr.contains(plugins), "{stderr}");

    std::fs::copy(wasm("console-logger"), dir.path().join("console-logger.wasm")).unwrap();
    let out = plugbus(&["run", "--plugins", plugins, input]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Plugin file names a user gets wrong or an attacker chooses: `host` (the
/// source of the host's and the application's events) is reserved; a
/// manifest beside no plugin of its name is warned about (its grants and
/// limits would silently be missing); a name holding a newline or an
/// escape sequence is printed escaped, so it forges no line of output.
#[test]
fn plugin_file_names_that_would_mislead_are_refused_or_warned_about() {
    let dir = plugin_dir(&[]);
    let logger = wasm("console-logger");
    std::fs::copy(&logger, dir.path().join("host.wasm")).unwrap();
    std::fs::copy(&logger, dir.path().join("my_plugin.wasm")).unwrap();
    std::fs::write(dir.path().join("my-plugin.toml"), "[limits]\nfuel = 1000\n").unwrap();
    std::fs::copy(&logger, dir.path().join("nl\nFORGED ERROR \u{1b}[31mred.wasm")).unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "{\"name\":\"ping\"}\n").unwrap();
    let out = plugbus(&[
        "run",
        "--plugins",
        dir.path().to_str().unwrap(),
        events.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stderr.contains("`host` is reserved"), "{stderr}");
    assert!(
        stderr.contains("my-plugin.toml") && stderr.contains("applies to nothing"),
        "{stderr}"
    );
    for text in [&stderr, &stdout] {
        assert!(text.contains("nl\\nFORGED ERROR \\u{1b}[31mred"), "{text}");
        assert!(!text.contains('\u{1b}'), "a raw escape sequence: {text}");
        assert!(!text.lines().any(|l| l.starts_with("FORGED")), "a forged line: {text}");
    }
}

/// A plugin's dead letters stay readable over HTTP when it is not loaded
/// (removed, or failing to load) on a host with a log: they are in the
/// log's journal, and `dlq redrive` cannot reach a log a server holds.
/// Redriving them needs the plugin: 404 says it is not loaded.
#[test]
fn the_dead_letters_of_a_plugin_not_loaded_are_listed_from_the_log() {
    let dir = plugin_dir(&["misbehave"]);
    let log = tempfile::tempdir().unwrap();
    let (served, addr, _stderr) = support::serve_logged(dir.path(), log.path());
    for _ in 0..2 {
        let (status, body) = http(&addr, "POST", "/events", br#"{"name":"misbehave.panic"}"#);
        assert_eq!(status, 202, "{body}");
    }
    let listed = |addr: &str| {
        let (status, body) = http(addr, "GET", "/plugins/misbehave/dead-letters", b"");
        let letters: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        (status, letters["dead_letters"].as_array().map_or(0, Vec::len), body)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while listed(&addr).1 < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "two dead letters: {}",
            listed(&addr).2
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Stopped (and the log's lock released) before the next host opens it.
    drop(served);
    std::fs::remove_file(dir.path().join("misbehave.wasm")).unwrap();
    let (served, addr, _stderr) = support::serve_logged(dir.path(), log.path());
    let (status, count, body) = listed(&addr);
    assert_eq!((status, count), (200, 2), "{body}");
    let (status, body) = http(&addr, "POST", "/plugins/misbehave/dead-letters/redrive", b"");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no plugin named `misbehave` is loaded"), "{body}");
    let (status, body) = http(&addr, "GET", "/plugins/ghost/dead-letters", b"");
    assert_eq!(status, 404, "{body}");
    drop(served);
}

/// A redrive of a quarantined plugin would only see its letters dropped
/// (a quarantined plugin receives nothing until its backoff is over): 503
/// with `Retry-After`, the letters untouched, instead of a 200 whose
/// report counts them all dropped.
#[test]
fn a_redrive_of_a_quarantined_plugin_is_refused_until_its_backoff_is_over() {
    let dir = plugin_dir(&["misbehave"]);
    std::fs::write(
        dir.path().join("misbehave.toml"),
        "[limits]\nquarantine_after = 2\nquarantine_backoff_ms = 60000\n",
    )
    .unwrap();
    let log = tempfile::tempdir().unwrap();
    let (served, addr, _stderr) = support::serve_logged(dir.path(), log.path());
    for _ in 0..2 {
        let (status, body) = http(&addr, "POST", "/events", br#"{"name":"misbehave.panic"}"#);
        assert_eq!(status, 202, "{body}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, body) = http(&addr, "GET", "/plugins", b"");
        if body.contains("\"quarantined\"") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never quarantined: {body}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (status, headers, body) =
        support::http_full(&addr, "POST", "/plugins/misbehave/dead-letters/redrive", &[], b"");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"quarantined\"") && body.contains("misbehave"), "{body}");
    let retry: u64 = support::header(&headers, "retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=60).contains(&retry), "{headers:?}");
    let (status, body) = http(&addr, "GET", "/plugins/misbehave/dead-letters", b"");
    assert_eq!(status, 200, "{body}");
    let letters: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(letters["dead_letters"].as_array().map(Vec::len), Some(2), "{body}");
    // Listed a page at a time, oldest first.
    let page = |query: &str| {
        let (status, body) = http(&addr, "GET", &format!("/plugins/misbehave/dead-letters?{query}"), b"");
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default(),
        )
    };
    let (status, first) = page("limit=1");
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["total"].as_u64(), first["next_offset"].as_u64()),
        (Some(2), Some(1)),
        "{first}"
    );
    let (_, second) = page("offset=1&limit=1");
    assert_eq!(second["next_offset"], serde_json::Value::Null, "{second}");
    assert_eq!(
        [&first, &second].map(|p| p["dead_letters"][0]["event"]["id"].clone()),
        [
            letters["dead_letters"][0]["event"]["id"].clone(),
            letters["dead_letters"][1]["event"]["id"].clone()
        ]
    );
    for bad in ["limit=0", "limit=10001", "offset=-1"] {
        let (status, answer) = page(bad);
        assert_eq!(status, 400, "{bad}: {answer}");
    }
    drop(served);
}

/// The dead-letter commands offline: a damaged journal line is named and
/// skipped by `dlq list` as a redrive skips it (it hid every other letter);
/// `dlq redrive --plugin` takes a name, not a path out of `--plugins`; a
/// redrive whose letters fail again exits 1 (it said 0: "done"); and
/// `new` refuses the name `host`, which no loader takes.
#[test]
fn dead_letter_commands_name_damage_and_refuse_paths() {
    let dir = plugin_dir(&["misbehave"]);
    let log = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        "{\"name\": \"misbehave.panic\"}\n{\"name\": \"misbehave.panic\"}\n",
    )
    .unwrap();
    let (plugins, log_dir) = (dir.path().to_str().unwrap(), log.path().to_str().unwrap());
    let out = plugbus(&["run", "--plugins", plugins, "--log", log_dir, events.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let journal = log.path().join("dead-letters/misbehave.jsonl");
    let mut text = std::fs::read_to_string(&journal).unwrap();
    text.insert_str(text.find('\n').unwrap() + 1, "not json\n");
    std::fs::write(&journal, text).unwrap();
    let out = plugbus(&["dlq", "list", "--log", log_dir, "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2, "{stderr}");
    assert!(
        stderr.contains("misbehave.jsonl:2") && stderr.contains("damaged"),
        "{stderr}"
    );

    let outside = format!("../{}/misbehave", dir.path().file_name().unwrap().to_str().unwrap());
    let redrive = |plugin: &str| {
        plugbus(&[
            "dlq",
            "redrive",
            "--log",
            log_dir,
            "--plugins",
            plugins,
            "--plugin",
            plugin,
        ])
    };
    let out = redrive(&outside);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a plugin name"));
    // The same broken version: both letters fail again, and stay.
    let out = redrive("misbehave");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("2 failed again"), "{stderr}");

    let scratch = tempfile::tempdir().unwrap();
    let out = plugbus(&["new", "host", "--dir", scratch.path().join("host").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reserved"));
    assert!(!scratch.path().join("host").exists());
    // A file where a directory is meant: said so, not "exists" or "File exists".
    let file = events.to_str().unwrap();
    for args in [
        &["new", "w", "--dir", file][..],
        &["wit", "--out", file][..],
        &["bindgen", "c", "--out", file][..],
        &["replay", "--plugins", file, "--log", log_dir][..],
    ] {
        let out = plugbus(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("a file") || stderr.contains("not a directory"),
            "{args:?}: {stderr}"
        );
    }
    // Several plugins that fail to load: each named by a replay.
    std::fs::write(dir.path().join("bad-one.wasm"), b"not wasm").unwrap();
    std::fs::write(dir.path().join("bad-two.wasm"), b"not wasm").unwrap();
    let out = plugbus(&["replay", "--plugins", plugins, "--log", log_dir]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad-one.wasm") && stderr.contains("bad-two.wasm"),
        "{stderr}"
    );
}

/// A command whose output cannot be written (stdout on a full disk) fails
/// with exit 1 and says so; it panicked with a backtrace (`println!`), or,
/// for `replay`, exited 0 having written nothing.
#[test]
fn output_that_cannot_be_written_is_an_error_not_a_panic() {
    let dir = plugin_dir(&["console-logger", "ledger"]);
    // A follow-up per event, for `replay` to print.
    std::fs::write(dir.path().join("ledger.toml"), "[config]\necho = \"true\"\n").unwrap();
    let log = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "{\"name\": \"ledger.a\", \"payload\": {}}\n").unwrap();
    let (plugins, log_dir) = (dir.path().to_str().unwrap(), log.path().to_str().unwrap());
    let out = plugbus(&["run", "--plugins", plugins, "--log", log_dir, events.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // `--pretty` indents the answer and keeps the compact form's key order.
    let query = [
        "query",
        "--plugins",
        plugins,
        "--log",
        log_dir,
        "ledger",
        r#"{"applied": true}"#,
    ];
    let compact = plugbus(&query);
    let pretty = plugbus(&[&query[..], &["--pretty"]].concat());
    let (compact, pretty) = (
        String::from_utf8_lossy(&compact.stdout),
        String::from_utf8_lossy(&pretty.stdout),
    );
    assert!(compact.starts_with(r#"{"as_of_seq":1,"answer":{"#), "{compact}");
    assert!(
        pretty.starts_with("{\n  \"as_of_seq\": 1,\n  \"answer\": {\n"),
        "{pretty}"
    );
    let wasm = support::wasm("console-logger");
    let commands: [&[&str]; 5] = [
        &["wit"],
        &["log", "stats", "--log", log_dir],
        &["check", wasm.to_str().unwrap()],
        &[
            "query",
            "--plugins",
            plugins,
            "--log",
            log_dir,
            "ledger",
            r#"{"applied": true}"#,
        ],
        &["replay", "--plugins", plugins, "--log", log_dir],
    ];
    for args in commands {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let out = std::process::Command::new(support::plugbus_bin())
            .args(args)
            .stdout(full)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("No space left on device") && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
}

/// Every error of serve's API is JSON, the ones axum makes included: an
/// unknown path, a wrong method (with `Allow`), a body over the limit.
#[test]
fn every_error_of_the_api_is_json() {
    let dir = plugin_dir(&[]);
    let (served, addr, _stderr) = support::serve(&["--plugins", dir.path().to_str().unwrap()]);
    let error_of = |status: u16, body: &str| {
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {body:?}"));
        v["error"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned()
    };
    let (status, body) = http(&addr, "GET", "/no/such/route", b"");
    assert_eq!(status, 404);
    assert!(error_of(status, &body).contains("/no/such/route"), "{body}");
    let (status, head, body) = support::http_full(&addr, "DELETE", "/events", &[], b"");
    assert_eq!(status, 405, "{body}");
    assert!(error_of(status, &body).contains("DELETE"), "{body}");
    assert_eq!(support::header(&head, "allow"), Some("POST"), "{head}");
    // Over serve's 1 MiB: refused by the body's limit.
    let big = vec![b' '; (1 << 20) + 1];
    let (status, head, body) = support::http_full(&addr, "POST", "/plugins/x/query", &[], &big);
    assert_eq!(status, 413, "{body}");
    assert!(!error_of(status, &body).is_empty(), "{body}");
    assert!(
        support::header(&head, "content-type").is_some_and(|ct| ct.starts_with("application/json")),
        "{head}"
    );
    // Not UTF-8: the extractor's rejection, as JSON.
    let (status, body) = http(&addr, "POST", "/plugins/x/query", b"\xff\xfe");
    assert_eq!(status, 400, "{body}");
    error_of(status, &body);
    drop(served);
}

/// A name or path quoted in an error is printed with its control
/// characters escaped: an escape sequence (clear the screen, a bell) in an
/// argument, a file name or a plugin's own message never acts on the
/// terminal of whoever reads the error.
#[test]
fn errors_print_escape_sequences_escaped() {
    let raw = "x\u{1b}[2J\u{7}y";
    let out = plugbus(&["log", "stats", "--log", &format!("/no/such/{raw}")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains('\u{1b}') && !stderr.contains('\u{7}'), "{stderr:?}");
    assert!(stderr.contains("x\\u{1b}[2J\\u{7}y"), "{stderr:?}");
}

/// Every CLI error path names the thing at fault once, on one line, with
/// no part of the message repeated (an error that both showed and chained
/// its OS error used to print it twice).
#[test]
fn cli_errors_name_the_thing_at_fault_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let file = file.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "--plugins", "/no/such/dir", "-"],
            "plugin directory /no/such/dir",
        ),
        (&["serve", "--plugins", "/no/such/dir"], "plugin directory /no/such/dir"),
        (&["run", "--plugins", file, "-"], "plugin directory"),
        (&["check", "/no/such.wasm"], "/no/such.wasm"),
        (&["check", file], "a-file"),
        (&["check", "Cargo.toml"], "Cargo.toml: not a WebAssembly file"),
        (&["run", "--plugins", "/no/such/dir", "/no/events.jsonl"], "/no/"),
        (
            &["replay", "--plugins", "/no/such/dir", "--log", "/no/log"],
            "event log /no/log",
        ),
        (
            &["query", "--plugins", "/no/such/dir", "--log", "/no/log", "p", "{}"],
            "event log /no/log",
        ),
        (
            &["run", "--plugins", "/no/such/dir", "--schemas", "/no/schemas", "-"],
            "/no/",
        ),
        (
            &["serve", "--plugins", file, "--listen", "127.0.0.1:1"],
            "plugin directory",
        ),
    ];
    for (args, names) in cases {
        let out = plugbus(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr.lines().rfind(|l| l.starts_with("plugbus: ")).unwrap_or_default();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(line.contains(names), "{args:?} should name `{names}`: {stderr}");
        let parts: Vec<&str> = line.split(": ").collect();
        for (i, part) in parts.iter().enumerate() {
            assert!(!parts[i + 1..].contains(part), "{args:?} repeats `{part}`: {line}");
        }
    }
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
    assert!(stdout.contains("plugbus:observer/host@0.1.3"), "{stdout}");

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

/// `--log-segment-bytes` and `--log-retention-bytes` bound the log `run`
/// (and `serve`) writes; the flags' units are checked, naming the value.
#[test]
fn log_retention_flags_bound_the_log_and_refuse_bad_units() {
    let dir = tempfile::tempdir().unwrap();
    let (plugins, log) = (dir.path().join("plugins"), dir.path().join("log"));
    std::fs::create_dir(&plugins).unwrap();
    let events = dir.path().join("events.jsonl");
    let line = r#"{"name": "model_responded", "payload": {"model": "gpt-4.1-mini", "usage": {"prompt_tokens": 1200}}}"#;
    std::fs::write(&events, format!("{line}\n").repeat(2_000)).unwrap();
    let (plugins, log, events) = (
        plugins.to_str().unwrap(),
        log.to_str().unwrap(),
        events.to_str().unwrap(),
    );
    let out = plugbus(&[
        "run",
        "--plugins",
        plugins,
        "--log",
        log,
        "--log-segment-bytes",
        "16KiB",
        "--log-retention-bytes",
        "64KiB",
        events,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first = plugbus::log::first_retained_seq(log).unwrap().unwrap();
    assert!(first > 1, "retention removed the oldest segments");
    let mut bytes = 0;
    for entry in std::fs::read_dir(log).unwrap() {
        let entry = entry.unwrap();
        if entry.path().extension().is_some_and(|e| e == "seg") {
            let len = entry.metadata().unwrap().len();
            assert!(len <= 17 << 10, "a segment of {len} bytes");
            bytes += len;
        }
    }
    // The budget plus the segment being written, at most.
    assert!(bytes <= (64 + 17) << 10, "{bytes} bytes of segments");
    assert_eq!(plugbus::log::last_seq(log).unwrap(), Some(2_000));
    for (flag, value, says) in [
        ("--log-retention-bytes", "10 parsecs", "unknown size unit `parsecs`"),
        ("--log-retention-age", "7", "needs a unit"),
        ("--log-segment-bytes", "1KiB", "below the smallest, 4KiB"),
    ] {
        let out = plugbus(&["run", "--plugins", plugins, "--log", log, flag, value, events]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains(says),
            "{flag} {value}: {stderr}"
        );
    }
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

/// `plugbus new --lang c|python|js`, built with each folder's own Makefile
/// (the toolchains `make setup` installed), then run by the real binary.
#[test]
fn new_scaffolds_c_python_and_js_plugins_that_build_and_run() {
    let tools = support::guest_tools();
    let work = tempfile::tempdir().unwrap();
    let plugins = work.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let langs = [
        ("c", "my-c", vec![]),
        (
            "python",
            "my-py",
            vec![format!(
                "COMPONENTIZE_PY={}",
                tools.join("venv/bin/componentize-py").display()
            )],
        ),
        (
            "js",
            "my-js",
            vec![format!(
                "COMPONENTIZE_QJS={}",
                tools.join("js/node_modules/.bin/componentize-qjs").display()
            )],
        ),
    ];
    for (lang, name, tool_vars) in &langs {
        let root = work.path().join(name);
        let out = plugbus(&["new", name, "--lang", lang, "--dir", root.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        for file in ["Makefile", "README.md", "events.jsonl", &format!("{name}.toml")] {
            assert!(root.join(file).is_file(), "{lang}: missing {file}");
        }
        let out = Command::new("make")
            .arg(format!("PLUGBUS={}", plugbus_bin().display()))
            .args(tool_vars)
            .current_dir(&root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the {lang} scaffold does not build (toolchains come from `make setup`):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for ext in ["wasm", "toml"] {
            std::fs::copy(
                root.join(format!("{name}.{ext}")),
                plugins.join(format!("{name}.{ext}")),
            )
            .unwrap();
        }
    }
    let events = work.path().join("my-c/events.jsonl");
    let out = plugbus(&[
        "run",
        "--plugins",
        plugins.to_str().unwrap(),
        "--cache-dir",
        support::shared_cache().to_str().unwrap(),
        "--report",
        "json",
        events.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plugins = report["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 3, "{report}");
    for p in plugins {
        // 5 events from the file + one `<name>.long_answer` from each of the
        // three plugins (each subscribes to `*`).
        assert_eq!((p["delivered"].as_u64(), p["ok"].as_u64()), (Some(8), Some(8)), "{p}");
    }
}

#[test]
fn history_commands_name_both_sources_and_refuse_a_stream_without_nats() {
    let plugins = plugin_dir(&[]);
    let plugins = plugins.path().to_str().unwrap();
    let log = tempfile::tempdir().unwrap();
    let log = log.path().to_str().unwrap();
    for args in [
        &["dlq", "list"][..],
        &["replay", "--plugins", plugins],
        &["query", "--plugins", plugins, "x", "{}"],
    ] {
        // `args` and `more`, refused by clap (exit 2): its stderr.
        let refused = |more: &[&str]| {
            let out = plugbus(&[args, more].concat());
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!(out.status.code(), Some(2), "{args:?} {more:?}: {stderr}");
            stderr
        };
        let stderr = refused(&[]);
        assert!(stderr.contains("<--log <DIR>|--nats <URL>>"), "{args:?}: {stderr}");
        let stderr = refused(&["--log", log, "--nats", "nats://127.0.0.1:1"]);
        assert!(stderr.contains("cannot be used with"), "{args:?}: {stderr}");
        // A stream name means nothing to a log: refused, not ignored.
        let stderr = refused(&["--log", log, "--stream", "OTHER"]);
        assert!(
            stderr.contains("cannot be used with") && stderr.contains("'--stream <NAME>'"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn wit_and_bindgen_hand_out_the_contract_the_host_speaks() {
    let out = plugbus(&["wit"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let repo = std::fs::read_to_string(support::workspace_root().join("wit/observer.wit")).unwrap();
    assert_eq!(text, repo, "`plugbus wit` prints wit/ as built in");

    let work = tempfile::tempdir().unwrap();
    let out = plugbus(&["bindgen", "c", "--out", work.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let header = std::fs::read_to_string(work.path().join("observer.h")).unwrap();
    assert!(header.contains("exports_plugbus_observer_handler_on_event"));
    assert!(work.path().join("observer_component_type.o").is_file());

    // `--out` writes the whole package, the vendored WASI deps included, byte
    // for byte as wit/ holds it; the built-in package has the http worlds.
    let package = work.path().join("wit");
    let out = plugbus(&["wit", "--out", package.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let repo_wit = support::workspace_root().join("wit");
    let mut files = vec!["observer.wit".to_owned(), "http.wit".to_owned()];
    for dep in std::fs::read_dir(repo_wit.join("deps")).unwrap() {
        let dep = dep.unwrap().file_name().into_string().unwrap();
        files.push(format!("deps/{dep}/{dep}.wit"));
    }
    assert_eq!(files.len(), 9, "{files:?}");
    for file in &files {
        assert_eq!(
            std::fs::read(package.join(file)).unwrap(),
            std::fs::read(repo_wit.join(file)).unwrap(),
            "{file}"
        );
    }
    let http = work.path().join("http");
    let out = plugbus(&[
        "bindgen",
        "c",
        "--world",
        "http-observer",
        "--out",
        http.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let header = std::fs::read_to_string(http.join("http_observer.h")).unwrap();
    assert!(header.contains("wasi_http_outgoing_handler_handle"));
    let out = plugbus(&[
        "bindgen",
        "c",
        "--world",
        "no-such-world",
        "--out",
        http.to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("http-observer"),
        "the error lists the worlds"
    );

    // A missing or broken WIT directory is an error naming it.
    let missing = work.path().join("no-such-wit");
    let out = plugbus(&["bindgen", "c", "--out", "x", "--wit", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-wit"));
    let broken = work.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("x.wit"), "package a:b; world observer { import nope; }").unwrap();
    let out = plugbus(&["bindgen", "c", "--out", "x", "--wit", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broken"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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

#[test]
fn serve_accepts_events_over_http_reports_and_drains_on_sigterm() {
    let dir = plugin_dir(&["console-logger", "misbehave"]);
    // One file that is no plugin: a load failure, counted in /metrics.
    std::fs::write(dir.path().join("broken.wasm"), b"not wasm").unwrap();
    let (mut child, addr, log) = support::serve(&["--plugins", dir.path().to_str().unwrap()]);

    let lines = "{\"name\":\"agent.step\",\"payload\":{\"n\":1}}\n{\"name\":\"misbehave.spin\"}\n{\"name\":\"tool.called\",\"correlation_id\":\"r\"}\n";
    let (status, body) = http(&addr, "POST", "/events", lines.as_bytes());
    assert_eq!(status, 202, "{body}");
    let ids: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ids["ids"].as_array().unwrap().len(), 3);

    // Malformed input: 400 naming the line, and nothing from that request is published.
    let (status, body) = http(&addr, "POST", "/events", b"{\"name\":\"fine\"}\nnot json\n");
    assert_eq!(status, 400);
    assert!(body.contains("line 2"), "{body}");
    let (status, _) = http(&addr, "POST", "/events", b"");
    assert_eq!(status, 400);
    // An event is an object: an array in its place is refused (serde reads
    // one as the fields in order), and a pretty-printed one's own error is
    // given, not a line's.
    let (status, body) = http(&addr, "POST", "/events", br#"["tool.called", {"x": 1}, "run-1"]"#);
    assert_eq!(status, 400);
    assert!(body.contains("event 0") && body.contains("JSON object"), "{body}");
    let (status, body) = http(&addr, "POST", "/events", b"{\n  \"name\": \"a..b\"\n}\n");
    assert_eq!(status, 400);
    assert!(body.contains("invalid event name"), "{body}");
    let (status, _) = http(&addr, "POST", "/events", &vec![b' '; 2 << 20]);
    assert_eq!(status, 413, "bodies are bounded");
    // The host's own announcements cannot be posted (a fake
    // `plugbus.plugin.quarantined` would set off webhook-alert).
    let (status, body) = http(&addr, "POST", "/events", br#"{"name":"plugbus.plugin.quarantined"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("the host's own announcements"), "{body}");
    // A compressed body is refused naming its encoding (before: "not UTF-8"
    // for gzip, and `br` went unnoticed).
    for encoding in ["gzip", "br"] {
        let (status, body) = support::http_with(
            &addr,
            "POST",
            "/events",
            &[("Content-Encoding", encoding)],
            b"{\"name\":\"fine\"}",
        );
        assert_eq!(status, 415, "{body}");
        assert!(
            body.contains(&format!("unsupported content encoding {encoding}")),
            "{body}"
        );
    }

    let start = std::time::Instant::now();
    let plugins = loop {
        let (status, body) = http(&addr, "GET", "/plugins", b"");
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["stats"]["delivered"].as_u64() > Some(0))
        {
            break v;
        }
        assert!(start.elapsed().as_secs() < 30, "events never delivered: {v}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let misbehave = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "misbehave")
        .unwrap();
    assert_eq!(misbehave["stats"]["failures"]["out_of_fuel"], 1);
    assert!(misbehave["stats"]["last_error"].as_str().unwrap().contains("fuel"));

    let (status, metrics) = http(&addr, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    // Every line is a comment, `# EOF`, or `name{labels} value`.
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "bad name in {line:?}"
        );
    }
    assert!(metrics.contains("plugbus_events_published_total 3"), "{metrics}");
    assert!(metrics.contains("\nplugbus_load_failures 1\n"), "{metrics}");
    assert!(metrics.contains("plugbus_plugin_delivered_total{plugin=\"console-logger\"} 3"));
    assert!(metrics.contains("plugbus_plugin_failures_total{plugin=\"misbehave\",kind=\"out_of_fuel\"} 1"));
    assert!(metrics.contains("plugbus_plugin_handler_seconds_count{plugin=\"console-logger\"} 3"));
    assert!(metrics.contains("plugbus_plugin_handler_seconds_bucket{le=\"+Inf\",plugin=\"console-logger\"} 3"));
    assert!(metrics.trim_end().ends_with("# EOF"));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful shutdown exits 0: {exit:?}");
    let log = log.join().unwrap();
    assert!(log.contains("console-logger: delivered 3, dropped 0"), "{log}");
}

/// `plugbus -q bench --plugins <test plugins> ARGS --json FILE`: the rows it wrote.
fn bench_rows(args: &[&str]) -> Vec<serde_json::Value> {
    let out_dir = tempfile::tempdir().unwrap();
    let json = out_dir.path().join("bench.json");
    let mut all = vec!["-q", "bench", "--plugins", support::wasm_dir().to_str().unwrap()];
    all.extend_from_slice(args);
    all.extend(["--json", json.to_str().unwrap()]);
    let out = plugbus(&all);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    doc["rows"].as_array().unwrap().clone()
}

/// The benchmark harness keeps working: every scenario produces a row. No
/// figure is asserted (timing belongs in benchmarks, not tests).
#[test]
fn bench_runs_every_scenario_and_writes_json() {
    let rows = bench_rows(&["--events", "300"]);
    for scenario in [
        "1 emit latency",
        "2 handler throughput",
        "3 per language",
        "4 runaway tax",
        "5 recovery",
        "6 start-up",
        "7 python peer",
        "8 event log",
        "9 state recovery",
        "10 replay",
        "11 projection queries",
        "12 schema at emit",
        "13 dashboard",
        "14 nats",
        "15 catch-up",
        "16 otlp ingest",
        "17 batched delivery",
        "18 outbound http",
    ] {
        assert!(rows.iter().any(|r| r["scenario"] == scenario), "no row for {scenario}");
    }
    assert!(rows.iter().all(|r| r["value"].as_f64().is_some_and(f64::is_finite)));
    for lang in ["Rust", "C", "Python", "JavaScript"] {
        let measure = format!("{lang}: events/s (vs native)");
        assert!(
            rows.iter().any(|r| r["measure"] == measure.as_str()),
            "no row for {measure}"
        );
    }

    // `--only` runs the groups holding the given scenarios, nothing else.
    let rows = bench_rows(&["--events", "100", "--only", "5"]);
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r["scenario"] == "5 recovery"),
        "{rows:?}"
    );
    // A scenario that does not exist is a usage error, not an empty table.
    let out = plugbus(&["bench", "--only", "19"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--only"));
}

#[test]
fn a_malformed_failpoints_variable_is_refused_naming_the_entry() {
    for (spec, says) in [
        ("plugin.compile", "`plugin.compile` is not name=action"),
        ("plugin.compile=sleep(", "failpoint `plugin.compile`"),
    ] {
        let out = Command::new(plugbus_bin())
            .arg("--version")
            .env("FAILPOINTS", spec)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{spec}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{spec}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A web page the operator visits cannot use the operator's browser to post
/// events, redrive dead letters or read the API: a request a browser marks
/// cross-site (`Origin`, `Sec-Fetch-Site`) that changes anything is refused,
/// and so is a `Host` that is not an IP address, localhost or an
/// `--allow-host` name (DNS rebinding). Agents, SDKs and the dashboard
/// itself are not affected. Before, a `no-cors` fetch from another site
/// posted events and ran a redrive, and a rebound name read everything.
#[test]
fn a_web_page_cannot_drive_or_read_the_api_through_the_operators_browser() {
    let dir = plugin_dir(&["console-logger"]);
    let (served, addr, _log) = support::serve(&[
        "--plugins",
        dir.path().to_str().unwrap(),
        "--allow-host",
        "agents.internal",
    ]);
    let event = br#"{"name":"agent.step","payload":{"n":1}}"#;
    let refused = |method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]| {
        let (status, answer) = support::http_with(&addr, method, path, headers, body);
        assert_eq!(status, 403, "{method} {path} {headers:?}: {answer}");
        answer
    };
    // A form, or fetch(…, {mode: "no-cors"}), from another site.
    refused(
        "POST",
        "/events",
        &[("Origin", "http://evil.example:17880"), ("Content-Type", "text/plain")],
        event,
    );
    refused("POST", "/events", &[("Origin", "null")], event);
    refused(
        "POST",
        "/plugins/console-logger/dead-letters/redrive",
        &[("Sec-Fetch-Site", "cross-site")],
        b"",
    );
    refused("POST", "/v1/traces", &[("Sec-Fetch-Site", "same-site")], b"{}");
    // DNS rebinding: the page's own name made to resolve to 127.0.0.1.
    let port = addr.rsplit_once(':').unwrap().1;
    let answer = refused(
        "GET",
        "/plugins",
        &[("Host", &format!("rebind.attacker.example:{port}"))],
        b"",
    );
    assert!(answer.contains("--allow-host"), "{answer}");
    refused("GET", "/", &[("Host", "rebind.attacker.example")], b"");

    // The dashboard's own requests, a client that is not a browser, and a
    // name of the operator's are answered.
    let origin = format!("http://{addr}");
    let same = [("Origin", origin.as_str()), ("Sec-Fetch-Site", "same-origin")];
    assert_eq!(support::http_with(&addr, "POST", "/events", &same, event).0, 202);
    assert_eq!(http(&addr, "POST", "/events", event).0, 202);
    assert_eq!(
        support::http_with(&addr, "GET", "/plugins", &[("Host", "agents.internal")], b"").0,
        200
    );
    assert_eq!(
        support::http_with(&addr, "GET", "/plugins", &[("Host", &format!("localhost:{port}"))], b"").0,
        200
    );
    // A JSON array of events, from a client that is not a browser.
    let (status, body) = http(
        &addr,
        "POST",
        "/events",
        br#"[{"name":"agent.step"},{"name":"tool.called"}]"#,
    );
    assert_eq!(status, 202, "{body}");
    // Only the events taken reached the bus.
    let (_, metrics) = http(&addr, "GET", "/metrics", b"");
    assert!(metrics.contains("plugbus_events_published_total 4"), "{metrics}");
    support::terminate(&served);
}

/// A client that sent half a request and waits does not hold the shutdown:
/// past the grace period its connection is closed and the host exits (it
/// waited for the client to go away, however long).
#[test]
fn a_half_sent_request_does_not_hold_the_shutdown() {
    use std::io::Write as _;
    let dir = plugin_dir(&["console-logger"]);
    let (mut child, addr, log) = support::serve(&["--plugins", dir.path().to_str().unwrap(), "--grace-ms", "500"]);
    let mut stuck = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stuck,
        "POST /events HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000\r\n\r\n{{\"na"
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = std::time::Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "still running 20 s after SIGTERM, held by a half-sent request"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    assert!(log.join().unwrap().contains("grace period"));
    drop(stuck);
}

/// A client that starts a request and never finishes it is cut off after
/// `--client-timeout-ms`: a head never ended (the connection is closed), a
/// body that stops coming (400, naming the wait); a body declared larger
/// than any route takes is refused at once (413), before it is read.
/// Before, each held its connection, and its task, for as long as the client
/// kept it open.
#[test]
fn a_request_never_finished_is_cut_off_after_the_client_timeout() {
    use std::io::{Read as _, Write as _};
    let dir = plugin_dir(&["console-logger"]);
    let (served, addr, _log) =
        support::serve(&["--plugins", dir.path().to_str().unwrap(), "--client-timeout-ms", "500"]);
    let connect = || {
        let stream = std::net::TcpStream::connect(&addr).unwrap();
        // Far past the client timeout: a read that waits this long failed the test.
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        stream
    };
    let answer = |stream: &mut std::net::TcpStream| {
        let mut text = String::new();
        match stream.read_to_string(&mut text) {
            Ok(_) => text,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => text,
            Err(e) => panic!("no answer and no close within 20 s: {e} (read so far: {text:?})"),
        }
    };

    let mut head = connect();
    write!(head, "POST /events HTTP/1.1\r\nHost: {addr}\r\nContent-Le").unwrap();
    let text = answer(&mut head);
    assert!(!text.contains("202"), "{text}");

    let mut body = connect();
    write!(
        body,
        "POST /events HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"na"
    )
    .unwrap();
    let text = answer(&mut body);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.contains("no part of the request body arrived for 500 ms"),
        "{text}"
    );

    // A byte every 300 ms arrives well inside the wait for each part, but
    // at ~3 bytes/s: cut off at 500 ms plus a second per 500 bytes, not
    // after the 100 bytes' 30 s.
    let mut trickle = connect();
    write!(
        trickle,
        "POST /events HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    .unwrap();
    let mut cut = false;
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        // Readable means the server has answered (or closed): stop writing,
        // or a byte arriving after its close resets the connection and the
        // answer with it. (The cut comes ~0.5 s after the head, ~0.1 s
        // before the second byte would be written.)
        trickle.set_nonblocking(true).unwrap();
        let mut peek = [0u8; 1];
        let answered = !matches!(trickle.peek(&mut peek), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock);
        trickle.set_nonblocking(false).unwrap();
        if answered || trickle.write_all(b" ").is_err() {
            cut = true;
            break;
        }
    }
    assert!(cut, "a body trickled at ~3 bytes/s was read for 30 s");
    let text = answer(&mut trickle);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("slower than 500 bytes/s"), "{text}");

    let mut huge = connect();
    write!(
        huge,
        "POST /events HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 99999999999999\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let text = answer(&mut huge);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");

    // The host still answers, and an event still goes in (after a
    // byte-order mark, which opens the text, not the event).
    let (status, body) = http(&addr, "POST", "/events", "\u{feff}{\"name\":\"ping\"}".as_bytes());
    assert_eq!(status, 202, "{body}");
    support::terminate(&served);
}
