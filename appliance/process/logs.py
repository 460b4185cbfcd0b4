"""Log setup shared by the supervisor and the workers, and reopening for logrotate.

Every process opens the log file itself (O_APPEND, so lines from several
processes interleave whole) and reopens it on SIGUSR1 after logrotate has moved
it away, without copytruncate.
"""

from __future__ import annotations

import logging
import sys

from appliance.config.schema import LogConfig
from appliance.observe.errorlog import formatter


class ReopenableFileHandler(logging.FileHandler):
    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


def setup(config: LogConfig) -> None:
    """Point the root logger at the configured destination (replacing earlier handlers).

    The new destination is opened first: if that fails (OSError), logging is unchanged.
    """
    handler: logging.Handler
    if config.file:
        handler = ReopenableFileHandler(config.file, delay=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(config.format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(config.level.upper())


def reopen() -> None:
    """Reopen every log file of this process (after logrotate renamed it)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()
    logging.getLogger("rproxyd").info("log files reopened")
