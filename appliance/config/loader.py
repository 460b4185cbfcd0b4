"""Read rproxy.toml plus conf.d/*.toml, validate, and build a Config.

Merge rules (documented in docs/configuration.md):
- files are read main file first, then conf.d/*.toml in name order;
- tables merge key by key, and a later file's value replaces an earlier one's;
- arrays of tables ([[listener]], [[vhost]]) are concatenated.

Every error names the file that set the key, the dotted key path and what was
expected. All errors are collected, not just the first, so `rproxyd -t` can
report them all at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.config import schema
from appliance.config.rewrite import expand_template
from appliance.config.values import (
    given,
    parse_address,
    parse_cpu_list,
    parse_duration,
    parse_network,
    parse_server,
    parse_size,
    parse_worker_count,
)
from appliance.process.plan import slot_cpus

DEFAULT_PATH = Path("/etc/rproxy/rproxy.toml")


class ConfigError(Exception):
    """One or more problems in the configuration files."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Origins:
    """Remembers which file set each key path, for error messages."""

    def __init__(self) -> None:
        self._by_path: dict[tuple[str | int, ...], Path] = {}

    def record(self, path: tuple[str | int, ...], source: Path) -> None:
        self._by_path[path] = source

    def find(self, path: tuple[str | int, ...]) -> Path | None:
        while True:
            if path in self._by_path:
                return self._by_path[path]
            if not path:
                return None
            path = path[:-1]


def _dotted(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(top level)"


def _merge(
    into: dict[str, Any], new: dict[str, Any], source: Path,
    origins: _Origins, path: tuple[str | int, ...],
) -> None:
    for name, value in new.items():
        here = (*path, name)
        old = into.get(name)
        if isinstance(value, dict) and isinstance(old, dict):
            _merge(old, value, source, origins, here)
        elif isinstance(value, list) and isinstance(old, list) and _is_table_array(value):
            start = len(old)
            old.extend(value)
            for offset, item in enumerate(value):
                _record_all(item, source, origins, (*here, start + offset))
        else:
            into[name] = value
            _record_all(value, source, origins, here)


def _is_table_array(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(item, dict) for item in value)


def _record_all(value: Any, source: Path, origins: _Origins, path: tuple[str | int, ...]) -> None:
    origins.record(path, source)
    if isinstance(value, dict):
        for name, item in value.items():
            _record_all(item, source, origins, (*path, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _record_all(item, source, origins, (*path, index))


def config_files(main: Path) -> list[Path]:
    """The main file, then conf.d/*.toml beside it in name order."""
    conf_d = main.parent / "conf.d"
    extra = sorted(conf_d.glob("*.toml")) if conf_d.is_dir() else []
    return [main, *extra]


class _Builder:
    """Converts the merged raw tree into schema dataclasses, collecting problems."""

    def __init__(self, origins: _Origins) -> None:
        self.origins = origins
        self.problems: list[str] = []
        self._reported: set[tuple[str | int, ...]] = set()
        self.checking = False  # set once the tree is built and the cross-key rules run

    def problem(self, path: tuple[str | int, ...], message: str, several: bool = False) -> None:
        """Report a problem; `several`: one of several a check found at the same key."""
        if self.checking and path in self._reported and not several:
            return  # a rule spanning keys adds nothing about a key already reported wrong
        self._reported.add(path)
        source = self.origins.find(path)
        where = f"{source}: " if source else ""
        self.problems.append(f"{where}{_dotted(path)}: {message}")

    def table(self, cls: type, raw: Any, path: tuple[str | int, ...],
              extra: dict[str, Any] | None = None) -> Any:
        if not isinstance(raw, dict):
            self.problem(path, f"expected a table, got {given(raw)}")
            return _INVALID
        values: dict[str, Any] = dict(extra or {})
        declared = {schema.key_name(f): f for f in dataclasses.fields(cls) if "kind" in f.metadata}
        for name in raw:
            if name not in declared:
                hint = _suggest(name, declared)
                self.problem((*path, name), f"unknown key{hint}")
        failed = False
        for name, spec in declared.items():
            if spec.name in values:
                continue
            meta = spec.metadata
            if name not in raw:
                if meta["required"]:
                    self.problem((*path, name), f"required key is missing ({meta['kind']})")
                    value = _INVALID
                elif meta["kind"] == schema.TABLE:
                    value = self.table(meta["item"], {}, (*path, name))
                else:
                    continue  # the dataclass default applies
            else:
                value = self.value(meta, raw[name], (*path, name))
            if value is not _INVALID:
                values[spec.name] = value
            elif meta["required"] and meta["kind"] in _EMPTY:
                values[spec.name] = _EMPTY[meta["kind"]]()
            elif meta["required"]:
                failed = True
            # Otherwise the key keeps its default. Either way the table is built, so the
            # rules spanning keys (references, TLS files, paths) still run and `rproxyd -t`
            # reports every problem in one pass; only a required scalar leaves nothing to build.
        return _INVALID if failed else cls(**values)

    def value(self, meta: Any, raw: Any, path: tuple[str | int, ...]) -> Any:
        kind = meta["kind"]
        try:
            if kind == schema.TABLE:
                return self.table(meta["item"], raw, path)
            if kind == schema.TABLE_ARRAY:
                if not isinstance(raw, list) or not all(isinstance(i, dict) for i in raw):
                    raise ValueError(f"expected an array of tables ([[name]] sections), got {given(raw)}")
                # An entry too broken to build stays as None, so the others keep their index.
                return [_built(self.table(meta["item"], item, (*path, i))) for i, item in enumerate(raw)]
            if kind == schema.TABLE_MAP:
                if not isinstance(raw, dict):
                    raise ValueError(f"expected a table of named tables ([name.NAME] sections), "
                                     f"got {given(raw)}")
                return {n: _built(self.table(meta["item"], item, (*path, n))) for n, item in raw.items()}
            value = _SCALARS[kind](raw)
        except ValueError as exc:
            self.problem(path, str(exc))
            return _INVALID
        return self.bounds(meta, value, path)

    def bounds(self, meta: Any, value: Any, path: tuple[str | int, ...]) -> Any:
        if meta["minimum"] is not None and value < meta["minimum"]:
            self.problem(path, f"expected at least {meta['minimum']}, got {value}")
            return _INVALID
        if meta["maximum"] is not None and value > meta["maximum"]:
            self.problem(path, f"expected at most {meta['maximum']}, got {value}")
            return _INVALID
        if meta["choices"] is not None and value not in meta["choices"]:
            self.problem(path, f"expected one of {', '.join(meta['choices'])}, got {value!r}")
            return _INVALID
        return value


_INVALID: Any = object()
# What a required list or map that is missing or wrong counts as while the rest is checked.
_EMPTY: dict[str, Callable[[], Any]] = {schema.TABLE_ARRAY: list, schema.TABLE_MAP: dict}


def _built(value: Any) -> Any:
    return None if value is _INVALID else value


def _suggest(name: str, declared: dict[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(declared), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _integer(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValueError(f"expected an integer, got {given(raw)}")
    return raw


def _string(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {given(raw)}")
    return raw


def _boolean(raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise ValueError(f"expected true or false, got {given(raw)}")
    return raw


def _string_list(raw: Any) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(i, str) for i in raw):
        raise ValueError(f"expected a list of strings, got {given(raw)}")
    return list(raw)


def _address_list(raw: Any) -> list[Any]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"expected a non-empty list of \"host:port\" strings, got {given(raw)}")
    return [parse_address(item) for item in raw]


def _server_list(raw: Any) -> list[Any]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"expected a non-empty list of servers, got {given(raw)}")
    return [parse_server(item) for item in raw]


def _network_list(raw: Any) -> list[Any]:
    if not isinstance(raw, list):
        raise ValueError(f"expected a list of addresses or CIDR blocks, got {given(raw)}")
    return [parse_network(item) for item in raw]


def _integer_list(raw: Any) -> list[int]:
    if not isinstance(raw, list):
        raise ValueError(f"expected a list of integers, got {given(raw)}")
    return [_integer(item) for item in raw]


def _path_list(raw: Any) -> list[str]:
    """One path as a string, or several as a list of strings."""
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not all(isinstance(i, str) for i in raw):
        raise ValueError(f"expected a path or a list of paths, got {given(raw)}")
    return list(raw)


def _string_map(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ValueError(f"expected a table of strings such as {{ X-Name = \"value\" }}, got {given(raw)}")
    return dict(raw)


_SCALARS: dict[str, Callable[[Any], Any]] = {
    schema.INT: _integer,
    schema.STR: _string,
    schema.BOOL: _boolean,
    schema.DURATION: parse_duration,
    schema.SIZE: parse_size,
    schema.ADDRESS: parse_address,
    schema.STR_LIST: _string_list,
    schema.ADDRESS_LIST: _address_list,
    schema.SERVER_LIST: _server_list,
    schema.NETWORK_LIST: _network_list,
    schema.INT_LIST: _integer_list,
    schema.STR_MAP: _string_map,
    schema.WORKER_COUNT: parse_worker_count,
    schema.CPU_LIST: parse_cpu_list,
    schema.PATH_LIST: _path_list,
}


def _cross_check(config: schema.Config, builder: _Builder) -> None:
    """Rules that span several keys."""
    if not config.listener:
        builder.problem(("listener",), "at least one [[listener]] is required")
    seen_names: set[str] = set()
    seen_binds: set[Any] = set()
    for i, listener in schema.entries(config.listener):
        if listener.name in seen_names:
            builder.problem(("listener", i, "name"), f"duplicate listener name {listener.name!r}")
        if listener.bind in seen_binds and listener.bind.port != 0:
            builder.problem(("listener", i, "bind"), f"{listener.bind} is bound twice")
        seen_names.add(listener.name)
        seen_binds.add(listener.bind)
        _check_alpn(listener.tls.alpn, ("listener", i, "tls", "alpn"), builder)
        if listener.proxy_protocol:
            _check_proxy_senders(config.proxy.trusted_proxies, ("listener", i, "proxy_protocol"), builder)
    vhost_names: set[str] = set()
    for i, vhost in schema.entries(config.vhost):
        if vhost.name in vhost_names:
            builder.problem(("vhost", i, "name"), f"duplicate vhost name {vhost.name!r}")
        vhost_names.add(vhost.name)
        if not vhost.route:
            builder.problem(("vhost", i, "route"), "a vhost needs at least one [[vhost.route]]")
        for j, route in schema.entries(vhost.route):
            if route.backend not in config.backend:
                known = ", ".join(sorted(config.backend)) or "none defined"
                builder.problem(
                    ("vhost", i, "route", j, "backend"),
                    f"no backend named {route.backend!r} (known: {known})",
                )
            _check_route(route, ("vhost", i, "route", j), builder)
    if not config.vhost:
        builder.problem(("vhost",), "at least one [[vhost]] is required")
    defaults = [i for i, vhost in schema.entries(config.vhost) if vhost.default]
    for i in defaults[1:]:
        builder.problem(("vhost", i, "default"), "only one vhost may be the default")
    for name, backend in schema.entries(config.backend):
        _check_hash_key(backend.hash_key, ("backend", name, "hash_key"), builder)
        health = backend.health
        if health.path and not health.path.startswith("/"):
            builder.problem(("backend", name, "health", "path"), "expected a path starting with /")
        if backend.retry_delay_max < backend.retry_delay:
            builder.problem(("backend", name, "retry_delay_max"),
                            "must not be smaller than retry_delay")
        if backend.protocol == "h2" and backend.proxy_protocol != "off":
            # A PROXY header names one client; an h2 connection carries many clients' streams.
            builder.problem(("backend", name, "protocol"), "h2 cannot be combined with proxy_protocol")
    unknown = [f for f in config.access_log.fields if f not in schema.ACCESS_LOG_FIELDS]
    if unknown:
        builder.problem(("access_log", "fields"), f"unknown fields {', '.join(unknown)} (known: "
                        f"{', '.join(schema.ACCESS_LOG_FIELDS)})")
    try:
        slot_cpus(config.process)
    except ValueError as exc:
        builder.problem(("process", "cpus"), str(exc))
    limits = config.limits
    if limits.write_low_watermark >= limits.write_high_watermark:
        builder.problem(("limits", "write_low_watermark"),
                        "must be smaller than write_high_watermark")
    if not config.phases.module:
        if config.phases.class_name:
            builder.problem(("phases", "class"), "names a class but [phases] module is not set")
        for i, vhost in schema.entries(config.vhost):
            if vhost.phases:
                builder.problem(("vhost", i, "phases"), "names a class but [phases] module is not set")


def _check_alpn(protocols: list[str], path: tuple[str | int, ...], builder: _Builder) -> None:
    for protocol in protocols:
        if protocol not in schema.ALPN_PROTOCOLS:
            builder.problem(path, f"unknown protocol {protocol!r}; expected "
                            f"{', '.join(schema.ALPN_PROTOCOLS)}")


def _check_proxy_senders(networks: list[Any], path: tuple[str | int, ...], builder: _Builder) -> None:
    # The PROXY header rewrites the client address; only the balancers in front may send it
    # (the spec: "only from trusted sources"). With no network nobody could connect; with the
    # default of everyone, any client could claim any address.
    if not networks:
        builder.problem(path, "needs [proxy] trusted_proxies naming the balancers that send the "
                        "header; it is empty, so every connection would be refused")
    elif any(network.prefixlen == 0 for network in networks):
        builder.problem(path, "needs [proxy] trusted_proxies narrowed to the balancers that send the "
                        "header; it covers every address of a family (the default covers all), so any "
                        "client could claim any address")


def _check_hash_key(spec: str, path: tuple[str | int, ...], builder: _Builder) -> None:
    kind, sep, name = spec.partition(":")
    if spec in ("client-ip", "path") or (kind in ("header", "cookie") and sep and name.strip()):
        return
    builder.problem(path, f"expected client-ip, path, header:NAME or cookie:NAME, got {spec!r}")


def _check_route(route: schema.RouteConfig, path: tuple[str | int, ...], builder: _Builder) -> None:
    if route.match in ("prefix", "exact") and not route.path.startswith("/"):
        builder.problem((*path, "path"), "expected a path starting with /")
    if route.match == "regex":
        _check_regex(route.path, (*path, "path"), builder)
    if route.rewrite:
        pattern = _check_regex(route.rewrite, (*path, "rewrite"), builder)
        if pattern is not None:
            try:
                expand_template(route.rewrite_to, pattern)
            except ValueError as exc:
                builder.problem((*path, "rewrite_to"), str(exc))
    elif route.rewrite_to:
        builder.problem((*path, "rewrite_to"), "rewrite_to needs a rewrite pattern")
    for method in route.methods:
        if not method.isupper() or not method.isalpha():
            builder.problem((*path, "methods"), f"expected upper-case method names, got {method!r}")
    if "TRACE" in route.methods and not route.allow_trace:
        builder.problem((*path, "methods"), "TRACE is listed but allow_trace is false (TRACE is refused "
                        "with 405 unless allow_trace = true)")
    if route.hash_key:
        _check_hash_key(route.hash_key, (*path, "hash_key"), builder)
    for token in route.upgrade:
        if token.lower() == "h2c":
            builder.problem((*path, "upgrade"), "h2c is never forwarded: it would let a client speak "
                            "HTTP/2 straight to the backend, past the proxy's rules", several=True)
        elif not re.fullmatch(r"[a-z0-9!#$%&'*+.^_`|~-]+", token):
            builder.problem((*path, "upgrade"), f"expected lower-case protocol names such as "
                            f"\"websocket\", got {token!r}", several=True)


def _check_regex(text: str, path: tuple[str | int, ...], builder: _Builder) -> re.Pattern[str] | None:
    try:
        return re.compile(text)
    except re.error as exc:
        builder.problem(path, f"invalid regular expression: {exc}")
        return None


def load(path: Path = DEFAULT_PATH) -> schema.Config:
    """Load and validate a configuration; raise ConfigError listing every problem."""
    origins = _Origins()
    merged: dict[str, Any] = {}
    problems: list[str] = []
    files = config_files(path)
    origins.record((), path)
    for source in files:
        try:
            with source.open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            problems.append(f"{source}: file not found")
            continue
        except OSError as exc:
            problems.append(f"{source}: cannot read: {exc.strerror}")
            continue
        except tomllib.TOMLDecodeError as exc:
            problems.append(f"{source}: TOML syntax error: {exc}")
            continue
        _merge(merged, data, source, origins, ())
    if problems:
        raise ConfigError(problems)
    builder = _Builder(origins)
    config = builder.table(schema.Config, merged, (), extra={"sources": tuple(files)})
    if config is not _INVALID:
        # The tree is built even where keys were wrong (they keep their defaults), so the
        # rules below run too and `rproxyd -t` reports every problem in one pass.
        builder.checking = True
        _cross_check(config, builder)
        # Certificates, keys, CAs and ticket-key files are read and checked here, and every
        # file and directory the processes will open, and the phases module is imported (in
        # a child process), so `rproxyd -t`, a reload and an upgrade refuse a broken file
        # before any worker starts.
        from appliance.config.paths import check_paths
        from appliance.phases.check import check_phases
        from appliance.tls.check import check_tls

        for path, message in [*check_tls(config), *check_paths(config)]:
            builder.problem(path, message)
        for path, message in check_phases(config):  # every phase problem, each with its own line
            builder.problem(path, message, several=True)
    if builder.problems:
        raise ConfigError(builder.problems)
    return config
