"""``datafiles.records``: the rows every offline replay reads are exactly ``to_dict("records")``'s."""

import math
from pathlib import Path

import pandas as pd
import pytest

from riskengine.datasets import synth
from riskengine.datasets.rba import load_rba
from riskengine.lab import training
from riskengine.lab.datafiles import records

DATA = Path(__file__).parent / "data"


def same_rows(ours: list[dict], pandas_rows: list[dict]) -> None:
    """Equal keys, values and value types; NaN equals NaN (a missing cell)."""
    assert len(ours) == len(pandas_rows)
    for mine, theirs in zip(ours, pandas_rows):
        assert list(mine) == list(theirs)
        for name, value in theirs.items():
            got = mine[name]
            assert type(got) is type(value), (name, got, value)
            assert got == value or (isinstance(value, float) and math.isnan(value) and math.isnan(got)), name


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> pd.DataFrame:
    """A generated stream as `train --data` reads it back from Parquet (string columns with gaps)."""
    path = tmp_path_factory.mktemp("data") / "events.parquet"
    synth.write_events(synth.generate_events(users=40, days=10, seed=5), path)
    return synth.read_events(path)


def test_generated_rows_equal_to_dict(generated):
    assert generated["amount"].isna().any() and generated["payee_id"].isna().any()     # gaps are covered
    same_rows(list(records(generated)), generated.to_dict("records"))


@pytest.mark.parametrize("name", ["rba-dataset-sample.csv", "rba-extra.csv"])
def test_rba_rows_equal_to_dict(name):
    frame = load_rba(DATA / name)          # ints, floats, bools, empty cells, non-ASCII text
    same_rows(list(records(frame)), frame.to_dict("records"))


def test_rows_in_order_across_chunks(generated):
    """A chunk edge drops, repeats or reorders nothing."""
    same_rows(list(records(generated, at_once=7)), generated.to_dict("records"))
    assert list(records(generated.iloc[:0])) == []


def test_backfill_of_records_is_the_backfill_of_to_dict(generated):
    """What a model trains on does not depend on how the rows were read."""
    ours = training.backfill(records(generated))
    theirs = training.backfill(generated.to_dict("records"))
    assert len(ours.y) == len(generated)
    assert training.fingerprint(ours) == training.fingerprint(theirs)
