"""``riskengine audit verify | head | keygen | export | prune``: the operator's and auditor's commands.

Offline tools never create a key: a missing audit key is an error naming where it was looked for.
Imports stay inside the commands so ``riskengine --help`` loads none of them.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:                      # annotations only: `riskengine --help` imports no pydantic
    from riskengine.settings import Settings


def _signing_key_path(settings: Settings) -> Path:
    return settings.audit_signing_key_file or settings.var / "audit-signing.key"


def verify(args: argparse.Namespace, settings: Settings) -> int:
    from riskengine.audit import head, signing
    from riskengine.audit.chain import verify as verify_chains
    from riskengine.home import MissingKey, open_for_audit

    if args.public_key and not args.head:
        print("riskengine audit verify: --public-key checks a signed head: give --head FILE too (the store's own "
              "anchors are sealed with the audit key)", file=sys.stderr)
        return 2
    try:
        public = signing.load_public(Path(args.public_key)) if args.public_key else None
        mark = head.read(Path(args.head)) if args.head else None
        own = _signing_key_path(settings)
        if public is None and mark is not None and mark.signature.alg == signing.ALGORITHM and own.exists():
            public = signing.load_private(own).public_key()      # the head was signed here: check with our key
    except (signing.KeyFileError, head.HeadError) as error:
        print(f"riskengine audit verify: {error}", file=sys.stderr)
        return 2
    keys = True
    try:
        engine = open_for_audit(settings)
    except MissingKey:
        if public is None:
            raise                                     # no key and no public key: nothing could be checked
        engine, keys = open_for_audit(settings, keys=False), False
    with engine:
        rows = list(engine.store.audit_rows())
        problems = [str(p) for p in verify_chains(rows, engine.audit_key, engine.store.audit_anchors(), seals=keys)]
        if mark is not None:
            problems += [f"{args.head}: {p}" for p in head.check(mark, rows, public, engine.audit_key)]
    chains = len({r.chain for r in rows})
    if problems:
        for problem in problems:
            print(f"FAIL {problem}")
        sealed = [p for p in problems if "does not match its seal" in p]
        if rows and len(sealed) == len(rows):
            print("every record fails its seal: is the audit key (RISKENGINE_AUDIT_KEY_FILE, default "
                  "var/audit.key) the one this trail was written with?")
        print(f"audit trail INVALID: {len(problems)} problem(s) in {len(rows)} records")
        return 1
    if mark is not None:
        print(f"{args.head}: the trail reaches the {head.describe(mark)}")
    if not keys:
        print("seals not checked (no audit key): the records the head covers match its signed digest; "
              "later ones are checked by their links only")
    print(f"audit trail OK: {len(rows)} records in {chains} chain(s)")
    return 0


def take_head(args: argparse.Namespace, settings: Settings) -> int:
    from riskengine.audit import head, signing
    from riskengine.home import open_for_audit

    path = _signing_key_path(settings)
    try:
        private = signing.load_private(path) if path.exists() else None
    except signing.KeyFileError as error:
        print(f"riskengine audit head: {error}", file=sys.stderr)
        return 2
    with open_for_audit(settings) as engine:
        rows = list(engine.store.audit_rows())
        mark = head.take(rows, datetime.now(timezone.utc), private, engine.audit_key)
    head.write(mark, Path(args.out))
    print(f"wrote {args.out}: {head.describe(mark)}; keep it where the service cannot write, and check it with "
          f"`riskengine audit verify --head {args.out}`")
    return 0


def keygen(args: argparse.Namespace, settings: Settings) -> int:
    from riskengine.audit import signing

    private = _signing_key_path(settings)
    public = Path(args.public_out) if args.public_out else private.with_suffix(".pub")
    try:
        key_id = signing.generate(private, public)
    except signing.KeyFileError as error:
        print(f"riskengine audit keygen: {error}", file=sys.stderr)
        return 1
    print(f"signing key {key_id}: private {private} (mode 0600: keep it away from the data), public {public} "
          "(give it to auditors: `riskengine audit verify --head FILE --public-key FILE`)")
    return 0


def export(args: argparse.Namespace, settings: Settings) -> int:
    from riskengine.audit import trail
    from riskengine.home import open_for_audit

    try:
        since = trail.parse_time(args.since) if args.since else None
        until = trail.parse_time(args.until) if args.until else None
    except ValueError as bad:
        print(f"riskengine audit export: --since/--until: {bad}", file=sys.stderr)
        return 2
    with open_for_audit(settings) as engine:
        records, _, problems = engine.verify_audit()
        selected = trail.select(engine.store.audit_rows(), since, until, engine.event_ids())
        if args.out:
            with open(args.out, "w", newline="", encoding="utf-8") as out:
                written = trail.write(selected, out, args.format)
        else:
            try:
                written = trail.write(selected, sys.stdout, args.format)
                sys.stdout.flush()
            except BrokenPipeError:                 # `export | head` stopped reading: end quietly
                _silence_stdout()
                return 1
    state = "verified" if not problems else f"NOT verified: {len(problems)} problem(s), see `riskengine audit verify`"
    print(f"exported {written} of {records} records ({state})", file=sys.stderr)
    return 0 if not problems else 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again (Python docs,
    "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def prune(args: argparse.Namespace, settings: Settings) -> int:
    from riskengine.audit import trail
    from riskengine.home import open_for_audit
    from riskengine.policy.file import PolicyError, load_policy, resolve

    days = args.days if args.days is not None else settings.audit_retention_days
    if days is None:
        print("riskengine audit prune: give --days N or set RISKENGINE_AUDIT_RETENTION_DAYS", file=sys.stderr)
        return 2
    try:
        days = trail.positive_days(days)
        minimum = load_policy(resolve(settings.policy)).audit_min_retention_days
    except ValueError as error:                     # PolicyError is one too
        print(f"riskengine audit prune: {error}", file=sys.stderr)
        return 2 if not isinstance(error, PolicyError) else 1
    with open_for_audit(settings) as engine:
        pruned = engine.prune_audit(days, minimum)
    kept = max(days, minimum or 0)
    print(f"pruned {pruned} audit records whose time (`at`) is more than {kept:g} days ago"
          + (f" (the policy keeps at least {minimum:g})" if minimum and minimum > days else ""))
    return 0


def _days(text: str) -> float:
    from riskengine.audit.trail import positive_days

    try:
        return positive_days(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(commands: Any) -> None:
    """Add ``audit`` and its subcommands to the ``riskengine`` parser."""
    audit = commands.add_parser("audit", help="audit trail tools")
    sub = audit.add_subparsers(dest="audit_command", required=True)
    check = sub.add_parser("verify", help="check the hash chains end to end (and against a head file)")
    check.add_argument("--head", help="a head file from `riskengine audit head`: the trail must still reach it")
    check.add_argument("--public-key", help="Ed25519 public key the head must be signed with (no audit key needed)")
    check.set_defaults(run=verify)
    mark = sub.add_parser("head", help="write a signed head of the trail for an auditor to keep")
    mark.add_argument("--out", required=True, help="file to write (JSON)")
    mark.set_defaults(run=take_head)
    keys = sub.add_parser("keygen", help="create the Ed25519 key pair that signs heads")
    keys.add_argument("--public-out", help="public key file (default: the signing key's path with .pub)")
    keys.set_defaults(run=keygen)
    extract = sub.add_parser("export", help="records whose time `at` is in [--since, --until), for auditors")
    extract.add_argument("--since", help="RFC 3339 time or YYYY-MM-DD (UTC midnight); default: the beginning")
    extract.add_argument("--until", help="RFC 3339 time or YYYY-MM-DD, exclusive; default: now and later")
    extract.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    extract.add_argument("--out", help="file to write (default: standard output)")
    extract.set_defaults(run=export)
    retention = sub.add_parser("prune", help="retention: drop records whose time `at` is older, keep the chain "
                                             "verifiable")
    retention.add_argument("--days", type=_days, help="keep this many days, a positive number (default: "
                                                       "RISKENGINE_AUDIT_RETENTION_DAYS)")
    retention.set_defaults(run=prune)
