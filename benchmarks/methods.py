"""Every pruning method side by side: accuracy at 4x and 8x MACs reduction, same epoch budget.

LeNet-5 (28 px) and ResNet-20 (16 px: a quarter of the 32 px compute, so every
method gets 3 seeds on this 2-core machine) on the real digits, 3 seeds.  Every
method of one (model, seed) starts from the same pretrained weights and spends the
same number of training
epochs after pretraining (``BUDGET``): methods with a phase of their own (FALF's
auxiliary phase, CFP's correlation-raising phase, Play-and-Prune's regularised
phase, NPN's gate training) get that much less fine-tuning.

Play-and-Prune is driven by an error tolerance, not a ratio: it runs at several
tolerances and its 4x/8x cells are the runs that land nearest those MACs; the
paper-style rows are the largest reduction it reaches inside 0.5 and 1 point.

    python benchmarks/methods.py [--seeds 0,1,2] [--models lenet5,resnet20] [--workers 2] [--cache DIR]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.ablation_falf import MODELS, _build, _loaders, pretrain  # noqa: E402
from benchmarks.harness import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "methods.json"
BUDGET = 8  # training epochs after pretraining, for every method
ROUNDS = 4
TARGETS = (0.25, 0.125)
PP_TOLERANCES = (0.005, 0.01, 0.02, 0.04)
IMAGE_SIZE = {"lenet5": 28, "resnet20": 16}  # the digits are 8x8 originally

# method -> (compress options, epochs each round spends outside fine-tuning); fine-tuning fills the rest of BUDGET
METHODS = {
    "magnitude": ({}, 0),
    "falf": ({"aux_epochs": 1}, 1),  # the defaults the FALF ablation chose
    "stability": ({"aux_epochs": 1}, 1),
    "correlation": ({"raise_epochs": 1}, 1),
}
# one round: a lambda search of 2 trials x 2 gate-training epochs, then BUDGET - 4 fine-tune epochs
ONE_SHOT = {"pruner_network": ({"epochs": 2, "search_trials": 2}, 4)}
PLAY_AND_PRUNE = ({"reg_epochs": 1}, 1)  # at most ROUNDS rounds of 1 regularised + 1 fine-tune epoch


def _tasks(models, seeds, weights) -> list[dict]:
    tasks = []
    for model in models:
        for seed in seeds:
            base = {"model": model, "seed": seed, "weights": weights[(model, seed)]}
            for target in TARGETS:
                for method, (options, extra) in METHODS.items():
                    tasks.append({**base, "method": method, "options": options, "target_macs": target,
                                  "tolerance": None, "rounds": ROUNDS,
                                  "finetune_epochs": BUDGET // ROUNDS - extra})
                for method, (options, extra) in ONE_SHOT.items():
                    tasks.append({**base, "method": method, "options": options, "target_macs": target,
                                  "tolerance": None, "rounds": 1, "finetune_epochs": BUDGET - extra})
            options, extra = PLAY_AND_PRUNE
            for tolerance in PP_TOLERANCES:
                tasks.append({**base, "method": "play_and_prune", "options": options, "target_macs": None,
                              "tolerance": tolerance, "rounds": ROUNDS, "finetune_epochs": BUDGET // ROUNDS - extra})
    return tasks


def run(task: dict) -> dict:
    """One compress() run; a failure is a recorded result, not an aborted benchmark."""
    import falf_fx
    from falf_fx.methods import make_method
    torch.set_num_threads(1)
    train_loader, val_loader = _loaders(task["model"], task["seed"], IMAGE_SIZE[task["model"]])
    model = _build(task["model"])
    model.load_state_dict(torch.load(task["weights"], weights_only=True))
    public = {k: v for k, v in task.items() if k != "weights"}
    t0 = time.perf_counter()
    try:
        result = falf_fx.compress(model, train_loader, method=make_method(task["method"], **task["options"]),
                                  val_loader=val_loader,
                                  target_macs=task["target_macs"], tolerance=task["tolerance"],
                                  rounds=task["rounds"], finetune_epochs=task["finetune_epochs"] * task["rounds"],
                                  seed=task["seed"], progress=False, measure_latency=False)
    except Exception as error:
        return {**public, "error": f"{type(error).__name__}: {error}", "seconds": round(time.perf_counter() - t0, 1)}
    return {**public, "accuracy": result.report["after"]["metric"],
            "accuracy_before": result.report["before"]["metric"], "macs_ratio": result.report["macs_ratio"],
            "rounds_run": len(result.history), "history": result.history,
            "seconds": round(time.perf_counter() - t0, 1)}


def _cell(runs: list[dict]) -> dict:
    accs = [r["accuracy"] for r in runs]
    return {"n_seeds": len(runs), "accuracy_mean": round(statistics.mean(accs), 4),
            "accuracy_std": round(statistics.stdev(accs), 4) if len(accs) > 1 else None,
            "macs_ratio_mean": round(statistics.mean(r["macs_ratio"] for r in runs), 4),
            "drop_mean": round(statistics.mean(r["accuracy_before"] - r["accuracy"] for r in runs), 4)}


def summarize(runs: list[dict]) -> dict:
    """Per model: method -> target -> cell; Play-and-Prune by nearest MACs and by tolerance kept."""
    ok = [r for r in runs if "accuracy" in r]
    table: dict = {}
    for model in sorted({r["model"] for r in ok}):
        mine = [r for r in ok if r["model"] == model]
        cells = table.setdefault(model, {})
        for method in sorted({r["method"] for r in mine} - {"play_and_prune"}):
            for target in TARGETS:
                rs = [r for r in mine if r["method"] == method and r["target_macs"] == target]
                if rs:
                    cells.setdefault(method, {})[f"{target:g}"] = _cell(rs)
        pp = [r for r in mine if r["method"] == "play_and_prune"]
        for target in TARGETS:  # per seed, the tolerance whose MACs land nearest the target
            nearest = [min(rs, key=lambda r: abs(r["macs_ratio"] - target))
                       for seed in sorted({r["seed"] for r in pp}) if (rs := [r for r in pp if r["seed"] == seed])]
            if nearest:
                cell = _cell(nearest)
                cell["tolerances"] = [r["tolerance"] for r in nearest]
                cells.setdefault("play_and_prune", {})[f"{target:g}"] = cell
        for eps in (0.005, 0.01):  # paper-style: the largest reduction inside eps, per seed
            inside = [min((r for r in pp if r["seed"] == seed and r["accuracy_before"] - r["accuracy"] <= eps + 1e-9),
                          key=lambda r: r["macs_ratio"], default=None) for seed in sorted({r["seed"] for r in pp})]
            inside = [r for r in inside if r is not None]
            if inside:
                cells.setdefault("play_and_prune (paper-style)", {})[f"eps={eps:g}"] = _cell(inside)
    return table


def markdown(payload: dict) -> str:
    """README table: method -> accuracy (MACs reached) at 4x and 8x per model; PP's paper-style rows."""
    table = payload["summary"]
    models = [m for m in ("lenet5", "resnet20") if m in table]
    header = ["method"] + [f"{m} ({IMAGE_SIZE[m]} px) {1 / t:g}x" for m in models for t in TARGETS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    unpruned = {}
    for info in payload["pretrained"]:
        unpruned.setdefault(info["model"], []).append(info["accuracy"])
    row = [f"{100 * statistics.mean(unpruned[m]):.2f} (n={len(unpruned[m])}, MACs 1)" for m in models for _ in TARGETS]
    lines.append("| unpruned | " + " | ".join(row) + " |")
    methods = sorted({k for m in table.values() for k in m if "paper" not in k}, key=lambda k: (k != "magnitude", k))
    for method in methods:
        row = []
        for model in models:
            for target in TARGETS:
                cell = table[model].get(method, {}).get(f"{target:g}")
                std = f" ± {100 * cell['accuracy_std']:.2f}" if cell and cell["accuracy_std"] is not None else ""
                row.append(f"{100 * cell['accuracy_mean']:.2f}{std} (n={cell['n_seeds']}, MACs "
                           f"{cell['macs_ratio_mean']:.3f})" if cell else "not run")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    lines += ["", "| Play-and-Prune, largest reduction inside ε | " + " | ".join(models) + " |",
              "|---|" + "---|" * len(models)]
    for eps in ("0.005", "0.01"):
        row = []
        for model in models:
            cell = table[model].get("play_and_prune (paper-style)", {}).get(f"eps={eps}")
            row.append(f"MACs {cell['macs_ratio_mean']:.3f}, acc {100 * cell['accuracy_mean']:.2f} "
                       f"(n={cell['n_seeds']})" if cell else "not reached")
        lines.append(f"| ε = {100 * float(eps):g} point(s) | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--models", default="lenet5,resnet20")
    parser.add_argument("--methods", default=None, help="comma-separated subset of the methods to run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", default=None, help="folder keeping pretrained weights (shared with ablation_falf)")
    parser.add_argument("--deadline", type=float, default=None, help="unix time after which no new run starts")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--append", action="store_true", help="keep the runs of --out; run only what is missing")
    parser.add_argument("--table", action="store_true", help="print the README table of --out and exit")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.table:
        print(markdown(json.loads(out.read_text())))
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    models = args.models.split(",")
    earlier = json.loads(out.read_text()) if args.append and out.exists() else {"runs": [], "pretrained": []}
    payload = {"benchmark": "methods", "machine": machine(1, note=f"{args.workers} worker processes, 1 torch thread"),
               "settings": {"budget_epochs": BUDGET, "rounds": ROUNDS, "targets": TARGETS,
                            "play_and_prune_tolerances": PP_TOLERANCES,
                            "methods": {**{m: {"options": o, "epochs_per_round_outside_finetune": e}
                                           for m, (o, e) in METHODS.items()},
                                        **{m: {"options": o, "gate_epochs": e, "rounds": 1}
                                           for m, (o, e) in ONE_SHOT.items()},
                                        "play_and_prune": {"options": PLAY_AND_PRUNE[0],
                                                           "epochs_per_round_outside_finetune": PLAY_AND_PRUNE[1]}},
                            "models": {m: {"image_size": IMAGE_SIZE[m], "pretrain_epochs": v[3]}
                                       for m, v in MODELS.items()},
                            "data": "falf_fx.data.digits_loaders, 80/20 split per seed"},
               "pretrained": earlier["pretrained"], "runs": earlier["runs"]}
    done = {(r["model"], r["seed"], r["method"], r["target_macs"], r["tolerance"]) for r in payload["runs"]
            if "accuracy" in r}
    started = time.time()

    def save() -> None:
        payload["summary"] = summarize(payload["runs"])
        payload["wall_seconds"] = round(time.time() - started, 1)
        payload["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=1) + "\n")

    ctx = mp.get_context("spawn")
    with (nullcontext(args.cache) if args.cache else tempfile.TemporaryDirectory()) as cache, \
            ctx.Pool(args.workers, maxtasksperchild=4) as pool:
        weights = {}
        for info in pool.map(pretrain, [(m, s, cache, 1.0, IMAGE_SIZE[m]) for m in models for s in seeds]):
            weights[(info["model"], info["seed"])] = info.pop("path")
            if not any(p["model"] == info["model"] and p["seed"] == info["seed"] for p in payload["pretrained"]):
                payload["pretrained"].append(info)
        tasks = [t for t in _tasks(models, seeds, weights)
                 if (t["model"], t["seed"], t["method"], t["target_macs"], t["tolerance"]) not in done
                 and (args.methods is None or t["method"] in args.methods.split(","))]
        tasks.sort(key=lambda t: (t["model"] != "lenet5", t["seed"]))  # cheap model first, seeds in order
        for result in pool.imap_unordered(_guarded, [(t, args.deadline) for t in tasks]):
            if result.get("skipped"):
                continue
            payload["runs"].append(result)
            msg = result.get("error") or f"acc {result['accuracy']:.4f} macs {result['macs_ratio']:.3f}"
            print(f"{result['model']} s{result['seed']} {result['method']} target={result['target_macs']} "
                  f"tol={result['tolerance']}: {msg} ({result['seconds']}s)", flush=True)
            save()
    save()
    print(markdown(payload))


def _guarded(item: tuple) -> dict:
    task, deadline = item
    if deadline and time.time() > deadline:
        return {"skipped": True}
    return run(task)


if __name__ == "__main__":
    main()
