"""Latency-aware against MACs-aware plans at equal measured latency: which keeps more accuracy?  (issue 16)

Per seed, the ResNet-20 that ``benchmarks/quality.py`` trains on its shapes task (the same weights) is pruned
once with L1 scores and ``allocation="cost"`` in two ways:

- ``latency``: ``prune(target_latency=T)``, the cut shared by importance per millisecond saved, read off the
  per-layer tables timed here (batch ``--batch``, one thread);
- ``macs``: ``prune(target_macs=m)``, importance per MAC saved, with ``m`` searched until the slim model's
  measured latency matches the latency plan's (within 2%; the closest of 8 tries is kept).

Both are then fine-tuned under quality.py's schedule (8 epochs, SGD, warm-up + cosine, peak lr 0.02, plain
cross-entropy) and scored on its 2,000 validation images.  Plans are made first, one at a time on a quiet
process (they are timed); the fine-tuning runs in ``--workers`` processes of one thread.
Results: ``results/latency_quality.json``.

    python benchmarks/latency_quality.py [--target 0.5] [--seeds 0,1,2] [--batch 32] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import machine  # noqa: E402
from benchmarks.quality import (FINETUNE, PRETRAIN, WEIGHTS, _build, _ce, _config, _loaders, pretrain,  # noqa: E402
                                weights_path)

RESULTS = Path(__file__).resolve().parent / "results" / "latency_quality.json"
MODEL = "resnet20"
_MATCH, _TRIES = 0.02, 8


def _ratio(slim, model, x, settings) -> float:
    from falf_fx.latency import latency_ratio
    return latency_ratio(slim, model, x, settings)


def plans(weights: str, target: float, settings, workdir: Path, seed: int) -> dict:
    """Both plans of one seed, saved for the fine-tuning workers; their measured latency and MACs ratios."""
    import falf_fx
    from falf_fx.flops import count_cost

    model = _build(MODEL)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    x = next(iter(_loaders()[0]))[0][:1]
    macs = count_cost(model, x).macs
    latency_plan = falf_fx.prune(model, x, target_latency=target, latency=settings, allocation="cost")
    wanted = _ratio(latency_plan, model, x, settings)  # re-timed: the macs plan has to match this measurement
    rows = {"latency": {"latency_ratio": wanted, "macs_ratio": count_cost(latency_plan, x).macs / macs,
                        "planned": latency_plan.meta["falf_fx_target"]}}
    from falf_fx.targets import _next_goal, _Try  # the goal step prune's own search takes, in MACs ratios

    tries, goal = [], rows["latency"]["macs_ratio"]
    for _ in range(_TRIES):
        slim = falf_fx.prune(model, x, target_macs=min(goal, 0.999), allocation="cost")
        tries.append(_Try(slim, 0, goal, goal, _ratio(slim, model, x, settings)))
        if abs(tries[-1].measured - wanted) <= _MATCH * wanted:
            break
        goal = _next_goal(tries, wanted)
    best = min(tries, key=lambda t: abs(t.measured - wanted))
    goal, measured, macs_plan = best.goal, best.measured, best.slim
    rows["macs"] = {"latency_ratio": measured, "macs_ratio": count_cost(macs_plan, x).macs / macs,
                    "target_macs": goal, "tries": [[round(t.goal, 5), round(t.measured, 5)] for t in tries]}
    for arm, slim in (("latency", latency_plan), ("macs", macs_plan)):
        path = workdir / f"{arm}-{seed}.pt"
        falf_fx.save(slim, path)
        rows[arm]["path"] = str(path)
    return rows


def finetune(task: dict) -> dict:
    """Fine-tune one saved plan and score it."""
    import falf_fx
    from falf_fx.training import evaluate, train

    torch.set_num_threads(1)
    train_loader, val_loader = _loaders()
    slim = falf_fx.load(task["path"])
    start = time.perf_counter()
    train(slim, train_loader, _ce, _config(FINETUNE, task["seed"]), phase="finetune", progress=False)
    return {**{k: v for k, v in task.items() if k != "path"}, "accuracy": evaluate(slim, val_loader)["accuracy"],
            "finetune_seconds": round(time.perf_counter() - start, 1)}


def _summary(runs: list[dict]) -> dict:
    summary = {}
    for arm in ("latency", "macs"):
        rows = [r for r in runs if r["arm"] == arm]
        if rows:
            accs = [r["accuracy"] for r in rows]
            summary[arm] = {"n_seeds": len(rows), "accuracy_mean": round(statistics.mean(accs), 4),
                            "accuracy_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else None,
                            "latency_ratio_mean": round(statistics.mean(r["latency_ratio"] for r in rows), 4),
                            "macs_ratio_mean": round(statistics.mean(r["macs_ratio"] for r in rows), 4)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", default=".bench-cache", help="the latency tables' folder")
    parser.add_argument("--weights", default=str(WEIGHTS), help="quality.py's base weights")
    args = parser.parse_args()
    from falf_fx.latency import LatencySettings

    torch.set_num_threads(1)
    seeds, cache = [int(s) for s in args.seeds.split(",")], Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    settings = LatencySettings(batch_size=args.batch, threads=1, cache_dir=str(cache / "latency-tables"),
                               min_run_time=0.2)
    facts = machine(1, "plans timed one at a time; fine-tuning in worker processes of one thread")
    started = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory() as workdir, mp.get_context("spawn").Pool(args.workers) as pool:
        bases = [pretrain(MODEL, seed, Path(args.weights)) for seed in seeds]  # cached by quality.py: loads, or trains once
        tasks = []
        for base in bases:
            arms = plans(str(weights_path(base)), args.target, settings, Path(workdir), base["seed"])
            print(json.dumps({"seed": base["seed"], **{a: {k: v for k, v in r.items() if k != "planned"}
                                                       for a, r in arms.items()}}), flush=True)
            tasks += [{"seed": base["seed"], "arm": arm, **row} for arm, row in arms.items()]
        for result in pool.imap_unordered(finetune, tasks):
            runs.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "planned"}), flush=True)
    payload = {"machine": facts, "settings": {"model": MODEL, "target_latency": args.target, "batch": args.batch,
                                              "threads": 1, "importance": "l1", "allocation": "cost",
                                              "pretrain": PRETRAIN, "finetune": FINETUNE, "match": _MATCH,
                                              "seeds": seeds},
               "wall_seconds": round(time.perf_counter() - started, 1), "pretrained": bases,
               "summary": _summary(runs), "runs": runs}
    RESULTS.write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps(payload["summary"], indent=1))


if __name__ == "__main__":
    main()
