"""``controlplane serve | migrate | keygen``."""

from __future__ import annotations

import argparse
import asyncio

from controlplane import config
from controlplane.auth import keys
from controlplane.server import serve
from controlplane.store.database import open_database
from storekit import logs, loop


async def _migrate(settings: config.Settings) -> None:
    db = open_database(settings.database_url)
    try:
        await db.migrate()
        print(f"database at revision {await db.current_revision()}")
    finally:
        await db.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="controlplane", description="Pilothouse control plane")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="serve the control plane's gRPC API")
    config.add_arguments(serve_cmd)
    migrate_cmd = sub.add_parser("migrate", help="apply database migrations and exit")
    config.add_arguments(migrate_cmd)
    sub.add_parser("keygen", help="print a new key for PILOTHOUSE_BOOTSTRAP_KEY")
    ns = parser.parse_args(argv)
    if ns.command == "keygen":
        print(keys.generate().token)
        return
    settings = config.from_arguments(ns)
    logs.configure(settings.log_level, settings.log_format)
    if ns.command == "migrate":
        asyncio.run(_migrate(settings))
    else:
        loop.run(serve(settings))


if __name__ == "__main__":
    main()
