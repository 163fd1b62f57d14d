"""Pruning criteria, by the name users pass as ``method=``."""
from __future__ import annotations

from typing import Any

from .base import Proposal, PruningMethod, Round, ScoreMethod
from .correlation import Correlation
from .falf import FALF, Stability
from .magnitude import Magnitude
from .play_and_prune import PlayAndPrune
from .pruner_network import PrunerNetwork
from .taylor import Taylor

from ..errors import FalfValueError

__all__ = ["METHODS", "FALF", "Magnitude", "Proposal", "PruningMethod", "Round", "ScoreMethod", "Stability",
           "Taylor", "make_method"]

METHODS = {"falf": FALF, "stability": Stability, "magnitude": Magnitude, "correlation": Correlation,
           "pruner_network": PrunerNetwork, "play_and_prune": PlayAndPrune, "taylor": Taylor}


def make_method(name: str, **options: Any) -> PruningMethod:
    if name not in METHODS:
        raise FalfValueError(f"method must be one of {sorted(METHODS)}, not {name!r}")
    try:
        return METHODS[name](**options)
    except TypeError as error:
        raise FalfValueError(f"method {name!r} does not take these options: {error}") from error
