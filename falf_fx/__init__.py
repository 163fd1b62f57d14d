"""falf_fx: a structured-pruning compiler for PyTorch built on torch.fx."""
from falf_fx.passes.analysis import Analysis, ChannelGroup, GroupMember
from falf_fx.passes.plan import PruningPlan

from .api import analyze, prune, slim
from .capture import trace
from .compress import CompressResult, compress
from .methods.base import Phase
from .session import PruningSession
from .hetconv import hetconv
from .html_report import report
from .errors import (EquivalenceError, FalfError, FalfTypeError, FalfValueError, PlanError, ShapePropagationError,
                     SlimError, TraceError)
from .importance import group_importance
from .planning import plan_by_ratio, random_plan
from .serialize import load, load_into, save

__version__ = "0.1.0"

__all__ = [
    "Analysis", "ChannelGroup", "GroupMember", "PruningPlan", "analyze", "prune", "slim", "trace",
    "EquivalenceError", "FalfError", "FalfTypeError", "FalfValueError", "PlanError", "ShapePropagationError", "SlimError", "TraceError",
    "group_importance", "plan_by_ratio", "random_plan", "load", "load_into", "save", "compress", "CompressResult", "hetconv", "report",
    "Phase", "PruningSession",
]
