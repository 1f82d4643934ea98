"""The one replay loop of the offline tools (training's backfill, what-if): each labelled event, in
stream order, through the serving engine's own ``Engine.record``, with step-ups resolved as the
real people would: a legitimate user passes the step-up, an attacker does not.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from riskengine.engine import Engine, Scored
from riskengine.events import Event, event_from_request, row_to_request

T = TypeVar("T")
#: events between two young collections while a replay holds the cyclic GC's automatic ones back
YOUNG_EVERY = 100_000


@dataclass(frozen=True, slots=True)
class Replayed:
    """One event as the replay saw it: the driver's answer, and what each watcher would have answered."""

    n: int
    row: Mapping[str, Any]
    event: Event
    label: int
    scored: Scored
    watched: tuple[Scored, ...]


def replay_stream(engine: Engine, rows: Iterable[Mapping[str, Any]], each: Callable[[Replayed], None],
           watchers: tuple[Engine, ...] = ()) -> None:
    """Record every row with ``engine`` (the driver); ``watchers`` (engines over the same store) are
    asked first about each event on the same history, changing nothing. ``each`` sees every event."""
    with young_collections_only():
        run(_replay(engine, rows, each, watchers))


@contextmanager
def young_collections_only() -> Iterator[None]:
    """Hold back the cyclic GC's automatic collections during a replay; ``_replay`` collects the
    young generations itself every ``YOUNG_EVERY`` events. A replay keeps every profile it built
    alive and swaps one for a new copy each event, so automatic full collections came often and
    each walked every profile: their cost per event grew with the users held (bench/README.md). A
    young collection costs what was allocated since the last one, not the heap, and still frees
    any cycle an event made (a memory-store replay makes none: measured)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def _replay(engine: Engine, rows: Iterable[Mapping[str, Any]], each: Callable[[Replayed], None],
                  watchers: tuple[Engine, ...]) -> None:
    for n, row in enumerate(rows, 1):
        if n % YOUNG_EVERY == 0:
            gc.collect(1)
        event = event_from_request(row_to_request(row))
        label = int(row.get("label", 0) or 0)
        watched = tuple([await watcher.evaluate(event) for watcher in watchers])
        scored = await engine.record(event)
        if scored.decision.decision == "step_up" and not scored.learned:
            if label == 0:
                await engine.apply_step_up(event, learn=event.success)     # the real user passes the step-up
            else:
                await engine.fail_step_up(event)                           # an attacker does not
        each(Replayed(n, row, event, label, scored, watched))


def run(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to the end from plain code, also where a loop already runs in this thread
    (a Jupyter kernel): then on a thread of its own, with its own loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    with ThreadPoolExecutor(1, thread_name_prefix="riskengine-replay") as pool:
        return pool.submit(asyncio.run, work).result()
