import numpy as np

from riskengine.lab.plots import plot_budget_curve, plot_catch_rates, plot_reliability, plot_roc
from tests.test_evaluation import scored

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_plots_write_png_files(tmp_path):
    y, score, action = scored()
    classes = np.where(y == 1, "stuffing", "legit")
    paths = [
        plot_roc(y, {"model": score, "baseline": score ** 2}, tmp_path / "roc.png"),
        plot_budget_curve(y, score, tmp_path / "sub" / "budget.png", action=action),
        plot_catch_rates(y, score, classes, 0.5, tmp_path / "classes.png"),
        plot_catch_rates(y, {"a": score, "b": score ** 2}, classes, {"a": 0.5, "b": 0.25}, tmp_path / "two.png"),
        plot_reliability(y, score, tmp_path / "reliability.png"),
    ]
    assert [p.name for p in paths] == ["roc.png", "budget.png", "classes.png", "two.png", "reliability.png"]
    for path in paths:
        assert_png(path)
