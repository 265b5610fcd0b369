"""The one exception type for user mistakes.

Library code raises :class:`PrivatenetError` for anything the user can fix (a missing file, a
malformed label line, an unknown option value, a checkpoint of another architecture). The CLI
prints its message on one line and exits with code 2; any other exception is a bug and keeps its
traceback.
"""


class PrivatenetError(ValueError):
    """A user mistake, with a one-line message that names the file or value and the fix."""


class SettingError(PrivatenetError):
    """A refused value of a named setting.

    Its message names the setting as a keyword (``seed=-5 is invalid; give ...``); an interface
    that spells settings otherwise (the command line's flags) rebuilds the same line from
    ``name``, ``value`` and ``reason`` with :meth:`spelled`, so no message is ever rewritten by
    pattern. ``mentions``: other settings the reason names, written ``{name}`` in it (a dict
    gives the library's own spelling of each, such as ``{"resume": "resume=True"}``).
    """

    def __init__(self, name: str, value: object, reason: str, *,
                 mentions: tuple[str, ...] | dict[str, str] = ()) -> None:
        self.name, self.value, self.reason = name, value, reason
        self.mentions = dict(mentions) if isinstance(mentions, dict) else {m: m for m in mentions}
        super().__init__(self.spelled(f"{name}={value!r}"))

    def spelled(self, setting: str, spell=None) -> str:
        """The message with ``setting`` (for instance ``--seed -5``) in place of ``name=value``
        and each mentioned setting as ``spell(name)`` writes it (default: the library's)."""
        reason = self.reason
        for name, own in self.mentions.items():  # one by one: a path may hold braces
            reason = reason.replace(f"{{{name}}}", own if spell is None else spell(name))
        return f"{setting}{'' if reason[:1] in (':', ';', ',') else ' '}{reason}"
