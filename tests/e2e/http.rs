//! Outbound HTTP for plugins (issue 21): grants, the address check, limits,
//! I/O time and the deadline, the request journal under trap recovery,
//! restart, hot reload, `plugbus replay` and a NATS redelivery, secrets, and the `webhook-alert` plugin.
//!
//! The servers are real: a small HTTP/1.1 server on loopback, started by
//! each test, that counts what reaches it (the witness that nothing is sent
//! twice) and can answer slowly or with a large body.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plugbus::{Bus, Event, Outcome};
use serde_json::{Value, json};

use crate::support::{self, Recorder, install, wasm};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A loopback HTTP/1.1 server: answers `200` with the request's body echoed
/// (`/slow/<ms>` after a delay, `/hold` once the test releases it, `/big/<n>`
/// with `n` bytes, `/status/<code>` with that status, `/redirect/<port>` a
/// 302 to that port's `/`), one request per connection, and records every request.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// `/hold` requests wait until this is set.
    released: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let released = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let (log, gate) = (seen.clone(), released.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (log, gate) = (log.clone(), gate.clone());
                std::thread::spawn(move || answer(stream, &log, &gate));
            }
        });
        Server { port, seen, released }
    }

    /// Lets every `/hold` request (held now or later) be answered.
    fn release(&self) {
        let (flag, cv) = &*self.released;
        *flag.lock().unwrap() = true;
        cv.notify_all();
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn answer(stream: TcpStream, log: &Mutex<Vec<Seen>>, gate: &(Mutex<bool>, std::sync::Condvar)) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.trim().split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    let body = String::from_utf8_lossy(&body).into_owned();
    log.lock().unwrap().push(Seen {
        method,
        path: path.clone(),
        headers,
        body: body.clone(),
    });
    let (status, reply) = if path == "/hold" {
        let (flag, cv) = gate;
        let _released = cv.wait_while(flag.lock().unwrap(), |released| !*released).unwrap();
        (200, body)
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
        (200, body)
    } else if let Some(n) = path.strip_prefix("/big/") {
        (200, "x".repeat(n.parse().unwrap_or(0)))
    } else if let Some(code) = path.strip_prefix("/status/") {
        (code.parse().unwrap_or(500), body)
    } else if let Some(port) = path.strip_prefix("/redirect/") {
        let mut stream = stream;
        let _ = write!(
            stream,
            "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{port}/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        return;
    } else {
        (200, body)
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    );
}

/// A port nothing listens on (bound, then closed).
fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A plugin directory holding the fetcher fixture with `manifest`.
fn fetcher_dir(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &wasm("fetcher"), "fetcher", manifest);
    dir
}

async fn start_bus(plugins: &Path, log: Option<&Path>) -> Bus {
    let mut b = Bus::builder().plugin_dir(plugins);
    if let Some(log) = log {
        b = b.log_dir(log);
    }
    let bus = b.build().await.unwrap();
    assert!(bus.load_failures().is_empty(), "{:?}", bus.load_failures());
    bus
}

/// A `fetch` event for these requests (`(method, url, body)`).
fn fetch(requests: &[(&str, &str, &str)]) -> Value {
    json!({ "requests": requests.iter().map(|(m, u, b)| json!({"method": m, "url": u, "body": b})).collect::<Vec<_>>() })
}

/// What each request of the last `fetch` came to: the `fetched` follow-ups.
fn fetched(rec: &Recorder) -> Vec<Value> {
    rec.named("fetched").iter().map(|e| e.payload().clone()).collect()
}

#[tokio::test]
async fn a_granted_origin_is_reached_and_every_other_request_is_refused_with_its_rule() {
    let server = Server::start();
    let other = Server::start();
    let port = server.port;
    let granted = fetcher_dir(&format!("[http]\nallow = [\"http://127.0.0.1:{port}\"]\n"));
    let bus = start_bus(granted.path(), None).await;
    let rec = Recorder::attach(&bus, "fetched");
    let refused = Recorder::attach(&bus, "plugbus.plugin.request_refused");
    let report = bus
        .emit_and_wait(
            "fetch",
            fetch(&[
                ("POST", &server.url("/hook"), "hello"),
                ("GET", &other.url("/"), ""),
                ("GET", &format!("http://localhost:{port}/"), ""),
                ("GET", "http://169.254.169.254/latest/meta-data/", ""),
                ("GET", &format!("https://127.0.0.1:{port}/"), ""),
                ("GET", &format!("http://user:S3CRET@127.0.0.1:{port}/"), ""),
            ]),
        )
        .await;
    bus.flush().await;
    assert_eq!(report.outcome("fetcher"), Some(&Outcome::Ok));
    let got = fetched(&rec);
    assert_eq!(got.len(), 6, "{got:?}");
    assert_eq!(got[0]["status"], 200);
    assert_eq!(got[0]["body"], "hello");
    // Another port, another name for the same address, the metadata
    // address, another scheme: none is the granted origin.
    for refused in &got[1..5] {
        assert_eq!(refused["error"], "request failed: HttpRequestDenied", "{got:?}");
    }
    // User info in the URL: refused, the password never quoted.
    assert_eq!(got[5]["error"], "request failed: HttpRequestUriInvalid", "{got:?}");
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str(), seen[0].body.as_str()),
        ("POST", "/hook", "hello")
    );
    let key = plugbus::http::RequestKey {
        plugin: "fetcher".into(),
        event: report.event.id().into(),
        index: 0,
    };
    assert_eq!(seen[0].header("idempotency-key"), Some(key.idempotency_key().as_str()));
    assert!(other.seen().is_empty());
    // Each refusal says which rule refused it.
    let rules: Vec<String> = refused
        .events()
        .iter()
        .map(|e| e.payload()["rule"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(rules.len(), 5, "{rules:?}");
    assert!(
        rules[..4].iter().all(|r| r.starts_with("origin not in http.allow")),
        "{rules:?}"
    );
    assert!(rules[4].contains("user info"), "{rules:?}");
    let texts: Vec<String> = refused.events().iter().map(|e| e.payload().to_string()).collect();
    assert!(!texts.iter().any(|t| t.contains("S3CRET")), "{texts:?}");
    // A refusal names the origin, never the path or query (a webhook's URL
    // is often its secret).
    let urls: Vec<String> = refused
        .events()
        .iter()
        .map(|e| e.payload()["url"].to_string())
        .collect();
    assert!(urls.contains(&"\"http://169.254.169.254/…\"".to_owned()), "{urls:?}");
    assert!(!urls.iter().any(|u| u.contains("meta-data")), "{urls:?}");
    let info = bus.plugins().into_iter().find(|p| p.name == "fetcher").unwrap();
    let counts = info.http.unwrap();
    assert_eq!((counts.sent, counts.refused, counts.failed), (1, 5, 0));
    bus.shutdown().await;

    // `localhost` granted by name resolves to loopback, which is not
    // granted by address: the resolved address is what is checked.
    let by_name = fetcher_dir(&format!("[http]\nallow = [\"http://localhost:{port}\"]\n"));
    let bus = start_bus(by_name.path(), None).await;
    let rec = Recorder::attach(&bus, "fetched");
    let refused = Recorder::attach(&bus, "plugbus.plugin.request_refused");
    bus.emit_and_wait("fetch", fetch(&[("GET", &format!("http://localhost:{port}/"), "")]))
        .await;
    bus.flush().await;
    assert_eq!(
        fetched(&rec)[0]["error"],
        "request failed: DestinationIpProhibited",
        "{:?}",
        fetched(&rec)
    );
    let rule = refused.events()[0].payload()["rule"].as_str().unwrap().to_owned();
    assert!(
        rule.contains("(loopback)") && rule.contains("allow_addresses"),
        "{rule}"
    );
    assert_eq!(server.seen().len(), 1);
    bus.shutdown().await;

    // Granting loopback by address lets the name through.
    let by_address = fetcher_dir(&format!(
        "[http]\nallow = [\"http://localhost:{port}\"]\nallow_addresses = [\"127.0.0.0/8\", \"::1\"]\n"
    ));
    let bus = start_bus(by_address.path(), None).await;
    let rec = Recorder::attach(&bus, "fetched");
    bus.emit_and_wait("fetch", fetch(&[("GET", &format!("http://localhost:{port}/x"), "")]))
        .await;
    bus.flush().await;
    assert_eq!(fetched(&rec)[0]["status"], 200, "{:?}", fetched(&rec));
    bus.shutdown().await;

    // A redirect is the guest's to follow (the host follows none), and its
    // target passes the same checks: here, another port, not granted.
    let redirected = fetcher_dir(&format!("[http]\nallow = [\"http://127.0.0.1:{port}\"]\n"));
    let bus = start_bus(redirected.path(), None).await;
    let rec = Recorder::attach(&bus, "fetched");
    bus.emit_and_wait(
        "fetch",
        fetch(&[
            ("GET", &server.url(&format!("/redirect/{}", other.port)), ""),
            ("GET", &other.url("/"), ""),
        ]),
    )
    .await;
    bus.flush().await;
    let got = fetched(&rec);
    assert_eq!(got[0]["status"], 302, "{got:?}");
    assert_eq!(got[1]["error"], "request failed: HttpRequestDenied", "{got:?}");
    assert!(other.seen().is_empty(), "the redirect's target was never reached");
    bus.shutdown().await;

    // No [http] table at all: refused, never a link failure.
    let none = fetcher_dir("");
    let bus = start_bus(none.path(), None).await;
    let rec = Recorder::attach(&bus, "fetched");
    let report = bus
        .emit_and_wait("fetch", fetch(&[("GET", &server.url("/"), "")]))
        .await;
    bus.flush().await;
    assert_eq!(report.outcome("fetcher"), Some(&Outcome::Ok));
    assert_eq!(fetched(&rec)[0]["error"], "request failed: HttpRequestDenied");
    assert_eq!(server.seen().len(), 3);
    bus.shutdown().await;
}

#[tokio::test]
async fn limits_refuse_or_fail_the_request_and_a_dead_server_is_an_error_not_a_trap() {
    let server = Server::start();
    let dead = dead_port();
    let dir = fetcher_dir(&format!(
        "[http]\nallow = [\"http://127.0.0.1:{}\", \"http://127.0.0.1:{dead}\"]\n\
         per_second = 4\nrequest_body_kib = 1\nresponse_body_kib = 1\n",
        server.port
    ));
    let bus = start_bus(dir.path(), None).await;
    let rec = Recorder::attach(&bus, "fetched");
    let big = "b".repeat(2000);
    let report = bus
        .emit_and_wait(
            "fetch",
            fetch(&[
                ("POST", &server.url("/"), &big),
                ("GET", &server.url("/big/5000"), ""),
                ("GET", &format!("http://127.0.0.1:{dead}/"), ""),
                ("GET", &server.url("/"), ""),
                ("GET", &server.url("/"), ""),
            ]),
        )
        .await;
    bus.flush().await;
    assert_eq!(
        report.outcome("fetcher"),
        Some(&Outcome::Ok),
        "a failed request fails no event"
    );
    let got = fetched(&rec);
    assert_eq!(got[0]["error"], "request failed: HttpRequestBodySize", "{got:?}");
    assert_eq!(got[1]["error"], "request failed: HttpResponseBodySize", "{got:?}");
    assert_eq!(got[2]["error"], "request failed: ConnectionRefused", "{got:?}");
    // Four requests started this second (the body-size refusal, the big
    // body, the dead server, this one); the fifth is over `per_second`.
    assert_eq!(got[3]["status"], 200, "{got:?}");
    assert_eq!(got[4]["error"], "request failed: ConnectionLimitReached", "{got:?}");
    // The oversized request body never reached the server.
    assert!(server.seen().iter().all(|s| s.body.len() < 2000));
    let counts = bus.plugins()[0].http.clone().unwrap();
    assert_eq!((counts.sent, counts.refused, counts.failed), (1, 2, 2), "{counts:?}");
    bus.shutdown().await;
}

#[tokio::test]
async fn time_waiting_on_a_request_counts_against_the_io_budget_not_the_deadline() {
    let server = Server::start();
    let manifest = |io_budget_ms: u64| {
        format!(
            "[limits]\ndeadline_ms = 50\nquarantine_after = 0\n[http]\nallow = [\"http://127.0.0.1:{}\"]\nio_budget_ms = {io_budget_ms}\n",
            server.port
        )
    };
    // A 300 ms answer, six times the deadline: within a 2 s I/O budget.
    let dir = fetcher_dir(&manifest(2000));
    let bus = start_bus(dir.path(), None).await;
    let rec = Recorder::attach(&bus, "fetched");
    let report = bus
        .emit_and_wait("fetch", fetch(&[("GET", &server.url("/slow/300"), "")]))
        .await;
    bus.flush().await;
    assert_eq!(report.outcome("fetcher"), Some(&Outcome::Ok), "{report:?}");
    assert_eq!(fetched(&rec)[0]["status"], 200);
    bus.shutdown().await;
    // The same answer past a 100 ms I/O budget: the deadline stops the event.
    let dir = fetcher_dir(&manifest(100));
    let bus = start_bus(dir.path(), None).await;
    let report = bus
        .emit_and_wait("fetch", fetch(&[("GET", &server.url("/slow/300"), "")]))
        .await;
    assert!(
        matches!(
            report.outcome("fetcher"),
            Some(Outcome::Failed(plugbus::Failure::Deadline))
        ),
        "{report:?}"
    );
    bus.shutdown().await;
}

/// The time a request waits on the journal is I/O too: a replay whose
/// journal answers each request in 300 ms (failpoint `http_journal.lookup`,
/// as a cold disk or a far NATS bucket would) is not stopped by a 50 ms
/// deadline.
#[tokio::test]
async fn time_waiting_on_the_journal_counts_against_the_io_budget_not_the_deadline() {
    let server = Server::start();
    let dir = fetcher_dir(&format!(
        "[limits]\ndeadline_ms = 50\nquarantine_after = 0\n[http]\nallow = [\"http://127.0.0.1:{}\"]\n",
        server.port
    ));
    let log = tempfile::tempdir().unwrap();
    let bus = start_bus(dir.path(), Some(log.path())).await;
    for i in 0..2 {
        let report = bus
            .emit_and_wait("fetch", fetch(&[("POST", &server.url(&format!("/e{i}")), "x")]))
            .await;
        assert_eq!(report.outcome("fetcher"), Some(&Outcome::Ok), "{report:?}");
    }
    bus.shutdown().await;
    let out = std::process::Command::new(support::plugbus_bin())
        .args(["replay", "--plugins", dir.path().to_str().unwrap()])
        .args(["--log", log.path().to_str().unwrap(), "--no-cache"])
        .env("RUST_LOG", "warn")
        .env("FAILPOINTS", "http_journal.lookup=sleep(300)")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("failures"), "{stderr}");
    let replayed = replayed_fetched(&out);
    assert_eq!(replayed.len(), 2, "{stderr}");
    assert!(replayed.iter().all(|v| v["status"] == 200), "{replayed:?}");
    assert_eq!(server.seen().len(), 2, "a replay sends nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_waiting_on_a_server_delays_nobody_else() {
    let server = Server::start();
    let plugins = tempfile::tempdir().unwrap();
    install(
        plugins.path(),
        &wasm("fetcher"),
        "fetcher",
        &format!(
            "[http]\nallow = [\"http://127.0.0.1:{}\"]\nio_budget_ms = 600000\ntimeout_ms = 600000\n",
            server.port
        ),
    );
    // Nine others, subscribed to what the agent emits.
    for i in 0..9 {
        install(plugins.path(), &wasm("token-counter"), &format!("counter-{i}"), "");
    }
    let bus = start_bus(plugins.path(), None).await;
    // The fetcher's request is held by the server until the end of the test.
    bus.emit("fetch", fetch(&[("GET", &server.url("/hold"), "")]));
    support::until("the held request", || (!server.seen().is_empty()).then_some(())).await;
    // Fewer than a queue holds (1,024): none is dropped for a full queue.
    const EVENTS: u64 = 500;
    for _ in 0..EVENTS {
        bus.emit(
            "model_responded",
            json!({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
        );
    }
    // Every other plugin handles every event while the fetcher still waits.
    support::until("the others", || {
        let done = bus
            .plugins()
            .iter()
            .filter(|p| p.name.starts_with("counter-") && p.stats.ok == EVENTS)
            .count();
        (done == 9).then_some(())
    })
    .await;
    let fetcher = bus.plugins().into_iter().find(|p| p.name == "fetcher").unwrap();
    assert_eq!(fetcher.stats.delivered, 0, "the fetcher is still waiting on its server");
    assert!(bus.plugins().iter().all(|p| p.stats.dropped == 0));
    server.release();
    bus.flush().await;
    let fetcher = bus.plugins().into_iter().find(|p| p.name == "fetcher").unwrap();
    assert_eq!(fetcher.stats.ok, 1);
    bus.shutdown().await;
}

#[tokio::test]
async fn trap_recovery_restart_and_replay_send_nothing_twice() {
    let server = Server::start();
    let plugins = fetcher_dir(&format!(
        "replay = \"all\"\n[limits]\nquarantine_after = 0\n[http]\nallow = [\"http://127.0.0.1:{}\"]\n",
        server.port
    ));
    let log = tempfile::tempdir().unwrap();
    let bus = start_bus(plugins.path(), Some(log.path())).await;
    let rec = Recorder::attach(&bus, "fetched");
    for i in 0..3 {
        bus.emit("fetch", fetch(&[("POST", &server.url(&format!("/e{i}")), "x")]));
    }
    // The fourth posts, then traps: the instance is rebuilt and the three
    // events before it are replayed to bring its state back. Their requests
    // are answered from the journal.
    let mut trap = fetch(&[("POST", &server.url("/e3"), "x")]);
    trap["then"] = json!("panic");
    let report = bus.emit_and_wait("fetch", trap).await;
    assert!(
        matches!(report.outcome("fetcher"), Some(Outcome::Failed(_))),
        "{report:?}"
    );
    bus.emit_and_wait("fetch", fetch(&[("POST", &server.url("/e4"), "x")]))
        .await;
    bus.flush().await;
    let paths = |s: &Server| s.seen().iter().map(|r| r.path.clone()).collect::<Vec<_>>();
    assert_eq!(paths(&server), ["/e0", "/e1", "/e2", "/e3", "/e4"]);
    let live = fetched(&rec);
    let counts = bus.plugins()[0].http.clone().unwrap();
    assert_eq!(counts.sent, 5);
    assert!(
        counts.replayed >= 3,
        "the rebuild replayed the three events before the trap: {counts:?}"
    );
    bus.shutdown().await;

    // A restart whose plugin catches up on the whole log: answered from the
    // journal, nothing sent (the dead-lettered event is not handled again).
    let bus = start_bus(plugins.path(), Some(log.path())).await;
    bus.flush().await;
    assert_eq!(paths(&server).len(), 5, "{:?}", paths(&server));
    let counts = bus.plugins()[0].http.clone().unwrap();
    assert_eq!((counts.sent, counts.refused, counts.replayed), (0, 0, 4), "{counts:?}");
    // A hot reload (a new manifest: a new version) hands over: whatever the
    // new version handles again (here: nothing, the plugin keeps no state)
    // is answered from the journal, and nothing is sent.
    let manifest = plugins.path().join("fetcher.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("{text}[config]\nversion = \"2\"\n")).unwrap();
    bus.reload_plugin(plugins.path().join("fetcher.wasm")).await.unwrap();
    bus.flush().await;
    assert_eq!(paths(&server).len(), 5, "{:?}", paths(&server));
    let counts = bus.plugins()[0].http.clone().unwrap();
    assert_eq!((counts.sent, counts.refused), (0, 0), "{counts:?}");
    bus.shutdown().await;

    // `plugbus replay`: the same answers as live, nothing sent.
    let out = replay(plugins.path(), log.path(), "--no-cache");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let replayed = replayed_fetched(&out);
    assert_eq!(replayed, live, "a replay's requests get the live run's answers");
    assert_eq!(paths(&server).len(), 5);

    // Without the journal, a replay refuses the requests instead of sending them.
    std::fs::remove_file(log.path().join(plugbus::http::JOURNAL_FILE)).unwrap();
    let out = replay(plugins.path(), log.path(), "--no-cache");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("HttpRequestDenied"), "{text}");
    assert_eq!(paths(&server).len(), 5);
    // And `--live-requests` is only for a replay that publishes.
    let out = replay(plugins.path(), log.path(), "--live-requests");
    assert_eq!(out.status.code(), Some(2), "bad arguments");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--emit publish"));
}

/// Log retention removes old history: the journal then drops the requests
/// of the events gone (so it does not grow for ever), but keeps a dead
/// letter's (a redrive sends nothing) and every request of an event the log
/// still holds (a replay of it sends nothing and is refused nothing).
#[tokio::test]
async fn retention_compacts_the_journal_but_keeps_what_can_be_handled_again() {
    let server = Server::start();
    // A rebuild after a trap replays at most 10 events (past that the
    // state cannot be rebuilt): this plugin holds no old request back.
    let plugins = fetcher_dir(&format!(
        "[limits]\nquarantine_after = 0\nreplay_max_events = 10\n[http]\nallow = [\"http://127.0.0.1:{}\"]\nper_second = 1000\n",
        server.port
    ));
    let log = tempfile::tempdir().unwrap();
    let bus = bus_with_short_retention(plugins.path(), log.path()).await;
    // The first event posts, then traps: a dead letter, with a request.
    let mut poison = fetch(&[("POST", &server.url("/poison"), "x")]);
    poison["then"] = json!("panic");
    bus.emit_and_wait("fetch", poison).await;
    const EVENTS: usize = 80;
    for i in 0..EVENTS {
        bus.emit_and_wait("fetch", fetch(&[("POST", &server.url(&format!("/e{i}")), "x")]))
            .await;
    }
    bus.flush().await;
    assert_eq!(server.seen().len(), EVENTS + 1);
    let journaled = || plugbus::http::RequestJournal::open_read_only(log.path()).unwrap();
    // The compaction runs on a thread of its own once a segment is removed.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while journaled().len() > EVENTS / 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the journal was not compacted: {} records",
            journaled().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = plugbus::log::first_retained_seq(log.path()).unwrap().unwrap();
    assert!(first > 1, "retention removed segments");
    let letters = bus.dead_letters("fetcher").unwrap();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].event.seq < first,
        "the dead letter's event is gone from the log"
    );
    let key = plugbus::http::RequestKey {
        plugin: "fetcher".into(),
        event: letters[0].event.id.clone(),
        index: 0,
    };
    assert!(
        journaled().get(&key).unwrap().is_some(),
        "the dead letter's request is kept"
    );
    // A redrive hands the poison event over again (it traps again): its
    // request is answered from the journal, not sent.
    let redrive = bus.redrive("fetcher").await.unwrap();
    assert_eq!((redrive.redriven, redrive.failed), (1, 1), "{redrive:?}");
    assert_eq!(server.seen().len(), EVENTS + 1);
    bus.shutdown().await;

    // `plugbus log stats` counts what the journal holds now.
    let out = support::plugbus(&["log", "stats", "--log", log.path().to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["request_journal"]["records"], journaled().len());
    assert!(stats["request_journal"]["bytes"].as_u64().unwrap() > 0, "{stats}");
    // A replay of what the log still holds: every request answered from
    // the journal (none refused, none sent).
    let out = replay(plugins.path(), log.path(), "--no-cache");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let fetched: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["name"] == "fetched")
        .collect();
    assert!(!fetched.is_empty(), "{text}");
    assert!(!text.contains("HttpRequestDenied"), "{text}");
    assert_eq!(server.seen().len(), EVENTS + 1);
}

/// A plugin without `state` is brought back after a trap by replaying every
/// event since its instance started: retention may remove those events from
/// the log, but the journal keeps their requests while the worker may hand
/// them over again, so the rebuild's requests are answered, none refused.
/// A second plugin that keeps only 5 events for a rebuild
/// (`replay_max_events`) shows that compaction ran meanwhile.
#[tokio::test]
async fn a_rebuild_after_retention_gets_every_answer_from_the_journal() {
    let server = Server::start();
    let plugins = tempfile::tempdir().unwrap();
    let grant = format!(
        "[http]\nallow = [\"http://127.0.0.1:{}\"]\nper_second = 1000\n",
        server.port
    );
    install(
        plugins.path(),
        &wasm("fetcher"),
        "fetcher",
        &format!("[limits]\nquarantine_after = 0\n{grant}"),
    );
    install(
        plugins.path(),
        &wasm("fetcher"),
        "short",
        &format!("[limits]\nquarantine_after = 0\nreplay_max_events = 5\n{grant}"),
    );
    let log = tempfile::tempdir().unwrap();
    let bus = bus_with_short_retention(plugins.path(), log.path()).await;
    const EVENTS: usize = 60;
    for i in 0..EVENTS {
        bus.emit_and_wait("fetch", fetch(&[("POST", &server.url(&format!("/e{i}")), "x")]))
            .await;
    }
    bus.flush().await;
    let journaled = || plugbus::http::RequestJournal::open_read_only(log.path()).unwrap().len();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while journaled() >= 2 * EVENTS - 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "never compacted: {} records",
            journaled()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(plugbus::log::first_retained_seq(log.path()).unwrap().unwrap() > 1);
    assert!(journaled() >= EVENTS, "fetcher's records are kept: {}", journaled());
    // A trap: the next event rebuilds `fetcher` by replaying all 60.
    let mut trap = fetch(&[("POST", &server.url("/trap"), "x")]);
    trap["then"] = json!("panic");
    bus.emit_and_wait("fetch", trap).await;
    bus.emit_and_wait("fetch", fetch(&[("POST", &server.url("/after"), "x")]))
        .await;
    bus.flush().await;
    let infos = bus.plugins();
    let counts = infos
        .iter()
        .find(|p| p.name == "fetcher")
        .unwrap()
        .http
        .clone()
        .unwrap();
    assert_eq!(counts.refused, 0, "{counts:?}");
    assert!(counts.replayed >= EVENTS as u64, "{counts:?}");
    assert_eq!(server.seen().len(), 2 * EVENTS + 4, "nothing sent twice");
    bus.shutdown().await;
}

/// `Bus::shutdown` waits for the journal compactions retention started:
/// once it returns, nothing rewrites the journal behind the caller (here
/// each compaction is slowed by 300 ms, failpoint `bus.retention.compact`).
#[tokio::test]
async fn shutdown_waits_for_the_journal_compaction_retention_started() {
    let server = Server::start();
    let plugins = fetcher_dir(&format!(
        "[limits]\nreplay_max_events = 5\n[http]\nallow = [\"http://127.0.0.1:{}\"]\nper_second = 1000\n",
        server.port
    ));
    let log = tempfile::tempdir().unwrap();
    let bus = bus_with_short_retention(plugins.path(), log.path()).await;
    // Only retention's compactions hit it (this test's, and the other
    // retention test's, which waits for its own): never removed, so a
    // compaction started late is slowed too.
    fail::cfg("bus.retention.compact", "sleep(300)").unwrap();
    const EVENTS: usize = 60;
    for i in 0..EVENTS {
        bus.emit_and_wait("fetch", fetch(&[("POST", &server.url(&format!("/e{i}")), "x")]))
            .await;
    }
    bus.shutdown().await;
    assert!(plugbus::log::first_retained_seq(log.path()).unwrap().unwrap() > 1);
    let journal = plugbus::http::RequestJournal::open_read_only(log.path()).unwrap();
    assert!(
        journal.len() < EVENTS / 2,
        "compacted by then: {} records",
        journal.len()
    );
    assert!(!log.path().join("http-journal.compacting").exists());
}

/// C and Python plugins (the `http-observer` world, `wit/http.wit`) go
/// through the same hook as Rust ones: the grant, the journal under trap
/// recovery and restart catch-up, the `Idempotency-Key`. Their fixtures
/// behave as the Rust `fetcher` does, so the expectations are the same.
#[tokio::test]
async fn c_and_python_plugins_send_requests_through_the_same_grant_and_journal() {
    for fixture in ["fetch-c", "fetch-py"] {
        let server = Server::start();
        let plugins = tempfile::tempdir().unwrap();
        install(
            plugins.path(),
            &support::lang_wasm(fixture),
            "fetch",
            &format!(
                "replay = \"all\"\n[limits]\nquarantine_after = 0\n[http]\nallow = [\"http://127.0.0.1:{}\"]\n",
                server.port
            ),
        );
        let log = tempfile::tempdir().unwrap();
        let start = || async {
            let bus = Bus::builder()
                .plugin_dir(plugins.path())
                .log_dir(log.path())
                .cache_dir(support::shared_cache())
                .build()
                .await
                .unwrap();
            assert!(bus.load_failures().is_empty(), "{fixture}: {:?}", bus.load_failures());
            bus
        };
        let bus = start().await;
        let rec = Recorder::attach(&bus, "fetched");
        let ungranted = format!("http://127.0.0.1:{}/b", dead_port());
        let report = bus
            .emit_and_wait(
                "fetch",
                fetch(&[("POST", &server.url("/a"), "hello"), ("GET", &ungranted, "")]),
            )
            .await;
        assert_eq!(report.outcome("fetch"), Some(&Outcome::Ok), "{fixture}: {report:?}");
        // A trap after a request: the event is dead-lettered and a fresh
        // instance takes the next one (these plugins keep no state, so
        // nothing is replayed into it); its request was sent once.
        let mut trap = fetch(&[("POST", &server.url("/c"), "x")]);
        trap["then"] = json!("panic");
        let report = bus.emit_and_wait("fetch", trap).await;
        assert!(
            matches!(report.outcome("fetch"), Some(Outcome::Failed(_))),
            "{fixture}: {report:?}"
        );
        bus.flush().await;
        let seen = server.seen();
        let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/a", "/c"], "{fixture}: each request sent once");
        assert_eq!(
            (seen[0].method.as_str(), seen[0].body.as_str()),
            ("POST", "hello"),
            "{fixture}"
        );
        let key = seen[0].header("idempotency-key").unwrap_or_default();
        assert!(
            key.len() == 32 && key.chars().all(|c| c.is_ascii_hexdigit()),
            "{fixture}: key {key:?}"
        );
        let answers = fetched(&rec);
        assert_eq!(
            answers[0],
            json!({"index": 0, "status": 200, "body": "hello"}),
            "{fixture}"
        );
        assert_eq!(answers[1]["index"], 1, "{fixture}");
        assert!(
            answers[1]["error"].as_str().unwrap_or("").contains("HttpRequestDenied"),
            "{fixture}: {:?}",
            answers[1]
        );
        let counts = bus.plugins()[0].http.clone().unwrap();
        assert_eq!((counts.sent, counts.refused), (2, 1), "{fixture}: {counts:?}");
        bus.shutdown().await;

        // A restart catches up on the log (`replay = "all"`): the first
        // event's request is answered from the journal, nothing is sent.
        let bus = start().await;
        bus.flush().await;
        assert_eq!(server.seen().len(), 2, "{fixture}");
        let counts = bus.plugins()[0].http.clone().unwrap();
        assert_eq!((counts.sent, counts.replayed), (0, 1), "{fixture}: {counts:?}");
        bus.shutdown().await;
    }
}

#[test]
fn a_nats_redelivery_carries_the_same_idempotency_key() {
    let nats = support::NatsServer::start();
    let server = Server::start();
    let plugins = fetcher_dir(&format!(
        "[http]\nallow = [\"http://127.0.0.1:{}\"]\nio_budget_ms = 600000\ntimeout_ms = 600000\n",
        server.port
    ));
    let host = || support::serve(&support::nats_host(plugins.path(), &nats.url));
    // Host A takes the event and sends its request, which the server holds;
    // A dies before it can acknowledge the event.
    let (mut a, addr_a, _log_a) = host();
    let body = json!({"name": "fetch", "payload": fetch(&[("POST", &server.url("/hold"), "alert")])}).to_string();
    let (status, answer) = support::http(&addr_a, "POST", "/events", body.as_bytes());
    assert_eq!(status, 202, "{answer}");
    let id = serde_json::from_str::<Value>(&answer).unwrap()["ids"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let waited = std::time::Instant::now();
    while server.seen().is_empty() && waited.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    a.kill().unwrap();
    let _ = a.wait();
    server.release();
    // Host B gets it again once the ack wait has passed, and sends it again:
    // A died before the response, so the stream's journal has no answer for
    // it. The receiver can tell.
    let (_b, _addr_b, _log_b) = host();
    let waited = std::time::Instant::now();
    while server.seen().len() < 2 && waited.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let key = plugbus::http::RequestKey {
        plugin: "fetcher".into(),
        event: id,
        index: 0,
    }
    .idempotency_key();
    for request in &seen {
        assert_eq!(request.header("idempotency-key"), Some(key.as_str()), "{seen:?}");
    }
}

/// The journal on NATS is the stream's key-value bucket, shared by every
/// host: host A sends an event's request, records the answer and dies
/// before its ack (failpoint `nats.ack`); host B, handed the event again,
/// answers the request from the bucket and sends nothing. A second event's
/// response (1.5 MB, more than one NATS message) is stored in parts, and
/// `plugbus replay --nats` answers both from the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_redelivery_to_another_host_answers_from_the_streams_journal() {
    let nats = support::NatsServer::start();
    let server = Server::start();
    let plugins = fetcher_dir(&format!(
        "[http]\nallow = [\"http://127.0.0.1:{}\"]\nresponse_body_kib = 2048\n",
        server.port
    ));
    let args = support::nats_host(plugins.path(), &nats.url);
    let (mut a, addr_a, log_a) = support::serve_with_env(&args, &[("FAILPOINTS", "nats.ack=return(crash)")]);
    let small = json!({"name": "fetch", "payload": fetch(&[("POST", &server.url("/echo"), "alert")])});
    let mut big = fetch(&[("GET", &server.url("/big/1500000"), "")]);
    big["report"] = json!(false);
    let body = format!("{small}\n{}\n", json!({"name": "fetch", "payload": big}));
    // A may crash before it answers (its ack can come first): no answer
    // is not a refusal.
    if let Some((status, answer)) = support::try_http(&addr_a, "POST", "/events", body.as_bytes()) {
        assert_eq!(status, 202, "{answer}");
    }
    let exit = support::exit_of(&mut a, Duration::from_secs(30), "host A never reached its ack").await;
    assert!(!exit.success(), "{exit:?}");
    assert!(log_a.join().unwrap().contains("failpoint nats.ack"));
    let sent_by_a = server.seen().len();
    assert!(sent_by_a >= 1, "A sent its first event's request before its ack");

    let (b, addr_b, _log_b) = support::serve(&args);
    let waited = std::time::Instant::now();
    let counts = loop {
        let (status, body) = support::http(&addr_b, "GET", "/plugins", b"");
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let http = v["plugins"][0]["http"].clone();
        if http["replayed"].as_u64().unwrap_or(0) + http["sent"].as_u64().unwrap_or(0) >= 2 {
            break http;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "B never handled both events: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Every request A sent (and recorded) is answered from the bucket.
    assert_eq!(counts["replayed"].as_u64(), Some(sent_by_a as u64), "{counts}");
    assert_eq!(counts["sent"].as_u64(), Some(2 - sent_by_a as u64), "{counts}");
    let paths: Vec<String> = server.seen().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/echo", "/big/1500000"], "each request reached the server once");
    support::terminate(&b);

    // A replay of the stream gets the live run's answers, the large one too
    // (an unanswered request would be refused and fail its event).
    let out = support::plugbus(&[
        "replay",
        "--plugins",
        plugins.path().to_str().unwrap(),
        "--nats",
        &nats.url,
        "--no-cache",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("errors"), "{stderr}");
    let replayed = replayed_fetched(&out);
    assert_eq!(replayed, [json!({"index": 0, "status": 200, "body": "alert"})]);
    assert_eq!(server.seen().len(), 2, "a replay sends nothing");
}

/// The webhook-alert plugin in `dir`, posting to `url` (kept in a secret file).
fn install_webhook_alert(dir: &Path, server: &Server, url: &str, extra: &str) {
    std::fs::write(dir.join("webhook-url.txt"), format!("{url}\n")).unwrap();
    install(
        dir,
        &wasm("webhook-alert"),
        "webhook-alert",
        &format!(
            "subscriptions = [\"budget_exceeded\", \"alert.*\"]\n{extra}\n[secrets]\nwebhook_url = {{ file = \"webhook-url.txt\" }}\n\
             [http]\nallow = [\"http://127.0.0.1:{}\"]\n",
            server.port
        ),
    );
}

#[tokio::test]
async fn webhook_alert_fires_once_for_the_budget_case_also_across_a_restart() {
    let server = Server::start();
    let plugins = support::plugin_dir(&["cost-tracker"]);
    install_webhook_alert(
        plugins.path(),
        &server,
        &server.url("/hooks/T0k3n-s3cr3t"),
        "[config]\nformat = \"slack\"",
    );
    let log = tempfile::tempdir().unwrap();
    let bus = start_bus(plugins.path(), Some(log.path())).await;
    let call = |cost: f64| json!({"model": "gpt-4o", "usage": {"prompt_tokens": 10, "completion_tokens": 5}, "cost_usd": cost});
    for _ in 0..5 {
        bus.publish(Event::new("model_responded", call(0.02)).with_correlation_id("run-1"));
    }
    bus.flush().await;
    support::until("the alert", || (!server.seen().is_empty()).then_some(())).await;
    bus.flush().await;
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let body: Value = serde_json::from_str(&seen[0].body).unwrap();
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .starts_with("Budget exceeded (run run-1)"),
        "{body}"
    );
    assert_eq!(seen[0].path, "/hooks/T0k3n-s3cr3t");
    // The same alert again (another host's cost-tracker, say): deduplicated.
    budget_exceeded(&bus, "run-1").await;
    // A hot reload (a new manifest) hands the state over; what the new
    // version handles again is answered from the journal.
    let manifest = plugins.path().join("webhook-alert.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("format = \"slack\"", "format = \"slack\"\nper_minute = \"9\""),
    )
    .unwrap();
    bus.reload_plugin(plugins.path().join("webhook-alert.wasm"))
        .await
        .unwrap();
    budget_exceeded(&bus, "run-1").await;
    assert_eq!(server.seen().len(), 1, "a reload does not alert again");
    let counts = bus
        .plugins()
        .into_iter()
        .find(|p| p.name == "webhook-alert")
        .unwrap()
        .http
        .unwrap();
    assert_eq!(counts.sent, 0, "{counts:?}");
    bus.shutdown().await;

    let bus = start_bus(plugins.path(), Some(log.path())).await;
    budget_exceeded(&bus, "run-1").await;
    bus.flush().await;
    assert_eq!(server.seen().len(), 1, "a restart does not alert again");
    // Another run does alert.
    budget_exceeded(&bus, "run-2").await;
    bus.flush().await;
    assert_eq!(server.seen().len(), 2);
    // The secret is nowhere in what the bus shows.
    let shown = serde_json::to_string(&bus.plugins()).unwrap();
    assert!(!shown.contains("T0k3n-s3cr3t"), "{shown}");
    assert!(shown.contains("webhook_url"), "the secret's key is listed: {shown}");
    bus.shutdown().await;
}

/// `plugbus replay` of `log` into `plugins`, with one more flag.
/// The payloads of the `fetched` events a `plugbus replay` printed.
fn replayed_fetched(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["name"] == "fetched")
        .map(|v| v["payload"].clone())
        .collect()
}

/// A bus on `plugins` whose log in `log` has small segments and a small
/// budget: retention removes segments after a few dozen events.
async fn bus_with_short_retention(plugins: &Path, log: &Path) -> Bus {
    let options = plugbus::LogOptions {
        segment_bytes: 4_000,
        retention_bytes: Some(12_000),
        ..plugbus::LogOptions::default()
    };
    Bus::builder()
        .plugin_dir(plugins)
        .log_dir(log)
        .log_options(options)
        .build()
        .await
        .unwrap()
}

fn replay(plugins: &Path, log: &Path, flag: &str) -> std::process::Output {
    support::plugbus(&[
        "replay",
        "--plugins",
        plugins.to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
        flag,
    ])
}

/// A `budget_exceeded` of run `run`, handled by the time this returns.
async fn budget_exceeded(bus: &Bus, run: &str) {
    bus.publish(Event::new("budget_exceeded", json!({"budget_usd": 0.05, "spent_usd": 0.06})).with_correlation_id(run));
    bus.flush().await;
}

#[test]
fn a_secret_never_shows_in_logs_the_api_or_check_and_a_missing_one_is_named() {
    let server = Server::start();
    let plugins = tempfile::tempdir().unwrap();
    install_webhook_alert(plugins.path(), &server, &server.url("/hooks/T0k3n-s3cr3t"), "");
    let (served, addr, stderr) = support::serve_with_env(
        &["--plugins", plugins.path().to_str().unwrap()],
        // Everything at trace. (The code generator's passes stay at info
        // unless named: traced, they made this plugin's cold compile take
        // 33 s, past the waits below.)
        &[("RUST_LOG", "trace")],
    );
    let (status, body) = support::http(
        &addr,
        "POST",
        "/events",
        br#"{"name":"alert.latency","payload":{"p99_ms":900}}"#,
    );
    assert!((200..300).contains(&status), "{status} {body}");
    let (_, plugins_json) = support::http(&addr, "GET", "/plugins", b"");
    // The server saw the request a moment before the plugin counted it.
    let sent = "plugbus_plugin_http_requests_total{plugin=\"webhook-alert\",outcome=\"sent\"} 1";
    let mut metrics = String::new();
    for _ in 0..500 {
        metrics = support::http(&addr, "GET", "/metrics", b"").1;
        if metrics.contains(sent) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        metrics.contains("plugbus_plugin_http_requests_total{plugin=\"webhook-alert\",outcome=\"sent\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("plugbus_plugin_http_request_seconds_count{plugin=\"webhook-alert\"} 1"),
        "{metrics}"
    );
    let (_, dashboard) = support::http(&addr, "GET", "/", b"");
    drop(served);
    let logs = stderr.join().unwrap();
    assert_eq!(server.seen().len(), 1, "the alert was posted");
    for (what, text) in [
        ("GET /plugins", &plugins_json),
        ("the dashboard", &dashboard),
        ("the logs", &logs),
    ] {
        assert!(!text.contains("T0k3n-s3cr3t"), "the secret is in {what}: {text}");
    }
    assert!(plugins_json.contains("\"secrets\":[\"webhook_url\"]"), "{plugins_json}");
    let out = support::plugbus(&[
        "check",
        "--json",
        plugins.path().join("webhook-alert.wasm").to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("T0k3n-s3cr3t"), "{text}");

    // A missing secret fails the load, naming the secret and where it was looked for.
    std::fs::remove_file(plugins.path().join("webhook-url.txt")).unwrap();
    let out = support::plugbus(&["check", plugins.path().join("webhook-alert.wasm").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("secrets.webhook_url") && text.contains("webhook-url.txt"),
        "{text}"
    );
}

/// A journaled answer goes back only to the request it answered. Two
/// CloudEvents share an id (`order-1`) from two sources, and each asks for
/// its own URL: the second's request has the first's key. Before, it got
/// the first request's response (`/from-a`'s) and nothing was sent; now it
/// is refused, naming the journal, and never answered with another
/// request's response.
#[test]
fn a_journaled_answer_is_never_given_to_another_request() {
    let server = Server::start();
    let plugins = fetcher_dir(&format!("[http]\nallow = [\"http://127.0.0.1:{}\"]\n", server.port));
    let log = tempfile::tempdir().unwrap();
    let (served, addr, _stderr) = support::serve_logged(plugins.path(), log.path());
    for (source, path) in [("/src/a", "/from-a"), ("/src/b", "/from-b")] {
        let event = json!({
            "specversion": "1.0", "id": "order-1", "source": source, "type": "fetch",
            "data": fetch(&[("GET", &server.url(path), "")]),
        });
        let (status, answer) = support::http_with(
            &addr,
            "POST",
            "/events",
            &[("Content-Type", "application/cloudevents+json")],
            event.to_string().as_bytes(),
        );
        assert_eq!(status, 202, "{answer}");
    }
    let fetched = || -> Vec<Value> {
        plugbus::LogReader::open(log.path(), 0)
            .map(|r| {
                r.filter_map(Result::ok)
                    .filter(|r| r.name == "fetched")
                    .map(|r| r.payload)
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while fetched().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "{:?}", fetched());
        std::thread::sleep(Duration::from_millis(50));
    }
    support::terminate(&served);
    let got = fetched();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0]["status"], 200, "{got:?}");
    assert_eq!(
        got[1]["error"], "request failed: HttpRequestDenied",
        "not the first request's answer: {got:?}"
    );
    let seen: Vec<String> = server.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(seen, ["/from-a"]);
}

/// A request refused once it passed the grant (a body over the limit, a
/// name that does not resolve, an address not granted) is journaled with
/// its error like any outcome: handling the event again gives the guest the
/// error the live run gave. Before, a replay answered those with
/// `HttpRequestDenied` (no journal entry), so state rebuilt by replay could
/// differ from the live state.
#[tokio::test]
async fn a_request_refused_live_gets_the_same_error_when_replayed() {
    let server = Server::start();
    let big = "x".repeat(2048);
    let (live, replayed, paths) = live_then_replayed(
        &server,
        "request_body_kib = 1",
        &[("POST", &server.url("/big"), &big), ("POST", &server.url("/ok"), "x")],
    )
    .await;
    assert_eq!(live[0]["error"], "request failed: HttpRequestBodySize", "{live:?}");
    assert_eq!(live[1]["status"], 200, "{live:?}");
    assert_eq!(replayed, live, "the live run's errors, not HttpRequestDenied");
    assert_eq!(paths, ["/ok"], "nothing sent again");
}

/// One `fetch` event with `requests` into the fetcher (granted the test
/// server's origin, with `grant` added to its `[http]`) on a bus with a log,
/// then `plugbus replay` of that log: what the requests came to live, what
/// they came to in the replay, and the paths the server saw.
async fn live_then_replayed(
    server: &Server,
    grant: &str,
    requests: &[(&str, &str, &str)],
) -> (Vec<Value>, Vec<Value>, Vec<String>) {
    let plugins = fetcher_dir(&format!(
        "[http]\nallow = [\"http://127.0.0.1:{}\"]\n{grant}\n",
        server.port
    ));
    let log = tempfile::tempdir().unwrap();
    let bus = start_bus(plugins.path(), Some(log.path())).await;
    let rec = Recorder::attach(&bus, "fetched");
    bus.emit_and_wait("fetch", fetch(requests)).await;
    bus.flush().await;
    let live = fetched(&rec);
    bus.shutdown().await;
    let out = replay(plugins.path(), log.path(), "--no-cache");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let paths = server.seen().iter().map(|r| r.path.clone()).collect();
    (live, replayed_fetched(&out), paths)
}

/// A refusal by a limit sent nothing, so an event handled live again (a
/// dead letter's redrive) asks the limits afresh instead of getting the
/// journaled refusal back: the second request, refused live under
/// `per_second = 1`, is sent by the redrive once the second has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_asks_the_limits_afresh_for_a_request_they_refused() {
    let server = Server::start();
    let plugins = fetcher_dir(&format!(
        "[limits]\nquarantine_after = 0\n[http]\nallow = [\"http://127.0.0.1:{}\"]\nper_second = 1\n",
        server.port
    ));
    let log = tempfile::tempdir().unwrap();
    let bus = start_bus(plugins.path(), Some(log.path())).await;
    let mut poison = fetch(&[
        ("POST", &server.url("/first"), "x"),
        ("POST", &server.url("/second"), "x"),
    ]);
    poison["then"] = json!("panic");
    bus.emit_and_wait("fetch", poison).await;
    bus.flush().await;
    let paths = || -> Vec<String> { server.seen().iter().map(|r| r.path.clone()).collect() };
    assert_eq!(paths(), ["/first"], "the second request was over the limit");
    assert_eq!(bus.dead_letters("fetcher").unwrap().len(), 1);
    // A token back in the bucket.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    bus.redrive("fetcher").await.unwrap();
    bus.flush().await;
    bus.shutdown().await;
    assert_eq!(
        paths(),
        ["/first", "/second"],
        "the first answered from the journal, the second sent now"
    );
}

/// A refusal by a limit depends on the moment: it is journaled too, so the
/// replay gives the error the live run gave, not `HTTP-request-denied`.
#[tokio::test]
async fn a_request_refused_by_a_limit_gets_the_same_error_when_replayed() {
    let server = Server::start();
    let (live, replayed, paths) = live_then_replayed(
        &server,
        "per_second = 1",
        &[
            ("POST", &server.url("/first"), "x"),
            ("POST", &server.url("/second"), "x"),
        ],
    )
    .await;
    assert_eq!(live[0]["status"], 200, "{live:?}");
    assert_eq!(live[1]["error"], "request failed: ConnectionLimitReached", "{live:?}");
    assert_eq!(replayed, live, "the live run's refusal, not HttpRequestDenied");
    assert_eq!(paths, ["/first"], "nothing sent again");
}
