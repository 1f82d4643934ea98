"""CPU per event, per thread, of the /score route's work in process (no HTTP): where the time goes.

    BENCH_KEEP=1 .venv/bin/python bench/run.py --stores sqlite --skip-hotpath   # prints the kept folder
    .venv/bin/python bench/cpu_per_event.py KEPT_FOLDER [--events 3000] [--concurrent 16] [--store memory://]

Runs on a copy of the kept SQLite home (warmed with the history, champion model) the steps the
route runs for each body of ``bodies.lua``: parse (``ScoreRequest.model_validate_json``),
``to_event``, ``Engine.score``, the response's JSON, with ``--concurrent`` tasks on one event
loop. Prints events per second and each thread's CPU time per event (from /proc: user + system),
so the event loop's share, the reader's and the writer's are told apart. CPU per event moves less
than throughput when the machine is shared, but it still moves: compare runs made side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path


def thread_cpu_us() -> dict[str, int]:
    """Each thread of this process: name:tid -> CPU time used so far (µs)."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        stat = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        name = names.get(int(tid)) or Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        out[f"{name}:{tid}"] = (int(stat[11]) + int(stat[12])) * 1_000_000 // os.sysconf("SC_CLK_TCK")
    return out


def bodies_of(lua: Path) -> list[tuple[str, str]]:
    """(head, tail) pairs of the bench's Lua table: a body is head + event id + tail."""
    pairs = re.findall(r'\{"((?:[^"\\]|\\.)*)","((?:[^"\\]|\\.)*)"\}', lua.read_text())
    return [(json.loads(f'"{head}"'), json.loads(f'"{tail}"')) for head, tail in pairs]


async def measure(engine, bodies: list[tuple[str, str]], events: int, concurrent: int) -> None:
    from riskengine.api.schemas import ScoreRequest, ScoreResponse

    counter = iter(range(10**9))
    run = f"cpu{os.getpid()}"

    async def one(i: int) -> str:
        head, tail = bodies[i % len(bodies)]
        body = ScoreRequest.model_validate_json(f"{head}{run}-{i}{tail}")
        event = body.to_event(datetime.now(timezone.utc), "default", max_skew_s=10**9)
        decision = await engine.score(event, "bench")
        return ScoreResponse.from_decision(decision, "default").model_dump_json()

    async def worker(n: int) -> None:
        for _ in range(n):
            await one(next(counter))

    await asyncio.gather(*(worker(300 // concurrent + 1) for _ in range(concurrent)))     # warm caches
    gc.collect()
    before, started = thread_cpu_us(), time.perf_counter()
    await asyncio.gather(*(worker(events // concurrent) for _ in range(concurrent)))
    wall, after = time.perf_counter() - started, thread_cpu_us()
    done = events // concurrent * concurrent
    print(f"{done} events, {concurrent} concurrent: {done / wall:.0f} events/s, load average "
          f"{os.getloadavg()[0]:.2f}")
    for thread, used in after.items():
        if (spent := used - before.get(thread, 0)) > 0:
            print(f"  {thread.split(':')[0]:28s} {spent / done:6.0f} µs CPU per event")


def fsync_ms(folder: Path, commits: int = 200) -> list[float]:
    """Milliseconds of each of ``commits`` one-row commits in WAL mode with ``synchronous=FULL``
    in ``folder``: the least a durable 200 can wait on this disk."""
    import sqlite3

    db = sqlite3.connect(folder / "fsync.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (a)")
    times = []
    for i in range(commits):
        started = time.perf_counter()
        db.execute("BEGIN")
        db.execute("INSERT INTO t VALUES (?)", (i,))
        db.execute("COMMIT")
        times.append((time.perf_counter() - started) * 1e3)
    db.close()
    return sorted(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kept", type=Path, help="a folder bench/run.py kept (BENCH_KEEP=1)")
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--store", default=None, help="RISKENGINE_STORE for the copy (default: its SQLite file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.kept) as tmp:
        ms = fsync_ms(Path(tmp))
        print(f"one-row commit, synchronous=FULL, on this disk: p50 {ms[len(ms) // 2]:.2f} ms, "
              f"p90 {ms[len(ms) * 9 // 10]:.2f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        shutil.copytree(args.kept / "home-sqlite", home)
        os.environ.update(RISKENGINE_HOME=str(home), RISKENGINE_BOOTSTRAP_MODEL="false")
        if args.store:
            os.environ["RISKENGINE_STORE"] = args.store
        from riskengine.home import open_engine
        from riskengine.settings import Settings

        engine = open_engine(Settings())
        try:
            asyncio.run(measure(engine, bodies_of(args.kept / "bodies.lua"), args.events, args.concurrent))
        finally:
            engine.close()


if __name__ == "__main__":
    main()
