"""How far a latency ratio can be trusted on this machine: two copies of one model timed against each other.

A latency target is only as good as the ratio behind it.  Here the original and
a deep copy of it (the true ratio is 1) are timed back to back, in turns first,
as ``falf_fx.latency.latency_ratio`` times a slim model against the original,
and so are the original and ``prune(ratio=0.5)``'s slim model.  The spread of
the pairs' ratios (coefficient of variation) says how many pairs a 1% answer
takes; wall time and process CPU time are both recorded, to tell contention
(both spread) from the virtual CPU being descheduled (only wall time spreads).

    python benchmarks/latency_noise.py                     # ResNet-50, batch 1, 60 pairs
    python benchmarks/latency_noise.py mobilenet_v2 --pairs 30
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

from harness import machine, write_json


def _pairs(model, other, x, pairs: int, clock, min_run_time: float) -> list[float]:
    import torch
    from torch.utils import benchmark

    def seconds(module) -> float:
        timer = benchmark.Timer(stmt="m(x)", globals={"m": module, "x": x}, num_threads=1, timer=clock)
        with torch.inference_mode():
            return timer.blocked_autorange(min_run_time=min_run_time).median

    ratios = []
    for index in range(pairs):  # in turns first, as latency_ratio times them
        order = (other, model) if index % 2 == 0 else (model, other)
        timed = {id(m): seconds(m) for m in order}
        ratios.append(timed[id(other)] / timed[id(model)])
    return ratios


def _summary(ratios: list[float]) -> dict:
    median = statistics.median(ratios)
    cv = statistics.pstdev(ratios) / statistics.mean(ratios)
    return {"pairs": len(ratios), "median": round(median, 4), "min": round(min(ratios), 4),
            "max": round(max(ratios), 4), "cv": round(cv, 4),
            "pairs_for_1pct_median": round((1.25 * cv / 0.01) ** 2),  # the median's error is ~1.25 sigma/sqrt(n)
            "ratios": [round(r, 4) for r in ratios]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="resnet50")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--min-run-time", type=float, default=0.05, help="seconds behind each timing (prune's own)")
    parser.add_argument("--note", help="free text stored with the machine facts")
    args = parser.parse_args()

    import warnings
    warnings.simplefilter("ignore")
    import torch
    import torchvision
    from rich.console import Console

    import falf_fx

    torch.set_num_threads(1)
    torch.manual_seed(0)
    facts = machine(1, args.note)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    others = {"copy": copy.deepcopy(model), "slim": falf_fx.prune(model, x, ratio=0.5).eval()}
    x = x.expand(args.batch, -1, -1, -1).contiguous()
    results, console = {}, Console()
    for clock_name, clock in (("wall", time.perf_counter), ("process_cpu", time.process_time)):
        for key, other in others.items():
            summary = _summary(_pairs(model, other, x, args.pairs, clock, args.min_run_time))
            results[f"{key}_{clock_name}"] = summary
            console.print(f"{args.model} b{args.batch} {key:4s} {clock_name:11s}: median {summary['median']:.4f} "
                          f"range {summary['min']:.3f}-{summary['max']:.3f} cv {summary['cv']:.1%} "
                          f"(~{summary['pairs_for_1pct_median']} pairs for a 1% median)", highlight=False)
    write_json("latency_noise.json", {"machine": facts, "settings": {
        "model": args.model, "batch": args.batch, "threads": 1, "min_run_time": args.min_run_time,
        "protocol": "back-to-back pairs, in turns first, torch.utils.benchmark blocked_autorange median each"},
        "results": results})


if __name__ == "__main__":
    sys.exit(main())
