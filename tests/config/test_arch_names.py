"""Arch names: one list (``recdim.config.arches``) that ``model.arch``, ``compare.arches`` and the factory read."""

import pytest

from recdim.config import ARCHES, Config, ConfigError, ModelConfig, load
from recdim.config.arches import check_arches
from recdim.config.compare import CompareConfig


def test_every_arch_is_a_valid_model_arch():
    assert len(set(ARCHES)) == len(ARCHES)
    assert {"autoint", "nfm", "pnn", "lr"} <= set(ARCHES)
    for name in ARCHES:
        assert load(None, (f"model.arch={name}",)).model.arch == name
    with pytest.raises(ConfigError, match="model.arch"):
        load(None, ("model.arch=xdeepfm",))


def test_compare_arches_are_checked_up_front():
    assert CompareConfig(arches=("autoint", "lr"), arch_overrides={"pnn": ("model.pnn_product=outer",)})
    with pytest.raises(ValueError, match="compare.arches.*xdeepfm"):
        CompareConfig(arches=("fm", "xdeepfm"))
    with pytest.raises(ValueError, match="compare.arch_overrides.*autoint2"):
        CompareConfig(arch_overrides={"autoint2": ("model.attention_dim=8",)})
    with pytest.raises(ValueError, match="unknown arch"):
        check_arches(["lr", "LR"], "x")


def test_arch_settings_have_defaults_and_are_checked():
    m = Config().model
    assert (m.attention_layers, m.attention_heads, m.attention_dim, m.pnn_product) == (3, 2, 32, "inner")
    with pytest.raises(ValueError, match="attention_heads"):
        ModelConfig(attention_heads=0)
    with pytest.raises(ConfigError, match="pnn_product"):
        load(None, ("model.pnn_product=kernel",))
