from pathlib import Path

import pytest

from recdim.config import Config, load
from recdim.config_io import ConfigError, load_config


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return str(p)


def test_defaults_and_overrides(tmp_path):
    cfg = load(write(tmp_path, '[model]\narch = "mf"\n'), ("train.epochs=3", "model.mlp=[8, 4]"))
    assert cfg.model.arch == "mf" and cfg.train.epochs == 3 and cfg.model.mlp == (8, 4)
    assert isinstance(cfg, Config)


def test_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, "[train]\nepochz = 3\n")
    with pytest.raises(ConfigError, match=r"c\.toml.*train\.epochz"):
        load(path)


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="trian"):
        load(write(tmp_path, "[trian]\nepochs = 3\n"))


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epochs.*integer"):
        load(write(tmp_path, '[train]\nepochs = "three"\n'))


def test_bad_literal_and_validation(tmp_path):
    with pytest.raises(ConfigError, match="model.arch"):
        load(None, ("model.arch=transformer",))
    with pytest.raises(ConfigError, match="multiple of 4"):
        load(None, ("model.embedding_dim=6",))


def test_toml_syntax_error_names_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.toml.*line 2"):
        load(write(tmp_path, "[train]\nepochs = = 3\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(str(tmp_path / "nope.toml"))


def test_override_errors_name_the_override_not_the_file(tmp_path):
    from recdim.config import Config

    path = tmp_path / "c.toml"
    path.write_text("[train]\nepochs = 2\n")
    with pytest.raises(ConfigError, match=r"^--set train\.lrr=1: unknown key\(s\) train\.lrr"):
        load_config(Config, str(path), ["train.epochs=3", "train.lrr=1"])
    path.write_text("[train]\nepochz = 2\n")
    with pytest.raises(ConfigError, match=r"c\.toml: unknown key\(s\) train\.epochz"):
        load_config(Config, str(path), ["train.epochs=3"])


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml")), ids=str)
def test_every_shipped_config_loads(path):
    cfg = load(str(path))
    assert cfg.model.embedding_dim >= 1
