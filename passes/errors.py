"""The root of every error falf_fx raises on purpose, so one ``except FalfError`` catches them all."""

__all__ = ["FalfError"]


class FalfError(Exception):
    """Base class of falf_fx's own errors."""
