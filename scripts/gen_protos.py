"""Generate the Python modules of the pilothouse.v1 contract.

Writes ``*_pb2.py``, ``*_pb2_grpc.py`` and their mypy stubs (mypy-protobuf) for every
file under ``proto/`` into ``clients/python`` (or the directory given), so that
``pilothouse.v1`` is the import path protoc's imports expect.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
BIN = Path(sys.executable).parent


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    package_dir = out / "pilothouse" / "v1"
    if package_dir.exists():
        for old in package_dir.glob("*_pb2*.py*"):
            old.unlink()
    package_dir.mkdir(parents=True, exist_ok=True)
    wkt = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{wkt}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    init = package_dir / "__init__.py"
    init.write_text(
        '"""Generated from proto/pilothouse/v1 by scripts/gen_protos.py. Do not edit."""\n'
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "clients" / "python")
    ns = parser.parse_args()
    generate(ns.out)


if __name__ == "__main__":
    main()
