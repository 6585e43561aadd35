"""Re-encoding an artifact's table values (``recdim export --dtype``): float32 -> float16 or int8 row-wise.

Everything else (arch, schema, plans, vocabularies, ``extra``) is carried over unchanged. Recoding starts
from the values as stored, so start from a float32 artifact: float16 / int8 rounding does not undo.

Example::

    recode_artifact("models/cr-4", "float16")                   # in place
    recode_artifact("models/cr-4", "int8", "models/cr-4-int8")  # beside it
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

from recdim.export.artifact import read_artifact, write_artifact


def recode_artifact(
    path: Union[str, Path], values_dtype: str, out: Optional[Union[str, Path]] = None
) -> Dict[str, Any]:
    """Rewrites the (verified) artifact at ``path`` with its values stored as ``values_dtype``.

    Args:
        path: an artifact directory.
        values_dtype: ``"float32"``, ``"float16"`` or ``"int8"``.
        out: where to write (default: ``path`` itself, replaced atomically manifest-last).

    Returns:
        The manifest written.

    Raises:
        ArtifactError: ``path`` is not a valid artifact.
        ValueError: an unknown dtype, or values float16 cannot hold.
    """
    art = read_artifact(path)
    return write_artifact(
        out if out is not None else path,
        art.plans,
        art.tier_values,
        art.arch_state,
        art.model,
        art.schema,
        art.manifest.get("extra"),
        art.dataset,
        values_dtype,
    )
