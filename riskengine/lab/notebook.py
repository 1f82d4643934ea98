"""What every notebook starts from: events (a user's file or generated), their replay, a model.

The notebooks' ``parameters`` cell (papermill's convention) names a data file and a registered
model version; this module turns those into the same objects ``riskengine evaluate`` works on,
so a notebook run on a user's data and registry tells the story the CLI tells.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from riskengine.lab import population, training
from riskengine.lab.datafiles import records


@dataclass
class Prepared:
    """The replayed events, split in time, and the model under review scored on the later window."""

    events: pd.DataFrame
    train: training.Dataset
    test: training.Dataset                  # the later window, evaluated population only
    groups: np.ndarray                      # population groups of the whole later window
    scorer: Any
    scores: dict[str, np.ndarray]           # "model" and "freeman" on ``test``
    source: str                             # what the data and model are, for titles

    def summary(self) -> str:
        return (f"{len(self.events):,} events ({int(self.events['label'].sum())} attacks) from {self.source}; "
                f"trained on {len(self.train.y):,}, evaluating on the later {len(self.test.y):,} "
                f"({int(self.test.y.sum())} takeovers). {population.describe(self.groups)}")


def prepare(data: str | Path | None = None, model: str | None = None, models: str | Path = "models",
            users: int = 300, days: int = 21, seed: int = 7) -> Prepared:
    """Read ``data`` (or generate ``users`` x ``days``), replay it, and score the later quarter with
    registered ``model`` from the ``models`` registry (or one fitted here on the earlier rows)."""
    from riskengine.datasets import synth
    from riskengine.scoring.model import RiskModel, TrainedScorer
    from riskengine.scoring.registry import ModelRegistry

    if data is not None:
        events = training.load_frame(Path(data))
        what = Path(data).name
    else:
        events = synth.generate_events(users=users, days=days, seed=seed)
        what = f"generated data (users={users}, days={days}, seed={seed})"
    replayed = training.backfill(records(events))      # the /score pipeline, in time order
    train, later = training.split_by_time(replayed)              # earlier 75% / later 25%, never random
    if model is not None:
        fitted, entry = ModelRegistry(Path(models)).load(model)
        name = model
    else:
        fitted = RiskModel(random_state=seed).fit(train.X, train.y)
        name = "a model fitted here"
    groups = population.of_dataset(later)
    test = later.window(population.evaluated(groups))
    scorer = TrainedScorer.loaded(fitted, entry) if model is not None else TrainedScorer(fitted, name)
    scores = {"model": scorer.predict(test.X), "freeman": test.meta["freeman"].to_numpy()}
    return Prepared(events, train, test, groups, scorer, scores, f"{what}, model {name}")
