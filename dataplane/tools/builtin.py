"""Builtin tools: implemented in the executor, named by a tool's endpoint."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dataplane.runstore.memory import Memory, MemoryFull


@dataclass(frozen=True)
class CallContext:
    """Whose call it is: builtins that keep state keep it per tenant and agent."""

    tenant: str
    agent: str
    memory: Memory | None = None


BuiltinTool = Callable[[dict[str, Any], CallContext], Awaitable[Any]]


class ToolFailure(Exception):
    """The tool ran and failed; the message goes back to the model as the result."""


_OPERATORS: dict[type[ast.AST], Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


MAX_EXPRESSION = 500
"""Characters of one expression."""
MAX_BITS = 4096
"""Size of any integer the calculator makes (about 1,230 decimal digits): big-integer
arithmetic runs in one C call that holds the GIL, so a size must be refused before the
operation, not timed out after it."""
MAX_OPERATIONS = 200


def _bits(value: float | int) -> int:
    return value.bit_length() if isinstance(value, int) else 0


def _check_size(op: ast.AST, left: float | int, right: float | int) -> None:
    """Refuse an operation whose integer result would pass MAX_BITS, before doing it."""
    if isinstance(op, ast.Pow) and isinstance(left, int) and isinstance(right, int):
        if right > 0 and abs(left) > 1 and _bits(left) * right > MAX_BITS:
            raise ToolFailure(f"the result would have more than {MAX_BITS} bits")
        if abs(right) > 10 * MAX_BITS:
            raise ToolFailure("exponent too large")
    elif isinstance(op, ast.Mult) and _bits(left) + _bits(right) > MAX_BITS:
        raise ToolFailure(f"the result would have more than {MAX_BITS} bits")
    elif isinstance(op, ast.Pow) and abs(right) > 10 * MAX_BITS:
        raise ToolFailure("exponent too large")


class _Evaluator:
    """Arithmetic on a parsed expression, within an operation budget and size bounds."""

    def __init__(self) -> None:
        self.operations = 0

    def evaluate(self, node: ast.AST) -> float | int:
        self.operations += 1
        if self.operations > MAX_OPERATIONS:
            raise ToolFailure(f"more than {MAX_OPERATIONS} operations")
        if isinstance(node, ast.Expression):
            return self.evaluate(node.body)
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, (int, float))
            and not isinstance(node.value, bool)
        ):
            if _bits(node.value) > MAX_BITS:
                raise ToolFailure(f"a number has more than {MAX_BITS} bits")
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = self.evaluate(node.left), self.evaluate(node.right)
            _check_size(node.op, left, right)
            result = _OPERATORS[type(node.op)](left, right)
            if isinstance(result, complex):
                raise ToolFailure("the result is not a real number")
            return result  # type: ignore[no-any-return]
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](self.evaluate(node.operand))  # type: ignore[no-any-return]
        raise ToolFailure("only numbers and + - * / // % ** ( ) are allowed")


async def calculator(arguments: dict[str, Any], context: CallContext) -> Any:
    """Evaluate an arithmetic expression: {"expression": "2 * (3 + 4)"}."""
    expression = str(arguments.get("expression", ""))
    if len(expression) > MAX_EXPRESSION:
        raise ToolFailure(f"expression too long (at most {MAX_EXPRESSION} characters)")
    try:
        result = _Evaluator().evaluate(ast.parse(expression, mode="eval"))
    except (SyntaxError, ZeroDivisionError, OverflowError, ValueError, RecursionError) as e:
        raise ToolFailure(f"cannot evaluate {expression[:100]!r}: {e}") from e
    if isinstance(result, float) and not math.isfinite(result):
        raise ToolFailure("the result is not a finite number")
    return {"result": result}


async def echo(arguments: dict[str, Any], context: CallContext) -> Any:
    """Return the arguments: {"text": "..."} → {"text": "..."}."""
    return arguments


async def clock(arguments: dict[str, Any], context: CallContext) -> Any:
    """The current time in UTC."""
    return {"utc": datetime.now(UTC).isoformat(timespec="seconds")}


async def memory(arguments: dict[str, Any], context: CallContext) -> Any:
    """A key-value memory of the agent's, kept across runs:
    {"op": "get" | "set" | "delete" | "list", "key": "...", "value": <any JSON>}."""
    if context.memory is None:
        raise ToolFailure("memory is not available on this executor")
    op = arguments.get("op")
    key = str(arguments.get("key", ""))
    if op != "list" and not 0 < len(key) <= 200:
        raise ToolFailure("key must be 1 to 200 characters")
    store, tenant, agent = context.memory, context.tenant, context.agent
    if op == "get":
        return {"key": key, "value": await store.get(tenant, agent, key)}
    if op == "set":
        try:
            await store.set(tenant, agent, key, arguments.get("value"))
        except MemoryFull as e:
            raise ToolFailure(str(e)) from e
        return {"key": key, "stored": True}
    if op == "delete":
        return {"key": key, "deleted": await store.delete(tenant, agent, key)}
    if op == "list":
        return {"keys": await store.keys(tenant, agent)}
    raise ToolFailure("op must be get, set, delete or list")


BUILTINS: dict[str, BuiltinTool] = {
    "calculator": calculator,
    "echo": echo,
    "clock": clock,
    "memory": memory,
}
