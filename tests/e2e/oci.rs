//! Plugins through a real OCI registry (Debian's `docker-registry`, the CNCF
//! distribution registry, started per test on loopback): `plugbus push` and
//! `plugbus pull`, digests checked against bytes tampered in the registry's
//! own storage, signatures under `--require-signed` when a tag moves, size
//! caps, and `plugins.lock` installed by `serve` at start.

use crate::support;
use crate::trust::{minisign_keys, minisign_sign};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{http, plugbus, serve, wasm};

/// A `docker-registry serve` on a free loopback port with its storage in a
/// temporary directory; killed when dropped.
pub(crate) struct Registry {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
    /// The htpasswd file's directory, for a registry that asks for credentials.
    _auth: Option<tempfile::TempDir>,
}

impl Registry {
    pub(crate) fn start() -> Registry {
        Registry::start_with("")
    }

    /// A registry that asks for `user`/`password` (htpasswd, bcrypt: made
    /// with Python's `crypt`, which Debian's libxcrypt backs).
    fn with_basic_auth(user: &str, password: &str) -> Registry {
        let out = Command::new("python3")
            .args([
                "-W",
                "ignore",
                "-c",
                "import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
                password,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let hash = String::from_utf8(out.stdout).unwrap();
        let auth = tempfile::tempdir().unwrap();
        let htpasswd = auth.path().join("htpasswd");
        std::fs::write(&htpasswd, format!("{user}:{}", hash.trim())).unwrap();
        let mut registry = Registry::start_with(&format!(
            "auth:\n  htpasswd:\n    realm: plugbus-test\n    path: {}\n",
            htpasswd.display()
        ));
        registry._auth = Some(auth);
        registry
    }

    /// Starts one with `extra` configuration (YAML top-level sections).
    fn start_with(extra: &str) -> Registry {
        let found = Command::new("docker-registry")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "Debian's `docker-registry` is missing: `make setup-registry` installs it (apt-get install docker-registry)"
        );
        // A free port, found by binding; another process could take it
        // before the registry does, so a registry that exits is retried.
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{extra}",
                    dir.path().join("data").display()
                ),
            )
            .unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                // 401 when it asks for credentials: it answers either way.
                if support::try_http(&addr, "GET", "/v2/", b"").is_some_and(|(status, _)| matches!(status, 200 | 401)) {
                    return Registry {
                        child,
                        addr,
                        dir,
                        _auth: None,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("docker-registry did not start");
    }

    /// `oci://ADDR/REPO`.
    pub(crate) fn reference(&self, repo: &str) -> String {
        format!("oci://{}/{repo}", self.addr)
    }

    /// The file the registry keeps blob `digest` in.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `plugbus ARGS`, expecting success; its stdout.
pub(crate) fn ok(args: &[&str]) -> String {
    let out = plugbus(args);
    assert!(
        out.status.success(),
        "plugbus {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `plugbus ARGS`, expecting failure; its stderr.
fn fails(args: &[&str]) -> String {
    let out = plugbus(args);
    assert!(
        !out.status.success(),
        "plugbus {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

pub(crate) fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// What a plugin directory holds, hidden entries included (a staging
/// directory left behind would show here).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A source directory with cost-tracker and its manifest, signed with a
/// fresh minisign key: (source dir, keys dir, the public key).
fn signed_source() -> (tempfile::TempDir, tempfile::TempDir, PathBuf) {
    let src = support::plugin_dir(&["cost-tracker"]);
    let keys = tempfile::tempdir().unwrap();
    let (sk, pk) = minisign_keys(keys.path(), "release");
    minisign_sign(&sk, &src.path().join("cost-tracker.wasm"), "cost-tracker release");
    (src, keys, pk)
}

#[test]
fn a_pushed_plugin_pulls_back_byte_for_byte_verified_and_locked() {
    let registry = Registry::start();
    let (src, _keys, pk) = signed_source();
    let reference = registry.reference("plugbus/cost-tracker:1.0");
    let pushed = json(&ok(&[
        "push",
        s(&src.path().join("cost-tracker.wasm")),
        &reference,
        "--json",
    ]));
    let media: Vec<&str> = pushed["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["media_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        media,
        [
            "application/wasm",
            "application/vnd.plugbus.manifest.v1+toml",
            "application/vnd.plugbus.signature.v1+minisign"
        ]
    );
    // The same files push to the same digest (no timestamp without
    // SOURCE_DATE_EPOCH).
    let again = json(&ok(&[
        "push",
        s(&src.path().join("cost-tracker.wasm")),
        &reference,
        "--json",
    ]));
    assert_eq!(again["digest"], pushed["digest"]);

    let dst = tempfile::tempdir().unwrap();
    let pull = |extra: &[&str]| {
        let mut args = vec!["pull", &reference, "--plugins", s(dst.path()), "--json"];
        args.extend_from_slice(extra);
        json(&ok(&args))
    };
    let pulled = pull(&["--trusted-keys", s(&pk), "--require-signed", "--lock"]);
    assert_eq!(pulled["digest"], pushed["digest"]);
    assert_eq!(pulled["changed"], true);
    assert!(pulled["signer"].is_string(), "{pulled}");
    for file in ["cost-tracker.wasm", "cost-tracker.toml", "cost-tracker.wasm.minisig"] {
        assert_eq!(
            std::fs::read(dst.path().join(file)).unwrap(),
            std::fs::read(src.path().join(file)).unwrap(),
            "{file}"
        );
    }
    // The artifact the files came from, for a lock or fleet entry to
    // compare (a version may change the manifest alone).
    assert_eq!(
        std::fs::read_to_string(dst.path().join(".cost-tracker.oci-digest"))
            .unwrap()
            .trim(),
        pulled["digest"].as_str().unwrap()
    );
    assert_eq!(
        listing(dst.path()),
        [
            ".cost-tracker.oci-digest",
            ".plugins.lock.guard",
            "cost-tracker.toml",
            "cost-tracker.wasm",
            "cost-tracker.wasm.minisig",
            "plugins.lock"
        ]
    );
    let lock = std::fs::read_to_string(dst.path().join("plugins.lock")).unwrap();
    assert!(lock.contains(pushed["digest"].as_str().unwrap()), "{lock}");
    assert!(lock.contains(pushed["wasm_digest"].as_str().unwrap()), "{lock}");
    // The pulled plugin loads, signed.
    let check = ok(&[
        "check",
        s(&dst.path().join("cost-tracker.wasm")),
        "--trusted-keys",
        s(&pk),
        "--require-signed",
    ]);
    assert!(check.contains("cost-tracker"), "{check}");
    // Pulling what is installed changes nothing.
    assert_eq!(pull(&[])["changed"], false);
}

#[test]
fn bytes_changed_in_the_registry_are_refused_and_nothing_is_written() {
    let registry = Registry::start();
    let (src, _keys, _) = signed_source();
    let reference = registry.reference("plugbus/cost-tracker:1");
    let pushed = json(&ok(&[
        "push",
        s(&src.path().join("cost-tracker.wasm")),
        &reference,
        "--json",
    ]));
    // One byte of the stored component changed, its length kept: the
    // registry serves it under the old digest.
    let blob = registry.blob_file(pushed["wasm_digest"].as_str().unwrap());
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let dst = tempfile::tempdir().unwrap();
    let err = fails(&["pull", &reference, "--plugins", s(dst.path())]);
    assert!(
        err.contains("digest mismatch for the component layer") && err.contains(&reference),
        "{err}"
    );
    assert!(listing(dst.path()).is_empty(), "{:?}", listing(dst.path()));

    // A reference pinned to a digest the registry does not have.
    let pinned = format!(
        "{}@sha256:{}",
        registry.reference("plugbus/cost-tracker"),
        "0".repeat(64)
    );
    let err = fails(&["pull", &pinned, "--plugins", s(dst.path())]);
    assert!(err.contains(&pinned) && err.contains("manifest unknown"), "{err}");
    assert!(listing(dst.path()).is_empty());
}

#[test]
fn a_tag_moved_to_an_unsigned_or_badly_signed_artifact_is_refused_and_the_installed_version_stays() {
    let registry = Registry::start();
    let (src, keys, pk) = signed_source();
    let reference = registry.reference("plugbus/cost-tracker:stable");
    ok(&["push", s(&src.path().join("cost-tracker.wasm")), &reference]);
    let dst = tempfile::tempdir().unwrap();
    let pull_signed = || {
        plugbus(&[
            "pull",
            &reference,
            "--plugins",
            s(dst.path()),
            "--trusted-keys",
            s(&pk),
            "--require-signed",
        ])
    };
    assert!(pull_signed().status.success());
    let installed = listing(dst.path());
    let wasm_before = std::fs::read(dst.path().join("cost-tracker.wasm")).unwrap();

    // The tag moves to the same plugin, rebuilt differently and unsigned.
    let unsigned = tempfile::tempdir().unwrap();
    std::fs::copy(wasm("token-counter"), unsigned.path().join("cost-tracker.wasm")).unwrap();
    ok(&["push", s(&unsigned.path().join("cost-tracker.wasm")), &reference]);
    let out = pull_signed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unsigned") && err.contains(&reference),
        "{err}"
    );
    assert_eq!(listing(dst.path()), installed);
    assert_eq!(
        std::fs::read(dst.path().join("cost-tracker.wasm")).unwrap(),
        wasm_before
    );

    // Signed by a key nobody trusts.
    let (stranger, _) = minisign_keys(keys.path(), "stranger");
    minisign_sign(&stranger, &unsigned.path().join("cost-tracker.wasm"), "not ours");
    ok(&["push", s(&unsigned.path().join("cost-tracker.wasm")), &reference]);
    let err = String::from_utf8(pull_signed().stderr).unwrap();
    assert!(err.contains("not among the trusted keys"), "{err}");

    // A signature of garbage is not pushed (a pull refuses such a layer
    // too: `oci::install`'s unit test); the tag stays where it was.
    std::fs::write(unsigned.path().join("cost-tracker.wasm.minisig"), "garbage\n").unwrap();
    let err = fails(&["push", s(&unsigned.path().join("cost-tracker.wasm")), &reference]);
    assert!(
        err.contains("cost-tracker.wasm.minisig is not a minisign signature"),
        "{err}"
    );
    let err = String::from_utf8(pull_signed().stderr).unwrap();
    assert!(err.contains("not among the trusted keys"), "{err}");
    assert_eq!(listing(dst.path()), installed);
    assert_eq!(
        std::fs::read(dst.path().join("cost-tracker.wasm")).unwrap(),
        wasm_before
    );
}

#[test]
fn bad_input_is_refused_naming_the_reference_and_leaves_the_directory_alone() {
    let registry = Registry::start();
    let src = support::plugin_dir(&["cost-tracker"]);
    let reference = registry.reference("plugbus/cost-tracker:1");
    ok(&["push", s(&src.path().join("cost-tracker.wasm")), &reference]);
    let dst = tempfile::tempdir().unwrap();

    // A component above the cap: refused from its descriptor.
    let err = fails(&[
        "pull",
        &reference,
        "--plugins",
        s(dst.path()),
        "--max-wasm-bytes",
        "1000",
    ]);
    assert!(
        err.contains("above the cap of 1000 bytes") && err.contains(&reference),
        "{err}"
    );
    // A manifest or a signature beside the component that every pull would
    // refuse: refused at the push, naming the file.
    let broken = tempfile::tempdir().unwrap();
    let file = broken.path().join("bad.wasm");
    std::fs::copy(src.path().join("cost-tracker.wasm"), &file).unwrap();
    std::fs::write(broken.path().join("bad.toml"), "[limits\n").unwrap();
    let err = fails(&["push", s(&file), &registry.reference("plugbus/bad:1")]);
    assert!(
        err.contains("not a plugbus manifest") && err.contains("bad.toml"),
        "{err}"
    );
    std::fs::remove_file(broken.path().join("bad.toml")).unwrap();
    std::fs::write(broken.path().join("bad.wasm.minisig"), "untrusted comment: x\nnope\n").unwrap();
    let err = fails(&["push", s(&file), &registry.reference("plugbus/bad:1")]);
    assert!(err.contains("bad.wasm.minisig is not a minisign signature"), "{err}");
    // A registry nobody listens on.
    let dead = format!("oci://127.0.0.1:{}/plugbus/x:1", free_port());
    let err = fails(&["pull", &dead, "--plugins", s(dst.path())]);
    assert!(err.contains(&dead) && err.contains("Connection refused"), "{err}");
    // A repository the registry does not have.
    let missing = registry.reference("plugbus/nothing:1");
    let err = fails(&["pull", &missing, "--plugins", s(dst.path())]);
    assert!(err.contains(&missing) && err.contains("manifest unknown"), "{err}");
    // No registry named: plugbus never guesses Docker Hub.
    let err = fails(&["pull", "oci://plugbus/cost-tracker:1", "--plugins", s(dst.path())]);
    assert!(err.contains("name the registry"), "{err}");
    // A file that is not a component is not pushed.
    std::fs::write(dst.path().join("junk.wasm"), b"not wasm").unwrap();
    let err = fails(&[
        "push",
        s(&dst.path().join("junk.wasm")),
        &registry.reference("plugbus/junk:1"),
    ]);
    assert!(err.contains("not a WebAssembly component"), "{err}");
    std::fs::remove_file(dst.path().join("junk.wasm")).unwrap();
    // A manifest that is not a plugbus manifest is not pushed (a pull
    // refuses such a layer too: `oci::install`'s unit test).
    let bad = tempfile::tempdir().unwrap();
    std::fs::copy(wasm("token-counter"), bad.path().join("tc.wasm")).unwrap();
    std::fs::write(bad.path().join("tc.toml"), "subscriptions = 3\n").unwrap();
    let bad_ref = registry.reference("plugbus/tc:1");
    let err = fails(&["push", s(&bad.path().join("tc.wasm")), &bad_ref]);
    assert!(
        err.contains("not a plugbus manifest") && err.contains(&bad_ref) && err.contains("tc.toml"),
        "{err}"
    );
    // A missing plugin directory is named before anything is fetched.
    let err = fails(&["pull", &reference, "--plugins", "/nonexistent/plugins"]);
    assert!(err.contains("/nonexistent/plugins"), "{err}");

    assert!(listing(dst.path()).is_empty(), "{:?}", listing(dst.path()));
}

#[test]
fn a_pull_killed_before_its_renames_installs_nothing_and_the_next_one_cleans_up() {
    let registry = Registry::start();
    let (src, _keys, _) = signed_source();
    let reference = registry.reference("plugbus/cost-tracker:1");
    ok(&["push", s(&src.path().join("cost-tracker.wasm")), &reference]);
    let dst = tempfile::tempdir().unwrap();
    // The process aborts with every file staged and none renamed.
    let out = Command::new(support::plugbus_bin())
        .args(["pull", &reference, "--plugins", s(dst.path())])
        .env("RUST_LOG", "warn")
        .env("FAILPOINTS", "oci.install.staged=return(crash)")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let left = listing(dst.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with(".plugbus-pull-"), "{left:?}");
    // The bus ignores hidden entries: nothing loads from it.
    let (_served, addr, _log) = support::serve(&["--plugins", s(dst.path())]);
    let (_, body) = http(&addr, "GET", "/plugins", b"");
    assert!(!body.contains("cost-tracker"), "{body}");
    drop(_served);
    // The next pull installs and removes the orphan.
    ok(&["pull", &reference, "--plugins", s(dst.path())]);
    assert_eq!(
        listing(dst.path()),
        [
            ".cost-tracker.oci-digest",
            "cost-tracker.toml",
            "cost-tracker.wasm",
            "cost-tracker.wasm.minisig"
        ]
    );
}

#[test]
fn a_registry_that_asks_for_credentials_gets_them_from_the_environment_and_never_prints_them() {
    let password = "pl4gbus-s3cret-Zq";
    let registry = Registry::with_basic_auth("ci", password);
    let src = support::plugin_dir(&["cost-tracker"]);
    let file = src.path().join("cost-tracker.wasm");
    let reference = registry.reference("plugbus/cost-tracker:1");
    // Whatever this machine's ~/.docker holds plays no part.
    let no_docker_config = tempfile::tempdir().unwrap();
    // `plugbus ARGS` with the password in its environment (or none), Docker's
    // client configuration in `docker_config` and `path` as PATH; the
    // password must never be printed.
    let run_with = |args: &[&str], env_password: Option<&str>, docker_config: &Path, path: Option<&str>| {
        let mut cmd = Command::new(support::plugbus_bin());
        cmd.args(args)
            .env("RUST_LOG", "debug")
            .env("DOCKER_CONFIG", docker_config)
            .env_remove("PLUGBUS_REGISTRY_PASSWORD");
        if let Some(p) = env_password {
            cmd.env("PLUGBUS_REGISTRY_PASSWORD", p);
        }
        if let Some(path) = path {
            cmd.env("PATH", path);
        }
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains(password), "the password was printed: {text}");
        (out.status.success(), text)
    };
    let run = |args: &[&str], env_password: Option<&str>| run_with(args, env_password, no_docker_config.path(), None);
    let (ok_, text) = run(&["push", s(&file), &reference], None);
    assert!(!ok_ && text.contains(&reference) && text.contains("401"), "{text}");
    let (ok_, text) = run(&["push", s(&file), &reference, "--registry-user", "ci"], Some("wrong"));
    assert!(!ok_ && text.contains(&reference), "{text}");
    let (ok_, text) = run(&["push", s(&file), &reference, "--registry-user", "ci"], None);
    assert!(!ok_ && text.contains("PLUGBUS_REGISTRY_PASSWORD"), "{text}");
    let (ok_, text) = run(&["push", s(&file), &reference, "--registry-user", "ci"], Some(password));
    assert!(ok_, "{text}");
    let dst = tempfile::tempdir().unwrap();
    let (ok_, text) = run(&["pull", &reference, "--plugins", s(dst.path())], None);
    assert!(!ok_ && text.contains("Not authorized"), "{text}");
    let (ok_, text) = run(
        &["pull", &reference, "--plugins", s(dst.path()), "--registry-user", "ci"],
        Some(password),
    );
    assert!(ok_, "{text}");
    assert_eq!(
        std::fs::read(dst.path().join("cost-tracker.wasm")).unwrap(),
        std::fs::read(&file).unwrap()
    );

    // Without --registry-user: Docker's client configuration for this
    // registry, as `docker login` writes it, then through a credential
    // helper (a real program on PATH speaking the helper protocol).
    let host = reference
        .parse::<plugbus::oci::PluginRef>()
        .unwrap()
        .registry()
        .to_owned();
    let docker = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let helper = bin.path().join("docker-credential-plugbus-test");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread server\nif [ \"$server\" = \"{host}\" ]; then\n  printf '{{\"ServerURL\":\"%s\",\"Username\":\"ci\",\"Secret\":\"{password}\"}}' \"$server\"\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let pull_with = |config: &str| {
        std::fs::write(docker.path().join("config.json"), config).unwrap();
        let dst = tempfile::tempdir().unwrap();
        let (ok_, text) = run_with(
            &["pull", &reference, "--plugins", s(dst.path())],
            None,
            docker.path(),
            Some(&path),
        );
        (ok_ && dst.path().join("cost-tracker.wasm").is_file(), text)
    };
    // `user:password` in base64, as `docker login` stores it.
    let stored = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("ci:{password}"))
    };
    let (ok_, text) = pull_with(&format!(r#"{{"auths": {{"{host}": {{"auth": "{stored}"}}}}}}"#));
    assert!(ok_, "docker login's entry: {text}");
    let (ok_, text) = pull_with(&format!(r#"{{"credHelpers": {{"{host}": "plugbus-test"}}}}"#));
    assert!(ok_, "the registry's credential helper: {text}");
    let (ok_, text) = pull_with(r#"{"credsStore": "plugbus-test"}"#);
    assert!(ok_, "the default credential helper: {text}");
    // Nothing for this registry: anonymous, refused by the registry.
    let (ok_, text) = pull_with(r#"{"auths": {"elsewhere.example.com": {"auth": "eDp5"}}}"#);
    assert!(!ok_ && text.contains("Not authorized"), "{text}");
    // A broken configuration is an error naming it, not an anonymous pull.
    let (ok_, text) = pull_with("{ not json");
    assert!(
        !ok_ && text.contains("config.json") && text.contains("registry credentials"),
        "{text}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn serve_installs_the_locked_digest_at_start_whatever_the_tag_now_names() {
    let registry = Registry::start();
    let src = support::plugin_dir(&["cost-tracker"]);
    let reference = registry.reference("plugbus/cost-tracker:latest");
    ok(&["push", s(&src.path().join("cost-tracker.wasm")), &reference]);
    let first = tempfile::tempdir().unwrap();
    let locked = json(&ok(&[
        "pull",
        &reference,
        "--plugins",
        s(first.path()),
        "--lock",
        "--json",
    ]));
    // The tag moves on; the lock still names the first digest.
    let other = tempfile::tempdir().unwrap();
    std::fs::copy(wasm("token-counter"), other.path().join("cost-tracker.wasm")).unwrap();
    ok(&["push", s(&other.path().join("cost-tracker.wasm")), &reference]);

    // A host with only the lock file installs the locked version and runs it.
    let host = tempfile::tempdir().unwrap();
    std::fs::copy(first.path().join("plugins.lock"), host.path().join("plugins.lock")).unwrap();
    {
        let (_served, addr, _log) = serve(&["--plugins", s(host.path())]);
        let (status, body) = http(&addr, "GET", "/plugins", b"");
        assert_eq!(status, 200);
        let plugins: serde_json::Value = serde_json::from_str(&body).unwrap();
        let ct = plugins["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "cost-tracker")
            .unwrap_or_else(|| panic!("{body}"));
        let wasm_digest = locked["wasm_digest"].as_str().unwrap();
        assert_eq!(format!("sha256:{}", ct["version"].as_str().unwrap()), wasm_digest);
    }
    assert_eq!(
        std::fs::read(host.path().join("cost-tracker.wasm")).unwrap(),
        std::fs::read(src.path().join("cost-tracker.wasm")).unwrap()
    );

    // With the registry gone, an installed copy with the locked digest is
    // enough to start; a missing one stops the start, naming the reference.
    drop(registry);
    {
        let (_served, addr, _log) = serve(&["--plugins", s(host.path())]);
        assert_eq!(http(&addr, "GET", "/plugins", b"").0, 200);
    }
    let empty = tempfile::tempdir().unwrap();
    std::fs::copy(first.path().join("plugins.lock"), empty.path().join("plugins.lock")).unwrap();
    let out = Command::new(support::plugbus_bin())
        .args(["serve", "--plugins", s(empty.path()), "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("plugins.lock")
            && err.contains("plugbus/cost-tracker@sha256:")
            && err.contains("Connection refused"),
        "{err}"
    );
    assert_eq!(listing(empty.path()), ["plugins.lock"]);
}

/// A lock entry whose `wasm` is another component's digest (here
/// token-counter's, on event-counter's artifact): refused before anything is
/// fetched, by `pull` and by `serve` at start; the plugin directory keeps
/// what it had (the artifact's component was once installed under the
/// entry's name, then reported as a digest mismatch).
#[test]
fn a_lock_entry_whose_wasm_is_not_its_artifacts_component_installs_nothing() {
    let registry = Registry::start();
    let src = tempfile::tempdir().unwrap();
    let push = |plugin: &str| {
        let file = src.path().join(format!("{plugin}.wasm"));
        std::fs::copy(wasm(plugin), &file).unwrap();
        json(&ok(&[
            "push",
            s(&file),
            &registry.reference(&format!("plugbus/{plugin}:1")),
            "--json",
        ]))
    };
    let event_counter = push("event-counter");
    let token_counter = push("token-counter");
    let dst = tempfile::tempdir().unwrap();
    let lock = |wasm: &serde_json::Value| {
        std::fs::write(
            dst.path().join("plugins.lock"),
            format!(
                "[[plugin]]\nname = \"token-counter\"\nreference = \"{}\"\ndigest = \"{}\"\nwasm = \"{}\"\n",
                registry.reference("plugbus/event-counter:1"),
                event_counter["digest"].as_str().unwrap(),
                wasm.as_str().unwrap()
            ),
        )
        .unwrap();
    };
    lock(&token_counter["wasm_digest"]);
    // An older token-counter is installed: it must stay as it is.
    let installed = std::fs::read(wasm("cost-tracker")).unwrap();
    std::fs::write(dst.path().join("token-counter.wasm"), &installed).unwrap();
    let before = listing(dst.path());
    let unchanged = || {
        assert_eq!(listing(dst.path()), before);
        assert_eq!(std::fs::read(dst.path().join("token-counter.wasm")).unwrap(), installed);
    };

    let err = fails(&["pull", "--plugins", s(dst.path())]);
    assert!(
        err.contains("digest mismatch")
            && err.contains(token_counter["wasm_digest"].as_str().unwrap())
            && err.contains(event_counter["wasm_digest"].as_str().unwrap()),
        "{err}"
    );
    unchanged();
    let out = Command::new(support::plugbus_bin())
        .args(["serve", "--plugins", s(dst.path()), "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("digest mismatch"), "{err}");
    unchanged();

    // With the artifact's own component digest, the entry installs.
    lock(&event_counter["wasm_digest"]);
    ok(&["pull", "--plugins", s(dst.path())]);
    assert_eq!(
        std::fs::read(dst.path().join("token-counter.wasm")).unwrap(),
        std::fs::read(wasm("event-counter")).unwrap()
    );
}

/// Serves one artifact pushed to `registry` (its manifest, config and
/// layers, read from the registry's storage), naming the manifest by its
/// sha512 in `Docker-Content-Digest`, as the distribution spec allows; plain
/// HTTP on a loopback port, one request per connection. Its address.
fn sha512_registry(registry: &Registry, manifest_digest: &str) -> String {
    use std::io::{Read, Write};
    let manifest_file = registry.blob_file(manifest_digest);
    let manifest = std::fs::read(&manifest_file).unwrap();
    let out = Command::new("sha512sum").arg(&manifest_file).output().unwrap();
    assert!(out.status.success());
    let sha512 = String::from_utf8(out.stdout).unwrap();
    let sha512 = format!("sha512:{}", sha512.split_whitespace().next().unwrap());
    let blobs = registry.dir.path().join("data/docker/registry/v2/blobs/sha256");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head);
            let mut words = head.split(' ');
            let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            let blob = |digest: &str| {
                let hex = digest.strip_prefix("sha256:")?;
                std::fs::read(blobs.join(hex.get(..2)?).join(hex).join("data")).ok()
            };
            let (status, headers, body) = if path == "/v2/" {
                ("200 OK", String::new(), b"{}".to_vec())
            } else if path.contains("/manifests/") {
                (
                    "200 OK",
                    format!(
                        "Content-Type: application/vnd.oci.image.manifest.v1+json\r\nDocker-Content-Digest: {sha512}\r\n"
                    ),
                    manifest.clone(),
                )
            } else if let Some(bytes) = path.split_once("/blobs/").and_then(|(_, d)| blob(d)) {
                ("200 OK", "Content-Type: application/octet-stream\r\n".to_owned(), bytes)
            } else {
                ("404 Not Found", String::new(), Vec::new())
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if method != "HEAD" {
                let _ = stream.write_all(&body);
            }
        }
    });
    addr
}

/// A registry that names manifests by sha512: `pull --lock` records the
/// sha256 of the manifest bytes (what `plugins.lock` pins; the registry's
/// digest once made a lock plugbus then refused), and the lock installs.
#[test]
fn a_registry_that_names_manifests_by_sha512_still_gets_a_lock_plugbus_reads() {
    let registry = Registry::start();
    let src = support::plugin_dir(&["cost-tracker"]);
    let pushed = json(&ok(&[
        "push",
        s(&src.path().join("cost-tracker.wasm")),
        &registry.reference("plugbus/cost-tracker:1"),
        "--json",
    ]));
    let digest = pushed["digest"].as_str().unwrap();
    let reference = format!("oci://{}/plugbus/cost-tracker:1", sha512_registry(&registry, digest));
    let dst = tempfile::tempdir().unwrap();
    let pulled = json(&ok(&[
        "pull",
        &reference,
        "--plugins",
        s(dst.path()),
        "--lock",
        "--json",
    ]));
    assert_eq!(pulled["digest"], digest);
    let lock = std::fs::read_to_string(dst.path().join("plugins.lock")).unwrap();
    assert!(lock.contains(digest) && !lock.contains("sha512"), "{lock}");
    // Another host installs from it (pinned by sha256; the registry still
    // answers in sha512).
    let host = tempfile::tempdir().unwrap();
    std::fs::copy(dst.path().join("plugins.lock"), host.path().join("plugins.lock")).unwrap();
    let out = ok(&["pull", "--plugins", s(host.path())]);
    assert!(out.contains("installed"), "{out}");
    assert_eq!(
        std::fs::read(host.path().join("cost-tracker.wasm")).unwrap(),
        std::fs::read(src.path().join("cost-tracker.wasm")).unwrap()
    );
}

/// HTTPS to a registry that speaks plain HTTP: rustls's "received corrupt
/// message of type InvalidContentType" comes with what it means and the
/// flag. 0.0.0.0 reaches this machine's loopback on Linux without being a
/// loopback address, so plugbus speaks HTTPS to it unless told otherwise.
#[test]
fn https_to_a_plain_http_registry_is_explained() {
    let registry = Registry::start();
    let src = support::plugin_dir(&["cost-tracker"]);
    ok(&[
        "push",
        s(&src.path().join("cost-tracker.wasm")),
        &registry.reference("plugbus/cost-tracker:1"),
    ]);
    let port = registry.addr.rsplit(':').next().unwrap();
    let reference = format!("oci://0.0.0.0:{port}/plugbus/cost-tracker:1");
    let dst = tempfile::tempdir().unwrap();
    let err = fails(&["pull", &reference, "--plugins", s(dst.path())]);
    assert!(
        err.contains(&reference) && err.contains("may speak plain HTTP") && err.contains("--plain-http"),
        "{err}"
    );
    assert!(listing(dst.path()).is_empty());
    ok(&["pull", &reference, "--plugins", s(dst.path()), "--plain-http"]);
    assert!(dst.path().join("cost-tracker.wasm").is_file());
}
