"""Where falf_fx's measured zoo step (trace, analyze, importance, plan, slim) spends its time.

cProfile over exactly the step zoo.py times, after the same warm-up, one child per
model; reports the cumulative seconds of falf_fx's main functions and the top
functions by own time.  Results: benchmarks/results/profile.json.

    python benchmarks/profile_falf.py resnet50 densenet121 mobilenet_v3_large
"""
from __future__ import annotations

import argparse
import os
import sys

from harness import emit, machine, run_child, write_json

MODELS = ("resnet50", "densenet121", "mobilenet_v3_large", "shufflenet_v2_x1_0", "vit_b_16", "swin_t",
          "det:fasterrcnn_resnet50_fpn", "seg:deeplabv3_resnet50")

# (file suffix, function name) -> what a reader calls it; cumulative times, so they nest.
WATCHED = {
    ("falf_fx/capture.py", "trace"): "trace (total)",
    ("torch/fx/_symbolic_trace.py", "trace"): "  fx symbolic trace",
    ("passes/shape_prop.py", "propagate_shapes"): "shape propagation (trace + slim re-check)",
    ("passes/analysis.py", "analyze_graph"): "analyze",
    ("falf_fx/importance.py", "group_importance"): "L1 importance",
    ("falf_fx/planning.py", "plan_by_ratio"): "plan_by_ratio (total)",
    ("falf_fx/planning.py", "_repair_emptied_axes"): "  emptied-axis repair",
    ("passes/plan.py", "build"): "  PruningPlan.build",
    ("passes/rewrite.py", "slim_graph_module"): "slim (total)",
    ("torch/fx/graph_module.py", "__deepcopy__"): "  copy of the GraphModule (cut tensors pre-sliced)",
    ("passes/rewrite.py", "_sliced_tensors"): "  parameter slicing",
}


def measure(name: str, threads: int) -> None:
    import cProfile
    import pstats
    import warnings
    warnings.simplefilter("ignore")
    import torch

    from zoo import _slim, _warm_up, build
    torch.set_num_threads(threads)
    _warm_up("falf_fx")
    model, x = build(name)
    phases: dict = {}
    profiler = cProfile.Profile()
    profiler.enable()
    _slim("falf_fx", model, x, [], phases)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # (file, line, func) -> (calls, prim calls, own s, cumulative s, callers)
    watched = {}
    for (path, _line, func), (_calls, _prim, _own, cumulative, _callers) in stats.items():
        for (suffix, watched_func), label in WATCHED.items():
            if func == watched_func and path.endswith(suffix):
                watched[label] = round(watched.get(label, 0.0) + cumulative, 3)
    top = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:15]
    own = [{"function": f"{os.sep.join(path.split(os.sep)[-2:])}:{line}({func})", "calls": calls,
            "own_s": round(own_s, 3), "cumulative_s": round(cum_s, 3)}
           for (path, line, func), (calls, _p, own_s, cum_s, _c) in top]
    total = sum(phases.values())
    emit({"model": name, "ok": True, "stage": "done", "phases_s": phases, "total_s": round(total, 3),
          "watched_cumulative_s": dict(sorted(watched.items(), key=lambda kv: list(WATCHED.values()).index(kv[0]))),
          "top_own_time": own})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(MODELS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, as in zoo.py")
    parser.add_argument("--note", help="free text stored with the machine facts")
    args = parser.parse_args()
    if args.child:
        measure(args.child, args.threads)
        return

    from rich.console import Console
    console = Console()
    facts = machine(args.threads, args.note)  # load averages before the run
    records = []
    for name in args.models:
        with console.status(f"profiling {name}"):
            record = run_child([__file__, "--child", name, "--threads", str(args.threads)],
                               stage_timeout=900, total_timeout=900, mem_limit_gib=14, stage="done")
        record.setdefault("model", name)
        records.append(record)
        if record.get("ok"):
            console.print(f"[bold]{name}[/bold] {record['total_s']:.2f} s: {record['phases_s']}", soft_wrap=True)
            for label, seconds in record["watched_cumulative_s"].items():
                console.print(f"    {label:56s} {seconds:8.3f} s", highlight=False)
        else:
            console.print(f"{name}: [red]FAIL[/red] {record.get('error')}")
    settings = {"profiler": "cProfile (adds overhead; compare shares, not absolute seconds with zoo.json)",
                "step": "zoo.py's measured falf_fx step after the same warm-up"}
    write_json("profile.json", {"machine": facts, "settings": settings,
                                "records": records})


if __name__ == "__main__":
    sys.exit(main())
