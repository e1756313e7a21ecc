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
    let key = dir.path().join("plugins.key");
    let out = support::plugbus(&["keygen", "--key", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
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
