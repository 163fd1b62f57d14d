"""Latency benchmark: falf_fx.prune(ratio=0.5) slim model against the original, on CPU.

For each model (its own child process): MACs of both (the ratio is the physical
limit of the speed-up), then forward latency with torch.utils.benchmark at batch
1 and 32, under inference_mode and a fixed thread count.  Original and slim are
measured alternately, round after round, so that load from other work on a
shared machine hits both alike; each reported time is the median over rounds.

    python benchmarks/latency.py                 # all five models
    python benchmarks/latency.py resnet50 --rounds-32 2
    python benchmarks/latency.py --round-to auto --out latency_snapped.json   # round_to="auto" (measured snapping)
"""
from __future__ import annotations

import argparse
import statistics
import sys

from harness import emit, machine, run_child, write_json

MODELS = ("resnet50", "mobilenet_v2", "vgg16", "densenet121", "efficientnet_b0")


def _latencies(models: dict, batch: int, rounds: int, threads: int, min_run_time: float) -> dict:
    """Median seconds per forward of each model; one block per model per round, alternating.

    Timer warms up by itself (blocked_autorange while sizing its blocks, timeit(1)
    with two untimed runs first), so a batch-32 round costs three forwards.
    """
    import torch
    from torch.utils.benchmark import Timer

    x = torch.randn(batch, 3, 224, 224)
    timers = {}
    for key, model in models.items():
        def forward(model=model):
            with torch.inference_mode():
                model(x)
        timers[key] = Timer(stmt="forward()", globals={"forward": forward}, num_threads=threads)
    samples = {key: [] for key in models}
    for _ in range(rounds):
        for key, timer in timers.items():
            if batch == 1:
                samples[key].append(timer.blocked_autorange(min_run_time=min_run_time).median)
            else:
                samples[key].append(timer.timeit(1).median)
    return {key: {"median_s": statistics.median(v), "samples_s": [round(s, 5) for s in v]}
            for key, v in samples.items()}


def measure(name: str, threads: int, rounds_1: int, rounds_32: int, round_to) -> None:
    import warnings
    warnings.simplefilter("ignore")
    import torch
    import torchvision

    import falf_fx
    from falf_fx.flops import count_cost

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    if round_to == "auto":  # snapped to the multiple measured fastest at batch 32, this thread count
        from falf_fx.latency import LatencySettings
        slim = falf_fx.prune(model, x, ratio=0.5, round_to="auto",
                             latency=LatencySettings(batch_size=32, threads=threads, min_run_time=0.2)).eval()
    else:
        slim = falf_fx.prune(model, x, ratio=0.5, round_to=round_to).eval()
    before, after = count_cost(model, x), count_cost(slim, x)
    record = {"model": name, "macs_before": before.macs, "macs_after": after.macs,
              "macs_ratio": round(after.macs / before.macs, 4), "params_ratio": round(after.params / before.params, 4)}
    if "falf_fx_round_to" in slim.meta:
        record["round_to"] = slim.meta["falf_fx_round_to"]
    emit({**record, "stage": "pruned"})
    pair = {"original": model, "slim": slim}
    for batch, rounds in ((1, rounds_1), (32, rounds_32)):
        times = _latencies(pair, batch, rounds, threads, min_run_time=0.5)
        ratio = times["slim"]["median_s"] / times["original"]["median_s"]
        record[f"batch_{batch}"] = {"rounds": rounds, **times, "latency_ratio": round(ratio, 4),
                                    "speedup": round(1 / ratio, 3),
                                    "share_of_mac_limit": round(record["macs_ratio"] / ratio, 3)}
    emit({**record, "ok": True, "stage": "done"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(MODELS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 by default: on a shared machine extra threads stall in "
                             "OpenMP barriers; use the core count on an idle one)")
    parser.add_argument("--rounds-1", type=int, default=5, help="alternating rounds at batch 1 (0.5 s blocks)")
    parser.add_argument("--rounds-32", type=int, default=2, help="alternating rounds at batch 32 (one forward each)")
    parser.add_argument("--round-to", default=None, help="prune's round_to: a number, or 'auto' (measured at "
                                                         "batch 32)")
    parser.add_argument("--out", default="latency.json", help="results file name under results/")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--note", help="free text stored with the machine facts")
    args = parser.parse_args()
    if args.child:
        measure(args.child, args.threads, args.rounds_1, args.rounds_32,
                args.round_to if args.round_to in (None, "auto") else int(args.round_to))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console()
    facts = machine(args.threads, args.note)  # load averages before the run
    records = []
    with console.status("") as status:
        for name in args.models:
            status.update(f"latency: {name}")
            records.append(run_child([__file__, "--child", name, "--threads", str(args.threads),
                                      "--rounds-1", str(args.rounds_1), "--rounds-32", str(args.rounds_32),
                                      *(["--round-to", args.round_to] if args.round_to else [])],
                                     stage_timeout=args.timeout, total_timeout=args.timeout, mem_limit_gib=14,
                                     stage="done"))
            r = records[-1]
            summary = (f"MACs x{r['macs_ratio']:.3f}  latency x{r['batch_1']['latency_ratio']:.3f} (b1)  "
                       f"x{r['batch_32']['latency_ratio']:.3f} (b32)") if r.get("ok") else f"FAIL {r.get('error')}"
            console.print(f"{name:16s} {summary}", highlight=False)
    table = Table("model", "MACs ratio", "b1 orig ms", "b1 slim ms", "b1 ratio",
                  "b32 orig s", "b32 slim s", "b32 ratio")
    for r in records:
        if r.get("ok"):
            b1, b32 = r["batch_1"], r["batch_32"]
            table.add_row(r["model"], f"{r['macs_ratio']:.3f}", f"{b1['original']['median_s'] * 1e3:.1f}",
                          f"{b1['slim']['median_s'] * 1e3:.1f}", f"{b1['latency_ratio']:.3f}",
                          f"{b32['original']['median_s']:.2f}", f"{b32['slim']['median_s']:.2f}",
                          f"{b32['latency_ratio']:.3f}")
    console.print(table)
    settings = {"ratio": 0.5, "round_to": args.round_to, "importance": "l1", "input": 224, "rounds_batch_1": args.rounds_1,
                "batch_1_block": "torch.utils.benchmark blocked_autorange(min_run_time=0.5), median per round",
                "rounds_batch_32": args.rounds_32,
                "batch_32_block": "one timed forward per round (Timer.timeit(1), after its two warm-up runs)",
                "mode": "eval, torch.inference_mode, float32; slim is the fx GraphModule falf_fx.prune returns"}
    write_json(args.out, {"machine": facts, "settings": settings,
                                "records": records})


if __name__ == "__main__":
    sys.exit(main())
