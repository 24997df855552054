"""Builtin tools: implemented in the executor, named by a tool's endpoint."""

from __future__ import annotations

import ast
import operator
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

BuiltinTool = Callable[[dict[str, Any]], Awaitable[Any]]


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


async def calculator(arguments: dict[str, Any]) -> Any:
    """Evaluate an arithmetic expression: {"expression": "2 * (3 + 4)"}."""
    expression = str(arguments.get("expression", ""))
    if len(expression) > 500:
        raise ToolFailure("expression too long")
    try:
        tree = ast.parse(expression, mode="eval")
        return {"result": _evaluate(tree)}
    except (SyntaxError, ZeroDivisionError, OverflowError) as e:
        raise ToolFailure(f"cannot evaluate {expression!r}: {e}") from e


async def echo(arguments: dict[str, Any]) -> Any:
    """Return the arguments: {"text": "..."} → {"text": "..."}."""
    return arguments


async def clock(arguments: dict[str, Any]) -> Any:
    """The current time in UTC."""
    return {"utc": datetime.now(UTC).isoformat(timespec="seconds")}


BUILTINS: dict[str, BuiltinTool] = {"calculator": calculator, "echo": echo, "clock": clock}
