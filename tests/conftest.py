"""Shared fixtures: demo origins, test certificates and a factory for rproxyd instances."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import Origin, Proxy, free_port, proxy_config
from tests.support.tls import Certs, make_certs
from tests.support_proc import demo_origin


@pytest.fixture(scope="session")
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def origin_port() -> Iterator[int]:
    """The port of a bundled demo origin (appliance/demo_origin.py) in its own process, one per module."""
    with demo_origin() as port:
        yield port


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A test CA and the certificates it signed (tests/support/tls.py), made once per module."""
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def origins() -> Iterator[dict[str, Origin]]:
    """Three demo origins named a, b and c (their X-Origin header says which answered)."""
    servers = {name: Origin(name) for name in ("a", "b", "c")}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def make_proxy(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    """Start rproxyd with proxy_config(**options); every proxy is stopped after the test."""
    started: list[Proxy] = []

    def start(**options: object) -> Proxy:
        port = free_port()
        directory = tmp_path / f"proxy{len(started)}"
        directory.mkdir()
        proxy = Proxy(directory, proxy_config(port, **options), port, workers=int(options.get("workers", 1)))
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
        # No input may crash a worker: a traceback in the log is a failure of any test.
        assert "Traceback" not in proxy.log(), proxy.log()
