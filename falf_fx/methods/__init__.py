"""Pruning methods: ``compress(method=...)`` takes one of their names (with its defaults) or a method object.

A method object is ours with options (``FALF(aux_epochs=2)``, ``Magnitude("l2")``) or
your own class following :class:`PruningMethod`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Union

from ..errors import FalfTypeError, FalfValueError
from .base import MethodBase, Proposal, PruningMethod, Round, ScoreMethod
from .correlation import Correlation
from .falf import FALF, Stability
from .magnitude import Magnitude
from .play_and_prune import PlayAndPrune
from .pruner_network import PrunerNetwork
from .taylor import Taylor

__all__ = ["METHODS", "Correlation", "FALF", "Magnitude", "MethodBase", "PlayAndPrune", "PrunerNetwork", "Proposal",
           "PruningMethod", "Round", "ScoreMethod", "Stability", "Taylor", "make_method", "method_options",
           "resolve_method"]

METHODS = {cls.name: cls for cls in (FALF, Stability, Magnitude, Correlation, PrunerNetwork, PlayAndPrune, Taylor)}
_PROTOCOL = ("name", "default_rounds", "propose", "observe", "state", "load_state")


def make_method(name: str, **options: Any) -> PruningMethod:
    """Our method called ``name``, built with ``options`` (the command line's --method-option)."""
    if name not in METHODS:
        raise FalfValueError(f"method must be one of {sorted(METHODS)} or a method object, not {name!r}")
    try:
        return METHODS[name](**options)
    except TypeError as error:
        raise FalfValueError(f"method {name!r} does not take these options: {error}") from error


def resolve_method(method: Union[str, PruningMethod]) -> PruningMethod:
    """A name (with its defaults) or a method object, checked against the protocol before any work."""
    if isinstance(method, str):
        return make_method(method)
    if isinstance(method, type):
        raise FalfTypeError(f"method= takes a method object, not the class {method.__name__}: "
                            f"write method={method.__name__}() (options go to its constructor)")
    missing = [attr for attr in _PROTOCOL if not hasattr(method, attr)]
    if missing:
        raise FalfTypeError(f"method {type(method).__name__} lacks {', '.join(missing)}: a method follows "
                            "falf_fx.methods.PruningMethod (subclass ScoreMethod and write scores(round_))")
    return method


def method_options(method: PruningMethod) -> dict[str, Any]:
    """The options a method object was built with that differ from its defaults (for reports)."""
    if not dataclasses.is_dataclass(method):
        return {}
    options = {}
    for f in dataclasses.fields(method):
        value = getattr(method, f.name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if f.init and value != default:
            options[f.name] = value if isinstance(value, (bool, int, float, str, type(None), list, tuple)) else repr(value)
    return options
