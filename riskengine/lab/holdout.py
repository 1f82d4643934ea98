"""Leave-one-class-out: does the model catch an attack it was never shown?

For each attacker class, the model is trained on the earlier weeks without that class and scored
on the later weeks; its catch rate on the held-out class sits beside the same model trained on
every class and beside the label-free Freeman et al. score. Thresholds are set where at most
``login_friction`` of legitimate logins would be stepped up, the cost users feel.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import numpy as np
import pandas as pd

from riskengine.lab.ranking import threshold_between
from riskengine.lab.training import Dataset, default_model, split_by_time
from riskengine.scoring.model import RiskModel, TrainedScorer


def threshold_at_friction(scores: np.ndarray, share: float) -> float:
    """The lowest threshold at which at most ``share`` of these (legitimate) scores reach it
    (``ranking.threshold_between``: the one definition ``evaluate`` and the bands use).

    >>> threshold_at_friction(np.array([0.1, 0.2, 0.3, 0.9]), 0.25) > 0.3
    True
    """
    return threshold_between(scores, share)


def _caught(scores: np.ndarray, classes: np.ndarray, threshold: float) -> pd.Series:
    flagged = pd.Series(scores >= threshold)
    return flagged.groupby(classes).mean()


def leave_one_class_out(data: Dataset, make_model: Callable[[], RiskModel] = default_model,
                        login_friction: float = 0.01, event_fpr: float = 0.02,
                        medium_at: float = 0.3, only: Collection[str] | None = None
                        ) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per attacker class: caught when held out, caught when trained on, caught by Freeman (each at
    ``login_friction`` of legitimate logins flagged), and the all-classes model at ``event_fpr`` of
    legitimate events flagged. Also returns summary figures (means, legitimate login friction).
    ``only``: hold out just these classes (quicker experiments; the means are over them)."""
    train, later = split_by_time(data)
    classes = later.meta["attack_class"].astype(str).to_numpy()
    trained_classes = train.meta["attack_class"].astype(str).to_numpy()
    legit = later.y == 0
    legit_logins = legit & (later.meta["action"].to_numpy() == "login")
    attack_classes = sorted(set(classes[~legit]) & set(trained_classes[train.y == 1]))
    if only is not None:
        attack_classes = [c for c in attack_classes if c in only]

    def scores(mask: np.ndarray) -> np.ndarray:
        return TrainedScorer(make_model().fit(train.X[mask], train.y[mask]), "holdout").predict(later.X)

    everything = scores(np.ones(len(train.y), dtype=bool))
    freeman = later.meta["freeman"].to_numpy()
    at_friction = {name: _caught(s, classes, threshold_at_friction(s[legit_logins], login_friction))
                   for name, s in (("all_trained", everything), ("freeman", freeman))}
    at_fpr = _caught(everything, classes, threshold_at_friction(everything[legit], event_fpr))
    rows = []
    for cls in attack_classes:
        held = scores(trained_classes != cls)
        caught = _caught(held, classes, threshold_at_friction(held[legit_logins], login_friction))
        rows.append({"attack_class": cls, "events": int((classes == cls).sum()), "held_out": caught[cls],
                     "all_trained": at_friction["all_trained"][cls], "freeman": at_friction["freeman"][cls],
                     f"all_trained_at_{event_fpr:.0%}_events": at_fpr[cls]})
    table = pd.DataFrame(rows).set_index("attack_class")
    summary = {"held_out_mean": float(table["held_out"].mean()), "held_out_min": float(table["held_out"].min()),
               "all_trained_mean": float(table["all_trained"].mean()),
               "freeman_mean": float(table["freeman"].mean()),
               f"all_trained_mean_at_{event_fpr:.0%}_events": float(table[f"all_trained_at_{event_fpr:.0%}_events"].mean()),
               "legit_login_friction": float(np.mean(everything[legit_logins] >= medium_at))}
    return table, summary
