"""The PROXY protocol parser and encoders (appliance/http/proxy_protocol.py), on bytes.

Each case of the list of bugs other implementations shipped (docs/proxy-protocol.md) has
its test here; tests/test_proxy_protocol.py sends the same headers to a running rproxyd.
"""

from __future__ import annotations

import socket
import struct

import pytest

from appliance.http.proxy_protocol import (
    MAX_HEADER,
    MAX_V2_LENGTH,
    V1_MAX,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    SslInfo,
    encode_v1,
    encode_v2,
    parse,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def tlv(kind: int, value: bytes) -> bytes:
    return bytes((kind,)) + struct.pack("!H", len(value)) + value


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes((command, family)) + struct.pack("!H", len(body)) + body


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def fed_byte_by_byte(data: bytes) -> ProxyHeader:
    """Parse as a reader would: every prefix short of the header asks for more, never too much."""
    for end in range(len(data)):
        needed = parse(data[:end])
        assert isinstance(needed, int) and needed >= 1, (end, needed)
    result = parse(data)
    assert isinstance(result, ProxyHeader)
    return result


def test_v1_tcp4_tcp6_and_the_request_in_the_same_read():
    line = b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\n"
    header = fed_byte_by_byte(line)
    assert (header.version, header.length, header.source, header.destination) == (
        1, len(line), ("203.0.113.7", 4242), ("192.0.2.1", 443))
    six = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n"
    header = parse(six + REQUEST)
    assert header.length == len(six) and header.source == ("2001:db8::7", 65535)
    assert header.destination == ("2001:db8::1", 0)


def test_v1_unknown_keeps_the_real_peer():
    for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"):
        header = parse(line + REQUEST)
        assert (header.source, header.destination, header.length) == (None, None, len(line))


def test_v1_longest_line_and_one_byte_more():
    six = b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    longest = b"PROXY UNKNOWN %s %s 65535 65535\r\n" % (six, six)  # the spec's worst case
    assert len(longest) == V1_MAX
    assert parse(longest).length == V1_MAX
    # squid PR 342: a line with no CRLF must end the header, not overrun a buffer.
    with pytest.raises(ProxyHeaderError, match="without CRLF"):
        parse(b"PROXY TCP4 " + b"1" * (V1_MAX - 11))
    assert parse(b"PROXY TCP4 " + b"1" * (V1_MAX - 12)) == 1  # one byte short of the limit: wait


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\n",  # bare LF
    b"PROXY TCP4 203.0.113.7 192.0.2.1 4242\r443\r\n",  # bare CR
    b"PROXY TCP4 203.0.113.7 192.0.2.1 4242  443\r\n",  # two spaces
    b"PROXY TCP4 203.0.113.7 192.0.2.1 4242\r\n",  # a field missing
    b"PROXY TCP4 2001:db8::7 192.0.2.1 4242 443\r\n",  # IPv6 under TCP4
    b"PROXY TCP6 203.0.113.7 2001:db8::1 4242 443\r\n",  # IPv4 under TCP6
    b"PROXY TCP6 fe80::1%eth0 2001:db8::1 4242 443\r\n",  # a scope
    b"PROXY TCP4 203.0.113.07 192.0.2.1 4242 443\r\n",  # leading zero in the address
    b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 443\r\n",  # port out of range
    b"PROXY TCP4 203.0.113.7 192.0.2.1 04242 443\r\n",  # leading zero in the port
    b"PROXY TCP4 203.0.113.7 192.0.2.1 +4242 443\r\n",
    b"PROXY UDP4 203.0.113.7 192.0.2.1 4242 443\r\n",
    b"proxy TCP4 203.0.113.7 192.0.2.1 4242 443\r\n",
])
def test_v1_strict(line):
    with pytest.raises(ProxyHeaderError):
        parse(line)


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00", b"X", b"PROXX",
                                  b"\r\n\r\n\x00\r\nQUIX"])
def test_anything_else_is_refused_from_its_first_bytes(data):
    with pytest.raises(ProxyHeaderError, match="not a PROXY header"):
        parse(data)


def test_v2_inet_and_inet6_with_the_request_in_the_same_read():
    header = v2(0x21, 0x11, inet("203.0.113.7", "192.0.2.1", 4242, 443))
    result = fed_byte_by_byte(header)
    assert (result.version, result.source) == (2, ("203.0.113.7", 4242))
    assert result.destination == ("192.0.2.1", 443)
    six = v2(0x21, 0x21, bytes(15) + b"\x07" + bytes(15) + b"\x01" + struct.pack("!HH", 1, 2))
    result = parse(six + REQUEST)
    assert (result.source, result.destination, result.length) == (("::7", 1), ("::1", 2), len(six))


def test_v2_local_keeps_the_real_peer_even_with_addresses():
    # sozu PR 1334: a LOCAL command carrying INET addresses let clients spoof their source.
    result = parse(v2(0x20, 0x11, inet("203.0.113.7", "192.0.2.1", 4242, 443)))
    assert (result.source, result.destination) == (None, None)
    assert parse(v2(0x20, 0x00, b"")).source is None


def test_v2_unspec_and_unix_families_keep_the_real_peer():
    assert parse(v2(0x21, 0x00, b"")).source is None
    assert parse(v2(0x21, 0x31, bytes(216))).source is None


def test_v2_tlvs_longer_than_108_bytes_with_the_request_in_the_same_read():
    ssl = tlv(0x20, b"\x07" + b"\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3") + tlv(0x22, b"client.example")
              + tlv(0x23, b"TLS_AES_128_GCM_SHA256"))
    tlvs = (tlv(0x01, b"http/1.1") + tlv(0x02, b"shop.example") + tlv(0x05, b"u" * 128)
            + tlv(0x04, b"\x00" * 20) + tlv(0xEA, b"\x01vpce-0123456789abcdef") + ssl)
    header = v2(0x21, 0x11, inet("203.0.113.7", "192.0.2.1", 4242, 443) + tlvs)
    # trafficserver 12191 (over 108 bytes) and PR 12141 (the request in the same read).
    assert len(header) > 108
    result = parse(header + REQUEST)
    assert result.length == len(header) and result.source == ("203.0.113.7", 4242)
    assert (result.alpn, result.authority, result.unique_id) == (b"http/1.1", "shop.example", b"u" * 128)
    assert result.ssl == SslInfo(client=7, verified=True, version="TLSv1.3", cn="client.example")
    assert fed_byte_by_byte(header).authority == "shop.example"


def test_v2_address_length_is_a_minimum_not_an_exact_size():
    # p2pool PR 399: an exact addr_len check rejected valid TLVs.
    result = parse(v2(0x21, 0x11, inet("203.0.113.7", "192.0.2.1", 1, 2) + tlv(0x04, b"")))
    assert result.source == ("203.0.113.7", 1)
    with pytest.raises(ProxyHeaderError, match="address block"):
        parse(v2(0x21, 0x11, inet("203.0.113.7", "192.0.2.1", 1, 2)[:11]))


@pytest.mark.parametrize("header, message", [
    (v2(0x22, 0x11, inet("1.2.3.4", "1.2.3.5", 1, 2)), "command"),
    (v2(0x11, 0x11, inet("1.2.3.4", "1.2.3.5", 1, 2)), "command"),
    (v2(0x21, 0x12, inet("1.2.3.4", "1.2.3.5", 1, 2)), "datagram"),
    (v2(0x21, 0x41, inet("1.2.3.4", "1.2.3.5", 1, 2)), "family"),
    (v2(0x21, 0x11, inet("1.2.3.4", "1.2.3.5", 1, 2) + b"\x01\x00"), "cut short"),
    (v2(0x21, 0x11, inet("1.2.3.4", "1.2.3.5", 1, 2) + b"\x01\x00\x09abc"), "overruns"),
    (v2(0x21, 0x11, inet("1.2.3.4", "1.2.3.5", 1, 2) + tlv(0x05, bytes(129))), "unique id"),
    (v2(0x21, 0x11, inet("1.2.3.4", "1.2.3.5", 1, 2) + tlv(0x20, b"\x01")), "SSL TLV"),
    (v2(0x21, 0x11, inet("1.2.3.4", "1.2.3.5", 1, 2) + tlv(0x02, b"\xff")), "UTF-8"),
])
def test_v2_strict(header, message):
    with pytest.raises(ProxyHeaderError, match=message):
        parse(header)


def test_v2_length_is_capped_before_the_body_arrives():
    prefix = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_LENGTH + 1)
    with pytest.raises(ProxyHeaderError, match="more than"):
        parse(prefix)
    assert parse(V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_LENGTH)) == MAX_V2_LENGTH
    assert MAX_HEADER == 16 + MAX_V2_LENGTH


@pytest.mark.parametrize("encode", [encode_v1, encode_v2])
def test_encoders_round_trip(encode):
    for source, destination in [(("203.0.113.7", 4242), ("192.0.2.1", 443)),
                                (("2001:db8::7", 1), ("2001:db8::1", 2))]:
        result = parse(encode(source, destination))
        assert (result.source, result.destination) == (source, destination)
    # Mixed families (a PROXY-received IPv6 client on an IPv4 listener): IPv4-mapped IPv6.
    result = parse(encode(("2001:db8::7", 1), ("192.0.2.1", 80)))
    assert result.source == ("2001:db8::7", 1) and result.destination == ("::ffff:c000:201", 80)
    # No client address: UNKNOWN / LOCAL, the receiver keeps the real peer.
    assert parse(encode(None, None)).source is None
