"""Output files written so that a kill never leaves half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (a temporary file renamed into place): readers see the old file or the new."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    place(Path(path), lambda fh: fh.write(text))  # synced: a manifest may be the only copy of its records


def place(target: Path, write: Callable[[Any], None], replace: bool = True, binary: bool = False) -> bool:
    """Write a file whole: `write(fh)` into a temporary file beside `target`, synced, then renamed over it
    (`replace`) or linked into place only if `target` does not exist (no check-then-write race: a file
    another worker wrote meanwhile is kept). A kill leaves no cut file. Whether it was placed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:16]}", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, target)
            return True
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
    finally:
        Path(tmp).unlink(missing_ok=True)
