"""The package version (a module of its own, so that every layer can record it without importing the facade)."""

__version__ = "0.1.0.dev0"
