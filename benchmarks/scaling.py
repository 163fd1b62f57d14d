"""Scaling benchmark: falf_fx analysis time against graph size.

CIFAR ResNets (falf_fx.models.resnet_cifar, depth 6n+2, 20 ... 1202 layers and
one past 10,000 graph nodes) and DenseNet-BC style nets (torchvision's DenseNet,
growth 12, three blocks of L layers, up to about 10,000 nodes), 32 px inputs.
Each net runs in its own child: trace (fx + meta-tensor shapes) and analyze,
best of a few repeats.  The fit is log(time) = slope * log(size) + c, size being
the node count or the number of channel positions over all nodes (a DenseNet's
concatenations make those grow quadratically with depth); a slope near 1 means
linear.

    python benchmarks/scaling.py
    python benchmarks/scaling.py --quick        # the small half only
"""
from __future__ import annotations

import argparse
import math
import sys
import time

from harness import emit, machine, run_child, write_json

RESNET_DEPTHS = (20, 56, 110, 218, 434, 1202, 2852)
DENSENET_LAYERS = (16, 32, 64, 128, 256, 475)  # per block; DenseNet-BC depth 6L + 4


def layout_positions(analysis) -> int:
    """Channel positions over every node's output: the size of the analysis' work, not just its node count."""
    total = 0
    for layout in analysis.layouts.values():
        for part in ([layout] if isinstance(layout, dict) else [p for p in (layout or ()) if isinstance(p, dict)]):
            total += sum(len(atoms) for atoms in part.values())
    return total


def build(family: str, size: int):
    import torch
    from torchvision.models import DenseNet

    from falf_fx.models import resnet_cifar
    torch.manual_seed(0)
    if family == "resnet_cifar":
        return resnet_cifar(size)
    return DenseNet(growth_rate=12, block_config=(size,) * 3, num_init_features=24, bn_size=4, num_classes=10)


def measure(family: str, size: int, repeats: int) -> None:
    import warnings
    warnings.simplefilter("ignore")
    import torch

    import falf_fx
    torch.set_num_threads(1)  # the analysis is single-threaded Python; meta tensors run no kernels
    model = build(family, size).eval()
    x = torch.randn(1, 3, 32, 32)
    falf_fx.analyze(falf_fx.trace(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), x))  # one-off imports
    trace_s, analyze_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        gm = falf_fx.trace(model, x)
        middle = time.perf_counter()
        analysis = falf_fx.analyze(gm)
        end = time.perf_counter()
        trace_s.append(middle - start)
        analyze_s.append(end - middle)
    total = [t + a for t, a in zip(trace_s, analyze_s)]
    emit({"family": family, "size": size, "nodes": len(gm.graph.nodes), "groups": len(analysis.groups),
          "atoms": len(analysis.channel_of_atom), "layout_positions": layout_positions(analysis), "repeats": repeats,
          "trace_s": round(min(trace_s), 4), "analyze_s": round(min(analyze_s), 4),
          "trace_and_analyze_s": round(min(total), 4), "ok": True, "stage": "done"})


def loglog_slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of log(seconds) against log(size)."""
    xs, ys = [math.log(n) for n, _ in points], [math.log(t) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs), 3)


def summarise(records: list[dict]) -> dict:
    """Log-log slopes per family, and the graphs of about 10,000 nodes (the size goal)."""
    fits = {}
    for family in ("resnet_cifar", "densenet_bc"):
        ok = [r for r in records if r.get("ok") and r["family"] == family]
        if len(ok) >= 3:
            fits[family] = {f"{key}_vs_{size}": loglog_slope([(r[size], r[key]) for r in ok])
                            for size in ("nodes", "layout_positions") for key in ("trace_and_analyze_s", "analyze_s")}
    large = [{k: r[k] for k in ("family", "size", "nodes", "trace_and_analyze_s", "analyze_s")}
             for r in records if r.get("ok") and r["nodes"] >= 9_900]
    return {"fits": fits, "graphs_of_about_10k_nodes": large}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("FAMILY", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--note", help="free text stored with the machine facts")
    args = parser.parse_args()
    if args.child:
        measure(args.child[0], int(args.child[1]), args.repeats)
        return

    from rich.console import Console
    console = Console()
    facts = machine(1, args.note)  # load averages before the run
    plan = [("resnet_cifar", d) for d in RESNET_DEPTHS] + [("densenet_bc", n) for n in DENSENET_LAYERS]
    if args.quick:
        plan = [p for p in plan if p[1] <= (218 if p[0] == "resnet_cifar" else 64)]
    records = []
    with console.status("") as status:
        for family, size in plan:
            status.update(f"scaling: {family} {size}")
            record = run_child([__file__, "--child", family, str(size), "--repeats", str(args.repeats)],
                               stage_timeout=args.timeout, total_timeout=args.timeout, mem_limit_gib=14,
                               stage="done")
            record.setdefault("family", family)
            record.setdefault("size", size)
            records.append(record)
            console.print(f"{family:14s} {size:5d} " + (
                f"{record['nodes']:6d} nodes  trace+analyze {record['trace_and_analyze_s']:8.2f} s  "
                f"analyze {record['analyze_s']:7.2f} s" if record.get("ok") else f"[red]FAIL[/red] {record['error']}"))
    summary = summarise(records)
    console.print_json(data=summary)
    settings = {"input": [1, 3, 32, 32], "torch_threads": 1, "timing": "best of `repeats` runs in one process "
                "after a one-off warm-up; trace_s = fx trace + meta-tensor shapes, analyze_s = falf_fx.analyze"}
    write_json("scaling.json", {"machine": facts, "settings": settings,
                                "summary": summary, "records": records})


if __name__ == "__main__":
    sys.exit(main())
