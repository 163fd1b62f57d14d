"""falf_fx's compiler passes, usable inside torch.fx's PassManager."""
from .analysis import Analysis, AnalysisPass, ChannelGroup, GroupMember, analyze_graph
from .plan import PlanError, PruningPlan
from .rewrite import SlimError, SlimPass, slim_graph_module
from .shape_prop import ShapePropagationError, propagate_shapes

__all__ = ["Analysis", "AnalysisPass", "ChannelGroup", "GroupMember", "analyze_graph", "PlanError", "PruningPlan",
           "SlimError", "SlimPass", "slim_graph_module", "ShapePropagationError", "propagate_shapes"]
