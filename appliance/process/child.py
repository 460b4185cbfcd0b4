"""What a forked worker does before it becomes a Worker, and how it leaves.

Runs in the child right after fork(). The supervisor's signal handlers, wakeup
pipe and every other slot's sockets were inherited; none of them may stay.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import logging
import os
import signal
import socket
from typing import NoReturn

from appliance.config.schema import Config
from appliance.observe.metrics import WorkerSlot
from appliance.process import bootreport, logs
from appliance.process.heartbeat import HeartbeatCell
from appliance.shm import SharedRegion
from appliance.worker import EXIT_BOOT_FAILURE, Worker

log = logging.getLogger("rproxyd.worker")

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Get SIGTERM (a graceful drain) if the supervisor dies, e.g. by SIGKILL.

    The death signal fires when the parent *thread* exits, not on its exec(), so
    the in-place upgrade does not trigger it. The supervisor is single-threaded.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(0)


def run_worker(
    config: Config,
    sockets: dict[str, list[socket.socket]],
    slot: int,
    cpu: int | None,
    beat: HeartbeatCell,
    parent: int,
    close_fds: set[int],
    ticket_ring: SharedRegion | None = None,
    metrics: WorkerSlot | None = None,
    boot_report: int = -1,
) -> NoReturn:
    """Become worker `slot` and never return (os._exit keeps the parent's atexit and buffers out)."""
    status = EXIT_BOOT_FAILURE
    booted = False
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        # Reload and upgrade are the supervisor's business; `kill -HUP` on the whole
        # control group must not kill workers.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        # The supervisor blocked its signals around fork(); the ones the Worker handles
        # stay blocked until its loop has installed handlers for them.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP, signal.SIGUSR2, signal.SIGCHLD})
        _die_with_parent(parent)
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        # Other slots' sockets, the supervisor's wakeup pipe, shared-memory fds (the
        # mappings stay). Their Python objects are never finalized: we leave by os._exit.
        keep = {sock.fileno() for socks in sockets.values() for sock in socks}
        for fd in close_fds - keep:
            with contextlib.suppress(OSError):
                os.close(fd)
        # This generation's [log] settings, which a reload may have changed before the
        # supervisor itself switches over (at commit).
        logs.setup(config.log)
        faulthandler.enable()  # SIGABRT from the heartbeat check dumps a Python traceback
        booted = True
        worker = Worker(config, sockets, slot, beat, ticket_ring, metrics)
        status = worker.run()
        if status == EXIT_BOOT_FAILURE:
            bootreport.tell(boot_report, worker.boot_error)
    except BaseException:
        log.exception("worker %d crashed", slot)
        status = 1 if booted else EXIT_BOOT_FAILURE
    finally:
        logging.shutdown()
        os._exit(status)
