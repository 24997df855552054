"""Builtin tools: implemented in the executor, named by a tool's endpoint."""

from __future__ import annotations

import ast
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


def _evaluate(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (int, float))
        and not isinstance(node.value, bool)
    ):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 100:
            raise ToolFailure("exponent too large")
        return _OPERATORS[type(node.op)](left, right)  # type: ignore[no-any-return]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.operand))  # type: ignore[no-any-return]
    raise ToolFailure("only numbers and + - * / // % ** ( ) are allowed")


async def calculator(arguments: dict[str, Any], context: CallContext) -> Any:
    """Evaluate an arithmetic expression: {"expression": "2 * (3 + 4)"}."""
    expression = str(arguments.get("expression", ""))
    if len(expression) > 500:
        raise ToolFailure("expression too long")
    try:
        tree = ast.parse(expression, mode="eval")
        return {"result": _evaluate(tree)}
    except (SyntaxError, ZeroDivisionError, OverflowError) as e:
        raise ToolFailure(f"cannot evaluate {expression!r}: {e}") from e


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
