"""Configuration: the shipped file, merging conf.d, and errors that name file, key and problem."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from appliance import __version__
from appliance.config import ConfigError, load, loader, schema
from appliance.config.values import parse_duration, parse_size
from tests.support import RPROXYD

REPO = Path(__file__).resolve().parent.parent
MINIMAL = """
[[listener]]
name = "http"
bind = "127.0.0.1:8080"

[backend.app]
servers = ["127.0.0.1:9000"]

[[vhost]]
name = "default"

[[vhost.route]]
backend = "app"
"""


def rproxyd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RPROXYD, *args], capture_output=True, text=True, timeout=30)


def test_shipped_config_is_valid():
    result = rproxyd("-t", "-c", str(REPO / "etc/rproxy/rproxy.toml"))
    assert result.returncode == 0, result.stderr
    assert "is OK" in result.stdout


def test_version():
    result = rproxyd("--version")
    # Then the build that runs (tests/test_build.py).
    assert result.returncode == 0 and result.stdout.startswith(f"rproxyd {__version__}, ")


def test_every_error_names_file_key_and_expectation(tmp_path):
    main = tmp_path / "rproxy.toml"
    main.write_text(MINIMAL + '\n[limits]\nheader_timeout = "ten seconds"\n')
    (tmp_path / "conf.d").mkdir()
    extra = tmp_path / "conf.d" / "20-backend.toml"
    extra.write_text('[backend.app]\nconections = 5\nservers = ["no-port"]\n')
    result = rproxyd("-t", "-c", str(main))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert f"rproxyd: {main}: limits.header_timeout: expected a duration" in lines[2] or any(
        line.startswith(f"rproxyd: {main}: limits.header_timeout: expected a duration") for line in lines
    )
    assert any(line.startswith(f"rproxyd: {extra}: backend.app.conections: unknown key (did you mean "
                               "'connections'?)") for line in lines)
    assert any(line.startswith(f"rproxyd: {extra}: backend.app.servers: expected \"host:port\"")
               for line in lines)
    assert lines[-1] == f"rproxyd: configuration {main} test failed"


def test_cross_reference_errors(tmp_path):
    main = tmp_path / "rproxy.toml"
    main.write_text(MINIMAL.replace('backend = "app"', 'backend = "missing"')
                    + '\n[limits]\nwrite_low_watermark = "1m"\n')
    with pytest.raises(ConfigError) as caught:
        load(main)
    problems = caught.value.problems
    assert f"{main}: vhost[0].route[0].backend: no backend named 'missing' (known: app)" in problems
    assert f"{main}: limits.write_low_watermark: must be smaller than write_high_watermark" in problems


def test_trace_in_methods_needs_allow_trace(tmp_path):
    main = tmp_path / "rproxy.toml"
    main.write_text(MINIMAL.replace('backend = "app"', 'backend = "app"\nmethods = ["GET", "TRACE"]'))
    with pytest.raises(ConfigError) as caught:
        load(main)
    assert caught.value.problems == [
        f"{main}: vhost[0].route[0].methods: TRACE is listed but allow_trace is false (TRACE is refused "
        "with 405 unless allow_trace = true)"]


def test_upgrade_refuses_h2c_and_bad_tokens(tmp_path):
    main = tmp_path / "rproxy.toml"
    route = 'backend = "app"\nupgrade = ["websocket", "H2C", "Bad Token"]'
    main.write_text(MINIMAL.replace('backend = "app"', route))
    with pytest.raises(ConfigError) as caught:
        load(main)
    assert caught.value.problems == [
        f"{main}: vhost[0].route[0].upgrade: h2c is never forwarded: it would let a client speak HTTP/2 "
        "straight to the backend, past the proxy's rules",
        f"{main}: vhost[0].route[0].upgrade: expected lower-case protocol names such as \"websocket\", "
        "got 'Bad Token'"]


def test_missing_file_and_syntax_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "absent.toml")
    broken = tmp_path / "rproxy.toml"
    broken.write_text("[[listener]\n")
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load(broken)


def test_conf_d_merges_in_name_order(tmp_path):
    main = tmp_path / "rproxy.toml"
    main.write_text(MINIMAL + "\n[limits]\nmax_pending = 10\n")
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "20-b.toml").write_text("[limits]\nmax_pending = 30\n")
    (conf_d / "10-a.toml").write_text(
        '[limits]\nmax_pending = 20\nmax_body_bytes = "2m"\n'
        '[[listener]]\nname = "alt"\nbind = "127.0.0.1:8081"\n'
    )
    (conf_d / "ignored.conf").write_text("not toml at all [")
    config = load(main)
    assert config.limits.max_pending == 30
    assert config.limits.max_body_bytes == 2 * 1024 * 1024
    assert [listener.name for listener in config.listener] == ["http", "alt"]


@pytest.mark.parametrize(("raw", "seconds"), [(10, 10.0), ("500ms", 0.5), ("2m", 120.0), ("1.5s", 1.5)])
def test_durations(raw, seconds):
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize(("raw", "size"), [(8192, 8192), ("16k", 16384), ("1m", 1048576), ("1g", 1024**3)])
def test_sizes(raw, size):
    assert parse_size(raw) == size


def test_address_already_in_use_is_refused(tmp_path):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        main = tmp_path / "rproxy.toml"
        main.write_text(MINIMAL.replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
        result = rproxyd("-c", str(main))
    assert result.returncode != 0
    assert f"listener http: cannot bind 127.0.0.1:{port}: Address already in use" in result.stderr


def test_every_problem_in_one_pass(tmp_path):
    """Type errors, references, regexes, TLS files, paths and ALPN all show in one `-t` run."""
    main = tmp_path / "rproxy.toml"
    main.write_text(MINIMAL.replace('backend = "app"', 'backend = "missing"\nmatch = "regex"\npath = "(("')
                    .replace('bind = "127.0.0.1:8080"', 'bind = "127.0.0.1:8080"\n'
                             'tls = { alpn = ["h3", "http/1.1"] }')
                    .replace('name = "default"', f'name = "default"\ncertificate = "{tmp_path}/absent.pem"')
                    + '\n[[vhost]]\nname = "second"\n'  # no route: the vhost is still checked
                    + '\n[limits]\nkeepalive_timeout = true\n')
    result = rproxyd("-t", "-c", str(main))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    expected = [
        f"{main}: limits.keepalive_timeout: expected a duration such as 10, \"10s\" or \"500ms\", got true",
        f"{main}: vhost[1].route: required key is missing (array of tables)",
        f"{main}: vhost[0].route[0].backend: no backend named 'missing' (known: app)",
        f"{main}: vhost[0].route[0].path: invalid regular expression: ",
        f"{main}: vhost[0].certificate: cannot read certificate {tmp_path}/absent.pem: No such file",
        f"{main}: listener[0].tls.alpn: unknown protocol 'h3'; expected h2, http/1.1, http/1.0",
    ]
    for start in expected:
        assert any(line.startswith(f"rproxyd: {start}") for line in lines), (start, lines)
    # The missing route is reported once, not again by the rule that a vhost needs one.
    assert sum("vhost[1].route" in line for line in lines) == 1, lines
    assert lines[-1] == f"rproxyd: configuration {main} test failed"


def test_every_kind_of_key_says_what_it_got():
    """A wrong value of any kind (true included: bools are ints in Python) is quoted back."""
    builder = loader._Builder(loader._Origins())
    kinds = {**loader._SCALARS, schema.TABLE: None, schema.TABLE_ARRAY: None, schema.TABLE_MAP: None}
    for kind in kinds:
        meta = {"kind": kind, "item": schema.LogConfig, "minimum": None, "maximum": None, "choices": None}
        for wrong in (True, 2.5, "wrong"):
            builder.problems.clear()
            if builder.value(meta, wrong, ("key",)) is loader._INVALID:
                assert builder.problems and "got " in builder.problems[0], (kind, wrong, builder.problems)


def test_unopenable_log_files_fail_the_check_and_the_start(tmp_path):
    missing = tmp_path / "no-such-dir"
    main = tmp_path / "rproxy.toml"
    main.write_text(MINIMAL.replace("127.0.0.1:8080", "127.0.0.1:0") + f"""
[log]
file = "{missing}/err.log"

[access_log]
enabled = true
file = "{tmp_path}"

[process]
runtime_dir = "{main}/run"
""")
    expected = [
        f"rproxyd: {main}: log.file: cannot create {missing}/err.log: directory {missing} does not exist",
        f"rproxyd: {main}: access_log.file: {tmp_path} is a directory",
        f"rproxyd: {main}: process.runtime_dir: cannot create {main}/run: {main} is not a directory",
    ]
    checked = rproxyd("-t", "-c", str(main))
    assert checked.returncode == 1
    assert checked.stderr.splitlines() == [*expected, f"rproxyd: configuration {main} test failed"]
    started = rproxyd("-c", str(main))
    assert started.returncode == 1
    assert started.stderr.splitlines() == expected  # one line each, no traceback
    # The default runtime directory is named as such, with what decides it.
    main.write_text(MINIMAL)
    result = subprocess.run([RPROXYD, "-t", "-c", str(main)], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "RUNTIME_DIRECTORY": f"{main}/run"})
    assert result.returncode == 1
    assert (f"process.runtime_dir: cannot create {main}/run: {main} is not a directory (the default: "
            "$RUNTIME_DIRECTORY, else /run/rproxyd; set [process] runtime_dir") in result.stderr


def test_syslog_address_that_cannot_be_used_fails_the_check(tmp_path):
    main = tmp_path / "rproxy.toml"
    config = MINIMAL + """
[access_log]
enabled = true
destination = "syslog"
syslog_address = "{}"
"""
    for address, problem in [
        ("no-such-host.invalid:514", "cannot resolve 'no-such-host.invalid:514'"),
        ("localhost", "expected a unix socket path or host:port"),
    ]:
        main.write_text(config.format(address))
        checked = rproxyd("-t", "-c", str(main))
        assert checked.returncode == 1
        assert f"access_log.syslog_address: {problem}" in checked.stderr
        assert "Traceback" not in checked.stderr
    for usable in ("127.0.0.1:514", "/dev/log"):
        main.write_text(config.format(usable))
        assert rproxyd("-t", "-c", str(main)).returncode == 0


def test_proxy_protocol_listener_needs_narrow_trusted_proxies(tmp_path):
    main = tmp_path / "rproxy.toml"
    listener = MINIMAL.replace('bind = "127.0.0.1:8080"', 'bind = "127.0.0.1:8080"\nproxy_protocol = true')
    expected = {
        "": "it covers every address of a family (the default covers all)",  # the default: everyone
        '[proxy]\ntrusted_proxies = ["10.0.0.0/8", "::/0"]': "it covers every address of a family",
        "[proxy]\ntrusted_proxies = []": "it is empty, so every connection would be refused",
    }
    for proxy, problem in expected.items():
        main.write_text(listener + "\n" + proxy + "\n")
        with pytest.raises(ConfigError) as caught:
            load(main)
        [message] = caught.value.problems
        assert message.startswith(f"{main}: listener[0].proxy_protocol: needs [proxy] trusted_proxies ")
        assert problem in message
    main.write_text(listener + '\n[proxy]\ntrusted_proxies = ["10.0.0.0/8"]\n')
    assert load(main).listener[0].proxy_protocol
    main.write_text(MINIMAL.replace('servers = ["127.0.0.1:9000"]', 'servers = ["127.0.0.1:9000"]\n'
                                    'proxy_protocol = "v3"'))
    with pytest.raises(ConfigError) as caught:
        load(main)
    assert caught.value.problems == [
        f"{main}: backend.app.proxy_protocol: expected one of off, v1, v2, got 'v3'"]
