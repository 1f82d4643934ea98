"""Stacked anomaly input, floor, or both? Leave-one-class-out for each way of adding the label-free
anomaly score (``StatisticalScorer``: Freeman likelihood ratios, the user's own amount, payee and
session anomalies) to the trained model, on one generated stream:

    .venv/bin/riskengine generate --out data/raw/events-u1000-d30-s42.parquet --users 1000 --days 30 --seed 42
    .venv/bin/python scripts/anomaly_modes.py --data data/raw/events-u1000-d30-s42.parquet

Each mode is a ``RiskModel`` with the monotonic constraints of ``FEATURES``: ``none`` (trees only),
``floor`` (risk never below the anomaly score at scale ``--floor``), ``stacked`` (the anomaly score
as one more input column, constrained to raise risk), ``both``. Prints one row per mode (held-out
class mean and lowest class at 1% of legitimate logins flagged, the all-classes model's class mean
at 1% of legitimate logins and at 2% of legitimate events, legitimate login friction at risk >= 0.3)
and the held-out catch per class. ``--blank payee_added_h`` measures what one signal adds (its column left empty). The replayed
feature rows are cached beside the data file
(``.rows.npz`` and ``.meta.parquet``; delete them after changing the features).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from riskengine.features import FEATURE_NAMES, MONOTONIC
from riskengine.lab import holdout, training
from riskengine.scoring.model import FLOOR_SIGNALS, RiskModel


def replayed(path: Path) -> training.Dataset:
    rows, meta = path.with_suffix(".rows.npz"), path.with_suffix(".meta.parquet")
    if rows.exists() and meta.exists() and rows.stat().st_mtime > path.stat().st_mtime:
        arrays = np.load(rows)
        return training.Dataset(arrays["X"], arrays["y"], pd.read_parquet(meta))
    data = training.replay_file(path)
    np.savez(rows, X=data.X, y=data.y)
    data.meta.to_parquet(meta)
    return data


def blanked(data: training.Dataset, names: list[str]) -> training.Dataset:
    """The rows without these signals: an all-NaN column is never split on, and the floor reads NaN
    as no evidence, so the models are those of an engine that never had them (its replay aside)."""
    X = data.X.copy()
    for name in names:
        X[:, FEATURE_NAMES.index(name)] = np.nan
    return training.Dataset(X, data.y, data.meta)


def modes(floor: float) -> dict[str, dict]:
    """Each mode's ``RiskModel`` parameters; ``*_money`` floors count only ``FLOOR_SIGNALS`` (amount, payee)."""
    money = {"floor_signals": FLOOR_SIGNALS}
    return {"none": {}, "floor": {"anomaly_floor": floor}, "stacked": {"anomaly_input": True},
            "both": {"anomaly_floor": floor, "anomaly_input": True},
            "floor_money": {"anomaly_floor": floor, **money},
            "both_money": {"anomaly_floor": floor, "anomaly_input": True, **money}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="generated Parquet/JSONL")
    parser.add_argument("--floor", type=float, default=training.ANOMALY_FLOOR, help="floor scale")
    parser.add_argument("--modes", default="none,floor,stacked,both")
    parser.add_argument("--classes", help="hold out only these (comma-separated), for a quicker look")
    parser.add_argument("--blank", help="signals left empty (NaN) in every row, for trees and floor alike: "
                                        "what a signal adds (comma-separated)")
    args = parser.parse_args(argv)
    data = blanked(replayed(args.data), args.blank.split(",") if args.blank else [])
    summaries, per_class = {}, {}
    for name in args.modes.split(","):
        params = modes(args.floor)[name]
        started = time.perf_counter()
        table, summary = holdout.leave_one_class_out(data, lambda params=params: RiskModel(monotonic_cst=MONOTONIC, **params),
                                                     only=args.classes.split(",") if args.classes else None)
        summaries[name] = {**summary, "seconds": time.perf_counter() - started}
        per_class[name] = table["held_out"]
        per_class[f"{name} (all)"] = table["all_trained_at_2%_events"]
        print(f"{name}: {summaries[name]}", flush=True)
    print(pd.DataFrame(summaries).T.round(4).to_string())
    print()
    print(pd.DataFrame(per_class).round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
