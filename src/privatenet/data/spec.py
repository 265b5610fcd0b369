"""Data set specs: the user's ``kind:argument`` string, parsed once into a :class:`DataSpec`.

``rafdb:PATH`` (RAF-DB basic root), ``manifest:FILE.csv`` (any data set),
``synthfaces[:key=value,...]`` (the built-in generated faces) and ``digits[:key=value,...]``
(scikit-learn's real handwritten digits, shipped with scikit-learn), see ``docs/design.md`` §4.2.
Paths become absolute and synthfaces and digits options are validated and completed with their
defaults here, so ``str(spec)`` is a canonical string that names the same data from any working
directory, and a spec saved with a run reloads the same data later.

This module also holds the limits every loader shares: :func:`check_image_size` and
:func:`check_fits_in_memory`.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

from privatenet.checks import check_seed
from privatenet.errors import PrivatenetError, SettingError

__all__ = [
    "DIGITS_DEFAULTS",
    "DataSpec",
    "KINDS",
    "MAX_IMAGE_SIZE",
    "MEMORY_FRACTION",
    "MIN_IMAGE_SIZE",
    "SYNTHFACES_DEFAULTS",
    "SYNTHFACES_MAX_N",
    "SYNTHFACES_MIN_N",
    "check_digits_options",
    "check_fits_in_memory",
    "check_image_size",
    "check_synthfaces_options",
    "parse_spec",
]

log = logging.getLogger(__name__)

#: The data set kinds a spec may name.
KINDS = ("rafdb", "manifest", "synthfaces", "digits")

#: Smallest and largest image side in pixels. Below 8 px no network of this package has a
#: feature map left; 1024 px is far above the paper's 224 px and keeps one image at 3 MiB.
MIN_IMAGE_SIZE = 8
MAX_IMAGE_SIZE = 1024

#: A data set whose decoded uint8 tensor needs more than this share of physical memory is
#: refused before decoding: training needs the rest (model, batches, the OS).
MEMORY_FRACTION = 0.8

#: synthfaces options in canonical order; ``test_fraction`` is optional (None: RAF-DB's split).
SYNTHFACES_KEYS = ("n", "size", "seed", "test_fraction")
SYNTHFACES_DEFAULTS = {"n": 5000, "size": 64, "seed": 0}
SYNTHFACES_MIN_N = 10
#: synthfaces stands in for RAF-DB's 15,339 faces; 200,000 is 13 times that, enough for any
#: scaling experiment, and stops a typo such as n=100000000 from drawing faces for hours
#: until memory runs out.
SYNTHFACES_MAX_N = 200_000

#: digits options in canonical order, all always present. size 64 (as synthfaces and the
#: ``arm_small`` model) works with every model but ``arm_resnet18`` (65 px and up); 0.25 is
#: scikit-learn's own default test share.
DIGITS_KEYS = ("size", "seed", "test_fraction")
DIGITS_DEFAULTS = {"size": 64, "seed": 0, "test_fraction": 0.25}

#: The kinds named by ``kind[:key=value,...]`` options rather than a path: keys in canonical
#: order, and a canonical example for messages.
_OPTION_KEYS = {"synthfaces": SYNTHFACES_KEYS, "digits": DIGITS_KEYS}
_EXAMPLES = {"synthfaces": "synthfaces:n=5000,size=64,seed=0",
             "digits": "digits:size=64,seed=0,test_fraction=0.25"}

_SPEC_HINT = ("use rafdb:PATH, manifest:FILE.csv, synthfaces[:n=5000,size=64,seed=0] or "
              "digits[:size=64,seed=0,test_fraction=0.25]")


# --------------------------------------------------------------------------------------------
# Shared limits
# --------------------------------------------------------------------------------------------


def check_image_size(value: object, *, name: str = "image_size") -> int | None:
    """Return ``value`` as an int if it is ``None`` or an integer in 8..1024, else raise.

    The one image-size check of every loader, the decode cache and synthfaces. ``name`` is the
    parameter named in the one-line :class:`PrivatenetError` (``image_size`` unless a caller
    checks another parameter, such as synthfaces' ``size``).
    """
    if value is None:
        return None
    # bool is an Integral, but image_size=True is a mistake, not 1 pixel.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SettingError(name, value, "is not an integer; give an integer "
                                        f"{MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}")
    if not MIN_IMAGE_SIZE <= value <= MAX_IMAGE_SIZE:
        raise SettingError(name, value, "is out of range; give an integer "
                                        f"{MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}")
    return int(value)


def physical_memory() -> int | None:
    """Bytes of physical memory, or ``None`` where ``os.sysconf`` cannot tell (not Linux)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None
    return total if total > 0 else None


def check_fits_in_memory(n_images: int, side: int, *, what: str, param: str = "image_size",
                         alternative: str = "") -> None:
    """Raise a one-line error if ``n_images`` uint8 images of 3 x ``side`` x ``side`` bytes need
    more than 80 % of physical memory; do nothing where the memory size is unknown.

    Called before decoding or drawing, so a too-large ``image_size`` fails in a second instead
    of swapping for minutes and being killed. ``what`` names the data (a file, a spec); the
    message suggests the largest ``param`` that fits, plus ``alternative`` if given.
    """
    total = physical_memory()
    if total is None or n_images <= 0:
        return
    need = n_images * 3 * side * side
    limit = int(MEMORY_FRACTION * total)
    if need <= limit:
        return
    fits = math.isqrt(limit // (3 * n_images))
    if fits >= MIN_IMAGE_SIZE:
        fix = f"pass a smaller {param} (at most {param}={min(fits, MAX_IMAGE_SIZE)} fits)"
    else:
        fix = "use fewer images"
    if alternative:
        fix += f" {alternative}"
    raise PrivatenetError(
        f"{what}: {n_images} images at {side}x{side} pixels need {need / 2**30:.1f} GiB, more "
        f"than {MEMORY_FRACTION:.0%} of this machine's {total / 2**30:.1f} GiB of memory; {fix}"
    )


def check_synthfaces_options(
    *, n: object, size: object, seed: object, test_fraction: object = None
) -> dict[str, int | float]:
    """Validated synthfaces options as ``{"n", "size", "seed"[, "test_fraction"]}``.

    ``n`` 10..200000, ``size`` 8..1024 (:func:`check_image_size`), ``seed`` >= 0 and
    ``test_fraction`` ``None`` or a number in (0, 1). Raises a one-line error naming the option.
    """
    out: dict[str, int | float] = {}
    for key, value in (("n", n), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise PrivatenetError(f"synthfaces:{key}={value!r} is not an integer; give an integer")
    if not SYNTHFACES_MIN_N <= n <= SYNTHFACES_MAX_N:
        raise PrivatenetError(
            f"synthfaces:n={n!r} is out of range; give n {SYNTHFACES_MIN_N}..{SYNTHFACES_MAX_N} "
            "(synthfaces stands in for RAF-DB's 15,339 faces)"
        )
    out["n"] = int(n)
    if size is None:
        raise PrivatenetError(
            f"synthfaces size=None is not an integer; give an integer "
            f"{MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}"
        )
    out["size"] = check_image_size(size, name="synthfaces size")
    out["seed"] = check_seed(seed, name="synthfaces:seed")
    if test_fraction is not None:
        out["test_fraction"] = _check_test_fraction("synthfaces", test_fraction)
    return out


def check_digits_options(
    *, size: object = DIGITS_DEFAULTS["size"], seed: object = DIGITS_DEFAULTS["seed"],
    test_fraction: object = DIGITS_DEFAULTS["test_fraction"]
) -> dict[str, int | float]:
    """Validated digits options as ``{"size", "seed", "test_fraction"}``.

    ``size`` 8..1024 (:func:`check_image_size`), ``seed`` an integer >= 0 and ``test_fraction``
    a number in (0, 1). Raises a one-line error naming the option.
    """
    if size is None:
        raise PrivatenetError(
            f"digits size=None is not an integer; give an integer "
            f"{MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}"
        )
    return {
        "size": check_image_size(size, name="digits size"),
        "seed": check_seed(seed, name="digits:seed"),
        "test_fraction": _check_test_fraction("digits", test_fraction),
    }


def _check_test_fraction(kind: str, test_fraction: object) -> float:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real):
        raise PrivatenetError(
            f"{kind}:test_fraction={test_fraction!r} is not a number; give 0 < x < 1"
        )
    # NaN fails this comparison too.
    if not 0 < test_fraction < 1:
        raise PrivatenetError(
            f"{kind}:test_fraction={test_fraction!r} is out of range; give 0 < x < 1"
        )
    return float(test_fraction)


# --------------------------------------------------------------------------------------------
# DataSpec
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """A parsed data set spec (``docs/design.md`` §4.2); build it with :func:`parse_spec`.

    ``kind``: ``"rafdb"``, ``"manifest"``, ``"synthfaces"`` or ``"digits"``. ``path``: the
    absolute RAF-DB root or manifest CSV (``None`` for synthfaces and digits). ``options``:
    synthfaces' or digits' ``(key, value)`` pairs, complete and in canonical order (synthfaces:
    ``n``, ``size``, ``seed``, then ``test_fraction`` if given; digits: ``size``, ``seed``,
    ``test_fraction``), values as canonical strings; empty for the other kinds. Equal specs
    name the same data, and ``str(spec)`` is accepted by :func:`parse_spec` again.
    """

    kind: str
    path: Path | None = None
    options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # Checked here too, so that a spec built by hand or by from_dict is as valid as a
        # parsed one.
        if self.kind not in KINDS:
            raise PrivatenetError(f"unknown dataset kind {self.kind!r}; {_SPEC_HINT}")
        if self.kind in _OPTION_KEYS:
            if self.path is not None or self.options != _options(self.kind, self.options):
                raise PrivatenetError(
                    f"DataSpec {self.kind}:{self.options!r} is not canonical; build it with "
                    f"parse_spec({_EXAMPLES[self.kind]!r})"
                )
        elif not isinstance(self.path, Path) or not self.path.is_absolute() or self.options:
            raise PrivatenetError(
                f"DataSpec {self.kind} needs an absolute path and no options, got "
                f"path={self.path!r}; build it with parse_spec('{self.kind}:PATH')"
            )

    def __str__(self) -> str:
        if self.kind in _OPTION_KEYS:
            return f"{self.kind}:" + ",".join(f"{k}={v}" for k, v in self.options)
        return f"{self.kind}:{self.path}"

    def kwargs(self) -> dict[str, int | float]:
        """synthfaces or digits options as typed keyword arguments of ``make_synthfaces`` or
        ``make_digits`` ({} otherwise)."""
        return {k: float(v) if k == "test_fraction" else int(v) for k, v in self.options}

    def to_dict(self) -> dict:
        """Plain JSON values for run metadata: ``{"kind", "path", "options"}``."""
        return {
            "kind": self.kind,
            "path": None if self.path is None else str(self.path),
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, data: object) -> DataSpec:
        """The spec saved by :meth:`to_dict`, validated like a parsed string."""
        if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
            raise PrivatenetError(
                f"data spec {data!r} is not a dict with a 'kind'; give DataSpec.to_dict() output"
            )
        kind, path, options = data["kind"], data.get("path"), data.get("options") or {}
        if not isinstance(options, dict):
            raise PrivatenetError(f"data spec options {options!r} are not a dict; give key: value")
        if kind in _OPTION_KEYS:
            text = f"{kind}:" + ",".join(f"{k}={v}" for k, v in options.items())
        else:
            text = f"{kind}:{path or ''}"
        return parse_spec(text)


def parse_spec(spec: str | DataSpec) -> DataSpec:
    """Parse ``kind:argument`` into a :class:`DataSpec` (a DataSpec is returned unchanged).

    Paths become absolute (``~`` expanded, symlinks resolved) so the spec works from any working
    directory; synthfaces and digits options are validated (:func:`check_synthfaces_options`,
    :func:`check_digits_options`) and completed with their defaults. Raises a one-line
    :class:`PrivatenetError` naming the bad part.
    """
    if isinstance(spec, DataSpec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a str or DataSpec, got {type(spec).__name__}")
    kind, _, arg = spec.partition(":")
    if kind not in KINDS:
        raise PrivatenetError(f"unknown dataset spec {spec!r}; {_SPEC_HINT}")
    if kind in _OPTION_KEYS:
        return DataSpec(kind, None, _options(kind, _split_items(kind, arg)))
    if not arg.strip():
        raise PrivatenetError(f"dataset spec {spec!r} needs a path after the colon")
    try:
        path = Path(arg).expanduser().resolve()
    except (RuntimeError, OSError) as exc:  # unknown ~user, symlink loop
        raise PrivatenetError(f"dataset spec {spec!r}: cannot resolve the path ({exc})") from None
    return DataSpec(kind, path)


def _split_items(kind: str, arg: str) -> list[tuple[str, str]]:
    """``"n=5, seed=1"`` -> ``[("n", "5"), ("seed", "1")]``, checking ``kind``'s keys, not
    values."""
    keys = _OPTION_KEYS[kind]
    valid = ", ".join(keys)
    items: list[tuple[str, str]] = []
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or key not in keys:
            raise PrivatenetError(
                f"{kind} spec item {item!r} is not key=value with a known key; "
                f"valid keys: {valid} (e.g. {_EXAMPLES[kind]})"
            )
        if any(k == key for k, _ in items):
            raise PrivatenetError(f"{kind} spec repeats key {key!r}; give each key once")
        items.append((key, value))
    return items


def _options(kind: str, items) -> tuple[tuple[str, str], ...]:
    """Validated, complete synthfaces or digits options in canonical order and canonical
    strings."""
    keys = _OPTION_KEYS[kind]
    valid = ", ".join(keys)
    defaults = SYNTHFACES_DEFAULTS if kind == "synthfaces" else DIGITS_DEFAULTS
    check = check_synthfaces_options if kind == "synthfaces" else check_digits_options
    typed: dict[str, int | float] = dict(defaults)
    for key, value in items:
        if key not in keys:
            raise PrivatenetError(f"{kind} option {key!r} is unknown; valid keys: {valid}")
        try:
            typed[key] = float(value) if key == "test_fraction" else int(value)
        except (TypeError, ValueError):
            what = "a number" if key == "test_fraction" else "an integer"
            raise PrivatenetError(
                f"{kind} spec value {key}={value!r} is not {what}; give {key}=<{what}> "
                f"(valid keys: {valid})"
            ) from None
    checked = check(**typed)
    # repr() of a float round-trips exactly, so str(spec) reloads the same split.
    return tuple((k, repr(checked[k]) if k == "test_fraction" else str(checked[k]))
                 for k in keys if k in checked)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def builtin_options(spec: str | DataSpec, kind: str, image_size: int | None) -> dict:
    """The options of a built-in data set (``synthfaces``, ``digits``) from a :class:`DataSpec`,
    a full spec string or the part after ``<kind>:``, with ``image_size`` (if given) in place
    of ``size``. One-line errors for a spec of another kind or a bad option."""
    if isinstance(spec, str) and not spec.startswith(kind):
        spec = f"{kind}:{spec}"
    data_spec = parse_spec(spec)
    if data_spec.kind != kind:
        raise PrivatenetError(f"spec {str(data_spec)!r} is not a {kind} spec; use load_dataset")
    kwargs = data_spec.kwargs()
    if image_size is not None:
        kwargs["size"] = image_size
    return kwargs
