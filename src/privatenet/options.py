"""What the command line (:mod:`privatenet.cli`) makes from the settings declarations: options,
the settings objects they fill, a ``--config`` file's values, and the one-line error of a
refused value spelled with its flag (docs/design.md §4, "Settings declared once").
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import fields
from pathlib import Path

import torch

from privatenet.errors import PrivatenetError, SettingError
from privatenet.readers import MAX_CONFIG_BYTES, brief, load_yaml

#: Config-file keys of options that were renamed (the old command-line spellings still parse).
RENAMED = {"loss": "defence", "losses": "defences", "adversarial_update": "adversary_update"}
_TYPES = {"int": int, "float": float, "str": str}


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one :class:`PrivatenetError` line, not a usage
    block (subparsers are of this class too)."""

    def error(self, message: str):
        raise PrivatenetError(f"{message}; see '{self.prog} --help'")


def argparse_type(check):
    """``check`` (a library check that returns the value or raises PrivatenetError) as an
    argparse type: its error becomes argparse's (and a config file's) one-line error."""
    def parse(value: str):
        try:
            return check(value)
        except PrivatenetError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = check.__name__
    return parse


def _flag(f) -> tuple[str, str]:
    """A declared field's long option and its argparse dest."""
    flag = f.metadata.get("flag", f"--{f.name.replace('_', '-')}")
    if f.type == "bool" and f.default is True:  # on by default: a switch that turns it off
        flag = f"--no-{f.name.replace('_', '-')}"
    return flag, flag[2:].replace("-", "_")


def _declared(cls, names) -> list:
    """The declared fields (those with help) of ``cls``, all or those among ``names``."""
    found = [f for f in fields(cls) if "help" in f.metadata]
    if names is None:
        return found
    by_name = {f.name: f for f in found}
    return [by_name[n] for n in names]


def add_settings(g, cls, names: tuple[str, ...] | None = None, *, defaults: dict | None = None,
                 unset: bool = False, required: tuple[str, ...] = ()) -> None:
    """Options for the declared fields of the settings class ``cls`` (all, or ``names``), made
    from their declaration (:func:`privatenet.settings.setting`). ``defaults``: this command's
    own; ``unset``: no default at all (a preset or the library decides); ``required``: the
    fields this command cannot do without. Each option remembers its field (``.setting``)."""
    for f in _declared(cls, names):
        flag, dest = _flag(f)
        default = None if unset else (defaults or {}).get(f.name, f.default)
        help = f.metadata["help"].replace("%", "%%") + (
            "" if unset or f.type == "bool" or default is None else f" (default {default})")
        if f.type == "bool":
            action = g.add_argument(flag, dest=dest, action="store_true",
                                    default=None if unset else False,
                                    help=f"turn off {help}" if f.default is True else help)
        else:
            parse = (argparse_type(f.metadata["type"]) if "type" in f.metadata
                     else _TYPES.get(f.type.split(" |")[0], str))
            action = g.add_argument(flag, *f.metadata.get("aliases", ()), dest=dest,
                                    type=str if "list" in f.metadata else parse,
                                    default=default, choices=f.metadata.get("choices"),
                                    help=help, required=f.name in required)
        action.setting = f.name


def given(args, cls, names: tuple[str, ...] | None = None) -> dict:
    """The declared fields of ``cls`` (all, or ``names``) that were given or have a command
    default, by field name: comma lists split, a ``--no-`` switch turned into its value."""
    out = {}
    for f in _declared(cls, names):
        value = getattr(args, _flag(f)[1], None)
        if value is None:
            continue
        if f.type == "bool" and f.default is True:
            value = not value
        elif "list" in f.metadata:
            value = split_list(value, float if f.metadata["list"] == "float" else str)
        out[f.name] = value
    return out


def split_list(value: str, cast=str) -> list:
    """``"a, b"`` -> ``["a", "b"]`` (each value cast), else a one-line error."""
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise PrivatenetError(
            f"cannot read the list {value!r}; give comma-separated values") from None


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser of each subcommand, by name."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The options (not positionals, not --help) of a parser, by dest."""
    return {a.dest: a for a in parser._actions
            if a.option_strings and not isinstance(a, argparse._HelpAction)}


def error_line(e: PrivatenetError, parser: argparse.ArgumentParser) -> str:
    """The message of ``e``; a refused setting (and any it mentions) that ``parser`` has an
    option for is spelled with its flag (``--seed -5 is invalid; ...``), whatever the field's
    own name (``vib_channels`` is ``--bottleneck-channels``)."""
    if not isinstance(e, SettingError):
        return str(e)
    opts = options(parser)
    by_setting = opts | {a.setting: a for a in opts.values() if hasattr(a, "setting")}

    def flag(name: str) -> str | None:
        action = by_setting.get(name)
        return None if action is None else next(
            s for s in action.option_strings if s.startswith("--"))

    own = flag(e.name)
    if own is None:
        setting = f"{e.name}={e.value!r}"
    elif e.value is None or by_setting[e.name].nargs == 0:
        setting = own if e.value in (None, True) else f"without {own}"
    else:
        setting = f"{own} {e.value}"
    return e.spelled(setting, lambda name: flag(name) or e.mentions[name])


def _config_value(action: argparse.Action, value):
    """``value`` from a config file converted as the command line would convert it, or a
    ``ValueError`` saying what the option expects."""
    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            raise ValueError("true or false")
        return value
    kind = {int: "an integer", float: "a number"}.get(action.type, "a string")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(kind + ("" if action.type else " (quote it)"))
    try:
        value = action.type(str(value)) if action.type else str(value)
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"a valid value ({e})") from None
    except ValueError:
        raise ValueError(kind) from None
    if action.choices is not None and value not in action.choices:
        raise ValueError("one of " + ", ".join(map(str, action.choices)))
    return value


def load_config_defaults(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Apply a ``--config`` YAML file as defaults of every subcommand that has the option.

    Each value is checked and converted like the option's command-line value; an option the
    file supplies is no longer required on the command line.
    """
    pre = Parser(prog="privatenet", add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return
    path = Path(known.config)
    # Bounded: a regular file of at most 1 MiB, 64 levels deep, 10,000 nodes after aliases.
    values = load_yaml(path, limit=MAX_CONFIG_BYTES, what="config file") or {}
    if not isinstance(values, dict):
        raise PrivatenetError(f"{path}: must be a mapping of option: value")
    commands = {name: options(sp) for name, sp in subparsers(parser).items()}
    known_keys = sorted({dest for opts in commands.values() for dest in opts})
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        dest = RENAMED.get(dest, dest)
        if dest not in known_keys:
            close = difflib.get_close_matches(dest, known_keys, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PrivatenetError(f"{path}: unknown option {brief(key)}{hint}; the keys are the "
                                  f"long options of the subcommands: {', '.join(known_keys)}")
        if value is None:  # an empty value leaves the option at its default
            continue
        for name, opts in commands.items():
            action = opts.get(dest)
            if action is None:
                continue
            try:
                action.default = _config_value(action, value)
            except ValueError as e:
                raise PrivatenetError(f"{path}: {key}: {brief(value)} is invalid for "
                                      f"'{name} {action.option_strings[-1]}'; give {e}") from None
            action.required = False


def os_message(e: OSError) -> str:
    """``path: reason`` of an operating-system error."""
    reason = e.strerror or str(e)
    return f"{e.filename}: {reason}" if e.filename is not None else reason


def torch_failure(e: RuntimeError) -> str | None:
    """One line with the fix for the failures of torch that a user causes and can mend (memory
    exhausted by a large batch or image size, torch.compile without a working toolchain);
    ``None`` for any other error, which stays a traceback (a bug to report)."""
    text = str(e).strip()
    first = " ".join(text.splitlines()[0].split())[:200] if text else type(e).__name__
    if isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in text or (
            "out of memory" in text.lower()):
        return (f"out of memory ({first}); lower --batch-size (or --image-size), or use a "
                "device with more memory")
    dynamo = getattr(torch, "_dynamo", None)
    failed = getattr(getattr(dynamo, "exc", None), "BackendCompilerFailed", ())
    if failed and isinstance(e, failed):
        return (f"torch.compile failed ({first}); leave out --compile, or install the "
                "compiler toolchain it names (apt-get install g++)")
    return None
