"""Regenerate ``mas/_proto`` from ``proto/``; with ``--check``, fail if it is stale.

Used by ``nox -s proto``. The generated module is flattened into ``mas/_proto``
(it imports no other generated module, so its location is free).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto" / "mas" / "runtime" / "v1" / "runtime.proto"
OUT = ROOT / "mas" / "_proto"
GENERATED = ("runtime_pb2.py", "runtime_pb2.pyi")


def generate(into: Path) -> None:
    from grpc_tools import protoc  # type: ignore[import-untyped]

    rel = PROTO.relative_to(ROOT / "proto")
    code = protoc.main(
        ["protoc", f"-I{ROOT / 'proto'}", f"--python_out={into}", f"--pyi_out={into}", str(rel)]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with exit status {code}")
    produced = into / rel.parent
    for name in GENERATED:
        shutil.move(produced / name, into / name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if mas/_proto is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        generate(tmp_path)
        stale = [
            n
            for n in GENERATED
            if not (OUT / n).exists() or not filecmp.cmp(tmp_path / n, OUT / n, shallow=False)
        ]
        if args.check:
            if stale:
                print(
                    f"stale generated code: {', '.join(stale)}; run `nox -s proto`", file=sys.stderr
                )
                return 1
            print("generated code is up to date")
            return 0
        for name in GENERATED:
            shutil.copyfile(tmp_path / name, OUT / name)
        print(f"regenerated {', '.join(GENERATED)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
