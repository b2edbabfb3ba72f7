"""How every `jobs.*` command ends: a user's mistake is one line on stderr and exit code 2, a bug a traceback.

`python -m jobs.<name> ... --debug` (or `MTL_DEBUG=1`) shows the traceback of a user error too. The installed
console scripts (`mtl-train`, `mtl-serve`, ...) are the functions at the end of this file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from mtl.errors import UserError

USER_ERROR_EXIT = 2


def one_line(error: BaseException) -> str:
    """The message with its lines joined: a multi-key config error stays one line ("key: why; key: why")."""
    parts = [line.strip() for line in str(error).splitlines() if line.strip()]
    return parts[0] + (" " + "; ".join(parts[1:]) if len(parts) > 1 else "")


def run_command(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run `main(argv)`; print a `UserError` (config key, file/row/column, path) as `error: ...` and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MTL_DEBUG", "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    try:
        main(argv)
    except UserError as error:
        if debug:
            raise
        print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)


# The console scripts (`[project.scripts]` in pyproject.toml): `mtl-<name>` is `python -m jobs.<name>`.
def train() -> None:
    from jobs.train import main

    run_command(main)


def prepare_data() -> None:
    from jobs.prepare_data import main

    run_command(main)


def evaluate() -> None:
    from jobs.evaluate import main

    run_command(main)


def embed() -> None:
    from jobs.embed import main

    run_command(main)


def compare_strategies() -> None:
    from jobs.compare_strategies import main

    run_command(main)


def compare_backbones() -> None:
    from jobs.compare_backbones import main

    run_command(main)


def serve() -> None:
    """`mtl-serve`: `serve run` on the shipped Serve config, in the foreground, as `make serve`."""
    run_command(serve_main)


def serve_main(argv: list[str] | None = None) -> None:
    """`mtl-serve [--model EXPORT] [--config YAML] [serve run flags]`: the shipped `serve_app/serve_config.yaml`
    (found inside the installed package) with the Ray settings it is measured with; other flags go to `serve run`."""
    import argparse
    from pathlib import Path

    from mtl.export_format import MANIFEST_FILE, is_export
    from serve_app.args import MODEL_DIR_ENV
    from serve_app.local import SERVE_ENV, SHIPPED_CONFIG

    parser = argparse.ArgumentParser(prog="mtl-serve", description=serve_main.__doc__)
    parser.add_argument("--model", help="export directory (default: the config's model_dir, runs/production/export)")
    parser.add_argument("--config", type=Path, default=SHIPPED_CONFIG, help="Serve config (default: the shipped one)")
    args, serve_run_flags = parser.parse_known_args(argv)
    if not args.config.is_file():
        raise UserError(f"--config {args.config}: no such file")
    if args.model is not None:
        model = Path(args.model).expanduser().resolve()  # the replicas need not share this process's directory
        if not is_export(model):
            raise UserError(f"--model {args.model}: not an export directory (no {MANIFEST_FILE} in {model})")
        os.environ[MODEL_DIR_ENV] = str(model)
    for key, value in {**SERVE_ENV, "HF_HUB_OFFLINE": "1"}.items():
        os.environ.setdefault(key, value)  # read by Ray when its processes start: set before `serve run` starts it

    from ray.serve.scripts import cli

    cli.main(["run", str(args.config), *serve_run_flags], prog_name="serve")
