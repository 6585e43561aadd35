"""The method registry: every entry resolves to a method object of its name and kind, and every reader
of method names (config, CLI, compare) takes them from it."""

import pytest

from recdim.cli import build_parser
from recdim.config import Config, load
from recdim.config.compare import CompareConfig
from recdim.config.methods import METHODS, entry, names, parse
from recdim.config_io import ConfigError
from recdim.search.method import BaselineMethod, SearchMethod, create


@pytest.mark.parametrize("name", list(METHODS))
def test_every_entry_loads_its_method(name):
    e = METHODS[name]
    cls = e.load()
    assert issubclass(cls, SearchMethod if e.kind == "search" else BaselineMethod)
    m = create(name, Config())
    assert (m.name, m.kind) == (name, e.kind)


def test_budget_free_searches():
    assert {n for n in names("search") if METHODS[n].load().budget_free} == {
        "dnis",
        "autosrh",
        "autodim",
        "autodim_s",
        "magnitude",
    }


def test_parse_arguments_and_errors():
    assert parse("ue@8") == (METHODS["ue"], 8)
    assert parse("mde") == (METHODS["mde"], None)
    with pytest.raises(ValueError, match="not one of"):
        parse("nope")
    with pytest.raises(ValueError, match="takes no '@' argument"):
        parse("mde@2")
    with pytest.raises(ValueError, match="non-negative integer"):
        parse("random@x")
    with pytest.raises(ValueError, match=r"search.method: 'ue' is not one of \['dnis'"):
        entry("ue", kind="search", field="search.method")


def test_config_cli_and_compare_read_the_registry():
    assert load(None, ("search.method=autodim",)).search.method == "autodim"
    with pytest.raises(ConfigError, match="search.method"):
        load(None, ("search.method=mde",))
    CompareConfig(methods=tuple(names()) + ("ue@8", "random@2"))
    with pytest.raises(ValueError, match="compare.methods"):
        CompareConfig(methods=("dnis", "nope"))
    args = build_parser().parse_args(["search", "--method", "pep"])
    assert args.method == "pep"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "--method", "ue"])


def test_pep_budget_becomes_its_setting():
    cfg = create("pep", Config()).at_budget(4.0)
    assert cfg.search.pep.budgets == (0.25,)
    assert create("dnis", Config()).at_budget(4.0) == Config()
