"""Errors raised while reading raw data: every message names the file and the 1-based line."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union


class DataError(ValueError):
    """Malformed raw input. The message always starts with ``<file>:<line>:``.

    Args:
        file: the raw file (path or name) the bad row comes from.
        line: 1-based line number in that file (for Parquet inputs: the 1-based row number).
        reason: what is wrong with the row.

    Example::

        raise DataError("train.txt", 1234, "expected 40 columns, got 12")
        # DataError: train.txt:1234: expected 40 columns, got 12
    """

    def __init__(self, file: Union[str, Path], line: int, reason: str) -> None:
        self.file = str(file)
        self.line = int(line)
        self.reason = reason
        super().__init__(f"{self.file}:{self.line}: {reason}")

    def __reduce__(self) -> Tuple[type, Tuple[str, int, str]]:  # picklable across processes
        return (type(self), (self.file, self.line, self.reason))
