"""How every `jobs.*` command ends: a user's mistake is one line on stderr and exit code 2, a bug a traceback.

`python -m jobs.<name> ... --debug` (or `MTL_DEBUG=1`) shows the traceback of a user error too.
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
