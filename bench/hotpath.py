"""In-process hot path: ``await Engine.evaluate(event)`` (enrich, profile read, features, model, policy), no HTTP.

The target (issue 5) is p50 <= 200 us and p99 <= 1 ms per single event on this machine. The store
is in memory and warmed with the history of many generated users; the model is trained on that
history, so the trees, calibration and reasons are the ones the service would run. Each stage is
also timed on its own, and ``profile_hot_path`` says where the time goes when the target is missed.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import pstats
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Coroutine, TypeVar

import numpy as np

from workload import Stream, warm  # noqa: I001  (bench/ is on sys.path)

from riskengine import profiles
from riskengine.engine import Engine, reasons_from
from riskengine.enrich import Enricher
from riskengine.events import Event, event_from_request, row_to_request
from riskengine.features import Context, extract
from riskengine.lab.datafiles import records
from riskengine.scoring.registry import ModelRegistry
from riskengine.scoring.model import TrainedScorer
from riskengine.stores import memory_store

TARGET_P50_US, TARGET_P99_US = 200.0, 1000.0
T = TypeVar("T")


@dataclass
class HotPath:
    engine: Engine
    events: list[Event]
    model_version: str
    history_events: int


def build(stream: Stream, models: Path) -> HotPath:
    """A memory store warmed with ``stream.history`` and the champion registered under ``models``."""
    registry = ModelRegistry(models)
    version = registry.champion_version()
    assert version is not None, f"no champion in {models}"
    model, _ = registry.load(version)
    engine = Engine(memory_store(), Enricher(), TrainedScorer(model, version))
    warm(engine, stream.history)
    events = [event_from_request(row_to_request(r)) for r in records(stream.traffic)]
    return HotPath(engine, events, version, len(stream.history))


def at_once(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never waits, in one step: with the memory store ``evaluate``'s awaits are
    all of finished futures, so timing it this way leaves out only the event loop's scheduling."""
    try:
        work.send(None)
    except StopIteration as done:
        return done.value
    work.close()
    raise RuntimeError("evaluate waited for something: the bench's store should answer at once")


def in_loop(work: Callable[[], T]) -> T:
    """``work()`` with an event loop running (the stores' futures belong to one)."""
    async def main() -> T:
        return work()
    return asyncio.run(main())


def _evaluate(engine: Engine) -> Callable[[Event], object]:
    return lambda event: at_once(engine.evaluate(event))


def _times_us(fn: Callable[[Event], object], events: list[Event], repeat: int) -> np.ndarray:
    for event in events[:200]:                 # warm caches the way a running service has them
        fn(event)
    out = np.empty(len(events) * repeat)
    clock = time.perf_counter_ns
    k = 0
    gc.collect()
    for _ in range(repeat):
        for event in events:
            started = clock()
            fn(event)
            out[k] = (clock() - started) / 1e3
            k += 1
    return out


def stages(path: HotPath) -> dict[str, Callable[[Event], object]]:
    """The steps of ``Engine.evaluate`` one by one (same calls, same order), to attribute the cost."""
    engine = path.engine
    store, enricher, scorer, policy = engine.store, engine.enricher, engine.scorer, engine.policy
    enriched = {e.event_id: enricher.enrich(e) for e in path.events}
    prof = {e.event_id: store.get(e.user_id) for e in path.events}
    ctx = {e.event_id: Context(store.ip_activity(e.ip, e.ts),
                               store.global_counts(profiles.attribute_values(enriched[e.event_id])))
           for e in path.events}
    sig = {e.event_id: extract(enriched[e.event_id], prof[e.event_id], ctx[e.event_id]) for e in path.events}
    sc = {e.event_id: scorer.score(sig[e.event_id]) for e in path.events}

    def store_reads(e: Event) -> object:
        store.get(e.user_id)
        return Context(store.ip_activity(e.ip, e.ts),
                       store.global_counts(profiles.attribute_values(enriched[e.event_id])))

    return {
        "enrich (geo + user agent, cached)": enricher.enrich,
        "store reads (profile, ip, global)": store_reads,
        "features.extract": lambda e: extract(enriched[e.event_id], prof[e.event_id], ctx[e.event_id]),
        "model (fastpath + contributions)": lambda e: scorer.score(sig[e.event_id]),
        "reasons + policy.decide": lambda e: policy.decide(
            e, sc[e.event_id].risk, reasons_from(sc[e.event_id], sig[e.event_id]), sc[e.event_id].model_version),
    }


def measure(path: HotPath, repeat: int = 1) -> dict:
    us = in_loop(lambda: _times_us(_evaluate(path.engine), path.events, repeat))
    p50, p99 = (float(x) for x in np.percentile(us, [50, 99]))
    result = {"events": len(path.events), "samples": int(us.size), "history_events": path.history_events,
              "model_version": path.model_version, "p50_us": p50, "p99_us": p99,
              "mean_us": float(us.mean()), "met": p50 <= TARGET_P50_US and p99 <= TARGET_P99_US, "stages": {}}
    for name, fn in stages(path).items():
        s = _times_us(fn, path.events, 1)
        result["stages"][name] = {"p50_us": float(np.percentile(s, 50)), "p99_us": float(np.percentile(s, 99)),
                                  "mean_us": float(s.mean())}
    return result


def profile_hot_path(path: HotPath, top: int = 25) -> str:
    """cProfile over every event, sorted by own time and by cumulative time."""
    profiler = cProfile.Profile()
    evaluate = _evaluate(path.engine)

    def run_all() -> None:
        profiler.enable()
        for event in path.events:
            evaluate(event)
        profiler.disable()
    in_loop(run_all)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def report(result: dict) -> str:
    lines = [f"hot path, in process: Engine.evaluate on {result['events']:,} events x repeats = "
             f"{result['samples']:,} samples (store warmed with {result['history_events']:,} events, "
             f"model {result['model_version']})",
             f"  p50 {result['p50_us']:7.1f} us (target <= {TARGET_P50_US:.0f})   "
             f"p99 {result['p99_us']:7.1f} us (target <= {TARGET_P99_US:.0f})   mean {result['mean_us']:.1f} us"
             f"   -> {'MET' if result['met'] else 'MISSED'}",
             "  by stage (each timed alone):"]
    for name, s in result["stages"].items():
        lines.append(f"    {name:36s} p50 {s['p50_us']:7.1f} us   p99 {s['p99_us']:7.1f} us   "
                     f"mean {s['mean_us']:7.1f} us")
    return "\n".join(lines)
