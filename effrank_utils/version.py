"""The package version (one home: the package facade and the run records read it here)."""

__version__ = "0.1.0"
