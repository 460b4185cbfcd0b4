"""gRPC rules in isolation (appliance/http/grpc.py): the content-type test, grpc-timeout, and the
trailers-only responses for the proxy's failures."""

from __future__ import annotations

import urllib.parse

import pytest

from appliance.http import errors, grpc


@pytest.mark.parametrize(("content_type", "expected"), [
    (b"application/grpc", True),
    (b"application/grpc+proto", True),
    (b"application/grpc+json", True),
    (b"Application/GRPC", True),  # media types are case-insensitive
    (b"application/grpc; charset=utf-8", True),
    (b"application/grpc;x=1", True),
    (b"application/grpc-web", False),  # gRPC-Web is another protocol
    (b"application/grpc-web+proto", False),
    (b"application/grpcx", False),
    (b"application/json", False),
    (b"application/grp", False),
    (b"", False),
    (None, False),
])
def test_is_grpc(content_type, expected):
    assert grpc.is_grpc(content_type) is expected


@pytest.mark.parametrize(("value", "seconds"), [
    (b"1H", 3600.0),
    (b"2M", 120.0),
    (b"30S", 30.0),
    (b"250m", 0.25),
    (b"1500u", 0.0015),
    (b"99999999n", 0.099999999),
    (b"0S", 0.0),  # a deadline already past
    (b"00000010S", 10.0),  # 8 digits, leading zeros allowed by the grammar
])
def test_parse_timeout(value, seconds):
    assert grpc.parse_timeout(value, cap=3600.0) == pytest.approx(seconds)


def test_parse_timeout_is_capped():
    # A client's deadline shortens the proxy's wait, never lengthens it.
    assert grpc.parse_timeout(b"99999999H", cap=60.0) == 60.0
    assert grpc.parse_timeout(b"61S", cap=60.0) == 60.0
    assert grpc.parse_timeout(b"59S", cap=60.0) == 59.0


@pytest.mark.parametrize("value", [
    b"", b"S", b"1", b"10", b"123456789S",  # no digits, no unit, 9 digits
    b"1s", b"1h", b"1x", b"1 S", b" 1S", b"-1S", b"+1S", b"1.5S", b"1_0S",
    b"\xd9\xa1S",  # an Arabic-Indic one: not an ASCII digit
    b"1SS",
])
def test_parse_timeout_refuses_malformed(value):
    with pytest.raises(grpc.MalformedTimeout):
        grpc.parse_timeout(value, cap=60.0)


@pytest.mark.parametrize(("text", "encoded"), [
    ("", b""),
    ("backend down", b"backend down"),
    ("100% sure", b"100%25 sure"),
    ("a\r\nb", b"a%0D%0Ab"),
    ("tilde~ and \x7f", b"tilde~ and %7F"),
    ("caf\u00e9", b"caf%C3%A9"),
])
def test_encode_message(text, encoded):
    assert grpc.encode_message(text) == encoded
    # Decoding is plain percent-decoding of UTF-8, as gRPC clients do it.
    assert urllib.parse.unquote(encoded.decode("ascii")) == text


@pytest.mark.parametrize(("failure", "status"), [
    (errors.BackendRefused("connect refused"), grpc.UNAVAILABLE),
    (errors.BackendUnavailable("all servers down"), grpc.UNAVAILABLE),
    (errors.PendingTimeout("queued too long"), grpc.UNAVAILABLE),
    (errors.BackendTimeout("read timeout"), grpc.DEADLINE_EXCEEDED),
    (errors.BadBackendResponse("garbage"), grpc.INTERNAL),
    (errors.NoRoute(), grpc.UNIMPLEMENTED),
    (errors.CertificateRequired(), grpc.UNAUTHENTICATED),
    (errors.PhaseFailed("request_filter"), grpc.INTERNAL),
    (errors.ClientFault("bad header"), grpc.INTERNAL),  # 400, by the HTTP mapping
    (errors.HeadTooLarge(), grpc.UNKNOWN),  # 431: not in the mapping
    (errors.MethodNotAllowed({b"GET"}), grpc.UNKNOWN),
])
def test_status_for_failure(failure, status):
    assert grpc.status_for_failure(failure) == status


@pytest.mark.parametrize(("http_status", "status"), [
    (400, grpc.INTERNAL),
    (401, grpc.UNAUTHENTICATED),
    (403, grpc.PERMISSION_DENIED),
    (404, grpc.UNIMPLEMENTED),
    (429, grpc.UNAVAILABLE),
    (502, grpc.UNAVAILABLE),
    (503, grpc.UNAVAILABLE),
    (504, grpc.UNAVAILABLE),
    (500, grpc.UNKNOWN),
    (418, grpc.UNKNOWN),
])
def test_status_for_http(http_status, status):
    # grpc/grpc doc/http-grpc-status-mapping.md, for responses a phase generates itself.
    assert grpc.status_for_http(http_status) == status


def test_failure_headers_are_trailers_only():
    headers = grpc.failure_headers(errors.BackendUnavailable("all servers of backend x are down"))
    assert headers == [(b"content-type", b"application/grpc"), (b"grpc-status", b"14"),
                       (b"grpc-message", b"Service Unavailable")]
    # Built once per failure class; the detail (server names) never reaches the client.
    assert grpc.failure_headers(errors.BackendUnavailable("other detail")) is headers
    assert grpc.failure_headers(errors.BackendTimeout())[1] == (b"grpc-status", b"4")
    assert grpc.failure_headers(errors.NoRoute())[2] == (b"grpc-message", b"Not Found")


def test_trailers_only_encodes_the_message():
    content_type = (b"content-type", b"application/grpc")
    assert grpc.trailers_only(grpc.PERMISSION_DENIED, "100% denied\n") == [
        content_type, (b"grpc-status", b"7"), (b"grpc-message", b"100%25 denied%0A")]
    assert grpc.trailers_only(grpc.UNKNOWN) == [content_type, (b"grpc-status", b"2")]


def test_status_headers_for_a_phase_answer():
    """A phase's own answer to a gRPC call: its HTTP status by gRPC's mapping, built once per
    status; a status Python has no name for still gets a message."""
    assert grpc.status_headers(429) == [(b"content-type", b"application/grpc"), (b"grpc-status", b"14"),
                                        (b"grpc-message", b"Too Many Requests")]
    assert grpc.status_headers(429) is grpc.status_headers(429)
    assert grpc.status_headers(299)[1:] == [(b"grpc-status", b"2"), (b"grpc-message", b"HTTP status 299")]


def test_failure_trailers_leave_out_the_content_type():
    trailers = grpc.failure_trailers(errors.BackendTimeout("slow"))
    assert trailers == [(b"grpc-status", b"4"), (b"grpc-message", b"Gateway Timeout")]


@pytest.mark.parametrize(("headers", "expected"), [
    ([(b"content-type", b"application/grpc"), (b"Grpc-Status", b"7")], True),
    ([(b"content-type", b"application/json")], False),
    ([], False),
])
def test_has_status(headers, expected):
    assert grpc.has_status(headers) is expected
