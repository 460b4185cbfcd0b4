# Benchmarks (perf/README.md): rproxyd side by side with nginx and HAProxy on loopback.
# Included by the top Makefile; uses its $(VENV), $(BIN), $(STAMP), $(BUILD_INFO) and $(TICKET_CB).
BENCH_STAMP := $(VENV)/.bench-installed
# Extra options for perf/run, e.g. make bench PERF_ARGS='--scenarios small_get,get_1m --duration 3'
PERF_ARGS ?=

.PHONY: bench bench-quick bench-deps

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet --no-build-isolation -e '.[bench]'
	touch $(BENCH_STAMP)

## bench-deps: the project venv plus the `bench` extra (matplotlib)
bench-deps: $(BENCH_STAMP)

## bench: every scenario against nginx, HAProxy, rproxyd and the bare origin; rewrites perf/RESULTS.md,
## perf/results.json and perf/results.png (installs nginx, haproxy, wrk, h2load with apt-get if missing)
bench: $(BENCH_STAMP) $(BUILD_INFO) $(TICKET_CB)
	$(BIN)/python perf/run $(PERF_ARGS)

## bench-quick: smoke comparison of small GET and 1 MiB GET in under two minutes (output in perf/work/quick/)
bench-quick: $(BENCH_STAMP) $(BUILD_INFO) $(TICKET_CB)
	$(BIN)/python perf/run --quick $(PERF_ARGS)
