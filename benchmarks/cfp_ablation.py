"""CFP ablation: with and without the correlation-raising phase, at the same MACs target and epoch budget.

Arms (method="correlation", target_macs 0.25, the same rounds and fine-tuning):
  raise      mu=1, raise_epochs=1: train L + mu * sum exp(-|rho|) on the chosen pairs, then drop;
  no-raise   mu=0, raise_epochs=1: the same epoch on the main loss alone (same epoch budget);
  drop-only  raise_epochs=0: drop straight away (one epoch less per round), run last if time allows.
Every arm of one (model, seed) starts from the same pretrained weights.  The pretraining
recipe and one-run pieces come from benchmarks/ablation_falf.py; the JSON is rewritten after
every run, so a run cut short by --minutes keeps honest partial results.

    python benchmarks/cfp_ablation.py [--models lenet5,resnet20] [--seeds 0,1,2] [--arms raise,no-raise,drop-only]
                                      [--workers 2] [--minutes 25] [--append]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.ablation_falf import MODELS, SETTINGS, pretrain, run_config, summarize  # noqa: E402
from benchmarks.harness import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "cfp_ablation.json"
TARGET = 0.25
ARMS = {"raise": {"mu": 1.0, "raise_epochs": 1}, "no-raise": {"mu": 0.0, "raise_epochs": 1},
        "drop-only": {"raise_epochs": 0}}


def run_arm(item: tuple) -> dict:
    task, deadline = item
    if time.time() > deadline:
        return {**{k: v for k, v in task.items() if k != "weights"}, "skipped": True}
    result = run_config(task)
    if "history" in result:
        raise_epochs = task["options"]["raise_epochs"]
        result["train_epochs"] = result["rounds_run"] * (task["finetune_epochs"] + raise_epochs)
        result["rho"] = [(h["rho_before"], h["rho_after"]) for h in result["history"]]
    return result


def markdown(payload: dict) -> str:
    """Rows: arms; columns: models; cells: accuracy mean +- sd over seeds, MACs reached, epochs."""
    models = [m for m in MODELS if m in payload["summary"]]
    lines = ["| arm | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    unpruned = []
    pretrained = {(p["model"], p["seed"]): p["accuracy"] for p in payload["pretrained"]}  # once per seed
    for model in models:
        accs = [acc for (m, _), acc in pretrained.items() if m == model]
        sd = f" ± {100 * statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        unpruned.append(f"{100 * statistics.mean(accs):.2f}{sd} (n={len(accs)}, MACs 1)")
    lines.append("| unpruned | " + " | ".join(unpruned) + " |")
    for arm in ARMS:
        cells = []
        for model in models:
            cell = payload["summary"][model].get(f"{TARGET:g}", {}).get(arm)
            if cell is None:
                cells.append("not run")
                continue
            sd = f" ± {100 * cell['accuracy_std']:.2f}" if cell["accuracy_std"] is not None else ""
            cells.append(f"{100 * cell['accuracy_mean']:.2f}{sd} (n={cell['n_seeds']}, MACs "
                         f"{cell['macs_ratio_mean']:.3f}, {cell['train_epochs']} ep)")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="lenet5,resnet20")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", default="raise,no-raise,drop-only", help="in priority order")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=25.0, help="no run starts after this many minutes")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--append", action="store_true", help="add this invocation's runs to the existing --out")
    parser.add_argument("--table", action="store_true", help="print the README table of --out and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown(json.loads(Path(args.out).read_text())))
        return
    models, arms = args.models.split(","), args.arms.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.time()
    deadline = started + 60 * args.minutes
    payload = {"benchmark": "cfp_ablation",
               "machine": machine(1, note=f"{args.workers} worker processes, 1 torch thread each"),
               "settings": {"target_macs": TARGET, "arms": {a: ARMS[a] for a in arms}, "seeds": seeds,
                            "penalty": "exp (sum over pairs of exp(-|rho|))", "raise_lr": 0.01,
                            **{k: SETTINGS[k] for k in ("rounds", "finetune_epochs", "finetune_lr", "batch_size")},
                            "models": {m: {"kwargs": MODELS[m][0], "image_size": MODELS[m][1],
                                           "pretrain_epochs": MODELS[m][3], "pretrain_lr": MODELS[m][4]}
                                       for m in models},
                            "data": "falf_fx.data.digits_loaders, 80/20 stratified split per seed, 1 channel",
                            "epoch_accounting": "train_epochs = rounds_run * (finetune_epochs + raise_epochs)"},
               "pretrained": [], "runs": [], "skipped": []}
    out = Path(args.out)
    if args.append:  # a later invocation (more seeds or models) adds to the same table
        earlier = json.loads(out.read_text())
        for key in ("pretrained", "runs", "skipped"):
            payload[key] = earlier[key] + payload[key]
        payload["earlier_invocations"] = earlier.get("earlier_invocations", []) + [
            {k: earlier[k] for k in ("machine", "settings", "wall_seconds")}]

    def save() -> None:
        payload["summary"] = summarize(payload["runs"])
        payload["wall_seconds"] = round(time.time() - started, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as cache, mp.get_context("spawn").Pool(args.workers) as pool:
        pending = {(m, s): pool.apply_async(pretrain, ((m, s, cache, 1.0),)) for m in models for s in seeds}
        weights = {}
        for (model, seed), handle in pending.items():
            info = handle.get()
            weights[(model, seed)] = info.pop("path")
            payload["pretrained"].append(info)
            print(f"pretrained {model} seed {seed}: acc {info['accuracy']:.4f} ({info['seconds']}s)", flush=True)
        # the first two arms are the comparison and go first, seed by seed, so a deadline cuts whole seeds
        order = [(m, s, a) for m in models for s in seeds for a in arms[:2]]
        order += [(m, s, a) for m in models for s in seeds for a in arms[2:]]
        handles = []
        for model, seed, arm in order:
            task = {"model": model, "seed": seed, "target_macs": TARGET, "method": "correlation",
                    "options": ARMS[arm], "config": arm, "weights": weights[(model, seed)],
                    "rounds": SETTINGS["rounds"], "finetune_epochs": SETTINGS["finetune_epochs"],
                    "finetune_lr": SETTINGS["finetune_lr"]}
            handles.append(pool.apply_async(run_arm, ((task, deadline),)))
        save()
        for handle in handles:
            result = handle.get()
            if result.get("skipped"):
                payload["skipped"].append(f"{result['model']} seed={result['seed']} {result['config']}")
            else:
                payload["runs"].append(result)
                msg = result.get("error") or f"acc {result['accuracy']:.4f} macs {result['macs_ratio']:.3f}"
                print(f"{result['model']} s{result['seed']} {result['config']}: {msg} ({result['seconds']}s)",
                      flush=True)
            save()
    print(markdown(payload))


if __name__ == "__main__":
    main()
