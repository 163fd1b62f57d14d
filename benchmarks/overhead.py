"""compress's own work per round on ResNet-50 at 224 px: everything but training, before and after a change.

The run is issue 14's: ``compress(resnet50, loader, method="magnitude", target_macs=0.25,
rounds=4, finetune_epochs=4)`` on one 2-image batch, no distillation, no latency
measurement.  Time inside ``falf_fx.training.train`` is training; the rest (tracing,
analysis, fvcore counts, allocation, slimming, checkpoints) is compress's own work,
set-up included, divided by the rounds run.  Each tree runs in its own child process,
the same number of times, in one run of this script:

    python benchmarks/overhead.py [--before REV] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, machine, write_json  # noqa: E402

CHILD = r"""
import json, sys, time, torch, torchvision
from torch.utils.data import DataLoader, TensorDataset
import falf_fx
compress_module = sys.modules["falf_fx.compress"]
torch.manual_seed(0)
loader = DataLoader(TensorDataset(torch.randn(2, 3, 224, 224), torch.randint(0, 1000, (2,))), batch_size=2)
model = torchvision.models.resnet50()
spent = [0.0]
real_train = compress_module.train
def timed(*args, **kwargs):
    start = time.perf_counter()
    try:
        return real_train(*args, **kwargs)
    finally:
        spent[0] += time.perf_counter() - start
compress_module.train = timed
start = time.perf_counter()
result = falf_fx.compress(model, loader, method="magnitude", target_macs=0.25, rounds=4, finetune_epochs=4,
                          distill=0.0, progress=False, measure_latency=False)
total = time.perf_counter() - start
rounds = len(result.history)
print(json.dumps({"total_s": total, "train_s": spent[0], "rounds": rounds, "macs_ratio": result.report["macs_ratio"],
                  "own_work_per_round_s": (total - spent[0]) / rounds}))
"""


def _measure(tree: Path, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", CHILD], cwd=tree, capture_output=True, text=True, check=True,
                             env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "PYTHONWARNINGS": "ignore"})
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    per_round = [r["own_work_per_round_s"] for r in runs]
    return {"runs": runs, "own_work_per_round_s": round(statistics.median(per_round), 3),
            "own_work_per_round_std_s": round(statistics.pstdev(per_round), 3),
            "train_s": round(statistics.median(r["train_s"] for r in runs), 3),
            "total_s": round(statistics.median(r["total_s"] for r in runs), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="03b1891", help="the commit to compare against (default: 03b1891)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp, "before")
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.before], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            before = _measure(old, args.repeats)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    after = _measure(ROOT, args.repeats)
    payload = {"benchmark": "overhead", "machine": machine(2), "model": "resnet50", "input": "2x3x224x224",
               "call": "compress(method='magnitude', target_macs=0.25, rounds=4, finetune_epochs=4, distill=0)",
               "before": {"commit": args.before, **before}, "after": {"commit": head.strip(), **after},
               "after_over_before": round(after["own_work_per_round_s"] / before["own_work_per_round_s"], 3)}
    write_json("overhead.json", payload)
    print(json.dumps({k: payload[k] for k in ("after_over_before",)} | {
        "before_s": before["own_work_per_round_s"], "after_s": after["own_work_per_round_s"]}))


if __name__ == "__main__":
    main()
