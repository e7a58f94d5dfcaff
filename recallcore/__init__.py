"""recallcore: the token revocation server."""

__version__ = "0.1.0"
