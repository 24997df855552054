"""``pilothouse apply``: make the control plane match manifests, idempotently.

Each document is read, compared with what the server holds on the fields the manifest
sets, and created, updated (those fields only, guarded by the etag read) or left alone.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pilothouse.cli.manifests import Document
from pilothouse.client import Client
from pilothouse.errors import ApiError
from pilothouse.v1 import prompt_pb2


@dataclass(frozen=True)
class Outcome:
    doc: Document
    verb: str
    """created, configured or unchanged; empty when ``error`` is set."""
    error: ApiError | None = None


async def apply_all(client: Client, docs: list[Document], *, concurrency: int = 8) -> list[Outcome]:
    """Apply in dependency order, one kind after another; documents of one kind go
    ``concurrency`` at a time (those naming the same resource one after another).
    Outcomes come back in the documents' order."""
    outcomes: dict[int, Outcome] = {}
    slots = asyncio.Semaphore(concurrency)

    async def apply_in_turn(indexed: list[tuple[int, Document]]) -> None:
        for index, doc in indexed:
            async with slots:
                try:
                    outcomes[index] = Outcome(doc, await apply_one(client, doc))
                except ApiError as e:
                    outcomes[index] = Outcome(doc, "", e)

    for _, group in itertools.groupby(enumerate(docs), key=lambda item: item[1].kind.name):
        by_name: dict[str, list[tuple[int, Document]]] = {}
        for index, doc in group:
            by_name.setdefault(doc.name, []).append((index, doc))
        await asyncio.gather(*(apply_in_turn(items) for items in by_name.values()))
    return [outcomes[i] for i in range(len(docs))]


async def apply_one(client: Client, doc: Document) -> str:
    existing = await _existing(client, doc)
    if existing is None:
        if not doc.kind.creatable:
            raise ApiError("NOT_FOUND", f"{doc.kind.name} {doc.name} does not exist")
        await doc.kind.create(client, doc.tenant, doc.id, doc.message)
        verb = "created"
        current: Any = None
    else:
        changed = [p for p in doc.paths if getattr(doc.message, p) != getattr(existing, p)]
        if changed:
            named: Any = doc.message
            named.etag = existing.etag
            current = await doc.kind.update(client, doc.message, changed)
            verb = "configured"
        else:
            current = existing
            verb = "unchanged"
    if doc.version is not None and await _apply_version(client, doc, current):
        verb = "configured" if verb == "unchanged" else verb
    return verb


async def _existing(client: Client, doc: Document) -> Any:
    try:
        return await doc.kind.get(client, doc.name)
    except ApiError as e:
        if e.code == "NOT_FOUND":
            return None
        raise


async def _apply_version(client: Client, doc: Document, prompt: Any) -> bool:
    """Create the manifest's prompt version (a no-op when it exists) and point its labels
    at it. True when anything changed."""
    response = await client.call(
        client.prompts.CreatePromptVersion,
        prompt_pb2.CreatePromptVersionRequest(parent=doc.name, prompt_version=doc.version),
    )
    version = response.prompt_version.name
    labels = dict(prompt.labels) if prompt is not None else {}
    moved = False
    for label in doc.labels:
        if labels.get(label) != version:
            await client.call(
                client.prompts.SetPromptLabel,
                prompt_pb2.SetPromptLabelRequest(name=doc.name, label=label, version=version),
            )
            moved = True
    return moved or bool(response.created)


def report(outcomes: list[Outcome], note: Callable[[Document], str] = lambda _: "") -> int:
    """Print a line per document (errors on stderr); the exit status: 1 if any failed."""
    failed = 0
    for outcome in outcomes:
        doc = outcome.doc
        if outcome.error is None:
            print(f"{doc.kind.name.lower()}/{doc.id} ({doc.name}) {outcome.verb}{note(doc)}")
        else:
            failed += 1
            print(
                f"error: {doc.source}: {doc.kind.name} {doc.name}: {explain(outcome.error)}",
                file=sys.stderr,
            )
    return 1 if failed else 0


def explain(error: ApiError) -> str:
    """The error's message, with one line per field or precondition the server named."""
    details = [f"  {v.field}: {v.description}" for v in error.field_violations]
    details += [f"  {v.description}" for v in error.precondition_violations]
    if not details:
        return str(error)
    return "\n".join([str(error), *details])
