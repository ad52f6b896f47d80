# The README's two set-up commands are `make install` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= host,onnx,litert,dev

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

test:
	$(BIN)/python -m pytest -q

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
