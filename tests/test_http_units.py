"""Request-target rules in isolation: path normalization and Host characters (appliance/http/target.py)."""

from __future__ import annotations

import pytest

from appliance.http.target import PathAboveRoot, normalize_path, valid_host


@pytest.mark.parametrize(("raw", "normalized"), [
    (b"/", b"/"),
    (b"/a/b", b"/a/b"),
    (b"/.well-known/x", b"/.well-known/x"),  # a dot that starts a name is no dot segment
    (b"/a/./b", b"/a/b"),
    (b"/a/b/..", b"/a/"),
    (b"/a/b/.", b"/a/b/"),
    (b"/a/../../", None),
    (b"/..", None),
    (b"/a//b///c", b"/a/b/c"),
    (b"/a.b//c", b"/a.b/c"),  # a dot and no dot segment: the slashes still merged
    (b"/index.html", b"/index.html"),
    (b"/%61%2D%7e", b"/a-~"),  # unreserved escapes decoded
    (b"/a%2fb%3a", b"/a%2Fb%3A"),  # others kept, uppercased: %2F is no separator
    (b"/a/%2e%2E/b", b"/b"),
    (b"/a/%2e%2e%2fb", b"/a/..%2Fb"),  # one segment named "..%2Fb"
    (b"/a%zz", b"/a%zz"),  # not an escape: left alone
    (b"*", b"*"),
])
def test_normalize_path(raw, normalized):
    if normalized is None:
        with pytest.raises(PathAboveRoot):
            normalize_path(raw)
    else:
        assert normalize_path(raw) == normalized


def test_a_path_with_nothing_to_normalize_is_returned_as_is():
    path = b"/api/v1/items/42"
    assert normalize_path(path) is path  # the fast path: no copy


@pytest.mark.parametrize(("host", "valid"), [
    (b"example.com", True),
    (b"example.com:8080", True),
    (b"[2001:db8::1]:443", True),
    (b"xn--bcher-kva.example", True),
    (b"under_score.internal", True),
    (b"", False),
    (b"a b", False),
    (b"a/b", False),
    (b"user@host", False),
    (b"a\\b", False),
    (b"a\x00b", False),
    (b"a\"b", False),
])
def test_valid_host(host, valid):
    assert valid_host(host) is valid
