"""Output files written so that a kill never leaves half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (a temporary file renamed into place): readers see the old file or the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())  # a manifest may be the only copy of its records that travels
    tmp.replace(path)
