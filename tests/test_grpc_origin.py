"""The gRPC test origin and client (tests/support/grpc_origin.py) on their own, with no proxy: the
four call types, a failing call and a deadline, plaintext and TLS. The proxy tests
(test_grpc_proxy.py) rely on exactly these behaviours."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.support import free_port, wait_for
from tests.support.grpc_origin import FAIL_MESSAGE, METHODS, GrpcClient, GrpcOrigin
from tests.support.tls import Certs


@pytest.fixture(scope="module", params=["plaintext", "tls"])
def origin_client(request: pytest.FixtureRequest, certs: Certs,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GrpcOrigin, GrpcClient]]:
    tls = request.param == "tls"
    pem = Path(certs.path("a.test.pem"))  # key and chain in one file, as rproxyd reads them too
    origin = GrpcOrigin(free_port(), tmp_path_factory.mktemp("grpc") / "events.log",
                        *((pem, pem) if tls else ()))
    client = GrpcClient(origin.address, certs.ca.cert_pem.bytes() if tls else None, "a.test" if tls else None)
    yield origin, client
    client.channel.close()
    origin.stop()


def test_four_call_types(origin_client):
    _, client = origin_client
    answer, call = client.unary(b"hello")
    assert answer == b"hello"
    assert call.code() == grpc.StatusCode.OK
    assert ("x-origin", "grpc") in call.initial_metadata()
    assert ("x-trailer", "unary") in call.trailing_metadata()
    assert client.server_stream(5) == [b"0", b"1", b"2", b"3", b"4"]
    assert client.client_stream([b"a", b"b", b"c"]) == b"a|b|c"
    assert client.bidi([b"x", b"yz", b"w"]) == [b"X", b"YZ", b"W"]


def test_failing_call_carries_status_and_message(origin_client):
    _, client = origin_client
    with pytest.raises(grpc.RpcError) as failed:
        client.unary(b"", method="Fail")
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failed.value.details() == FAIL_MESSAGE


def test_deadline_cancels_the_sleeping_call(origin_client):
    origin, client = origin_client
    cancelled = origin.count("cancelled Sleep")
    with pytest.raises(grpc.RpcError) as failed:
        client.unary(b"30", method="Sleep", timeout=0.3)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The origin was told, not left sleeping 30 s.
    wait_for(lambda: origin.count("cancelled Sleep") > cancelled, 10, "the origin to see the deadline")


def test_cancel_reaches_the_sleeping_call(origin_client):
    origin, client = origin_client
    started, cancelled = origin.count("started Sleep"), origin.count("cancelled Sleep")
    call = client.channel.unary_unary(METHODS["Sleep"]).future(b"30")  # no deadline, no grpc-timeout
    wait_for(lambda: origin.count("started Sleep") > started, 10, "the origin to start the call")
    call.cancel()
    wait_for(lambda: origin.count("cancelled Sleep") > cancelled, 10, "the origin to see the cancel")
