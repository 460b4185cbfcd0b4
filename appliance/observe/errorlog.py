"""The error log's formats, and the request id on every line about a request.

Lines about a request pass `extra=about(exchange)`; both formats then carry the
request id, the same one the access log and the backend see.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pythonjsonlogger.json import JsonFormatter

if TYPE_CHECKING:
    from appliance.http.exchange import Exchange

TEXT_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
# JSON keys: these record attributes, plus any `extra` (request_id) python-json-logger adds.
JSON_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"


class TextFormatter(logging.Formatter):
    """The plain format, with ` request_id=…` appended to lines that have one."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{line} request_id={rid}" if rid else line


def formatter(kind: str) -> logging.Formatter:
    """The formatter for [log] format ("text" or "json")."""
    if kind == "json":
        return JsonFormatter(JSON_FORMAT, rename_fields={"levelname": "level", "asctime": "time"})
    return TextFormatter(TEXT_FORMAT)


def about(exchange: Exchange) -> dict[str, str]:
    """`extra` for a log line about this exchange (makes its request id if it has none yet)."""
    return {"request_id": exchange.request_id_text()}
