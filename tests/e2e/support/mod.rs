//! Shared helpers: the real plugins built from `plugins/`, temp plugin
//! directories, the `plugbus` binary, and a recording native handler.
//!
//! `make test` builds the plugins and the binary first and points
//! `PLUGBUS_WASM_DIR` / `PLUGBUS_BIN` at them; a plain `cargo test` builds
//! them here, once per test run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use plugbus::{Bus, Event};

/// Every plugin the tests use, by crate name.
pub const PLUGINS: &[&str] = &[
    "cost-tracker",
    "audit-log",
    "console-logger",
    "token-counter",
    "agent-runs",
    "misbehave",
    "wrong-world",
    "fetcher",
    "webhook-alert",
    "otlp-export",
];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn cargo(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .expect("run cargo");
    assert!(status.success(), "cargo {args:?} failed");
}

/// Directory holding `<plugin>.wasm` for every entry of [`PLUGINS`].
pub fn wasm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PLUGBUS_WASM_DIR") {
            return PathBuf::from(dir);
        }
        let out = target_dir().join("plugbus-test-wasm");
        std::fs::create_dir_all(&out).unwrap();
        let mut args = vec!["build", "--quiet", "--profile", "plugin", "--target", "wasm32-wasip2"];
        // agent-runs "v1", with its deliberate bug, first: the build below
        // replaces agent_runs.wasm with the fixed version.
        cargo(&[&args[..], &["-p", "agent-runs", "--features", "v1-bug"]].concat());
        std::fs::copy(
            target_dir().join("wasm32-wasip2/plugin/agent_runs.wasm"),
            out.join("agent-runs-v1.wasm"),
        )
        .unwrap();
        for p in PLUGINS {
            args.extend(["-p", p]);
        }
        cargo(&args);
        for p in PLUGINS {
            let built = target_dir()
                .join("wasm32-wasip2/plugin")
                .join(format!("{}.wasm", p.replace('-', "_")));
            std::fs::copy(&built, out.join(format!("{p}.wasm"))).unwrap();
        }
        out
    })
}

/// The path of one built plugin.
pub fn wasm(plugin: &str) -> PathBuf {
    wasm_dir().join(format!("{plugin}.wasm"))
}

/// The path of a plugin written in C, Python or JavaScript. Those need their
/// language toolchains, which `make lang-plugins` (part of `make test`)
/// installs and runs; a plain `cargo test` cannot build them.
pub fn lang_wasm(plugin: &str) -> PathBuf {
    let path = wasm(plugin);
    assert!(
        path.is_file(),
        "{} is missing: build the C/Python/JavaScript plugins with `make lang-plugins` (or run `make test`)",
        path.display()
    );
    path
}

/// A compiled-artifact cache shared by every test in the run: an 18 MB
/// Python plugin takes seconds to compile cold, once is enough.
pub fn shared_cache() -> PathBuf {
    target_dir().join("plugbus-test-cache")
}

/// The installed guest-language toolchains (`make setup`).
pub fn guest_tools() -> PathBuf {
    target_dir().join("guest-tools")
}

/// The `plugbus` binary.
pub fn plugbus_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("PLUGBUS_BIN") {
            return PathBuf::from(bin);
        }
        // Same target selection as `cargo test`, so features unify the same
        // way and nothing is rebuilt.
        cargo(&["build", "--quiet", "--all-targets"]);
        target_dir().join("debug/plugbus")
    })
}

/// Runs the `plugbus` binary with `args` to completion (warnings and errors
/// on its stderr).
pub fn plugbus(args: &[&str]) -> std::process::Output {
    Command::new(plugbus_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run plugbus")
}

/// Copies `wasm` into `dir` as `<name>.wasm` with `manifest` as its
/// `<name>.toml`.
pub fn install(dir: &Path, wasm: &Path, name: &str, manifest: &str) {
    std::fs::copy(wasm, dir.join(format!("{name}.wasm"))).unwrap();
    std::fs::write(dir.join(format!("{name}.toml")), manifest).unwrap();
}

/// The committed cost-tracker built against WIT 0.1.0 (no `state` export).
pub fn compat_cost_tracker() -> PathBuf {
    workspace_root().join("plugins/fixtures/compat-0.1.0/cost-tracker-0.1.0.wasm")
}

/// The committed cost-tracker built against WIT 0.1.1 (`state`, no `query`).
pub fn compat_cost_tracker_0_1_1() -> PathBuf {
    workspace_root().join("plugins/fixtures/compat-0.1.1/cost-tracker-0.1.1.wasm")
}

/// A temp directory holding the given plugins, each with its first-party
/// manifest (`plugins/<name>/<name>.toml`) when there is one.
pub fn plugin_dir(plugins: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for p in plugins {
        let built = wasm(p);
        let built = if built.is_file() { built } else { lang_wasm(p) };
        std::fs::copy(built, dir.path().join(format!("{p}.wasm"))).unwrap();
        let manifest = workspace_root().join("plugins").join(p).join(format!("{p}.toml"));
        if manifest.exists() {
            std::fs::copy(&manifest, dir.path().join(format!("{p}.toml"))).unwrap();
        }
    }
    dir
}

/// Records every event a native handler sees, in order.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Event>>>);

impl Recorder {
    pub fn attach(bus: &Bus, pattern: &str) -> Recorder {
        let r = Recorder::default();
        let sink = r.0.clone();
        bus.on(pattern, move |e| sink.lock().unwrap().push(e.clone())).unwrap();
        r
    }

    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    pub fn named(&self, name: &str) -> Vec<Event> {
        self.events().into_iter().filter(|e| e.name() == name).collect()
    }
}

/// The lines of the audit log written by the audit-log plugin in `dir`.
pub fn audit_lines(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("audit/events.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

/// A minimal observer written as a core module in WAT, whose `on-event`
/// body is `on_event` (it must end by leaving an `i32` result pointer, or
/// never return). It subscribes to `subscription` and imports nothing.
/// Used for misbehaviours Rust cannot express (growing a table) and for
/// components built against another version of the WIT package.
pub fn wat_observer(subscription: &str, on_event: &str) -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 64) "{subscription}")
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (local.get $p))
  (func (export "plugbus:observer/handler@VERSION#subscriptions") (result i32)
    (i32.store (i32.const 16) (i32.const 32))
    (i32.store (i32.const 20) (i32.const 1))
    (i32.store (i32.const 32) (i32.const 64))
    (i32.store (i32.const 36) (i32.const {len}))
    (i32.const 16))
  (func (export "plugbus:observer/handler@VERSION#on-event")
    (param i32 i32 i32 i32 i64 i32 i32 i32 i32 i32 i32 i32) (result i32)
    {on_event}))"#,
        len = subscription.len(),
    )
}

/// Builds a real component from `wat` against the `wit/` package, with its
/// version rewritten to `version` (the WAT's `VERSION` placeholders too).
pub fn component_from_wat(wat: &str, version: &str) -> Vec<u8> {
    let wit = std::fs::read_to_string(workspace_root().join("wit/observer.wit")).unwrap();
    let wit = wit.replace(
        "package plugbus:observer@0.1.3;",
        &format!("package plugbus:observer@{version};"),
    );
    let mut resolve = wit_parser::Resolve::default();
    let pkg = resolve.push_str("observer.wit", &wit).unwrap();
    let world = resolve.select_world(&[pkg], Some("observer")).unwrap();
    let mut module = wat::parse_str(wat.replace("VERSION", version)).unwrap();
    wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8, false)
        .unwrap();
    wit_component::ComponentEncoder::default()
        .module(&module)
        .unwrap()
        .validate(true)
        .encode()
        .unwrap()
}

/// A minimal HTTP/1.1 exchange over loopback: `(status, body)`.
pub fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    try_http(addr, method, path, body).unwrap_or_else(|| panic!("no HTTP answer from {addr} to {method} {path}"))
}

/// Like [`http`], but `None` when the server is gone (refused, reset, or no
/// answer at all).
pub fn try_http(addr: &str, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    try_http_with(addr, method, path, &[], body)
}

/// [`http`] with extra request headers.
pub fn http_with(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    try_http_with(addr, method, path, headers, body)
        .unwrap_or_else(|| panic!("no HTTP answer from {addr} to {method} {path}"))
}

/// One HTTP/1.1 exchange: the raw answer, `None` if the server is gone.
fn try_exchange(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).ok()?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    // The server's address as Host, unless the test gives its own.
    let host = if headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        String::new()
    } else {
        format!("Host: {addr}\r\n")
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\n{host}Connection: close\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    // A server may answer (413) and close before reading a large body.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    Some(String::from_utf8_lossy(&raw).into_owned())
}

/// [`try_http_with`], the whole answer: `(status, head, body)`, the head's
/// header names in lower case.
pub fn http_full(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, String) {
    let text = try_exchange(addr, method, path, headers, body)
        .unwrap_or_else(|| panic!("no HTTP answer from {addr} to {method} {path}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let head = head
        .lines()
        .map(|l| match l.split_once(':') {
            Some((k, v)) => format!("{}:{v}", k.to_ascii_lowercase()),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    (status, head, body.to_owned())
}

/// The value of header `name` (lower case) in a head from [`http_full`].
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// [`try_http`] with extra request headers.
pub fn try_http_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    let text = try_exchange(addr, method, path, headers, body)?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A `plugbus serve` child process, killed (SIGKILL) when dropped if it is
/// still running: a test that fails half-way leaves no server behind (one
/// would keep the test harness's output pipe open). Derefs to the
/// [`std::process::Child`].
pub struct Served(pub std::process::Child);

impl std::ops::Deref for Served {
    type Target = std::process::Child;

    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Served {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// [`serve`] over the plugins in `plugins` with an event log in `log`.
pub fn serve_logged(plugins: &Path, log: &Path) -> (Served, String, std::thread::JoinHandle<String>) {
    serve(&["--plugins", plugins.to_str().unwrap(), "--log", log.to_str().unwrap()])
}

/// `serve` arguments for a host of `plugins` on the NATS server at `url`,
/// whose unacknowledged messages go to another host after one second.
pub fn nats_host<'a>(plugins: &'a Path, url: &'a str) -> [&'a str; 6] {
    [
        "--plugins",
        plugins.to_str().unwrap(),
        "--nats",
        url,
        "--ack-wait-ms",
        "1000",
    ]
}

/// Starts `plugbus serve ARGS --listen 127.0.0.1:0` and waits until its
/// plugins are loaded: `(child, address, stderr collected until the child
/// exits)`.
pub fn serve(args: &[&str]) -> (Served, String, std::thread::JoinHandle<String>) {
    serve_with_env(args, &[])
}

/// Runs `plugbus serve ARGS --listen 127.0.0.1:0`, which must refuse to
/// start: exit 1 within 20 s. Its stderr.
pub fn serve_refused(args: &[&str]) -> String {
    let mut child = Served(
        Command::new(plugbus_bin())
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "serve {args:?} kept running");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    stderr
}

/// [`serve`] with extra environment variables (`RUST_LOG`, `FAILPOINTS`).
pub fn serve_with_env(args: &[&str], env: &[(&str, &str)]) -> (Served, String, std::thread::JoinHandle<String>) {
    serve_starting(args, env).wait_ready()
}

/// A `plugbus serve` that listens, its plugins maybe still loading.
pub struct Starting {
    pub child: Served,
    pub addr: String,
    stderr: std::io::BufReader<std::process::ChildStderr>,
    seen: String,
}

impl Starting {
    /// Waits for `plugbus: ready` (every plugin loaded or skipped), then
    /// drains the rest of stderr on a thread: `(child, address, stderr
    /// collected until the child exits)`.
    pub fn wait_ready(mut self) -> (Served, String, std::thread::JoinHandle<String>) {
        line_with(&mut self.stderr, &mut self.seen, "plugbus: ready", "it was ready");
        self.drain()
    }

    /// Drains stderr on a thread (so the child never blocks on a full
    /// pipe) without waiting for anything more.
    pub fn drain(self) -> (Served, String, std::thread::JoinHandle<String>) {
        let Starting {
            child,
            addr,
            mut stderr,
            seen,
        } = self;
        let log = std::thread::spawn(move || {
            let mut all = seen;
            let _ = std::io::Read::read_to_string(&mut stderr, &mut all);
            all
        });
        (child, addr, log)
    }
}

/// Reads `stderr` (kept in `seen`) up to the first line containing
/// `needle`, and returns it; fails naming `what` if the child exits first.
fn line_with(
    stderr: &mut std::io::BufReader<std::process::ChildStderr>,
    seen: &mut String,
    needle: &str,
    what: &str,
) -> String {
    use std::io::BufRead;
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "serve exited before {what}: {seen}"
        );
        seen.push_str(&line);
        if line.contains(needle) {
            return line;
        }
    }
}

/// Starts `plugbus serve ARGS --listen 127.0.0.1:0` with `env` and returns
/// as soon as it listens (it loads its plugins after that).
pub fn serve_starting(args: &[&str], env: &[(&str, &str)]) -> Starting {
    let mut child = Served(
        Command::new(plugbus_bin())
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let line = line_with(&mut stderr, &mut seen, "listening on http://", "listening");
    let addr = line
        .split("listening on http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    Starting {
        child,
        addr,
        stderr,
        seen,
    }
}

/// One server-sent event: its `event:` type (`message` when absent), its
/// `id:` and its `data:`.
#[derive(Debug, Clone)]
pub struct SseMessage {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// A server-sent event stream read over a plain loopback connection.
pub struct SseStream {
    reader: std::io::BufReader<std::net::TcpStream>,
}

impl SseStream {
    /// `GET path` with `Accept: text/event-stream`: the status, and the
    /// stream when it is 200.
    pub fn open(addr: &str, path: &str) -> (u16, Option<SseStream>) {
        use std::io::{BufRead, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let mut reader = std::io::BufReader::new(s);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut status_line = String::new();
        while status_line.is_empty() {
            assert!(std::time::Instant::now() < deadline, "no answer to GET {path}");
            let _ = reader.read_line(&mut status_line);
        }
        let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        (status, (status == 200).then_some(SseStream { reader }))
    }

    /// The next message before `timeout` passes; `None` on timeout or
    /// when the server closed the stream. Keep-alive comments and the
    /// chunked encoding's size lines are skipped (the server writes each
    /// message as one chunk).
    pub fn next(&mut self, timeout: std::time::Duration) -> Option<SseMessage> {
        use std::io::BufRead;
        let deadline = std::time::Instant::now() + timeout;
        let (mut event, mut id, mut data) = (None, None, None::<String>);
        let mut line = String::new();
        while std::time::Instant::now() < deadline {
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) if line.ends_with('\n') => {}
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    continue;
                }
                Err(_) => return None,
            }
            let text = std::mem::take(&mut line);
            let text = text.trim_end_matches(['\r', '\n']);
            if let Some(v) = text.strip_prefix("event:") {
                event = Some(v.trim_start().to_owned());
            } else if let Some(v) = text.strip_prefix("id:") {
                id = Some(v.trim_start().to_owned());
            } else if let Some(v) = text.strip_prefix("data:") {
                let v = v.strip_prefix(' ').unwrap_or(v);
                data = Some(match data {
                    Some(before) => format!("{before}\n{v}"),
                    None => v.to_owned(),
                });
            } else if text.is_empty()
                && let Some(data) = data.take()
            {
                return Some(SseMessage {
                    event: event.take().unwrap_or_else(|| "message".to_owned()),
                    id: id.take(),
                    data,
                });
            }
        }
        None
    }

    /// Messages until one satisfies `found`, for at most `timeout`.
    pub fn until(
        &mut self,
        timeout: std::time::Duration,
        mut found: impl FnMut(&SseMessage) -> bool,
    ) -> Option<SseMessage> {
        let deadline = std::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            let message = self.next(left)?;
            if found(&message) {
                return Some(message);
            }
        }
        None
    }
}

/// Waits (polling every 20 ms) for `child` to exit on its own; fails the
/// test with `what` if it still runs after `within`.
pub async fn exit_of(
    child: &mut std::process::Child,
    within: std::time::Duration,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Sends SIGTERM to `child`.
pub fn terminate(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A real `nats-server` (Debian's, JetStream on) on a free loopback port
/// with a store in a temporary directory; killed when dropped.
pub struct NatsServer {
    child: std::process::Child,
    pub url: String,
    dir: tempfile::TempDir,
    /// The configuration file given with `-c`, if any.
    config: Option<PathBuf>,
}

impl NatsServer {
    /// Starts one; panics with the reason (naming `make setup-nats`) if it
    /// cannot.
    pub fn start() -> NatsServer {
        NatsServer::start_with("")
    }

    /// Starts one with `config` (nats-server configuration text, say
    /// `max_payload: 8192`) in a file given with `-c`; the command line's
    /// address, port and store still apply.
    pub fn start_with(config: &str) -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let bin = NatsServer::bin();
        let store = dir.path().join("store");
        let config = (!config.is_empty()).then(|| {
            let path = dir.path().join("nats.conf");
            std::fs::write(&path, config).unwrap();
            path
        });
        let mut command = Command::new(bin);
        if let Some(path) = &config {
            command.arg("-c").arg(path);
        }
        let child = command
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(&store)
            .arg("--ports_file_dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let ports = dir.path().join(format!("nats-server_{}.ports", child.id()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&ports)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(url) = v["nats"][0].as_str()
            {
                break url.to_owned();
            }
            assert!(std::time::Instant::now() < deadline, "nats-server wrote no ports file");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        NatsServer {
            child,
            url,
            dir,
            config,
        }
    }

    /// The server's process id (to freeze it with SIGSTOP, say).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Debian's `nats-server`.
    fn bin() -> &'static str {
        ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect("nats-server is not installed: run `make setup-nats` (Debian's nats-server)")
    }

    /// Kills the server (SIGKILL) and starts it again on the same store and
    /// port: what a crash and a restart look like to its clients.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.url.rsplit(':').next().unwrap().to_owned();
        let mut command = Command::new(NatsServer::bin());
        if let Some(path) = &self.config {
            command.arg("-c").arg(path);
        }
        self.child = command
            .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
            .arg(self.dir.path().join("store"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let addr = self.url.trim_start_matches("nats://").to_owned();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(std::time::Instant::now() < deadline, "nats-server did not come back");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it gives a value, failing the test after
/// 30 s (generous: what it waits for normally lands in well under a second;
/// nothing asserts on how fast).
pub async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
