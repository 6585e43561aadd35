"""Compiling and loading recdim's native CPU kernels (``torch.ops.recdim.*``), once per process.

The kernels (``csrc/*.cpp``) are built on first use with ``torch.utils.cpp_extension.load``: the local C++
compiler and ``ninja``, nothing downloaded; the build is cached under ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``) and rebuilt when the sources change. Where they cannot be built (no compiler),
or with ``RECDIM_NATIVE=0``, :func:`native_ops_available` is False and callers take their eager PyTorch path,
which the tests hold the kernels equal to.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch

_SOURCES = [Path(__file__).parent / "csrc" / name for name in ("tier_ops.cpp", "tier_lookup.cpp", "tier_update.cpp")]
_lock = threading.Lock()
_state: Optional[bool] = None


def native_ops_available() -> bool:
    """Whether the ops ``torch.ops.recdim.tier_scatter``, ``tier_scatter_backward``, ``tier_route``,
    ``tier_lookup``, ``tier_lookup_keys`` and ``tier_update`` are loaded (building them on first call).

    Returns False, once with a warning naming the cause, when the build fails; always False with
    ``RECDIM_NATIVE=0``.

    Example::

        if native_ops_available() and values.device.type == "cpu":
            out = torch.ops.recdim.tier_scatter(values, rows, ...)
    """
    global _state
    if os.environ.get("RECDIM_NATIVE", "1") == "0":
        return False
    if _state is not None:
        return _state
    with _lock:
        if _state is None:
            _state = _build()
    return _state


_OPS = ("tier_scatter", "tier_scatter_backward", "tier_route", "tier_lookup", "tier_lookup_keys", "tier_update")


def _loaded() -> bool:
    return all(hasattr(torch.ops.recdim, op) for op in _OPS)


def _build() -> bool:
    if _loaded():
        return True
    try:
        from torch.utils.cpp_extension import load

        load(
            name="recdim_native_ops",
            sources=[str(s) for s in _SOURCES],
            extra_cflags=["-O3"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as err:  # no compiler, no ninja, a failed build: the eager paths still work
        warnings.warn(f"recdim native kernels unavailable ({type(err).__name__}: {err}); using eager PyTorch")
        return False
    return _loaded()
