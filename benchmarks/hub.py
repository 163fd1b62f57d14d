"""Hub benchmark: falf_fx against Torch-Pruning on Hugging Face and Ultralytics models, as their libraries return them.

Models: the 12 Hugging Face models of ``tests/hub_models.py`` (CNNs, hybrids,
vision transformers, segmentation, depth, BERT), ConvNeXtV2 (exact but with
nothing falf_fx can cut), Ultralytics' YOLOv8n / YOLO11n DetectionModel in
eval and in train mode, and the 12 torchvision detectors
(``list_models(module=torchvision.models.detection)``) in eval mode, built with
``weights=None, weights_backbone=None, num_classes=5`` (R-CNNs, FCOS and
RetinaNets with ``min_size=max_size=64``; SSDs resize to 300 / 320 themselves)
on ``images = [torch.rand(3, 64, 64)]``.  Each is built from its config with
random weights after ``torch.manual_seed(0)`` and passed as it is: no wrapper,
no surgery.  The question is what a user gets when handing such a model to
each tool.

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

Detectors.  A detector's forward (anchors, box decoding, NMS, ROI pooling) is
Python on tensor data: falf_fx captures it in parts (``falf_fx.parts``:
backbone, FPN, RPN / detection heads, ROI heads, each with the inputs a real
eval-mode run gives it) and ``prune(model, (images,), ratio=0.5)`` returns the
user's detector with those parts slim.  fvcore cannot count a whole detector's
forward reliably (its jit trace of the data-dependent post-processing), so for
both tools MACs kept = the sum over falf_fx's captured parts of the part's MACs
on its inputs (``count_cost``), pruned over original: falf_fx's slim part on the
original part inputs (its interfaces keep their channels); Torch-Pruning's
pruned submodule of the same name on the part inputs re-recorded on the pruned
model (its changed channel counts), with the original's leading dimension (the
number of proposals / detections, which random weights change) so that both
are costed on the same amount of work.  The code between the parts is counted
by neither.  Exactness: ``check_equivalence(part.graph_module,
part.example_inputs, seed=0)`` on every part, all must pass (the largest max
relative difference is shown).  "Runs" for a detector: ``model(images)``
returns a list of dicts with ``boxes``.  Torch-Pruning's ``ignored_layers`` for
the detectors: those of its own example for torchvision detectors
(``examples/torchvision_models/torchvision_pruning.py``): SSDs the whole
``head``; Faster R-CNNs the RPN's ``cls_logits`` / ``bbox_pred``, the FPN and
``roi_heads``; FCOS its ``cls_logits``, ``bbox_reg``, ``bbox_ctrness``;
Keypoint R-CNN the RPN's predictors, the FPN's ``layer_blocks``, ``box_head``,
``box_predictor``, ``keypoint_predictor``; Mask R-CNNs the RPN's predictors,
``box_predictor``, ``mask_predictor``; RetinaNets ``cls_logits``, ``bbox_reg``
(the example names one of each pair of variants; the other gets the same).

Everything runs in this process, one model after another: about 6 min on 2
cores, 4 of them for the Hugging Face and Ultralytics models (90 s of it
Torch-Pruning running out of its budget thrice), under 2 for the detectors;
twice that with a test run sharing the cores.  ``settings.commit`` says which
checkout ran ("+dirty": falf_fx's sources differed from it).
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
from typing import Optional

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
BUDGET_S = 30  # calls that return take under 3 s here, a detector's under 6 s (17 s on shared cores)


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
    from tests.hub_models import hugging_face, ultralytics

    table = {name: (lambda b=build: b().eval(), example)
             for name, (build, example) in hugging_face().items()}
    for cfg in ("yolov8n", "yolo11n"):
        for mode in ("eval", "train"):
            table[f"{cfg} ({mode})"] = (lambda c=cfg, m=mode: ultralytics(f"{c}.yaml").train(m == "train"),
                                        lambda: torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    table.update(detectors())
    return table


def _detector(name: str) -> nn.Module:
    from torchvision.models import detection
    size = {} if name.startswith("ssd") else {"min_size": 64, "max_size": 64}
    return detection.__dict__[name](weights=None, weights_backbone=None, num_classes=5, **size).eval()


def _images() -> list:
    return [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))]


def detectors() -> dict:
    """The torchvision detectors, eval mode, on a list of one 64 x 64 image."""
    import torchvision
    return {name: (lambda n=name: _detector(n), _images)
            for name in torchvision.models.list_models(module=torchvision.models.detection)}


def _is_detector(name: str) -> bool:
    import torchvision
    return name in torchvision.models.list_models(module=torchvision.models.detection)


def _returns_boxes(out) -> bool:
    return isinstance(out, list) and len(out) > 0 and all(
        isinstance(d, dict) and isinstance(d.get("boxes"), torch.Tensor) and d["boxes"].shape[-1:] == (4,)
        for d in out)


def _raw_outputs(model, x):
    with torch.no_grad():
        return model(x)


def _outputs(model, x) -> list:
    return tree_flatten(_raw_outputs(model, x))[0]


def _tensors_equal(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v
                                    for u, v in zip(a, b))


def _tp_step(model, example_inputs, ignored_layers) -> dict:
    """Torch-Pruning's README recipe on ``model`` (in place), timed under the budget: the record so far."""
    import torch_pruning as tp

    record: dict = {"ok": False, "exact": "n/a"}  # Torch-Pruning does not claim it
    try:
        ignored = ignored_layers()
        names = {m: n for n, m in model.named_modules()}
        record["ignored_layers"] = [names[m] for m in ignored]
        start = time.perf_counter()
        with Budget(BUDGET_S):
            pruner = tp.pruner.MagnitudePruner(model, example_inputs=example_inputs,
                                               importance=tp.importance.MagnitudeImportance(p=1),
                                               pruning_ratio=RATIO, ignored_layers=ignored)
            pruner.step()
        record["seconds"] = round(time.perf_counter() - start, 3)
        record["ok"] = True
    except Exception as error:  # noqa: BLE001 - a failure is a result
        record["error"] = _error(error)
    return record


def _exactness(model, inputs) -> tuple[Optional[bool], Optional[float], int, Optional[str]]:
    """The oracle on a random plan: (exact, max relative difference, channels removed, error)."""
    from falf_fx.errors import EquivalenceError
    from falf_fx.testing import check_equivalence

    try:
        result = check_equivalence(model, inputs, seed=0)
        return True, result.max_rel_diff, result.channels_removed, None
    except EquivalenceError as error:
        found = re.search(r"relative ([0-9.e+-]+)", str(error))
        return False, float(found.group(1)) if found else None, 0, _error(error)
    except Exception as error:  # noqa: BLE001 - the oracle could not run at all
        return None, None, 0, _error(error)


def _original_unchanged(record: dict, model, x, before: list) -> None:
    try:
        record["original_unchanged"] = _tensors_equal(before, _outputs(model, x))
    except Exception as error:  # noqa: BLE001
        record.update(original_unchanged=False, original_error=_error(error))


def run_falf(model, x, before: list, full) -> dict:
    import falf_fx
    from falf_fx.flops import count_cost

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
    exact, worst, removed, failure = _exactness(model, x)
    record.update(exact=exact, max_rel_diff=worst)
    if exact:
        record["channels_removed"] = removed
    if failure:
        record["exact_error"] = failure
    _original_unchanged(record, model, x, before)
    return record


def _tp_ignored(model, x) -> list:
    detect = [m for m in model.modules() if type(m).__name__ == "Detect"]
    return detect or output_layers(model, x)


def run_tp(model, x, shapes: list, full) -> dict:
    """Torch-Pruning on ``model`` (a copy: pruned in place); MACs against ``full``, the original's cost."""

    from falf_fx.flops import count_cost

    record = _tp_step(model, x, lambda: _tp_ignored(model, x))
    if not record["ok"]:
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


def _tp_ignored_detector(name: str, model) -> list:
    """Torch-Pruning's ignored_layers for a torchvision detector, as its own torchvision example lists them."""
    rpn = [model.rpn.head.cls_logits, model.rpn.head.bbox_pred] if hasattr(model, "rpn") else []
    if name.startswith("ssd"):
        return [model.head]
    if name.startswith("fasterrcnn"):
        return rpn + [model.backbone.fpn, model.roi_heads]
    if name.startswith("fcos"):
        return [model.head.classification_head.cls_logits, model.head.regression_head.bbox_reg,
                model.head.regression_head.bbox_ctrness]
    if name.startswith("keypointrcnn"):
        return rpn + [model.backbone.fpn.layer_blocks, model.roi_heads.box_head, model.roi_heads.box_predictor,
                      model.roi_heads.keypoint_predictor]
    if name.startswith("maskrcnn"):
        return rpn + [model.roi_heads.box_predictor, model.roi_heads.mask_predictor]
    if name.startswith("retinanet"):
        return [model.head.classification_head.cls_logits, model.head.regression_head.bbox_reg]
    raise KeyError(name)


def _parts_macs(model, parts, inputs: dict) -> int:
    """MACs of ``model``'s submodules named as ``parts``, each on ``inputs[name]``."""
    from falf_fx.flops import count_cost
    return sum(count_cost(model.get_submodule(p.name), inputs[p.name]).macs for p in parts)


def _same_work(original: tuple, recorded: tuple) -> tuple:
    """``recorded`` (a part's inputs on the pruned model) with ``original``'s leading dimension (proposals)."""
    from torch.utils._pytree import tree_unflatten

    ours, spec = tree_flatten(original)
    theirs, spec_theirs = tree_flatten(recorded)
    if spec != spec_theirs:
        raise ValueError("the pruned model calls the part with differently structured inputs")
    leaves = []
    for o, r in zip(ours, theirs):
        if isinstance(o, torch.Tensor) and isinstance(r, torch.Tensor) and o.shape != r.shape:
            shape = (o.shape[0], *r.shape[1:]) if o.dim() == r.dim() and o.dim() >= 2 else tuple(r.shape)
            leaves.append(torch.rand(shape, dtype=r.dtype, generator=torch.Generator().manual_seed(0)))
        else:
            leaves.append(o if isinstance(o, torch.Tensor) else r)
    return tree_unflatten(leaves, spec)


def run_falf_detector(model, images: list, parts, before: list, full_macs: int) -> dict:
    import falf_fx

    record: dict = {"ok": False}
    try:
        start = time.perf_counter()
        with Budget(BUDGET_S):
            slim = falf_fx.prune(model, (images,), ratio=RATIO)
        record["seconds"] = round(time.perf_counter() - start, 3)
        record["ok"] = True
        try:
            cut = _parts_macs(slim, parts, {p.name: p.example_inputs for p in parts})
            record["macs_ratio"] = round(cut / full_macs, 4)
        except Exception as error:  # noqa: BLE001 - a failure is a result
            record.update(macs_ratio=None, macs_error=_error(error))
        record["params_ratio"] = round(sum(p.numel() for p in slim.parameters())
                                       / sum(p.numel() for p in model.parameters()), 4)
        try:
            with torch.no_grad():
                out = slim(images)
            record.update(slim_runs=True, boxes=_returns_boxes(out))
        except Exception as error:  # noqa: BLE001
            record.update(slim_runs=False, boxes=False, slim_error=_error(error))
    except Exception as error:  # noqa: BLE001
        record["error"] = _error(error)
    worst, removed, failures = 0.0, 0, []
    for part in parts:
        exact, rel, part_removed, failure = _exactness(part.graph_module, part.example_inputs)
        worst, removed = max(worst, rel or 0.0), removed + part_removed
        if failure:
            failures.append(f"{part.name}: {failure}")
    record.update(exact=not failures, max_rel_diff=worst, channels_removed=removed, parts=[p.name for p in parts])
    if failures:
        record["exact_error"] = "; ".join(failures)[:600]
    _original_unchanged(record, model, images, before)
    return record


def run_tp_detector(name: str, model, images: list, parts, full_macs: int) -> dict:
    """Torch-Pruning on a detector (a copy: pruned in place), as its torchvision example does."""

    from falf_fx.parts import record_calls

    params = sum(p.numel() for p in model.parameters())
    record = _tp_step(model, [images], lambda: _tp_ignored_detector(name, model))
    if not record["ok"]:
        return record
    record["params_ratio"] = round(sum(p.numel() for p in model.parameters()) / params, 4)
    try:
        out = _raw_outputs(model, images)
        record.update(pruned_runs=True, boxes=_returns_boxes(out))
    except Exception as error:  # noqa: BLE001
        record.update(pruned_runs=False, boxes=False, pruned_error=_error(error))
        record["macs_ratio"] = None
        return record
    try:
        calls = record_calls(model, (images,), [p.name for p in parts])
        missing = [p.name for p in parts if p.name not in calls]
        if missing:
            raise ValueError(f"the pruned model does not call {', '.join(missing)}")
        inputs = {p.name: _same_work(p.example_inputs, calls[p.name]) for p in parts}
        record["macs_ratio"] = round(_parts_macs(model, parts, inputs) / full_macs, 4)
    except Exception as error:  # noqa: BLE001
        record.update(macs_ratio=None, macs_error=_error(error))
    return record


def measure_detector(name: str, build, example) -> dict:
    from falf_fx.flops import count_cost
    from falf_fx.parts import capture_parts

    row: dict = {"model": name}
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        model, images = build(), example()
        before = _outputs(model, images)
        twin = copy.deepcopy(model)  # Torch-Pruning's, taken before falf_fx sees the model
        parts = capture_parts(model, (images,))
        full_macs = sum(count_cost(p.graph_module, p.example_inputs).macs for p in parts)  # both ratios' denominator
    except Exception as error:  # noqa: BLE001
        row["error"] = f"could not build: {_error(error)}"
        return row
    row["input"] = [list(image.shape) for image in images]
    row["falf_fx"] = run_falf_detector(model, images, parts, before, full_macs)
    row["torch_pruning"] = run_tp_detector(name, twin, images, parts, full_macs)
    row["row_s"] = round(time.perf_counter() - start, 2)
    return row


def measure(name: str, build, example) -> dict:
    from falf_fx.flops import count_cost

    if _is_detector(name):
        return measure_detector(name, build, example)
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
        if f.get("slim_runs") and "boxes" in f:
            f_runs = "yes, boxes" if f["boxes"] else "**no** boxes"
        if f.get("original_unchanged") is False:
            f_runs += " (original changed!)"
        exact = _yes(f.get("exact"))
        if f.get("max_rel_diff") is not None:
            exact += f" ({f['max_rel_diff']:.1e})"
        t_runs = "yes" if t["ok"] else f"**no**: {t['error'][:60]}"
        if "boxes" in t:  # a detector: its outputs' shapes are data-dependent
            t_pruned = ("yes, boxes" if t["boxes"] else "**no** boxes") if t.get("pruned_runs") \
                else f"**no**: {t['pruned_error'][:60]}"
        else:
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


def _commit() -> str:
    """The checkout's commit, "+dirty" when falf_fx's sources differ from it (the library moves under a run)."""
    import subprocess
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "falf_fx", "passes"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


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
                "commit": _commit(),
                **{dist: version(dist) for dist in ("torch", "torchvision", "transformers", "ultralytics",
                                                    "torch-pruning", "falf_fx")},
                "falf_fx_setup": "prune(model, x, ratio=0.5); check_equivalence(model, x, seed=0)",
                "torch_pruning_setup": "MagnitudePruner(deepcopy, example_inputs=x, MagnitudeImportance(p=1), "
                                       "pruning_ratio=0.5, ignored_layers=output layers / YOLO Detect / "
                                       "torchvision detectors: as Torch-Pruning's torchvision example); step()",
                "detectors": "eval, weights=None, weights_backbone=None, num_classes=5, min_size=max_size=64 "
                             "(not SSDs), images=[rand(3, 64, 64)]; prune(model, (images,)); MACs: sum over "
                             "falf_fx's captured parts; exact: check_equivalence on every part"}
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
