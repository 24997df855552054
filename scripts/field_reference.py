"""Write docs/reference.md: the fields of the resources a tenant's operator declares
(Model, ModelRoute, Prompt, PromptVersion, Agent, Tool, QuotaPolicy), from the comments
of the contract in proto/. ``--check`` exits 1 when the committed file differs."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT / "docs" / "reference.md"
RESOURCES = (
    "Model",
    "ModelRoute",
    "Prompt",
    "PromptVersion",
    "Agent",
    "Tool",
    "QuotaPolicy",
)
"""The resources, in the order a manifest declares them; their messages follow each."""

TYPES = {
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: "string",
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: "bool",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: "int32",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: "int64",
    descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE: "double",
    descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT: "float",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: "uint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES: "bytes",
}

PREAMBLE = """# Field reference

The fields of the resources a tenant's operator declares, from the comments of the
contract (`proto/pilothouse/v1`); `scripts/field_reference.py` writes this file and
`make test` checks it is current. In a manifest (`pilothouse apply`) a field is written
in lowerCamelCase (`max_output_tokens` is `maxOutputTokens`), an enum by its value's
name, a Duration as `"30s"`. Output-only fields (`name`, `etag`, times) come back from
the server.

Two things a new deployment meets first:

* **An OpenAI-compatible `endpoint` includes the version**: `https://api.openai.com/v1`,
  `http://10.0.0.5:8000/v1`; the executor appends `/chat/completions`.
* **A model's credential** is named, not given: `credential: openai` refers to a secret
  the executor's operator declares (`dataplane serve --provider-credential
  openai=OPENAI_API_KEY:acme:https://api.openai.com/v1`) and grants to the tenant; the
  secret never passes through the API. See [security](security.md).
"""


def descriptors() -> descriptor_pb2.FileDescriptorSet:
    wkt = Path(protoc.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.bin"
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{wkt}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


class Contract:
    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.messages: dict[str, tuple[descriptor_pb2.DescriptorProto, dict[int, str]]] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.comments: dict[tuple[str, ...], str] = {}
        for f in files.file:
            if not f.package.startswith("pilothouse."):
                continue
            for location in f.source_code_info.location:
                text = location.leading_comments.strip()
                if text:
                    self.comments[(f.name, *map(str, location.path))] = " ".join(
                        line.strip() for line in text.splitlines()
                    )
            for i, message in enumerate(f.message_type):
                self._message(f, message, (f.name, "4", str(i)), f".{f.package}")
            for enum in f.enum_type:
                self.enums[f".{f.package}.{enum.name}"] = enum

    def _message(
        self,
        f: descriptor_pb2.FileDescriptorProto,
        message: descriptor_pb2.DescriptorProto,
        path: tuple[str, ...],
        scope: str,
    ) -> None:
        full = f"{scope}.{message.name}"
        fields = {i: self.comments.get((*path, "2", str(i)), "") for i in range(len(message.field))}
        self.messages[full] = (message, fields)
        self.comments[(full,)] = self.comments.get(path, "")
        for i, nested in enumerate(message.nested_type):
            self._message(f, nested, (*path, "3", str(i)), full)
        for nested_enum in message.enum_type:
            self.enums[f"{full}.{nested_enum.name}"] = nested_enum

    def type_of(self, field: descriptor_pb2.FieldDescriptorProto) -> str:
        if field.type_name:
            short = field.type_name.rsplit(".", 1)[-1]
            if field.type_name in self.enums:
                values = [v.name for v in self.enums[field.type_name].value][1:]
                kind = f"enum {short}: {', '.join(f'`{v}`' for v in values)}"
            elif field.type_name.startswith(".google.protobuf."):
                kind = short
            else:
                kind = f"[{short}](#{short.lower()})"
        else:
            kind = TYPES.get(field.type, "?")
        repeated = field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
        return f"repeated {kind}" if repeated else kind

    def section(self, full: str, done: set[str]) -> list[str]:
        """The message's table, then those of the messages its fields use."""
        if full in done:
            return []
        done.add(full)
        message, comments = self.messages[full]
        lines = [f"## {message.name}", ""]
        if self.comments.get((full,)):
            lines += [self.comments[(full,)], ""]
        lines += ["| field | type | what it is |", "| --- | --- | --- |"]
        used = []
        for i, field in enumerate(message.field):
            if field.options.deprecated:
                continue
            text = comments[i].replace("|", "\\|")
            lines.append(f"| `{field.json_name}` | {self.type_of(field)} | {text} |")
            if field.type_name in self.messages and not field.type_name.startswith(".google."):
                used.append(field.type_name)
        lines.append("")
        for name in used:
            lines += self.section(name, done)
        return lines


def render() -> str:
    contract = Contract(descriptors())
    out = [PREAMBLE]
    done: set[str] = set()
    for name in RESOURCES:
        out += contract.section(f".pilothouse.v1.{name}", done)
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    text = render()
    if parser.parse_args().check:
        if OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run scripts/field_reference.py")
            sys.exit(1)
        print("field reference is current")
        return
    OUT.write_text(text)


if __name__ == "__main__":
    main()
