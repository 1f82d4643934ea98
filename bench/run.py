"""``make bench``: the service's throughput and latency against a bare FastAPI endpoint, and the hot path.

One run measures, each server in its own uvicorn process with one worker, loaded by wrk at
16 connections for a bounded time after a short warm-up, each row in turns with the bare
endpoint (a few slices each, alternating) so that both see the same minutes of a shared machine:
  (a) bench/bare_app.py: FastAPI + the same request schema, no engine;
  (b) ``riskengine serve`` /score with generated traffic, SQLite store (synchronous=FULL, the
      default) and, when the Redis store is there and a Redis answers, the Redis store; with
      ``--workers N``, also ``serve --workers N`` on Redis in turns with one worker;
and then (c) the in-process hot path, ``Engine.evaluate`` per event. ``--training`` instead
measures (d) backfill + training time and peak memory at 100k and 1M events (minutes).
Figures are printed and written to bench/results/ (git-ignored). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

RESULTS = HERE / "results"
KEY = "bench-key"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
#: the workers row's second order: a user's next body at least this many after their last (> connections)
USERS_APART = 32
GOAL_THROUGHPUT, GOAL_P99 = 0.5, 2.0       # /score vs bare: >= half the throughput, <= twice the p99
LABELS = {"bare": "bare FastAPI",
          "bare+stack": "bare + service HTTP layer", "sqlite": "/score SQLite FULL",
          "sqlite-normal": "/score SQLite NORMAL", "redis": "/score Redis"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("bench: wrk not found. Install it from Debian's packages: apt-get install -y wrk "
                 "(then run `make bench` again)")
    return wrk


class Server:
    """A uvicorn process on 127.0.0.1, stopped (SIGINT, then SIGKILL) when done."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.name, self.port = name, port
        self.log = open(log, "w")
        self.process = subprocess.Popen(argv, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT,
                                        cwd=HERE.parent)

    def wait_ready(self, path: str, seconds: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not start in {seconds} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()


def wrk_run(wrk: str, port: int, bodies: Path, seconds: float, connections: int, threads: int, offset: int,
            run: str, auth: str | None, out: Path) -> dict:
    env = {**os.environ, "BENCH_BODIES": str(bodies), "BENCH_RUN": run, "BENCH_OFFSET": str(offset),
           "BENCH_THREADS": str(threads), "BENCH_AUTH": auth or "", "BENCH_OUT": str(out)}
    argv = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "10s",
            "-s", str(HERE / "score.lua"), f"http://127.0.0.1:{port}/score"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    result = json.loads(out.read_text())
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


class Target:
    """A running server under load: where its next wrk run starts in the bodies, so none is sent twice.
    Servers on one store share one position (``bodies_from``): that store then sees each body once."""

    def __init__(self, name: str, server: Server, auth: str | None, bodies_from: "Target | None" = None) -> None:
        self.name, self.server, self.auth = name, server, auth
        self.source = bodies_from or self
        self.sent = 0
        self.runs = 0

    def run(self, wrk: str, bodies: Path, seconds: float, args: argparse.Namespace, work: Path) -> dict:
        self.runs += 1
        label = f"{self.name}-{self.runs}"
        cpu = server_cpu_s(self.server)
        result = wrk_run(wrk, self.server.port, bodies, seconds, args.connections, args.threads, self.source.sent,
                         label, self.auth, work / f"{label}.json")
        result["server_cpu_s"] = server_cpu_s(self.server) - cpu
        self.source.sent += result["requests"]
        return result


def server_cpu_s(server: Server) -> float:
    """CPU seconds used so far by the server's process and its workers: with the requests served, its
    CPU per request (what a second worker has to find room for on these cores)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(server.process.pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:          # a worker that just ended
                pass
    except psutil.Error:
        pass
    return total


def interleaved(targets: list[Target], wrk: str, bodies: Path, args: argparse.Namespace,
                work: Path) -> list[dict]:
    """Warm each target up, then load them in turn, ``args.rounds`` slices each of
    ``args.duration / args.rounds`` seconds: on a shared machine whose speed moves from minute to
    minute, a row and its baseline then see the same minutes."""
    for target in targets:
        target.run(wrk, bodies, args.warmup, args, work)
    slices: list[list[dict]] = [[] for _ in targets]
    for _ in range(args.rounds):
        for target, taken in zip(targets, slices):
            taken.append(target.run(wrk, bodies, args.duration / args.rounds, args, work))
    return [aggregate(taken, target.source.sent) for target, taken in zip(targets, slices)]


def aggregate(slices: list[dict], sent: int) -> dict:
    """One row from its slices: counts add up; p50 and p90 are the slices' request-weighted mean,
    p99 and above the worst slice's (wrk gives percentiles, not the samples behind them)."""
    requests = sum(s["requests"] for s in slices)
    weighted = {k: sum(s["latency_us"][k] * s["requests"] for s in slices) / max(requests, 1)
                for k in ("p50", "p90", "mean")}
    worst = {k: max(s["latency_us"][k] for s in slices) for k in ("p99", "p999", "max")}
    duration = sum(s["duration_us"] for s in slices)
    cpu = sum(s.get("server_cpu_s", 0.0) for s in slices)
    return {"requests": requests, "duration_us": duration, "bytes": sum(s["bytes"] for s in slices),
            "server_cpu_ms_per_request": cpu * 1e3 / max(requests, 1),
            "errors": {k: sum(s["errors"][k] for s in slices) for k in slices[0]["errors"]},
            "latency_us": {**weighted, **worst}, "bodies": slices[0]["bodies"], "slices": len(slices),
            "rps": requests / (duration / 1e6), "cycled_bodies": sent > slices[0]["bodies"]}


def bench_http(args: argparse.Namespace, work: Path) -> dict:
    from hotpath import build, measure, profile_hot_path, report
    from workload import make_stream, request_bodies, train_champion, write_lua_bodies

    wrk = need_wrk()
    python = sys.executable
    riskengine = str(Path(python).with_name("riskengine"))
    started = time.perf_counter()
    print(f"workload: {args.users:,} users x {args.days} days of riskengine.datasets.synth events ...", flush=True)
    # the stores are warmed with the first 30%; the rest are /score bodies, enough that a store's rows
    # (16 connections, few clients, workers) each send events the store has not seen
    stream = make_stream(args.users, args.days, history_share=0.3)
    models = work / "models"
    version = train_champion(stream.history, work)
    bodies = write_lua_bodies(request_bodies(stream.traffic), work / "bodies.lua")
    print(f"  {len(stream.history):,} history events (warm the stores, train model {version}), "
          f"{len(stream.traffic):,} traffic bodies for wrk; {time.perf_counter() - started:.0f} s", flush=True)

    results: dict = {"workload": {"users": args.users, "days": args.days, "history": len(stream.history),
                                  "traffic": len(stream.traffic), "model_version": version}, "http": {}}

    def start_bare(name: str, env: dict[str, str]) -> Server:
        port = free_port()
        server = Server(name, [python, "-m", "uvicorn", "--app-dir", str(HERE), "bare_app:app", "--port", str(port),
                               "--workers", "1", "--no-access-log", "--log-level", "warning"], env, port,
                        work / f"{name}.log")
        server.wait_ready("/docs")
        return server

    def measure_with_bare(name: str, server: Server) -> Target:
        """``name`` and the bare endpoint, in turn (``interleaved``); the row's ratios are to those bare slices.
        The returned target's position is where that store's later rows go on in the bodies."""
        target = Target(name, server, KEY)
        row, baseline = interleaved([target, bare_target], wrk, bodies, args, work)
        row["vs_bare"] = compare(row, baseline)
        results["http"][name], results["http"][f"bare@{name}"] = row, baseline
        print(line("bare FastAPI, its turns", baseline), flush=True)
        print(line(LABELS.get(name, name), row), flush=True)
        return target

    bare = start_bare("bare", {})
    bare_target = Target("bare", bare, None)
    try:
        stack = start_bare("bare+stack", {"BARE_STACK": "1", "RISKENGINE_API_KEYS": f"bench:{KEY}"})
        try:
            measure_with_bare("bare+stack", stack)
        finally:
            stack.stop()
        measure_stores(args, work, stream, models, riskengine, measure_with_bare,
                       lambda targets, lua=bodies: interleaved(targets, wrk, lua, args, work), results)
    finally:
        bare.stop()
    results["few_clients"] = FEW_ROWS

    if not args.skip_hotpath:
        print("hot path (in process) ...", flush=True)
        path = build(stream, models)
        results["hotpath"] = measure(path)
        print(report(results["hotpath"]), flush=True)
        if not results["hotpath"]["met"]:
            results["hotpath_profile"] = profile_hot_path(path)
    return results


def measure_stores(args: argparse.Namespace, work: Path, stream, models: Path, riskengine: str,
                   measure_with_bare: Callable[[str, Server], Target],
                   in_turns: Callable[..., list[dict]], results: dict) -> None:
    """``riskengine serve`` on each store, warmed with the history, measured in turns with the bare endpoint."""
    for store in stores_to_run(args):
        home = work / f"home-{store}"
        env = {"RISKENGINE_HOME": str(home), "RISKENGINE_API_KEYS": f"bench:{KEY}",
               "RISKENGINE_BOOTSTRAP_MODEL": "false", "RISKENGINE_RATE_LIMIT_PER_SECOND": "1000000",
               "RISKENGINE_REDIS_PREFIX": "bench:"}
        if store == "redis":
            env["RISKENGINE_STORE"] = REDIS_URL
            # the service refuses a Redis without persistence unless told; the bench's may keep nothing
            env["RISKENGINE_REDIS_DURABILITY"] = os.environ.get("RISKENGINE_REDIS_DURABILITY", "none")
        if store == "sqlite-normal":
            env["RISKENGINE_SQLITE_SYNCHRONOUS"] = "NORMAL"
        shutil.copytree(models, home / "models")
        (home / "var").mkdir(parents=True, exist_ok=True)      # the key that signed the champion (registry.py)
        shutil.copy2(work / "var" / "registry.key", home / "var" / "registry.key")
        seconds = warm_store(home, env, stream.history)
        print(f"  {store}: store warmed with {len(stream.history):,} events in {seconds:.0f} s", flush=True)
        port = free_port()
        server = Server(store, [riskengine, "serve", "--port", str(port)], env, port, work / f"{store}.log")
        try:
            server.wait_ready("/health")
            # every later row on this store goes on from the same position: each event is new to the
            # store and later than what it holds (a body sent again would score an event from the past)
            position = measure_with_bare(store, server)
            for clients in (int(c) for c in args.latency_clients.split(",") if c.strip()):
                few_clients(store, server, clients, args, work, position)
            if store == "redis" and args.workers > 1:
                measure_workers(args, work, env, riskengine, server, in_turns, results, position, stream)
        finally:
            server.stop()


#: issue 12's latency targets (ms) with few clients: (p50, p99 or None)
FEW_CLIENT_TARGETS = {4: (2.0, 5.0), 1: (1.5, None)}
FEW_ROWS: dict[str, dict] = {}         # label -> row, for the summary and the JSON


def few_clients(store: str, server: "Server", clients: int, args: argparse.Namespace, work: Path,
                position: Target) -> dict:
    """Latency with ``clients`` connections, each sending its next request when the last is answered."""
    wrk, bodies = need_wrk(), work / "bodies.lua"
    target = Target(f"{store}@{clients}", server, KEY, bodies_from=position)
    target.run(wrk, bodies, args.warmup, argparse.Namespace(**{**vars(args), "connections": clients}), work)
    row = aggregate([target.run(wrk, bodies, args.duration / args.rounds,
                                argparse.Namespace(**{**vars(args), "connections": clients}), work)
                     for _ in range(args.rounds)], target.source.sent)
    p50_goal, p99_goal = FEW_CLIENT_TARGETS.get(clients, (None, None))
    lat = row["latency_us"]
    met = [f"p50 goal <= {p50_goal} ms: {'met' if lat['p50'] / 1e3 <= p50_goal else 'MISSED'}"] if p50_goal else []
    met += [f"p99 goal <= {p99_goal} ms: {'met' if lat['p99'] / 1e3 <= p99_goal else 'MISSED'}"] if p99_goal else []
    row["goals"] = met
    FEW_ROWS[f"{LABELS.get(store, store)}, {clients} client{'s' * (clients > 1)}"] = row
    print(few_line(*list(FEW_ROWS.items())[-1]), flush=True)
    return row


def few_line(label: str, row: dict) -> str:
    return line(label, row) + (f"\n  {'':26s} {', '.join(row['goals'])}" if row["goals"] else "")


def measure_workers(args: argparse.Namespace, work: Path, env: dict[str, str], riskengine: str, one: Server,
                    in_turns: Callable[..., list[dict]], results: dict, position: Target, stream) -> None:
    """``serve --workers N`` against one worker, in turns (same minutes of the machine), each on its
    own copy of the warmed Redis store, made when the N-worker server starts, so that one server's
    writes never turn the other's cached profiles stale (a server alone on its store never checks
    them: stores/cached.py). Each draws the same bodies, from where the earlier rows stopped: first
    in time order, then the bodies after those with each user's events ``USERS_APART`` bodies apart
    (workload.users_apart: a session's events no longer leave in the same millisecond)."""
    from workload import request_bodies, users_apart, write_lua_bodies

    name = f"redis-w{args.workers}"
    many_env = {**env, "RISKENGINE_REDIS_PREFIX": f"bench-w{args.workers}:"}
    copied = copy_redis_prefix(env["RISKENGINE_REDIS_PREFIX"], many_env["RISKENGINE_REDIS_PREFIX"])
    print(f"  redis: store copied for {name} ({copied:,} keys)", flush=True)
    port = free_port()
    many = Server(name, [riskengine, "serve", "--port", str(port), "--workers", str(args.workers)], many_env, port,
                  work / f"{name}.log")

    def pair(suffix: str, what: str, bodies: Path, start: int) -> int:
        """One worker and N in turns on ``bodies`` from ``start``; returns where the further one stopped.
        ``suffix`` is in every event id, so no body repeats an earlier pair's id (that is answered
        from the stored decision, not scored)."""
        single, several = Target(f"redis-w1{suffix}", one, KEY), Target(f"{name}{suffix}", many, KEY)
        single.sent = several.sent = start
        row_one, row_many = in_turns([single, several], bodies)
        row_many["vs_one_worker"] = {"throughput_ratio": row_many["rps"] / row_one["rps"],
                                     "p99_ratio": row_many["latency_us"]["p99"] / row_one["latency_us"]["p99"]}
        results["http"][f"redis-w1{suffix}"], results["http"][f"{name}{suffix}"] = row_one, row_many
        print(line(f"/score Redis, 1 worker, {what}", row_one), flush=True)
        print(line(f"/score Redis, {args.workers} workers, {what}", row_many), flush=True)
        return max(single.sent, several.sent)

    try:
        many.wait_ready("/health")
        stopped = pair("", "time order", work / "bodies.lua", position.source.sent)
        apart = users_apart(request_bodies(stream.traffic)[stopped:], USERS_APART)
        pair("-apart", "users apart", write_lua_bodies(apart, work / "bodies-apart.lua"), 0)
    finally:
        many.stop()
        clear_redis_prefix(many_env["RISKENGINE_REDIS_PREFIX"])


def clear_redis_prefix(prefix: str) -> None:
    """Delete the keys under ``prefix`` in the bench's Redis (the store's own ``clear``)."""
    from riskengine.stores.redis import RedisStore

    store = RedisStore(REDIS_URL, prefix=prefix, socket_timeout=10)
    try:
        store.clear()
    finally:
        store.close()


def copy_redis_prefix(source: str, target: str) -> int:
    """Every key under ``source`` copied to the same name under ``target``, after deleting what
    ``target`` held (the store's values name no key prefix). Returns the keys copied."""
    import redis

    clear_redis_prefix(target)
    copied = 0
    with redis.Redis.from_url(REDIS_URL, socket_timeout=10) as client:
        keys = list(client.scan_iter(match=f"{source}*", count=2000))      # the bench's prefixes hold no glob characters
        for start in range(0, len(keys), 2000):
            pipe = client.pipeline(transaction=False)
            for key in keys[start:start + 2000]:
                pipe.copy(key, target.encode() + key[len(source):], replace=True)
            copied += sum(pipe.execute())
    return copied


def stores_to_run(args: argparse.Namespace) -> list[str]:
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if "redis" in stores and not redis_ready():
        print(f"  redis: skipped (no Redis store module or no Redis answering at {REDIS_URL})", flush=True)
        stores.remove("redis")
    return stores


def redis_ready() -> bool:
    try:
        import redis

        import riskengine.stores.redis  # noqa: F401
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping())
    except Exception:
        return False


def warm_store(home: Path, env: dict[str, str], history) -> float:
    """Replay the history through the serving engine into the store the server will open."""
    from riskengine.home import open_engine
    from riskengine.settings import Settings
    from workload import warm

    settings = Settings(home=home, store=env.get("RISKENGINE_STORE", "sqlite"), sqlite_synchronous="NORMAL",
                        **({"redis_prefix": env["RISKENGINE_REDIS_PREFIX"]}
                           if "redis_prefix" in Settings.model_fields else {}),
                        **({"redis_durability": env["RISKENGINE_REDIS_DURABILITY"]}
                           if "RISKENGINE_REDIS_DURABILITY" in env else {}))
    with open_engine(settings) as engine:
        engine.store.clear()                     # Redis: only this prefix's keys
        return warm(engine, history)


def compare(score: dict, bare: dict) -> dict:
    throughput = score["rps"] / bare["rps"]
    p99 = score["latency_us"]["p99"] / bare["latency_us"]["p99"]
    return {"throughput_ratio": throughput, "p99_ratio": p99,
            "throughput_goal_met": throughput >= GOAL_THROUGHPUT, "p99_goal_met": p99 <= GOAL_P99}


def line(name: str, r: dict) -> str:
    lat = r["latency_us"]
    errors = {k: v for k, v in r["errors"].items() if v}
    text = (f"  {name:26s} {r['rps']:7.0f} req/s   p50 {lat['p50'] / 1e3:6.2f} ms   p99 {lat['p99'] / 1e3:6.2f} ms   "
            f"({r['requests']:,} requests in {r['duration_us'] / 1e6:.1f} s; "
            f"server CPU {r.get('server_cpu_ms_per_request', float('nan')):.2f} ms/request"
            f"{', errors ' + json.dumps(errors) if errors else ''}{', bodies cycled' if r['cycled_bodies'] else ''})")
    if "vs_bare" in r:
        v = r["vs_bare"]
        text += (f"\n  {'':26s} vs bare: throughput x{v['throughput_ratio']:.2f} (goal >= {GOAL_THROUGHPUT}: "
                 f"{'met' if v['throughput_goal_met'] else 'MISSED'}), p99 x{v['p99_ratio']:.2f} "
                 f"(goal <= {GOAL_P99}: {'met' if v['p99_goal_met'] else 'MISSED'})")
    return text


def machine() -> dict:
    import platform

    return {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "loadavg_at_start": os.getloadavg()}


def save(kind: str, results: dict, text: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"{stamp}-{kind}.json").write_text(json.dumps(results, indent=2, default=str))
    (RESULTS / f"{stamp}-{kind}.txt").write_text(text)
    return RESULTS / f"{stamp}-{kind}.txt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of measured load per row")
    parser.add_argument("--rounds", type=int, default=3,
                        help="a row and the bare endpoint take turns this many times (duration split evenly)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--latency-clients", default="4,1",
                        help="after each /score row, its latency with this many clients (comma list; '' for none)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (the server needs the other core)")
    parser.add_argument("--users", type=int, default=800)
    parser.add_argument("--days", type=int, default=100)    # ~114,000 /score bodies: none sent twice to a store
    parser.add_argument("--stores", default="sqlite,sqlite-normal,redis",
                        help="comma list of sqlite (synchronous=FULL), sqlite-normal, redis")
    parser.add_argument("--workers", type=int, default=1,
                        help="also run `serve --workers N` on Redis, in turns with one worker (N > 1)")
    parser.add_argument("--skip-hotpath", action="store_true")
    parser.add_argument("--training", action="store_true", help="backfill + training time and memory instead")
    parser.add_argument("--sizes", default="100000,1000000", help="event counts for --training")
    parser.add_argument("--jobs", default="1,2",
                        help="--training: backfill processes to compare in the same run (1 = the serial replay)")
    parser.add_argument("--_generate", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--_train-one", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--_jobs", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name, seconds in (("--warmup", args.warmup), ("--duration / --rounds", args.duration / max(args.rounds, 1))):
        if seconds != int(seconds) or seconds < 1:                 # wrk takes whole seconds only
            parser.error(f"{name} must come to a whole number of seconds (wrk's -d), got {seconds:g}")

    import training_bench

    if args._generate:
        print(json.dumps(training_bench.generate(int(args._generate[0]), Path(args._generate[1]))))
        return 0
    if args._train_one:
        print(json.dumps(training_bench.train_once(Path(args._train_one[0]), Path(args._train_one[1]), args._jobs)))
        return 0

    info = machine()
    command = "bench/run.py " + " ".join(sys.argv[1:])
    print(f"riskengine bench, {info['date']}, {info['cores']} cores, Python {info['python']}: {command}", flush=True)
    print(f"load average at start {info['loadavg_at_start'][0]:.2f} (other processes share these cores: "
          "figures are only comparable within one run)", flush=True)
    if args.training:
        results = training_bench.run([int(n) for n in args.sizes.split(",")], [int(j) for j in args.jobs.split(",")])
        text = "\n".join([training_bench.describe(r) for r in results["results"]]
                         + [training_bench.describe_growth(results["growth"])])
        print(training_bench.describe_growth(results["growth"]))
        path = save("training", {"machine": info, "command": command, **results}, text)
        print(f"written: {path} (and .json)")
        return 0

    work = Path(tempfile.mkdtemp(prefix="riskengine-bench-"))
    try:
        results = bench_http(args, work)
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    text = summary(results, info, command)
    print("\n" + text)
    path = save("http", {"machine": info, "command": command, **results}, text)
    print(f"written: {path} (and .json)")
    return 0


def summary(results: dict, info: dict, command: str) -> str:
    from hotpath import report

    w = results["workload"]
    lines = [f"== riskengine bench {info['date']} ({info['cores']} cores, Python {info['python']}, "
             f"load average {info['loadavg_at_start'][0]:.2f} at start, {os.getloadavg()[0]:.2f} at end) ==",
             f"command: {command}",
             f"workload: {w['users']:,} users x {w['days']} days; {w['history']:,} history events in each store, "
             f"{w['traffic']:,} distinct /score bodies, model {w['model_version']}"]
    for name, r in results["http"].items():
        if name.startswith("bare@"):
            continue
        if f"bare@{name}" in results["http"]:
            lines.append(line("bare FastAPI, its turns", results["http"][f"bare@{name}"]))
        lines.append(line(LABELS.get(name, name), r))
        if "vs_one_worker" in r:
            v = r["vs_one_worker"]
            lines.append(f"  {'':26s} vs 1 worker, same run: throughput x{v['throughput_ratio']:.2f}, "
                         f"p99 x{v['p99_ratio']:.2f}")
    lines += [few_line(label, row) for label, row in results.get("few_clients", {}).items()]
    if "hotpath" in results:
        lines.append(report(results["hotpath"]))
    if "hotpath_profile" in results:
        lines += ["hot path profile (cProfile, every event once; top by own time, then cumulative):",
                  results["hotpath_profile"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
