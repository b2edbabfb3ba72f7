"""The one base class of errors a user fixes (a config key, a data file's row, a path), not bugs.

The `jobs.*` commands print these as one line, `error: <message>`, and exit with code 2 (`jobs.cli`); anything
else is a bug and keeps its traceback. Every subclass's message names what to change and where.
"""


class UserError(ValueError):
    """A config, data or path problem the user can fix; the message names the key, file/row/column or path."""
