"""Lazy imports of the optional packages of the video pipeline, with one-line errors.

``av`` (PyAV, which bundles FFmpeg in its wheels) and ``opencv-python-headless`` come with the
``video`` extra; ``onnxruntime`` (for export folders) with the ``deploy`` extra. They are imported
only when a function needs them, so ``import privatenet.video`` works without either extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from privatenet.errors import PrivatenetError

#: Module name -> (pip package, extra that installs it).
_PACKAGES = {"av": ("av", "video"), "cv2": ("opencv-python-headless<5", "video"),
             "onnxruntime": ("onnxruntime", "deploy")}


def require(module: str, *, what: str = "privatenet video") -> ModuleType:
    """Import ``module`` (one of ``av``, ``cv2``, ``onnxruntime``), or raise a one-line
    :class:`PrivatenetError` naming the package and the extra that installs it."""
    package, extra = _PACKAGES[module]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        first = (str(e).splitlines() or [""])[0]
        missing = getattr(e, "name", None) == module
        state = "is not installed" if missing else f"cannot be imported ({first})"
        raise PrivatenetError(f"{what} needs {package!r}, which {state}; install the {extra} "
                              f'extra: pip install -e ".[{extra}]"') from None
