"""systemd's readiness protocol (`sd_notify`), so that a `Type=notify` unit knows when inferd serves and stops.

One datagram per notice on the AF_UNIX socket named by `$NOTIFY_SOCKET` (a path, or an abstract name written with
a leading `@`): READY=1 once the models are loaded and the ports accept, STOPPING=1 when the drain begins, and
WATCHDOG=1 every half `$WATCHDOG_USEC` when the unit sets `WatchdogSec`. The pings come from the event loop, so a
loop that hangs stops them and systemd restarts the service. Written here rather than taken from a library: it is
one `sendto`. Without `$NOTIFY_SOCKET` (not under systemd) every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger("inferd.serve")


_failed = False


def notify(*fields: str) -> None:
    """Send `fields` ("READY=1", "STATUS=...") as one notice, without blocking: a receiver that does not read
    (its queue holds a few datagrams) must not stall the event loop. A failure is logged once, never raised."""
    global _failed
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as exc:
        if not _failed:
            log.warning("could not notify systemd on %s: %s", os.environ["NOTIFY_SOCKET"], exc)
        _failed = True


def watchdog_interval_s() -> float | None:
    """Half the watchdog period the unit asks for, as sd_watchdog_enabled reads it; None when it asks for none."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def watchdog(interval_s: float) -> None:
    """Ping until cancelled."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval_s)
