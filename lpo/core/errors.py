"""User-facing errors.

An ``LpoError`` is a mistake the user can fix (bad path, unknown name, bad value). The
CLI prints its message as one line and exits with status 2; anything else is a bug and
keeps its traceback.
"""


class LpoError(Exception):
    """A user error: the message names the bad value and the fix, in one line."""
