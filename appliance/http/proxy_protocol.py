"""The PROXY protocol, v1 and v2 (haproxy.org/download/1.8/doc/proxy-protocol.txt): pure functions.

`parse` reads a header from the first bytes of a connection, incrementally: given the bytes
received so far it returns how many more are needed at least (an int), or the header
(`ProxyHeader`, whose `length` says how many bytes it took: what follows is the client's),
or raises `ProxyHeaderError`. It is strict where other implementations shipped bugs:
nothing but a header may start the stream, a v1 line must end in CRLF within 107 bytes,
a v2 LOCAL command keeps the real peer whatever addresses it carries, the v2 address
block may be followed by TLVs (its length is a minimum, not an exact size), and a v2
header is bounded by MAX_V2_LENGTH, not by 108 or by what one read returned.
An int result always means every byte given is part of the header, so a reader may
consume them all and never take a byte of what follows.

`encode_v1` and `encode_v2` write the header this proxy sends to a backend.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # bytes of the longest v1 line, CRLF included
V2_FIXED = 16  # signature, version/command, family/protocol, length
# Address block and TLVs of a v2 header, at most. The spec allows 65535; senders in front of
# a proxy (HAProxy, AWS NLB, GCP, Azure) send a few hundred bytes at most, and a peer that
# sends more is holding memory of ours it has no use for.
MAX_V2_LENGTH = 4096
MAX_HEADER = V2_FIXED + MAX_V2_LENGTH

# v2 commands, families and TLV types.
_LOCAL, _PROXY = 0x20, 0x21
_INET, _INET6 = 0x1, 0x2
_STREAM = 0x1
_INET_BLOCK, _INET6_BLOCK = 12, 36
TLV_ALPN, TLV_AUTHORITY, TLV_CRC32C, TLV_NOOP, TLV_UNIQUE_ID, TLV_SSL = 0x01, 0x02, 0x03, 0x04, 0x05, 0x20
SSL_VERSION, SSL_CN = 0x21, 0x22
MAX_UNIQUE_ID = 128  # the spec's bound

Address = tuple[str, int]


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY header (the connection is closed)."""


@dataclass(frozen=True, slots=True)
class SslInfo:
    """The v2 SSL TLV: what the sender knew of the client's TLS connection."""

    client: int  # PP2_CLIENT_SSL (1), PP2_CLIENT_CERT_CONN (2), PP2_CLIENT_CERT_SESS (4) bits
    verified: bool  # the sender verified the client certificate
    version: str | None
    cn: str | None


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    version: int  # 1 or 2
    length: int  # bytes the header took
    # The client's address and the one it connected to; None: use the real connection's
    # (v1 UNKNOWN, v2 LOCAL, v2 UNSPEC or UNIX family).
    source: Address | None
    destination: Address | None
    alpn: bytes | None = None
    authority: str | None = None
    unique_id: bytes | None = None
    ssl: SslInfo | None = None


def parse(data: bytes) -> ProxyHeader | int:
    """The header at the start of `data`, or how many more bytes it needs at least."""
    if data[:1] == b"P" or not data:
        prefix = data[:len(V1_PREFIX)]
        if prefix != V1_PREFIX[:len(prefix)]:
            raise ProxyHeaderError("not a PROXY header")
        return _parse_v1(data)
    prefix = data[:len(V2_SIGNATURE)]
    if prefix != V2_SIGNATURE[:len(prefix)]:
        raise ProxyHeaderError("not a PROXY header")
    return _parse_v2(data)


def _parse_v1(data: bytes) -> ProxyHeader | int:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError(f"v1 line without CRLF in its first {V1_MAX} bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyHeaderError("v1 line with a bare CR or LF")
        return len(b"PROXY UNKNOWN\r\n") - len(data) if len(data) < 15 else 1
    line = data[len(V1_PREFIX):end]
    if b"\n" in line or b"\r" in line:
        raise ProxyHeaderError("v1 line with a bare CR or LF")
    if line == b"UNKNOWN" or line.startswith(b"UNKNOWN "):
        # The spec: whatever follows UNKNOWN is ignored, the real connection's addresses apply.
        return ProxyHeader(1, end + 2, None, None)
    fields = line.split(b" ")
    if len(fields) != 5 or fields[0] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("v1 line is not TCP4|TCP6 src dst sport dport")
    family = 4 if fields[0] == b"TCP4" else 6
    source = (_v1_ip(fields[1], family), _v1_port(fields[3]))
    destination = (_v1_ip(fields[2], family), _v1_port(fields[4]))
    return ProxyHeader(1, end + 2, source, destination)


def _v1_ip(text: bytes, family: int) -> str:
    try:
        ip = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError(f"v1 address {text[:45]!r} is not an IP address") from None
    if ip.version != family or b"%" in text:  # an IPv6 scope names an interface of the sender's
        raise ProxyHeaderError(f"v1 address {text.decode()} is not an IPv{family} address")
    return str(ip)


def _v1_port(text: bytes) -> int:
    # Decimal, 0..65535, no sign, no leading zero (int() alone would take "+1", " 1", "1_0").
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0") or int(text) > 65535:
        raise ProxyHeaderError(f"v1 port {text[:8]!r} is not a port number")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader | int:
    if len(data) < V2_FIXED:
        return V2_FIXED - len(data)
    command, family_protocol, length = data[12], data[13], int.from_bytes(data[14:16], "big")
    if command not in (_LOCAL, _PROXY):
        raise ProxyHeaderError(f"v2 version/command byte {command:#04x} is not 0x20 or 0x21")
    if length > MAX_V2_LENGTH:
        raise ProxyHeaderError(f"v2 header of {V2_FIXED + length} bytes, more than {MAX_HEADER}")
    if len(data) < V2_FIXED + length:
        return V2_FIXED + length - len(data)
    body = data[V2_FIXED:V2_FIXED + length]
    family, protocol = family_protocol >> 4, family_protocol & 0xF
    source = destination = None
    block = 0
    if family == _INET:
        block = _INET_BLOCK
    elif family == _INET6:
        block = _INET6_BLOCK
    elif family == 3:
        block = 216  # AF_UNIX: two 108-byte paths
    elif family != 0:
        raise ProxyHeaderError(f"v2 address family {family} is unknown")
    if protocol > 2:
        raise ProxyHeaderError(f"v2 transport protocol {protocol} is unknown")
    # A minimum, not an exact size: TLVs follow the addresses.
    if len(body) < block:
        raise ProxyHeaderError(f"v2 address block of {len(body)} bytes, family {family} needs {block}")
    if command == _PROXY and family in (_INET, _INET6):
        if protocol != _STREAM:
            raise ProxyHeaderError("v2 header for a datagram or unspecified protocol on a stream")
        size = 4 if family == _INET else 16
        ip_type = ipaddress.IPv4Address if family == _INET else ipaddress.IPv6Address
        source_port, destination_port = struct.unpack_from("!HH", body, 2 * size)
        source = (str(ip_type(body[:size])), source_port)
        destination = (str(ip_type(body[size:2 * size])), destination_port)
    # LOCAL (a health check of the sender's, say): the real connection's addresses, whatever
    # the block says; UNSPEC and UNIX: no IP address to use, the same.
    alpn, authority, unique_id, ssl = _tlvs(body[block:])
    return ProxyHeader(2, V2_FIXED + length, source, destination, alpn, authority, unique_id, ssl)


def _tlv_list(data: bytes) -> list[tuple[int, bytes]]:
    tlvs = []
    at = 0
    while at < len(data):
        if at + 3 > len(data):
            raise ProxyHeaderError("v2 TLV cut short")
        kind, size = data[at], int.from_bytes(data[at + 1:at + 3], "big")
        if at + 3 + size > len(data):
            raise ProxyHeaderError(f"v2 TLV {kind:#04x} of {size} bytes overruns the header")
        tlvs.append((kind, data[at + 3:at + 3 + size]))
        at += 3 + size
    return tlvs


def _tlvs(data: bytes) -> tuple[bytes | None, str | None, bytes | None, SslInfo | None]:
    alpn = authority = unique_id = ssl = None
    for kind, value in _tlv_list(data):
        if kind == TLV_ALPN:
            alpn = value
        elif kind == TLV_AUTHORITY:
            authority = _text(value, "authority")
        elif kind == TLV_UNIQUE_ID:
            if len(value) > MAX_UNIQUE_ID:
                raise ProxyHeaderError(f"v2 unique id of {len(value)} bytes, more than {MAX_UNIQUE_ID}")
            unique_id = value
        elif kind == TLV_SSL:
            ssl = _ssl(value)
        # Others (CRC32C, NOOP, NETNS, a sender's own such as AWS's 0xEA) are skipped.
    return alpn, authority, unique_id, ssl


def _ssl(value: bytes) -> SslInfo:
    if len(value) < 5:
        raise ProxyHeaderError("v2 SSL TLV shorter than its 5 fixed bytes")
    version = cn = None
    for kind, sub in _tlv_list(value[5:]):
        if kind == SSL_VERSION:
            version = _text(sub, "SSL version")
        elif kind == SSL_CN:
            cn = _text(sub, "SSL CN")
    return SslInfo(value[0], int.from_bytes(value[1:5], "big") == 0, version, cn)


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ProxyHeaderError(f"v2 {what} TLV is not UTF-8") from None


IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _same_family(source: Address, destination: Address) -> tuple[IP, IP]:
    """Both addresses as one family: IPv4 mapped into IPv6 when the other one is IPv6."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        src, dst = (ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a for a in (src, dst))
    return src, dst


def encode_v1(source: Address | None, destination: Address | None) -> bytes:
    """A v1 line; UNKNOWN when an address is unknown (a Unix socket peer)."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = _same_family(source, destination)
    return b"PROXY TCP%d %s %s %d %d\r\n" % (src.version, str(src).encode(), str(dst).encode(),
                                             source[1], destination[1])


def encode_v2(source: Address | None, destination: Address | None) -> bytes:
    """A v2 header with no TLVs; LOCAL when an address is unknown (and for health checks)."""
    if source is None or destination is None:
        return V2_SIGNATURE + bytes((_LOCAL, 0)) + b"\x00\x00"
    src, dst = _same_family(source, destination)
    family = _INET if src.version == 4 else _INET6
    block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return V2_SIGNATURE + bytes((_PROXY, family << 4 | _STREAM)) + struct.pack("!H", len(block)) + block
