"""Durable file writes: a file appears whole or not at all, and survives a crash once written; JSON too."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Union


def fsync_dir(path: Union[str, Path]) -> None:
    """Flushes a directory's entries (renames, new files) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Union[str, Path], data: Union[bytes, str]) -> None:
    """Writes ``data`` to a temporary sibling, flushes it, renames it over ``path`` and flushes the
    directory, so readers see the old file or the new one, never half of it.

    Example::

        write_atomic(run_dir / "latest", "step-100\\n")
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json(path: Union[str, Path], data: Dict[str, Any]) -> Path:
    """Writes ``data`` as indented JSON via a temporary file and an atomic rename (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_default) + "\n")
    return path


def _default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
