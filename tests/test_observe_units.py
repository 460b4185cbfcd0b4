"""Metrics layout, slots, folding and exposition; request ids; error-log formats (no processes)."""

from __future__ import annotations

import bisect
import json
import logging
from pathlib import Path

import pytest

from appliance.config import load
from appliance.config.loader import ConfigError
from appliance.observe import errorlog, prometheus, recorder, request_id
from appliance.observe import metrics as m
from appliance.observe.admin import unmapped
from appliance.shm import SharedRegion

BASE = """
[[listener]]
name = "http"
bind = "127.0.0.1:0"
[backend.app]
servers = ["127.0.0.1:9"]
[[vhost]]
name = "www"
[[vhost.route]]
backend = "app"
"""


def config(tmp_path: Path, extra: str = ""):
    path = tmp_path / "rproxy.toml"
    path.write_text(BASE + extra)
    return load(path)


@pytest.fixture
def region():
    region = SharedRegion.create(m.REGION_NAME, m.REGION_SIZE)
    yield region
    region.view.close()


def test_directory_is_append_only_and_survives_adoption(tmp_path: Path, region: SharedRegion) -> None:
    first = m.Directory(region).layout(config(tmp_path))
    second = m.Directory(region).layout(config(tmp_path, """
[[vhost]]
name = "api"
hosts = ["api.test"]
[[vhost.route]]
backend = "app"
"""))
    # A reload keeps every earlier series where it was, new ones come after.
    assert second.routes["www[0]"] == first.routes["www[0]"]
    assert second.routes["api[0]"] > max(first.routes.values())
    assert second.servers[("app", "127.0.0.1:9")] == first.servers[("app", "127.0.0.1:9")]
    # Another image (the in-place upgrade) reads the same directory from the region.
    assert m.Directory(region).entries == m.Directory(region).entries != []


def test_fold_keeps_counters_and_drops_gauges(tmp_path: Path, region: SharedRegion) -> None:
    board = m.MetricsBoard(region)
    layout = board.directory.layout(config(tmp_path))
    route, server = layout.routes["www[0]"], layout.servers[("app", "127.0.0.1:9")]
    for slot in (3, 7):
        board.clear(slot)
        cells = m.WorkerSlot(region, slot, layout).cells()
        cells[route + 2] += 5  # 2xx
        cells[server + m.S_IDLE] = 4  # a gauge
    board.fold(3)
    totals = board.totals([7])
    assert totals[route + 2] == 10  # the dead worker's 5 plus the live one's
    assert totals[server + m.S_IDLE] == 4  # only the live worker's gauge
    assert board.cell(3, route + 2) == 0  # the slot is clean for its next owner


def test_prometheus_histograms_are_cumulative(tmp_path: Path, region: SharedRegion) -> None:
    board = m.MetricsBoard(region)
    layout = board.directory.layout(config(tmp_path))
    cells = m.WorkerSlot(region, 0, layout).cells()
    base = layout.routes["www[0]"] + m.R_DURATION
    cells[base + m.bucket(0.0005)] += 1
    cells[base + m.bucket(0.2)] += 2
    cells[base + m.BUCKETS] += 400_500  # sum, microseconds
    text = prometheus.render(board.directory.entries, board.totals([0]))
    lines = [line for line in text.splitlines() if 'rule="www[0]"' in line and "duration" in line]
    assert 'rproxyd_request_duration_seconds_bucket{vhost="www",rule="www[0]",le="0.001"} 1' in lines
    assert 'rproxyd_request_duration_seconds_bucket{vhost="www",rule="www[0]",le="0.1"} 1' in lines
    assert 'rproxyd_request_duration_seconds_bucket{vhost="www",rule="www[0]",le="0.25"} 3' in lines
    assert 'rproxyd_request_duration_seconds_bucket{vhost="www",rule="www[0]",le="+Inf"} 3' in lines
    assert 'rproxyd_request_duration_seconds_sum{vhost="www",rule="www[0]"} 0.4005' in lines
    assert 'rproxyd_request_duration_seconds_count{vhost="www",rule="www[0]"} 3' in lines
    assert "# TYPE rproxyd_requests_total counter" in text


def test_label_values_are_escaped() -> None:
    assert m.labels(vhost='a"b\\c') == 'vhost="a\\"b\\\\c"'


def test_request_ids_are_unique_per_process_and_fixed_width() -> None:
    one, two = request_id.generator(), request_id.generator()
    ids = {one() for _ in range(1000)} | {two() for _ in range(1000)}
    assert len(ids) == 2000
    assert {len(i) for i in ids} == {32}
    assert request_id.never() is None


def test_request_id_counter_counts_in_hex_and_carries_into_the_next_digit() -> None:
    prefix = bytes(range(1, 9))
    ids = request_id.RequestIds(prefix, 0x09).next_id
    assert [ids() for _ in range(3)] == [b"0102030405060708" + b"%016x" % n for n in (0x09, 0x0a, 0x0b)]
    ids = request_id.RequestIds(prefix, 0x0fff).next_id
    assert ids()[16:] == b"0000000000000fff" and ids()[16:] == b"0000000000001000"
    # The counter's 64 bits wrap without touching the prefix.
    ids = request_id.RequestIds(prefix, 2**64 - 1).next_id
    assert ids() == b"0102030405060708ffffffffffffffff" and ids() == b"0102030405060708" + b"0" * 16


def test_error_log_formats_carry_the_request_id() -> None:
    record = logging.makeLogRecord({"msg": "backend %s: %s", "args": ("x", "refused"), "levelname": "WARNING",
                                    "name": "rproxyd.client", "request_id": "abc"})
    assert errorlog.formatter("text").format(record).endswith("backend x: refused request_id=abc")
    line = json.loads(errorlog.formatter("json").format(record))
    assert line["request_id"] == "abc" and line["message"] == "backend x: refused"
    assert line["level"] == "WARNING"


def test_unknown_access_log_field_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config(tmp_path, '[access_log]\nfields = ["status", "colour"]\n')
    assert "access_log.fields" in caught.value.problems[0] and "colour" in caught.value.problems[0]


def test_admin_sees_ipv4_clients_of_a_dual_stack_socket_by_their_ipv4_address() -> None:
    assert unmapped("::ffff:127.0.0.1") == "127.0.0.1"
    assert unmapped("::ffff:10.1.2.3") == "10.1.2.3"
    for other in ("::1", "2001:db8::1", "192.0.2.7", ""):
        assert unmapped(other) == other


@pytest.mark.parametrize("seconds", [0.0, 0.0005, 0.001, 0.0011, 0.03, 1.0, 29.9, 30.0, 31.0, 1e9])
def test_histogram_bucket_is_bisect_left_over_the_bounds(seconds):
    assert recorder._bucket(seconds) == bisect.bisect_left(m.BOUNDS, seconds)
