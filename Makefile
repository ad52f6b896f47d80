# The README's two set-up commands are `make install` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= host,onnx,litert,dev,torch

.PHONY: install system-deps test lint bench demo clean

install: system-deps $(BIN)/edgeship

system-deps:
	@if ! command -v mosquitto >/dev/null 2>&1 || ! command -v mosquitto_passwd >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing mosquitto (needed by the tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; \
	  else \
	    echo "mosquitto is missing: install it with 'sudo apt-get install mosquitto mosquitto-clients'" >&2; exit 1; \
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
