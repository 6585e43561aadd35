"""Typed loading of frozen dataclass configs from TOML files and ``key=value`` overrides.

Every key must name a field; an unknown key, a wrong type or a missing required value is a
:class:`ConfigError` that names the file and the dotted key. Nothing is silently ignored.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Type, TypeVar, Union

import tomllib

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is unknown, missing or of the wrong type. The message names file and key."""


def _where(source: str, key: str) -> str:
    return f"{source}: {key}" if key else source


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key, source)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{_where(source, key)}: {value!r} fits none of {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{_where(source, key)}: expected a table, got {value!r}")
        return from_dict(tp, value, source=source, prefix=key)
    if origin in (tuple, list, Sequence, typing.Sequence) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_where(source, key)}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            item_tp = args[0]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{_where(source, key)}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{key}[{i}]", source) for i, (a, v) in enumerate(zip(args, value)))
        else:
            item_tp = args[0] if args else Any
        return tuple(_coerce(item_tp, v, f"{key}[{i}]", source) for i, v in enumerate(value))
    if origin in (dict, Dict, Mapping, typing.Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{_where(source, key)}: expected a table, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(vt, v, f"{key}.{k}", source) for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{_where(source, key)}: {value!r} is not one of {list(args)}")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{_where(source, key)}: {value!r} is not one of {[m.value for m in tp]}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{_where(source, key)}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{_where(source, key)}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{_where(source, key)}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{_where(source, key)}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{_where(source, key)}: unsupported config type {tp}")


def from_dict(cls: Type[T], data: Mapping[str, Any], source: str = "<dict>", prefix: str = "") -> T:
    """Builds the frozen dataclass ``cls`` from a nested mapping, strictly.

    Args:
        cls: a dataclass type.
        data: nested mapping (as parsed from TOML).
        source: file name used in error messages.
        prefix: dotted key of ``data`` inside the file, for error messages.

    Returns:
        An instance of ``cls``.

    Example::

        cfg = from_dict(TrainConfig, {"epochs": 3}, source="run.toml", prefix="train")
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(f"{prefix}.{k}" if prefix else k for k in unknown)
        raise ConfigError(f"{source}: unknown key(s) {names}; known: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], key, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key {key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{_where(source, prefix)}: {e}") from e


def to_dict(obj: Any) -> Any:
    """Plain, JSON/TOML-ready form of a (nested) config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parses ``a.b.c=VALUE``; VALUE is read as TOML (``3``, ``true``, ``[1,2]``, ``"x"``), else a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Returns a copy of ``data`` with each ``a.b=VALUE`` override set (tables created as needed)."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {p} is not a table")
        node[path[-1]] = value
    return out


def load_toml(path: Union[str, Path]) -> Dict[str, Any]:
    """Reads a TOML file; a syntax error names the file and line."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: config file not found")
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: {e}") from e


def load_config(cls: Type[T], path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> T:
    """Loads ``cls`` from a TOML file (optional) plus ``key=value`` overrides.

    Example::

        cfg = load_config(RunConfig, "configs/ml100k_rating.toml", ["train.epochs=2"])
    """
    data = load_toml(path) if path is not None else {}
    cfg = from_dict(cls, data, source=str(path) if path is not None else "<defaults>")
    if not overrides:
        return cfg
    try:
        return from_dict(cls, apply_overrides(data, overrides), source="--set")
    except ConfigError:
        # Name the first override that breaks it (the file alone loaded).
        for i, o in enumerate(overrides):
            from_dict(cls, apply_overrides(data, overrides[: i + 1]), source=f"--set {o}")
        raise
