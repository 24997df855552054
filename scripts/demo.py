"""`make demo`: a control plane on embedded SQLite, an executor, the example resources
applied with the CLI, and an agent run streamed live with its usage and cost. Everything
stays on 127.0.0.1 and runs offline (the example route's first model is scripted); with
OPENAI_BASE_URL and OPENAI_API_KEY set, point the route at gpt-4o-mini to use a real one.

The databases, the executor's snapshot file and the demo's admin key live under
./.pilothouse/, so the demo can be run again. The control plane and the executor take
free ports; the refund desk (the example's issue-refund tool) listens on 127.0.0.1:8089,
or DEMO_REFUND_PORT, or a free port when that one is taken (the tool's endpoint follows).
Whatever fails, everything the demo started is stopped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

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


REAL_MODEL_ROUTE = """
kind: ModelRoute
metadata: {name: default, tenant: acme}
spec:
  targets: [{model: gpt-4o-mini, weight: 1}]
  fallbacks: []
"""


EXAMPLE_REFUND_PORT = 8089
"""Where the example manifests (deploy/examples/20-tools.yaml) expect the refund desk."""


def cli(*args: str, env: dict[str, str], show: str = "", stdin: str | None = None) -> str:
    if show:
        print(f"\n$ pilothouse {' '.join(args)}    # {show}", flush=True)
    result = subprocess.run(
        [PY, "-m", "pilothouse.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=not show,
        text=True,
        input=stdin,
    )
    if result.returncode != 0:
        raise SystemExit(f"demo step failed: pilothouse {' '.join(args)}\n{result.stderr or ''}")
    return result.stdout or ""


def new_key(role: str, env: dict[str, str], tenant: str = "", *scopes: str) -> str:
    args = ["keys", "create", "--role", role, "--display-name", f"demo {role}"]
    if tenant:
        args += ["--tenant", tenant]
    for scope in scopes:
        args += ["--scope", scope]
    return cli(*args, env=env).strip().splitlines()[-1]


def openai_credential() -> list[str]:
    """With OPENAI_API_KEY set, the example tenant may use it (the gpt-4o-mini model names
    the credential "openai"), sent only to the OpenAI-compatible endpoint configured."""
    if not os.environ.get("OPENAI_API_KEY"):
        return []
    endpoint = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
    return ["--provider-credential", f"openai=OPENAI_API_KEY:acme:{endpoint}"]


def start_executor(env: dict[str, str], refund_port: int) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [
            PY,
            "-m",
            "dataplane",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "demo-executor",
            "--state-dir",
            str(STATE),
            "--run-store-url",
            f"sqlite:///{STATE / 'runs.db'}",
            "--log-format",
            "text",
            "--log-level",
            "WARNING",
            # The example's refund desk (the issue-refund tool) listens here; tenants'
            # endpoints may reach nothing else that is not public.
            "--allow-egress",
            f"127.0.0.1:{refund_port}",
            *openai_credential(),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        match = re.search(r"executor listening on (\S+)", line)
        if match:
            return process, match[1]
    process.wait(timeout=30)
    raise SystemExit("the executor did not start:\n" + "".join(seen[-20:]))


def wait_until_current(env: dict[str, str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = [r.split() for r in cli("executors", env=env).splitlines()]
        # NODE CLUSTER SEES CONNECTED ACKED IN-SYNC …
        if any(r[:1] == ["demo-executor"] and r[3:4] == r[5:6] == ["yes"] for r in rows):
            return
        time.sleep(0.2)
    raise SystemExit("the executor did not take the configuration")


class RefundDesk(BaseHTTPRequestHandler):
    """The example's refund endpoint (the issue-refund tool). It keeps idempotency keys,
    as a real payments API does: a retried refund is not paid twice."""

    seen: ClassVar[dict[str, bytes]] = {}

    def do_POST(self) -> None:  # noqa: N802 - the http.server protocol
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        key = self.headers.get("idempotency-key", "")
        if key not in self.seen:
            self.seen[key] = json.dumps(
                {"refund_id": f"rf_{len(self.seen) + 1}", "amount_usd": body.get("amount_usd")}
            ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.seen[key])))
        self.end_headers()
        self.wfile.write(self.seen[key])

    def log_message(self, format: str, *args: object) -> None:
        pass


def refund_desk() -> ThreadingHTTPServer:
    """The refund desk on DEMO_REFUND_PORT (8089 unless set), or on a free port when that
    one is taken."""
    wanted = int(os.environ.get("DEMO_REFUND_PORT") or EXAMPLE_REFUND_PORT)
    try:
        desk = ThreadingHTTPServer(("127.0.0.1", wanted), RefundDesk)
    except OSError as e:
        desk = ThreadingHTTPServer(("127.0.0.1", 0), RefundDesk)
        print(f"Port {wanted} is taken ({e.strerror}): the refund desk takes {port(desk)}.")
    threading.Thread(target=desk.serve_forever, daemon=True).start()
    return desk


def port(server: ThreadingHTTPServer) -> int:
    return int(server.server_address[1])


def apply_examples(env: dict[str, str], refund_port: int, show: str) -> None:
    """Apply deploy/examples, the refund tool's endpoint on ``refund_port``."""
    if refund_port == EXAMPLE_REFUND_PORT:
        cli("apply", "-f", "deploy/examples", env=env, show=show)
        return
    text = "\n---\n".join(p.read_text() for p in sorted((ROOT / "deploy/examples").glob("*.yaml")))
    moved = text.replace(f"127.0.0.1:{EXAMPLE_REFUND_PORT}", f"127.0.0.1:{refund_port}")
    cli("apply", "-f", "-", env=env, show=f"{show} (refund desk on {refund_port})", stdin=moved)


def main() -> None:
    STATE.mkdir(exist_ok=True)
    key = admin_key()
    plane: launch.ChildControlPlane | None = None
    executor: subprocess.Popen[str] | None = None
    refunds: ThreadingHTTPServer | None = None
    try:
        refunds = refund_desk()
        refund_port = port(refunds)
        plane = launch.start(f"sqlite:///{STATE / 'controlplane.db'}", bootstrap_key=key, cwd=ROOT)
        print(f"Control plane on {plane.address} (SQLite at {STATE / 'controlplane.db'}).")
        env = {**os.environ, "PILOTHOUSE_ADDR": plane.address, "PILOTHOUSE_API_KEY": key}
        apply_examples(
            env, refund_port, "declare the example tenant, models, tools, prompt and agent"
        )
        apply_examples(env, refund_port, "applying again changes nothing")
        if os.environ.get("OPENAI_BASE_URL"):
            cli(
                "apply",
                "-f",
                "-",
                env=env,
                show="OPENAI_BASE_URL is set: route to the real model",
                stdin=REAL_MODEL_ROUTE,
            )
        cli("get", "tools", "--tenant", "acme", env=env, show="tools")
        cli("get", "agents", "--tenant", "acme", env=env, show="agents")
        cli(
            "prompt",
            "versions",
            "support-triage",
            "--tenant",
            "acme",
            env=env,
            show="prompt versions and labels",
        )

        executor_env = {
            **env,
            "PILOTHOUSE_EXECUTOR_KEY": new_key("executor", env),
            "PILOTHOUSE_CONTROL_PLANE": plane.address,
        }
        executor, executor_address = start_executor(executor_env, refund_port)
        print(f"\nExecutor on {executor_address}, configured over xDS from the control plane.")
        wait_until_current(env)
        cli("executors", env=env, show="what each executor has acknowledged")

        client_env = {
            **env,
            # The refund tool requires this scope of the key that starts a run.
            "PILOTHOUSE_API_KEY": new_key("client", env, "acme", "orders:refund"),
            "PILOTHOUSE_EXECUTOR_ADDR": executor_address,
        }
        wait_until_current(env)  # the client key has reached the executor too
        cli(
            "run",
            "support",
            "--tenant",
            "acme",
            "--var",
            "customer_name=Ada",
            "--input",
            "What do three of the $19.99 mugs cost?",
            env=client_env,
            show="run the agent and watch it work",
        )
        cli(
            "run",
            "support",
            "--tenant",
            "acme",
            "--var",
            "customer_name=Ada",
            "--input",
            "My mug arrived broken (order AB-1234). Please refund the $19.99.",
            env=client_env,
            show="this one needs a person: the refund tool always asks",
        )
        waiting = cli("approvals", "list", "--tenant", "acme", env=env).splitlines()
        if len(waiting) < 2:
            print("\n(The model did not ask for a refund this time: nothing waits for a person.)")
            return
        request = waiting[1].split()[0]
        cli("approvals", "list", "--tenant", "acme", env=env, show="what waits for a person")
        cli(
            "approvals",
            "approve",
            request,
            "--tenant",
            "acme",
            "--comment",
            "broken on arrival",
            env=env,
            show="an operator approves",
        )
        cli(
            "runs",
            "watch",
            request.split(".")[0],
            "--tenant",
            "acme",
            env=client_env,
            show="an executor takes the run up again and finishes it",
        )
        cli(
            "runs",
            "list",
            "--tenant",
            "acme",
            "--limit",
            "5",
            env=env,
            show="the tenant's runs, as the control plane knows them from telemetry",
        )
        cli(
            "usage",
            "--tenant",
            "acme",
            "--by",
            "agent,model,tool",
            env=env,
            show="what they used and cost, from the usage ledger",
        )
    finally:
        if executor is not None:
            executor.terminate()
            executor.wait(timeout=30)
        if plane is not None:
            plane.stop()
        if refunds is not None:
            refunds.shutdown()
            refunds.server_close()
    print(
        "\nDone. The admin key is in .pilothouse/admin.key. To keep a control plane running:\n"
        "  PILOTHOUSE_BOOTSTRAP_KEY=$(cat .pilothouse/admin.key) .venv/bin/controlplane serve\n"
        "  PILOTHOUSE_API_KEY=$(cat .pilothouse/admin.key) .venv/bin/pilothouse get tenants"
    )


if __name__ == "__main__":
    main()
