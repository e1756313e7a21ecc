//! One plugin set for a NATS fleet: three real `plugbus serve --nats
//! --fleet` hosts over a real nats-server, plugins from a real
//! docker-registry. A version pushed to the fleet reaches every host; a
//! host given a corrupt copy refuses it and stops pulling that plugin's
//! consumer; after convergence no event is handled by the old version
//! (checked from the stream: the follow-ups only the new version emits).

use crate::nats::{client, stream_messages};
use crate::oci::{Registry, json, ok, s};
use crate::support::{self, NatsServer, wasm};

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// `GET /plugins` of one host: the version (sha256 of the wasm) of `name`,
/// if it runs it.
fn version_of(addr: &str, name: &str) -> Option<String> {
    let (status, body) = support::http(addr, "GET", "/plugins", b"");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| format!("sha256:{}", p["version"].as_str().unwrap()))
}

fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two versions of plugin `meter` pushed to `registry`: v1 emits nothing;
/// v2 (token-counter's code) answers `token-counter.report` with
/// `token-counter.totals`. Their directories, references and digests.
struct Meter {
    v1: tempfile::TempDir,
    v2: tempfile::TempDir,
    ref1: String,
    ref2: String,
    d1: String,
    d2: String,
}

impl Meter {
    fn push(registry: &Registry) -> Meter {
        let v1 = tempfile::tempdir().unwrap();
        std::fs::copy(wasm("console-logger"), v1.path().join("meter.wasm")).unwrap();
        let v2 = tempfile::tempdir().unwrap();
        std::fs::copy(wasm("token-counter"), v2.path().join("meter.wasm")).unwrap();
        let (ref1, ref2) = (
            registry.reference("plugbus/meter:v1"),
            registry.reference("plugbus/meter:v2"),
        );
        let digest = |dir: &tempfile::TempDir, reference: &str| {
            json(&ok(&["push", s(&dir.path().join("meter.wasm")), reference, "--json"]))["wasm_digest"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let (d1, d2) = (digest(&v1, &ref1), digest(&v2, &ref2));
        Meter {
            v1,
            v2,
            ref1,
            ref2,
            d1,
            d2,
        }
    }
}

/// `plugbus serve --fleet` as host `id`: plugins in `dir`, NATS at `nats`,
/// with `extra` arguments and `env`.
fn fleet_host(
    dir: &std::path::Path,
    nats: &str,
    id: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (support::Served, String, std::thread::JoinHandle<String>) {
    let args = [
        &["--plugins", s(dir), "--nats", nats, "--fleet", "--fleet-host", id][..],
        extra,
    ]
    .concat();
    support::serve_with_env(&args, env)
}

fn status(nats: &str) -> Value {
    json(&ok(&["fleet", "status", "--nats", nats, "--json"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_converges_and_a_host_with_a_corrupt_copy_stops_pulling_rather_than_run_the_old_version() {
    let nats = NatsServer::start();
    let registry = Registry::start();
    let Meter {
        v1: _v1,
        v2: _v2,
        ref1,
        ref2,
        d1,
        d2,
    } = Meter::push(&registry);
    ok(&["fleet", "push", &ref1, "--nats", &nats.url]);

    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let host = |i: usize, env: &[(&str, &str)]| {
        let id = ["a", "b", "c"][i];
        fleet_host(dirs[i].path(), &nats.url, id, &["--ack-wait-ms", "1000"], env)
    };
    let (_a, addr_a, _) = host(0, &[]);
    let (_b, addr_b, _) = host(1, &[]);
    // Host c's second download of a component arrives corrupt (its first,
    // v1's, is intact).
    let (_c, addr_c, log_c) = host(2, &[("FAILPOINTS", "oci.component.corrupt=1*off->return")]);
    let addrs = [addr_a.as_str(), addr_b.as_str(), addr_c.as_str()];
    for addr in addrs {
        assert_eq!(version_of(addr, "meter").as_deref(), Some(d1.as_str()), "{addr}");
    }
    wait_for("three hosts reporting v1", Duration::from_secs(10), || {
        let st = status(&nats.url);
        st["converged"] == true && st["hosts"].as_array().unwrap().len() == 3
    });

    // v2 for the fleet: a and b hot-reload it; c refuses its corrupt copy
    // and unloads v1 rather than keep handling meter's stream with it.
    let pushed = Instant::now();
    ok(&["fleet", "push", &ref2, "--nats", &nats.url]);
    wait_for("a and b on v2, c without meter", Duration::from_secs(20), || {
        version_of(&addr_a, "meter").as_deref() == Some(d2.as_str())
            && version_of(&addr_b, "meter").as_deref() == Some(d2.as_str())
            && version_of(&addr_c, "meter").is_none()
    });
    eprintln!(
        "fleet: v2 reached a and b (c refused it) {:?} after `fleet push`",
        pushed.elapsed()
    );
    assert!(!dirs[2].path().join("meter.wasm").exists());
    assert!(dirs[2].path().join(".meter.wasm.refused").exists());
    let st = status(&nats.url);
    assert_eq!(st["converged"], false, "{st}");
    let c = st["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == "c")
        .unwrap()
        .clone();
    let reason = c["refused"]["meter"].as_str().unwrap_or_default();
    assert!(
        reason.contains("digest mismatch") && reason.contains("plugbus/meter@sha256:"),
        "{st}"
    );

    // After convergence every report is answered by v2: exactly one
    // totals follow-up per report in the stream (v1 would answer none).
    let reports: Vec<Value> = (0..24)
        .map(|i| json!({"name": "token-counter.report", "payload": {}, "correlation_id": format!("run-{i}")}))
        .collect();
    let body: String = reports.iter().map(|e| format!("{e}\n")).collect();
    let (code, answer) = support::http(&addr_c, "POST", "/events", body.as_bytes());
    assert_eq!(code, 202, "{answer}");
    let js = client(&nats.url).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let totals = stream_messages(&js, "plugbus.events.*.token-counter.totals")
            .await
            .len();
        if totals >= reports.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{totals} totals of {}", reports.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stream_messages(&js, "plugbus.events.*.token-counter.totals")
            .await
            .len(),
        reports.len()
    );

    // A version that installs but does not load (another world): no host
    // keeps running v2 in its place.
    let v3 = tempfile::tempdir().unwrap();
    std::fs::copy(wasm("wrong-world"), v3.path().join("meter.wasm")).unwrap();
    let ref3 = registry.reference("plugbus/meter:v3");
    let v3_pushed = json(&ok(&["push", s(&v3.path().join("meter.wasm")), &ref3, "--json"]));
    // `fleet push` loads it first, and refuses to publish it.
    let out = support::plugbus(&["fleet", "push", &ref3, "--nats", &nats.url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not load as a plugin"), "{stderr}");
    // Written into the set some other way (another tool, an older
    // plugbus), the hosts refuse it themselves.
    let entry = json!({
        "name": "meter",
        "reference": ref3,
        "digest": v3_pushed["digest"],
        "wasm": v3_pushed["wasm_digest"],
    });
    let fleet_bucket = js.get_key_value("PLUGBUS_FLEET").await.unwrap();
    fleet_bucket
        .put("plugin.meter", entry.to_string().into())
        .await
        .unwrap();
    wait_for("v2 unloaded on a and b", Duration::from_secs(20), || {
        version_of(&addr_a, "meter").is_none() && version_of(&addr_b, "meter").is_none()
    });
    // Refused before it replaced anything, and reported.
    assert!(dirs[0].path().join(".meter.wasm.refused").exists());
    wait_for("a reporting the refusal", Duration::from_secs(10), || {
        let st = status(&nats.url);
        st["hosts"].as_array().unwrap().iter().any(|h| {
            h["host"] == "a"
                && h["refused"]["meter"]
                    .as_str()
                    .is_some_and(|r| r.contains("does not load"))
        })
    });

    // A host joining now installs v3 before its bus starts (no running bus
    // to check it against yet): its start-up load refuses it, and the host
    // reports that rather than appearing to run the set.
    let dir_d = tempfile::tempdir().unwrap();
    let (_d, addr_d, _) = fleet_host(dir_d.path(), &nats.url, "d", &[], &[]);
    wait_for("d reporting that v3 does not load", Duration::from_secs(20), || {
        let st = status(&nats.url);
        st["hosts"].as_array().unwrap().iter().any(|h| {
            h["host"] == "d"
                && h["plugins"].get("meter").is_none()
                && h["refused"]["meter"]
                    .as_str()
                    .is_some_and(|r| r.contains("does not load"))
        })
    });
    assert!(version_of(&addr_d, "meter").is_none());
    assert!(dir_d.path().join(".meter.wasm.refused").exists());
    assert!(!dir_d.path().join("meter.wasm").exists());

    // Removed from the fleet: gone from every host.
    ok(&["fleet", "remove", "meter", "--nats", &nats.url]);
    wait_for("meter's files gone everywhere", Duration::from_secs(20), || {
        dirs.iter().all(|d| !d.path().join("meter.wasm").exists())
    });
    assert!(addrs.iter().all(|a| version_of(a, "meter").is_none()));
    drop((_a, _b, _c, _d));
    let log_c = log_c.join().unwrap();
    assert!(log_c.contains("cannot install the fleet's version"), "{log_c}");
}

/// A host's watch of the set survives a server that stays away a while:
/// the watch ends, watching again fails as long as the server does not
/// answer, and the host keeps trying (with a backoff) until it does; a
/// version pushed afterwards still reaches it. Before, the first failed
/// attempt to watch again ended the host's membership for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_host_keeps_watching_the_set_after_the_server_was_away() {
    let nats = NatsServer::start();
    let registry = Registry::start();
    let Meter {
        v1: _v1,
        v2: _v2,
        ref1,
        ref2,
        d1,
        d2,
    } = Meter::push(&registry);
    ok(&["fleet", "push", &ref1, "--nats", &nats.url]);
    let dir = tempfile::tempdir().unwrap();
    let (host, addr, log) = fleet_host(dir.path(), &nats.url, "a", &[], &[("RUST_LOG", "warn,plugbus=info")]);
    assert_eq!(version_of(&addr, "meter").as_deref(), Some(d1.as_str()));

    // The server stops answering (frozen) for 30 s: the watch ends after
    // its missed heartbeats (~10 s), and watching again times out (the
    // client's 10 s request timeout) while the server is still away.
    let pid = nats.pid().to_string();
    let signal = |sig: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP");
    tokio::time::sleep(Duration::from_secs(30)).await;
    signal("-CONT");

    ok(&["fleet", "push", &ref2, "--nats", &nats.url]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while version_of(&addr, "meter").as_deref() != Some(d2.as_str()) {
        if Instant::now() > deadline {
            support::terminate(&host.0);
            panic!("v2 never reached the host:\n{}", log.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    support::terminate(&host.0);
    let log = log.join().unwrap();
    assert!(log.contains("fleet: cannot watch the plugin set; retrying"), "{log}");
}

/// A version that changes only the plugin's manifest (its `[config]`,
/// limits or grants) reaches a host that runs the same component: hosts
/// once kept the old manifest while `fleet status` said converged.
/// Removals: `fleet remove` of a name the set does not have is refused (a
/// removal is kept and applied by every host at every start), and a host
/// never deletes its own file of a removed name (no registry installed
/// it). One unreadable entry stops neither `fleet status` nor a host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_changes_removals_and_unreadable_entries_are_applied_as_published() {
    let nats = NatsServer::start();
    let registry = Registry::start();
    let pushed = |tag: &str, manifest: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(wasm("console-logger"), dir.path().join("meter.wasm")).unwrap();
        std::fs::write(dir.path().join("meter.toml"), manifest).unwrap();
        let reference = registry.reference(&format!("plugbus/meter:{tag}"));
        ok(&["push", s(&dir.path().join("meter.wasm")), &reference]);
        (dir, reference)
    };
    let (one, two) = ("[config]\nround = \"1\"\n", "[config]\nround = \"2\"\n");
    let (_d1, ref1) = pushed("m1", one);
    let (_d2, ref2) = pushed("m2", two);
    ok(&["fleet", "push", &ref1, "--nats", &nats.url]);

    // The host's own plugin, named like a plugin the set had and removed.
    let js = crate::nats::client(&nats.url).await;
    let bucket = js.get_key_value("PLUGBUS_FLEET").await.unwrap();
    bucket.put("plugin.mine", "{}".into()).await.unwrap();
    bucket.delete("plugin.mine").await.unwrap();
    // And an entry no plugbus wrote.
    bucket.put("plugin.broken", "not json".into()).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(wasm("console-logger"), dir.path().join("mine.wasm")).unwrap();
    let (host, addr, _log) = fleet_host(dir.path(), &nats.url, "a", &[], &[]);
    assert!(version_of(&addr, "meter").is_some());
    assert!(version_of(&addr, "mine").is_some(), "the host's own plugin was deleted");
    let manifest = || std::fs::read_to_string(dir.path().join("meter.toml")).unwrap_or_default();
    assert_eq!(manifest(), one);
    let st = status(&nats.url);
    let unreadable = st["unreadable"].as_array().unwrap();
    assert!(
        unreadable.len() == 1 && unreadable[0].as_str().unwrap().contains("plugin.broken"),
        "{st}"
    );

    // The same component, another manifest.
    ok(&["fleet", "push", &ref2, "--nats", &nats.url]);
    wait_for("the new manifest on the host", Duration::from_secs(30), || {
        manifest() == two
    });

    let out = support::plugbus(&["fleet", "remove", "nosuch", "--nats", &nats.url]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such plugin in the set"));
    support::terminate(&host.0);
    assert!(dir.path().join("mine.wasm").exists());
}
