"""Who is working: worker identities and liveness, for locks and claims shared by several processes."""

from __future__ import annotations

import os
import socket


def worker_id() -> str:
    """`host:pid` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def is_dead(worker: str) -> bool:
    """True only when `worker` ran on this host and its process is gone (other hosts: unknown, False)."""
    host, _, pid = worker.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
