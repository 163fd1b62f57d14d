"""Hub benchmark: falf_fx against Torch-Pruning on Hugging Face and Ultralytics models, as their libraries return them.

Models: the 12 Hugging Face models of ``tests/hub_models.py`` (CNNs, hybrids,
vision transformers, segmentation, depth, BERT), ConvNeXtV2 (exact but with
nothing falf_fx can cut), and Ultralytics' YOLOv8n / YOLO11n DetectionModel in
eval and in train mode.  Each is built from its config with random weights
after ``torch.manual_seed(0)`` and passed as it is: no wrapper, no surgery.
The question is what a user gets when handing such a model to each tool.

falf_fx: ``prune(model, x, ratio=0.5)``.  Recorded: success (or the error's
first line), wall time, MACs and parameters kept, whether the slim model runs on
x, exactness (``check_equivalence(model, x, seed=0)``: a random plan, slim model
against the masked original in float64; its max relative difference), and
whether the original model's outputs are bit-identical after both calls.

Torch-Pruning: its README recipe, ``MagnitudePruner(model, example_inputs=x,
importance=MagnitudeImportance(p=1), pruning_ratio=0.5, ignored_layers=...)``
then ``step()``, on a deepcopy of the freshly built model (it prunes in place).
No ``num_heads`` or other per-architecture help.  ``ignored_layers``, as its
README asks ("do not prune the final classifier"), found generically: the
Conv/Linear layers whose outputs reach a model output with no other such layer
between (autograd walk, the rule of ``benchmarks/zoo.py``: the classifier, the
segmentation / depth head's last conv, BERT's pooler and the layers writing its
residual stream); for YOLO the whole ``Detect`` head, as Torch-Pruning's own
YOLOv8 example does (its fixed DFL conv stops the walk before the box convs).
Recorded: success, wall time, MACs kept (the same fvcore counter,
``falf_fx.flops.count_cost``), whether the pruned model runs on x and keeps
every output shape.  Torch-Pruning does not claim exactness: "n/a".

Everything runs in this process, one model after another (tiny models: about
4 min on 2 cores, 90 s of it Torch-Pruning running out of its budget thrice).
No child processes or memory limits; each tool's prune call (falf_fx's
``prune``, Torch-Pruning's pruner construction plus ``step``) has one time
budget (``--budget``, SIGALRM raising in the call), only so that a call that
never returns becomes that tool's recorded failure instead of a hung run:
Torch-Pruning's DependencyGraph grouping on DPT grows one group without end.

    python benchmarks/hub.py            # run, write results/hub.json, print the table
    python benchmarks/hub.py --report   # the table of the last run
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import os
import re
import signal
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("YOLO_VERBOSE", "False")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

from harness import RESULTS, machine, write_json  # noqa: E402
from zoo import output_layers  # noqa: E402

RATIO = 0.5
OUT = "hub.json"
BUDGET_S = 30  # every call that returns takes under 3 s here


class Budget:
    """Raise TimeoutError in the main thread if the block runs past ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def _expire(self, *_) -> None:
        raise TimeoutError(f"no result in {self.seconds:g} s (stopped)")

    def __enter__(self) -> None:
        self.previous = signal.signal(signal.SIGALRM, self._expire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *_) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)


def _error(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def models() -> dict:
    """name -> (builder of the model, in the mode it is measured in; builder of its input)."""
    from tests.hub_models import HUGGING_FACE_FROZEN, hugging_face, ultralytics

    table = {name: (lambda b=build: b().eval(), example)
             for name, (build, example) in {**hugging_face(), **HUGGING_FACE_FROZEN}.items()}
    for cfg in ("yolov8n", "yolo11n"):
        for mode in ("eval", "train"):
            table[f"{cfg} ({mode})"] = (lambda c=cfg, m=mode: ultralytics(f"{c}.yaml").train(m == "train"),
                                        lambda: torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    return table


def _outputs(model, x) -> list:
    with torch.no_grad():
        return tree_flatten(model(x))[0]


def _tensors_equal(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v
                                    for u, v in zip(a, b))


def run_falf(model, x, before: list, full) -> dict:
    import falf_fx
    from falf_fx.errors import EquivalenceError
    from falf_fx.flops import count_cost
    from falf_fx.testing import check_equivalence

    record: dict = {"ok": False}
    try:
        start = time.perf_counter()
        with Budget(BUDGET_S):
            slim = falf_fx.prune(model, x, ratio=RATIO)
        record["seconds"] = round(time.perf_counter() - start, 3)
        cut = count_cost(slim, x)
        record.update(macs_ratio=round(cut.macs / full.macs, 4), params_ratio=round(cut.params / full.params, 4),
                      ok=True)
        try:
            _outputs(slim, x)
            record["slim_runs"] = True
        except Exception as error:  # noqa: BLE001 - a failure is a result
            record.update(slim_runs=False, slim_error=_error(error))
    except Exception as error:  # noqa: BLE001
        record["error"] = _error(error)
    try:
        result = check_equivalence(model, x, seed=0)
        record.update(exact=True, max_rel_diff=result.max_rel_diff, channels_removed=result.channels_removed)
    except EquivalenceError as error:
        found = re.search(r"relative ([0-9.e+-]+)", str(error))
        record.update(exact=False, max_rel_diff=float(found.group(1)) if found else None,
                      exact_error=_error(error))
    except Exception as error:  # noqa: BLE001 - the oracle could not run at all
        record.update(exact=None, exact_error=_error(error))
    try:
        record["original_unchanged"] = _tensors_equal(before, _outputs(model, x))
    except Exception as error:  # noqa: BLE001
        record.update(original_unchanged=False, original_error=_error(error))
    return record


def _tp_ignored(model, x) -> list:
    detect = [m for m in model.modules() if type(m).__name__ == "Detect"]
    return detect or output_layers(model, x)


def run_tp(model, x, shapes: list, full) -> dict:
    """Torch-Pruning on ``model`` (a copy: pruned in place); MACs against ``full``, the original's cost."""
    import torch_pruning as tp

    from falf_fx.flops import count_cost

    record: dict = {"ok": False, "exact": "n/a"}  # Torch-Pruning does not claim it
    try:
        ignored = _tp_ignored(model, x)
        names = {m: n for n, m in model.named_modules()}
        record["ignored_layers"] = [names[m] for m in ignored]
        start = time.perf_counter()
        with Budget(BUDGET_S):
            pruner = tp.pruner.MagnitudePruner(model, example_inputs=x,
                                               importance=tp.importance.MagnitudeImportance(p=1),
                                               pruning_ratio=RATIO, ignored_layers=ignored)
            pruner.step()
        record["seconds"] = round(time.perf_counter() - start, 3)
        record["ok"] = True
    except Exception as error:  # noqa: BLE001 - a failure is a result
        record["error"] = _error(error)
        return record
    try:
        got = [tuple(t.shape) for t in _outputs(model, x) if isinstance(t, torch.Tensor)]
        record.update(pruned_runs=True, same_shapes=got == shapes)
        if got != shapes:
            record["shapes"] = {"original": shapes, "pruned": got}
    except Exception as error:  # noqa: BLE001
        record.update(pruned_runs=False, same_shapes=False, pruned_error=_error(error))
    try:
        record["macs_ratio"] = round(count_cost(model, x).macs / full.macs, 4)
    except Exception as error:  # noqa: BLE001
        record.update(macs_ratio=None, macs_error=_error(error))
    return record


def measure(name: str, build, example) -> dict:
    from falf_fx.flops import count_cost

    row: dict = {"model": name}
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        model, x = build(), example()
        before = _outputs(model, x)
        shapes = [tuple(t.shape) for t in before if isinstance(t, torch.Tensor)]
        twin = copy.deepcopy(model)  # Torch-Pruning's, taken before falf_fx sees the model
        full = count_cost(model, x)  # the denominator of both MACs ratios
    except Exception as error:  # noqa: BLE001
        row["error"] = f"could not build: {_error(error)}"
        return row
    row["input"] = list(x.shape)
    row["falf_fx"] = run_falf(model, x, before, full)
    row["torch_pruning"] = run_tp(twin, x, shapes, full)
    row["row_s"] = round(time.perf_counter() - start, 2)
    return row


def _yes(value) -> str:
    return {True: "yes", False: "**no**", None: "?"}.get(value, str(value))


def table(rows: list[dict]) -> str:
    lines = ["| model | falf_fx: runs as passed | exact (max rel. diff) | MACs kept "
             "| Torch-Pruning: runs as passed | pruned model runs | MACs kept |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        f, t = row.get("falf_fx", {}), row.get("torch_pruning", {})
        if "error" in row:
            lines.append(f"| {row['model']} | {row['error']} | | | | | |")
            continue
        f_runs = (_yes(f.get("slim_runs")) if f["ok"] else f"**no**: {f['error'][:60]}")
        if f.get("original_unchanged") is False:
            f_runs += " (original changed!)"
        exact = _yes(f.get("exact"))
        if f.get("max_rel_diff") is not None:
            exact += f" ({f['max_rel_diff']:.1e})"
        t_runs = "yes" if t["ok"] else f"**no**: {t['error'][:60]}"
        t_pruned = ("" if not t["ok"] else "yes" if t.get("same_shapes")
                    else "**no**, shapes changed" if t.get("pruned_runs") else f"**no**: {t['pruned_error'][:60]}")
        lines.append(f"| {row['model']} | {f_runs} | {exact} | {_macs(f)} | {t_runs} | {t_pruned} | {_macs(t)} |")
    return "\n".join(lines)


def _macs(record: dict) -> str:
    return f"{record['macs_ratio']:.1%}" if record.get("macs_ratio") is not None else ""


def _quiet() -> None:
    warnings.simplefilter("ignore")  # falf_fx's "kept as a leaf" notes, deprecations of the hub libraries
    logging.getLogger("ultralytics").setLevel(logging.ERROR)
    try:
        import transformers
        transformers.logging.set_verbosity_error()
    except ImportError:
        pass


def main() -> None:
    global BUDGET_S
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="some rows only (default: all)")
    parser.add_argument("--report", action="store_true", help="print the table of results/hub.json and exit")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for one tool's prune call")
    args = parser.parse_args()
    BUDGET_S = args.budget
    if args.report:
        print(table(json.loads((RESULTS / OUT).read_text())["rows"]))
        return

    from importlib.metadata import version

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    _quiet()
    todo = models()
    names = args.models or list(todo)
    facts = machine(torch.get_num_threads())
    settings = {"ratio": RATIO, "budget_s": BUDGET_S, "date": datetime.datetime.now().isoformat(timespec="seconds"),
                **{dist: version(dist) for dist in ("torch", "transformers", "ultralytics", "torch-pruning",
                                                    "falf_fx")},
                "falf_fx_setup": "prune(model, x, ratio=0.5); check_equivalence(model, x, seed=0)",
                "torch_pruning_setup": "MagnitudePruner(deepcopy, example_inputs=x, MagnitudeImportance(p=1), "
                                       "pruning_ratio=0.5, ignored_layers=output layers / YOLO Detect); step()"}
    console, rows = Console(), []
    start = time.perf_counter()
    columns = (TextColumn("{task.description:24s}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("hub", total=len(names))
        for name in names:
            progress.update(task, description=name)
            rows.append(measure(name, *todo[name]))
            settings["total_s"] = round(time.perf_counter() - start, 1)
            write_json(OUT, {"machine": facts, "settings": settings, "rows": rows})  # a cut run keeps its rows
            progress.advance(task)
    print(table(rows))
    console.print(f"{len(rows)} models in {settings['total_s']:.0f} s -> {RESULTS / OUT}", highlight=False)


if __name__ == "__main__":
    main()
