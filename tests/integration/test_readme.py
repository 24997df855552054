"""Every command of the README, run as a new user runs it: its shell blocks in order,
through bash, against the control plane and the executor those blocks start. What the
README shows a command printing is checked against what it prints (a table by its rows'
first cells, a run by its events). The only liberties taken: free ports for 7070, 7071
and the MCP server's 8000, databases and state in a temporary directory, and the two
commands that name a placeholder (<id>, <run>) are skipped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controlplane.auth import keys
from tests.fakes.mcp_server import OrdersMcp

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = re.compile(r"<[a-z]+>")


@dataclass
class Step:
    command: str
    shown: list[str] = field(default_factory=list)
    """What the README shows it printing."""


def blocks() -> list[list[Step]]:
    """The README's ``sh`` blocks as commands: in a transcript (``$ `` prompts) the
    prompted lines, each with the lines shown after it; otherwise every line, with
    backslash continuations joined."""
    text = (ROOT / "README.md").read_text()
    out = []
    for body in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S):
        lines = body.replace("\\\n", " ").splitlines()
        if any(line.startswith("$ ") for line in lines):
            steps: list[Step] = []
            for line in lines:
                if line.startswith("$ "):
                    steps.append(Step(line[2:]))
                elif line.strip() and steps:
                    steps[-1].shown.append(line)
            out.append(steps)
        else:
            out.append([Step(line) for line in lines if line.strip()])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def expectations(shown: list[str]) -> Iterator[str]:
    """What of the shown output must appear: a table's rows by their first cell; a run's
    events by what comes before their figures or JSON; other lines whole."""
    table = bool(shown) and shown[0].split()[0].isupper()
    for line in shown[1:] if table else shown:
        if line.strip() == "…":
            continue
        if table:
            yield line.split()[0]
        elif line.startswith("["):
            yield line.split("] ", 1)[1].split(" · ")[0].split(": {")[0]
        else:
            yield line


class Shell:
    """Commands run by bash one at a time, sharing their environment as a shell does."""

    def __init__(self, env: dict[str, str], subs: dict[str, str], tmp: Path) -> None:
        self.env = env
        self.subs = subs
        self.tmp = tmp
        self.background: list[subprocess.Popen[str]] = []

    def line(self, command: str) -> str:
        for old, new in self.subs.items():
            command = command.replace(old, new)
        return command

    async def run(self, command: str) -> tuple[int, str]:
        saved = self.tmp / "env"
        # allexport: a variable a command sets (CLIENT_KEY=…) outlives it, as in one shell.
        script = (
            f"set -a -o pipefail\n{self.line(command)}\n__rc=$?\nenv -0 > {saved}\nexit $__rc\n"
        )
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            cwd=ROOT,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        if saved.exists():
            pairs = saved.read_bytes().split(b"\0")
            self.env = dict(p.decode().split("=", 1) for p in pairs if b"=" in p)
            saved.unlink()
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    async def serve(self, command: str) -> None:
        """A server the README leaves running in its shell: started in the background,
        once it says it listens."""
        proc = subprocess.Popen(
            ["bash", "-c", self.line(command)],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.background.append(proc)
        assert proc.stderr is not None
        seen: list[str] = []

        def listening() -> bool:
            assert proc.stderr is not None
            for line in proc.stderr:
                seen.append(line)
                if "listening on" in line:
                    return True
            return False

        assert await asyncio.to_thread(listening), "".join(seen[-30:])

    def close(self) -> None:
        for proc in self.background:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.background:
            proc.wait(30)
            if proc.stderr is not None:
                proc.stderr.close()


@pytest.mark.timeout(180)
async def test_every_readme_command_works_as_written(tmp_path: Path) -> None:
    admin = keys.generate().token
    mcp = await OrdersMcp().start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILOTHOUSE_")}
    env.update(
        PILOTHOUSE_BOOTSTRAP_KEY=admin,
        PILOTHOUSE_DATABASE_URL=f"sqlite:///{tmp_path / 'controlplane.db'}",
        PILOTHOUSE_RUN_STORE_URL=f"sqlite:///{tmp_path / 'runs.db'}",
        PILOTHOUSE_STATE_DIR=str(tmp_path / "state"),
        PILOTHOUSE_LOG_LEVEL="INFO",
    )
    shell = Shell(
        env,
        {
            "127.0.0.1:7070": f"127.0.0.1:{free_port()}",
            "127.0.0.1:7071": f"127.0.0.1:{free_port()}",
            "http://127.0.0.1:8000/mcp": mcp.url,
            "ph_…": admin,
        },
        tmp_path,
    )
    skipped: list[str] = []
    ran: list[str] = []
    try:
        make, *rest = blocks()
        assert [s.command.split("#")[0].strip() for s in make] == ["make demo", "make test"]
        for block in rest:
            for step in block:
                command = step.command
                if PLACEHOLDER.search(command):
                    skipped.append(command)
                    continue
                if re.search(r"\b(controlplane|dataplane) serve\b", command):
                    await shell.serve(command)
                    ran.append(command)
                    continue
                if command.startswith("pilothouse run "):
                    # Its client key must have reached the executor over xDS first.
                    for _ in range(100):
                        code, out = await shell.run(command)
                        if "UNAUTHENTICATED" not in out:
                            break
                        await asyncio.sleep(0.1)
                else:
                    code, out = await shell.run(command)
                ran.append(command)
                if "FAILED_PRECONDITION" in command:
                    assert code != 0 and "FAILED_PRECONDITION" in out, (command, out)
                    continue
                assert code == 0, (command, out)
                for expected in expectations(step.shown):
                    assert expected in out, (command, expected, out)
    finally:
        shell.close()
        await mcp.aclose()
    assert [PLACEHOLDER.search(s)[0] for s in skipped] == ["<id>", "<run>"]  # type: ignore[index]
    assert any(c.startswith("pilothouse run ") for c in ran) and len(ran) > 20
