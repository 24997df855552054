"""Hostile-input benchmark: how long the event loop is held while an executor processes
inputs a tenant's key can send (issue: "any client key can freeze the executor").

Each input is processed the way the executor does, on the event loop, while a monitor
task asks for a 1 ms sleep over and over; the figure is the longest the monitor waited
past its deadline (the lag every other run and health check on that executor sees), with
the processing time itself. For reference, the same inputs' cost on Python's own engine
is measured at sizes small enough to finish.

    .venv/bin/python -m tests.bench.hostile_bench
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

from dataplane.evals.graders import grade
from dataplane.guardrails import injection, pii
from dataplane.tools.builtin import CallContext, ToolFailure, calculator
from pilothouse import jsonschemas
from pilothouse.v1 import eval_pb2
from storekit.loop import run as run_on_loop
from tests.bench.registry_bench import write_result

EVIL_TEXT = "a" * 100_000 + "!"
CASES: dict[str, Callable[[], Any]] = {
    "grader regex (a+)+$ on 100,001 chars": lambda: grade(
        eval_pb2.Expectation(grader=eval_pb2.GRADER_REGEX, value=r"(a+)+$"), EVIL_TEXT
    ),
    "schema pattern (a+)+$ on 100,001 chars": lambda: jsonschemas.validator(
        {"type": "string", "pattern": r"(a+)+$"}
    ).is_valid(EVIL_TEXT),
    "PII redaction, 128 KiB of 'x.a'": lambda: pii.redact("x.a" * 43_690),
    "PII redaction, 128 KiB of '1.1.1.1 '": lambda: pii.redact("1.1.1.1 " * 16_384),
    "PII redaction, 128 KiB of '+1 555 '": lambda: pii.redact("+1 555 " * 18_724),
    "injection screen, 128 KiB": lambda: injection.screen("ignore " * 18_724),
    "tool arguments nested 200,000 deep": lambda: _refused(
        lambda: jsonschemas.parse_document("[" * 200_000 + "]" * 200_000)
    ),
    "calculator (((9**99)**99)**99)**3": lambda: _calculate("(((9**99)**99)**99)**3"),
}
REFERENCE: dict[str, Callable[[], Any]] = {
    "re: (a+)+$ on 23 chars": lambda: re.search(r"(a+)+$", "a" * 22 + "!"),
    "re: (a+)+$ on 25 chars": lambda: re.search(r"(a+)+$", "a" * 24 + "!"),
    "re: e-mail pattern on 16 KiB of 'x.a'": lambda: re.compile(
        r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
    ).findall("x.a" * 5_461),
}


def _refused(work: Callable[[], Any]) -> str:
    try:
        work()
    except (ValueError, ToolFailure) as e:
        return str(e)
    return "accepted"


def _calculate(expression: str) -> str:
    coroutine = calculator({"expression": expression}, CallContext("bench", "a"))
    try:
        coroutine.send(None)
    except StopIteration as done:
        return str(done.value)
    except ToolFailure as e:
        return str(e)
    raise AssertionError("the calculator awaited")


async def held(work: Callable[[], Any]) -> tuple[float, float]:
    """(processing seconds, worst event-loop lag in seconds) of ``work`` on the loop."""
    lag = 0.0
    stop = asyncio.Event()

    async def monitor() -> None:
        nonlocal lag
        while not stop.is_set():
            asked = time.perf_counter()
            await asyncio.sleep(0.001)
            lag = max(lag, time.perf_counter() - asked - 0.001)

    watcher = asyncio.create_task(monitor())
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    work()
    took = time.perf_counter() - started
    await asyncio.sleep(0.01)
    stop.set()
    await watcher
    return took, lag


async def main() -> None:
    results: dict[str, Any] = {"benchmark": "hostile_inputs", "executor": {}, "python_re": {}}
    print(f"{'input':45} {'processing':>12} {'loop lag':>10}")
    for name, work in CASES.items():
        took, lag = await held(work)
        results["executor"][name] = {"ms": round(took * 1e3, 2), "loop_lag_ms": round(lag * 1e3, 2)}
        print(f"{name:45} {took * 1e3:>10.2f}ms {lag * 1e3:>8.2f}ms")
    print("\nfor reference, Python's backtracking engine:")
    for name, work in REFERENCE.items():
        took, lag = await held(work)
        results["python_re"][name] = {
            "ms": round(took * 1e3, 2),
            "loop_lag_ms": round(lag * 1e3, 2),
        }
        print(f"{name:45} {took * 1e3:>10.2f}ms {lag * 1e3:>8.2f}ms")
    write_result("hostile_inputs", results)


if __name__ == "__main__":
    run_on_loop(main())
