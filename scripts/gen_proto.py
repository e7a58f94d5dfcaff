"""Regenerate the protobuf and gRPC modules from proto/ (run: python scripts/gen_proto.py).

The generated files live in clients/recallclient/_proto/ and are never edited
by hand. `--check DIR` writes them into DIR instead, so a test can compare.
"""

import argparse
import pathlib
import re
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT / "clients" / "recallclient" / "_proto"
PACKAGE = "recallclient._proto"


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    """Write the generated modules under `out`; return their paths."""
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted(p for p in out.rglob("*") if p.suffix in (".py", ".pyi"))
    for path in written:
        text = path.read_text()
        # Generated imports are absolute from the proto root; make them
        # package-relative so the modules import from inside recallclient.
        fixed = re.sub(r"^from recall\.v1 import", f"from {PACKAGE}.recall.v1 import", text, flags=re.M)
        path.write_text(fixed)
    packages = {out} | {parent for p in written for parent in p.parents if out in parent.parents}
    for pkg in packages:
        init = pkg / "__init__.py"
        if not init.exists():
            init.write_text("")
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    ns = parser.parse_args()
    for path in generate(ns.out):
        print(path.relative_to(ns.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
