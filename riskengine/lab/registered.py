"""A registered model on a data file: what ``riskengine evaluate`` runs (the model, the Freeman
baseline and the champion, on the right window, at the policy's bands).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from riskengine.lab import population
from riskengine.lab.report import Report
from riskengine.lab.tables import build


WINDOWS = ("auto", "all", "later")


def pick_model(registry: Any, version: str | None = None) -> str:
    """``version``, else the champion; a clear error before any slow replay when there is neither."""
    version = version or registry.champion_version()
    if version is None:
        raise ValueError(f"no champion model in {registry.root}: train one with "
                         "`riskengine train --data PATH --promote`, or pass --model VERSION")
    registry.get(version)                               # an unknown version fails here, not after the replay
    return version


def evaluate_dataset(
    data: Any, registry: Any, version: str | None = None, window: str = "auto", policy: Any = None,
    data_name: str | None = None, **options: Any
) -> Report:
    """Score a backfilled ``training.Dataset`` with a registered model and the Freeman baseline.

    ``window="auto"`` evaluates only the later quarter when the model was trained on this very
    data (its ``metadata.json`` fingerprint matches), since the earlier rows are its training set;
    ``"later"`` always does, ``"all"`` never. The champion joins the table when it is not the model.
    Failed logins and non-takeover attack traffic are reported apart (``population.py``); ``policy``
    (default: the built-in default policy) adds cost and catch at its bands.
    """
    from riskengine.policy.decide import Policy
    from riskengine.lab import training
    from riskengine.features import FEATURE_NAMES
    from riskengine.scoring.model import TrainedScorer

    if window not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}, got {window!r}")
    champion = registry.champion_version()
    version = pick_model(registry, version)
    model, entry = registry.load(version)
    notes = [f"model {version}" + (" (champion)" if version == champion else "")]
    seen = entry.metadata.get("data_fingerprint") == training.fingerprint(data)
    if window == "later" or (window == "auto" and seen):
        data = training.split_by_time(data)[1]
        why = "the model was trained on the earlier rows of this data" if seen else "--window later"
        notes.append(f"held-out later window only ({why}): {data.meta['timestamp'].min()} .. "
                     f"{data.meta['timestamp'].max()}")
    elif seen:
        notes.append("WARNING: the model was trained on this data; figures on all rows are optimistic")
    groups = population.of_dataset(data)
    kept = data.y[population.evaluated(groups)]
    if len(np.unique(kept)) < 2:
        raise ValueError(f"the evaluated window holds {len(kept)} events of one class only "
                         f"({population.describe(groups)}); evaluation needs labelled takeovers and "
                         "legitimate events")
    scores = {"model": TrainedScorer.loaded(model, entry).predict(data.X), "freeman": data.meta["freeman"].to_numpy()}
    if champion is not None and champion != version:
        scores["champion"] = TrainedScorer.loaded(*registry.load(champion)).predict(data.X)
        notes.append(f"champion {champion} shown beside it")
    meta = data.meta
    report = build(data.y, scores, action=meta["action"].to_numpy(), attack_class=meta["attack_class"].to_numpy(),
                 history=meta["history"].to_numpy(), features=pd.DataFrame(data.X, columns=list(FEATURE_NAMES)),
                 timestamp=meta["timestamp"].to_numpy(),
                 title=f"riskengine offline evaluation: {version}" + (f" on {data_name}" if data_name else ""),
                 notes=notes, groups=groups, policy=policy or Policy(), data_name=data_name, **options)
    report.model_version = version
    return report
