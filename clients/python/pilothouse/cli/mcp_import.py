"""``pilothouse tools import-mcp URL``: register the tools an MCP server lists.

Each MCP tool becomes a Pilothouse tool of kind mcp. Its id is the MCP name made into a
resource id (``cancel_order`` becomes ``cancel-order``; the MCP name is kept as the remote
name). Hints the server leaves out stay unset, so they take MCP's defaults: a tool without
hints counts as destructive, not read-only, not idempotent and open-world, and an agent
whose policy asks before destructive tools will ask before it. Importing again updates
what changed on the server and leaves the rest alone.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from mcp import Client as McpClient
from mcp_types import Tool as McpTool

from pilothouse.cli import kinds
from pilothouse.cli.apply import apply_all, report
from pilothouse.cli.manifests import Document
from pilothouse.cli.usage import UsageError
from pilothouse.v1 import tool_pb2

PATHS = [
    "description",
    "input_schema",
    "output_schema",
    "kind",
    "endpoint",
    "remote_name",
    "annotations",
]
"""Every field an import sets, so an update also clears what the server dropped."""

_ID_PATTERN = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    tools = sub.add_parser("tools", help="tools from other systems")
    tools_sub = tools.add_subparsers(dest="tools_command", required=True)
    imp = tools_sub.add_parser(
        "import-mcp",
        help="register the tools of an MCP server (streamable HTTP)",
        parents=[common],
    )
    imp.add_argument("url", help="the MCP server's endpoint, e.g. http://127.0.0.1:8000/mcp")
    imp.add_argument("--prefix", default="", help="put this before every tool id")
    imp.add_argument(
        "--only", action="append", default=[], help="import only this MCP tool; may repeat"
    )


async def list_mcp_tools(url: str) -> list[McpTool]:
    found: list[McpTool] = []
    async with McpClient(url) as mcp:
        cursor: str | None = None
        while True:
            page = await mcp.list_tools(cursor=cursor)
            found += page.tools
            cursor = page.next_cursor
            if not cursor:
                return found


def tool_id(prefix: str, mcp_name: str) -> str:
    raw = re.sub(r"[^a-z0-9]+", "-", f"{prefix}{mcp_name}".lower()).strip("-")
    if not _ID_PATTERN.fullmatch(raw):
        raise UsageError(
            f"MCP tool {mcp_name!r} gives the id {raw!r}, which is not a valid tool id "
            "(a letter first, then up to 62 lowercase letters, digits or hyphens); "
            "use --prefix or --only"
        )
    return raw


def to_tool(url: str, tenant: str, id_: str, mcp_tool: McpTool) -> tool_pb2.Tool:
    tool = tool_pb2.Tool(
        name=f"tenants/{tenant}/tools/{id_}",
        # The registry requires a description (the model reads it) and keeps 4,096 chars.
        description=(mcp_tool.description or mcp_tool.title or f"{mcp_tool.name} on {url}")[:4096],
        kind=tool_pb2.TOOL_KIND_MCP,
        endpoint=url,
        remote_name=mcp_tool.name if mcp_tool.name != id_ else "",
    )
    tool.input_schema.update(mcp_tool.input_schema)
    if mcp_tool.output_schema:
        tool.output_schema.update(mcp_tool.output_schema)
    hints = mcp_tool.annotations
    if hints is not None:
        for ours, theirs in (
            ("read_only_hint", hints.read_only_hint),
            ("destructive_hint", hints.destructive_hint),
            ("idempotent_hint", hints.idempotent_hint),
            ("open_world_hint", hints.open_world_hint),
        ):
            if theirs is not None:
                setattr(tool.annotations, ours, theirs)
    return tool


def destructive(tool: tool_pb2.Tool) -> bool:
    """MCP's reading of the hints: unset read-only is false, unset destructive is true."""
    a = tool.annotations
    if a.HasField("read_only_hint") and a.read_only_hint:
        return False
    return not a.HasField("destructive_hint") or a.destructive_hint


async def import_mcp(client: Any, ns: argparse.Namespace, tenant: str | None) -> int:
    if not tenant:
        raise UsageError("imported tools belong to a tenant: pass --tenant")
    try:
        listed = await list_mcp_tools(ns.url)
    except Exception as e:  # the SDK raises transport and protocol errors of many kinds
        cause: BaseException = e
        while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
            cause = cause.exceptions[0]  # anyio wraps what failed in task groups
        raise ConnectionError(f"cannot list the tools of {ns.url}: {cause!r}") from e
    wanted = set(ns.only)
    if wanted:
        missing = wanted - {t.name for t in listed}
        if missing:
            raise UsageError(f"{ns.url} lists no tool named {', '.join(sorted(missing))}")
        listed = [t for t in listed if t.name in wanted]
    if not listed:
        print(f"{ns.url} lists no tools.")
        return 0
    kind = kinds.find("tool")
    docs: list[Document] = []
    seen: dict[str, str] = {}
    for mcp_tool in listed:
        id_ = tool_id(ns.prefix, mcp_tool.name)
        if id_ in seen:
            raise UsageError(
                f"MCP tools {seen[id_]!r} and {mcp_tool.name!r} both become {id_!r}; "
                "import them separately with --only and different --prefix"
            )
        seen[id_] = mcp_tool.name
        docs.append(
            Document(
                f"{ns.url} ({mcp_tool.name})",
                kind,
                tenant,
                id_,
                to_tool(ns.url, tenant, id_, mcp_tool),
                list(PATHS),
            )
        )
    return report(
        await apply_all(client, docs),
        lambda doc: " (destructive)" if destructive(doc.message) else "",  # type: ignore[arg-type]
    )
