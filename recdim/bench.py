"""Running a named benchmark: ``benchmarks/<name>.py`` in a fresh interpreter, its JSON rows under one directory.

The benchmarks are standalone scripts (each with its own argparse, each starting its own processes), so
``recdim bench`` only finds the script and runs it; it adds ``--out <out_dir>/<name>.jsonl`` and, where the
script takes them, ``--config`` and ``--set``, then the pass-through arguments.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence, Union

log = logging.getLogger(__name__)

ENV_VAR = "RECDIM_BENCHMARKS"
"""Environment variable naming the benchmarks directory (overrides the search below)."""

# What torchrun sets for its workers; a benchmark starts its own ranks, so it must not see them.
_LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_NAME",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)
_OPTION = re.compile(r"""add_argument\(\s*["'](--[\w-]+)["']""")


def benchmarks_dir(cwd: Union[str, Path, None] = None) -> Path:
    """The directory holding the benchmark scripts.

    Looks at ``$RECDIM_BENCHMARKS``, then ``./benchmarks`` in ``cwd`` (the working directory by default),
    then ``benchmarks/`` beside the installed package (the repository root of an editable install).

    Args:
        cwd: the directory to look for ``benchmarks/`` in; the working directory when ``None``.

    Returns:
        The first of those that is a directory.

    Raises:
        FileNotFoundError: ``$RECDIM_BENCHMARKS`` is set but not a directory, or no candidate exists.

    Example::

        benchmarks_dir()   # PosixPath('benchmarks') when run from the repository root
    """
    env = os.environ.get(ENV_VAR)
    if env:
        if not Path(env).is_dir():
            raise FileNotFoundError(f"${ENV_VAR}={env} is not a directory")
        return Path(env)
    import recdim

    candidates = [Path(cwd or ".") / "benchmarks", Path(recdim.__file__).resolve().parents[1] / "benchmarks"]
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(f"no benchmarks directory: set ${ENV_VAR} (looked in {', '.join(map(str, candidates))})")


def available(directory: Union[str, Path, None] = None) -> Dict[str, Path]:
    """The benchmarks in ``directory`` (default :func:`benchmarks_dir`): ``{name: script}``, sorted by name.

    Every ``*.py`` file not starting with ``_`` is a benchmark named after its stem.

    Example::

        sorted(available())   # ['artifact_bytes', 'lookup_throughput', 'retrain_memory', ..., 'train_throughput']
    """
    d = Path(directory) if directory is not None else benchmarks_dir()
    return {p.stem: p for p in sorted(d.glob("*.py")) if not p.name.startswith("_")}


def summary(script: Union[str, Path]) -> str:
    """The first line of ``script``'s module docstring (``""`` when it has none)."""
    doc = ast.get_docstring(ast.parse(Path(script).read_text()))
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


def options(script: Union[str, Path]) -> FrozenSet[str]:
    """The long options ``script`` declares with ``add_argument("--x", ...)``, read from its source (not run)."""
    return frozenset(_OPTION.findall(Path(script).read_text()))


def command(
    name: str,
    out_dir: Union[str, Path, None] = None,
    config: Optional[str] = None,
    overrides: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    directory: Union[str, Path, None] = None,
) -> List[str]:
    """The command line that runs benchmark ``name``.

    ``--config`` and each ``--set`` are passed only to a script that declares them (a warning says when
    one is dropped); ``extra_args`` come last, so they win over the options added here.

    Args:
        name: the benchmark, a script stem in ``directory``.
        out_dir: where the rows go, as ``--out <out_dir>/<name>.jsonl``; the script's default when ``None``.
        config: a recdim TOML config for scripts that take ``--config``.
        overrides: ``key=value`` config overrides for scripts that take ``--set``.
        extra_args: arguments passed to the script unchanged.
        directory: the benchmarks directory; :func:`benchmarks_dir` when ``None``.

    Returns:
        ``[sys.executable, script, ...]``.

    Raises:
        ValueError: ``name`` is not a benchmark; the message lists the available names.

    Example::

        command("train_throughput", "bench-out", extra_args=["--worlds", "1"])
        # [python, '.../benchmarks/train_throughput.py', '--out', 'bench-out/train_throughput.jsonl', '--worlds', '1']
    """
    scripts = available(directory)
    if name not in scripts:
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(scripts) or '(none)'}")
    script = scripts[name]
    takes = options(script)
    cmd = [sys.executable, str(script)]
    if out_dir is not None and "--out" in takes:
        cmd += ["--out", str(Path(out_dir) / f"{name}.jsonl")]
    if config is not None:
        if "--config" in takes:
            cmd += ["--config", config]
        else:
            log.warning("%s takes no --config; not passing %s", name, config)
    if overrides:
        if "--set" in takes:
            for o in overrides:
                cmd += ["--set", o]
        else:
            log.warning("%s takes no --set; not passing %s", name, " ".join(overrides))
    return cmd + list(extra_args)


def format_list(directory: Union[str, Path, None] = None) -> str:
    """One line per benchmark: its name and the first line of its docstring (what ``recdim bench --list`` prints)."""
    scripts = available(directory)
    width = max((len(n) for n in scripts), default=0)
    return "\n".join(f"{n:<{width}}  {summary(p)}".rstrip() for n, p in scripts.items())


def run_bench(
    name: str,
    out_dir: Union[str, Path, None] = None,
    config: Optional[str] = None,
    overrides: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    directory: Union[str, Path, None] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> int:
    """Runs benchmark ``name`` in a fresh interpreter (its own argparse) and returns its exit code.

    A benchmark starts its own ranks, so under torchrun only global rank 0 runs it (the others return 0),
    and the script sees none of torchrun's rank / rendezvous variables.

    Args:
        name: the benchmark (see :func:`available`).
        out_dir: directory for ``<name>.jsonl`` (created); the script's own default when ``None``.
        config: a recdim TOML config, for scripts that take ``--config``.
        overrides: ``key=value`` config overrides, for scripts that take ``--set``.
        extra_args: arguments passed to the script unchanged (after the ones above).
        directory: the benchmarks directory; :func:`benchmarks_dir` when ``None``.
        environ: the environment to start from; ``os.environ`` when ``None``.

    Returns:
        The script's exit code.

    Raises:
        ValueError: ``name`` is not a benchmark (the message lists the available names).
        FileNotFoundError: no benchmarks directory was found.

    Example::

        run_bench("train_throughput", "bench-out", extra_args=["--worlds", "1", "--steps", "5"])
        # rows appended to bench-out/train_throughput.jsonl
    """
    env = dict(os.environ if environ is None else environ)
    cmd = command(name, out_dir, config, overrides, extra_args, directory)
    if int(env.get("RANK", "0")) != 0:
        log.info("rank %s: benchmark %s runs on rank 0 only", env["RANK"], name)
        return 0
    for k in list(env):
        if k in _LAUNCHER_VARS or k.startswith("TORCHELASTIC_"):
            del env[k]
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    log.info("running %s", " ".join(cmd))
    return subprocess.run(cmd, check=False, env=env).returncode
