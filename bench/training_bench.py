"""Backfill + training time and peak memory, as ``riskengine train --data`` runs them, at growing sizes.

Each size runs in fresh Python processes (peak RSS, ``ru_maxrss``, only ever grows within one):
generating the events to a Parquet file (timed and measured on its own, not counted), then the
training job as the CLI does it, once per ``jobs`` setting in the same run: 1 is ``backfill`` over
``iter_rows(file)`` (a chunk of rows at a time), more is ``riskengine train --jobs N``'s partitioned
backfill (lab/partitions.py: the whole file as a frame, joblib's loky processes), then ``train``.
Peak memory is the whole process tree's (the job and its workers), sampled every 0.2 s; resident
memory is also read after each phase. tracemalloc is not used (it slows a replay several times).
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
import threading
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


class TreePeak:
    """The largest summed RSS of this process and its descendants (joblib's workers) while it runs."""

    def __init__(self, every: float = 0.2) -> None:
        self.peak_mb, self._every, self._stop = 0.0, every, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "TreePeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def cpu_s() -> float:
        """CPU seconds used so far by this process, its ended children (loky replaces a worker whose
        memory grew) and its live descendants (the backfill's workers): the load-independent
        measure of work, where wall time depends on what else runs."""
        import psutil

        ended = resource.getrusage(resource.RUSAGE_CHILDREN)
        total = ended.ru_utime + ended.ru_stime
        for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total

    def _watch(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self._every):
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:          # a worker that just ended
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)


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


def train_once(data: Path, home: Path, jobs: int = 1) -> dict:
    """The CLI's training job on ``data``, phase by phase; ``jobs`` > 1: ``train --jobs N``'s backfill."""
    from riskengine.lab import partitions, training
    from riskengine.scoring.registry import ModelRegistry

    phases: dict[str, dict] = {"start": {"rss_mb": _rss_mb()}}
    rounds = None
    with TreePeak() as tree:
        started, cpu, tree_cpu = time.perf_counter(), time.process_time(), tree.cpu_s()
        if jobs == 1:
            dataset = training.backfill(training.iter_rows(data))        # streamed from the file, as the CLI
        else:
            dataset, rounds = partitions.backfill_partitioned(training.load_frame(data), jobs)
        events = len(dataset.y)
        seconds = time.perf_counter() - started
        phases["backfill"] = {"seconds": seconds, "rss_mb": _rss_mb(), "us_per_event": seconds / events * 1e6,
                              "cpu_s_this_process": time.process_time() - cpu, "cpu_s_tree": tree.cpu_s() - tree_cpu}
        started = time.perf_counter()
        report = training.train(dataset, ModelRegistry(home / "models"), promote=True, source=str(data))
        phases["train"] = {"seconds": time.perf_counter() - started, "rss_mb": _rss_mb()}
    return {"events": events, "jobs": jobs, "phases": phases, "peak_rss_mb": _peak_mb(), "tree_peak_mb": tree.peak_mb,
            "rounds": None if rounds is None else {"replay_s": rounds.replay_s, "plan_s": rounds.plan_s,
                                                   "changed": rounds.changed, "parts": rounds.parts,
                                                   "converged": rounds.converged, "text": rounds.text()},
            "fingerprint": training.fingerprint(dataset), "loadavg_end": os.getloadavg()[0],
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


def run(sizes: list[int], jobs: list[int], timeout: float = 3600) -> dict:
    work = Path(tempfile.mkdtemp(prefix="riskengine-trainbench-"))
    results = []
    try:
        for n in sizes:
            data = work / f"events-{n}.parquet"
            print(f"  generating {n:,} events ...", flush=True)
            generated = _child(["--_generate", str(n), str(data)], timeout)
            runs = []
            for j in jobs:
                print(f"  backfill + training on {n:,} events, jobs={j} ...", flush=True)
                runs.append(_child(["--_train-one", str(data), str(work / f"home-{n}-{j}"), "--_jobs", str(j)],
                                   timeout))
            results.append({"generate": generated, "train": runs[0], "runs": runs,
                            "same_features": len({r["fingerprint"] for r in runs}) == 1})
            print(describe(results[-1]), flush=True)
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    return {"sizes": sizes, "jobs": jobs, "results": results, "growth": growth(results)}


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
    g = result["generate"]
    lines = [f"  {result['train']['events']:>9,} events ({g['users']:,} users, {g['attacks']:,} attacks; generated in "
             f"{g['seconds']:.0f} s, not counted); every run the same features: {result.get('same_features', True)}"]
    for t in result.get("runs", [result["train"]]):
        p = t["phases"]
        lines.append(
            f"      jobs={t.get('jobs', 1)}: backfill {p['backfill']['seconds']:7.1f} s "
            f"({p['backfill']['us_per_event']:.0f} us/event; CPU {p['backfill'].get('cpu_s_tree', float('nan')):.1f} s)   fit {p['train']['seconds']:6.1f} s   "
            f"backfill+fit {t['backfill_plus_train_s']:7.1f} s   peak RSS {t['peak_rss_mb']:6.0f} MB "
            f"(process tree {t.get('tree_peak_mb', 0):6.0f} MB)   roc_auc {t['roc_auc']:.4f}   "
            f"load at end {t.get('loadavg_end', float('nan')):.1f}")
        if t.get("rounds"):
            lines.append(f"          {t['rounds']['text']}")
    return "\n".join(lines)


def describe_growth(g: dict) -> str:
    if not g:
        return ""
    lines = [f"  growth over {g['events_ratio']:.0f}x the events (exponent 1.0 = linear):"]
    for name in ("backfill_s", "train_s", "backfill_plus_train_s", "peak_rss_mb"):
        lines.append(f"      {name:22s} x{g[name]['ratio']:6.2f}   exponent {g[name]['exponent']:.2f}")
    return "\n".join(lines)
