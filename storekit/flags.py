"""Settings the control plane and executors read alike: a flag first, then its
``PILOTHOUSE_*`` environment variable, then the default; a value that does not parse is
a clear exit that names the flag and the variable, never a traceback."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path


class Flags:
    def __init__(self, ns: argparse.Namespace, env: Mapping[str, str]) -> None:
        self._ns = ns
        self._env = env

    def text(self, flag: str, var: str) -> str | None:
        """The flag's value (``flag``: its attribute, such as ``run_store_url``), else
        the environment variable's when set and not empty, else None."""
        value = getattr(self._ns, flag, None)
        return value if value is not None else self._env.get(var) or None

    def path(self, flag: str, var: str) -> Path | None:
        value = self.text(flag, var)
        return Path(value) if value else None

    def number(self, flag: str, var: str, default: float, *, positive: bool = False) -> float:
        value = self.text(flag, var)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise SystemExit(f"{_named(flag, var)} {value!r}: give a number") from None
        if positive and not number > 0:
            raise SystemExit(f"{_named(flag, var)} {value!r}: must be more than 0")
        return number

    def integer(self, flag: str, var: str, default: int, *, maximum: int | None = None) -> int:
        value = self.text(flag, var)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise SystemExit(f"{_named(flag, var)} {value!r}: give a whole number") from None
        if number < 1:
            raise SystemExit(f"{_named(flag, var)} {value!r}: must be at least 1")
        if maximum is not None and number > maximum:
            raise SystemExit(f"{_named(flag, var)} {value!r}: must be at most {maximum}")
        return number

    def days(self, flag: str, var: str) -> float | None:
        """A retention in days (more than 0), or None (keep for ever) when not set."""
        value = self.text(flag, var)
        if value is None:
            return None
        try:
            days = float(value)
        except ValueError:
            raise SystemExit(f"{_named(flag, var)} {value!r}: give a number of days") from None
        if not days > 0:
            raise SystemExit(f"{_named(flag, var)} {value!r}: must be more than 0 days")
        return days

    def log_level(self, default: str = "INFO") -> str:
        return (self.text("log_level", "PILOTHOUSE_LOG_LEVEL") or default).upper()

    def log_format(self, default: str = "json") -> str:
        value = self.text("log_format", "PILOTHOUSE_LOG_FORMAT") or default
        if value not in ("json", "text"):
            raise SystemExit(f"PILOTHOUSE_LOG_FORMAT {value!r}: json or text")
        return value

    def retention_interval(self, default: float = 3600.0) -> float:
        return self.number(
            "retention_interval", "PILOTHOUSE_RETENTION_INTERVAL", default, positive=True
        )


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags both servers take: logging and the pruning interval."""
    parser.add_argument(
        "--retention-interval",
        type=float,
        help="seconds between pruning passes (PILOTHOUSE_RETENTION_INTERVAL; default 3600)",
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, … (PILOTHOUSE_LOG_LEVEL)")
    parser.add_argument("--log-format", choices=["json", "text"], help="(PILOTHOUSE_LOG_FORMAT)")


def _named(flag: str, var: str) -> str:
    return f"--{flag.replace('_', '-')} (or {var})"
