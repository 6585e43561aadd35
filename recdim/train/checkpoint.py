"""Sharded checkpoints on disk: every rank writes its own shards; a checkpoint is ``latest`` only once whole.

Tensors go through ``torch.distributed.checkpoint`` (DCP): each rank writes the shards it holds
(TorchRec tables and fused optimizer state are ShardedTensors; replicated dense tensors are written
once), and loading reads whatever pieces the loading rank's shards overlap, so a checkpoint written by
N ranks loads into M ranks, or into another sharding plan. A small JSON file beside the shards carries
the non-tensor state (counters, history).

Commit protocol (a crash at any point leaves the previous checkpoint as ``latest``)::

    ckpt/step-60.tmp/   every rank writes its shards (DCP), rank 0 the JSON; barrier
    ckpt/step-60/       rank 0 renames the folder (atomic on one filesystem)
    ckpt/latest         rank 0 rewrites the pointer through a temporary file and an atomic replace,
                        then deletes all but the newest ``keep`` checkpoints and stale ``*.tmp`` folders

Readers trust only ``latest``; ``*.tmp`` folders are never read. The folder must be visible to every
rank (a shared filesystem when the job spans several hosts).

DCP's ``.metadata`` is a pickle, and unpickling runs code. Before the rename, rank 0 records the SHA-256
of every file of the checkpoint in ``digests.json``; loading checks every file against it before torch
reads anything, and refuses a checkpoint with a changed, missing or extra file (or without digests).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from recdim.fsio import fsync_dir, write_atomic
from recdim.train.distributed import barrier
from recdim.train.faults import maybe_crash

log = logging.getLogger(__name__)

LATEST = "latest"
META_FILE = "trainer_state.json"
DIGEST_FILE = "digests.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _step_of(path: Path) -> int:
    m = _STEP_DIR.match(path.name)
    assert m is not None, path
    return int(m.group(1))


class Checkpointer:
    """A run's checkpoint folder: atomic commits, a ``latest`` pointer, the newest ``keep`` kept.

    Args:
        directory: the folder (``<run dir>/ckpt``), shared by all ranks.
        keep: complete checkpoints to keep; older ones are deleted after each commit.

    Example::

        ckpt = Checkpointer(Path("runs/demo/ckpt"), keep=2)
        ckpt.save(40, {"model": dmp.state_dict()}, {"global_step": 40})   # collective
        path = ckpt.latest()                                               # collective
        state = {"model": dmp.state_dict()}
        ckpt.load(path, state)                                             # in place, resharding
    """

    def __init__(self, directory: Union[str, Path], keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def step_dirs(self) -> List[Path]:
        """Committed checkpoint folders, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if _STEP_DIR.match(p.name) and p.is_dir()]
        return sorted(found, key=_step_of)

    def _read_latest(self) -> Optional[Path]:
        pointer = self.directory / LATEST
        if not pointer.is_file():
            return None
        path = self.directory / pointer.read_text().strip()
        if not (path / ".metadata").is_file() or not (path / META_FILE).is_file():
            log.warning(
                "checkpoint pointer %s names %s, which is not a complete checkpoint; ignoring it", pointer, path
            )
            return None
        return path

    def latest(self) -> Optional[Path]:
        """The committed checkpoint ``latest`` points to, or None. Collective: rank 0 reads, all agree.

        Returns:
            The checkpoint folder, or None when the run has none.
        """
        found: List[Optional[str]] = [None]
        if _rank() == 0:
            path = self._read_latest()
            found[0] = None if path is None else str(path)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast_object_list(found, src=0)
        return Path(found[0]) if found[0] is not None else None

    def save(self, step: int, state: Dict[str, Any], meta: Dict[str, Any]) -> Path:
        """Writes ``state`` (every rank its shards) and ``meta`` (rank 0) as checkpoint ``step-<step>``,
        then commits it as ``latest``. Collective.

        Args:
            step: the global step; names the folder.
            state: a DCP state dict (tensors, ShardedTensors, nested dicts); the same keys on every rank
                except per-rank entries.
            meta: JSON-ready non-tensor state, written by rank 0.

        Returns:
            The committed folder.
        """
        rank = _rank()
        final = self.directory / f"step-{step}"
        tmp = self.directory / f"step-{step}.tmp"
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp)))
        if rank == 0:
            write_atomic(tmp / META_FILE, json.dumps(meta, indent=1) + "\n")
        maybe_crash("checkpoint_commit", rank, step)
        barrier()
        if rank == 0:
            write_atomic(tmp / DIGEST_FILE, json.dumps(file_digests(tmp), indent=1) + "\n")
            if final.exists():  # left by a run that crashed after committing it but before the pointer
                shutil.rmtree(final)
            os.rename(tmp, final)
            fsync_dir(self.directory)
            write_atomic(self.directory / LATEST, final.name + "\n")
            self._prune(final)
            log.info("checkpoint %s written", final)
        barrier()
        return final

    def _prune(self, newest: Path) -> None:
        """Keeps ``newest`` and the ``keep - 1`` checkpoints before it; deletes the rest, including any
        later step left by an abandoned attempt, and stale ``*.tmp`` folders."""
        step = _step_of(newest)
        older = [p for p in self.step_dirs() if _step_of(p) < step]
        abandoned = [p for p in self.step_dirs() if _step_of(p) > step]
        for old in abandoned + older[: max(0, len(older) - (self.keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.directory.glob("step-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)

    @staticmethod
    def read_meta(path: Union[str, Path]) -> Dict[str, Any]:
        """The JSON state of checkpoint folder ``path``."""
        return json.loads((Path(path) / META_FILE).read_text())

    @staticmethod
    def load(path: Union[str, Path], state: Dict[str, Any]) -> None:
        """Fills ``state`` in place from checkpoint ``path``. Collective.

        Every key of ``state`` must be in the checkpoint; ShardedTensors read the pieces their local
        shards overlap, whatever the world size and plan that wrote them.

        Args:
            path: a committed checkpoint folder.
            state: a state dict of this process's tensors (for example ``dmp.state_dict()``).

        Raises:
            CheckpointError: when a file does not match the digests recorded at save time (nothing is
                read then).
        """
        problem: List[Optional[str]] = [verify_digests(Path(path)) if _rank() == 0 else None]
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast_object_list(problem, src=0)
        if problem[0] is not None:
            raise CheckpointError(problem[0])
        dcp.load(state, storage_reader=dcp.FileSystemReader(str(path)))


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or read; the message names the file."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digests(folder: Path) -> Dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` but ``digests.json``."""
    return {
        str(p.relative_to(folder)): _sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != DIGEST_FILE
    }


def verify_digests(folder: Path) -> Optional[str]:
    """Why ``folder`` must not be loaded, or None when every file matches ``digests.json``.

    Example::

        verify_digests(Path("runs/demo/model/step-120"))   # None, or "…/.metadata: sha256 … does not match"
    """
    path = folder / DIGEST_FILE
    if not path.is_file():
        return (
            f"{folder}: no {DIGEST_FILE}; refusing to load a checkpoint whose files cannot be checked "
            "(its .metadata is a pickle, and unpickling runs code)"
        )
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"{path}: unreadable ({e})"
    found = file_digests(folder)
    for name in sorted(set(recorded) | set(found)):
        if name not in found:
            return f"{folder / name}: missing from the checkpoint (recorded in {DIGEST_FILE})"
        if name not in recorded:
            return f"{folder / name}: not part of the checkpoint as written; refusing to load it"
        if found[name] != recorded[name]:
            return f"{folder / name}: sha256 does not match the one recorded when it was written (edited or corrupt)"
    return None
