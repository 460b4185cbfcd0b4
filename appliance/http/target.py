"""Request targets and Host values: checked, and the path normalized before routing.

A Host (or the authority of an absolute-form target) may hold only what RFC 3986 allows
in a host and port: unreserved characters, sub-delims, `%`, `:` and the brackets of an
IPv6 literal. A space, `@` (userinfo, which RFC 9110 4.2.4 asks recipients to refuse),
`/`, `\\` or a control character gets 400 (nginx refuses such Hosts too), so no backend
or log sees a Host the proxy did not route by. A fragment (`#`) has no place in a
request target (RFC 9112 3.2): 400, as HAProxy answers.

The path (RFC 3986 6.2.2):

Routing on the raw path would let `/public/../admin` take the `/public/` rule while the
backend, which resolves the dot segments itself, serves `/admin`. So the path is
normalized first, and that normalized path is what rules match, rewrites see and the
backend receives: what was routed is what is served. The steps are those of HAProxy's
`normalize-uri` (percent-decode-unreserved, percent-to-uppercase, merge-slashes, dotdot):

- `%XX` of an unreserved character (letters, digits, `-._~`) is decoded; other escapes are
  kept and uppercased. `%2F` stays encoded: it is not a separator, for us or for HAProxy.
- Runs of `/` become one.
- `.` and `..` segments are resolved; a `..` above the root is refused (400), as nginx does.
"""

from __future__ import annotations

import re

HOST_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=%:[]"
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SLASHES = re.compile(rb"//+")
# One byte is looked for as its integer: `PERCENT in path` is one memchr, while `b"%" in path`
# first tries its operand as an integer and formats and clears a TypeError before the scan,
# several times the scan's cost (CPython's bytes.__contains__). Longer needles use find().
PERCENT, DOT, HASH = ord("%"), ord("."), ord("#")


class PathAboveRoot(ValueError):
    """A `..` segment climbed above `/`."""


# Hosts found valid: a worker sees a few, in nearly every request, and a set lookup costs
# a fifth of the scan (a deletion table built and a bytes object made per call). Bounded,
# cleared when full, for clients that make Hosts up.
_VALID_HOSTS: set[bytes] = set()
_VALID_HOSTS_MAX = 1024


def valid_host(host: bytes) -> bool:
    """Whether a Host value holds only characters a host and port may have."""
    if host in _VALID_HOSTS:
        return True
    if not host or host.translate(None, HOST_CHARS):
        return False
    if len(_VALID_HOSTS) >= _VALID_HOSTS_MAX:
        _VALID_HOSTS.clear()
    _VALID_HOSTS.add(host)
    return True


def _unescape_unreserved(match: re.Match[bytes]) -> bytes:
    octet = int(match[1], 16)
    return bytes((octet,)) if octet in _UNRESERVED else b"%" + match[1].upper()


def normalize_path(path: bytes) -> bytes:
    """The normalized form of an origin-form path (no query); PathAboveRoot if `..` escapes."""
    if PERCENT not in path and (DOT not in path or path.find(b"/.") < 0) and path.find(b"//") < 0:
        return path  # nearly every request: nothing to do, a few scans in C
    if PERCENT in path:
        path = _ESCAPE.sub(_unescape_unreserved, path)
    if path.find(b"//") >= 0:
        path = _SLASHES.sub(b"/", path)
    if path.find(b"/.") < 0:
        return path
    segments = path.split(b"/")  # segments[0] is the empty string before the leading "/"
    kept: list[bytes] = []
    for segment in segments[1:]:
        if segment == b"..":
            if not kept:
                raise PathAboveRoot(path)
            kept.pop()
        elif segment != b".":
            kept.append(segment)
    if segments[-1] in (b".", b".."):
        kept.append(b"")  # "/a/b/.." is the directory "/a/"
    return b"/" + b"/".join(kept)
