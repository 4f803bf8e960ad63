"""The package version (one home: setup.cfg repeats it for the build)."""

__version__ = "0.1.0"
