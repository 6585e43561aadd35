"""Runs a function on N gloo ranks (CPU) in spawned processes and returns each rank's result."""

from __future__ import annotations

import os
import socket
import tempfile
import traceback
from typing import Any, Callable, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        result = fn(rank, world_size, *args)
        torch.save({"ok": True, "result": result}, os.path.join(out_dir, f"{rank}.pt"))
    except BaseException:  # reported to the parent
        torch.save({"ok": False, "error": traceback.format_exc()}, os.path.join(out_dir, f"{rank}.pt"))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(world_size: int, fn: Callable[..., Any], *args: Any) -> List[Any]:
    """Calls ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; returns their results.

    ``fn`` must be importable (module level) and return tensors / plain data.
    """
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(
            _worker, args=(world_size, free_port(), fn, args, d), nprocs=world_size, join=True, start_method="spawn"
        )
        out = []
        for r in range(world_size):
            res = torch.load(os.path.join(d, f"{r}.pt"), weights_only=False)
            if not res["ok"]:
                raise RuntimeError(f"rank {r} failed:\n{res['error']}")
            out.append(res["result"])
        return out
