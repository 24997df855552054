"""Both servers' settings: a flag, else its environment variable, else the default; a
value that does not parse exits naming the flag and the variable."""

from __future__ import annotations

import argparse

import pytest

from controlplane import config
from dataplane import settings


def _executor(env: dict[str, str], *argv: str) -> settings.Settings:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return settings.from_arguments(
        parser.parse_args(list(argv)), {"PILOTHOUSE_EXECUTOR_KEY": "k", **env}
    )


def _control_plane(env: dict[str, str], *argv: str) -> config.Settings:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.from_arguments(parser.parse_args(list(argv)), env)


def test_a_flag_wins_over_its_variable_which_wins_over_the_default() -> None:
    assert _executor({}).lease_ttl == 15.0
    assert _executor({"PILOTHOUSE_LEASE_TTL": "20"}).lease_ttl == 20.0
    assert _executor({"PILOTHOUSE_LEASE_TTL": "20"}, "--lease-ttl", "30").lease_ttl == 30.0
    assert _executor({"PILOTHOUSE_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    assert _control_plane({"PILOTHOUSE_QUOTA_REFRESH": "2"}).quota_refresh == 2.0
    assert _control_plane({}).retention_interval == 3600.0
    assert _executor({"PILOTHOUSE_EXECUTOR_WORKERS": "2"}, "--workers", "4").workers == 4


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PILOTHOUSE_LEASE_TTL": "soon"}, "--lease-ttl (or PILOTHOUSE_LEASE_TTL) 'soon'"),
        ({"PILOTHOUSE_LEASE_TTL": "0"}, "must be more than 0"),
        ({"PILOTHOUSE_MAX_CONCURRENT_RUNS": "1.5"}, "give a whole number"),
        ({"PILOTHOUSE_OUTBOX_LIMIT": "0"}, "must be at least 1"),
        ({"PILOTHOUSE_RETENTION_INTERVAL": "-3"}, "--retention-interval"),
        ({"PILOTHOUSE_RETAIN_RUNS_DAYS": "never"}, "give a number of days"),
        ({"PILOTHOUSE_LOG_FORMAT": "xml"}, "json or text"),
        ({"PILOTHOUSE_EXECUTOR_WORKERS": "1000"}, "--workers (or PILOTHOUSE_EXECUTOR_WORKERS) "),
        ({"PILOTHOUSE_EXECUTOR_WORKERS": "0"}, "must be at least 1"),
    ],
)
def test_an_executor_setting_that_does_not_parse_is_a_clear_exit(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(SystemExit) as refused:
        _executor(env)
    assert named in str(refused.value)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PILOTHOUSE_SHUTDOWN_GRACE": "ten"}, "--shutdown-grace"),
        ({"PILOTHOUSE_AUTH_CACHE_TTL": "-1"}, "cannot be negative"),
        ({"PILOTHOUSE_QUOTA_REFRESH": "60"}, "shorter than --quota-lease-ttl"),
        ({"PILOTHOUSE_RETAIN_AUDIT_DAYS": "0"}, "more than 0 days"),
    ],
)
def test_a_control_plane_setting_that_does_not_parse_is_a_clear_exit(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(SystemExit) as refused:
        _control_plane(env)
    assert named in str(refused.value)
