"""Errors a user can act on; each message names the module or node and the fix."""
from falf_fx.passes.errors import FalfError, FalfTypeError, FalfValueError
from falf_fx.passes.plan import PlanError
from falf_fx.passes.rewrite import SlimError
from falf_fx.passes.shape_prop import ShapePropagationError

__all__ = ["first_line", "FalfError", "FalfTypeError", "FalfValueError", "TraceError", "PlanError", "SlimError",
           "ShapePropagationError", "EquivalenceError"]


class TraceError(FalfError):
    """torch.fx could not trace the model's top level."""


class EquivalenceError(FalfError, AssertionError):
    """The slim model does not compute what the masked original computes."""


def first_line(error: BaseException) -> str:
    """An error's first non-empty line, or its type: what one-line messages quote of a cause."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
