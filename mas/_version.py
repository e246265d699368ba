"""The package version, one place (pyproject.toml names the same), importable without the SDK."""

__version__ = "0.1.0"
