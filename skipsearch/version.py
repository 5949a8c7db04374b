"""The release, in one place: the package, its metadata and every study it creates record it."""

__version__ = "0.3.0"
