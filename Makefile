# rproxyd: `make run` starts the proxy in front of a demo origin; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= etc/rproxy/rproxy.toml
ORIGIN_PORT ?= 8081
STAMP := $(VENV)/.installed
# The C session-ticket callback; appliance/tls/tickets.py falls back to ctypes without it.
TICKET_CB := appliance/tls/_ticketkeys.so

.PHONY: run test lint docs venv clean system-deps

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || bash .ci/system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

$(TICKET_CB): appliance/tls/ticketkeys.c
	$(CC) -O2 -Wall -Wextra -Werror -fPIC -shared -o $@ $< -lssl -lcrypto

## run: the proxy on 127.0.0.1:8080 in front of the demo origin on 127.0.0.1:8081 (Ctrl-C stops both)
# rproxyd itself logs "serving on http://..." once its listeners are bound and its workers
# serve; a failure to bind is its last word. Its status.json goes to .run/ (not the
# /run/rproxyd of an installed service), which `rproxyd --reload PID` finds the same way.
run: $(STAMP)
	@$(MAKE) -s $(TICKET_CB) 2>/dev/null || echo "no C compiler or libssl-dev: using the ctypes ticket callback"
	@$(BIN)/python -m appliance.demo_origin --port $(ORIGIN_PORT) & origin=$$!; \
	trap 'kill $$origin 2>/dev/null' EXIT INT TERM; \
	echo "starting rproxyd -c $(CONFIG) (Ctrl-C stops it and the demo origin)"; \
	RUNTIME_DIRECTORY=$(CURDIR)/.run $(BIN)/rproxyd -c $(CONFIG)

## test: system tools, lint, then the whole suite against real processes on loopback
test: system-deps $(STAMP) $(TICKET_CB) lint
	$(BIN)/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

## system-deps: the Debian packages the tests drive (curl, openssl, nginx) and the C callback's compiler
## and libssl headers, via apt when root
system-deps:
	bash .ci/system-deps

lint: $(STAMP)
	$(BIN)/ruff check appliance tests perf etc/rproxy/phases
	$(BIN)/python -m appliance.config.docs --check docs/configuration.md

## docs: regenerate docs/configuration.md from the schema
docs: $(STAMP)
	$(BIN)/python -m appliance.config.docs > docs/configuration.md

clean:
	rm -rf $(VENV) .run .pytest_cache .ruff_cache build *.egg-info $(TICKET_CB)

# Feature areas keep their targets beside their code.
-include perf/perf.mk
-include packaging/deb.mk
