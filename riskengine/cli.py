"""The ``riskengine`` command: serve | init | generate | train | models | evaluate | whatif | audit | policy."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from riskengine.audit import commands as audit_commands

if TYPE_CHECKING:                      # imported in main(): `riskengine --help` stays light (no pydantic)
    from riskengine.settings import Settings

#: what generating and training import: the `riskengine[lab]` extra, absent from a serving install
_LAB_MODULES = ("pandas", "pyarrow", "scipy", "sklearn", "matplotlib", "joblib", "distributed", "dask")


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    workers = args.workers if args.workers is not None else settings.workers
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    _metrics_dir(settings, workers)           # before prometheus_client is imported (riskengine.api)
    from riskengine import keys
    from riskengine.api import logs, server

    if (refused := _policy_refused(settings)) is not None:
        print(f"riskengine serve: the policy cannot be used:\n{refused}", file=sys.stderr)
        return 1
    if (refused := _store_refused(settings)) is not None:
        print(f"riskengine serve: the store cannot be used:\n{refused}", file=sys.stderr)
        return 1
    if keys.shared_store(settings):
        if missing := keys.missing_for_shared_store(settings):
            print(keys.refusal(missing), file=sys.stderr)
            return 1
    else:                                  # this home's own store: its keys are made on first start, once,
        for key in keys.keys(settings)[:2]:            # before any worker could race for them (registry: with a model)
            if keys.create(key):
                print(f"created the {key.name} key at {key.path} (keep it: `riskengine init` explains)",
                      file=sys.stderr)
    logs.configure(settings.log_format, settings.log_level)      # a bad format: ValueError, one sentence
    if settings.bootstrap_model:
        _bootstrap(settings)
    _raise_open_files_limit()
    server.run(settings, args.host, args.port, workers)
    return 0


def _metrics_dir(settings: Settings, workers: int) -> None:
    """prometheus_client's multiprocess mode for N workers, so a scrape sums them all (api/metrics.py).

    The directory is ``PROMETHEUS_MULTIPROC_DIR`` or ``<home>/var/prometheus``; its files from an
    earlier run are removed first, or their counts would be added to this run's (a restarted
    container even reuses the workers' pids). One process keeps its metrics in memory: the variable
    is dropped, as prometheus_client reads it when imported, which has not happened yet here.
    """
    if workers == 1:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return
    directory = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or settings.var / "prometheus")
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def _init(args: argparse.Namespace, settings: Settings) -> int:
    """Create the audit, pseudonym and registry keys once; never overwrite one."""
    from riskengine import keys

    made = keys.create_missing(settings)
    for key, created in made:
        state = "created" if created else "exists, left untouched"
        print(f"{key.name:9} key  {key.path}  ({state}; {key.variable} moves it)")
    if not any(created for _, created in made):
        print("riskengine init: every key already exists; nothing was overwritten", file=sys.stderr)
        return 1
    print("Keep these files secret (mode 0600) and backed up: a lost audit key leaves the trail unverifiable, a "
          "lost pseudonym key unlinks every user's history. Replicas on one Redis must all use the same audit and "
          "pseudonym keys.", file=sys.stderr)
    return 0


def _raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one: each open connection is a descriptor, and at the
    common default of 1,024 a thousand idle sockets would leave none for real clients."""
    try:
        import resource
    except ImportError:                      # not on this platform: nothing to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65_536
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _bootstrap(settings: Settings) -> None:
    """A fresh home gets a first model trained on generated data, so one command gives a real service."""
    from riskengine.scoring.registry import ModelRegistry

    registry = ModelRegistry.open(settings)
    if registry.champion_version() is not None:
        return
    try:
        from riskengine.datasets import synth  # noqa: F401  (pandas, pyarrow)
        from riskengine.lab import training  # noqa: F401  (scikit-learn)
    except ModuleNotFoundError as missing:
        if (missing.name or "").partition(".")[0] not in _LAB_MODULES:
            raise
        print(f"no trained model in {settings.models}, and this install cannot train one ({missing.name} is not "
              "installed: the serving install leaves out the lab); serving the label-free statistical score "
              "until a model is promoted. To train: pip install 'riskengine[lab]', then riskengine train; "
              "RISKENGINE_BOOTSTRAP_MODEL=false silences this.", file=sys.stderr)
        return
    print(f"no trained model in {settings.models}: generating {settings.bootstrap_users} users x "
          f"{settings.bootstrap_days} days of synthetic events and training a first one", file=sys.stderr)
    data = settings.home / "data" / "raw" / f"bootstrap-u{settings.bootstrap_users}-d{settings.bootstrap_days}.parquet"
    if not data.exists():
        _generate_to(data, settings.bootstrap_users, settings.bootstrap_days, 42)
    _train_from(data, settings, promote=True)


def _generate_to(out: Path, users: int, days: int, seed: int) -> None:
    from riskengine.datasets import synth

    started = time.perf_counter()
    frame = synth.generate_events(users=users, days=days, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    synth.write_events(frame, out)
    attacks = int(frame["label"].sum())
    print(f"wrote {len(frame):,} events ({attacks:,} attacks) to {out} in {time.perf_counter() - started:.1f} s",
          file=sys.stderr)


def _generate(args: argparse.Namespace, settings: Settings) -> int:
    _generate_to(Path(args.out), args.users, args.days, args.seed)
    return 0


def _train_from(data: Path, settings: Settings, promote: bool, force: bool = False, jobs: int = 1,
                dask: str | None = None) -> int:
    from riskengine.lab import training
    from riskengine.scoring.registry import ModelRegistry

    from riskengine.lab import datafiles

    datafiles.require(data, ("label",))                # before a replay that may take minutes
    started = time.perf_counter()
    if jobs > 1 or dask:                               # the same features, partitioned by user (lab/partitions.py)
        from functools import partial

        from riskengine.enrich import Enricher
        from riskengine.lab import partitions

        enricher = partial(Enricher, settings.geoip_city_db, settings.geoip_asn_db, settings.lists)
        dataset = partitions.replay_file_partitioned(data, jobs, dask, enricher)
    else:
        dataset = training.replay_file(data, _enricher(settings))
    print(f"features for {len(dataset.y):,} events in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    report = training.train(dataset, ModelRegistry.open(settings), promote=promote, source=str(data), force=force)
    print(report.text())
    return 0


def _train(args: argparse.Namespace, settings: Settings) -> int:
    if args.from_service:
        return _train_from_service(settings, args.promote, args.force)
    if not args.data:
        raise SystemExit("riskengine train: give --data PATH (generated Parquet/JSONL or the RBA CSV) or --from-service")
    if args.jobs < 1:
        raise SystemExit(f"riskengine train: --jobs must be 1 or more; got {args.jobs}")
    return _train_from(Path(args.data), settings, args.promote, args.force, args.jobs, args.dask)


def _train_from_service(settings: Settings, promote: bool, force: bool = False) -> int:
    from riskengine.lab import training
    from riskengine.home import open_for_audit
    from riskengine.scoring.registry import ModelRegistry

    with open_for_audit(settings) as engine:          # reads the store; records nothing
        dataset = training.from_store(engine.store)
    print(f"{len(dataset.y):,} recorded events, {int(dataset.y.sum()):,} labelled as attacks", file=sys.stderr)
    report = training.train(dataset, ModelRegistry.open(settings), promote=promote, source="service", force=force)
    print(report.text())
    return 0


def _models(args: argparse.Namespace, settings: Settings) -> int:
    from riskengine.scoring.registry import ModelRefused, ModelRegistry

    registry = ModelRegistry.open(settings)
    try:
        if args.models_command == "promote":
            registry.load(args.version)               # refuse a model the service would refuse
            registry.promote(args.version)
            print(f"champion is now {args.version}")
        elif args.models_command == "rollback":
            print(f"champion is now {registry.rollback()}")
        else:
            from riskengine.lab.promotion import listing

            print("\n".join(listing(registry.versions(), registry.champion_version())))
    except ModelRefused as refused:
        print(f"refused: {refused}", file=sys.stderr)
        return 1
    return 0


def _policy_refused(settings: Settings) -> str | None:
    """Why RISKENGINE_POLICY cannot serve, before anything starts (None: it can)."""
    from riskengine.policy.file import PolicyError, load_policy, resolve

    try:
        load_policy(resolve(settings.policy))
    except PolicyError as error:
        return str(error)
    return None


def _store_refused(settings: Settings) -> str | None:
    """Why a Redis store cannot serve, before anything starts: it keeps less than
    RISKENGINE_REDIS_DURABILITY asks, or it does not answer (its persistence cannot be read, so the
    service does not start: a supervisor starts it again once Redis is up). None: it can, or not Redis."""
    from riskengine.stores import REDIS_SCHEMES, StoreUnavailable

    if not settings.store.startswith(REDIS_SCHEMES):
        return None
    from riskengine.stores.durability import NotDurable, require
    from riskengine.stores.redis import RedisStore

    store = RedisStore(settings.store, prefix=settings.redis_prefix)
    try:
        require(store.durability(), settings.redis_durability)
    except (NotDurable, ValueError) as refused:
        return str(refused)
    except StoreUnavailable as down:
        return f"{down}: start Redis first (its persistence settings are read at start)"
    finally:
        store.close()
    return None


def _policy_check(args: argparse.Namespace, settings: Settings) -> int:
    from riskengine.policy.file import PolicyError, load_policy, resolve

    failed = 0
    for name in args.files:
        try:
            policy = load_policy(resolve(name))
        except PolicyError as error:
            print(error, file=sys.stderr)
            failed += 1
            continue
        shadowed = [a for a, rule in policy.actions.items() if rule.shadow]
        print(f"{policy.source}: OK, {policy.version}: {len(policy.levels)} levels, {len(policy.actions)} actions, "
              f"{len(policy.exemptions)} exemptions, {len(policy.rules)} rules" + (f", shadow: {', '.join(shadowed)}" if shadowed else ""))
    return 1 if failed else 0


def _policy_schema(args: argparse.Namespace, settings: Settings) -> int:
    from riskengine.policy.schema import json_schema_text

    sys.stdout.write(json_schema_text())
    return 0


def _enricher(settings: Settings):
    """The service's enrichment (geo databases, named lists): replays see what serving sees."""
    from riskengine.enrich import Enricher

    return Enricher(settings.geoip_city_db, settings.geoip_asn_db, settings.lists)


def _replay(data: Path, settings: Settings | None = None):
    """A labelled data file -> the point-in-time feature rows, with a progress bar on stderr."""
    from riskengine.lab import datafiles, training

    datafiles.require(data, ("label",))                # before a replay that may take minutes
    return training.replay_file(data, _enricher(settings) if settings is not None else None)


def _evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import datetime, timezone

    from riskengine.lab import registered
    from riskengine.scoring.registry import ModelRefused, ModelRegistry

    from riskengine.policy.file import PolicyError, load_policy, resolve

    if args.json and not args.leave_one_out:
        print("riskengine evaluate: --json goes with --leave-one-out (the report writes metrics.json)", file=sys.stderr)
        return 2
    if args.leave_one_out:
        return _leave_one_out(Path(args.data), Path(args.json) if args.json else None)
    registry = ModelRegistry.open(settings)
    try:
        version = registered.pick_model(registry, args.model)
        policy = load_policy(resolve(settings.policy))
        result = registered.evaluate_dataset(_replay(Path(args.data), settings), registry, version, window=args.window,
                                         policy=policy, data_name=Path(args.data).name)
    except (ModelRefused, PolicyError, ValueError) as refused:
        print(f"riskengine evaluate: {refused}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else (
        settings.home / "reports" / f"{result.model_version}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
    result.write(out)
    print(result.text())
    print(f"report: {out / 'report.html'} (one file, plots inline; report.md, plots and metrics.json beside it)",
          file=sys.stderr)
    return 0


def _leave_one_out(data: Path, json_out: Path | None = None) -> int:
    import json

    from riskengine.lab import holdout

    table, summary = holdout.leave_one_class_out(_replay(data))
    print("catch rate per attacker class, at most 1% of legitimate logins stepped up:")
    print(table.round(4).to_string())
    print("\n".join(f"{name}: {value:.4f}" for name, value in summary.items()))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"classes": table.to_dict(orient="index"), "summary": summary}, indent=2))
    return 0


def _whatif(args: argparse.Namespace, settings: Settings) -> int:
    from riskengine.lab import training, whatif
    from riskengine.lab.datafiles import records
    from riskengine.policy.file import PolicyError
    from riskengine.scoring.registry import ModelRefused

    try:
        current, candidate = whatif.setups(settings, args.policy, args.model)
    except (ModelRefused, PolicyError) as refused:
        print(f"riskengine whatif: {refused}", file=sys.stderr)
        return 1
    mode = "counterfactual" if args.counterfactual else "shadow"
    frame = training.load_frame(Path(args.data))
    replayed = whatif.replay(records(frame), current, candidate, mode, enricher=_enricher(settings),
                             progress=training.terminal_progress(len(frame), "replaying events"))
    print(whatif.render(replayed, current, candidate, mode))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="riskengine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=None,
                       help="worker processes (default: RISKENGINE_WORKERS, else 1); SIGTERM drains them all")
    serve.set_defaults(run=_serve)
    init = commands.add_parser("init", help="create the audit, pseudonym and registry keys (once; never overwrites)")
    init.set_defaults(run=_init)
    generate = commands.add_parser("generate", help="write a labelled synthetic event stream")
    generate.add_argument("--out", required=True, help="file to write: .parquet or .jsonl")
    generate.add_argument("--users", type=int, default=500)
    generate.add_argument("--days", type=int, default=30)
    generate.add_argument("--seed", type=int, default=42)
    generate.set_defaults(run=_generate)
    train = commands.add_parser("train", help="replay, fit, evaluate against the champion, register")
    train.add_argument("--data", help="generated Parquet/JSONL, or the public RBA CSV")
    train.add_argument("--from-service", action="store_true", help="train on the service's recorded, labelled events")
    train.add_argument("--promote", action="store_true",
                       help="make it the champion if the promotion gate passes (no regression beyond tolerance)")
    train.add_argument("--force", action="store_true",
                       help="with --promote: promote even if it cannot score actions the champion scores")
    train.add_argument("--jobs", type=int, default=1, metavar="N",
                       help="replay partitioned by user over N processes (the same features; pays from about 4 cores)")
    train.add_argument("--dask", metavar="ADDRESS",
                       help="replay partitioned by user on the Dask cluster at ADDRESS (tcp://host:8786)")
    train.set_defaults(run=_train)
    models = commands.add_parser("models", help="the model registry")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    models_commands.add_parser("list", help="versions, metrics; * marks the champion").set_defaults(run=_models)
    promote = models_commands.add_parser("promote", help="make VERSION the champion")
    promote.add_argument("version")
    promote.set_defaults(run=_models)
    models_commands.add_parser("rollback", help="back to the previous champion").set_defaults(run=_models)
    evaluate = commands.add_parser("evaluate", help="offline evaluation report: model vs Freeman baseline")
    evaluate.add_argument("--data", required=True, help="labelled events: generated Parquet/JSONL or the RBA CSV")
    evaluate.add_argument("--model", help="registered model version (default: the champion)")
    evaluate.add_argument("--out", help="report folder (default: $RISKENGINE_HOME/reports/<model>-<time>/)")
    evaluate.add_argument("--window", choices=("auto", "all", "later"), default="auto",
                          help="events to score: auto = the later quarter if the model was trained on this data")
    evaluate.add_argument("--leave-one-out", action="store_true",
                          help="per attacker class: train without it, report its catch rate beside all-trained and Freeman")
    evaluate.add_argument("--json", metavar="FILE", help="with --leave-one-out: also write the table and summary as JSON")
    evaluate.set_defaults(run=_evaluate)
    whatif = commands.add_parser("whatif", help="replay events under a candidate policy/model, beside the current")
    whatif.add_argument("--data", required=True, help="labelled or recorded events: Parquet/JSONL or the RBA CSV")
    whatif.add_argument("--policy", required=True, help="candidate policy: a file or a preset name (default, psd2, hipaa, gdpr)")
    whatif.add_argument("--model", help="candidate model version (default: the current champion)")
    whatif.add_argument("--counterfactual", action="store_true",
                        help="let the candidate's own decisions shape later history (labelled data only)")
    whatif.set_defaults(run=_whatif)
    audit_commands.register(commands)
    policy = commands.add_parser("policy", help="policy files")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_commands.add_parser("check", help="validate policy files (or preset names); non-zero if any is broken")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(run=_policy_check)
    policy_commands.add_parser("schema", help="print the policy files' JSON Schema (for editors)").set_defaults(
        run=_policy_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from riskengine.settings import Settings

    try:
        return args.run(args, Settings())
    except (ValueError, FileNotFoundError) as exc:          # bad data or paths: a sentence, not a traceback
        print(f"riskengine {args.command}: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:                       # a lab command on the serving install
        if (exc.name or "").partition(".")[0] not in _LAB_MODULES:
            raise
        print(f"riskengine {args.command}: needs {exc.name}, which the serving install leaves out; "
              "pip install 'riskengine[lab]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
