"""The core zoo table: every torchvision classification model through falf_fx alone, quickly.

Per model: channel groups, prunable groups, the share of MACs in layers a
prunable group can slim, MACs before and after an L1 50% plan (what
``falf_fx.prune(ratio=0.5)`` does), and the time of trace + analysis.  Inputs are
the reduced sizes of tests/test_zoo.py (64 px; 96 inception, 224 MaxViT), so the
whole sweep takes minutes; exactness on every model is tests/test_zoo.py's job,
the 224 px comparison with Torch-Pruning is benchmarks/zoo.py's.

    python benchmarks/zoo_core.py            # -> benchmarks/results/zoo_core.json
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import falf_fx  # noqa: E402
from falf_fx.flops import count_cost, prunable_macs_share  # noqa: E402
from tests.test_zoo import MODELS, _model_and_input  # noqa: E402

OUT = Path(__file__).parent / "results" / "zoo_core.json"


def measure(name: str) -> dict:
    model, x = _model_and_input(name)
    start = time.perf_counter()
    gm = falf_fx.trace(model, x)
    analysis = falf_fx.analyze(gm)
    seconds = time.perf_counter() - start
    plan = falf_fx.plan_by_ratio(analysis, falf_fx.group_importance(analysis, "l1"), 0.5)
    slim = falf_fx.slim(gm, plan)
    before, after = count_cost(gm, x), count_cost(slim, x)
    return {"model": name, "input": list(x.shape), "nodes": len(gm.graph.nodes), "groups": len(analysis.groups),
            "prunable_groups": len(analysis.prunable_groups),
            "prunable_macs_share": round(prunable_macs_share(analysis, x), 4),
            "macs_before": before.macs, "macs_after": after.macs, "macs_ratio": round(after.macs / before.macs, 4),
            "params_before": before.params, "params_after": after.params, "analysis_s": round(seconds, 3)}


def _write(rows: list[dict], planned: int) -> dict:
    """Written after every model, so an interrupted sweep still leaves its rows (marked partial)."""
    ok = [r for r in rows if "error" not in r]
    median = lambda key: sorted(r[key] for r in ok)[len(ok) // 2] if ok else None  # noqa: E731
    summary = {"models": len(rows), "planned": planned, "partial": len(rows) < planned, "succeeded": len(ok),
               "median_analysis_s": median("analysis_s"),
               "median_macs_ratio": median("macs_ratio"), "median_prunable_macs_share": median("prunable_macs_share")}
    machine = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
               "threads": 1, "load_average_at_end": os.getloadavg()}
    OUT.write_text(json.dumps({"machine": machine, "summary": summary, "rows": rows}, indent=1) + "\n")
    return summary


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    names, rows = sys.argv[1:] or MODELS, []
    if sys.argv[1:] and OUT.exists():  # a run naming models adds to (or replaces) the rows already there
        rows = [r for r in json.loads(OUT.read_text())["rows"] if r["model"] not in names]
        names = [r["model"] for r in rows] + list(names)
    for name in names[len(rows):]:
        try:
            rows.append(measure(name))
        except Exception as error:  # noqa: BLE001 - a failure is a row, never an aborted sweep
            rows.append({"model": name, "error": f"{type(error).__name__}: {str(error)[:200]}"})
        print(json.dumps(rows[-1]), flush=True)
        summary = _write(rows, len(names))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
