# The two commands of the README:
#   make demo   set up, build the plugins, replay a sample agent session through them
#   make test   set up, build the plugins, lint, and run every test
# Everything they need is installed by `make setup` (the wasm32-wasip2 target,
# clippy, rustfmt); the Rust toolchain itself comes from rustup.

CARGO    ?= cargo
PLUGINS  := cost-tracker audit-log console-logger token-counter misbehave
FIXTURES := wrong-world
DIST     := plugins/dist
WASM_OUT := target/wasm32-wasip2/plugin
TEST_WASM := target/plugbus-test-wasm
MANIFESTS := plugins/cost-tracker/cost-tracker.toml plugins/audit-log/audit-log.toml

.PHONY: demo test setup plugins lint example bench fuzz clean

setup:
	@command -v $(CARGO) >/dev/null || { echo "plugbus: cargo not found: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

# Builds every plugin for wasm32-wasip2 and installs the first-party ones
# (with their manifests) into plugins/dist, the fixtures into target/.
plugins: setup
	$(CARGO) build --profile plugin --target wasm32-wasip2 $(addprefix -p ,$(PLUGINS) $(FIXTURES))
	@mkdir -p $(DIST) $(TEST_WASM)
	@for p in $(PLUGINS); do cp $(WASM_OUT)/$$(echo $$p | tr - _).wasm $(DIST)/$$p.wasm; done
	@for p in $(PLUGINS) $(FIXTURES); do cp $(WASM_OUT)/$$(echo $$p | tr - _).wasm $(TEST_WASM)/$$p.wasm; done
	@cp $(MANIFESTS) $(DIST)/
	@ls -l $(DIST)/*.wasm

demo: plugins
	@rm -f $(DIST)/audit/events.jsonl
	$(CARGO) run -q -p plugbus -- run --plugins $(DIST) examples/agent-session.jsonl
	@echo; echo "audit log written by the audit-log plugin: $$(wc -l < $(DIST)/audit/events.jsonl) lines in $(DIST)/audit/events.jsonl"

example: plugins
	$(CARGO) run -q -p agent-service -- $(DIST)

lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --target wasm32-wasip2 $(addprefix -p ,$(PLUGINS) $(FIXTURES)) -- -D warnings

test: plugins lint
	$(CARGO) build --all-targets
	PLUGBUS_WASM_DIR=$(CURDIR)/$(TEST_WASM) PLUGBUS_BIN=$(CURDIR)/target/debug/plugbus $(CARGO) test

# Benchmarks (not part of `make test`): ratios measured side by side in one
# run, on a release build. Results also go to target/bench.json.
BENCH_EVENTS ?= 20000
bench: plugins
	$(CARGO) run -q --release -p plugbus -- -q bench --plugins $(DIST) --events $(BENCH_EVENTS) --json target/bench.json

# Fuzzing (not part of `make test`): JSON Lines ingestion, the pattern parser,
# the manifest parser and plugin loading from arbitrary bytes, each for
# FUZZ_SECONDS from the committed seeds in host/fuzz/seeds, with a fixed seed.
# Needs the nightly toolchain; installs cargo-fuzz the first time.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := jsonl pattern manifest load
fuzz: setup
	@cargo +nightly fuzz --help >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p target/fuzz-corpus/$$t; \
		echo "== fuzz $$t for $(FUZZ_SECONDS)s"; \
		(cd host && cargo +nightly fuzz run $$t ../target/fuzz-corpus/$$t fuzz/seeds/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -seed=1 -timeout=10 -print_final_stats=1) || exit 1; \
	done

clean:
	rm -rf $(DIST) $(TEST_WASM)
	$(CARGO) clean
