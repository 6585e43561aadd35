"""Sharded checkpoints: atomic commits, resume after a killed worker, resharding from 2 ranks to 1."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch

from recdim.cli import main
from recdim.config import load
from recdim.modules.table_init import snapshot
from recdim.train.checkpoint import LATEST, Checkpointer
from recdim.train.distributed import destroy
from recdim.train.faults import ENV_VAR, FAULT_EXIT_CODE, Fault, configured_fault
from recdim.train.hooks import StepHook
from recdim.train.resume import load_training_state
from recdim.train.run import open_session
from tests.dist_utils import run_ranks

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "demo.toml")
# 10,000 rows -> 8,000 train rows: 15 steps per epoch of 512; 2 epochs = 30 steps.
# Checkpoints every 8 steps: 8 and 16 (epoch 1, after the first validation: a best snapshot exists), 24.
TRAIN = ("train.epochs=2", "train.progress=false", "train.sharding=table_wise", "train.checkpoint_every=8")
# 1 process vs 2 processes: the same global batches and initial tables; only float reduction order
# differs (README; tests/test_end_to_end.py). Observed differences are ~1e-9.
TOL = 1e-3


def _sets(data: Path, *extra: str) -> List[str]:
    out: List[str] = []
    for s in (f"prepare.output={data}", *TRAIN, *extra):
        out += ["--set", s]
    return out


def _results(run: Path) -> Dict[str, Any]:
    return json.loads((run / "results.json").read_text())


def _env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data")
    assert (
        main(["prepare", "--config", DEMO, "--set", f"prepare.output={path}", "--set", "prepare.synthetic.rows=10000"])
        == 0
    )
    return path


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """An uninterrupted single-process run with checkpoints."""
    run = tmp_path_factory.mktemp("reference")
    assert main(["train", "--config", DEMO, *_sets(data), "--out", str(run)]) == 0
    return run


# ---------------------------------------------------------------------------------------- fast


def _tensors(i: float) -> Dict[str, Any]:
    return {"w": torch.full((3, 2), i), "nested": {"b": torch.arange(4) * i}}


def test_commit_pointer_and_retention(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    assert ckpt.latest() is None
    (tmp_path / "ckpt" / "step-99.tmp").mkdir(parents=True)  # left by an earlier crash
    for step in (1, 2, 3):
        ckpt.save(step, _tensors(step), {"global_step": step})
    assert [p.name for p in ckpt.step_dirs()] == ["step-2", "step-3"]
    assert not list((tmp_path / "ckpt").glob("*.tmp"))
    assert (tmp_path / "ckpt" / LATEST).read_text().strip() == "step-3"
    state = _tensors(0)
    ckpt.load(ckpt.latest(), state)
    assert torch.equal(state["w"], torch.full((3, 2), 3.0)) and torch.equal(state["nested"]["b"], torch.arange(4) * 3)
    assert ckpt.read_meta(ckpt.latest()) == {"global_step": 3}
    # A resumed attempt that restarts from step 2 abandons step 3: the next commit deletes it.
    ckpt.save(2, _tensors(2), {"global_step": 2})
    assert [p.name for p in ckpt.step_dirs()] == ["step-2"]


class _Planted:
    """Unpickling this runs code (it creates a file): what a tampered .metadata could do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_tampered_checkpoint_is_refused_before_torch_reads_it(tmp_path):
    import pickle

    from recdim.train.checkpoint import DIGEST_FILE, CheckpointError

    ckpt = Checkpointer(tmp_path / "ckpt")
    path = ckpt.save(1, _tensors(1), {"global_step": 1})
    assert (path / DIGEST_FILE).is_file()
    ran = tmp_path / "planted-ran"
    (path / ".metadata").write_bytes(pickle.dumps(_Planted(str(ran))))
    with pytest.raises(CheckpointError, match=r"\.metadata: sha256 does not match"):
        ckpt.load(path, _tensors(0))
    assert not ran.exists()  # nothing was unpickled

    path = ckpt.save(2, _tensors(2), {"global_step": 2})
    (path / "extra.pkl").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="extra.pkl: not part of the checkpoint"):
        ckpt.load(path, _tensors(0))
    (path / "extra.pkl").unlink()
    ckpt.load(path, _tensors(0))  # untouched again: loads
    (path / DIGEST_FILE).unlink()
    with pytest.raises(CheckpointError, match="no digests.json"):
        ckpt.load(path, _tensors(0))


def test_crash_before_commit_keeps_previous_latest(tmp_path, monkeypatch):
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    ckpt.save(1, _tensors(1), {"global_step": 1})

    def crash(point: str, rank: int, step: int) -> None:
        raise SystemExit(f"killed at {point}")

    monkeypatch.setattr("recdim.train.checkpoint.maybe_crash", crash)
    with pytest.raises(SystemExit):
        ckpt.save(2, _tensors(2), {"global_step": 2})
    assert (tmp_path / "ckpt" / "step-2.tmp" / ".metadata").is_file()  # the shards were all written
    assert ckpt.latest() == tmp_path / "ckpt" / "step-1"
    state = _tensors(0)
    ckpt.load(ckpt.latest(), state)
    assert torch.equal(state["w"], torch.full((3, 2), 1.0))


def test_fault_injection_is_off_unless_asked(monkeypatch):
    assert Fault.parse("after_step:1:45") == Fault("after_step", 1, 45)
    with pytest.raises(ValueError):
        Fault.parse("after_step:one:45")
    configured_fault.cache_clear()
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert configured_fault() is None
    configured_fault.cache_clear()
    monkeypatch.setenv(ENV_VAR, "checkpoint_commit:0:8")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # the restarted attempt never crashes
    assert configured_fault() is None
    configured_fault.cache_clear()
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert configured_fault() == Fault("checkpoint_commit", 0, 8)
    configured_fault.cache_clear()


class CountingHook(StepHook):
    """A step hook with checkpointed state (implements ``state_dict`` / ``load_state_dict``)."""

    def __init__(self) -> None:
        self.count = torch.zeros((), dtype=torch.int64)

    def after_step(self, trainer, step, batch) -> None:
        self.count += 1

    def state_dict(self) -> Dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.count.copy_(state["count"])


def _local_optimizer_state(optimizer) -> Dict[str, torch.Tensor]:
    out = {}
    for key, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            local = value.local_shards()[0].tensor if hasattr(value, "local_shards") else value
            out[f"{key}/{name}"] = local.detach().clone()
    return out


class CaptureAt(StepHook):
    """Copies the trainer's state right after training step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self, trainer, step, batch) -> None:
        if step == self.step:
            st = trainer.fit_state
            self.model, self.optim = snapshot(trainer.model), _local_optimizer_state(trainer.optimizer)
            self.best = {k: [t.clone() for t in v] for k, v in st.best_state.items()}
            self.progress = (trainer.global_step, trainer.epoch, st.step_in_epoch, list(st.epoch_losses), st.best_value)


def _same(a: Dict[str, List[torch.Tensor]], b: Dict[str, List[torch.Tensor]]) -> bool:
    return a.keys() == b.keys() and all(
        len(a[k]) == len(b[k]) and all(torch.equal(x, y) for x, y in zip(a[k], b[k])) for k in a
    )


@pytest.mark.parametrize("optimizer", ["rowwise_adagrad", "sgd"])  # stateful, and stateless (no optimizer tensors)
def test_resume_restores_model_optimizer_progress_and_hooks(data, tmp_path, optimizer):
    lr = "0.05" if optimizer == "rowwise_adagrad" else "20.0"
    sets = (f"train.embedding_optimizer={optimizer}", f"train.embedding_lr={lr}")
    cfg = load(DEMO, (f"prepare.output={data}", *TRAIN, "train.max_steps=18", *sets))
    capture = CaptureAt(16)
    try:
        first = open_session(cfg, hooks=lambda s: [CountingHook(), capture], out_dir=tmp_path)
        first.trainer.fit(first.train_loader, first.val_loader)
        ckpt = Checkpointer(tmp_path / "ckpt")
        assert ckpt.latest() == tmp_path / "ckpt" / "step-16"
        second = open_session(cfg, hooks=lambda s: [CountingHook()])
        meta = load_training_state(second.trainer, ckpt, ckpt.latest())
    finally:
        destroy()
    b = second.trainer
    assert (meta["global_step"], meta["epoch"], meta["step_in_epoch"]) == (16, 1, 1)
    assert (
        b.global_step,
        b.epoch,
        b.fit_state.step_in_epoch,
        b.fit_state.epoch_losses,
        b.fit_state.best_value,
    ) == capture.progress
    assert b.hooks[0].count.item() == 16
    assert b.fit_state.result.best_epoch == 0 and len(b.fit_state.result.history) == 1
    assert _same(snapshot(b.model), capture.model)
    assert _same(b.fit_state.best_state, capture.best)
    optim = _local_optimizer_state(b.optimizer)
    assert optim.keys() == capture.optim.keys() and all(torch.equal(optim[k], capture.optim[k]) for k in optim)
    assert any("fused" in k for k in optim) == (optimizer == "rowwise_adagrad")


# ---------------------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_crash_while_writing_keeps_previous_checkpoint_and_resumes_exactly(data, reference, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "recdim.cli", "train", "--config", DEMO, *_sets(data), "--out", str(run)]
    proc = subprocess.run(
        cmd, env=_env(**{ENV_VAR: "checkpoint_commit:0:16"}), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == FAULT_EXIT_CODE, proc.stderr[-3000:]
    ckpt = Checkpointer(run / "ckpt")
    assert (run / "ckpt" / "step-16.tmp").is_dir()
    assert ckpt.latest() == run / "ckpt" / "step-8"
    assert not (run / "results.json").exists()
    # Restarting the command resumes from step 8; one process repeats the same steps bit for bit.
    assert main(["train", "--config", DEMO, *_sets(data), "--out", str(run)]) == 0
    res, ref = _results(run), _results(reference)
    assert res["resumed_from_step"] == 8 and ref["resumed_from_step"] is None
    assert res["steps"] == ref["steps"] == 30
    assert (res["val"], res["test"], res["history"]) == (ref["val"], ref["test"], ref["history"])
    assert [p.name for p in ckpt.step_dirs()] == ["step-16", "step-24"]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_killed_worker_restarts_under_torchrun_and_resumes(data, reference, tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--max-restarts=1",
        "-m",
        "recdim.cli",
        "train",
        "--config",
        DEMO,
        *_sets(data),
        "--out",
        str(run),
    ]
    # Rank 1 dies after step 20; the last checkpoint is step 16 (epoch 1, step 1 of the epoch).
    # TORCH_DISABLE_SHARE_RDZV_TCP_STORE: see launch/components.py (pytorch/pytorch#135712).
    env = _env(**{ENV_VAR: "after_step:1:20", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"exitcode: {FAULT_EXIT_CODE}" in proc.stderr  # the worker did die
    res, ref = _results(run), _results(reference)
    assert res["resumed_from_step"] == 16 and res["world_size"] == 2
    assert res["steps"] == ref["steps"] == 30 and res["best_epoch"] == ref["best_epoch"]
    for split in ("val", "test"):
        for metric in ("auc", "logloss"):
            assert abs(res[split][metric] - ref[split][metric]) < TOL, (split, metric, res[split], ref[split])


def _train_two_ranks(rank: int, world: int, data: str, out: str) -> torch.Tensor:
    cfg = load(DEMO, (f"prepare.output={data}", *TRAIN, "train.max_steps=8"))
    session = open_session(cfg, out_dir=Path(out))
    session.trainer.fit(session.train_loader, session.val_loader)  # checkpoint at step 8, the last step
    return session.trainer.predict(session.val_loader)[0]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_checkpoint_of_two_processes_loads_into_one(data, tmp_path):
    two = run_ranks(2, _train_two_ranks, str(data), str(tmp_path))[0]
    try:
        session = open_session(load(DEMO, (f"prepare.output={data}", *TRAIN)))
        ckpt = Checkpointer(tmp_path / "ckpt")
        meta = load_training_state(session.trainer, ckpt, ckpt.latest())
        one = session.trainer.predict(session.val_loader)[0]
    finally:
        destroy()
    assert meta["world_size"] == 2 and session.ctx.world_size == 1 and meta["global_step"] == 8
    assert torch.equal(one, two)


def test_a_changed_config_is_refused_unless_asked(data, reference, tmp_path, capsys):
    """The reference run's checkpoints were written at lr 1e-3; resuming at another lr (or K) is refused
    with the changed keys named, before any tensor is read; ``train.resume`` starts over or continues."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "results.json").unlink()
    args = ["train", "--config", DEMO, *_sets(data), "--out", str(run)]
    assert main([*args, "--set", "train.lr=0.01", "--set", "model.embedding_dim=8"]) == 1
    err = capsys.readouterr().err
    assert "checkpointed with another config" in err and "train.lr: 0.001 -> 0.01" in err
    assert "model.embedding_dim: 16 -> 8" in err and "Traceback" not in err
    assert main([*args, "--set", "train.progress=true"]) == 0  # output-only keys are not changes
    assert _results(run)["resumed_from_step"] == 24 and "config_changes_on_resume" not in _results(run)
    assert main([*args, "--set", "train.lr=0.01", "--set", "train.resume=continue"]) == 0
    res = _results(run)
    assert res["resumed_from_step"] == 24 and res["config_changes_on_resume"] == ["train.lr: 0.001 -> 0.01"]
    assert main([*args, "--set", "train.lr=0.01", "--set", "train.resume=fresh"]) == 0
    assert _results(run)["resumed_from_step"] is None


def test_a_setting_added_since_the_checkpoint_counts_as_unchanged_at_its_default():
    from recdim.train.resume import config_changes

    defaults = {"model": {"arch": "dlrm", "heads": 2}, "train": {"lr": 0.001}}
    saved = {"model": {"arch": "dlrm"}, "train": {"lr": 0.001}}
    assert config_changes(saved, defaults, defaults) == []
    assert config_changes(saved, {"model": {"arch": "dlrm", "heads": 4}, "train": {"lr": 0.001}}, defaults) == [
        "model.heads: '<unset>' -> 4"
    ]
    assert config_changes(saved, defaults) == ["model.heads: '<unset>' -> 2"]  # no defaults: every new key counts
