"""Request-target rules in isolation: path normalization and Host characters (appliance/http/target.py);
header names' actions as the parsers look them up (appliance/http/headers.py)."""

from __future__ import annotations

import pytest

from appliance.http import headers as hdr
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
    assert valid_host(host) is valid  # the second time from the remembered Hosts, if valid


def test_valid_hosts_are_remembered_boundedly_and_invalid_ones_never():
    from appliance.http import target
    for n in range(target._VALID_HOSTS_MAX + 10):
        assert valid_host(b"h%d.example" % n)
        assert not valid_host(b"h%d example" % n)
    assert 0 < len(target._VALID_HOSTS) <= target._VALID_HOSTS_MAX
    assert not any(b" " in host for host in target._VALID_HOSTS)


@pytest.mark.parametrize(("name", "action"), [
    (b"Host", hdr.REQ_HOST),
    (b"hOsT", hdr.REQ_HOST),
    (b"CONTENT-LENGTH", hdr.REQ_CONTENT_LENGTH),
    (b"X-Forwarded-For", hdr.REQ_FORWARDED_FOR),
    (b"X_Forwarded_Proto", hdr.REQ_DROP),  # an underscore spelling of a header the proxy sets
    (b"X-SSL-Client-Verify", hdr.REQ_DROP),  # X-SSL-*: our own TLS session's, a client's is a spoof
    (b"x_ssl-client-s-dn", hdr.REQ_DROP),
    (b"User-Agent", hdr.REQ_FORWARD),
])
def test_request_header_actions_in_any_spelling_are_remembered_as_sent(name, action):
    hdr.REQUEST_NAME_ACTIONS.pop(name, None)
    assert hdr.request_action(name) == action
    assert hdr.REQUEST_NAME_ACTIONS[name] == action  # the next field of that name: one lookup


@pytest.mark.parametrize(("name", "action"), [
    (b"Content-Length", hdr.RESP_CONTENT_LENGTH),
    (b"CONNECTION", hdr.RESP_CONNECTION),
    (b"Keep-Alive", hdr.RESP_DROP),
    (b"ETag", hdr.RESP_FORWARD),
])
def test_response_header_actions_in_any_spelling_are_remembered_as_sent(name, action):
    hdr.RESPONSE_NAME_ACTIONS.pop(name, None)
    assert hdr.response_action(name) == action
    assert hdr.RESPONSE_NAME_ACTIONS[name] == action


def test_the_remembered_names_stay_bounded():
    # Names are the peers' to choose: a flood of new ones must not grow the table without end.
    for i in range(3 * hdr.NAME_TABLE_SIZE):
        hdr.request_action(b"X-Name-%d" % i)
        hdr.response_action(b"X-Name-%d" % i)
        assert len(hdr.REQUEST_NAME_ACTIONS) <= hdr.NAME_TABLE_SIZE
        assert len(hdr.RESPONSE_NAME_ACTIONS) <= hdr.NAME_TABLE_SIZE
    assert hdr.request_action(b"Host") == hdr.REQ_HOST  # still answered after a clear


@pytest.mark.parametrize(("value", "options"), [
    (b"close", (True, False, None)),
    (b"keep-alive", (False, True, None)),
    (b"Close", (True, False, None)),
    (b"Keep-Alive, X-Secret", (False, True, {b"x-secret"})),
    (b"close,keep-alive", (True, True, None)),
    (b" , ", (False, False, None)),
], ids=["close", "keep-alive", "other-case", "with-a-name", "both", "empty-list"])
def test_connection_options(value, options):
    assert hdr.connection_options(value) == options


def test_every_response_action_name_has_its_length_flagged():
    # response_name_action forwards a name of an unflagged length without looking it up: a
    # name in RESPONSE_ACTIONS whose length were not flagged would pass as if it had no action.
    flagged = {size for size, flag in enumerate(hdr.RESPONSE_ACTION_LENGTHS) if flag}
    assert flagged == {len(name) for name in hdr.RESPONSE_ACTIONS}
    assert not hdr.RESPONSE_ACTION_LENGTHS[len(b"content-type")]  # the common headers skip the table
