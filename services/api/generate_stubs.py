"""Regenerate the Python stubs of protos/meshllm/v1/*.proto into services/api/.

    python -m services.api.generate_stubs [--check]

grpcio-tools writes `from meshllm.v1 import x_pb2`; the stubs live in the package services.api,
so those imports are rewritten. --check regenerates into a temporary folder and fails if the
committed stubs differ (tests/test_protos.py runs it).
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
API = Path(__file__).resolve().parent
PROTO_FILES = sorted((PROTOS / "meshllm" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTOS}", f"--python_out={tmp}", f"--grpc_python_out={tmp}",
                *[str(p) for p in PROTO_FILES]]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written = []
        for src in sorted((Path(tmp) / "meshllm" / "v1").glob("*.py")):
            text = re.sub(r"^from meshllm\.v1 import ", "from services.api import ", src.read_text(), flags=re.M)
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
        return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = ap.parse_args()
    if not args.check:
        for path in generate(API):
            print(path.relative_to(ROOT))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_text() for p in generate(Path(tmp))}
    stale = [name for name, text in fresh.items() if not (API / name).exists() or (API / name).read_text() != text]
    extra = [p.name for p in API.glob("*_pb2*.py") if p.name not in fresh]
    if stale or extra:
        print(f"stale stubs: {stale + extra}; run python -m services.api.generate_stubs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
