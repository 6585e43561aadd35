"""TorchX components: the AppDefs they build, and ``torchx run -s local_cwd`` end to end (2 processes)."""

import configparser
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from torchx.specs import macros
from torchx.specs.file_linter import validate

from launch import components
from recdim.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ROOT / "launch" / "components.py"
NAMES = ("train", "search", "retrain", "export", "bench", "run")
FROM = {"retrain": "runs/pruned/cr-4", "export": "runs/retrain-cr-4"}  # components that start from a run
BENCH = "train_throughput"
# Each component's own arguments, and the recdim options they become.
KWARGS = {**{n: {"from_run": r} for n, r in FROM.items()}, "bench": {"benchmark": BENCH}}
OWN_ARGS = {**{n: ["--from", r] for n, r in FROM.items()}, "bench": ["--name", BENCH]}


def _torchrun(app) -> list:
    role = app.roles[0]
    assert role.entrypoint == "bash" and role.args[0] == "-c"
    return shlex.split(role.args[1])


@pytest.mark.parametrize("name", NAMES)
def test_component_builds_torchrun_app(name):
    fn = getattr(components, name)
    assert validate(str(COMPONENTS), name) == []  # what `torchx run` checks before calling it
    extra = KWARGS.get(name, {})
    app = fn(
        "train.epochs=2",
        "model.arch=deepfm",
        config="configs/demo.toml",
        out="/shared/runs/x",
        nnodes=2,
        nproc_per_node=4,
        image="reg/recdim:1",
        cpu=16,
        gpu=4,
        memMB=65536,
        max_restarts=3,
        max_retries=2,
        env={"FOO": "1"},
        **extra,
    )
    role = app.roles[0]
    cmd = _torchrun(app)
    assert cmd[0] == "torchrun"
    assert cmd[cmd.index("--nnodes") + 1] == "2" and cmd[cmd.index("--nproc_per_node") + 1] == "4"
    assert cmd[cmd.index("-m") + 1 :] == [
        "recdim.cli",
        name,
        "--config",
        "configs/demo.toml",
        "--out",
        "/shared/runs/x",
        *OWN_ARGS.get(name, []),
        "--set",
        "train.epochs=2",
        "--set",
        "model.arch=deepfm",
    ]
    # Several hosts rendezvous at the first host's address, which the scheduler fills in.
    assert macros.rank0_env in role.args[1]
    assert (app.name, role.name, role.image) == (f"recdim-{name}", name, "reg/recdim:1")
    assert (role.num_replicas, role.max_retries) == (2, 2)
    assert (role.resource.cpu, role.resource.gpu, role.resource.memMB) == (16, 4, 65536)
    assert role.env["PET_MAX_RESTARTS"] == "3"  # torchrun's --max-restarts, read from the environment
    assert role.env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1" and role.env["FOO"] == "1"


@pytest.mark.parametrize("name", NAMES)
def test_component_command_is_one_recdim_accepts(name, capsys):
    """What each component runs (``recdim.cli <command> ...``) parses with recdim's own parser."""
    app = getattr(components, name)("train.epochs=2", config="configs/demo.toml", out="runs/x", **KWARGS.get(name, {}))
    cmd = _torchrun(app)
    module, command, *rest = cmd[cmd.index("-m") + 1 :]
    assert (module, command) == (components.MODULE, name)
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([command, "--help"])
    assert e.value.code == 0 and f"usage: recdim {command}" in capsys.readouterr().out
    args = build_parser().parse_args([command, *rest])  # a rejected argument would raise SystemExit(2)
    assert (args.command, args.config, args.out, args.overrides) == (
        name,
        "configs/demo.toml",
        "runs/x",
        ["train.epochs=2"],
    )
    if name in FROM:
        assert args.from_dir == FROM[name]
    if name == "bench":
        assert (args.name, args.list, args.script_args) == (BENCH, False, [])


def test_component_defaults_and_named_resources():
    app = components.train(config="c.toml", out="runs/a")
    role = app.roles[0]
    cmd = _torchrun(app)
    assert cmd[cmd.index("--nnodes") + 1] == "1" and cmd[cmd.index("--nproc_per_node") + 1] == "1"
    assert cmd[cmd.index("--rdzv_endpoint") + 1] == "localhost:0"
    assert "--set" not in cmd and role.env["PET_MAX_RESTARTS"] == "0" and role.max_retries == 0
    named = components.search(config="c.toml", out="runs/a", h="aws_p4d.24xlarge").roles[0].resource
    assert named.gpu == 8  # the named resource wins over cpu / gpu / memMB
    with pytest.raises(ValueError, match="KEY=VALUE"):
        components.train("--set", config="c.toml", out="runs/a")


def test_torchxconfig_defaults_to_local_cwd():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".torchxconfig")
    assert cfg["cli:run"]["scheduler"] == "local_cwd"
    assert "local_cwd" in cfg


@pytest.mark.multiprocess
@pytest.mark.slow
def test_torchx_local_cwd_two_processes_match_one(tmp_path):
    """``torchx run -s local_cwd launch/components.py:train`` with 2 gloo processes vs 1 process."""
    cfg = str(ROOT / "configs" / "demo.toml")
    data = tmp_path / "data"
    sets = [f"prepare.output={data}", "train.epochs=2", "train.progress=false", "train.sharding=table_wise"]
    assert main(["prepare", "--config", cfg, "--set", sets[0], "--set", "prepare.synthetic.rows=10000"]) == 0
    args = [a for s in sets for a in ("--set", s)]
    assert main(["train", "--config", cfg, *args, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "results.json").read_text())

    bindir = str(Path(sys.executable).parent)  # torchx and torchrun of this environment
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    cmd = [
        os.path.join(bindir, "torchx"),
        "run",
        "-s",
        "local_cwd",
        "-cfg",
        f"log_dir={tmp_path / 'logs'}",
        "launch/components.py:train",
        "--config",
        cfg,
        "--out",
        str(tmp_path / "two"),
        "--nproc_per_node",
        "2",
        *sets,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0 and "SUCCEEDED" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2) and one["steps"] == two["steps"]
    # Same init and global batches; only float reduction order differs (observed ~1e-9).
    for split in ("val", "test"):
        for metric in ("auc", "logloss"):
            assert abs(one[split][metric] - two[split][metric]) < 1e-3, (split, metric, one[split], two[split])
