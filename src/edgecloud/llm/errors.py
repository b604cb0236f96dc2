"""Errors the engine raises for a caller's mistake (as opposed to a bug or a broken model)."""

from __future__ import annotations


class InvalidRequestError(ValueError):
    """A request or option is invalid. ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelLoadError(ValueError):
    """A model directory cannot be loaded; the message names the file or field at fault."""
