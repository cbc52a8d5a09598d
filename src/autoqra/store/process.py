"""Who is working: worker identities and liveness, for locks and claims shared by several processes.

A worker is `host:pid:start`, where `start` identifies the process incarnation (boot id and start
time on Linux), so a pid reused after a crash or a reboot does not keep a dead worker's lock alive.
Where `/proc` is missing (macOS) `start` is empty and liveness falls back to the pid alone.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path


def _start(pid: int) -> str:
    """Incarnation stamp of a process: `<boot id prefix>-<start time in clock ticks>`; '' when unknown."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces and parentheses
    return f"{boot}-{fields[19]}" if len(fields) > 19 else ""


def hostname() -> str:
    """This host's name: `AUTOQRA_HOSTNAME` when set (a test standing in for another node), else the
    system's."""
    return os.environ.get("AUTOQRA_HOSTNAME") or socket.gethostname()


def worker_id() -> str:
    """`host:pid:start` of this process."""
    return f"{hostname()}:{os.getpid()}:{_start(os.getpid())}"


def parse(worker: str) -> tuple[str, int, str] | None:
    """(host, pid, start) of a worker id, None when `worker` is not one."""
    parts = worker.strip().split(":")
    if len(parts) == 2:
        parts.append("")
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2]


def is_dead(worker: str) -> bool:
    """True only when `worker` ran on this host and that process is gone (its pid is free or now
    belongs to a later process). Other hosts and unparseable ids: unknown, False."""
    parsed = parse(worker)
    if parsed is None or parsed[0] != hostname():
        return False
    _, pid, start = parsed
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, someone else's: compare incarnations below
    return bool(start) and _start(pid) not in ("", start)


# What every process of the pipeline runs under: nothing but the package registries is reachable on our
# machines, so the hubs are offline and DVC sends no analytics (the Makefile exports the same, tested).
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}


def environment() -> None:
    """Set, unless already set: `OFFLINE`, GPTQModel's CPU worker count (it refuses to start on a 2-core
    machine otherwise) and quiet tokenizers."""
    for name, value in OFFLINE.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@contextlib.contextmanager
def scratch(parent: Path) -> Iterator[Path]:
    """A temporary folder under `parent` named after this worker, removed at the end; the folders of
    workers on this host that no longer run (killed: nothing cleaned up after them) are removed first."""
    import shutil
    import tempfile

    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.iterdir():
        owner = old.name.rsplit("~", 1)[0].replace("_", ":")
        if old.is_dir() and "~" in old.name and is_dead(owner):
            shutil.rmtree(old, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=worker_id().replace(":", "_") + "~"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
