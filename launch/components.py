"""TorchX components for recdim: one per command, all on TorchX's torchrun component (``dist.ddp``).

Each component returns an :class:`~torchx.specs.AppDef` that runs
``torchrun ... -m recdim.cli <command> --config CONFIG --out OUT --set k=v ...`` on ``nnodes`` hosts with
``nproc_per_node`` processes each. The same component runs on any TorchX scheduler; only ``-s`` changes:

.. code:: shell-session

    $ torchx run -s local_cwd launch/components.py:train --config configs/demo.toml --out runs/demo-2p \\
        --nproc_per_node 2 train.epochs=2
    $ torchx run -s slurm launch/components.py:search --config configs/criteo.toml --out /shared/runs/dnis \\
        --nnodes 2 --nproc_per_node 8 --gpu 8 --max_restarts 3 search.method=dnis
    $ torchx run -s kubernetes -cfg queue=default launch/components.py:run --image REGISTRY/recdim:TAG ...

Positional arguments are config overrides (``train.epochs=2``); each becomes ``--set train.epochs=2``.

Restarts: ``max_restarts`` is torchrun's (a failed worker restarts the whole worker group in place, up to
N times); ``max_retries`` is the scheduler's (the job is resubmitted). Either way the command resumes
from the latest checkpoint in its ``--out`` directory (``train.checkpoint_every``), so ``--out`` must be
on storage every host sees. Components set ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``: with torchrun's
shared rendezvous store a restarted gloo / nccl group can read the previous attempt's addresses
(pytorch/pytorch#135712).
"""

from typing import Callable, Dict, List, Optional, Sequence

import torchx.specs as specs
from torchx.components.dist import ddp

DEFAULT_IMAGE = "recdim:latest"
MODULE = "recdim.cli"

JOB_ARGS_DOC = """
    Args:
        overrides: config overrides KEY=VALUE (each becomes --set KEY=VALUE)
        config: TOML config path (inside the image, or the working directory for local_cwd)
        out: run directory (checkpoints, results.json); must be visible to every host
        nnodes: number of hosts
        nproc_per_node: processes per host (one per GPU on GPU hosts)
        image: container image with recdim installed (ignored by local_cwd)
        name: job name (default recdim-<command>)
        h: TorchX named resource; overrides cpu, gpu and memMB
        cpu: CPUs per host
        gpu: GPUs per host
        memMB: memory per host (MB)
        max_restarts: torchrun restarts of the worker group after a failure (resumes from the latest checkpoint)
        max_retries: scheduler retries of the whole job (resumes from the latest checkpoint)
        env: extra environment variables (K1=V1,K2=V2)
        mounts: scheduler mounts (type=bind,src=/host,dst=/job)
        rdzv_port: rendezvous port on the first host (multi-host jobs)

    Returns:
        The job definition.
"""


def _job_args_doc(fn: Callable[..., specs.AppDef]) -> Callable[..., specs.AppDef]:
    """Appends the arguments every component shares to its docstring (TorchX shows them in ``--help``)."""
    fn.__doc__ = (fn.__doc__ or "").rstrip() + "\n" + JOB_ARGS_DOC
    return fn


def _arg_doc(arg: str, what: str) -> Callable[[Callable[..., specs.AppDef]], Callable[..., specs.AppDef]]:
    """Documents a component's own argument ``arg`` beside the shared ones."""

    def deco(fn: Callable[..., specs.AppDef]) -> Callable[..., specs.AppDef]:
        fn.__doc__ = (fn.__doc__ or "").replace("    Args:\n", f"    Args:\n        {arg}: {what}\n", 1)
        return fn

    return deco


def _from_run_doc(what: str) -> Callable[[Callable[..., specs.AppDef]], Callable[..., specs.AppDef]]:
    """Documents the ``from_run`` argument (``--from``) beside the shared ones."""
    return _arg_doc("from_run", f"{what} (--from)")


def recdim_app(
    command: str,
    config: str,
    out: str,
    overrides: List[str],
    nnodes: int = 1,
    nproc_per_node: int = 1,
    image: str = DEFAULT_IMAGE,
    name: str = "",
    h: Optional[str] = None,
    cpu: int = 4,
    gpu: int = 0,
    memMB: int = 16384,
    max_restarts: int = 0,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
    rdzv_port: int = 29500,
    extra_args: Sequence[str] = (),
) -> specs.AppDef:
    """The AppDef of ``recdim <command>`` under torchrun (what every component below returns).

    Args:
        command: the recdim subcommand (``train``, ``search``, ``retrain``, ``export``, ``bench``, ``run``).
        config: the TOML config, as a path inside the image (or the working directory for ``local_cwd``).
        out: the run directory (checkpoints, results); shared by all hosts.
        overrides: ``key=value`` config overrides, each passed as ``--set key=value``.
        nnodes: hosts.
        nproc_per_node: processes per host (one per GPU on GPU hosts).
        image: container image with recdim installed (ignored by ``local_cwd``).
        name: job name; ``recdim-<command>`` when empty.
        h: a TorchX named resource (e.g. ``aws_p4d.24xlarge``); overrides ``cpu``, ``gpu``, ``memMB``.
        cpu: CPUs per host.
        gpu: GPUs per host.
        memMB: memory per host in MB.
        max_restarts: torchrun worker-group restarts (``--max-restarts``).
        max_retries: scheduler retries of the whole job.
        env: extra environment variables.
        mounts: scheduler mounts (``type=bind,src=/host,dst=/job``; see the scheduler's docs).
        rdzv_port: rendezvous port on the first host (multi-host jobs).

    Returns:
        A one-role AppDef; the role is named after ``command``.

    Example::

        app = recdim_app("train", "configs/demo.toml", "runs/demo", ["train.epochs=2"], nproc_per_node=2)
        app.roles[0].args   # ["-c", "torchrun ... -m recdim.cli train --config configs/demo.toml ..."]
    """
    for o in overrides:
        if "=" not in o or o.startswith("-"):
            raise ValueError(f"config override {o!r} is not KEY=VALUE (for example train.epochs=2)")
    if nnodes < 1 or nproc_per_node < 1 or max_restarts < 0 or max_retries < 0:
        raise ValueError("nnodes and nproc_per_node must be >= 1, max_restarts and max_retries >= 0")
    args = [command, "--config", config, "--out", out, *extra_args]
    for o in overrides:
        args += ["--set", o]
    job_env = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "PET_MAX_RESTARTS": str(max_restarts)}
    job_env.update(env or {})
    app = ddp(
        *args,
        m=MODULE,
        image=image,
        name=name or f"recdim-{command}",
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=f"{nnodes}x{nproc_per_node}",
        env=job_env,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        mounts=mounts,
    )
    app.roles[0].name = command
    return app


@_job_args_doc
def train(
    *overrides: str,
    config: str,
    out: str,
    nnodes: int = 1,
    nproc_per_node: int = 1,
    image: str = DEFAULT_IMAGE,
    name: str = "",
    h: Optional[str] = None,
    cpu: int = 4,
    gpu: int = 0,
    memMB: int = 16384,
    max_restarts: int = 0,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
    rdzv_port: int = 29500,
) -> specs.AppDef:
    """``recdim train``: the uniform-dimension baseline, sharded over nnodes x nproc_per_node processes."""
    return recdim_app(
        "train",
        config,
        out,
        list(overrides),
        nnodes,
        nproc_per_node,
        image,
        name,
        h,
        cpu,
        gpu,
        memMB,
        max_restarts,
        max_retries,
        env,
        mounts,
        rdzv_port,
    )


@_job_args_doc
def search(
    *overrides: str,
    config: str,
    out: str,
    nnodes: int = 1,
    nproc_per_node: int = 1,
    image: str = DEFAULT_IMAGE,
    name: str = "",
    h: Optional[str] = None,
    cpu: int = 4,
    gpu: int = 0,
    memMB: int = 16384,
    max_restarts: int = 0,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
    rdzv_port: int = 29500,
) -> specs.AppDef:
    """``recdim search``: learn per-feature embedding dimensions (method from search.method)."""
    return recdim_app(
        "search",
        config,
        out,
        list(overrides),
        nnodes,
        nproc_per_node,
        image,
        name,
        h,
        cpu,
        gpu,
        memMB,
        max_restarts,
        max_retries,
        env,
        mounts,
        rdzv_port,
    )


@_from_run_doc("the pruned model directory to retrain (recdim prune output, e.g. runs/pruned/cr-4)")
@_job_args_doc
def retrain(
    *overrides: str,
    from_run: str,
    config: str,
    out: str,
    nnodes: int = 1,
    nproc_per_node: int = 1,
    image: str = DEFAULT_IMAGE,
    name: str = "",
    h: Optional[str] = None,
    cpu: int = 4,
    gpu: int = 0,
    memMB: int = 16384,
    max_restarts: int = 0,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
    rdzv_port: int = 29500,
) -> specs.AppDef:
    """``recdim retrain``: retrain a pruned model on its tier tables (sharded) and export it."""
    return recdim_app(
        "retrain",
        config,
        out,
        list(overrides),
        nnodes,
        nproc_per_node,
        image,
        name,
        h,
        cpu,
        gpu,
        memMB,
        max_restarts,
        max_retries,
        env,
        mounts,
        rdzv_port,
        ["--from", from_run],
    )


@_from_run_doc("the retrain run directory to export")
@_job_args_doc
def export(
    *overrides: str,
    from_run: str,
    config: str,
    out: str,
    nnodes: int = 1,
    nproc_per_node: int = 1,
    image: str = DEFAULT_IMAGE,
    name: str = "",
    h: Optional[str] = None,
    cpu: int = 4,
    gpu: int = 0,
    memMB: int = 16384,
    max_restarts: int = 0,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
    rdzv_port: int = 29500,
) -> specs.AppDef:
    """``recdim export``: write the compressed serving artifact (manifest + tensors) of a retrained run."""
    return recdim_app(
        "export",
        config,
        out,
        list(overrides),
        nnodes,
        nproc_per_node,
        image,
        name,
        h,
        cpu,
        gpu,
        memMB,
        max_restarts,
        max_retries,
        env,
        mounts,
        rdzv_port,
        ["--from", from_run],
    )


@_arg_doc("benchmark", "the benchmark to run, a script stem in benchmarks/ such as train_throughput (--name)")
@_job_args_doc
def bench(
    *overrides: str,
    benchmark: str,
    config: str,
    out: str,
    nnodes: int = 1,
    nproc_per_node: int = 1,
    image: str = DEFAULT_IMAGE,
    name: str = "",
    h: Optional[str] = None,
    cpu: int = 4,
    gpu: int = 0,
    memMB: int = 16384,
    max_restarts: int = 0,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
    rdzv_port: int = 29500,
) -> specs.AppDef:
    """``recdim bench``: one benchmark from benchmarks/ (memory, throughput), JSON rows in OUT/BENCHMARK.jsonl.

    The benchmark starts its own processes; under several processes only rank 0 runs it.
    """
    return recdim_app(
        "bench",
        config,
        out,
        list(overrides),
        nnodes,
        nproc_per_node,
        image,
        name,
        h,
        cpu,
        gpu,
        memMB,
        max_restarts,
        max_retries,
        env,
        mounts,
        rdzv_port,
        ["--name", benchmark],
    )


@_job_args_doc
def run(
    *overrides: str,
    config: str,
    out: str,
    nnodes: int = 1,
    nproc_per_node: int = 1,
    image: str = DEFAULT_IMAGE,
    name: str = "",
    h: Optional[str] = None,
    cpu: int = 4,
    gpu: int = 0,
    memMB: int = 16384,
    max_restarts: int = 0,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
    rdzv_port: int = 29500,
) -> specs.AppDef:
    """``recdim run``: the whole pipeline (search, prune, retrain, export) in one job."""
    return recdim_app(
        "run",
        config,
        out,
        list(overrides),
        nnodes,
        nproc_per_node,
        image,
        name,
        h,
        cpu,
        gpu,
        memMB,
        max_restarts,
        max_retries,
        env,
        mounts,
        rdzv_port,
    )
