"""``dataplane serve``: run an executor."""

from __future__ import annotations

import argparse

from dataplane import settings, workers
from dataplane.server import serve
from storekit import logs, loop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dataplane", description="Pilothouse executor")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="run an executor")
    settings.add_arguments(serve_cmd)
    ns = parser.parse_args(argv)
    config = settings.from_arguments(ns)
    logs.configure(config.log_level, config.log_format)
    if config.workers > 1:
        raise SystemExit(workers.supervise(config))
    loop.run(serve(config))


if __name__ == "__main__":
    main()
