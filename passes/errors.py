"""The root of every error falf_fx raises on purpose, so one ``except FalfError`` catches them all.

A user's mistake is a FalfError whose message says what went wrong and the fix; it
is also the builtin it is (a bad value a ``ValueError``, a wrong kind of argument a
``TypeError``), so code that catches those keeps working.  Anything else that
escapes falf_fx is a bug, and the CLI says so.
"""

__all__ = ["FalfError", "FalfTypeError", "FalfValueError"]


class FalfError(Exception):
    """Base class of falf_fx's own errors."""


class FalfValueError(FalfError, ValueError):
    """A value that cannot work (a ratio of 1.5, a target that cannot be reached, a file of another format)."""


class FalfTypeError(FalfError, TypeError):
    """An argument of the wrong kind (a dict where a model goes)."""
