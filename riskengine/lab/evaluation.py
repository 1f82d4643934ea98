"""Offline evaluation in one import: what a scored, labelled event table says about a model and its policy.

Sits after training (``training.py``) and before promotion and policy tuning. The functions live in
modules named for what they do; this module gathers them for notebooks and scripts
(``from riskengine.lab import evaluation``):

- ``scored``: input checks every figure shares;
- ``ranking``: ROC/PR, the one threshold definition (``threshold_between``), TPR at a legit FPR, ``compare``;
- ``bands``: the step-up budget, suggested bands, cost and catch per action;
- ``segments``: catch per attacker class, figures per login-history bucket;
- ``calibration``: reliability and Brier, Wilson intervals, ``aim_within``;
- ``drift``: PSI and KS between windows, score shift.

``tables.py`` and ``report.py`` turn them into a report; ``population.py`` says which events count.
"""

from riskengine.lab.bands import budget_curve, cost_at, suggest_bands
from riskengine.lab.calibration import aim_within, calibration, wilson_interval
from riskengine.lab.drift import drift, psi, score_shift, second_half
from riskengine.lab.ranking import DEFAULT_FPRS, compare, roc_pr, threshold_at_fpr, threshold_between, tpr_at_fpr
from riskengine.lab.scored import LEGIT
from riskengine.lab.segments import HISTORY_BUCKETS, by_history, catch_rate_by_class, history_bucket

__all__ = ["DEFAULT_FPRS", "HISTORY_BUCKETS", "LEGIT", "aim_within", "budget_curve", "by_history", "calibration",
           "catch_rate_by_class", "compare", "cost_at", "drift", "history_bucket", "psi", "roc_pr", "score_shift",
           "second_half", "suggest_bands", "threshold_at_fpr", "threshold_between", "tpr_at_fpr", "wilson_interval"]
