"""Backfill + training time and peak memory, as ``riskengine train --data`` runs them, at growing sizes.

Each size runs in a fresh Python process (peak RSS, ``ru_maxrss``, only ever grows within one), in
two steps: generating the events to a Parquet file (timed and measured on its own, not counted),
then the training job exactly as the CLI does it (``training.replay_file``): ``backfill`` over
``iter_rows(file)``, which reads the file a chunk of rows at a time, then ``train``. Resident memory
is sampled after each phase, so the report says which phase holds the memory; tracemalloc is not
used (it slows a million-event replay several times).
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EVENTS_PER_USER_DAY = 2.0          # what riskengine.datasets.synth produces, about (checked after generating)
DAYS = 30


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # KiB on Linux


def generate(n: int, out: Path) -> dict:
    """At least ``n`` events over 30 days (users scaled to fit), cut to exactly ``n`` in time order."""
    from riskengine.datasets import synth

    started = time.perf_counter()
    users = math.ceil(n / (EVENTS_PER_USER_DAY * DAYS) * 1.15)
    frame = synth.generate_events(users=users, days=DAYS, seed=11)
    while len(frame) < n:                                  # bounded: at most a few rounds
        users = math.ceil(users * 1.3 * n / len(frame))
        frame = synth.generate_events(users=users, days=DAYS, seed=11)
    frame = frame.iloc[:n]
    synth.write_events(frame, out)
    return {"events": n, "users": users, "attacks": int(frame["label"].sum()),
            "seconds": time.perf_counter() - started, "peak_rss_mb": _peak_mb()}


def train_once(data: Path, home: Path) -> dict:
    """The CLI's training job on ``data``, phase by phase."""
    from riskengine.lab import training
    from riskengine.scoring.registry import ModelRegistry

    phases: dict[str, dict] = {"start": {"rss_mb": _rss_mb()}}
    started = time.perf_counter()
    dataset = training.backfill(training.iter_rows(data))          # streamed from the file, as the CLI
    events = len(dataset.y)
    phases["backfill"] = {"seconds": time.perf_counter() - started, "rss_mb": _rss_mb(),
                          "us_per_event": (time.perf_counter() - started) / events * 1e6}
    started = time.perf_counter()
    report = training.train(dataset, ModelRegistry(home / "models"), promote=True, source=str(data))
    phases["train"] = {"seconds": time.perf_counter() - started, "rss_mb": _rss_mb()}
    return {"events": events, "phases": phases, "peak_rss_mb": _peak_mb(),
            "backfill_plus_train_s": phases["backfill"]["seconds"] + phases["train"]["seconds"],
            "total_s": sum(p.get("seconds", 0.0) for p in phases.values()),
            "roc_auc": report.metrics.get("roc_auc"), "pr_auc": report.metrics.get("pr_auc"),
            "n_train": report.metrics.get("n_train"), "feature_matrix_mb": dataset.X.nbytes / 2**20}


def _child(args: list[str], timeout: float) -> dict:
    done = subprocess.run([sys.executable, str(HERE / "run.py"), *args], capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(sizes: list[int], timeout: float = 3600) -> dict:
    work = Path(tempfile.mkdtemp(prefix="riskengine-trainbench-"))
    results = []
    try:
        for n in sizes:
            data = work / f"events-{n}.parquet"
            print(f"  generating {n:,} events ...", flush=True)
            generated = _child(["--_generate", str(n), str(data)], timeout)
            print(f"  backfill + training on {n:,} events ...", flush=True)
            trained = _child(["--_train-one", str(data), str(work / f"home-{n}")], timeout)
            results.append({"generate": generated, "train": trained})
            print(describe(results[-1]), flush=True)
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    return {"sizes": sizes, "results": results, "growth": growth(results)}


def growth(results: list[dict]) -> dict:
    """How time and memory scale from the smallest to the largest run (1.0 = linear in events)."""
    if len(results) < 2:
        return {}
    small, large = results[0]["train"], results[-1]["train"]
    ratio = large["events"] / small["events"]
    out = {"events_ratio": ratio}
    for name, key in (("backfill_s", ("phases", "backfill", "seconds")), ("train_s", ("phases", "train", "seconds")),
                      ("backfill_plus_train_s", ("backfill_plus_train_s",)), ("peak_rss_mb", ("peak_rss_mb",))):
        a, b = small, large
        for k in key:
            a, b = a[k], b[k]
        out[name] = {"ratio": b / a, "exponent": math.log(b / a) / math.log(ratio)}
    return out


def describe(result: dict) -> str:
    g, t = result["generate"], result["train"]
    p = t["phases"]
    return (f"  {t['events']:>9,} events ({g['users']:,} users, {g['attacks']:,} attacks; generated in "
            f"{g['seconds']:.0f} s, not counted)\n"
            f"      backfill (reading the file in chunks) {p['backfill']['seconds']:7.1f} s "
            f"({p['backfill']['us_per_event']:.0f} us/event)   "
            f"train {p['train']['seconds']:6.1f} s   backfill+train {t['backfill_plus_train_s']:7.1f} s\n"
            f"      peak RSS {t['peak_rss_mb']:7.0f} MB   RSS at start {p['start']['rss_mb']:.0f} MB, "
            f"after backfill {p['backfill']['rss_mb']:.0f} MB, train "
            f"{p['train']['rss_mb']:.0f} MB   (feature matrix {t['feature_matrix_mb']:.0f} MB)   "
            f"roc_auc {t['roc_auc']:.4f} pr_auc {t['pr_auc']:.4f}")


def describe_growth(g: dict) -> str:
    if not g:
        return ""
    lines = [f"  growth over {g['events_ratio']:.0f}x the events (exponent 1.0 = linear):"]
    for name in ("backfill_s", "train_s", "backfill_plus_train_s", "peak_rss_mb"):
        lines.append(f"      {name:22s} x{g[name]['ratio']:6.2f}   exponent {g[name]['exponent']:.2f}")
    return "\n".join(lines)
