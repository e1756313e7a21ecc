//! Signature-checked loading with real tools: Debian's `minisign` makes keys
//! and signatures that plugbus verifies, and what `plugbus sign` makes,
//! `minisign -V` verifies. Tampered files, unknown keys, swapped and garbage
//! signatures and unsigned plugins are refused with the reason, on the first
//! load and on a hot reload (the running version stays).

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

use plugbus::{Bus, Outcome, PluginInfo};
use serde_json::json;
use support::{Recorder, until, wasm};

/// Debian's `minisign` (`make setup` installs it).
pub(crate) fn minisign() -> Command {
    let found = Command::new("minisign")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "Debian's `minisign` is missing: `make setup` installs it (apt-get install minisign)"
    );
    Command::new("minisign")
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A minisign key pair made by `minisign -G` (no password): (secret, public).
pub(crate) fn minisign_keys(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (sk, pk) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.pub")));
    run(minisign().args(["-G", "-W", "-p"]).arg(&pk).arg("-s").arg(&sk));
    (sk, pk)
}

/// Signs `file` with `minisign -S`, with a trusted comment.
pub(crate) fn minisign_sign(sk: &Path, file: &Path, comment: &str) {
    run(minisign()
        .arg("-S")
        .arg("-s")
        .arg(sk)
        .arg("-m")
        .arg(file)
        .args(["-t", comment]));
}

/// The key id minisign printed in the public key's comment line.
/// The key id in a `.pub` file's comment, as plugbus shows ids (`{:X}`,
/// like Debian's minisign). The comment is free text: Debian's minisign
/// writes the id unpadded, the minisign crate (`plugbus keygen`) pads it to
/// 16 digits, so it is read as a number (an id with a leading zero digit
/// made a string comparison fail one run in sixteen).
/// A key pair made by `plugbus keygen` in `dir`: the secret key's path
/// (the public one beside it, `.pub`).
fn keygen(dir: &Path) -> PathBuf {
    let key = dir.join("plugins.key");
    let out = support::plugbus(&["keygen", "--key", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    key
}

fn key_id(pk: &Path) -> String {
    let text = std::fs::read_to_string(pk).unwrap();
    let written = text.lines().next().unwrap().rsplit(' ').next().unwrap();
    format!("{:X}", u64::from_str_radix(written, 16).unwrap())
}

fn sig(wasm: &Path) -> PathBuf {
    plugbus::signature::signature_path(wasm)
}

fn plugin(bus: &Bus, name: &str) -> Option<PluginInfo> {
    bus.plugins().into_iter().find(|p| p.name == name)
}

fn reason(bus: &Bus, name: &str) -> String {
    bus.load_failures()
        .into_iter()
        .find(|f| f.path.file_stem().is_some_and(|s| s == name))
        .map(|f| f.reason)
        .unwrap_or_else(|| panic!("{name} is not among the load failures: {:?}", bus.load_failures()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minisign_signatures_are_verified_and_every_bad_one_is_refused_with_its_reason() {
    let keys = tempfile::tempdir().unwrap();
    let trusted = keys.path().join("trusted");
    std::fs::create_dir(&trusted).unwrap();
    let (sk, _) = minisign_keys(&trusted, "release");
    let (other_sk, _) = minisign_keys(keys.path(), "stranger");
    // The secret key is not a public key: only `*.pub` files are read.
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(format!("{name}.wasm"));
    let tc = wasm("token-counter");

    std::fs::copy(&tc, d("good")).unwrap();
    minisign_sign(&sk, &d("good"), "release 1.4 by ci");
    std::fs::copy(&tc, d("unsigned")).unwrap();
    // Signed, then one byte changed (a custom section's worth: still a
    // valid component, so only the signature can catch it).
    std::fs::copy(&tc, d("tampered")).unwrap();
    minisign_sign(&sk, &d("tampered"), "tampered");
    let mut bytes = std::fs::read(d("tampered")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(d("tampered"), bytes).unwrap();
    std::fs::copy(&tc, d("stranger")).unwrap();
    minisign_sign(&other_sk, &d("stranger"), "someone else");
    // A trusted signature of another file (console-logger) beside this one.
    std::fs::copy(wasm("console-logger"), d("swapped")).unwrap();
    std::fs::copy(&tc, d("other")).unwrap();
    minisign_sign(&sk, &d("other"), "other");
    std::fs::rename(sig(&d("other")), sig(&d("swapped"))).unwrap();
    std::fs::remove_file(d("other")).unwrap();
    std::fs::copy(&tc, d("garbage")).unwrap();
    std::fs::write(sig(&d("garbage")), "untrusted comment: x\nnot a signature\n").unwrap();
    // A legacy signature (of the bytes, not their hash) by the trusted key:
    // refused as legacy, not as a changed file.
    std::fs::copy(&tc, d("legacy")).unwrap();
    run(minisign()
        .args(["-S", "-l", "-s"])
        .arg(&sk)
        .arg("-m")
        .arg(d("legacy"))
        .args(["-t", "legacy"]));

    let bus = Bus::builder()
        .plugin_dir(dir.path())
        .trusted_keys(&trusted)
        .require_signed(true)
        .build()
        .await
        .unwrap();
    let good = plugin(&bus, "good").expect("the signed plugin loads");
    let signer = good.signer.expect("its signer is shown");
    assert_eq!(signer.key_id, key_id(&trusted.join("release.pub")));
    assert_eq!(signer.trusted_comment, "release 1.4 by ci");
    assert_eq!(bus.plugins().len(), 1, "{:?}", bus.plugins());
    let unsigned = reason(&bus, "unsigned");
    assert!(
        unsigned.contains("unsigned") && unsigned.contains("unsigned.wasm.minisig"),
        "{unsigned}"
    );
    let tampered = reason(&bus, "tampered");
    assert!(tampered.contains("bad signature"), "{tampered}");
    let stranger = reason(&bus, "stranger");
    assert!(stranger.contains("not among the trusted keys"), "{stranger}");
    let swapped = reason(&bus, "swapped");
    assert!(swapped.contains("bad signature"), "{swapped}");
    let garbage = reason(&bus, "garbage");
    assert!(garbage.contains("not a minisign signature"), "{garbage}");
    let legacy = reason(&bus, "legacy");
    assert!(
        legacy.contains("legacy minisign signature") && legacy.contains("legacy.wasm.minisig"),
        "{legacy}"
    );
    let report = bus
        .emit_and_wait("model_responded", json!({ "usage": { "prompt_tokens": 1 } }))
        .await;
    assert_eq!(report.outcome("good"), Some(&Outcome::Ok));
    bus.shutdown().await;

    // Not required: the unsigned one loads; a signature that does not
    // verify is still refused (it means a changed file).
    let bus = Bus::builder()
        .plugin_dir(dir.path())
        .trusted_keys(&trusted)
        .build()
        .await
        .unwrap();
    assert!(plugin(&bus, "unsigned").is_some_and(|p| p.signer.is_none()));
    assert!(plugin(&bus, "tampered").is_none());
    assert!(plugin(&bus, "good").is_some_and(|p| p.signer.is_some()));
    bus.shutdown().await;

    // Required without keys is a configuration error, named.
    let err = Bus::builder()
        .plugin_dir(dir.path())
        .require_signed(true)
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no trusted keys"), "{err}");
    let err = Bus::builder()
        .trusted_keys(keys.path().join("missing"))
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_reloaded_replacement_is_verified_before_it_replaces_anything() {
    let keys = tempfile::tempdir().unwrap();
    let (sk, pk) = minisign_keys(keys.path(), "release");
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("obs.wasm");
    std::fs::copy(wasm("misbehave"), &target).unwrap();
    minisign_sign(&sk, &target, "v1");
    let bus = Bus::builder()
        .plugin_dir(dir.path())
        .watch(true)
        .trusted_keys(&pk)
        .require_signed(true)
        .build()
        .await
        .unwrap();
    let meta = Recorder::attach(&bus, "plugbus.plugin.*");
    let v1 = plugin(&bus, "obs").expect("v1 loads");

    // A new build dropped in with the old signature beside it: refused, v1 stays.
    let staging = keys.path().join("v2.wasm");
    std::fs::copy(wasm("console-logger"), &staging).unwrap();
    std::fs::copy(&staging, dir.path().join(".obs.tmp")).unwrap();
    std::fs::rename(dir.path().join(".obs.tmp"), &target).unwrap();
    let failed = until("load_failed", || meta.named("plugbus.plugin.load_failed").pop()).await;
    let why = failed.payload()["reason"].as_str().unwrap().to_owned();
    assert!(why.contains("bad signature"), "{why}");
    let info = plugin(&bus, "obs").unwrap();
    assert_eq!(info.version, v1.version, "the running version stays");
    assert!(info.reload_error.is_some_and(|e| e.contains("bad signature")));
    let report = bus.emit_and_wait("misbehave.ok", json!({})).await;
    assert_eq!(report.outcome("obs"), Some(&Outcome::Ok), "v1 still handles its events");
    // Reported once: checking the file reads it, and that read is no change
    // (it once made a refusal, two ERROR lines and a `load_failed`, every
    // ~350 ms forever).
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(meta.named("plugbus.plugin.load_failed").len(), 1);

    // Its own signature arrives: the watcher picks it up and v2 replaces v1.
    minisign_sign(&sk, &staging, "v2");
    std::fs::copy(sig(&staging), dir.path().join(".obs.sig.tmp")).unwrap();
    std::fs::rename(dir.path().join(".obs.sig.tmp"), sig(&target)).unwrap();
    let v2 = until("v2 replaces v1", || {
        plugin(&bus, "obs").filter(|p| p.version != v1.version && p.reload_error.is_none())
    })
    .await;
    assert_eq!(v2.signer.unwrap().trusted_comment, "v2");
    bus.shutdown().await;
}

#[test]
fn plugbus_sign_makes_what_minisign_verifies_and_check_shows_the_signer() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let pk = dir.path().join("plugins.key.pub");
    // The public key file names its id as Debian's minisign writes it and
    // as plugbus shows it (no zero padding).
    let comment = std::fs::read_to_string(&pk).unwrap().lines().next().unwrap().to_owned();
    assert_eq!(
        comment,
        format!("untrusted comment: minisign public key {}", key_id(&pk))
    );
    // The secret key is private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "secret key mode {mode:o}");
    }
    let again = support::plugbus(&["keygen", "--key", key.to_str().unwrap()]);
    assert!(!again.status.success(), "an existing key is never overwritten");

    let file = dir.path().join("tc.wasm");
    std::fs::copy(wasm("token-counter"), &file).unwrap();
    let out = support::plugbus(&[
        "sign",
        "--key",
        key.to_str().unwrap(),
        "--comment",
        "built by ci #42",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let verified = run(minisign().arg("-V").arg("-p").arg(&pk).arg("-m").arg(&file));
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(said.contains("built by ci #42"), "{said}");

    let out = support::plugbus(&["check", file.to_str().unwrap(), "--trusted-keys", pk.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("signed by:     key {}", key_id(&pk))), "{text}");
    assert!(text.contains("built by ci #42"), "{text}");

    // Another key's signature: `check` refuses, naming the key.
    let (other_sk, other_pk) = minisign_keys(dir.path(), "other");
    minisign_sign(&other_sk, &file, "other");
    let out = support::plugbus(&["check", file.to_str().unwrap(), "--trusted-keys", pk.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&key_id(&other_pk)) && err.contains("not among the trusted keys"),
        "{err}"
    );
}

/// `plugbus sign` with Debian minisign's keys: an unprotected one (`-G -W`:
/// no key derivation, and a checksum of zeros) needs no password, a
/// password-protected one its password; `minisign -V` verifies both.
#[test]
fn plugbus_sign_uses_the_keys_debian_minisign_makes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tc.wasm");
    std::fs::copy(wasm("token-counter"), &file).unwrap();
    let sign = |key: &Path, extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(support::plugbus_bin());
        cmd.args(["sign", "--key", key.to_str().unwrap()])
            .args(extra)
            .arg(&file)
            .env_remove("PLUGBUS_TEST_KEY_PASSWORD");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let verified = |pk: &Path, comment: &str| {
        let out = run(minisign().arg("-V").arg("-p").arg(pk).arg("-m").arg(&file));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains(comment), "{said}");
    };

    let (sk, pk) = minisign_keys(dir.path(), "unprotected");
    let out = sign(&sk, &["--comment", "unprotected key"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    verified(&pk, "unprotected key");
    // A password given for it is not needed, and not an error.
    let out = sign(
        &sk,
        &[
            "--comment",
            "still unprotected",
            "--password-env",
            "PLUGBUS_TEST_KEY_PASSWORD",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    verified(&pk, "still unprotected");

    // A password-protected key (minisign reads the password from stdin
    // when it is not a terminal).
    let (sk, pk) = (dir.path().join("protected.key"), dir.path().join("protected.pub"));
    let mut child = minisign()
        .args(["-G", "-p"])
        .arg(&pk)
        .arg("-s")
        .arg(&sk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"c0rrect horse\nc0rrect horse\n").unwrap();
    assert!(child.wait().unwrap().success());
    let out = sign(&sk, &["--comment", "protected key"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("password-protected"), "{err}");
    let out = sign(
        &sk,
        &[
            "--comment",
            "protected key",
            "--password-env",
            "PLUGBUS_TEST_KEY_PASSWORD",
        ],
        &[("PLUGBUS_TEST_KEY_PASSWORD", "c0rrect horse")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    verified(&pk, "protected key");

    // Not a secret key at all.
    let out = sign(&pk, &[], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not a minisign secret key"),
        "{err}"
    );
}

/// A trusted comment is one line of the signature file: one with a line
/// break once made a signature nothing verifies, with exit status 0.
#[test]
fn plugbus_sign_refuses_a_trusted_comment_with_a_line_break() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path());
    let file = dir.path().join("tc.wasm");
    std::fs::copy(wasm("token-counter"), &file).unwrap();
    for comment in [
        "release 1\nforged: yes",
        "release 1\r",
        "release\r\n1",
        "release \u{1b}[2J1",
    ] {
        let out = support::plugbus(&[
            "sign",
            "--key",
            key.to_str().unwrap(),
            "--comment",
            comment,
            file.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("--comment") && err.contains("cannot contain"),
            "{comment:?}: {err}"
        );
        assert!(!sig(&file).exists(), "{comment:?}: a signature was written");
    }
    // Nor one past what a verifier reads of a signature file.
    let long = "x".repeat(9000);
    let out = support::plugbus(&[
        "sign",
        "--key",
        key.to_str().unwrap(),
        "--comment",
        &long,
        file.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("at most"), "{err}");
    assert!(!sig(&file).exists(), "a signature was written");
    // Nor a file that is no plugin.
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "{\"name\": \"a\"}\n").unwrap();
    let out = support::plugbus(&["sign", "--key", key.to_str().unwrap(), events.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not a WebAssembly file"), "{err}");
    assert!(!sig(&events).exists(), "a signature was written");
}

/// Two trusted key files with one key id and different keys: the later one
/// once silently replaced the other; the bus now refuses to start, naming
/// both. The same key in two files is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_different_trusted_keys_with_one_id_stop_the_start_naming_both_files() {
    use base64::Engine as _;
    let keys = tempfile::tempdir().unwrap();
    let trusted = keys.path().join("trusted");
    std::fs::create_dir(&trusted).unwrap();
    let (sk, pk) = minisign_keys(&trusted, "release");
    std::fs::copy(&pk, trusted.join("zz-copy.pub")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(wasm("token-counter"), dir.path().join("tc.wasm")).unwrap();
    minisign_sign(&sk, &dir.path().join("tc.wasm"), "release");
    let bus = Bus::builder()
        .plugin_dir(dir.path())
        .trusted_keys(&trusted)
        .require_signed(true)
        .build()
        .await
        .unwrap();
    assert!(plugin(&bus, "tc").is_some_and(|p| p.signer.is_some()));
    bus.shutdown().await;

    // Another key given release's id (ids are chosen at key generation,
    // not derived from the key: anyone can write a key file with any id).
    let (_, other) = minisign_keys(keys.path(), "other");
    let line = |path: &Path| {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .to_owned()
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut forged = b64.decode(line(&other)).unwrap();
    forged[2..10].copy_from_slice(&b64.decode(line(&pk)).unwrap()[2..10]);
    std::fs::write(
        trusted.join("zz-other.pub"),
        format!("untrusted comment: minisign public key\n{}\n", b64.encode(&forged)),
    )
    .unwrap();
    let err = Bus::builder()
        .plugin_dir(dir.path())
        .trusted_keys(&trusted)
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("release.pub") && err.contains("zz-other.pub") && err.contains(&key_id(&pk)),
        "{err}"
    );
    // The command line too.
    let out = support::plugbus(&[
        "check",
        dir.path().join("tc.wasm").to_str().unwrap(),
        "--trusted-keys",
        trusted.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("zz-other.pub"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capability_policy_refuses_each_grant_it_does_not_allow_and_names_the_rule() {
    let root = tempfile::tempdir().unwrap();
    let (allowed, other) = (root.path().join("allowed"), root.path().join("other"));
    std::fs::create_dir_all(allowed.join("audit")).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (sk, pk) = minisign_keys(keys.path(), "ci");
    let dir = tempfile::tempdir().unwrap();
    let tc = wasm("token-counter");
    let put = |name: &str, manifest: String| support::install(dir.path(), &tc, name, &manifest);
    let ro = |host: &Path| format!("[[dirs]]\nhost = \"{}\"\nguest = \"/data\"\n", host.display());
    let rw = |host: &Path| format!("{}writable = true\n", ro(host));
    put("reader", ro(&allowed.join("audit")));
    put("writer", rw(&allowed.join("audit")));
    put("outsider", ro(&other));
    put("catch-up", "replay = \"all\"\n".into());
    put("greedy", "[limits]\nfuel = 900000000\n".into());
    put("capped", "[limits]\nfuel = 90000000\nmemory_mib = 128\n".into());
    put("over-cap", "[limits]\nmemory_mib = 512\n".into());
    put("modest", "[limits]\nfuel = 1000000\ndeadline_ms = 50\n".into());
    put("signed-catch-up", "replay = \"all\"\n".into());
    std::fs::write(allowed.join("token"), "t0ken").unwrap();
    std::fs::write(other.join("token"), "t0ken").unwrap();
    let secret = |file: &Path| format!("[secrets]\ntoken = {{ file = \"{}\" }}\n", file.display());
    put("keeper", secret(&allowed.join("token")));
    put("leaker", secret(&other.join("token")));
    minisign_sign(&sk, &dir.path().join("signed-catch-up.wasm"), "ci");
    let policy = root.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[default]\n\n\
             [plugin.reader]\ndirs = [{{ path = \"allowed\" }}]\n\n\
             [plugin.writer]\ndirs = [{{ path = \"allowed\" }}]\n\n\
             [plugin.capped]\nlimits = {{ fuel = 100000000, memory_mib = 256 }}\n\n\
             [plugin.over-cap]\nlimits = {{ memory_mib = 256 }}\n\n\
             [plugin.keeper]\nsecret_dirs = [\"allowed\"]\n\n\
             [plugin.leaker]\nsecret_dirs = [\"allowed\"]\n\n\
             [key.{}]\nreplay = true\n",
            key_id(&pk)
        ),
    )
    .unwrap();
    let log = tempfile::tempdir().unwrap();
    let bus = Bus::builder()
        .plugin_dir(dir.path())
        .log_dir(log.path())
        .trusted_keys(&pk)
        .policy(&policy)
        .build()
        .await
        .unwrap();
    let mut loaded: Vec<String> = bus.plugins().into_iter().map(|p| p.name).collect();
    loaded.sort();
    assert_eq!(
        loaded,
        ["capped", "keeper", "modest", "reader", "signed-catch-up"],
        "{:?}",
        bus.load_failures()
    );
    let leaker = reason(&bus, "leaker");
    assert!(
        leaker.contains("[plugin.leaker]") && leaker.contains("[secrets] token reads the file"),
        "{leaker}"
    );
    let writer = reason(&bus, "writer");
    assert!(
        writer.contains("[plugin.writer]") && writer.contains("read-write"),
        "{writer}"
    );
    let outsider = reason(&bus, "outsider");
    assert!(
        outsider.contains("[default]") && outsider.contains("allows no directory"),
        "{outsider}"
    );
    let catch_up = reason(&bus, "catch-up");
    assert!(
        catch_up.contains("[default]") && catch_up.contains("replay"),
        "{catch_up}"
    );
    let greedy = reason(&bus, "greedy");
    assert!(
        greedy.contains("fuel = 900000000") && greedy.contains("bus default"),
        "{greedy}"
    );
    let over = reason(&bus, "over-cap");
    assert!(
        over.contains("[plugin.over-cap]") && over.contains("memory_mib = 512") && over.contains("cap of 256"),
        "{over}"
    );
    assert!(
        writer.contains(&policy.display().to_string()),
        "the policy file is named: {writer}"
    );
    bus.shutdown().await;

    // Without a policy every manifest is taken as written.
    let bus = Bus::builder()
        .plugin_dir(dir.path())
        .log_dir(log.path())
        .build()
        .await
        .unwrap();
    assert_eq!(bus.plugins().len(), 11, "{:?}", bus.load_failures());
    bus.shutdown().await;

    // A policy that cannot be read or parsed stops the build, named.
    std::fs::write(&policy, "[plugin.x]\nlimits = { fuell = 1 }\n").unwrap();
    let err = Bus::builder().policy(&policy).build().await.unwrap_err();
    assert!(
        err.to_string().contains("fuell") && err.to_string().contains("policy.toml"),
        "{err}"
    );
}

/// A manifest's writable `[[dirs]]` grant is created only once the plugin
/// has passed the signature check and the capability policy: an unsigned or
/// refused manifest once made the host create any directory tree it named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_manifest_creates_no_directory() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (_, pk) = minisign_keys(keys.path(), "ci");
    let dir = root.join("plugins");
    std::fs::create_dir(&dir).unwrap();
    let grant = |host: &Path| {
        format!(
            "[[dirs]]\nhost = \"{}\"\nguest = \"/data\"\nwritable = true\n",
            host.display()
        )
    };

    // Unsigned, signatures required: `check` refuses it and creates nothing.
    let unsigned_dir = root.join("made-for-unsigned/deep");
    support::install(&dir, &wasm("token-counter"), "unsigned", &grant(&unsigned_dir));
    let file = dir.join("unsigned.wasm");
    let out = support::plugbus(&[
        "check",
        file.to_str().unwrap(),
        "--require-signed",
        "--trusted-keys",
        pk.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unsigned"), "{err}");
    assert!(
        !root.join("made-for-unsigned").exists(),
        "a refused manifest created its directory"
    );
    std::fs::remove_file(&file).unwrap();
    std::fs::remove_file(dir.join("unsigned.toml")).unwrap();

    // Refused by the policy (it allows `allowed` only): nothing is created;
    // the plugin the policy allows gets its directory.
    let allowed = root.join("allowed");
    std::fs::create_dir(&allowed).unwrap();
    support::install(
        &dir,
        &wasm("token-counter"),
        "outsider",
        &grant(&root.join("outside/deep")),
    );
    support::install(
        &dir,
        &wasm("token-counter"),
        "insider",
        &grant(&allowed.join("inside/deep")),
    );
    let policy = root.join("policy.toml");
    std::fs::write(&policy, "[default]\ndirs = [{ path = \"allowed\", writable = true }]\n").unwrap();
    let bus = Bus::builder().plugin_dir(&dir).policy(&policy).build().await.unwrap();
    assert!(plugin(&bus, "insider").is_some(), "{:?}", bus.load_failures());
    let outsider = reason(&bus, "outsider");
    assert!(
        outsider.contains("[default]") && outsider.contains("outside"),
        "{outsider}"
    );
    assert!(
        !root.join("outside").exists(),
        "a refused manifest created its directory"
    );
    assert!(allowed.join("inside/deep").is_dir(), "an allowed grant is created");
    bus.shutdown().await;
}
