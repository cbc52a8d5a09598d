"""The record store: one JSON file per evaluation, keyed by a hash of everything that determines it.

Shared by every stage that trains (the search stages, the final arms) and by every worker, on one
machine or many sharing a filesystem. Its promises:

- **Never computed twice.** `get(key, compute)` returns the stored record when a valid one exists;
  otherwise it takes the key's lock, *looks again* (another worker may have written the record while
  this one waited), and only then computes and writes.
- **Never lost, never half-written.** A record is written to a temporary file and renamed into place.
- **Never trusted when damaged.** A record that is not JSON, holds another key, has an unknown format
  version or lacks a field is moved aside (`<key>.json.damaged-<n>`), reported and recomputed.
- **Transient failures are retried.** A record marked `transient` (out of memory: perhaps a co-worker's
  fault) is recomputed up to `max_attempts` times; every attempt's reason is kept.
- **One cache, outside every pipeline output.** One store serves every stage and worker (the
  `records` folder, `data/records` by default): no orchestrator declares it, so neither Snakemake's
  clean-up nor DVC's experiment checkout ever deletes a record; each stage writes a manifest of the
  records it used into its own output (`autoqra.store.manifest`), from which a pulled project
  rebuilds the cache. Stores of earlier layouts (one per stage under `legacy`) are still read.
- **No wait on the dead.** Locks are `flock` locks on `<root>/locks/<key>.lock`: the kernel releases
  them when their holder dies (SIGKILL included), and on NFS the server does when the holder's host
  stops renewing its lease; a lock whose holder, named in the file, is a dead process on this host is
  broken after `LOCK_STALE_S`, and a stale NFS handle (`ESTALE`) is reopened. A lock file is unlinked
  by its holder only while held; a waiter that locked an unlinked file notices (its inode differs from
  the path's) and tries again. A damaged record is moved aside under its key's lock, after a second
  look (a worker may have just written a good one).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from autoqra.store.files import place
from autoqra.store.process import is_dead, worker_id

FORMAT = 2  # the layout of a record file (not of its value: code changes enter the key)
REQUIRED = ("format", "key", "status", "score", "reason")
POLL_S = 0.5
LOCK_STALE_S = float(os.environ.get("AUTOQRA_LOCK_STALE_S", 600))

log = logging.getLogger(__name__)


def _dead_holder(path: Path) -> bool:
    """Whether the worker named in a lock file is a process on this host that no longer runs."""
    try:
        return is_dead(path.read_text())
    except OSError:
        return False


class RecordError(ValueError):
    """A record file that cannot be trusted."""


def validate(record: Any, key: str) -> dict[str, Any]:
    """The record if it is a well-formed record of `key`; raise `RecordError` saying why not."""
    if not isinstance(record, dict):
        raise RecordError(f"not a JSON object ({type(record).__name__})")
    missing = [f for f in REQUIRED if f not in record]
    if missing:
        raise RecordError(f"missing field(s) {missing}")
    if record["format"] != FORMAT:
        raise RecordError(f"unknown format {record['format']!r} (this code reads {FORMAT})")
    if record["key"] != key:
        raise RecordError(f"holds key {str(record['key'])[:12]}…, not {key[:12]}…")
    if record["status"] not in ("ok", "failed"):
        raise RecordError(f"unknown status {record['status']!r}")
    score = record["score"]
    if record["status"] == "ok" and not (isinstance(score, (int, float)) and math.isfinite(score)):
        raise RecordError(f"status ok but score {score!r}")
    return record


class RecordStore:
    """Records under `root/<key[:2]>/<key>.json`, locks under `root/locks/`.

    With `legacy` (the folder of an earlier layout's per-stage stores: `legacy/<name>/` or
    `legacy/<group>/<name>/`, each marked by a `STORE` file, plus any records directly under it), a
    record missing here (or failed here) is looked up there too; those files are never changed."""

    def __init__(self, root: str | Path, max_attempts: int = 3, legacy: str | Path | None = None):
        self.root, self.max_attempts = Path(root), max_attempts
        self.legacy = Path(legacy) if legacy is not None else None
        self.locks = self.root / "locks"
        self.computed = 0   # records this store computed (and wrote)
        self.damaged = 0    # damaged records found and moved aside
        self.retried = 0    # transient failures recomputed
        self._held: set[str] = set()  # keys whose lock this store holds now

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def others(self) -> list[Path]:
        """The legacy stores (and the legacy folder itself: records of the layout before that)."""
        if self.legacy is None or not self.legacy.exists():
            return []
        marked = [m.parent for pattern in ("*/STORE", "*/*/STORE") for m in self.legacy.glob(pattern)]
        return [r for r in sorted({self.legacy, *marked}) if r.resolve() != self.root.resolve()]

    def find(self, relative: str) -> Path | None:
        """The first of this store's and the other stores' `relative` paths that exists."""
        for root in (self.root, *self.others()):
            if (root / relative).exists():
                return root / relative
        return None

    # ------------------------------------------------------------------ reading
    def read(self, key: str) -> dict[str, Any] | None:
        """The valid record of `key` in this store or a legacy one (a success there before a failure
        here), or None (absent, or damaged: in this store it is moved aside, in a legacy one skipped)."""
        own = self._read(self.path(key), key, own=True)
        if own is not None and own["status"] == "ok":
            return own
        for root in self.others():  # another store's success wins over this store's failure
            record = self._read(root / key[:2] / f"{key}.json", key, own=False)
            if record is not None and (own is None or record["status"] == "ok"):
                return record
        return own

    def _read(self, path: Path, key: str, own: bool) -> dict[str, Any] | None:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            return validate(json.loads(text), key)
        except (json.JSONDecodeError, RecordError) as exc:
            if own:
                self._set_aside(path, str(exc), key)
                return self._read(path, key, own=False) if path.exists() else None  # rewritten meanwhile
            else:
                log.warning("damaged record %s in another store (%s): not used", path, exc)
            return None

    def usable(self, record: dict[str, Any] | None) -> bool:
        """A record that ends the matter: not absent and not a transient failure with attempts left."""
        if record is None:
            return False
        return not (record.get("transient") and record.get("attempts", 1) < self.max_attempts)

    def _set_aside(self, path: Path, why: str, key: str) -> None:
        """Move a damaged record aside, holding its key's lock and only if it is still damaged (another
        worker may have written a good one since it was read)."""
        held = key in self._held
        with contextlib.ExitStack() as stack:
            if not held:
                stack.enter_context(self.lock(key))
            try:
                validate(json.loads(path.read_text()), key)
                return  # repaired meanwhile
            except FileNotFoundError:
                return
            except (json.JSONDecodeError, RecordError):
                pass
            for n in range(1000):
                target = path.with_name(f"{path.name}.damaged-{n}")
                if not target.exists():
                    break
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, target)
                self.damaged += 1
                log.warning("damaged record %s (%s): moved to %s, it will be recomputed", path.name, why,
                            target.name)

    # ------------------------------------------------------------------ writing
    def write(self, key: str, record: dict[str, Any]) -> dict[str, Any]:
        record = validate({**record, "format": FORMAT, "key": key}, key)
        self._put(key, record, replace=True)
        return record

    def write_new(self, key: str, record: dict[str, Any]) -> bool:
        """Write `record` only if `key` has no record file yet (atomically: never over one a worker
        wrote meanwhile); whether it was written."""
        return self._put(key, validate({**record, "format": FORMAT, "key": key}, key), replace=False)

    def _put(self, key: str, record: dict[str, Any], replace: bool) -> bool:
        return place(self.path(key), lambda fh: json.dump(record, fh, indent=1), replace=replace)

    # ------------------------------------------------------------------ locking
    @contextlib.contextmanager
    def lock(self, key: str, ready: Callable[[], bool] = lambda: False) -> Iterator[bool]:
        """Hold the lock of `key` for the block (yields True), or yield False without it as soon as
        `ready()` says the wait is over (the record appeared)."""
        path = self.locks / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        waited = time.monotonic()
        while True:
            fd = -1  # this pass's descriptor: never one an earlier pass closed
            try:
                fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                if exc.errno == errno.ESTALE:  # NFS lost the file under us: open the path again
                    time.sleep(POLL_S)
                    continue
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if ready():
                    yield False
                    return
                if time.monotonic() - waited > LOCK_STALE_S and _dead_holder(path):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)  # its holder died without the kernel noticing (a lost NFS lease)
                    log.warning("lock %s of a dead worker broken", path.name)
                time.sleep(POLL_S)
                continue
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # locked a file its holder had already unlinked: try the path again
        self._held.add(key)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, worker_id().encode())  # who holds it, for whoever looks
            os.fsync(fd)  # on NFS too, before anyone judges the holder by it
            yield True
        finally:
            self._held.discard(key)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:  # not a successor's (after a broken lock)
                    os.unlink(path)  # still ours: nobody else can lock it before we close
            os.close(fd)

    # ------------------------------------------------------------------ the one entry point
    def get(self, key: str, compute: Callable[[], dict[str, Any]],
            require: Callable[[dict[str, Any]], bool] | None = None) -> tuple[dict[str, Any], bool]:
        """(record, computed): the stored record of `key`, or `compute()`'s, written, computed at
        most once across every worker sharing `root`. `compute` returns a record body (`status`,
        `score`, `reason`, ...; `transient: True` for failures worth retrying). `require` marks a
        stored record that lacks something the caller needs (a saved adapter) as to be recomputed."""
        def usable(r: dict[str, Any] | None) -> bool:
            return self.usable(r) and (require is None or require(r))

        record = self.read(key)
        if usable(record):
            return record, False
        with self.lock(key, ready=lambda: usable(self.read(key))) as held:
            record = self.read(key)  # written while we waited?
            if not held or usable(record):
                return record, False
            previous = record if record is not None and record.get("transient") else None  # a retry
            body = compute()
            if previous is not None:
                self.retried += 1
                body["attempts"] = previous.get("attempts", 1) + 1
                body["previous_reasons"] = previous.get("previous_reasons", []) + [previous["reason"]]
            record = self.write(key, body)
            self.computed += 1
            return record, True

    def keys(self) -> list[str]:
        """Keys of every record file present (valid or not)."""
        return sorted(p.stem for p in self.root.glob("??/*.json"))
