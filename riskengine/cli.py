"""The ``riskengine`` command: serve | generate | train | evaluate | audit verify."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from riskengine.settings import Settings


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from riskengine.api import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    # access_log off: its lines carry client IPs and raw paths (DELETE /users/<id>)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="info")
    return 0


def _audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    from riskengine.audit import verify
    from riskengine.engine import Engine

    with Engine.open(settings) as engine:
        rows = list(engine.store.audit_rows())
    problems = verify(rows)
    chains = len({r.chain for r in rows})
    if problems:
        for problem in problems:
            print(f"FAIL {problem}")
        print(f"audit trail INVALID: {len(problems)} problem(s) in {len(rows)} records")
        return 1
    print(f"audit trail OK: {len(rows)} records in {chains} chain(s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="riskengine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_serve)
    audit = commands.add_parser("audit", help="audit trail tools")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_commands.add_parser("verify", help="check the hash chain end to end").set_defaults(run=_audit_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args, Settings())


if __name__ == "__main__":
    sys.exit(main())
