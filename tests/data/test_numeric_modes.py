"""``prepare.numerical_fields``: per-field numeric modes over the global ``prepare.numerical``."""

import pytest

from recdim.config import PrepareConfig
from recdim.data.encode import BucketEncoder, CategoricalEncoder, DenseEncoder, WeightedEncoder, make_encoders
from recdim.data.readers.base import RawField, RawKind

FIELDS = [RawField("I1", RawKind.NUMERICAL), RawField("I2", RawKind.NUMERICAL), RawField("C1", RawKind.CATEGORICAL)]


def test_overrides_and_default() -> None:
    encs = make_encoders(FIELDS, "bucketize", {"I1": "weighted"})
    assert [type(e) for e in encs] == [WeightedEncoder, BucketEncoder, CategoricalEncoder]
    assert [type(e) for e in make_encoders(FIELDS, "dense")] == [DenseEncoder, DenseEncoder, CategoricalEncoder]


def test_bad_overrides_name_the_field() -> None:
    with pytest.raises(ValueError, match="'I9' is not a field of this source"):
        make_encoders(FIELDS, "bucketize", {"I9": "dense"})
    with pytest.raises(ValueError, match="'C1' is a categorical field, not a numerical one"):
        make_encoders(FIELDS, "bucketize", {"C1": "dense"})
    with pytest.raises(ValueError, match="numerical_fields: modes must be one of"):
        PrepareConfig(numerical_fields={"I1": "log"})  # type: ignore[dict-item]
