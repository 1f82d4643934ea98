"""Leave-one-class-out evaluation on a real generated stream and real (small) trained models."""

from __future__ import annotations

import numpy as np
import pytest

from riskengine.datasets import synth
from riskengine.lab import holdout, training


@pytest.fixture(scope="module")
def data():
    return training.backfill(synth.generate_events(users=150, days=21, seed=5).to_dict("records"))


def test_the_threshold_never_flags_more_than_the_allowed_share():
    rng = np.random.default_rng(0)
    for scores in (rng.random(1000), np.repeat([0.1, 0.5, 0.9], 100), np.zeros(50)):
        threshold = holdout.threshold_at_friction(scores, 0.01)
        assert np.mean(scores >= threshold) <= 0.01


def test_each_attacker_class_is_reported_held_out_beside_all_trained_and_freeman(data):
    table, summary = holdout.leave_one_class_out(
        data, lambda: training.default_model().set_params(max_iter=15))
    _, later = training.split_by_time(data)
    in_later = set(later.meta["attack_class"][later.y == 1])
    assert set(table.index) <= in_later and len(table) >= 8
    assert {"held_out", "all_trained", "freeman", "all_trained_at_2%_events"} <= set(table.columns)
    assert ((table[["held_out", "all_trained", "freeman"]] >= 0) & (table[["held_out", "all_trained", "freeman"]] <= 1)).all().all()
    assert (table["events"] > 0).all()
    assert 0 <= summary["legit_login_friction"] <= 1
    # training on a class never makes it harder to catch on average than holding it out
    assert summary["all_trained_mean"] >= summary["held_out_mean"] - 0.05
