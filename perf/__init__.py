"""The rproxyd benchmark harness: `make bench` / `perf/run --help`."""
