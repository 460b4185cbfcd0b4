# rproxyd: `make run` starts the proxy in front of a demo origin; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= etc/rproxy/rproxy.toml
ORIGIN_PORT ?= 8081
STAMP := $(VENV)/.installed
# The C TLS callbacks: session tickets (appliance/tls/tickets.py falls back to ctypes without
# it) and OCSP stapling (appliance/tls/stapling.py; no stapling without it).
TICKET_CB := appliance/tls/_ticketkeys.so appliance/tls/_ocspstaple.so
BUILD_LIST := appliance/_build_modules.txt
BUILD_INFO := appliance/_build_info.json
COMPILED_MODULES := $(shell sed -e 's/\#.*//' $(BUILD_LIST) 2>/dev/null)
COMPILED_SOURCES := $(COMPILED_MODULES) $(wildcard $(COMPILED_MODULES:.py=.pxd))
# The C bindings setup.py also compiles, in both builds (the HTTP/2 session, libnghttp2; TCP_CORK).
BINDING_SOURCES := $(wildcard appliance/h2/*.pyx appliance/h2/*.pxd appliance/http/*.pyx)
# What building the compiled modules needs besides the venv: a C compiler, Python's headers and
# libnghttp2's (the HTTP/2 binding is compiled in both builds).
HAS_COMPILER := command -v cc >/dev/null && test -e /usr/include/nghttp2/nghttp2.h && $(PYTHON) -c \
    'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
    2>/dev/null
# The suite's core files, which CI also runs on the pure-Python build (RPROXYD_PURE=1): the
# request path, pipelining, request smuggling, stale backend connections, phases, configuration,
# tunnels, the PROXY protocol, HTTP/2 from clients, idle connections (compacted, detached) and
# the corked last response.
PURE_CORE_TESTS := tests/test_proxy_basics.py tests/test_proxy_errors.py tests/test_routing.py \
    tests/test_stale_connections.py tests/test_phases_wiring.py tests/test_config.py tests/test_build.py \
    tests/test_tunnels.py tests/test_proxy_protocol.py tests/test_h2_clients.py tests/test_h2_attacks.py \
    tests/test_idle_compaction.py tests/test_close_units.py
PYTEST := $(BIN)/python -m pytest -n 2 --dist loadfile

.PHONY: run test test-pure lint docs venv compiled clean system-deps

# The venv also gets the build requirements (Cython, pinned in pyproject.toml), for the
# compiled request path below; the editable install then builds with them, not in a copy.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null && $(HAS_COMPILER) || bash .ci/system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $$($(BIN)/python -c 'import tomllib; \
	    print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"])')
	$(BIN)/pip install --quiet --no-build-isolation -e '.[test]'
	touch $(STAMP)

venv: $(STAMP) $(BUILD_INFO)

# The compiled request path: setup.py compiles the modules $(BUILD_LIST) lists with Cython into
# extension modules beside their .py files, in place, and records them in $(BUILD_INFO)
# (appliance/build.py picks the build at run time; RPROXYD_PURE=1 picks the .py files).
# Rebuilt when a listed module, its .pxd, the list, a binding or setup.py changes.
$(BUILD_INFO): $(STAMP) setup.py $(BUILD_LIST) $(COMPILED_SOURCES) $(BINDING_SOURCES)
	$(BIN)/python setup.py --quiet build_ext --inplace --parallel 2

compiled: $(BUILD_INFO)

appliance/tls/_%.so: appliance/tls/%.c
	$(CC) -O2 -Wall -Wextra -Werror -fPIC -shared -o $@ $< -lssl -lcrypto

## run: the proxy on 127.0.0.1:8080 in front of the demo origin on 127.0.0.1:8081 (Ctrl-C stops both)
# rproxyd itself logs "serving on http://..." once its listeners are bound and its workers
# serve; a failure to bind is its last word. Its status.json goes to .run/ (not the
# /run/rproxyd of an installed service), which `rproxyd --reload PID` finds the same way.
run: $(STAMP) $(BUILD_INFO)
	@$(MAKE) -s $(TICKET_CB) 2>/dev/null || echo "no C compiler or libssl-dev: using the ctypes ticket callback"
	@$(BIN)/rproxyd --version
	@$(BIN)/python -m appliance.demo_origin --port $(ORIGIN_PORT) & origin=$$!; \
	trap 'kill $$origin 2>/dev/null' EXIT INT TERM; \
	echo "starting rproxyd -c $(CONFIG) (Ctrl-C stops it and the demo origin)"; \
	RUNTIME_DIRECTORY=$(CURDIR)/.run $(BIN)/rproxyd -c $(CONFIG)

## test: system tools, lint, the whole suite on the compiled build, then its core files on the
## pure-Python build (test-pure), against real processes on loopback
test: system-deps $(STAMP) $(BUILD_INFO) $(TICKET_CB) lint
	$(PYTEST) $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-pure

## test-pure: the core test files on the pure-Python build (RPROXYD_PURE=1)
test-pure: $(STAMP) $(BUILD_INFO) $(TICKET_CB)
	RPROXYD_PURE=1 $(PYTEST) $(PURE_CORE_TESTS)

## system-deps: the Debian packages the tests drive (curl, openssl, nginx), the C compiler with
## libssl's and Python's headers (the ticket callback, the compiled request path), via apt when root
system-deps:
	bash .ci/system-deps

lint: $(STAMP)
	$(BIN)/ruff check appliance tests perf etc/rproxy/phases setup.py
	$(BIN)/python -m appliance.config.docs --check docs/configuration.md

## docs: regenerate docs/configuration.md from the schema
docs: $(STAMP)
	$(BIN)/python -m appliance.config.docs > docs/configuration.md

clean:
	rm -rf $(VENV) .run .pytest_cache .ruff_cache build *.egg-info $(TICKET_CB) $(BUILD_INFO)
	rm -f $(COMPILED_MODULES:.py=.c) $(wildcard $(COMPILED_MODULES:.py=.cpython-*.so))

# Feature areas keep their targets beside their code.
-include perf/perf.mk
-include packaging/deb.mk
