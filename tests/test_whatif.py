"""What-if replays: shares per action with Wilson intervals, checked against hand counts and the training backfill."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from riskengine.datasets import synth
from riskengine.lab import training
from riskengine.lab import whatif
from riskengine.cli import main
from riskengine.lab.evaluation import wilson_interval
from riskengine.scoring.model import StatisticalScorer
from riskengine.policy.decide import Policy
from riskengine.policy.file import PRESETS_DIR, load_policy, parse_policy

DEFAULT_YAML = (PRESETS_DIR / "default.yaml").read_text()
# the hand-made difference: risk from 0.1 (not 0.3) is medium and needs aal2
CANDIDATE_YAML = DEFAULT_YAML.replace("medium: {from: 0.3,", "medium: {from: 0.1,").replace(
    "name: default", "name: lower-medium")


def test_candidate_yaml_differs_from_the_default_only_in_the_medium_band():
    candidate, default = parse_policy(CANDIDATE_YAML), parse_policy(DEFAULT_YAML)
    assert candidate.medium_at == 0.1 and default.medium_at == 0.3
    assert candidate.high_at == default.high_at and candidate.deny_at == default.deny_at
    assert dict(candidate.actions) == dict(default.actions)


# --- pure counting --------------------------------------------------------------------------------


def hand_replay() -> pd.DataFrame:
    """Ten legit logins, four attacks, one failed-password login and two payments, decided twice."""
    rows = ([("login", True, 0, "allow", "allow")] * 7 + [("login", True, 0, "allow", "step_up")] * 2
            + [("login", True, 0, "deny", "deny")]
            + [("login", True, 1, "allow", "step_up"), ("login", True, 1, "step_up", "step_up"),
               ("login", True, 1, "deny", "deny"), ("login", True, 1, "allow", "allow")]
            + [("login", False, 1, "deny", "deny")]
            + [("payment", True, 0, "step_up", "step_up"), ("payment", True, 0, "allow", "allow")])
    return pd.DataFrame(rows, columns=["action", "success", "label", "now_decision", "new_decision"])


def test_summarize_counts_shares_by_hand_with_wilson_intervals():
    table = whatif.summarize(hand_replay(), "new")
    login = table.loc["login"]
    assert (login["legit"], login["attacks"]) == (10, 4)          # the failed password is left out
    assert login["legit_step_up"] == 0.2 and login["legit_deny"] == 0.1 and login["caught"] == 0.75
    assert (login["legit_step_up_low"], login["legit_step_up_high"]) == wilson_interval(2, 10)
    assert (login["caught_low"], login["caught_high"]) == wilson_interval(3, 4)
    payment = table.loc["payment"]
    assert payment["legit_step_up"] == 0.5 and payment["attacks"] == 0 and math.isnan(payment["caught"])
    assert (payment["caught_low"], payment["caught_high"]) == (0.0, 1.0)   # no attacks: nothing known
    everything = table.loc["all"]
    assert (everything["legit"], everything["legit_step_up"]) == (12, 3 / 12)
    assert whatif.summarize(hand_replay(), "now").loc["login", "caught"] == 0.5


def test_compare_pairs_the_setups_and_counts_changed_decisions():
    table = whatif.compare(hand_replay(), "now", "new")
    assert list(table.index[:4]) == [("all", "now"), ("all", "new"), ("login", "now"), ("login", "new")]
    assert table.loc[("login", "new"), "changed"] == 3 and table.loc[("payment", "new"), "changed"] == 0
    assert table.loc[("all", "new"), "changed"] == 3
    text = whatif.format_comparison(table)
    assert " 20.0% [5.7%, 51.0%]" in text and " 75.0% [30.1%, 95.4%]" in text
    with pytest.raises(ValueError, match="no decisions for 'old'.*'new', 'now'"):
        whatif.summarize(hand_replay(), "old")


# --- replays ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return synth.generate_events(users=80, days=10, seed=5).to_dict("records")


@pytest.fixture(scope="module")
def reference(rows) -> training.Dataset:
    """The training backfill drives with the Freeman score and the default policy, as ``current`` does."""
    return training.backfill(rows)


@pytest.fixture(scope="module")
def shadow(rows) -> pd.DataFrame:
    current = whatif.Setup("current", StatisticalScorer(), Policy())
    candidate = whatif.Setup("candidate", StatisticalScorer(), parse_policy(CANDIDATE_YAML))
    return whatif.replay(rows, current, candidate)


def test_current_setup_replays_exactly_like_the_training_backfill(shadow, reference):
    assert shadow["event_id"].tolist() == reference.meta["event_id"].tolist()
    assert shadow["current_decision"].tolist() == reference.meta["decision"].tolist()
    assert np.allclose(shadow["current_risk"], reference.meta["freeman"])


def test_a_lower_medium_band_steps_up_what_a_direct_count_says(shadow, reference, rows):
    """In shadow mode the candidate sees the same history and score, so its decision on a login
    follows from the risk alone: deny from 0.97, step up (aal2, no session holds it) from 0.1."""
    risk = reference.meta["freeman"].to_numpy()
    label = reference.y
    login = (reference.meta["action"] == "login").to_numpy() & np.array([bool(r["success"]) for r in rows])
    legit, attacks = login & (label == 0), login & (label == 1)
    assert attacks.sum() >= 5 and legit.sum() > 500

    expected_step_up = np.mean((risk[legit] >= 0.1) & (risk[legit] < 0.97))
    expected_deny = np.mean(risk[legit] >= 0.97)
    expected_caught = np.mean(risk[attacks] >= 0.1)
    table = whatif.compare(shadow, "current", "candidate")
    got = table.loc[("login", "candidate")]
    assert got["legit"] == legit.sum() and got["attacks"] == attacks.sum()
    assert got["legit_step_up"] == pytest.approx(expected_step_up)
    assert got["legit_deny"] == pytest.approx(expected_deny)
    assert got["caught"] == pytest.approx(expected_caught)
    low, high = wilson_interval(int(round(expected_caught * attacks.sum())), int(attacks.sum()))
    assert (got["caught_low"], got["caught_high"]) == pytest.approx((low, high))

    now = table.loc[("login", "current")]
    decisions = reference.meta["decision"].to_numpy()
    assert now["legit_step_up"] == pytest.approx(np.mean(decisions[legit] == "step_up"))
    assert now["legit_step_up"] == pytest.approx(np.mean((risk[legit] >= 0.3) & (risk[legit] < 0.97)))
    assert got["legit_step_up"] > now["legit_step_up"]              # the candidate costs more friction
    changed = np.sum((risk[login] >= 0.1) & (risk[login] < 0.3))
    assert got["changed"] == changed > 0
    # payments need aal2 at any risk and sessions hold aal1: the medium band changes nothing there
    assert table.loc[("payment", "candidate"), "changed"] == 0


def test_counterfactual_lets_the_candidate_shape_history(rows, shadow):
    """Identical setups agree; a candidate that steps up more also trusts more devices, so later
    events look less risky to it than they did in the shadow of the current setup."""
    same = whatif.replay(rows, whatif.Setup("a", StatisticalScorer(), Policy()),
                         whatif.Setup("b", StatisticalScorer(), Policy()), mode="counterfactual")
    assert same["a_decision"].tolist() == same["b_decision"].tolist() == shadow["current_decision"].tolist()
    own = whatif.replay(rows, whatif.Setup("current", StatisticalScorer(), Policy()),
                        whatif.Setup("candidate", StatisticalScorer(), parse_policy(CANDIDATE_YAML)),
                        mode="counterfactual")
    assert own["current_decision"].tolist() == shadow["current_decision"].tolist()
    assert own["candidate_risk"].sum() < shadow["candidate_risk"].sum()
    shadowed = whatif.summarize(shadow, "candidate").loc["login", "legit_step_up"]
    assert whatif.summarize(own, "candidate").loc["login", "legit_step_up"] < shadowed


def test_counterfactual_with_a_deny_everything_policy(rows):
    strict = parse_policy(DEFAULT_YAML.replace("deny_at: 0.97", "deny_at: 0.0002").replace(
        "medium: {from: 0.3,", "medium: {from: 0.0,").replace("high: {from: 0.7,", "high: {from: 0.0001,"))
    replayed = whatif.replay(rows, whatif.Setup("current", StatisticalScorer(), Policy()),
                             whatif.Setup("strict", StatisticalScorer(), strict), mode="counterfactual")
    table = whatif.summarize(replayed, "strict")
    risk = replayed["strict_risk"][whatif.decided(replayed)]
    assert table.loc["all", "legit_deny"] == pytest.approx(
        np.mean(risk[replayed["label"] == 0] >= 0.0002))
    assert table.loc["all", "caught"] == 1.0


def test_replay_refuses_unknown_modes_and_equal_names(rows):
    setup = whatif.Setup("x", StatisticalScorer(), Policy())
    with pytest.raises(ValueError, match="mode must be one of shadow, counterfactual"):
        whatif.replay(rows[:3], setup, whatif.Setup("y", StatisticalScorer(), Policy()), mode="live")
    with pytest.raises(ValueError, match="different names"):
        whatif.replay(rows[:3], setup, setup)


# --- the command --------------------------------------------------------------------------------


def test_whatif_command_prints_both_setups_with_intervals(tmp_path, monkeypatch, capsys, rows, shadow):
    monkeypatch.setenv("RISKENGINE_HOME", str(tmp_path))
    data = tmp_path / "events.parquet"
    synth.write_events(pd.DataFrame(rows), data)
    policy = tmp_path / "candidate.yaml"
    policy.write_text(CANDIDATE_YAML)
    assert main(["whatif", "--data", str(data), "--policy", str(policy)]) == 0
    out = capsys.readouterr().out
    assert "policy default@2, model freeman-statistical@1" in out
    assert "policy lower-medium@2, model freeman-statistical@1" in out
    table = whatif.compare(shadow, "current", "candidate")
    row = table.loc[("login", "candidate")]
    line = next(line for line in out.splitlines() if line.startswith("login ") and "candidate" in line)
    assert f"{row['legit_step_up']:6.1%} [{row['legit_step_up_low']:.1%}, {row['legit_step_up_high']:.1%}]" in line
    assert line.rstrip().endswith(str(int(row["changed"])))

    policy.write_text(CANDIDATE_YAML.replace("deny_at: 0.97", "deny_at: 2"))
    assert main(["whatif", "--data", str(data), "--policy", str(policy)]) == 1
    assert "deny_at" in capsys.readouterr().err


def test_whatif_takes_a_preset_name_as_the_candidate_policy(tmp_path, monkeypatch, capsys, rows):
    """Issue 15: `whatif --policy psd2` was refused while preset names worked elsewhere."""
    monkeypatch.setenv("RISKENGINE_HOME", str(tmp_path))
    data = tmp_path / "events.parquet"
    synth.write_events(pd.DataFrame(rows), data)
    assert main(["whatif", "--data", str(data), "--policy", "psd2"]) == 0
    assert "candidate  policy psd2@" in capsys.readouterr().out
    assert main(["whatif", "--data", str(data), "--policy", "psd3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("riskengine whatif: psd3:") and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["whatif", "--help"])
    assert "preset name (default, psd2, hipaa, gdpr)" in " ".join(capsys.readouterr().out.split())


# --- candidate policies -------------------------------------------------------------------------


def test_policy_with_bands_writes_a_loadable_candidate(tmp_path):
    path = tmp_path / "suggested.yaml"
    path.write_text(whatif.policy_with_bands(PRESETS_DIR / "default.yaml", 0.123449, 0.9, note="from a test"))
    policy = load_policy(path)
    assert policy.medium_at == 0.1235 and policy.deny_at == 0.9 and policy.medium_at < policy.high_at <= 0.9
    assert policy.version == "default-suggested@2" and "# from a test" in path.read_text()
    squeezed = parse_policy(whatif.policy_with_bands(PRESETS_DIR / "default.yaml", 0.95, 0.95))
    assert squeezed.medium_at < squeezed.high_at <= squeezed.deny_at
    assert squeezed.medium_at >= 0.95 - 0.0002


def test_a_policy_with_rules_replays_like_any_other(rows, shadow):
    """The candidate denies every payment by rule and logins from risk 0.5; in shadow mode it sees
    the current setup's history and scores, so every other answer is the current one."""
    rules = ("rules:\n  - name: no-payments\n    when: {actions: [payment]}\n    then: {decision: deny}\n"
             "  - name: risky-logins\n    when: {actions: [login], risk_at_least: 0.5}\n    then: {decision: deny}\n")
    candidate = whatif.Setup("ruled", StatisticalScorer(), parse_policy(DEFAULT_YAML.replace(
        "name: default", "name: ruled") + rules))
    replayed = whatif.replay(rows, whatif.Setup("current", StatisticalScorer(), Policy()), candidate)
    assert replayed["current_decision"].tolist() == shadow["current_decision"].tolist()
    payment = replayed["action"] == "payment"
    risky = (replayed["action"] == "login") & (replayed["current_risk"] >= 0.5)
    assert payment.sum() > 0 and risky.sum() > 0
    assert (replayed.loc[payment | risky, "ruled_decision"] == "deny").all()
    rest = ~(payment | risky)
    assert replayed.loc[rest, "ruled_decision"].tolist() == replayed.loc[rest, "current_decision"].tolist()
    assert whatif.compare(replayed, "current", "ruled").loc[("payment", "ruled"), "changed"] == \
        (replayed.loc[payment, "current_decision"] != "deny").sum()
