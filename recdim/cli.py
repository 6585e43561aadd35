"""The ``recdim`` command: parse, call, print. Every subcommand takes ``--config FILE`` and ``--set a.b=v``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from recdim.config import Config, load
from recdim.config_io import ConfigError


def _common(p: argparse.ArgumentParser, out_default: Optional[str]) -> None:
    p.add_argument("--config", help="TOML config file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    if out_default is not None:
        p.add_argument("--out", default=out_default, help=f"run directory (default: {out_default})")


def _summary(results: Dict[str, Any]) -> str:
    parts = [f"test {k} {v:.4f}" for k, v in results["test"].items()]
    parts += [f"val {k} {v:.4f}" for k, v in results["val"].items()]
    parts.append(f"embedding params {results['params']:,} ({results['bytes']:,} bytes)")
    return ", ".join(parts)


def cmd_prepare(cfg: Config, args: argparse.Namespace) -> int:
    from recdim.data.preprocess import prepare

    out = prepare(cfg.prepare)
    print(f"prepared dataset written to {out}")
    return 0


def cmd_train(cfg: Config, args: argparse.Namespace) -> int:
    from recdim.train.run import run_train

    results = run_train(cfg, Path(args.out))
    if results is not None and _is_main():
        print(_summary(results))
        print(f"results: {Path(args.out) / 'results.json'}")
    return 0


def cmd_search(cfg: Config, args: argparse.Namespace) -> int:
    from recdim.search.run import run_search

    results = run_search(cfg, Path(args.out), method=args.method)
    if _is_main():
        print(f"{results['search']['method']}: " + _summary(results))
        print(f"run directory: {args.out}")
    return 0


def cmd_demo(cfg: Config, args: argparse.Namespace) -> int:
    """Prepares the configured data when it is not there yet, then trains."""
    from recdim.data.preprocess import prepare

    data = Path(cfg.data_path)
    if not (data / "meta.json").exists():
        prepare(cfg.prepare)
    return cmd_train(cfg, args)


def _is_main() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


COMMANDS = {
    "prepare": (cmd_prepare, "raw files -> Parquet shards + stats", None),
    "train": (cmd_train, "train the uniform-dimension baseline", "runs/train"),
    "search": (cmd_search, "learn embedding dimensions with a search method", "runs/search"),
    "demo": (cmd_demo, "prepare (if needed) and train on the configured data", "runs/demo"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recdim", description="Learn, prune and serve mixed embedding dimensions on TorchRec.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text, out_default) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        _common(p, out_default)
        if name == "search":
            p.add_argument("--method", choices=["dnis", "autosrh", "pep", "autodim"], help="overrides search.method")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # FBGEMM and TorchRec log every table build at INFO on the root logger; keep ours only.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("recdim").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger("torchrec").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        cfg = load(args.config, tuple(args.overrides))
    except ConfigError as e:
        print(f"recdim: config error: {e}", file=sys.stderr)
        return 2
    fn = COMMANDS[args.command][0]
    try:
        return fn(cfg, args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        if args.verbose:
            raise
        print(f"recdim {args.command}: error: {e}", file=sys.stderr)
        return 1
    finally:
        from recdim.train.distributed import destroy

        destroy()


if __name__ == "__main__":
    sys.exit(main())
