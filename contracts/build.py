#!/usr/bin/env python3
"""Compile AccountingV2.vy into AccountingV2.json (ABI + deploy bytecode), the artifact tests deploy.

    <python with vyper 0.4.3> contracts/build.py [--check]

Why a committed artifact: vyper 0.4.3 pins `cbor2<6`, which the rest of the test
extras do not share, so the compiler lives in its own virtual environment (CI:
/var/cache/lloom-ci/vyper-venv) and the test environment only deploys the JSON.
`--check` exits non-zero when the artifact is not what the source compiles to
(tests/test_contract.py runs it when LLOOM_VYPER_PYTHON names that interpreter).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "AccountingV2.vy"
ARTIFACT = HERE / "AccountingV2.json"


def compile_artifact() -> dict[str, object]:
    import vyper

    source = SOURCE.read_text()
    out = vyper.compile_code(source, output_formats=["abi", "bytecode", "method_identifiers"])
    return {
        "contract": "AccountingV2",
        "compiler": f"vyper {vyper.__version__}",
        "source_sha256": hashlib.sha256(source.encode()).hexdigest(),
        "abi": out["abi"],
        "method_identifiers": out["method_identifiers"],
        "bytecode": out["bytecode"],
    }


def main() -> None:
    artifact = compile_artifact()
    text = json.dumps(artifact, indent=1, sort_keys=True) + "\n"
    if "--check" in sys.argv[1:]:
        if not ARTIFACT.exists() or ARTIFACT.read_text() != text:
            raise SystemExit(f"{ARTIFACT.name} is not the compiled {SOURCE.name}: run contracts/build.py")
        print(f"{ARTIFACT.name} matches {SOURCE.name}")
        return
    ARTIFACT.write_text(text)
    print(f"wrote {ARTIFACT} ({len(artifact['bytecode']) // 2 - 1} bytes of deploy code)")


if __name__ == "__main__":
    main()
