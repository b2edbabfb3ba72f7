"""`make fuzz`: serve an export with the shipped config and let schemathesis fuzz every operation of /openapi.json.

    python -m jobs.bench.fuzz_serve [--model EXPORT] [--max-examples 100]

Fails (non-zero exit) on any 5xx response. Default model: runs/production/export when present, else the
untouched default backbone exported once under runs/bench/.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from jobs.bench.embed import default_export
from mtl.export_format import is_export
from serve_app.local import LocalServe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="export directory")
    parser.add_argument("--max-examples", type=int, default=100, help="test cases per operation and phase")
    args = parser.parse_args(argv)
    production = Path("runs/production/export")
    model = Path(args.model) if args.model else production if is_export(production) else default_export()
    served = LocalServe(model)
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    command = [
        st, "run", f"{served.url}/openapi.json",
        "--checks", "not_a_server_error",
        "--max-examples", str(args.max_examples),
        "--phases", "examples,coverage,fuzzing",
        "--request-timeout", "60",
        "--workers", "4",
    ]  # fmt: skip
    print(" ".join(command), flush=True)
    try:
        return subprocess.run(command).returncode
    finally:
        served.close()


if __name__ == "__main__":
    sys.exit(main())
