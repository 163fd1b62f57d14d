"""One error policy: what a user can get wrong is a FalfError (and the builtin it is) that says the fix;
anything else is a bug, and the CLI says so with its traceback."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import falf_fx
from falf_fx import cli
from falf_fx.data import digits_loaders
from falf_fx.errors import FalfError, FalfTypeError, FalfValueError
from falf_fx.model_spec import ModelSpecError

ROOT = Path(__file__).resolve().parent.parent
X = torch.randn(1, 3, 16, 16)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))


def test_no_bare_value_or_type_error_is_raised_in_the_library():
    bare = []
    for path in [p for folder in ("falf_fx", "passes") for p in (ROOT / folder).rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and \
                    getattr(node.exc.func, "id", None) in ("ValueError", "TypeError"):
                bare.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert bare == []


def test_the_cli_and_model_spec_errors_are_falf_errors():
    assert issubclass(cli.CliError, FalfValueError) and issubclass(ModelSpecError, FalfValueError)


@pytest.mark.parametrize("call, kind, message", [
    (lambda: falf_fx.prune(_net(), X, ratio=1.5), FalfValueError, "ratio must be strictly between 0 and 1"),
    (lambda: falf_fx.save(_net(), "x.falf"), FalfTypeError, "takes a torch.fx.GraphModule or a model holding slim parts, not a Sequential"),
    (lambda: falf_fx.trace(_net(), X, leaf_modules=[3.5]), FalfTypeError, "leaf_modules entries are module names"),
    (lambda: falf_fx.compress(_net(), digits_loaders(image_size=16, channels=3)[0]), FalfValueError,
     "give target_macs .* tolerance"),
    (lambda: falf_fx.compress(_net(), digits_loaders(image_size=16, channels=3)[0], target_macs=0.5,
                              method="nope"), FalfValueError, "nope"),
    (lambda: falf_fx.report([], X, "r.html"), FalfTypeError, "takes a model"),
])
def test_user_errors_are_falf_errors_that_say_the_fix(call, kind, message):
    with pytest.raises(kind, match=message) as caught:
        call()
    assert isinstance(caught.value, FalfError)


def test_a_bug_prints_its_traceback_and_says_it_is_ours(monkeypatch, capsys):
    def broken(session):
        raise RuntimeError("an internal invariant broke")

    monkeypatch.setattr(cli, "_cmd_flops", broken)
    assert cli.main(["flops", "falf_fx.models:lenet5", "--input-shape", "1,1,28,28"]) == cli.EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: an internal invariant broke" in err
    assert "this is a bug in falf_fx, not a mistake in your command: please report it" in err


def test_a_user_error_prints_one_line_and_no_traceback(capsys):
    assert cli.main(["prune", "falf_fx.models:lenet5", "--input-shape", "1,1,28,28", "--ratio", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --ratio must be strictly between 0 and 1")
    assert "Traceback" not in err
