# The README's two set-up commands are `make install` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# tensorflow: ~1.5 GB, but it installs in ~15 s from a wheel cache and its tests take ~30 s, so CI
# runs the Keras tests with the rest (docs/formats.md has the figures).
EXTRAS ?= host,onnx,litert,dev,torch,tensorflow

.PHONY: install system-deps test lint bench demo clean

install: system-deps $(BIN)/edgeship

system-deps:
	@if ! command -v mosquitto >/dev/null 2>&1 || ! command -v mosquitto_passwd >/dev/null 2>&1 \
	    || [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null 2>&1 \
	    || ! command -v systemd-analyze >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing mosquitto, openssh and systemd-analyze (needed by the tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients openssh-server openssh-client systemd >/dev/null; \
	  else \
	    echo "a test dependency is missing: install it with 'sudo apt-get install mosquitto mosquitto-clients openssh-server openssh-client systemd'" >&2; exit 1; \
	  fi; \
	fi

$(BIN)/edgeship: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	@touch $@

# `make test`: the suite (pytest leaves tests/arm out unless asked for it by path), then the
# emulated-ARM scenarios (docs/arm64.md) when this machine can run them: root, and qemu
# enabled in binfmt_misc. Under CI (CI=true) they always run, so a CI run where an
# emulated device cannot be prepared fails.
test:
	$(BIN)/python -m pytest -q
	@if [ "$${CI:-}" = "true" ]; then \
	  $(MAKE) --no-print-directory test-arm; \
	elif why=$$($(BIN)/python -m devices.emulation check 2>&1); then \
	  $(MAKE) --no-print-directory test-arm; \
	else \
	  echo "*** the emulated ARM scenarios (tests/arm) did NOT run: $$why"; \
	  echo "*** they need root: run 'sudo make test-arm' (docs/arm64.md); CI always runs them"; \
	fi

.PHONY: test-arm
test-arm:
	$(BIN)/python -m pytest -q tests/arm

# `make fuzz`: every fuzz target (fuzz/README.md) for FUZZ_SECONDS seconds each; prints the
# executions and findings per target and fails on any finding.
FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz:
	$(BIN)/python -m fuzz.run --seconds $(FUZZ_SECONDS)

# `make crash`: SIGKILL an install or rollback at every file operation, 240 runs (`make test`
# runs 40); prints the outcomes per kill point and writes bench-results/crash.json.
CRASH_RUNS ?= 240
.PHONY: crash
crash:
	EDGESHIP_CRASH_RUNS=$(CRASH_RUNS) $(BIN)/python -m pytest -q -s \
	  tests/reliability/test_crash_consistency.py

# `make soak`: the local inference API under concurrent load for SOAK_SECONDS seconds; prints
# requests/s, latency percentiles, errors and the agent's memory growth, writes
# bench-results/soak.json, and fails on any error (`make test` runs an 8 s version); then the
# agent -> broker -> fleet monitor path through SOAK_OUTAGES broker kills (`make test`: 4).
SOAK_SECONDS ?= 60
SOAK_OUTAGES ?= 30
.PHONY: soak
soak:
	$(BIN)/python -m benchmarks.soak --seconds $(SOAK_SECONDS)
	EDGESHIP_BROKER_OUTAGES=$(SOAK_OUTAGES) $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/reliability/test_broker_faults.py

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy runtime devices packager

bench:
	$(BIN)/python -m benchmarks

demo:
	$(BIN)/edgeship demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
