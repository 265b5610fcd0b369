"""How a setting is declared: once, as a dataclass field that carries its command-line text.

The settings classes (:class:`~privatenet.data.config.DataConfig`,
:class:`~privatenet.train.config.TrainConfig`, :class:`~privatenet.app.defences.PrivacyConfig`,
:class:`~privatenet.auditing.AuditConfig`, :class:`~privatenet.app.protocol.ProtocolConfig`)
declare every field with :func:`setting` and check every value once, in ``__post_init__``,
raising :class:`~privatenet.errors.SettingError`. The command line makes its options from the
declarations (docs/design.md §4, "Settings declared once").
"""

from __future__ import annotations

from dataclasses import Field, field


def setting(default=None, help: str = "", *, factory=None, **extra):
    """A dataclass field declared once with its command-line description: ``help``, and in
    ``extra`` any of ``choices``, ``flag`` (when not ``--<name>``), ``aliases`` (old spellings),
    ``type`` (a parser of one value) and ``list`` (``"str"`` or ``"float"``: a comma list).
    ``factory`` for a mutable default."""
    metadata = {"help": help, **extra}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def same_setting(cls: type, name: str, default=None, **changes) -> Field:
    """A field declared like ``cls``'s field ``name`` (help, choices, flag...) with its own
    ``default``: one declaration for a setting that two settings classes hold."""
    declared = cls.__dataclass_fields__[name]
    return setting(default, **(dict(declared.metadata) | changes))
