"""The package's version: a bottom-layer module, so that run folders can record it without
importing the package root (which imports the whole library). ``pyproject.toml`` reads it."""

__version__ = "0.1.0"
