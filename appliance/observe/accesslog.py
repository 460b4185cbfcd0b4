"""The access log: one JSON record per request, formatted and written in batches.

The data path only appends (exchange, end time) to a list (see recorder.py). A loop
timer every `flush_interval`, or a full batch, turns the list into JSON lines with
python-json-logger's serializer and writes them with one write() per batch: no
LogRecord per request, no lock, no per-line flush. Each worker writes its own
O_APPEND file descriptor, so whole batches from several workers interleave but
lines never tear (a batch is one write of at most a few hundred KiB to a regular file).
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pythonjsonlogger.json import JsonFormatter

from appliance.config.schema import Config
from appliance.config.values import parse_address

if TYPE_CHECKING:
    from appliance.http.exchange import Exchange

log = logging.getLogger("rproxyd.access")

Record = tuple["Exchange", float]  # the exchange and the loop time it ended


def _tls(exchange: Exchange) -> Any:
    # Read from the transport's SSL object only when a record asks (the TLS layer caches
    # it in the transport's extra info, which outlives the connection).
    transport = exchange.client.transport
    return transport.get_extra_info("ssl_object") if transport is not None else None


def _client(exchange: Exchange) -> str:
    client = exchange.client  # its peer taken when the connection was made
    if not client.peer_port:
        return "-"
    address = client.peer_ip.decode()
    return f"[{address}]:{client.peer_port}" if ":" in address else f"{address}:{client.peer_port}"


def _tls_cipher(exchange: Exchange) -> str | None:
    ssl = _tls(exchange)
    cipher = ssl.cipher() if ssl is not None else None
    return cipher[0] if cipher else None


def _tls_version(exchange: Exchange) -> str | None:
    ssl = _tls(exchange)
    return ssl.version() if ssl is not None else None


def _tls_resumed(exchange: Exchange) -> bool | None:
    ssl = _tls(exchange)
    return ssl.session_reused if ssl is not None else None


# Field name → a Python expression over `e` (the exchange), `route`, `ended` (loop time it
# ended) and `iso` (loop time → ISO 8601 text). The configured fields are compiled into one
# function per worker (as dataclasses compiles __init__), so a record costs one call and one
# dict display instead of a call per field.
FIELDS: dict[str, str] = {
    "time": "iso(e.started)",
    "client": "_client(e)",
    "vhost": "route.vhost if route is not None else None",
    "rule": "route.name if route is not None else None",
    "method": "e.method.decode('latin-1')",
    "path": "e.url.decode('latin-1')",
    "protocol": "'HTTP/' + e.version",
    "host": "e.host.decode('latin-1') if e.host is not None else None",
    "status": "e.status",
    "bytes_in": "e.head_bytes + e.body_received",
    "bytes_out": "e.bytes_out",
    "backend": "e.backend.name if e.backend is not None else None",
    "server": "str(e.server.address) if e.server is not None else None",
    "connect_time": "round(e.connect_time, 6)",
    "first_byte_time": "round(e.first_byte, 6)",
    "upstream_time": "round(e.upstream_time, 6)",
    "duration": "round(ended - e.started, 6)",
    "queue_wait": "round(e.queue_wait, 6)",
    "tls_version": "_tls_version(e)",
    "tls_cipher": "_tls_cipher(e)",
    "tls_resumed": "_tls_resumed(e)",
    "request_id": "e.request_id_text()",
}

_HELPERS = {"_client": _client, "_tls_version": _tls_version, "_tls_cipher": _tls_cipher,
            "_tls_resumed": _tls_resumed}


def compile_fields(names: list[str]) -> Callable[[Exchange, float, Callable[[float], str]], dict[str, Any]]:
    """One function building the record of the given fields (names checked by the config loader)."""
    body = ", ".join(f"{name!r}: {FIELDS[name]}" for name in names)
    source = f"def record(e, ended, iso):\n    route = e.route\n    return {{{body}}}\n"
    namespace = dict(_HELPERS)
    exec(compile(source, "<access log fields>", "exec"), namespace)
    return namespace["record"]


def _dumps(data: dict[str, Any], **_options: Any) -> str:
    # Values are only str, int, float, bool and None: the stdlib's cached C encoder takes them
    # without the per-call encoder object python-json-logger's default path builds.
    return json.dumps(data)


class _Clock:
    """Wall-clock timestamps for loop times, the ISO text cached per second."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._second = -1
        self._prefix = ""
        self.offset = 0.0

    def sync(self) -> None:
        self.offset = time.time() - self._loop.time()

    def iso(self, loop_time: float) -> str:
        wall = loop_time + self.offset
        second = int(wall)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((wall - second) * 1000):03d}Z"


class Destination:
    """Where batches go: a file (reopenable), standard output, or syslog."""

    def __init__(self, config: Config) -> None:
        access = config.access_log
        self.kind = access.destination
        self.path = access.file
        self._fd = -1
        self._syslog: logging.handlers.SysLogHandler | None = None
        if self.kind == "file":
            self.reopen()
        elif self.kind == "stdout":
            self._fd = sys.stdout.fileno()
        else:
            address: str | tuple[str, int] = access.syslog_address
            if not access.syslog_address.startswith("/"):
                parsed = parse_address(access.syslog_address)
                address = (parsed.host, parsed.port)
            self._syslog = logging.handlers.SysLogHandler(address, access.syslog_facility)
            self._syslog.ident = "rproxyd-access: "

    def reopen(self) -> None:
        """Open the file again (after logrotate renamed it); no-op for other destinations."""
        if self.kind != "file":
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        old, self._fd = self._fd, fd
        if old >= 0:
            os.close(old)

    def write(self, lines: list[str]) -> None:
        if self._syslog is not None:
            for line in lines:
                self._syslog.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO,
                                                         "levelname": "INFO"}))
            return
        data = ("\n".join(lines) + "\n").encode()
        while data:
            written = os.write(self._fd, data)
            data = data[written:]

    def close(self) -> None:
        if self._syslog is not None:
            self._syslog.close()
        elif self.kind == "file" and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1


class AccessLog:
    """The per-worker batch of finished exchanges and the timer that writes it."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        access = config.access_log
        self.records: list[Record] = []
        self.batch = access.batch
        self._interval = access.flush_interval
        self._loop = loop
        self._record = compile_fields(access.fields)
        self._muted = frozenset(v.name for v in config.vhost if not v.access_log)
        self._formatter = JsonFormatter(json_serializer=_dumps)
        self._clock = _Clock(loop)
        self._destination = Destination(config)
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._timer = self._loop.call_later(self._interval, self._tick)

    def _tick(self) -> None:
        self.flush()
        self._timer = self._loop.call_later(self._interval, self._tick)

    def flush(self) -> None:
        """Format and write every record taken so far."""
        records, self.records = self.records, []
        if not records:
            return
        self._clock.sync()
        lines = [self.format(exchange, ended) for exchange, ended in records
                 if exchange.route is None or exchange.route.vhost not in self._muted]
        if not lines:
            return
        try:
            self._destination.write(lines)
        except OSError as exc:
            log.error("access log: %d records lost: %s", len(lines), exc)

    def format(self, exchange: Exchange, ended: float) -> str:
        return self._formatter.serialize_log_record(self._record(exchange, ended, self._clock.iso))

    def reopen(self) -> None:
        self.flush()
        self._destination.reopen()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        self._destination.close()
