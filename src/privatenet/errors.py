"""The one exception type for user mistakes.

Library code raises :class:`PrivatenetError` for anything the user can fix (a missing file, a
malformed label line, an unknown option value, a checkpoint of another architecture). The CLI
prints its message on one line and exits with code 2; any other exception is a bug and keeps its
traceback.
"""


class PrivatenetError(ValueError):
    """A user mistake, with a one-line message that names the file or value and the fix."""
