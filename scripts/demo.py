"""`make demo`: a control plane on embedded SQLite, the example resources applied with the
CLI, and what they look like to an operator. Everything stays on 127.0.0.1.

The control plane's database and the demo's admin key live under ./.pilothouse/, so the
demo can be run again (the second apply then finds everything unchanged).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from controlplane import launch

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".pilothouse"
PY = sys.executable


def admin_key() -> str:
    path = STATE / "admin.key"
    if not path.exists():
        token = subprocess.run(
            [PY, "-m", "controlplane", "keygen"], check=True, capture_output=True, text=True
        ).stdout.strip()
        path.write_text(token + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def step(title: str, *args: str, env: dict[str, str]) -> None:
    print(f"\n$ pilothouse {' '.join(args)}    # {title}", flush=True)
    result = subprocess.run([PY, "-m", "pilothouse.cli", *args], env=env, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"demo step failed: pilothouse {' '.join(args)}")


def main() -> None:
    STATE.mkdir(exist_ok=True)
    key = admin_key()
    plane = launch.start(
        f"sqlite:///{STATE / 'controlplane.db'}", bootstrap_key=key, log_level="INFO", cwd=ROOT
    )
    address = plane.address
    print(f"Control plane on {address} (SQLite at {STATE / 'controlplane.db'}).")
    env = {**os.environ, "PILOTHOUSE_ADDR": address, "PILOTHOUSE_API_KEY": key}
    try:
        step(
            "declare the example tenant, models, tools, prompt and agent",
            "apply",
            "-f",
            "deploy/examples",
            env=env,
        )
        step("applying again changes nothing", "apply", "-f", "deploy/examples", env=env)
        step("tenants", "get", "tenants", env=env)
        step("the tenant's limits", "get", "quota", "acme", env=env)
        step("tools", "get", "tools", "--tenant", "acme", env=env)
        step("models", "get", "models", "--tenant", "acme", env=env)
        step("routes", "get", "routes", "--tenant", "acme", env=env)
        step("agents", "get", "agents", "--tenant", "acme", env=env)
        step(
            "prompt versions and labels",
            "prompt",
            "versions",
            "support-triage",
            "--tenant",
            "acme",
            env=env,
        )
        step(
            "one tool in full",
            "get",
            "tool",
            "lookup-order",
            "--tenant",
            "acme",
            "-o",
            "yaml",
            env=env,
        )
    finally:
        plane.stop()
    print(
        "\nDone. The admin key is in .pilothouse/admin.key. To keep a control plane running:\n"
        "  PILOTHOUSE_BOOTSTRAP_KEY=$(cat .pilothouse/admin.key) .venv/bin/controlplane serve\n"
        "  PILOTHOUSE_API_KEY=$(cat .pilothouse/admin.key) .venv/bin/pilothouse get tenants"
    )


if __name__ == "__main__":
    main()
