"""The user's own loop: compress(finetune=callable) and the step-by-step PruningSession, every method,
resume of a session killed between rounds, and bad metrics, losses and batches by message."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import falf_fx
from falf_fx.errors import FalfError
from falf_fx.metrics import MetricError
from falf_fx.methods import FALF, Correlation, PlayAndPrune, PrunerNetwork, Stability, Taylor
from falf_fx.training import TrainingError
from tests.test_compress import CE, _model, data, trained, tiny_net  # noqa: F401 - fixtures

FAST = {
    "magnitude": "magnitude",
    "taylor": Taylor(batches=2),
    "falf": FALF(aux_epochs=1, taylor_batches=2),
    "stability": Stability(aux_epochs=1, taylor_batches=2),
    "correlation": Correlation(raise_epochs=1),
    "play_and_prune": PlayAndPrune(threshold=0.5, reg_epochs=1, patience=1),
    "pruner_network": PrunerNetwork(epochs=2, search_trials=2, max_batches=4, gate_batches=2),
}


def user_loop(phase: falf_fx.Phase, loader, seen: list, batches: int | None = 6) -> None:
    """A plain PyTorch loop, as a user writes it: their optimizer, their loss, plus the method's penalty."""
    torch.manual_seed(sum(map(ord, phase.name)))  # deterministic, so a resumed run can be compared
    model = phase.model
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    penalties = []
    for epoch in range(phase.epochs):
        order = torch.Generator().manual_seed(epoch)  # the data order too: a resumed run sees the same batches
        for index, (x, y) in enumerate(DataLoader(loader.dataset, batch_size=64, shuffle=True, generator=order)):
            if index == batches:
                break
            outputs = model(x)
            assert isinstance(outputs, torch.Tensor) and outputs.shape == (x.shape[0], 10)  # the user's outputs
            penalty = phase.penalty()
            penalties.append(float(penalty.detach()))
            loss = nn.functional.cross_entropy(outputs, y) + penalty
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seen.append((phase.round, phase.kind, phase.epochs, max(penalties, default=0.0)))


@pytest.mark.parametrize("name", sorted(FAST))
def test_a_session_runs_every_method_inside_the_users_loop(name, data, trained):
    target = None if name == "play_and_prune" else 0.5
    session = falf_fx.PruningSession(_model(trained), data[0], method=FAST[name], val_loader=data[1],
                                     target_macs=target, tolerance=0.2 if target is None else None, rounds=2,
                                     finetune_epochs=2)
    seen: list = []
    for phase in session.phases():
        user_loop(phase, data[0], seen, None if name == "play_and_prune" else 6)  # l1 needs a whole epoch to zero
    result = session.result()
    kinds = {kind for _, kind, _, _ in seen}
    assert "finetune" in kinds
    own = {"falf": "fatuous", "stability": "fatuous", "correlation": "correlate", "play_and_prune": "regularise",
           "pruner_network": "npn"}
    if name in own:
        assert own[name] in kinds
        assert max(p for _, kind, _, p in seen if kind == own[name]) > 0  # the method's term reached the loss
    assert all(p == 0 for _, kind, _, p in seen if kind == "finetune")
    assert result.report["macs_ratio"] < 1.0
    if target is not None:
        assert result.report["target"]["met"]
    assert result.report["metric"] == "top1" and 0 <= result.report["after"]["metric"] <= 1
    assert result.model(next(iter(data[1]))[0]).shape[1] == 10


def test_compress_hands_every_phase_to_finetune(data, trained):
    calls = []

    def finetune(model, epochs, phase):
        assert model is phase.model and epochs == phase.epochs
        user_loop(phase, data[0], calls)

    result = falf_fx.compress(_model(trained), data[0], method=FAST["falf"], target_macs=0.5, rounds=2,
                              finetune_epochs=2, finetune=finetune, progress=False, measure_latency=False)
    assert [(r, k) for r, k, _, _ in calls] == [(0, "fatuous"), (0, "finetune"), (1, "fatuous"), (1, "finetune")]
    assert result.report["target"]["met"]
    assert result.report["budget"]["auxiliary_epochs"] == {"fatuous": 2}


def test_leaving_the_loop_early_stops_the_worker_and_keeps_the_last_round(data, trained):
    session = falf_fx.PruningSession(_model(trained), data[0], target_macs=0.3, rounds=3, finetune_epochs=3)
    for phase in session.phases():
        if phase.round == 1:
            break
        user_loop(phase, data[0], [])
    assert len(session.history) == 1 and session.model is not None
    with pytest.raises(FalfError, match="iterate session.phases"):
        session.result()


def test_an_error_in_the_method_reaches_the_users_loop(data, trained):
    def broken(outputs, batch):
        raise KeyError("boxes")

    session = falf_fx.PruningSession(_model(trained), data[0], method=Taylor(batches=1), loss_fn=broken,
                                     target_macs=0.5)
    with pytest.raises(KeyError, match="boxes"):
        for phase in session.phases():
            user_loop(phase, data[0], [])


_SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    sys.path.insert(0, {root!r})
    import falf_fx
    from tests.test_compress import _model, tiny_net
    from tests.test_session import user_loop
    from falf_fx.data import digits_loaders
    from falf_fx.methods import PlayAndPrune
    train, val = digits_loaders(image_size=8, batch_size=64, seed=0)[:2]
    session = falf_fx.PruningSession(_model(torch.load({weights!r})), train, method=PlayAndPrune(threshold=0.5),
                                     val_loader=val, tolerance=0.3, rounds=3, finetune_epochs=3)
    kill, state = sys.argv[1] == "kill", {state!r}
    if sys.argv[1] == "resume":
        session.load_state_dict(torch.load(state, weights_only=True))
    for phase in session.phases():
        torch.save(session.state_dict(), state)  # the last finished round
        if kill and phase.round == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        user_loop(phase, train, [])
    torch.save({{k: v for k, v in session.result().model.state_dict().items()}}, {out!r} + sys.argv[1])
""")


def test_a_session_killed_between_rounds_resumes_to_the_same_model(tmp_path, trained):
    weights = tmp_path / "weights.pt"
    torch.save(trained, weights)
    script = tmp_path / "run.py"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script.write_text(_SCRIPT.format(root=root, weights=str(weights), state=str(tmp_path / "state.pt"),
                                     out=str(tmp_path / "final-")))
    env = {**os.environ, "PYTHONPATH": root}
    run = lambda mode: subprocess.run([sys.executable, str(script), mode], env=env, cwd=root,  # noqa: E731
                                      capture_output=True, text=True, timeout=600)
    killed = run("kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["round"] == 1  # rounds 1 and 2 (indices 0, 1) finished before the kill
    resumed = run("resume")
    assert resumed.returncode == 0, resumed.stderr
    whole = run("whole")
    assert whole.returncode == 0, whole.stderr
    a, b = torch.load(tmp_path / "final-resume"), torch.load(tmp_path / "final-whole")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_state_from_another_model_is_refused(data, trained):
    session = falf_fx.PruningSession(_model(trained), data[0], target_macs=0.5)
    state = session.state_dict()
    state["fingerprint"] = "0" * 40
    with pytest.raises(FalfError, match="another model"):
        session.load_state_dict(state)


# -- bad input, each by its message ------------------------------------------------------------------------


def test_a_metric_that_gives_nan_names_the_round(data, trained):
    with pytest.raises(MetricError, match=r"round 1, after fine-tuning"):
        calls = iter([0.9, float("nan")])
        falf_fx.compress(_model(trained), data[0], evaluate=lambda model: next(calls), target_macs=0.5,
                         finetune_epochs=0, progress=False, measure_latency=False)


def test_a_metric_that_raises_is_named(data, trained):
    def metric(model):
        raise RuntimeError("no boxes")

    with pytest.raises(MetricError, match=r"evaluate \(metric\) raised RuntimeError before pruning: no boxes"):
        falf_fx.compress(_model(trained), data[0], evaluate=metric, tolerance=0.01, progress=False)


def test_a_loss_that_does_not_fit_the_batches_names_the_phase(data, trained):
    def loss_fn(outputs, batch):
        return nn.functional.cross_entropy(outputs, batch[1]["labels"])  # the loader gives a tensor

    with pytest.raises(TrainingError, match=r"phase 'round0-finetune', epoch 1, batch 1: IndexError.*loss_fn expect"):
        falf_fx.compress(_model(trained), data[0], loss_fn=loss_fn, target_macs=0.5, finetune_epochs=1,
                         progress=False, measure_latency=False)


def test_a_loss_that_is_not_a_scalar_is_refused(data, trained):
    loss_fn = lambda outputs, batch: nn.functional.cross_entropy(outputs, batch[1], reduction="none")  # noqa: E731
    with pytest.raises(TrainingError, match="one number"):
        falf_fx.compress(_model(trained), data[0], loss_fn=loss_fn, target_macs=0.5, finetune_epochs=1,
                         progress=False, measure_latency=False)


class _DictOutputs(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return {"logits": self.net(x)}


def test_a_tolerance_on_outputs_that_are_not_logits_asks_for_evaluate(data, trained):
    loss_fn = lambda outputs, batch: nn.functional.cross_entropy(outputs["logits"], batch[1])  # noqa: E731
    with pytest.raises(FalfError, match="not class logits.*pass evaluate="):
        falf_fx.compress(_DictOutputs(_model(trained)), data[0], loss_fn=loss_fn, val_loader=data[1], tolerance=0.01)
    with pytest.raises(FalfError, match="evaluate must be one of"):
        falf_fx.compress(_model(trained), data[0], val_loader=data[1], evaluate="nope", tolerance=0.01)
    @torch.no_grad()
    def top1(model):
        model.eval()
        hits = [(model(x)["logits"].argmax(1) == y).float() for x, y in data[1]]
        return float(torch.cat(hits).mean())

    result = falf_fx.compress(_DictOutputs(_model(trained)), data[0], loss_fn=loss_fn, evaluate=top1,
                              target_macs=0.5, finetune_epochs=1, progress=False, measure_latency=False)
    assert result.report["metric"] == "top1" and 0 < result.report["after"]["metric"] <= 1
    assert set(result.model(next(iter(data[1]))[0])) == {"logits"}
