import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp
from sklearn.metrics import roc_curve

from riskengine.lab.evaluation import (
    budget_curve,
    by_history,
    calibration,
    catch_rate_by_class,
    compare,
    drift,
    history_bucket,
    psi,
    roc_pr,
    score_shift,
    second_half,
    suggest_bands,
    threshold_at_fpr,
    tpr_at_fpr,
    wilson_interval,
)

def scored(n: int = 4000, attack_share: float = 0.05, seed: int = 0):
    """Synthetic labelled scores: attacks score higher on average, with ties from rounding."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < attack_share).astype(int)
    score = np.clip(rng.normal(0.25 + 0.4 * y, 0.15), 0, 1).round(3)
    action = rng.choice(["login", "payment", "view_dashboard"], size=n, p=[0.6, 0.2, 0.2])
    return y, score, action


# --- threshold / tpr ---------------------------------------------------------------------------


def test_tpr_at_fpr_hand_example():
    legit = np.arange(1, 101) / 100  # 0.01 .. 1.00
    attacks = np.array([0.5, 0.955, 0.97, 0.99])
    y = np.r_[np.zeros(100), np.ones(4)]
    score = np.r_[legit, attacks]
    # 5% of 100 legit rows = 5 may flag: 0.96..1.00; the 6th highest (0.95) must not.
    t = threshold_at_fpr(y, score, 0.05)
    assert 0.95 < t <= 0.955
    assert np.sum(legit >= t) == 5
    assert tpr_at_fpr(y, score, 0.05) == 0.75  # 0.955, 0.97, 0.99 caught; 0.5 missed
    assert tpr_at_fpr(y, score, 0.0) == 0.0  # nothing above the top legit 1.00
    assert tpr_at_fpr(y, score, 0.5) == 0.75  # the attack at 0.5 ties the 51st legit row
    assert tpr_at_fpr(y, score, 0.51) == 1.0
    assert tpr_at_fpr(y, score, 1.0) == 1.0


def test_ties_straddling_the_budget_stay_unflagged():
    # 10% of legit rows tie at 0.5; a 5% budget cannot take the tie, so none of it flags.
    y = np.r_[np.zeros(100), [1, 1]]
    score = np.r_[np.full(10, 0.5), np.full(90, 0.1), [0.5, 0.6]]
    t = threshold_at_fpr(y, score, 0.05)
    assert t > 0.5
    assert np.mean(score[y == 0] >= t) == 0.0
    assert tpr_at_fpr(y, score, 0.05) == 0.5
    # a 10% budget takes the whole tie, and the attack tied with it
    assert tpr_at_fpr(y, score, 0.10) == 1.0


def test_a_threshold_flags_the_same_rows_once_stored_or_rounded():
    """Issue 15: a band one float step above a tied legit score flagged the tie again once
    metrics.json kept 10 digits of it (2.10% of legit logins instead of the report's 1.94%). An
    anomaly floor scores many legit events the same, so the threshold sits between scores."""
    tie = 0.16686920082637371
    legit = np.r_[np.full(30, tie), np.linspace(0.0, 0.1, 950), np.linspace(0.2, 0.9, 20)]
    y = np.r_[np.zeros(legit.size), np.ones(5)]
    score = np.r_[legit, [tie, 0.3, 0.5, 0.7, 0.95]]
    t = threshold_at_fpr(y, score, 0.02)             # 20 of 1,000 may flag: the 20 above the tie
    assert tie < t < 0.2
    flagged = score >= t
    assert np.mean(flagged[y == 0]) == 0.02 and flagged[y == 1].sum() == 4
    for stored in (json.loads(json.dumps(t)), float(f"{t:.10g}"), round(t, 4), float(np.float32(t))):
        assert ((score >= stored) == flagged).all()
    bands = suggest_bands(y, score, np.full(y.size, "login"))
    assert bands["medium"] == t and bands["login_legit_stepped_up"] == 0.02


@pytest.mark.parametrize("fpr", [0.0, 0.001, 0.01, 0.02, 0.05, 0.2, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_tpr_at_fpr_is_the_best_roc_point_within_budget(fpr, seed):
    y, score, _ = scored(seed=seed)
    fprs, tprs, _ = roc_curve(y, score, drop_intermediate=False)
    assert tpr_at_fpr(y, score, fpr) == pytest.approx(tprs[fprs <= fpr + 1e-12].max())
    assert np.mean(score[y == 0] >= threshold_at_fpr(y, score, fpr)) <= fpr


def test_threshold_errors_name_the_problem():
    with pytest.raises(ValueError, match="fpr must be a share"):
        threshold_at_fpr([0, 1], [0.1, 0.2], 2)
    with pytest.raises(ValueError, match="no legit rows"):
        threshold_at_fpr([1, 1], [0.1, 0.2], 0.1)
    with pytest.raises(ValueError, match="no attack rows"):
        tpr_at_fpr([0, 0], [0.1, 0.2], 0.1)
    with pytest.raises(ValueError, match="y has 2 rows but score has 3"):
        tpr_at_fpr([0, 1], [0.1, 0.2, 0.3], 0.1)
    with pytest.raises(ValueError, match=r"0 \(legit\) / 1 \(attack\).*\[2\]"):
        tpr_at_fpr([0, 2], [0.1, 0.2], 0.1)
    with pytest.raises(ValueError, match="NaN"):
        tpr_at_fpr([0, 1], [0.1, np.nan], 0.1)


# --- curves and tables -------------------------------------------------------------------------


def test_roc_pr_hand_values():
    r = roc_pr([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert r["roc_auc"] == pytest.approx(0.75)  # 3 of 4 attack/legit pairs ranked right
    assert r["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert r["fpr"][-1] == 1.0 and r["tpr"][-1] == 1.0
    with pytest.raises(ValueError, match="both"):
        roc_pr([0, 0], [0.1, 0.2])


def test_budget_curve_hand_values_per_action():
    y = [0, 0, 0, 0, 1, 1, 0, 1]
    score = [0.1, 0.2, 0.3, 0.9, 0.8, 0.95, 0.5, 0.4]
    action = ["login"] * 6 + ["payment"] * 2
    curve = budget_curve(y, score, action)
    assert list(curve["action"].unique()) == ["all", "login", "payment"]
    login = curve[curve["action"] == "login"].set_index("threshold")
    assert login.loc[0.9, "legit_stepped_up"] == 0.25 and login.loc[0.9, "attacks_caught"] == 0.5
    assert login.loc[0.8, "legit_stepped_up"] == 0.25 and login.loc[0.8, "attacks_caught"] == 1.0
    assert login.loc[0.1, "legit_stepped_up"] == 1.0
    everything = curve[curve["action"] == "all"]
    assert len(everything) == 8
    assert everything["legit_stepped_up"].is_monotonic_increasing
    assert everything["attacks_caught"].is_monotonic_increasing
    payment = curve[curve["action"] == "payment"].set_index("threshold")
    assert payment.loc[0.5, "attacks_caught"] == 0.0 and payment.loc[0.4, "attacks_caught"] == 1.0


def test_budget_curve_thins_out_large_inputs():
    y, score, _ = scored(n=20000)
    curve = budget_curve(y, np.random.default_rng(3).random(y.size), points=100)
    assert len(curve) <= 100
    assert curve["legit_stepped_up"].iloc[-1] == 1.0


def test_catch_rate_by_class():
    y = [0, 0, 0, 1, 1, 1, 1]
    score = [0.1, 0.6, 0.2, 0.9, 0.3, 0.7, 0.65]
    classes = ["legit", "legit", "legit", "stuffing", "stuffing", "targeted", "targeted"]
    table = catch_rate_by_class(y, score, classes, 0.65)
    assert list(table.index) == ["stuffing", "targeted", "legit"]
    assert table.loc["stuffing", "n"] == 2 and table.loc["stuffing", "caught"] == 1
    assert table.loc["targeted", "caught_share"] == 1.0  # 0.65 >= 0.65 flags
    assert table.loc["legit", "caught_share"] == 0.0


def test_history_buckets_and_table():
    assert history_bucket([0, 1, 4, 5, 19, 20, 1000]).tolist() == [
        "0", "1-4", "1-4", "5-19", "5-19", "20+", "20+"]
    with pytest.raises(ValueError, match="history"):
        history_bucket([1, -1])
    y = np.array([0, 1, 0, 0, 1, 1, 0, 0, 0, 0])
    score = np.array([0.2, 0.9, 0.1, 0.3, 0.4, 0.8, 0.5, 0.1, 0.2, 0.3])
    history = np.array([0, 0, 2, 2, 3, 30, 30, 30, 30, 30])
    table = by_history(y, score, history, fpr=0.2)
    assert list(table.index) == ["0", "1-4", "5-19", "20+"]
    assert table["n"].tolist() == [2, 3, 0, 5]
    assert table.loc["0", "roc_auc"] == 1.0
    assert table.loc["1-4", "roc_auc"] == 1.0
    assert math.isnan(table.loc["5-19", "roc_auc"])
    # 7 legit rows overall, 20% -> 1 may flag: the top legit score 0.5 does, 0.3 does not.
    assert table.loc["20+", "fpr_at_global"] == 0.25
    assert table.loc["1-4", "tpr_at_global"] == 1.0  # 0.4 > 0.3


def test_calibration_hand_values():
    c = calibration([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], bins=2)
    np.testing.assert_allclose(c["prob_true"], [0.0, 1.0])
    np.testing.assert_allclose(c["prob_pred"], [0.15, 0.85])
    assert c["brier"] == pytest.approx((0.01 + 0.04 + 0.04 + 0.01) / 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration([0, 1], [0.1, 1.5])


# --- bands -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_suggest_bands_keeps_legit_logins_within_budget(seed):
    y, score, action = scored(n=20000, seed=seed)
    score = np.where(action == "login", score, np.clip(score + 0.2, 0, 1))  # logins set the bands
    bands = suggest_bands(y, score, action, login_budget=0.02, deny_budget=0.001)
    legit_login = score[(action == "login") & (y == 0)]
    stepped, denied = np.mean(legit_login >= bands["medium"]), np.mean(legit_login >= bands["high"])
    assert stepped <= 0.02 and denied <= 0.001
    assert stepped > 0.01  # uses the budget rather than refusing every step-up
    assert bands["high"] >= bands["medium"]
    assert bands["login_legit_stepped_up"] == pytest.approx(stepped)
    assert bands["login_legit_denied"] == pytest.approx(denied)
    attack_login = score[(action == "login") & (y == 1)]
    assert bands["login_attacks_caught"] == pytest.approx(np.mean(attack_login >= bands["medium"]))
    payment = (action == "payment") & (y == 0)
    assert bands["by_action"].loc["payment", "legit_stepped_up"] == pytest.approx(
        np.mean(score[payment] >= bands["medium"]))


def test_suggest_bands_errors():
    with pytest.raises(ValueError, match="no legit rows with action 'login'"):
        suggest_bands([0, 1], [0.1, 0.2], ["payment", "login"])
    with pytest.raises(ValueError, match="deny_budget"):
        suggest_bands([0, 1], [0.1, 0.2], ["login", "login"], login_budget=0.01, deny_budget=0.05)


# --- drift -------------------------------------------------------------------------------------


def test_psi_identical_same_and_shifted():
    rng = np.random.default_rng(0)
    base = rng.normal(size=5000)
    assert psi(base, base) == 0.0
    assert psi(base, rng.normal(size=5000)) < 0.05
    assert psi(base, rng.normal(loc=1.0, size=5000)) > 0.5


def test_psi_hand_value():
    # Bins of the expected window at its median 4.5: expected 50/50, actual 80/20.
    expected = list(range(10))
    actual = [0] * 8 + [9] * 2
    want = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(expected, actual, bins=2) == pytest.approx(want)


def test_psi_categories_missing_values_and_empty_bins():
    assert psi(["NO", "NO", "US", "DE"], ["NO", "NO", "US", "DE"]) == 0.0
    p, q = np.array([0.5, 0.25, 0.25, 1e-4]), np.array([0.25, 0.25, 0.25, 0.25])
    want = float(np.sum((q - p) * np.log(q / p)))
    assert psi(["NO", "NO", "US", "DE"], ["NO", "US", "DE", "SE"]) == pytest.approx(want)
    # a binary feature whose missing share grows from 0 to 50%
    p, q = np.array([0.5, 0.5, 1e-4]), np.array([0.25, 0.25, 0.5])
    want = float(np.sum((q - p) * np.log(q / p)))
    assert psi([0.0, 1.0, 0.0, 1.0], [0.0, 1.0, np.nan, np.nan]) == pytest.approx(want)


def test_drift_table():
    rng = np.random.default_rng(1)
    a = pd.DataFrame({"km": rng.normal(size=3000), "hour": rng.integers(0, 24, 3000),
                      "country": rng.choice(["NO", "US"], 3000), "risk_score": rng.random(3000)})
    b = pd.DataFrame({"km": rng.normal(loc=2.0, size=3000), "hour": rng.integers(0, 24, 3000),
                      "country": rng.choice(["NO", "US"], 3000),
                      "risk_score": rng.random(3000) ** 2})
    table = drift(a, b, ["km", "hour", "country"], score="risk_score")
    assert list(table.index) == ["km", "hour", "country", "risk_score"]
    assert table.loc["km", "shift"] == "major" and table.loc["hour", "shift"] == "stable"
    assert table.loc["risk_score", "kind"] == "score"
    assert table.loc["risk_score", "ks_statistic"] == pytest.approx(
        ks_2samp(a["risk_score"], b["risk_score"]).statistic)
    assert table.loc["risk_score", "ks_statistic"] > 0.1
    assert math.isnan(table.loc["country", "ks_statistic"])
    assert table.loc["km", "psi"] == pytest.approx(psi(a["km"], b["km"]))
    with pytest.raises(ValueError, match="nope"):
        drift(a, b, ["nope"])


# --- comparison and figures --------------------------------------------------------------------


def test_compare_model_vs_baseline():
    y, score, _ = scored(seed=4)
    rng = np.random.default_rng(4)
    classes = np.where(y == 1, rng.choice(["stuffing", "targeted"], y.size), "legit")
    table = compare(y, {"model": score, "perfect": y * 0.5 + 0.25, "random": rng.random(y.size)},
                    attack_class=classes)
    assert list(table.index) == ["model", "perfect", "random"]
    assert list(table.columns[:6]) == ["roc_auc", "pr_auc", "tpr@1%", "tpr@2%", "tpr@5%", "brier"]
    assert table.loc["perfect", "roc_auc"] == 1.0 and table.loc["perfect", "tpr@1%"] == 1.0
    assert table.loc["model", "tpr@2%"] == pytest.approx(tpr_at_fpr(y, score, 0.02))
    assert abs(table.loc["random", "roc_auc"] - 0.5) < 0.06
    assert table.loc["model", "roc_auc"] > 0.9
    assert table.loc["perfect", "brier"] == pytest.approx(0.0625)
    t = threshold_at_fpr(y, score, 0.05)
    targeted = score[classes == "targeted"]
    assert table.loc["model", "targeted@5%"] == pytest.approx(np.mean(targeted >= t))
    freeman_like = compare(y, {"raw": score * 10})
    assert math.isnan(freeman_like.loc["raw", "brier"])


# --- drift between halves, uncertainty ----------------------------------------------------------


def test_second_half_splits_at_the_time_midpoint_not_the_row_count():
    stamps = ["2026-01-01T00:00:00Z"] * 5 + ["2026-01-03T00:00:00Z", "2026-01-11T00:00:00Z"]
    assert second_half(stamps).tolist() == [False] * 6 + [True]
    with pytest.raises(ValueError, match="at least one"):
        second_half([])


def test_score_shift_against_direct_computation():
    rng = np.random.default_rng(3)
    a, b = rng.beta(1, 8, 3000), rng.beta(1, 5, 3000)
    shift = score_shift(a, b, threshold=0.3)
    assert shift["flagged_first"] == pytest.approx(np.mean(a >= 0.3))
    assert shift["flagged_second"] == pytest.approx(np.mean(b >= 0.3)) and shift["flagged_second"] > 0.1
    assert shift["ks_statistic"] == pytest.approx(ks_2samp(a, b).statistic)
    assert shift["psi"] == pytest.approx(psi(a, b)) and shift["psi"] > 0.1
    assert shift["p95_second"] == pytest.approx(np.quantile(b, 0.95))
    assert score_shift(a, a, 0.3)["shift"] == "stable"


@pytest.mark.parametrize("k, n", [(0, 1), (0, 50), (7, 50), (50, 50), (1, 3), (300, 1000)])
def test_wilson_interval_solves_its_defining_equation(k, n):
    """Wilson's bounds are the p where |k/n - p| = z * sqrt(p(1-p)/n): check that, not a copy of the formula."""
    z = 1.959963984540054
    lo, hi = wilson_interval(k, n)
    assert 0 <= lo <= k / n <= hi <= 1
    for bound in (lo, hi):
        if 0 < bound < 1:
            assert abs(k / n - bound) == pytest.approx(z * math.sqrt(bound * (1 - bound) / n), abs=1e-9)
    assert (lo == 0) == (k == 0) and (hi == 1) == (k == n)


def test_wilson_interval_narrows_with_more_data_and_names_bad_input():
    assert np.diff(wilson_interval(20, 100)) > np.diff(wilson_interval(200, 1000))
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(5, 4)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 4, confidence=95)
