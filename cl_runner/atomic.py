"""Files written atomically: under a temporary name, then renamed into place, so that a killed run never leaves
a half-written file behind."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path


def write_bytes(path: Path, data: bytes, previous: Path | None = None) -> None:
    """`data` into `path`, whole or not at all; with `previous`, the file it replaces is kept under that name
    (linked there once the new one is written in full, so that `path` exists at every moment: a process killed
    between the two steps leaves both)."""
    tmp = _written(path.with_name(f".{path.name}.tmp"), data)
    if previous is not None and path.exists():
        kept = previous.with_name(f".{previous.name}.tmp")
        kept.unlink(missing_ok=True)
        os.link(path, kept)
        os.replace(kept, previous)
    os.replace(tmp, path)


def create_bytes(path: Path, data: bytes) -> None:
    """`data` into `path`, which must not exist yet (FileExistsError otherwise), whole or not at all: a reader
    never sees it empty or half-written."""
    tmp = _written(path.with_name(f".{path.name}.{os.getpid()}.tmp"), data)  # its own: another may create too
    try:
        os.link(tmp, path)  # fails if `path` exists, as open(path, "x") would
    finally:
        tmp.unlink()


def _written(tmp: Path, data: bytes) -> Path:
    """`data` in the temporary file `tmp`, flushed to the disk; `tmp`."""
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def write_json(path: Path, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_torch(path: Path, obj, previous: Path | None = None) -> None:
    """`torch.save(obj)` into `path`, whole or not at all (`previous`: as in `write_bytes`)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue(), previous)
