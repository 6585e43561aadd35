"""The ``recdim`` command: parse, call, print. Every subcommand takes ``--config FILE`` and ``--set a.b=v``."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from recdim.config import Config, load
from recdim.config.methods import names as method_names
from recdim.config_io import ConfigError

OUT_HELP = {"predict": "CSV file of predictions", "export": "artifact directory", "bench": "directory of JSON rows"}


def _common(p: argparse.ArgumentParser, out_default: Optional[str]) -> None:
    p.add_argument("--config", help="TOML config file (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 (repeatable)",
    )
    if out_default is not None:
        what = OUT_HELP.get(p.prog.split()[-1], "run directory")
        p.add_argument("--out", default=out_default, help=f"{what} (default: {out_default})")


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


def cmd_prune(cfg: Config, args: argparse.Namespace) -> int:
    from recdim.prune.run import run_prune

    for d in run_prune(cfg, Path(args.from_dir), Path(args.out)):
        print(f"pruned model: {d}")
    return 0


def cmd_retrain(cfg: Config, args: argparse.Namespace) -> int:
    from recdim.export.retrained import export_step
    from recdim.retrain.tiers import run_retrain

    results = run_retrain(cfg, Path(args.from_dir), Path(args.out), after=[export_step()])
    if _is_main():
        print(f"retrained CR {results['prune']['cr']:.2f}: " + _summary(results))
        print(f"artifact: {results['export']}")
    return 0


def cmd_export(cfg: Config, args: argparse.Namespace) -> int:
    from recdim.export.from_run import export_run

    path = export_run(Path(args.from_dir), Path(args.out))
    if args.dtype != "float32":
        from recdim.export.recode import recode_artifact

        recode_artifact(path, args.dtype)
    print(f"artifact: {path} ({args.dtype} values)")
    if args.torchrec:
        from recdim.export.torchrec_export import export_torchrec

        export_torchrec(path, Path(args.torchrec))
        print(f"TorchRec export: {args.torchrec}")
    return 0


def cmd_predict(cfg: Config, args: argparse.Namespace) -> int:
    from recdim.export.predict import predict_file

    n = predict_file(Path(args.model), Path(args.input), Path(args.out))
    print(f"{n} predictions written to {args.out}")
    return 0


def cmd_inspect(cfg: Config, args: argparse.Namespace) -> int:
    from recdim.export.inspect import format_summary, summarize

    print(format_summary(summarize(Path(args.model))))
    return 0


def cmd_compare(cfg: Config, args: argparse.Namespace) -> int:
    """methods x arches x budgets x seeds, resumable; writes compare.md / .json / .png."""
    from recdim.compare.report import write_compare_report
    from recdim.compare.runner import run_compare

    if args.report_only:
        paths = write_compare_report(Path(args.out or cfg.compare.output), cfg.compare.methods, cfg.compare.arches)
        print(f"report: {paths['markdown']}")
        return 0
    s = run_compare(cfg, out_dir=args.out)
    print(f"{s.ran} cells run, {s.skipped} already done, {len(s.failed)} failed; report: {s.report['markdown']}")
    return 1 if s.failed else 0


def cmd_bench(cfg: Config, args: argparse.Namespace) -> int:
    """Runs ``benchmarks/<name>.py`` (``--list``: the names); see :mod:`recdim.bench`."""
    from recdim.bench import format_list, run_bench

    if args.list:
        print(format_list())
        return 0
    if not args.name:
        raise ValueError("give --name NAME (recdim bench --list shows the names)")
    return run_bench(args.name, args.out, args.config, args.overrides, args.script_args)


def cmd_run(cfg: Config, args: argparse.Namespace) -> int:
    """prepare -> search -> prune -> retrain -> export -> report."""
    from recdim.pipeline import run_pipeline

    run_pipeline(cfg, Path(args.out), args.config, args.overrides)
    if _is_main():
        print((Path(args.out) / "report.md").read_text())
    return 0


def _is_main() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


COMMANDS = {
    "prepare": (cmd_prepare, "raw files -> Parquet shards + stats", None),
    "train": (cmd_train, "train the uniform-dimension baseline", "runs/train"),
    "search": (cmd_search, "learn embedding dimensions with a search method", "runs/search"),
    "prune": (cmd_prune, "masks at each budget from a search run (--from RUN)", "runs/pruned"),
    "retrain": (
        cmd_retrain,
        "retrain a pruned model on its tier tables and export it (--from PRUNED/cr-X)",
        "runs/retrain",
    ),
    "export": (cmd_export, "write the serving artifact of a train, retrain or pruned run (--from RUN)", "runs/export"),
    "predict": (cmd_predict, "score raw rows (or a prepared Parquet shard) with an artifact", "predictions.csv"),
    "inspect": (cmd_inspect, "per-table dims, bytes and compression of an artifact", None),
    "compare": (cmd_compare, "compare methods x arches x budgets x seeds (resumable)", None),
    "bench": (cmd_bench, "run a benchmark from benchmarks/ (--name NAME, --list); JSON rows in --out", "bench-out"),
    "run": (cmd_run, "the whole pipeline: prepare, search, prune, retrain, export, report", "runs/run"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recdim", description="Learn, prune and serve mixed embedding dimensions on TorchRec."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text, out_default) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        _common(p, out_default)
        if name == "search":
            p.add_argument("--method", choices=list(method_names("search")), help="overrides search.method")
        if name in ("prune", "retrain", "export"):
            p.add_argument("--from", dest="from_dir", required=True, help="the run directory to start from")
        if name == "export":
            p.add_argument(
                "--dtype",
                choices=["float32", "float16", "int8"],
                default="float32",
                help="stored table values: float32 (exact), float16, or int8 row-wise (default: float32)",
            )
            p.add_argument(
                "--torchrec",
                metavar="DIR",
                help="also write the tier tables as TorchRec EmbeddingBagConfigs + state dict to DIR",
            )
        if name in ("predict", "inspect"):
            p.add_argument("--model", required=True, help="an exported artifact directory")
        if name == "compare":
            p.add_argument("--out", default=None, help="comparison directory (default: compare.output)")
            p.add_argument("--report-only", action="store_true", help="rewrite the report from finished cells")
        if name == "predict":
            p.add_argument(
                "--input",
                required=True,
                help="raw rows in the model's source format, or a Parquet shard of prepared ids",
            )
        if name == "bench":
            p.add_argument("--name", help="the benchmark: a script stem in benchmarks/ (see --list)")
            p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
            p.add_argument("script_args", nargs="*", metavar="-- ARGS", help="passed to the benchmark script unchanged")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # FBGEMM and TorchRec log every table build at INFO on the root logger; keep ours only.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("recdim").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger("torchrec").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    # TorchRec's tracing checks make torch.fx log an API-migration notice on every run.
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
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
    except (ConfigError, OSError, EOFError, ValueError) as e:  # user errors: one line naming the file / key
        if args.verbose:
            raise
        print(f"recdim {args.command}: error: {e}", file=sys.stderr)
        return 1
    finally:
        from recdim.train.distributed import destroy

        destroy()


if __name__ == "__main__":
    sys.exit(main())
