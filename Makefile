# The two commands of the README:
#   make demo   set up, build the plugins, replay a sample agent session through them
#   make test   set up, build the plugins, lint, and run every test
# Everything they need is installed by `make setup`: the wasm32-wasip2 target,
# clippy and rustfmt (rustup), and the guest-language toolchains, all pinned
# and from the package registries: clang-14 and wasi-libc (Debian), the
# componentize-py wheel (PyPI, hash-checked, in a venv) and componentize-qjs
# (npm, installed from a lock file). The Rust toolchain itself comes from rustup.
# JavaScript plugins are built under Debian's libfaketime so that they are
# reproducible (`make reproducible-test`, part of `make test`).
# `make test` also installs Debian's Chromium and chromedriver for the
# dashboard's browser test (`make setup-browser`) and nats-server for the
# scale-out tests (`make setup-nats`); the demo needs neither.

CARGO    ?= cargo
PLUGINS  := cost-tracker audit-log console-logger token-counter agent-runs misbehave
FIXTURES := wrong-world ledger fetcher
# First-party plugins that need settings of their own (a webhook URL, a collector)
# before they can run: built into plugins/dist/extra with their manifests,
# to copy into a plugin directory when wanted (docs/http.md).
EXTRA_PLUGINS := webhook-alert otlp-export
DIST     := plugins/dist
WASM_OUT := target/wasm32-wasip2/plugin
TEST_WASM := target/plugbus-test-wasm
MANIFESTS := plugins/cost-tracker/cost-tracker.toml plugins/audit-log/audit-log.toml \
	plugins/event-counter/event-counter.toml plugins/secret-scanner/secret-scanner.toml \
	plugins/latency-watch/latency-watch.toml plugins/agent-runs/agent-runs.toml

# ---- guest-language toolchains (pinned in plugins/toolchain) ----------------
TOOLS      := target/guest-tools
C_PACKAGES := clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32
CLANG      := clang-14
WASM_LD    := /usr/bin/wasm-ld-14
# rustup ships wasm-component-ld (the wasm32-wasip2 linker): it links with
# wasm-ld and embeds the WASI adapter, so C needs no wasm-tools install.
HOST_TRIPLE := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
WASM_COMPONENT_LD := $(shell rustc --print sysroot 2>/dev/null)/lib/rustlib/$(HOST_TRIPLE)/bin/wasm-component-ld
C_FLAGS    := --target=wasm32-wasi --sysroot=/usr -mexec-model=reactor -O2 -Wall -Wextra -Werror \
	-fuse-ld=$(WASM_COMPONENT_LD) -Wl,--wasm-ld-path=$(WASM_LD) -Wl,--strip-debug
C_BINDINGS := target/c-bindings
C_PROJECTION_BINDINGS := target/c-bindings-projection
C_BATCH_BINDINGS := target/c-bindings-batch
C_HTTP_BINDINGS := target/c-bindings-http
VENV       := $(TOOLS)/venv
COMPONENTIZE_PY  := $(VENV)/bin/componentize-py
COMPONENTIZE_QJS := $(TOOLS)/js/node_modules/.bin/componentize-qjs
# As root (CI, containers) apt-get runs directly; otherwise through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The guest-language plugins: name, source, and how to build it.
# C plugins of the batch-observer world (they also export `on-events`).
C_BATCH_PLUGINS := tokens-c:plugins/fixtures/tokens-c/tokens.c
# C plugins that export `state` and `query` (world projection, bindings of their own).
C_PROJECTION_PLUGINS := event-counter:plugins/event-counter/event_counter.c
# Plugins of the batch-observer world (WIT 0.1.3): they also export `on-events`.
PY_BATCH_PLUGINS := tokens-py:plugins/fixtures/tokens-py:tokens secret-scanner:plugins/secret-scanner:secret_scanner
JS_BATCH_PLUGINS := tokens-js:plugins/fixtures/tokens-js/tokens.js
# A plugin of the batch-only-observer world (only `on-events`).
JS_BATCH_ONLY_PLUGINS := batch-only-js:plugins/fixtures/batch-only-js/batch-only.js
# Plugins that export `state` and `on-events` (world stateful-batch-observer).
JS_STATE_PLUGINS := latency-watch:plugins/latency-watch/latency-watch.js
# Plugins that export `state` and `query` (world projection).
PY_PROJECTION_PLUGINS := state-py:plugins/fixtures/state-py:state
JS_PROJECTION_PLUGINS := state-js:plugins/fixtures/state-js/state.js
# Plugins that send requests through wasi:http (world http-observer, wit/http.wit).
C_HTTP_PLUGINS  := fetch-c:plugins/fixtures/fetch-c/fetch.c
PY_HTTP_PLUGINS := fetch-py:plugins/fixtures/fetch-py:fetch
# Which of them are first-party plugins (into plugins/dist) rather than fixtures.
LANG_DIST  := event-counter secret-scanner latency-watch

# The Python package (bindings/python): PyO3 + maturin, built in debug into
# the workspace's target/ (wasmtime is shared with the cargo build), installed
# with pytest into a venv of its own.
PY_PKG  := bindings/python
PY_VENV := target/python-venv

.PHONY: reproducible-test lang-build setup-faketime otel-example demo test setup setup-rust setup-c setup-python setup-js setup-python-pkg setup-browser setup-nats setup-minisign setup-registry browser-test interop-test python python-test bench-python plugins rust-plugins lang-plugins lint example bench criterion fuzz clean

setup: setup-rust setup-c setup-python setup-js setup-python-pkg

setup-rust:
	@command -v $(CARGO) >/dev/null || { echo "plugbus: cargo not found: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

# C: Debian's clang-14 with wasi-libc (clang-14 targets wasm32-wasi; the
# component is made by rustup's wasm-component-ld).
setup-c:
	@missing=$$(for p in $(C_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		command -v apt-get >/dev/null || { echo "plugbus: the C toolchain needs Debian/Ubuntu packages: $$missing" >&2; exit 1; }; \
		echo "installing $$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@test -x $(WASM_COMPONENT_LD) || { echo "plugbus: $(WASM_COMPONENT_LD) missing: run 'rustup target add wasm32-wasip2'" >&2; exit 1; }

# The dashboard's browser test: Debian's Chromium and its chromedriver
# (Selenium, hash-pinned in the Python package's venv, drives them).
BROWSER_PACKAGES := chromium chromium-driver
setup-browser:
	@missing=$$(for p in $(BROWSER_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		command -v apt-get >/dev/null || { echo "plugbus: the browser test needs Debian/Ubuntu packages: $$missing" >&2; exit 1; }; \
		echo "installing $$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# Scale-out tests: Debian's nats-server (2.9.10, JetStream); each test starts
# its own on a free loopback port with a temporary store.
setup-nats:
	@dpkg-query -W -f='$${Status}' nats-server 2>/dev/null | grep -q 'ok installed' || { \
		command -v apt-get >/dev/null || { echo "plugbus: the NATS tests need the Debian/Ubuntu package nats-server" >&2; exit 1; }; \
		echo "installing nats-server"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nats-server >/dev/null; \
	}

# Signature tests: Debian's minisign (makes keys and signatures plugbus
# verifies, and verifies what `plugbus sign` makes).
setup-minisign:
	@dpkg-query -W -f='$${Status}' minisign 2>/dev/null | grep -q 'ok installed' || { \
		command -v apt-get >/dev/null || { echo "plugbus: the signature tests need the Debian/Ubuntu package minisign" >&2; exit 1; }; \
		echo "installing minisign"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends minisign >/dev/null; \
	}

# OCI registry tests: Debian's docker-registry (the CNCF distribution
# registry, 2.8); each test starts its own on a free loopback port with a
# temporary storage root.
setup-registry:
	@dpkg-query -W -f='$${Status}' docker-registry 2>/dev/null | grep -q 'ok installed' || { \
		command -v apt-get >/dev/null || { echo "plugbus: the OCI registry tests need the Debian/Ubuntu package docker-registry" >&2; exit 1; }; \
		echo "installing docker-registry"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry >/dev/null; \
	}

# Python: componentize-py, hash-checked, in a venv of our own.
setup-python: $(COMPONENTIZE_PY)
$(COMPONENTIZE_PY): plugins/toolchain/requirements.txt
	@command -v python3 >/dev/null || { echo "plugbus: python3 (3.9 or later) is needed for the Python plugins" >&2; exit 1; }
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check --require-hashes -r plugins/toolchain/requirements.txt
	@touch $@

# The Python package's tools: maturin and pytest, hash-checked, in a venv
# (with the agent frameworks the adapters are tested against).
setup-python-pkg: $(PY_VENV)/bin/maturin
$(PY_VENV)/bin/maturin: $(PY_PKG)/requirements-dev.txt $(PY_PKG)/requirements-frameworks.txt
	@command -v python3 >/dev/null || { echo "plugbus: python3 (3.10 or later) is needed for the Python package" >&2; exit 1; }
	python3 -m venv $(PY_VENV)
	$(PY_VENV)/bin/pip install -q --disable-pip-version-check --require-hashes -r $(PY_PKG)/requirements-dev.txt
	@touch $@

# Builds the `plugbus` Python package and installs it into the venv (editable:
# the Python half is read from bindings/python/python).
# On failure, the native build's own error and the machine's free disk and
# memory are printed last, where a CI log's tail shows them.
python: setup-python-pkg setup-rust
	VIRTUAL_ENV=$(CURDIR)/$(PY_VENV) PATH="$(CURDIR)/$(PY_VENV)/bin:$$PATH" \
		$(PY_VENV)/bin/maturin develop -q -m $(PY_PKG)/Cargo.toml || { \
		echo "plugbus: the Python package's native library did not build; cargo says:" >&2; \
		$(CARGO) build --lib -p plugbus-python 2>&1 | grep -v '^ *Compiling' | tail -40 >&2; \
		df -h . >&2; free -m >&2 || true; exit 1; }

python-test: python
	$(PY_VENV)/bin/mypy --strict $(PY_PKG)/python/plugbus
	PLUGBUS_WASM_DIR=$(CURDIR)/$(TEST_WASM) PLUGBUS_BIN=$(CURDIR)/target/debug/plugbus $(PY_VENV)/bin/python -m pytest -q $(PY_PKG)/tests

# The Python benchmarks (emit, and the agent-framework adapters' cost per
# callback), on a release build of the package installed (as a wheel, not
# editable: an editable install shares the source tree's native module with
# `make python`'s debug build) into a venv of its own, with the frameworks
# (hash-checked).
PY_BENCH_VENV := target/python-bench-venv
bench-python: plugins setup-python-pkg
	@test -x $(PY_BENCH_VENV)/bin/python || python3 -m venv $(PY_BENCH_VENV)
	$(PY_BENCH_VENV)/bin/pip install -q --disable-pip-version-check --require-hashes -r $(PY_PKG)/requirements-frameworks.txt
	rm -rf target/wheels
	$(PY_VENV)/bin/maturin build -q --release -m $(PY_PKG)/Cargo.toml -i $(PY_BENCH_VENV)/bin/python -o target/wheels
	$(PY_BENCH_VENV)/bin/pip install -q --disable-pip-version-check --force-reinstall --no-deps target/wheels/plugbus-*.whl
	$(PY_BENCH_VENV)/bin/python $(PY_PKG)/bench/emit.py --plugins $(DIST) --json target/bench-python.json
	$(PY_BENCH_VENV)/bin/python $(PY_PKG)/bench/adapters.py --plugins $(DIST) --json target/bench-python-adapters.json

# JavaScript: componentize-qjs (QuickJS), exactly as locked. Not `npm ci`:
# componentize-qjs 0.4.5 lists optional platform bindings that were never
# published (win32, linux-arm64-musl), and `npm ci` refuses any lock without
# them. `npm install --no-save` installs the same locked, integrity-checked tree.
setup-js: $(COMPONENTIZE_QJS) setup-faketime
$(COMPONENTIZE_QJS): plugins/toolchain/package.json plugins/toolchain/package-lock.json
	@command -v npm >/dev/null || { echo "plugbus: npm (Node.js 18 or later) is needed for the JavaScript plugins" >&2; exit 1; }
	@mkdir -p $(TOOLS)/js
	cp plugins/toolchain/package.json plugins/toolchain/package-lock.json $(TOOLS)/js/
	cd $(TOOLS)/js && npm install --no-save --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@

# Reproducible JavaScript builds: componentize-qjs pre-initialises QuickJS
# (Wizer) and keeps its memory, which holds whatever the build's clocks and
# random source said. Debian's libfaketime, preloaded, freezes both clocks and
# makes getrandom a seeded stream (FAKERANDOM_SEED), so the same source gives
# the same bytes. (The seeds the snapshot holds were always fixed at build time
# and readable from the artifact; now they are the same for every build.)
setup-faketime:
	@dpkg-query -W -f='$${Status}' libfaketime 2>/dev/null | grep -q 'ok installed' || { \
		command -v apt-get >/dev/null || { echo "plugbus: reproducible JavaScript builds need the Debian/Ubuntu package libfaketime" >&2; exit 1; }; \
		echo "installing libfaketime"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libfaketime >/dev/null; \
	}
FROZEN = LD_PRELOAD=$$(dpkg -L libfaketime | grep '/libfaketimeMT\.so\.1$$') \
	FAKETIME='2026-01-01 00:00:00' FAKERANDOM_SEED=0x706c756762757321

# Rust plugins name their dependencies' sources in panic locations: under
# $CARGO_HOME, which differs between machines. Mapped to one name, so the
# bytes do not depend on where cargo keeps its registry. (Workspace paths are
# relative already; the standard library's are remapped by rustup's build.)
CARGO_HOME_DIR := $(or $(CARGO_HOME),$(HOME)/.cargo)
PLUGIN_RUSTFLAGS := --remap-path-prefix=$(CARGO_HOME_DIR)=/cargo
PLUGIN_CRATES := $(addprefix -p ,$(PLUGINS) $(FIXTURES) $(EXTRA_PLUGINS))

# Builds every plugin and installs the first-party ones (with their
# manifests) into plugins/dist, and every plugin and fixture into target/.
plugins: rust-plugins lang-plugins
	@cp $(MANIFESTS) $(DIST)/
	@ls -l $(DIST)/*.wasm

rust-plugins: setup-rust
	@mkdir -p $(DIST) $(TEST_WASM)
	@# agent-runs as "v1", with its deliberate bug, for the rebuild test.
	RUSTFLAGS="$(PLUGIN_RUSTFLAGS)" $(CARGO) build --profile plugin --target wasm32-wasip2 -p agent-runs --features v1-bug
	@cp $(WASM_OUT)/agent_runs.wasm $(TEST_WASM)/agent-runs-v1.wasm
	RUSTFLAGS="$(PLUGIN_RUSTFLAGS)" $(CARGO) build --profile plugin --target wasm32-wasip2 $(PLUGIN_CRATES)
	@for p in $(PLUGINS); do cp $(WASM_OUT)/$$(echo $$p | tr - _).wasm $(DIST)/$$p.wasm; done
	@for p in $(PLUGINS) $(FIXTURES) $(EXTRA_PLUGINS); do cp $(WASM_OUT)/$$(echo $$p | tr - _).wasm $(TEST_WASM)/$$p.wasm; done
	@mkdir -p $(DIST)/extra
	@# Named as their manifests: a plugin's name is its file's, and a manifest
	@# beside another name applies to nothing.
	@for p in $(EXTRA_PLUGINS); do rm -f $(DIST)/extra/$$(echo $$p | tr - _).wasm; cp $(WASM_OUT)/$$(echo $$p | tr - _).wasm $(DIST)/extra/$$p.wasm; cp plugins/$$p/$$p.toml $(DIST)/extra/; done

# C, Python and JavaScript, each from the WIT in wit/: the C bindings are
# generated by `plugbus bindgen c`, the other two toolchains read wit/ directly.
lang-plugins: setup
	@mkdir -p $(DIST)
	@$(MAKE) -s lang-build LANG_OUT=$(TEST_WASM)
	@for p in $(LANG_DIST); do cp $(TEST_WASM)/$$p.wasm $(DIST)/$$p.wasm; done

# Builds the C, Python and JavaScript plugins into LANG_OUT (LANGS: which).
LANG_OUT ?= $(TEST_WASM)
LANGS    ?= c python js
only = $(if $(filter $(1),$(LANGS)),$(2))
lang-build:
	@mkdir -p $(LANG_OUT)
	$(CARGO) run -q -p plugbus -- -q bindgen c --wit wit --world batch-observer --out $(C_BATCH_BINDINGS) >/dev/null
	$(CARGO) run -q -p plugbus -- -q bindgen c --wit wit --world projection --out $(C_PROJECTION_BINDINGS) >/dev/null
	$(CARGO) run -q -p plugbus -- -q bindgen c --wit wit --world http-observer --out $(C_HTTP_BINDINGS) >/dev/null
	@for spec in $(call only,c,$(C_BATCH_PLUGINS)); do name=$${spec%%:*}; src=$${spec#*:}; \
		echo "  C       $$name (batch-observer)"; \
		$(CLANG) $(C_FLAGS) -I $(C_BATCH_BINDINGS) $$src $(C_BATCH_BINDINGS)/batch_observer.c \
			$(C_BATCH_BINDINGS)/batch_observer_component_type.o -o $(LANG_OUT)/$$name.wasm || exit 1; \
	done
	@for spec in $(call only,c,$(C_PROJECTION_PLUGINS)); do name=$${spec%%:*}; src=$${spec#*:}; \
		echo "  C       $$name (projection)"; \
		$(CLANG) $(C_FLAGS) -I $(C_PROJECTION_BINDINGS) $$src $(C_PROJECTION_BINDINGS)/projection.c \
			$(C_PROJECTION_BINDINGS)/projection_component_type.o -o $(LANG_OUT)/$$name.wasm || exit 1; \
	done
	@for spec in $(call only,c,$(C_HTTP_PLUGINS)); do name=$${spec%%:*}; src=$${spec#*:}; \
		echo "  C       $$name (http-observer)"; \
		$(CLANG) $(C_FLAGS) -I $(C_HTTP_BINDINGS) $$src $(C_HTTP_BINDINGS)/http_observer.c \
			$(C_HTTP_BINDINGS)/http_observer_component_type.o -o $(LANG_OUT)/$$name.wasm || exit 1; \
	done
	@for spec in $(call only,python,$(PY_HTTP_PLUGINS)); do name=$${spec%%:*}; rest=$${spec#*:}; dir=$${rest%%:*}; module=$${rest#*:}; \
		echo "  Python  $$name (http-observer)"; \
		$(COMPONENTIZE_PY) -d wit -w http-observer componentize -p $$dir $$module -o $(LANG_OUT)/$$name.wasm >/dev/null || exit 1; \
	done
	@for spec in $(call only,js,$(JS_BATCH_PLUGINS)); do name=$${spec%%:*}; src=$${spec#*:}; \
		echo "  JS      $$name (batch-observer)"; \
		$(FROZEN) $(COMPONENTIZE_QJS) --sync --wit wit --world batch-observer --js $$src -o $(LANG_OUT)/$$name.wasm >/dev/null || exit 1; \
	done
	@for spec in $(call only,js,$(JS_BATCH_ONLY_PLUGINS)); do name=$${spec%%:*}; src=$${spec#*:}; \
		echo "  JS      $$name (batch-only-observer)"; \
		$(FROZEN) $(COMPONENTIZE_QJS) --sync --wit wit --world batch-only-observer --js $$src -o $(LANG_OUT)/$$name.wasm >/dev/null || exit 1; \
	done
	@for spec in $(call only,python,$(PY_BATCH_PLUGINS)); do name=$${spec%%:*}; rest=$${spec#*:}; dir=$${rest%%:*}; module=$${rest#*:}; \
		echo "  Python  $$name (batch-observer)"; \
		$(COMPONENTIZE_PY) -d wit -w batch-observer componentize -p $$dir $$module -o $(LANG_OUT)/$$name.wasm >/dev/null || exit 1; \
	done
	@for spec in $(call only,python,$(PY_PROJECTION_PLUGINS)); do name=$${spec%%:*}; rest=$${spec#*:}; dir=$${rest%%:*}; module=$${rest#*:}; \
		echo "  Python  $$name (projection)"; \
		$(COMPONENTIZE_PY) -d wit -w projection componentize -p $$dir $$module -o $(LANG_OUT)/$$name.wasm >/dev/null || exit 1; \
	done
	@for spec in $(call only,js,$(JS_STATE_PLUGINS)); do name=$${spec%%:*}; src=$${spec#*:}; \
		echo "  JS      $$name (stateful-batch-observer)"; \
		$(FROZEN) $(COMPONENTIZE_QJS) --sync --wit wit --world stateful-batch-observer --js $$src -o $(LANG_OUT)/$$name.wasm >/dev/null || exit 1; \
	done
	@for spec in $(call only,js,$(JS_PROJECTION_PLUGINS)); do name=$${spec%%:*}; src=$${spec#*:}; \
		echo "  JS      $$name (projection)"; \
		$(FROZEN) $(COMPONENTIZE_QJS) --sync --wit wit --world projection --js $$src -o $(LANG_OUT)/$$name.wasm >/dev/null || exit 1; \
	done

# Rebuilds every plugin from the same sources with the same pinned tools, in
# directories of its own, and checks the bytes are the same as `make plugins`
# made: a digest or a signature can then be checked against a rebuild.
# Rust in a second target directory (the same crate set: cargo unifies
# features across the crates of one build, so `-p one-plugin` alone may give
# other bytes), C and JavaScript into target/repro/lang. Python is not
# compared: componentize-py 0.25 writes the standard library into a temporary
# directory at build time and the pre-initialised interpreter it snapshots
# keeps those files' modification times (its import caches), so two builds
# differ in ~40 places (docs/trust.md says more; upstream: componentize-py#247).
REPRO := target/repro
reproducible-test: plugins
	@rm -rf $(REPRO) && mkdir -p $(REPRO)/lang
	RUSTFLAGS="$(PLUGIN_RUSTFLAGS)" CARGO_TARGET_DIR=$(REPRO)/rust $(CARGO) build -q --profile plugin --target wasm32-wasip2 $(PLUGIN_CRATES)
	@$(MAKE) -s lang-build LANG_OUT=$(REPRO)/lang LANGS="c js"
	@status=0; n=0; \
	for p in $(PLUGINS) $(FIXTURES) $(EXTRA_PLUGINS); do f=$$(echo $$p | tr - _).wasm; n=$$((n+1)); \
		if cmp -s $(WASM_OUT)/$$f $(REPRO)/rust/wasm32-wasip2/plugin/$$f; then echo "  same  $$(sha256sum < $(WASM_OUT)/$$f | cut -c1-16)  Rust $$p"; \
		else echo "  DIFFERENT  Rust $$p" >&2; status=1; fi; done; \
	for f in $(REPRO)/lang/*.wasm; do name=$$(basename $$f); n=$$((n+1)); \
		if cmp -s $$f $(TEST_WASM)/$$name; then echo "  same  $$(sha256sum < $$f | cut -c1-16)  $$name"; \
		else echo "  DIFFERENT  $$name" >&2; status=1; fi; done; \
	echo "reproducible: $$n plugins rebuilt (Python not compared: see the Makefile)"; exit $$status

DEMO_LOG := target/demo-log
demo: plugins
	@rm -rf $(DIST)/audit/events.jsonl $(DEMO_LOG)
	$(CARGO) run -q -p plugbus -- run --plugins $(DIST) --log $(DEMO_LOG) examples/agent-session.jsonl
	@echo; echo "audit log written by the audit-log plugin: $$(wc -l < $(DIST)/audit/events.jsonl) lines in $(DIST)/audit/events.jsonl"
	@echo; echo "event log ($(DEMO_LOG)):"; $(CARGO) run -q -p plugbus -- log stats --log $(DEMO_LOG)
	@echo; echo "dead letters (events that made a plugin fail hard; the plugins kept their state):"
	@$(CARGO) run -q -p plugbus -- dlq list --log $(DEMO_LOG)
	@echo; echo "the run as the agent-runs projection sees it, rebuilt from the event log (plugbus query):"
	@$(CARGO) run -q -p plugbus -- -q query --pretty --plugins $(DIST) --log $(DEMO_LOG) agent-runs '{"run": "run-42"}'
	@$(MAKE) -s python
	@echo; echo "a Python agent on the same plugins (examples/python-agent, the plugbus Python package):"
	$(PY_VENV)/bin/python examples/python-agent/agent.py $(DIST)

example: plugins
	$(CARGO) run -q -p agent-service -- $(DIST)

# An OpenTelemetry-instrumented agent (pydantic-ai) feeding `plugbus serve`
# over OTLP/HTTP, stopped by cost-tracker's budget (examples/otel-agent).
OTEL_EXAMPLE := target/otel-example
otel-example: plugins python
	rm -rf $(OTEL_EXAMPLE) && mkdir -p $(OTEL_EXAMPLE)/plugins
	cp $(DIST)/cost-tracker.wasm $(DIST)/agent-runs.wasm plugins/agent-runs/agent-runs.toml $(OTEL_EXAMPLE)/plugins/
	printf '[config]\nbudget_usd = "0.05"\nprices = %s\n' "'{\"test\": {\"input\": 200.0, \"output\": 800.0}}'" > $(OTEL_EXAMPLE)/plugins/cost-tracker.toml
	$(CARGO) build -q --bin plugbus
	target/debug/plugbus -q serve --plugins $(OTEL_EXAMPLE)/plugins --listen 127.0.0.1:7079 --otlp-listen 127.0.0.1:4319 & \
	  pid=$$!; trap "kill $$pid" EXIT; \
	  for i in $$(seq 600); do $(PY_VENV)/bin/python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:7079/readyz')" 2>/dev/null && break; sleep 0.1; done; \
	  $(PY_VENV)/bin/python examples/otel-agent/agent.py --plugbus http://127.0.0.1:7079 --otlp http://127.0.0.1:4319

lint: setup-rust
	$(CARGO) fmt --all --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --target wasm32-wasip2 $(PLUGIN_CRATES) -- -D warnings
	$(CARGO) clippy -p plugbus-python -- -D warnings

test: plugins lint setup-nats setup-minisign setup-registry reproducible-test
	$(CARGO) build --all-targets
	PLUGBUS_WASM_DIR=$(CURDIR)/$(TEST_WASM) PLUGBUS_BIN=$(CURDIR)/target/debug/plugbus $(CARGO) test
	@# The first-party plugins' and the SDK's http helper's own unit tests, natively.
	$(CARGO) test -q -p cost-tracker -p webhook-alert -p otlp-export -p plugbus-guest --features plugbus-guest/http
	$(MAKE) python-test
	$(MAKE) browser-test
	$(MAKE) interop-test

# The scale-out wire format spoken by a plain NATS client (nats-py) to a real
# `plugbus serve --nats` over a real nats-server; and the plugin artifacts a
# third-party OCI client (oras) pushes and pulls, on a real docker-registry.
interop-test: setup-nats setup-registry setup-python-pkg
	$(PY_VENV)/bin/mypy --strict tests/interop
	PLUGBUS_WASM_DIR=$(CURDIR)/$(TEST_WASM) PLUGBUS_BIN=$(CURDIR)/target/debug/plugbus $(PY_VENV)/bin/python -m pytest -q tests/interop

# The dashboard in headless Chromium against a real `plugbus serve`; leaves
# a screenshot in target/dashboard.png.
browser-test: setup-browser setup-python-pkg
	$(PY_VENV)/bin/mypy --strict tests/browser
	PLUGBUS_BIN=$(CURDIR)/target/debug/plugbus $(PY_VENV)/bin/python -m pytest -q tests/browser

# Benchmarks (not part of `make test`): ratios measured side by side in one
# run, on a release build. Results also go to target/bench.json.
BENCH_EVENTS ?= 20000
bench: plugins
	$(CARGO) run -q --release -p plugbus -- -q bench --plugins $(DIST) --events $(BENCH_EVENTS) --json target/bench.json

# Criterion benchmarks of the emit path (not part of `make test`): emit vs the
# mpsc floor, a plugin vs the native handler, recovery.
criterion: plugins
	$(CARGO) bench -p plugbus --bench emit

# Fuzzing (not part of `make test`): JSON Lines ingestion, the pattern parser,
# the manifest parser and plugin loading from arbitrary bytes, each for
# FUZZ_SECONDS from the committed seeds in host/fuzz/seeds, with a fixed seed.
# Needs the nightly toolchain; installs cargo-fuzz the first time.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := jsonl pattern manifest load
fuzz: setup-rust
	@cargo +nightly fuzz --help >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p target/fuzz-corpus/$$t; \
		echo "== fuzz $$t for $(FUZZ_SECONDS)s"; \
		(cd host && cargo +nightly fuzz run $$t ../target/fuzz-corpus/$$t fuzz/seeds/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -seed=1 -timeout=10 -print_final_stats=1) || exit 1; \
	done

clean:
	rm -rf $(DIST) $(TEST_WASM) $(C_BINDINGS) $(C_BATCH_BINDINGS) $(C_PROJECTION_BINDINGS)
	$(CARGO) clean
