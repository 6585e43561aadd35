"""The trained model of a run, saved sharded (every rank its shards) and loadable on any world size."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Union

from torch import nn

from recdim.train.checkpoint import Checkpointer

MODEL_DIR = "model"


def save_model(model: nn.Module, run_dir: Union[str, Path], step: int, meta: Dict[str, Any]) -> Path:
    """Writes ``model``'s state (tables as ShardedTensors, dense parts, method parameters) to
    ``<run_dir>/model`` with torch.distributed.checkpoint. Collective.

    Example::

        save_model(session.dmp, "runs/dnis", session.trainer.global_step, {"method": "dnis"})
    """
    return Checkpointer(Path(run_dir) / MODEL_DIR, keep=1).save(step, {"model": model.state_dict()}, meta)


def load_model(model: nn.Module, run_dir: Union[str, Path]) -> Dict[str, Any]:
    """Loads ``<run_dir>/model`` into ``model`` in place, resharding to this process group's plan.
    Collective. Returns the saved meta.
    """
    ckpt = Checkpointer(Path(run_dir) / MODEL_DIR)
    path = ckpt.latest()
    if path is None:
        raise FileNotFoundError(
            f"{Path(run_dir) / MODEL_DIR}: no saved model (run `recdim search` or `recdim train` first)"
        )
    state = {"model": model.state_dict()}
    Checkpointer.load(path, state)
    model.load_state_dict(state["model"])
    return Checkpointer.read_meta(path)
