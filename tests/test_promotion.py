"""The promotion gate: every criterion listed with both values, regressions refused, unscored actions refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from riskengine.cli import main
from riskengine.datasets import synth
from riskengine.lab import population, promotion
from riskengine.policy.decide import Policy
from riskengine.scoring.registry import ModelRegistry


def window(seed: int = 0, n: int = 4000):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.05).astype(int)
    action = np.where(rng.random(n) < 0.7, "login", "payment")
    classes = np.where(y == 1, rng.choice(["naive", "targeted"], n), "legit")
    champion = np.clip(np.where(y == 1, rng.uniform(0.4, 1.0, n), rng.uniform(0.0, 0.35, n)), 0, 1)
    groups = population.assign(action, np.ones(n, dtype=bool), y, classes)
    return y, champion, action, classes, groups


def test_an_equal_challenger_passes_and_each_criterion_is_listed():
    y, champion, action, classes, groups = window()
    verdict = promotion.judge(y, champion, champion.copy(), action, classes, groups, Policy(),
                              champion_actions=["login", "payment"], challenger_actions=["login", "payment"])
    assert verdict.passed and not verdict.unscored_actions
    names = [c.name.strip() for c in verdict.criteria]
    step = Policy().medium_at
    assert names[0] == f"takeovers caught at risk >= {step:g}"
    assert {"naive caught", "targeted caught", f"legit login stepped up (>= {step:g})",
            f"legit payment denied (>= {Policy().deny_at:g})", "Brier score"} <= set(names)
    caught = verdict.criteria[0]
    assert caught.champion == caught.challenger == pytest.approx(np.mean(champion[y == 1] >= step))
    assert "verdict: PASS" in verdict.text() and "tolerance" in verdict.text()


def test_a_regression_beyond_tolerance_fails_only_its_criterion():
    y, champion, action, classes, groups = window(seed=1)
    worse = champion.copy()
    targeted = np.flatnonzero((y == 1) & (classes == "targeted"))
    worse[targeted[: len(targeted) // 4]] = 0.05                   # a quarter of one class slips through
    verdict = promotion.judge(y, champion, worse, action, classes, groups, Policy())
    failed = {c.name.strip() for c in verdict.criteria if not c.passed}
    assert failed == {f"takeovers caught at risk >= {Policy().medium_at:g}", "targeted caught", "Brier score"}
    assert not verdict.passed and "verdict: FAIL" in verdict.text()
    line = next(line for line in verdict.text().splitlines() if "targeted caught" in line)
    target = next(c for c in verdict.criteria if c.name.strip() == "targeted caught")
    assert f"{target.champion:.4f}" in line and f"{target.challenger:.4f}" in line and "FAIL" in line

    tiny = champion.copy()
    tiny[targeted[:1]] = 0.05                                    # one row: within the class tolerance
    assert all(c.passed for c in promotion.judge(y, champion, tiny, action, classes, groups, Policy()).criteria
               if "targeted" in c.name)


def test_friction_is_measured_on_legitimate_users_only():
    y, champion, action, classes, groups = window(seed=2)
    louder = champion.copy()
    failed = (action == "login") & (y == 0) & (np.arange(y.size) % 10 == 0)
    groups = population.assign(action, ~failed, y, classes)
    louder[failed] = 0.99                                        # failed logins flagged: no user friction
    assert promotion.judge(y, champion, louder, action, classes, groups, Policy()).passed
    louder[(action == "login") & (y == 0) & ~failed] += 0.2       # real users stepped up: friction
    verdict = promotion.judge(y, champion, np.clip(louder, 0, 1), action, classes, groups, Policy())
    assert not next(c for c in verdict.criteria if "legit login stepped up" in c.name).passed


def test_login_only_challenger_refused_unless_forced_and_models_list_says_what_compares(tmp_path, monkeypatch,
                                                                                        capsys):
    monkeypatch.setenv("RISKENGINE_HOME", str(tmp_path))
    data, logins = tmp_path / "events.parquet", tmp_path / "logins.parquet"
    frame = synth.generate_events(users=150, days=21, seed=4)
    synth.write_events(frame, data)
    synth.write_events(frame[frame["action"] == "login"], logins)
    assert main(["train", "--data", str(data), "--promote"]) == 0
    registry = ModelRegistry(tmp_path / "models")
    champion = registry.champion_version()
    assert "payment" in registry.get(champion).metadata["actions"]

    capsys.readouterr()
    assert main(["train", "--data", str(logins), "--promote"]) == 0
    out = capsys.readouterr().out
    assert registry.champion_version() == champion                  # refused: it never saw a payment
    unscored = sorted(set(frame["action"]) - {"login"})            # every in-session action the generator makes
    assert f"not trained on: {', '.join(unscored)} ->" in out
    assert "use --force" in out and "not promoted" in out and "verdict: FAIL" in out
    login_only = registry.versions()[-1]
    gate = login_only.metadata["promotion"]
    assert gate["champion"] == champion and not gate["passed"]
    assert {c["name"].strip().split(" (")[0] for c in gate["criteria"]} >= {"legit login stepped up", "Brier score"}

    assert main(["train", "--data", str(logins), "--promote", "--force"]) == 0
    out = capsys.readouterr().out
    forced = registry.versions()[-1].metadata["promotion"]
    assert forced["forced"] and "allowed by --force" in out
    assert (registry.champion_version() == registry.versions()[-1].version) == all(
        c["passed"] for c in forced["criteria"])

    assert main(["models", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 3 and sum(line.startswith("* ") for line in listed) == 1
    for line in listed:
        if not line.startswith("* "):
            assert "NOT comparable with the champion" in line or "comparable" in line
    by_version = {line[2:].split()[0]: line for line in listed}
    assert "gate vs" in by_version[login_only.version] and "FAIL" in by_version[login_only.version]
    if registry.champion_version() == champion:
        assert "NOT comparable with the champion" in by_version[login_only.version]


def test_models_trained_on_the_same_data_compare(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RISKENGINE_HOME", str(tmp_path))
    data = tmp_path / "events.parquet"
    synth.write_events(synth.generate_events(users=100, days=14, seed=6), data)
    assert main(["train", "--data", str(data), "--promote"]) == 0
    assert main(["train", "--data", str(data)]) == 0
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    other = next(line for line in lines if not line.startswith("* "))
    assert "same window as the champion: comparable" in other and "gate vs" in other
    json.dumps(ModelRegistry(tmp_path / "models").versions()[-1].metadata["promotion"])   # plain JSON
