"""Files written atomically: under a temporary name, then renamed into place, so that a killed run never leaves
a half-written file behind."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_bytes(path: Path, data: bytes, previous: Path | None = None) -> None:
    """`data` into `path`, whole or not at all; with `previous`, the file it replaces is kept under that name
    (renamed only once the new one is written in full)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if previous is not None and path.exists():
        os.replace(path, previous)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())
