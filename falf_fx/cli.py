"""The ``falf-fx`` command line: graph, groups, flops, prune and compress for any importable or saved model.

A user mistake (bad MODEL, bad --input-shape, a model falf_fx cannot handle: any FalfError)
prints one ``error: ...`` line on stderr and exits with status 2; anything else is a bug
of ours: its traceback, a line saying so, and status 3.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import json
import sys
import traceback
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from rich.console import Console
from torch import fx

from .api import analyze, prune
from .capture import trace
from .checkpoint import CheckpointStore
from .compress import compress
from .data import load_data
from .distill import UNTIL
from .errors import FalfError, FalfValueError
from .importance import IMPORTANCE_KINDS
from .methods import METHODS, make_method
from .planning import ALLOCATIONS
from .model_spec import load_model
from .training import TrainConfig, train

with warnings.catch_warnings():
    # fvcore applies torch.jit.script at import time, which torch now deprecates on every run.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
    from .flops import count_cost
    from .text_report import CostReport, GroupsReport, compress_table, graph_json, graph_nodes, graph_table, to_dot

__all__ = ["main"]

EXIT_USER_ERROR = 2


EXIT_BUG = 3


class CliError(FalfValueError):
    """A command-line value that parses but makes no sense (ratio 1.5, shape 0x3)."""


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``1,3,224,224`` -> (1, 3, 224, 224); every size a positive integer."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise CliError(f"--input-shape must be comma-separated integers like 1,3,224,224, not '{text}'") from None
    if not shape or any(s <= 0 for s in shape):
        raise CliError(f"--input-shape sizes must be positive, got '{text}'")
    return shape


class _Session:
    """One command's model, example input and consoles."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.text = args.format == "text"
        self.out = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)
        # compress alone may leave --input-shape out: its data's first batch then gives the shape
        self.input_shape = None if args.input_shape is None else parse_input_shape(args.input_shape)
        self.example = None if self.input_shape is None else torch.randn(
            self.input_shape, generator=torch.Generator().manual_seed(0))

    @contextlib.contextmanager
    def status(self, message: str) -> Iterator[None]:
        """A spinner on stderr in text mode; nothing for machine-readable output."""
        if not self.text:
            yield
            return
        with self.err.status(message):
            yield

    def traced(self) -> fx.GraphModule:
        with self.status(f"loading {self.args.model}"):
            model = load_model(self.args.model).eval()
        with self.status(f"tracing {self.args.model} at input {self.args.input_shape}"):
            return trace(model, self.example)

    def emit(self, renderable: Any) -> None:
        """JSON and DOT go to stdout verbatim; anything else is rendered by rich."""
        if isinstance(renderable, dict):
            sys.stdout.write(json.dumps(renderable, indent=2) + "\n")
        elif isinstance(renderable, str):
            sys.stdout.write(renderable)
        else:
            self.out.print(renderable)


def _cmd_graph(s: _Session) -> None:
    analysis = analyze(s.traced())
    if s.args.format == "dot":
        s.emit(to_dot(analysis, s.args.model))
        return
    nodes = graph_nodes(analysis)
    s.emit(graph_json(s.args.model, s.input_shape, nodes) if s.args.format == "json"
           else graph_table(s.args.model, nodes))


def _cmd_groups(s: _Session) -> None:
    analysis = analyze(s.traced())
    if s.args.format == "dot":
        s.emit(to_dot(analysis, s.args.model))
        return
    with s.status("counting MACs per layer"):
        report = GroupsReport.build(s.args.model, analysis, s.example)
    s.emit(report.to_json() if s.args.format == "json" else report.renderable())


def _cmd_flops(s: _Session) -> None:
    gm = s.traced()
    with s.status("counting MACs"):
        report = CostReport(s.args.model, s.input_shape, count_cost(gm, s.example))
    s.emit(report.to_json() if s.args.format == "json" else report.table())


def _save(gm: fx.GraphModule, path: Path) -> None:
    """The safe format: falf_fx.load reads it back without unpickling code."""
    from .serialize import save

    try:
        save(gm, path)
    except OSError as error:
        raise CliError(f"cannot write --out '{path}': {error.strerror or error}") from error


def _prune_goal(a: argparse.Namespace) -> dict[str, float]:
    """The one ratio or target the command line asked for (default: --ratio 0.5)."""
    goals = {flag: value for flag, value in (("ratio", a.ratio), ("target_macs", a.target_macs),
                                             ("target_params", a.target_params),
                                             ("target_latency", a.target_latency)) if value is not None}
    if len(goals) > 1:
        raise CliError("give one of --ratio, --target-macs, --target-params, --target-latency; got "
                       + ", ".join("--" + flag.replace("_", "-") for flag in goals))
    goals = goals or {"ratio": 0.5}
    (flag, value), = goals.items()
    if not 0.0 < value < 1.0:
        raise CliError(f"--{flag.replace('_', '-')} must be strictly between 0 and 1, got {value}")
    return goals


def _cmd_prune(s: _Session) -> None:
    from .latency import LatencySettings

    a = s.args
    goal = _prune_goal(a)
    if a.round_to is not None and a.round_to != "auto" and (not a.round_to.isdigit() or int(a.round_to) < 1):
        raise CliError(f"--round-to must be a positive integer or 'auto', got {a.round_to}")
    round_to = int(a.round_to) if a.round_to not in (None, "auto") else a.round_to
    if round_to is not None and "ratio" not in goal:
        raise CliError("--round-to goes with --ratio; a target plans every channel count itself")
    if a.batch_size < 1 or (a.threads is not None and a.threads < 1):
        raise CliError("--batch-size and --threads must be positive integers")
    if a.out is not None and not a.out.parent.is_dir():
        raise CliError(f"--out '{a.out}': directory '{a.out.parent}' does not exist")
    gm = s.traced()
    with s.status("counting MACs before pruning"):
        before = count_cost(gm, s.example)
    (flag, value), = goal.items()
    what = (f"{value:.0%} of every prunable group" if flag == "ratio" else
            f"down to {value:.0%} of the {flag.removeprefix('target_')}")
    with s.status(f"pruning {what} by {a.importance} importance"):
        slim = prune(gm, s.example, **goal, importance=a.importance, seed=a.seed, round_to=round_to,
                     allocation=a.allocation, latency=LatencySettings(batch_size=a.batch_size, threads=a.threads),
                     progress=False)  # the status spinner is the live display here
    with s.status("counting MACs after pruning"):
        report = CostReport(a.model, s.input_shape, before, count_cost(slim, s.example))
    target = slim.meta.get("falf_fx_target")
    if a.out is not None:
        _save(slim, a.out)
    if a.format == "json":
        s.emit({**report.to_json(), "settings": {**goal, "importance": a.importance, "seed": a.seed,
                                                 "round_to": round_to, "allocation": a.allocation},
                "target": target, "snapping": slim.meta.get("falf_fx_round_to"), "out": str(a.out) if a.out else None})
        return
    s.emit(report.table())
    if target is not None:
        unit = (f" ({target['before']:.2f} ms -> {target['after']:.2f} ms at batch {target['batch_size']}, "
                f"{target['threads']} threads; the layer tables predicted {target['prediction_error']:+.1%})"
                if target["kind"] == "target_latency" else "")
        s.out.print(f"{flag.replace('_', ' ')} {value}: reached {target['reached']:.3f}"
                    f"{'' if target['met'] else ' (missed)'}{unit}", soft_wrap=True, markup=False)
    if a.out is not None:
        s.out.print(f"saved the slim model to {a.out} (load it with falf_fx.load(path), "
                    f"or inspect it with falf-fx flops {a.out})", soft_wrap=True, markup=False)
    else:
        s.out.print("not saved: pass --out PATH to keep the slim model")


def _cmd_hetconv(s: _Session) -> None:
    from .hetconv import cost_table, hetconv, hetconv_layer_costs, output_distance
    from .latency import LatencySettings

    a = s.args
    if a.p < 1:
        raise CliError(f"--p must be a positive integer, got {a.p}")
    if a.batch_size < 1 or (a.threads is not None and a.threads < 1):
        raise CliError("--batch-size and --threads must be positive integers")
    if a.out is not None and not a.out.parent.is_dir():
        raise CliError(f"--out '{a.out}': directory '{a.out.parent}' does not exist")
    gm = s.traced()
    with s.status(f"replacing convs by HetConv layers with P={a.p}"):
        het = hetconv(gm, s.example, p=a.p, select=a.select or None, form=a.form,
                      latency=LatencySettings(batch_size=a.batch_size, threads=a.threads))
    with s.status("counting MACs before and after"):
        rows = hetconv_layer_costs(gm, het, s.example)
        report = CostReport(a.model, s.input_shape, count_cost(gm, s.example), count_cost(het, s.example))
        distance = output_distance(gm, het, s.example)
    if a.out is not None:
        _save(het, a.out)
    skipped = het.meta["falf_fx.hetconv"]["skipped"]
    if a.format == "json":
        s.emit({**report.to_json(), "p": a.p, "forms": het.meta["falf_fx.hetconv"]["forms"],
                "timings": het.meta["falf_fx.hetconv"].get("timings"), "layers": [vars(r) for r in rows],
                "skipped": skipped,
                "output_distance": distance, "out": str(a.out) if a.out else None})
        return
    s.emit(cost_table(rows, f"{a.model}: HetConv P={a.p}, {len(rows)} convs converted"))
    forms = het.meta["falf_fx.hetconv"]["forms"]
    if a.form == "auto":
        counts = sorted(Counter(forms.values()).items())
        s.out.print("forms measured fastest (batch {}, {} threads): {}".format(
            a.batch_size, het.meta["falf_fx.hetconv"]["threads"],
            ", ".join(f"{form} x{count}" for form, count in counts)), soft_wrap=True, markup=False)
    s.emit(report.table())
    for name, reason in skipped.items():
        s.out.print(f"kept standard: {name}: {reason}", soft_wrap=True, markup=False)
    s.out.print(f"outputs moved by {distance:.3g} (relative L2, example input, before fine-tuning)",
                soft_wrap=True, markup=False)
    if a.out is not None:
        s.out.print(f"saved the HetConv model to {a.out} (load it with falf_fx.load(path))",
                    soft_wrap=True, markup=False)


def _cmd_report(s: _Session) -> None:
    from .html_report import report

    a = s.args
    if not a.out.parent.is_dir():
        raise CliError(f"--out '{a.out}': directory '{a.out.parent}' does not exist")
    if a.ratio is not None and not 0.0 < a.ratio < 1.0:
        raise CliError(f"--ratio must be strictly between 0 and 1, got {a.ratio}")
    with s.status(f"loading {a.model}"):
        model = load_model(a.model).eval()
    with s.status(f"tracing, analysing and laying out {a.model} (Graphviz)"):
        try:
            path = report(model, s.example, a.out, name=a.model, ratio=a.ratio, measure_latency=not a.no_latency)
        except OSError as error:
            raise CliError(f"cannot write --out '{a.out}': {error.strerror or error}") from error
    size = path.stat().st_size
    if a.format == "json":
        s.emit({"model": a.model, "input_shape": list(s.input_shape), "out": str(path), "bytes": size})
        return
    s.out.print(f"wrote {path} ({size / 1e6:.2f} MB): open it in any browser, no network needed",
                soft_wrap=True, markup=False)


def _cross_entropy(outputs: torch.Tensor, batch: tuple) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(outputs, batch[1])


def _method_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``--method-option score=taylor --method-option lam=0.5`` -> {"score": "taylor", "lam": 0.5}."""
    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise CliError(f"--method-option must be KEY=VALUE like score=taylor, not '{pair}'")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key] = text  # a bare word such as taylor is the string it spells
    return options


def _check_compress_args(a: argparse.Namespace) -> None:
    """Every value that cannot work is refused before the model is loaded or trained."""
    if a.target_macs is None and a.target_latency is None and a.tolerance is None:
        raise CliError("give --target-macs (e.g. 0.25 of the original MACs) or --target-latency (e.g. 0.5 of the "
                       "latency measured here), --tolerance (e.g. 0.01 = one point of top-1 accuracy), or both")
    if a.target_macs is not None and a.target_latency is not None:
        raise CliError("give --target-macs or --target-latency, not both")
    if a.target_latency is not None and not 0.0 < a.target_latency < 1.0:
        raise CliError(f"--target-latency is the fraction of the measured latency to keep, strictly between 0 and 1, "
                       f"got {a.target_latency}")
    if a.target_macs is not None and not 0.0 < a.target_macs < 1.0:
        raise CliError(f"--target-macs is the fraction of the original MACs to keep, strictly between 0 and 1, "
                       f"got {a.target_macs}")
    if a.tolerance is not None and not 0.0 <= a.tolerance < 1.0:
        raise CliError(f"--tolerance is a top-1 accuracy drop between 0 and 1 (0.01 = one point), got {a.tolerance}")
    for flag, value, least in (("--rounds", a.rounds, 1), ("--batch-size", a.batch_size, 1),
                               ("--pretrain-epochs", a.pretrain_epochs, 0), ("--finetune-epochs", a.finetune_epochs, 0)):
        if value is not None and value < least:
            raise CliError(f"{flag} must be an integer of at least {least}, got {value}")
    if a.resume and a.checkpoint_dir is None:
        raise CliError("--resume continues from --checkpoint-dir: give the directory of the interrupted run")
    for flag, path in (("--out", a.out), ("--report", a.report)):
        if path is not None and not path.parent.is_dir():
            raise CliError(f"{flag} '{path}': directory '{path.parent}' does not exist")


def _data_example(s: _Session, train_loader: Any) -> torch.Tensor:
    """--input-shape's random input, else the first training sample (batch of one)."""
    if s.example is not None:
        return s.example
    batch = next(iter(train_loader), None)
    if batch is None:
        raise CliError(f"--data '{s.args.data}': the training loader is empty")
    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(inputs, torch.Tensor):
        raise CliError(f"--data '{s.args.data}': batches must start with an input tensor, "
                       f"not {type(inputs).__name__}")
    return inputs[:1]


def _check_model_runs(model: torch.nn.Module, example: torch.Tensor, a: argparse.Namespace) -> None:
    """A model/data mismatch (1-channel LeNet on RGB data) said in one line, before any training."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        raise CliError(f"MODEL {a.model} does not run on inputs of shape {tuple(example.shape)} from --data "
                       f"{a.data}: {_one_line(error)} (size the data with --input-shape N,C,H,W)") from error
    finally:
        model.train(was_training)


def _cmd_compress(s: _Session) -> None:
    from .latency import LatencySettings

    a = s.args
    _check_compress_args(a)
    options = _method_options(a.method_option)
    method = make_method(a.method, **options)  # bad options are refused before anything loads or trains
    with s.status(f"loading {a.model}"):
        model = load_model(a.model)
    with s.status(f"loading --data {a.data}"):
        train_loader, val_loader = load_data(a.data, input_shape=s.input_shape[1:] if s.input_shape else None,
                                             batch_size=a.batch_size, seed=a.seed)
    example = _data_example(s, train_loader)
    _check_model_runs(model, example, a)
    store = CheckpointStore(a.checkpoint_dir) if a.checkpoint_dir is not None else None
    pretrain = train(model, train_loader, _cross_entropy,
                     TrainConfig(epochs=a.pretrain_epochs, lr=a.pretrain_lr, seed=a.seed), phase="pretrain",
                     checkpoints=store, resume=a.resume, progress=s.text) if a.pretrain_epochs else []
    result = compress(model, train_loader, method=method, example_inputs=example,
                      val_loader=val_loader,
                      target_macs=a.target_macs, tolerance=a.tolerance, rounds=a.rounds,
                      target_latency=a.target_latency, latency=LatencySettings(threads=a.latency_threads),
                      finetune_epochs=a.finetune_epochs, finetune_lr=a.finetune_lr,
                      allocation=a.allocation, distill=a.distill, distill_until=a.distill_until,
                      checkpoint_dir=a.checkpoint_dir, resume=a.resume, seed=a.seed, progress=s.text)
    _save(result.model, a.out)
    full = {"model": a.model, "data": a.data, "input_shape": list(example.shape),
            "settings": {"method": a.method, "method_options": options, "target_macs": a.target_macs,
                         "target_latency": a.target_latency, "latency_threads": a.latency_threads,
                         "tolerance": a.tolerance, "rounds": a.rounds, "pretrain_epochs": a.pretrain_epochs,
                         "finetune_epochs": a.finetune_epochs, "finetune_lr": a.finetune_lr,
                         "allocation": a.allocation, "distill": a.distill, "distill_until": a.distill_until,
                         "seed": a.seed},
            **result.report, "history": result.history, "pretrain": pretrain, "out": str(a.out)}
    if a.report is not None:
        try:
            a.report.write_text(json.dumps(full, indent=2) + "\n")
        except OSError as error:
            raise CliError(f"cannot write --report '{a.report}': {error.strerror or error}") from error
    if a.format == "json":
        s.emit(full)
        return
    s.emit(compress_table(result.report, title=f"{a.model} on {a.data}: {result.report['method']}"))
    for record in result.history:
        accuracy = f", {result.report['metric']} {record['metric']:.4f}" if "metric" in record else ""
        verdict = "kept" if record["kept"] else "undone (over --tolerance)"
        s.out.print(f"round {record['round']}: {record['channels_removed']} channels removed, "
                    f"MACs x{record['macs_ratio']:.3f}{accuracy}: {verdict}", soft_wrap=True, markup=False)
    s.out.print(f"saved the slim model to {a.out} (load it with falf_fx.load(path))"
                + (f"; report in {a.report}" if a.report is not None else ""), soft_wrap=True, markup=False)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("model", metavar="MODEL",
                        help="package.module:factory (e.g. torchvision.models:resnet18, "
                             "falf_fx.models:resnet_cifar(depth=32)) or a file saved by 'falf-fx prune --out'")
    common.add_argument("--input-shape", default="1,3,224,224", metavar="N,C,H,W",
                        help="shape of the random example input (default: 1,3,224,224)")
    parser = argparse.ArgumentParser(prog="falf-fx", description="Structured pruning on torch.fx: "
                                     "inspect channel groups and costs, and slim models exactly.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Any, help_text: str, formats: Sequence[str]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.add_argument("--format", choices=formats, default="text", help="output format (default: text)")
        p.set_defaults(run=run)
        return p

    command("graph", _cmd_graph, "the fx graph: every node's op, output shape and channel groups",
            ("text", "json", "dot"))
    command("groups", _cmd_groups, "channel groups: size, prunable channels, MACs share, why frozen",
            ("text", "json", "dot"))
    command("flops", _cmd_flops, "MACs (fvcore), FLOPs (2 x MACs) and parameters", ("text", "json"))
    p = command("prune", _cmd_prune, "remove a ratio of every prunable group's channels and save the "
                "slim model", ("text", "json"))
    p.add_argument("--ratio", type=float, default=None, help="share of each group's channels to remove (default 0.5)")
    p.add_argument("--target-macs", type=float, default=None, metavar="T", help="prune to T of the MACs instead")
    p.add_argument("--target-params", type=float, default=None, metavar="T",
                   help="prune to T of the parameters instead")
    p.add_argument("--target-latency", type=float, default=None, metavar="T",
                   help="prune to T of the latency measured on this machine (layer tables cached in "
                        "~/.cache/falf_fx or $FALF_FX_CACHE)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size the latency is measured at (default 1)")
    p.add_argument("--threads", type=int, default=None, help="threads the latency is measured with (default: torch's)")
    p.add_argument("--allocation", choices=ALLOCATIONS, default="uniform",
                   help="how a target is shared between groups (default uniform)")
    p.add_argument("--importance", choices=IMPORTANCE_KINDS, default="l1",
                   help="channel score: weight magnitude (l1, l2) or random (default l1)")
    p.add_argument("--seed", type=int, default=0, help="seed for --importance random (default 0)")
    p.add_argument("--round-to", default=None, metavar="N",
                   help="keep a multiple of N channels in groups of at least N (e.g. 8 for GPUs); 'auto': the "
                        "multiple measured fastest here, at --batch-size and --threads")
    p.add_argument("--out", type=Path, default=None, metavar="PATH", help="where to save the slim model (falf_fx.save format)")
    p = command("hetconv", _cmd_hetconv, "replace 3x3 convs by HetConv layers (3x3 kernels on 1/P of each "
                "filter's inputs, 1x1 on the rest) and print MACs and params per layer", ("text", "json"))
    p.add_argument("--p", type=int, default=4, help="part P: a 3x3 kernel on 1 input channel in P (default 4)")
    p.add_argument("--select", action="append", default=[], metavar="PATTERN",
                   help="convert the convs whose names match (fnmatch, repeatable; default: every 3x3 conv with "
                        "stride 1 or 2 but the first)")
    p.add_argument("--form", choices=("blocks", "overlap", "auto"), default="blocks",
                   help="blocks: every MAC the design needs, no other; overlap: a dense 1x1 part, no channel "
                        "gather; auto: the faster of the two per layer, timed here (default blocks)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size --form auto times at (default 1)")
    p.add_argument("--threads", type=int, default=None, help="threads --form auto times with (default torch's)")
    p.add_argument("--out", type=Path, default=None, metavar="PATH", help="where to save the HetConv model (falf_fx.save format)")
    p = command("report", _cmd_report, "one self-contained HTML page: the graph coloured by channel group, "
                "what is frozen and why, costs and layer widths", ("text", "json"))
    p.add_argument("--out", type=Path, default=Path("report.html"), metavar="PATH",
                   help="where to write the HTML file (default report.html)")
    p.add_argument("--ratio", type=float, default=None, metavar="R",
                   help="also show costs and layer widths after 'falf-fx prune --ratio R' (untrained preview)")
    p.add_argument("--no-latency", action="store_true", help="leave the CPU latency out (it takes seconds)")
    _add_compress(sub)
    return parser


def _add_compress(sub: Any) -> None:
    help_text = ("train-aware compression: rounds of score -> slim -> fine-tune on --data until a MACs target "
                 "or an accuracy tolerance; saves the slim model, a JSON report and (with --checkpoint-dir) "
                 "report.html")
    p = sub.add_parser("compress", help=help_text, description=help_text)
    p.add_argument("model", metavar="MODEL", help="package.module:factory or a saved model, as for prune")
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="digits, synthetic, cifar10:PATH (the cifar-10-batches-py folder) or package.module:function "
                        "returning (train_loader, val_loader)")
    p.add_argument("--input-shape", default=None, metavar="N,C,H,W",
                   help="example input shape; it also sizes digits and synthetic data (default: the data's first "
                        "sample)")
    p.add_argument("--method", choices=sorted(METHODS), default="magnitude",
                   help="channel scoring (default magnitude: it wins the quality benchmark, see the README)")
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, repeatable; falf/stability: target, score, lam, aux_epochs, aux_lr, "
                        "points, taylor_batches, probe (e.g. score=taylor); play_and_prune: threshold, lam, grow, "
                        "max_threshold, zero, reg_epochs, reg_lr, patience, fold_batches; correlation: mu, "
                        "raise_epochs, raise_lr, penalty; pruner_network: lam, epochs, lr, pruner_lr, threshold, "
                        "search_trials, alpha_step, alpha_max; magnitude: importance; taylor: batches")
    p.add_argument("--target-macs", type=float, default=None, metavar="F",
                   help="fraction of the original MACs to keep, e.g. 0.25")
    p.add_argument("--target-latency", type=float, default=None, metavar="F",
                   help="fraction of the latency measured on this machine to keep (batch 1), e.g. 0.5")
    p.add_argument("--latency-threads", type=int, default=None, metavar="N",
                   help="threads --target-latency is measured with (default: torch's)")
    p.add_argument("--tolerance", type=float, default=None, metavar="F",
                   help="stop before validation accuracy drops by more than F (0.01 = one point)")
    p.add_argument("--rounds", type=int, default=None,
                   help="most score -> slim -> fine-tune rounds (default: the method's own, 1 for score methods)")
    p.add_argument("--pretrain-epochs", type=int, default=0,
                   help="train the model on the data first (default 0: the model is already trained)")
    p.add_argument("--pretrain-lr", type=float, default=0.05, help="pretraining learning rate (default 0.05)")
    p.add_argument("--finetune-epochs", type=int, default=8,
                   help="fine-tuning epochs of the whole run, shared by its rounds under one schedule (default 8)")
    p.add_argument("--finetune-lr", type=float, default=0.02, help="peak fine-tuning learning rate (default 0.02)")
    p.add_argument("--allocation", choices=ALLOCATIONS, default="uniform",
                   help="how the MACs goal is shared between layers: uniform (the same share of every group), "
                        "global or cost (scores ranked across groups; cost: per MAC saved) (default uniform)")
    p.add_argument("--distill", type=float, default=None, metavar="ALPHA",
                   help="weight of distillation from the original model during fine-tuning (0: off; default 0.5 for "
                        "class logits, off for other outputs)")
    p.add_argument("--distill-until", choices=UNTIL, default="teacher_passed",
                   help="distil to the end of the run, or until the slim model's validation metric first reaches the "
                        "original's after an epoch (default teacher_passed)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of digits, synthetic, cifar10 (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of data split, training and method (default 0)")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR", help="save every epoch and round here")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from --checkpoint-dir")
    p.add_argument("--out", type=Path, required=True, metavar="PATH", help="where to save the slim model (falf_fx.save format)")
    p.add_argument("--report", type=Path, default=None, metavar="PATH",
                   help="where to write the JSON report (before/after, settings, round history)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text: rich table; json: the report on stdout (default: text)")
    p.set_defaults(run=_cmd_compress)


def _one_line(error: BaseException) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            args.run(_Session(args))
            status = 0
        except FalfError as error:  # the user's to fix: one line that says how
            sys.stderr.write(f"error: {_one_line(error)}\n")
            status = EXIT_USER_ERROR
        except Exception:  # noqa: BLE001 - anything else is ours
            traceback.print_exc()
            sys.stderr.write("falf-fx: this is a bug in falf_fx, not a mistake in your command: please report it "
                             "with the traceback above\n")
            status = EXIT_BUG
    # falf_fx's own warnings say what was frozen and why; library noise (fvcore's jit tracing) is dropped.
    for w in caught:
        if str(w.message).startswith("falf_fx:"):
            sys.stderr.write(f"warning: {_one_line(w.message)}\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
