"""Latency as a target: does prune(target_latency=T) land within 5% of T in measured latency?

For each model (its own child process, random weights, 224 px), batch size and
target: ``falf_fx.prune(model, x, target_latency=T, latency=LatencySettings(batch, threads))``
plans on per-layer latency tables timed on this machine and corrects on the
measured slim model.  The slim model is then timed again, independently, with
the original alternately (benchmarks/latency.py's protocol, ``--check-rounds``
rounds, the median of each round's paired ratio), and the MACs are
counted with fvcore: the record is the measured latency ratio against the
target, the MACs ratio, the table model's first prediction error and the tries.

    python benchmarks/latency_target.py                              # the issue's full grid
    python benchmarks/latency_target.py resnet50 --batches 1 --targets 0.5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from harness import emit, machine, run_child, write_json
from latency import _latencies

MODELS = ("resnet50", "mobilenet_v2", "vgg16", "densenet121", "efficientnet_b0")


def measure(name: str, threads: int, batches: list[int], targets: list[float], cache: str, check_rounds: int) -> None:
    import warnings
    warnings.simplefilter("ignore")
    import torch
    import torchvision

    import falf_fx
    from falf_fx.flops import count_cost
    from falf_fx.latency import LatencySettings

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    before = count_cost(model, x)
    record = {"model": name, "runs": []}
    for batch in batches:
        settings = LatencySettings(batch_size=batch, threads=threads, cache_dir=cache,
                                   min_run_time=0.05 if batch == 1 else 0.2)
        for target in targets:
            start = time.perf_counter()
            slim = falf_fx.prune(model, x, target_latency=target, latency=settings).eval()
            seconds = time.perf_counter() - start
            times = _latencies({"original": model, "slim": slim}, batch, rounds=check_rounds,
                               threads=threads, min_run_time=0.5)
            paired = paired_ratios(times)
            ratio = statistics.median(paired)  # pairs cancel the machine's slow drifts; medians of each do not
            macs = count_cost(slim, x).macs / before.macs
            run = {"batch": batch, "target": target, "prune_seconds": round(seconds, 1),
                   "planned": slim.meta["falf_fx_target"], "latency_ratio": round(ratio, 4),
                   "within_5pct": abs(ratio - target) <= 0.05 * target, "macs_ratio": round(macs, 4),
                   "ratio_of_medians": round(times["slim"]["median_s"] / times["original"]["median_s"], 4),
                   "paired_range": [round(min(paired), 4), round(max(paired), 4)],
                   "share_of_mac_limit": round(macs / ratio, 3), "times": times,
                   "load_average": [round(v, 2) for v in os.getloadavg()]}  # was the machine quiet for this cell
            record["runs"].append(run)
            emit({**record, "stage": f"b{batch} t{target}"})
    emit({**record, "ok": True, "stage": "done"})


def paired_ratios(times: dict) -> list[float]:
    """Each round's slim/original ratio (the two were timed back to back): the spread says how far this
    machine's load lets a latency ratio be trusted."""
    return [s / o for s, o in zip(times["slim"]["samples_s"], times["original"]["samples_s"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=list(MODELS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--targets", default="0.5,0.3")
    parser.add_argument("--check-rounds", type=int, default=20,
                        help="alternating rounds of the independent check (a pair's ratio spreads ~10%% on a shared "
                             "virtual machine: 20 pairs give a median within ~3%%)")
    parser.add_argument("--cache", default=None, help="latency table cache (default: a fresh temporary one)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--note", help="free text stored with the machine facts")
    parser.add_argument("--merge", action="store_true",
                        help="keep the earlier JSON's runs of other (model, batch, target, threads) cells")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    targets = [float(t) for t in args.targets.split(",")]
    if args.child:
        measure(args.child, args.threads, batches, targets, args.cache, args.check_rounds)
        return

    from rich.console import Console
    from rich.table import Table

    console = Console()
    facts = machine(args.threads, args.note)
    from falf_fx.latency import LatencySettings
    defaults = LatencySettings()
    cache = args.cache or tempfile.mkdtemp(prefix="falf-latency-")  # timed afresh: prune's own cost is measured
    settings = {"importance": "l1", "allocation": "uniform", "input": 224, "threads": args.threads,
                "batches": batches, "targets": targets,
                "check": f"benchmarks/latency.py's alternating protocol on the returned slim model, {args.check_rounds} "
                         "rounds; the checked ratio is the median of the rounds' paired ratios",
                "prune_ratio_budget": f"until a 1% standard error, at most {defaults.max_rounds} pairs or "
                                      f"{defaults.max_seconds:g} s after the first 5 (LatencySettings' defaults)",
                "mode": "eval, torch.inference_mode, float32, random weights"}
    earlier = _earlier_records(args.threads) if args.merge else []
    records = []
    for name in args.models:
        console.print(f"latency target: {name}", highlight=False)
        records.append(run_child([__file__, "--child", name, "--threads", str(args.threads), "--batches",
                                  args.batches, "--targets", args.targets, "--cache", cache,
                                  "--check-rounds", str(args.check_rounds)],
                                 stage_timeout=args.timeout, total_timeout=args.timeout, mem_limit_gib=14,
                                 stage="done"))
        for run in records[-1].get("runs", []):
            run["threads"] = args.threads
        # after every model, so a run cut short keeps what it measured
        write_json("latency_target.json", {"machine": facts, "settings": settings,
                                           "records": _merged(earlier, records)})
    table = Table("model", "batch", "target", "measured", "within 5%", "MACs ratio", "share of MACs promise",
                  "first prediction error", "tries", "prune s")
    for r in records:
        for run in r.get("runs", []):
            table.add_row(r["model"], str(run["batch"]), f"{run['target']:.2f}", f"{run['latency_ratio']:.3f}",
                          "yes" if run["within_5pct"] else "no", f"{run['macs_ratio']:.3f}",
                          f"{run['share_of_mac_limit']:.2f}", f"{run['planned']['prediction_error']:+.1%}",
                          str(run["planned"]["tries"]), f"{run['prune_seconds']:.0f}")
        if not r.get("ok"):
            table.add_row(r.get("model", "?"), "-", "-", f"FAIL {r.get('error')}")
    console.print(table)


def _earlier_records(threads: int) -> list[dict]:
    from harness import RESULTS
    path = RESULTS / "latency_target.json"
    if not path.exists():
        return []
    previous = json.loads(path.read_text())
    for record in previous.get("records", []):
        for run in record.get("runs", []):
            run.setdefault("threads", previous.get("settings", {}).get("threads", threads))
    return previous.get("records", [])


def _merged(earlier: list[dict], records: list[dict]) -> list[dict]:
    """Per model, the new runs and the earlier runs of cells not measured again."""
    out = {r["model"]: {**r, "runs": list(r.get("runs", []))} for r in earlier if "model" in r}
    for record in records:
        new_cells = {(run["batch"], run["target"], run["threads"]) for run in record.get("runs", [])}
        kept = [run for run in out.get(record.get("model"), {}).get("runs", [])
                if (run["batch"], run["target"], run["threads"]) not in new_cells]
        out[record.get("model", "?")] = {**record, "runs": kept + list(record.get("runs", []))}
    return list(out.values())


if __name__ == "__main__":
    sys.exit(main())
