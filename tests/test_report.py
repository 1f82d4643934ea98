import base64
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bs4 import BeautifulSoup
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from riskengine.lab.evaluation import psi, suggest_bands, threshold_at_fpr
from riskengine.lab.report import build, report_markdown
from tests.test_evaluation import scored
from tests.test_plots import assert_png


def test_report_markdown(tmp_path):
    y, score, action = scored(seed=5)
    classes = np.where(y == 1, "stuffing", "legit")
    history = np.random.default_rng(5).integers(0, 40, y.size)
    text = report_markdown(y, {"model": score, "baseline": score ** 2}, tmp_path, action=action,
                           attack_class=classes, history=history)
    assert (tmp_path / "report.md").read_text() == text
    for name in ["roc.png", "reliability.png", "budget.png", "catch_rates.png"]:
        assert f"]({name})" in text
        assert_png(tmp_path / name)
    assert "| model |" in text and "| baseline |" in text and "| 20+ |" in text
    bands = suggest_bands(y, score, action)
    assert f"| model | {bands['medium']:.4f} | {bands['high']:.4f} |" in text


def test_report_figures_match_a_direct_computation(tmp_path):
    y, score, action = scored(n=3000, seed=9)
    rng = np.random.default_rng(9)
    baseline = np.clip(score + rng.normal(0, 0.2, y.size), 0, 1)
    classes = np.where(y == 1, rng.choice(["stuffing", "targeted"], y.size), "legit")
    stamps = pd.date_range("2026-01-01", periods=y.size, freq="min", tz="UTC")
    features = pd.DataFrame({"steady": rng.normal(size=y.size),
                             "moving": np.r_[rng.normal(size=1500), rng.normal(2, 1, 1500)]})
    report = build(y, {"model": score, "freeman": baseline}, action=action, attack_class=classes,
                   history=rng.integers(0, 30, y.size), features=features, timestamp=stamps)
    for name, s in (("model", score), ("freeman", baseline)):
        row = report.comparison.loc[name]
        assert row["roc_auc"] == pytest.approx(roc_auc_score(y, s))
        assert row["pr_auc"] == pytest.approx(average_precision_score(y, s))
        assert report.calibration.loc[name, "brier"] == pytest.approx(brier_score_loss(y, s))
        logins = action == "login"
        medium = report.bands.loc[name, "medium"]
        assert medium == pytest.approx(suggest_bands(y, s, action)["medium"])
        assert report.bands.loc[name, "login_legit_stepped_up"] <= 0.02
        caught = np.mean(s[logins & (y == 1)] >= medium)
        assert report.bands.loc[name, "login_attacks_caught"] == pytest.approx(caught)
        assert report.classes.loc["targeted", name] == pytest.approx(np.mean(s[classes == "targeted"] >= medium))
        later = np.arange(y.size) >= 1500
        assert report.score_shift.loc[name, "psi"] == pytest.approx(psi(s[~later], s[later]))
    assert report.drift.index[0] == "moving" and report.drift.loc["moving", "shift"] == "major"
    assert report.drift.loc["steady", "shift"] == "stable"

    report.write(tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["comparison"]["model"]["roc_auc"] == pytest.approx(roc_auc_score(y, score))
    assert metrics["bands"]["model"]["medium"] == report.thresholds["model"]     # exact, not 10 digits
    assert metrics["feature_drift"]["moving"]["shift"] == "major"
    text = (tmp_path / "report.txt").read_text()
    assert text == report.text() and "Drift: features" in text and "model under review: model" in text


def test_report_without_optional_inputs_and_raw_scores(tmp_path):
    """Freeman-like scores outside [0, 1] still rank; they just get no Brier or reliability line."""
    y, score, _ = scored(n=500, seed=2)
    report = build(y, {"model": score, "raw": score * 10})
    assert report.bands is None and report.classes is None and report.drift is None
    assert np.isnan(report.calibration.loc["raw", "brier"])
    assert report.thresholds["model"] == threshold_at_fpr(y, score, 0.01)
    text = report.write(tmp_path)
    assert "budget.png" not in text and sorted(p.name for p in tmp_path.glob("*.png")) == ["reliability.png",
                                                                                           "roc.png"]


def test_report_notes_when_bands_are_impossible():
    y, score, _ = scored(n=400, seed=1)
    report = build(y, score, action=np.full(y.size, "payment"))
    assert report.bands is None and any("no bands" in note for note in report.notes)


CHROMIUM = "/usr/bin/chromium"


def rendered_dom(page: Path, profile: Path) -> str:
    """The page as a real headless Chromium lays it out (``--dump-dom``: the DOM after loading)."""
    run = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True)
    return run.stdout


def test_html_report_in_a_headless_browser(tmp_path):
    y, score, action = scored(n=3000, seed=4)
    classes = np.where(y == 1, "stuffing", "legit")
    report = build(y, {"model": score, "freeman": score ** 2}, action=action, attack_class=classes,
                   title="riskengine offline evaluation: 2026-12-01T00-00-00Z-abcd on events.parquet",
                   data_name="events.parquet")
    report.model_version = "2026-12-01T00-00-00Z-abcd"
    report.write(tmp_path / "out")
    page = tmp_path / "out" / "report.html"
    for png in tmp_path.glob("out/*.png"):
        png.unlink()                                          # self-contained: nothing beside it is needed
    dom = BeautifulSoup(rendered_dom(page, tmp_path / "chromium"), "html.parser")

    assert dom.title.string == "riskengine offline evaluation: 2026-12-01T00-00-00Z-abcd on events.parquet"
    assert "2026-12-01T00-00-00Z-abcd" in dom.find(id="subject").text and "events.parquet" in dom.find(id="subject").text
    images = dom.find_all("img")
    assert {img["alt"].split(":")[0] for img in images} == {"ROC", "Reliability", "Step-up budget",
                                                            "Catch rate per attacker class"}
    for img in images:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    budget = dom.find(id="table-by_action")
    rows = {tr.th.text: [td.text for td in tr.find_all("td")] for tr in budget.tbody.find_all("tr")}
    assert set(rows) == set(np.unique(action))
    login = report.by_action.loc["login"]
    assert rows["login"][list(report.by_action.columns).index("legit_stepped_up")] == f"{login['legit_stepped_up']:.4f}"
    assert len(dom.find(id="table-comparison").tbody.find_all("tr")) == 2
