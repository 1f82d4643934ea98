"""The one replay loop: the cyclic GC during a replay (automatic collections held back, young ones
made by the loop, the caller's setting given back)."""

from __future__ import annotations

import gc
import weakref

import pytest

from riskengine.datasets import synth
from riskengine.engine import Engine
from riskengine.enrich import Enricher
from riskengine.lab import replay
from riskengine.lab.replay import Replayed, replay_stream
from riskengine.scoring.model import StatisticalScorer
from riskengine.stores import OFFLINE_KEYS, memory_store


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return synth.generate_events(users=20, days=3, seed=5).to_dict("records")


def _engine() -> Engine:
    return Engine(memory_store(OFFLINE_KEYS, keep_events=False, keep_audit=False), Enricher(), StatisticalScorer(),
                  keep_records=False)


class _Cycle:
    """An object that only the cyclic GC can free (it refers to itself)."""

    def __init__(self) -> None:
        self.me = self


@pytest.mark.parametrize("enabled", [True, False])
def test_a_replay_holds_automatic_collections_back_and_gives_the_setting_back(rows, enabled):
    seen: list[bool] = []
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        replay_stream(_engine(), rows, lambda r: seen.append(gc.isenabled()))
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
    assert len(seen) == len(rows) and not any(seen)


def test_a_failing_replay_gives_the_setting_back(rows):
    def fail(seen: Replayed) -> None:
        raise RuntimeError("stop")

    assert gc.isenabled()
    with pytest.raises(RuntimeError, match="stop"):
        replay_stream(_engine(), rows, fail)
    assert gc.isenabled()


def test_the_loop_frees_an_events_cycles_every_young_every_events(rows, monkeypatch):
    """A cycle made while an event is replayed is gone within ``YOUNG_EVERY`` events, not at the end."""
    monkeypatch.setattr(replay, "YOUNG_EVERY", 10)
    assert len(rows) > 30
    refs: dict[int, weakref.ref] = {}
    alive_later: list[bool] = []

    def each(seen: Replayed) -> None:
        if seen.n == 5:
            refs[5] = weakref.ref(_Cycle())          # garbage at once, but only a collection frees it
        if seen.n == 9:
            alive_later.append(refs[5]() is not None)
        if seen.n == 25:
            alive_later.append(refs[5]() is not None)

    replay_stream(_engine(), rows, each)
    assert alive_later == [True, False]
