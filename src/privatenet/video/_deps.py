"""Lazy imports of the optional packages of the video pipeline, with one-line errors.

``av`` (PyAV, which bundles FFmpeg in its wheels) and ``opencv-python-headless`` come with the
``video`` extra; ``onnxruntime`` (for export folders) with the ``deploy`` extra. They are imported
only when a function needs them, so ``import privatenet.video`` works without either extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from privatenet.errors import PrivatenetError

#: Module name -> (pip package, extra that installs it, or None: a package of its own, such as
#: the optional second face detector).
_PACKAGES = {"av": ("av", "video"), "cv2": ("opencv-python-headless<5", "video"),
             "dlib": ("dlib-bin", None), "onnxruntime": ("onnxruntime", "deploy")}


def require(module: str, *, what: str = "privatenet video") -> ModuleType:
    """Import ``module`` (one of ``av``, ``cv2``, ``dlib``, ``onnxruntime``), or raise a one-line
    :class:`PrivatenetError` naming the package and the extra that installs it."""
    package, extra = _PACKAGES[module]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        first = (str(e).splitlines() or [""])[0]
        missing = getattr(e, "name", None) == module
        state = "is not installed" if missing else f"cannot be imported ({first})"
        how = (f'install the {extra} extra: pip install -e ".[{extra}]"' if extra
               else f"install it: pip install {package}")
        raise PrivatenetError(f"{what} needs {package!r}, which {state}; {how}") from None
