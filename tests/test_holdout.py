"""Leave-one-class-out evaluation on a real generated stream and real (small) trained models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from riskengine import cli
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


def _printed_table(text: str) -> dict[str, dict[str, float]]:
    """The per-class table ``riskengine evaluate --leave-one-out`` prints: {class: {column: value}}."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("catch rate per attacker class"))
    header = lines[start + 1].split()
    rows = {}
    for line in lines[start + 3:]:
        if ":" in line:                                   # the summary lines follow the table
            break
        cells = line.split()
        rows[cells[0]] = dict(zip(header, map(float, cells[1:])))
    return rows


def test_the_leave_one_out_cli_names_every_class_and_agrees_with_its_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RISKENGINE_HOME", str(tmp_path))
    data, out = tmp_path / "events.parquet", tmp_path / "loco.json"
    assert cli.main(["generate", "--out", str(data), "--users", "150", "--days", "21", "--seed", "5"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", "--data", str(data), "--leave-one-out", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    table, saved = _printed_table(printed), json.loads(out.read_text())
    # every attacker class with attacks in both windows is a row, and only those
    earlier, later = training.split_by_time(training.backfill(synth.read_events(data).to_dict("records")))
    expected = set(later.meta["attack_class"][later.y == 1]) & set(earlier.meta["attack_class"][earlier.y == 1])
    assert set(table) == set(saved["classes"]) == expected and len(table) >= 8
    for cls, row in saved["classes"].items():
        assert row["events"] == table[cls]["events"] > 0
        for column in ("held_out", "all_trained", "freeman", "all_trained_at_2%_events"):
            assert 0.0 <= row[column] <= 1.0
            assert table[cls][column] == pytest.approx(row[column], abs=5e-5)     # printed rounded to 4 places
            caught = row[column] * row["events"]                                # a share of this class's events
            assert caught == pytest.approx(round(caught), abs=1e-6)
    summary = saved["summary"]
    assert summary["held_out_mean"] == pytest.approx(np.mean([r["held_out"] for r in saved["classes"].values()]))
    assert 0.0 <= summary["legit_login_friction"] <= 1.0
    for name, value in summary.items():
        assert f"{name}: {value:.4f}" in printed


def test_json_without_leave_one_out_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RISKENGINE_HOME", str(tmp_path))
    assert cli.main(["evaluate", "--data", str(tmp_path / "x.parquet"), "--json", str(tmp_path / "x.json")]) == 2
    assert "--leave-one-out" in capsys.readouterr().err
