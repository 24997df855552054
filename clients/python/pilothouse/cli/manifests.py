"""Manifests: multi-document YAML describing resources, as ``pilothouse apply`` reads them.

    apiVersion: pilothouse/v1        # optional
    kind: Tool                       # Tenant, QuotaPolicy, Tool, Model, ModelRoute, Prompt, Agent
    metadata:
      name: lookup-order
      tenant: acme                   # every kind but Tenant
    spec:                            # the resource's fields, snake_case or camelCase
      kind: http                     # enum values by their short name
      timeout: 10s                   # durations as 500ms, 10s, 5m, 1h
      tools: [lookup-order]          # references by id within the tenant, or full names

A Prompt's spec may also hold a version's content (template, variables, model_route,
parameters) and ``labels``: applying it creates that version (content-addressed, so
re-applying changes nothing) and points the labels at it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from pilothouse.cli.kinds import Kind, by_manifest_kind
from pilothouse.v1 import prompt_pb2

# libyaml's parser when PyYAML was built with it: ten times faster on large manifests.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

KIND_ORDER = [
    "Tenant",
    "QuotaPolicy",
    "Tool",
    "Model",
    "ModelRoute",
    "Prompt",
    "Agent",
    "EvalSuite",
]
VERSION_FIELDS = ("template", "variables", "model_route", "parameters")
_OUTPUT_ONLY = {"name", "etag", "create_time", "update_time", "content_hash"}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

# Fields that name other resources: (path, collection). Short ids are expanded.
_REFERENCES: dict[str, list[tuple[str, str]]] = {
    "ModelRoute": [("targets[].model", "models"), ("fallbacks[]", "models")],
    "Agent": [
        ("prompt", "prompts"),
        ("model_route", "modelRoutes"),
        ("tools[]", "tools"),
        ("approval_policy.always_require[]", "tools"),
    ],
    "PromptVersion": [("model_route", "modelRoutes")],
    "EvalSuite": [("agent", "agents"), ("cases[].expectations[].judge_agent", "agents")],
}


class ManifestError(Exception):
    """A manifest that cannot be applied, with where it is."""


@dataclass
class Document:
    source: str
    """Where it came from: ``file.yaml (document 2)``."""
    kind: Kind
    tenant: str | None
    id: str
    message: Message
    """The resource, with its name set."""
    paths: list[str]
    """The top-level fields the manifest sets (the update mask)."""
    version: prompt_pb2.PromptVersion | None = None
    labels: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.kind.name_of(self.tenant, self.id)


def read_sources(paths: list[str]) -> Iterator[tuple[str, str]]:
    """(label, text) of each file: ``-`` is standard input; directories are walked for
    .yaml and .yml files in name order."""
    for raw in paths:
        if raw == "-":
            yield "<stdin>", sys.stdin.read()
            continue
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
            if not files:
                raise ManifestError(f"{path}: no .yaml or .yml files")
        elif path.exists():
            files = [path]
        else:
            raise ManifestError(f"{path}: no such file or directory")
        for f in files:
            if f.stat().st_size > MAX_MANIFEST_BYTES:
                raise ManifestError(
                    f"{f}: {f.stat().st_size} bytes; a manifest may hold at most "
                    f"{MAX_MANIFEST_BYTES}"
                )
            yield str(f), f.read_text()


MAX_MANIFEST_BYTES = 8 * 1024 * 1024
"""A manifest file's size."""
MAX_EXPANDED_NODES = 200_000
"""Nodes of a manifest with its aliases expanded: a few lines of nested aliases ("a
billion laughs") otherwise expand to billions of nodes when the documents are walked."""


def _expanded_nodes(text: str) -> int:
    """How many nodes ``text`` holds once its aliases are expanded, counted from its
    events (stopping as soon as the count passes MAX_EXPANDED_NODES)."""
    sizes: dict[str, int] = {}
    stack: list[tuple[str | None, int]] = []
    total = 0

    def close(anchor: str | None, size: int) -> None:
        nonlocal total
        if anchor:
            sizes[anchor] = size
        if stack:
            parent_anchor, parent_size = stack.pop()
            stack.append((parent_anchor, parent_size + size))
        else:
            total += size

    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append((event.anchor, 1))
        elif isinstance(event, yaml.CollectionEndEvent):
            close(*stack.pop())
        elif isinstance(event, yaml.ScalarEvent):
            close(event.anchor, 1)
        elif isinstance(event, yaml.AliasEvent):
            close(None, sizes.get(event.anchor or "", 1))
        if total + sum(size for _, size in stack) > MAX_EXPANDED_NODES:
            return MAX_EXPANDED_NODES + 1
    return total


def parse(label: str, text: str) -> list[Document]:
    if len(text) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"{label}: {len(text)} characters; a manifest may hold at most {MAX_MANIFEST_BYTES}"
        )
    try:
        if _expanded_nodes(text) > MAX_EXPANDED_NODES:
            raise ManifestError(
                f"{label}: its aliases expand to more than {MAX_EXPANDED_NODES} nodes; "
                "write the repeated parts out, or split the file"
            )
        raw_docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ManifestError(f"{label}:{where} not valid YAML: {getattr(e, 'problem', e)}") from e
    docs = []
    for index, raw in enumerate(raw_docs, start=1):
        if raw is None:
            continue
        docs.append(_document(f"{label} (document {index})", raw))
    return docs


def load(paths: list[str]) -> list[Document]:
    """Every document of every source, in dependency order (tenants first, agents last)."""
    docs = [doc for label, text in read_sources(paths) for doc in parse(label, text)]
    return sorted(docs, key=lambda d: KIND_ORDER.index(d.kind.name))


def _document(source: str, raw: Any) -> Document:
    if not isinstance(raw, dict):
        raise ManifestError(f"{source}: expected a mapping with kind, metadata and spec")
    unknown = set(raw) - {"apiVersion", "kind", "metadata", "spec"}
    if unknown:
        raise ManifestError(f"{source}: unknown top-level field {sorted(unknown)[0]!r}")
    if raw.get("apiVersion", "pilothouse/v1") != "pilothouse/v1":
        raise ManifestError(f"{source}: apiVersion must be pilothouse/v1")
    kind_name = raw.get("kind")
    kind = by_manifest_kind(kind_name) if isinstance(kind_name, str) else None
    if kind is None or kind.name == "ApiKey":
        raise ManifestError(f"{source}: kind must be one of {', '.join(KIND_ORDER)}")
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ManifestError(f"{source}: metadata must be a mapping")
    name = metadata.get("name")
    tenant = metadata.get("tenant")
    if kind.name == "QuotaPolicy":
        tenant = tenant or name
        name = tenant
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{source}: metadata.name is required")
    if kind.name != "Tenant" and (not isinstance(tenant, str) or not tenant):
        raise ManifestError(f"{source}: metadata.tenant is required for a {kind.name}")
    spec = raw.get("spec") or {}
    if not isinstance(spec, dict):
        raise ManifestError(f"{source}: spec must be a mapping")
    where = f"{source} {kind.name} {name!r}"
    if kind.name == "Prompt":
        return _prompt(where, source, kind, tenant, name, spec)
    message = _message(kind.message, spec, where)
    _expand(message, kind.name, tenant)
    paths = _paths(kind.message, spec)
    if kind.name == "Model" and "api_key_env" not in paths:
        # A manifest without the deprecated field clears any value stored before it was
        # deprecated (the server refuses models that keep one).
        paths.append("api_key_env")
    doc = Document(source, kind, tenant, name, message, paths)
    named: Any = message
    named.name = doc.name
    return doc


def _prompt(
    where: str, source: str, kind: Kind, tenant: str | None, name: str, spec: dict[str, Any]
) -> Document:
    spec = dict(spec)
    labels = spec.pop("labels", [])
    if isinstance(labels, str):
        labels = [labels]
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ManifestError(f"{where}: spec.labels must be a list of label names")
    version_spec = {k: spec.pop(k) for k in list(spec) if _canonical(k) in VERSION_FIELDS}
    message = _message(kind.message, spec, where)
    version: prompt_pb2.PromptVersion | None = None
    if version_spec:
        built = _message(prompt_pb2.PromptVersion, version_spec, where)
        assert isinstance(built, prompt_pb2.PromptVersion)
        version = built
        _expand(version, "PromptVersion", tenant)
    elif labels:
        raise ManifestError(f"{where}: spec.labels needs a template to point at")
    doc = Document(source, kind, tenant, name, message, _paths(kind.message, spec), version, labels)
    named: Any = message
    named.name = doc.name
    return doc


def _canonical(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def _paths(cls: type[Message], spec: dict[str, Any]) -> list[str]:
    fields = cls.DESCRIPTOR.fields_by_name
    return [
        fields[_canonical(k)].name if _canonical(k) in fields else k
        for k in spec
        if _canonical(k) not in _OUTPUT_ONLY
    ]


def _message(cls: type[Message], spec: dict[str, Any], where: str) -> Message:
    normalised = _normalise(cls.DESCRIPTOR, spec, where, "spec")
    message = cls()
    try:
        json_format.ParseDict(normalised, message)
    except json_format.ParseError as e:
        raise ManifestError(f"{where}: {e}") from e
    return message


def _normalise(
    descriptor: Any, value: Any, where: str, path: str, *, top: bool = True
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: {path} must be a mapping")
    out: dict[str, Any] = {}
    for key, item in value.items():
        fd = descriptor.fields_by_name.get(_canonical(str(key)))
        here = f"{path}.{key}"
        if fd is None or (top and fd.name in _OUTPUT_ONLY):
            raise ManifestError(f"{where}: {here}: unknown field")
        if fd.is_repeated and not isinstance(item, list):
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                out[fd.name] = item
                continue
            raise ManifestError(f"{where}: {here} must be a list")
        items = item if isinstance(item, list) else [item]
        converted = [
            _scalar(fd, v, where, f"{here}[{i}]" if isinstance(item, list) else here)
            for i, v in enumerate(items)
        ]
        out[fd.name] = converted if isinstance(item, list) else converted[0]
    return out


def _scalar(fd: FieldDescriptor, value: Any, where: str, path: str) -> Any:
    if fd.enum_type is not None and isinstance(value, str):
        prefix = _enum_prefix(fd.enum_type.name)
        candidate = value.upper().replace("-", "_")
        if not candidate.startswith(prefix):
            candidate = prefix + candidate
        if candidate not in fd.enum_type.values_by_name:
            choices = [v.name[len(prefix) :].lower() for v in fd.enum_type.values if v.number]
            raise ManifestError(f"{where}: {path}: {value!r} is not one of {', '.join(choices)}")
        return candidate
    if fd.message_type is not None:
        full = fd.message_type.full_name
        if full == "google.protobuf.Duration":
            return _duration(value, where, path)
        if full.startswith("google.protobuf."):
            return value
        return _normalise(fd.message_type, value, where, path, top=False)
    if (
        fd.type == FieldDescriptor.TYPE_STRING
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    ):
        return str(value)
    return value


def _enum_prefix(enum_name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_name).upper() + "_"


def _duration(value: Any, where: str, path: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value}s"
    if isinstance(value, str):
        text = value.strip()
        parts = _DURATION.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
            return f"{seconds:.3f}s"
    raise ManifestError(f"{where}: {path}: {value!r} is not a duration (e.g. 500ms, 10s, 5m, 1h)")


def _expand(message: Message, kind_name: str, tenant: str | None) -> None:
    """Short references (an id) become full names within the manifest's tenant."""
    for path, collection in _REFERENCES.get(kind_name, []):
        _expand_path(message, path.split("."), f"tenants/{tenant}/{collection}/")
    if kind_name == "Agent":
        agent: Any = message
        if agent.prompt_version and "/" not in agent.prompt_version:
            agent.prompt_version = f"{agent.prompt}/versions/{agent.prompt_version}"


def _expand_path(message: Any, parts: list[str], prefix: str) -> None:
    head, rest = parts[0], parts[1:]
    repeated = head.endswith("[]")
    name = head.removesuffix("[]")
    if not rest:
        if repeated:
            values = getattr(message, name)
            for i, v in enumerate(values):
                if v and "/" not in v:
                    values[i] = prefix + v
        else:
            value = getattr(message, name)
            if value and "/" not in value:
                setattr(message, name, prefix + value)
        return
    children = getattr(message, name) if repeated else [getattr(message, name)]
    for child in children:
        _expand_path(child, rest, prefix)
