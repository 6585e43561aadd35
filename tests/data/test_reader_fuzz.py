"""Seeded fuzzing of the raw readers: truncations, byte flips, column shifts, CRs, re-encodings, gzip
cuts. Every case ends in a DataError naming the file (and a line), or in rows read with every skipped row
counted; rows whose bytes were not touched read exactly as in the clean file. Never a traceback."""

import gzip
import re
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest

from recdim.data.errors import DataError
from recdim.data.readers import AmazonReader, AvazuReader, BadRowBudget, CriteoReader, KDD12Reader

ROWS = 60
CASES = 40


def criteo_rows(rng: np.random.Generator) -> List[str]:
    out = []
    for _ in range(ROWS):
        ints = [str(int(v)) if rng.random() > 0.1 else "" for v in rng.integers(-2, 1000, 13)]
        cats = [f"{int(v):08x}" if rng.random() > 0.1 else "" for v in rng.integers(0, 2**31, 26)]
        out.append("\t".join([str(int(rng.integers(0, 2)))] + ints + cats))
    return out


def avazu_rows(rng: np.random.Generator) -> List[str]:
    out = ["id,click,hour,C1,banner_pos,site_id,device_type,C14"]
    for i in range(ROWS):
        click, pos, site = (int(v) for v in (rng.integers(0, 2), rng.integers(0, 3), rng.integers(0, 9)))
        out.append(f"{i},{click},14102100,1005,{pos},{site:x}a,1,{i % 7}")
    return out


def kdd12_rows(rng: np.random.Generator) -> List[str]:
    """KDD Cup 2012 track 2 training rows: Click, Impression, then 10 id columns (64-bit query-free ids)."""
    out = []
    for _ in range(ROWS):
        shown = int(rng.integers(1, 5))
        ids = [str(int(v)) for v in rng.integers(0, 2**62, 2)] + [str(int(v)) for v in rng.integers(0, 99999, 8)]
        ids[4], ids[5] = str(int(rng.integers(1, 4))), str(int(rng.integers(1, 4)))  # depth, position
        out.append("\t".join([str(int(rng.integers(0, shown + 1))), str(shown)] + ids))
    return out


def amazon_rows(rng: np.random.Generator) -> List[str]:
    """Headerless Amazon ratings: user, item (leading zeros), rating, unix time."""
    out = []
    for _ in range(ROWS):
        user, item = f"A{int(rng.integers(0, 2**40)):X}", f"{int(rng.integers(0, 10**6)):010d}"
        out.append(f"{user},{item},{float(rng.integers(1, 6))},{int(rng.integers(10**9, 1.5 * 10**9))}")
    return out


def mutate(lines: List[str], rng: np.random.Generator, sep: str) -> Tuple[bytes, set]:
    """Mutated file bytes and the (1-based) line numbers whose bytes changed."""
    lines = list(lines)
    touched = set()
    kind = rng.choice(["truncate", "flip", "shift", "cr", "latin1", "blank", "empty_field"])
    n = len(lines)
    if kind == "shift":
        for i in rng.choice(np.arange(1, n), size=3, replace=False):
            lines[i] = lines[i].replace(sep, "", 1) if rng.random() < 0.5 else lines[i] + sep + "x"
            touched.add(int(i) + 1)
    elif kind == "cr":
        for i in rng.choice(np.arange(n), size=3, replace=False):
            lines[i] = lines[i] + "\r"
            touched.add(int(i) + 1)
    elif kind == "latin1":
        i = int(rng.integers(1, n))
        lines[i] = lines[i][:5] + "\xe9" + lines[i][5:]
        touched.add(i + 1)
        data = ("\n".join(lines) + "\n").encode("latin-1")
        return data, touched
    elif kind == "blank":
        i = int(rng.integers(1, n))
        lines.insert(i, "   ")
        touched = {j + 1 for j in range(i, n + 1)}  # line numbers after it move
    elif kind == "empty_field":
        i = int(rng.integers(1, n))
        lines[i] = sep.join([""] * (lines[i].count(sep) + 1))
        touched.add(i + 1)
    data = bytearray(("\n".join(lines) + "\n").encode())
    if kind == "truncate":
        cut = int(rng.integers(0, len(data)))
        data = data[:cut]
        line = data.count(b"\n") + 1
        touched = set(range(line, n + 1))
    elif kind == "flip":
        for _ in range(3):
            pos = int(rng.integers(0, len(data)))
            data[pos] = int(rng.integers(0, 256))
        # any line may be affected (a flipped newline merges or splits lines)
        touched = set(range(1, n + 2))
    return bytes(data), touched


def read(reader, limit: int = ROWS + 5) -> Tuple[Dict[int, tuple], int]:
    budget = BadRowBudget(limit)
    rows: Dict[int, tuple] = {}
    for chunk in reader.chunks(17, budget):
        for j, line in enumerate(chunk.lines.tolist()):
            time = () if chunk.time is None else (int(chunk.time[j]),)
            rows[line] = (
                (float(chunk.label[j]),) + time + tuple(str(chunk.features[k][j]) for k in sorted(chunk.features))
            )
    return rows, budget.count


@pytest.mark.parametrize("fmt", ["criteo", "criteo_gz", "avazu", "kdd12", "kdd12_gz", "amazon", "amazon_gz"])
def test_mutated_inputs_end_in_a_clear_error_or_counted_skips(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(7)
    make, Reader, sep, name = {
        "criteo": (criteo_rows, CriteoReader, "\t", "train.txt"),
        "criteo_gz": (criteo_rows, CriteoReader, "\t", "train.txt.gz"),
        "avazu": (avazu_rows, AvazuReader, ",", "train.csv"),
        "kdd12": (kdd12_rows, KDD12Reader, "\t", "training.txt"),
        "kdd12_gz": (kdd12_rows, KDD12Reader, "\t", "training.txt.gz"),
        "amazon": (amazon_rows, AmazonReader, ",", "ratings_Books.csv"),
        "amazon_gz": (amazon_rows, AmazonReader, ",", "ratings_Books.csv.gz"),
    }[fmt]
    clean_lines = make(rng)
    clean_path = tmp_path / ("clean-" + name)
    body = ("\n".join(clean_lines) + "\n").encode()
    clean_path.write_bytes(gzip.compress(body) if name.endswith(".gz") else body)
    clean, skipped = read(Reader(clean_path))
    assert skipped == 0 and len(clean) == ROWS
    outcomes = {"error": 0, "read": 0, "skips": 0}
    for case in range(CASES):
        data, touched = mutate(clean_lines, rng, sep)
        path = tmp_path / f"case{case}-{name}"
        if name.endswith(".gz"):
            full = gzip.compress(data)
            data = full[: int(rng.integers(len(full) // 2, len(full) + 1))]  # sometimes a cut stream too
        path.write_bytes(data)
        try:
            rows, skipped = read(Reader(path))
        except DataError as e:
            assert str(e).startswith(str(path)), e  # names the file (and a line)
            outcomes["error"] += 1
            continue
        outcomes["read"] += 1
        data_lines = {ln for ln in clean if ln not in touched}
        for ln in data_lines:  # untouched rows read exactly as before
            assert rows.get(ln) == clean[ln], (case, ln)
        assert len(rows) + skipped >= len(data_lines)
        if skipped:  # with no bad-row budget the same file is an error naming it
            with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:\d+: "):
                read(Reader(path), limit=0)
            outcomes["skips"] += 1
    assert sum(outcomes.values()) - outcomes["skips"] == CASES and outcomes["skips"] + outcomes["error"] > CASES // 4
