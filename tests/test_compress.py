"""compress(): methods end to end on a tiny net, targets, tolerance, resume, and every bad input."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import falf_fx
from falf_fx.checkpoint import CheckpointError
from falf_fx.data import digits_loaders
from falf_fx.errors import FalfError, FalfTypeError
from falf_fx.html_report import _distillation_fact
from falf_fx.methods import FALF, PlayAndPrune, ScoreMethod, Stability, Taylor
from falf_fx.training import TrainingError
from tests.conftest import pretrained_state, with_state

CE = lambda out, batch: nn.functional.cross_entropy(out, batch[1])  # noqa: E731


def tiny_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                         nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def data():
    return digits_loaders(image_size=8, batch_size=64, seed=0)


@pytest.fixture(scope="module")
def trained(data):
    return pretrained_state(tiny_net, data[0], epochs=6)


def _model(state) -> nn.Sequential:
    return with_state(tiny_net, state)


FAST_OPTIONS = dict(aux_epochs=1, taylor_batches=2)
FALF_FAST = dict(method=FALF(**FAST_OPTIONS), finetune_epochs=1, progress=False)


@pytest.mark.parametrize("method", [FALF(**FAST_OPTIONS), Stability(**FAST_OPTIONS), "magnitude"])
def test_methods_reach_the_macs_target(method, data, trained):
    result = falf_fx.compress(_model(trained), data[0], method=method, val_loader=data[1], target_macs=0.5,
                              rounds=1, finetune_epochs=1, progress=False)
    method = method if isinstance(method, str) else method.name
    assert result.report["macs_ratio"] <= 0.56
    assert result.report["after"]["macs"] < result.report["before"]["macs"]
    assert result.history[0]["method"] == method and result.history[0]["kept"]
    assert 0.0 <= result.report["after"]["metric"] <= 1.0
    assert result.model(next(iter(data[1]))[0]).shape[1] == 10


def test_falf_keeps_accuracy_at_half_the_macs(data, trained):
    result = falf_fx.compress(_model(trained), data[0], val_loader=data[1], target_macs=0.5, rounds=2, **FALF_FAST)
    assert result.report["before"]["metric"] - result.report["after"]["metric"] < 0.1


def test_tolerance_never_keeps_a_round_outside_it(data, trained):
    result = falf_fx.compress(_model(trained), data[0], method="magnitude", val_loader=data[1], tolerance=0.02,
                              rounds=3, step=0.5, finetune_epochs=1, progress=False)
    base = result.report["before"]["metric"]
    assert all(base - h["metric"] <= 0.02 for h in result.history if h["kept"])
    assert base - result.report["after"]["metric"] <= 0.02


def test_bad_requests_are_refused_before_training(data, trained, tmp_path):
    with pytest.raises(ValueError, match="give target_macs"):
        falf_fx.compress(_model(trained), data[0])
    with pytest.raises(ValueError, match="val_loader"):
        falf_fx.compress(_model(trained), data[0], tolerance=0.01)
    with pytest.raises(ValueError, match="cannot be reached"):
        falf_fx.compress(_model(trained), data[0], target_macs=1e-4, checkpoint_dir=tmp_path, **FALF_FAST)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="method must be one of"):
        falf_fx.compress(_model(trained), data[0], method="nope", target_macs=0.5)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        falf_fx.compress(_model(trained), data[0], target_macs=0.5, checkpoint_dir=tmp_path / "none", resume=True)


def test_bad_data_gets_clear_errors(trained):
    images = torch.randn(32, 1, 8, 8)
    empty = DataLoader(TensorDataset(images[:0], torch.zeros(0, dtype=torch.long)), batch_size=8)
    with pytest.raises(FalfError, match="empty"):
        falf_fx.compress(_model(trained), empty, target_macs=0.5)
    out_of_range = DataLoader(TensorDataset(images, torch.full((32,), 12)), batch_size=8)
    with pytest.raises(FalfError, match="labels range from 12 to 12 but the model has 10 outputs"):
        falf_fx.compress(_model(trained), out_of_range, target_macs=0.5)
    not_logits = nn.Sequential(tiny_net(), nn.Unflatten(1, (5, 2)))
    loader = DataLoader(TensorDataset(images, torch.randint(0, 5, (32,))), batch_size=8)
    with pytest.raises(FalfError, match="not class logits .* pass loss_fn="):
        falf_fx.compress(not_logits, loader, target_macs=0.5)
    nan = lambda out, batch: out.sum() * float("nan")  # noqa: E731
    with pytest.raises(TrainingError, match=r"phase 'round0-fatuous', epoch 1, batch 1"):
        falf_fx.compress(_model(trained), loader, loss_fn=nan, target_macs=0.5, **FALF_FAST)


def test_a_killed_compress_resumes_to_the_same_result(data, trained, tmp_path):
    options = dict(val_loader=data[1], target_macs=0.4, rounds=2, seed=1, **FALF_FAST)
    uninterrupted = falf_fx.compress(_model(trained), data[0], **options)

    class Killed(BaseException):  # a crash (like KeyboardInterrupt), not a loss error
        pass

    calls = []

    def dies_in_round_two(out, batch):
        calls.append(1)
        if len(calls) == 50:
            raise Killed
        return CE(out, batch)

    with pytest.raises(Killed):
        falf_fx.compress(_model(trained), data[0], loss_fn=dies_in_round_two, checkpoint_dir=tmp_path, **options)
    assert (tmp_path / "compress.pt").exists()
    resumed = falf_fx.compress(_model(trained), data[0], loss_fn=CE, checkpoint_dir=tmp_path, resume=True, **options)
    assert resumed.history == uninterrupted.history
    for a, b in zip(resumed.model.state_dict().values(), uninterrupted.model.state_dict().values()):
        assert torch.equal(a, b)
    other = nn.Sequential(tiny_net(), nn.Identity())
    with pytest.raises(CheckpointError, match="different model"):
        falf_fx.compress(other, data[0], checkpoint_dir=tmp_path, resume=True, **options)


@pytest.fixture(scope="module")
def weak(data):
    """One epoch of training (15% on validation): a teacher the slim model overtakes within two epochs."""
    return pretrained_state(tiny_net, data[0], epochs=1)


def test_distillation_stops_where_the_student_passes_the_teacher_and_resumes_so(data, weak, tmp_path):
    options = dict(val_loader=data[1], target_macs=0.5, finetune_epochs=4, progress=False, measure_latency=False)
    passed = falf_fx.compress(_model(weak), data[0], **options)
    stopped = passed.report["budget"]["distill"]["stopped"]
    teacher = passed.report["before"]["metric"]
    assert stopped["round"] == 1 and stopped["finetune_epoch"] <= 2 and stopped["metric"] >= teacher
    assert stopped["teacher_metric"] == teacher
    assert f"off from fine-tuning epoch {stopped['finetune_epoch']} (round 1)" in _distillation_fact(
        passed.report["budget"]["distill"])  # what report.html says
    to_the_end = falf_fx.compress(_model(weak), data[0], **{**options, "distill_until": "end"})
    assert to_the_end.report["budget"]["distill"]["stopped"] is None
    assert not torch.equal(to_the_end.model.state_dict()["8.weight"], passed.model.state_dict()["8.weight"])
    blind = falf_fx.compress(_model(weak), data[0], **{**options, "val_loader": None})  # no metric: to the end
    assert blind.report["budget"]["distill"] == {**to_the_end.report["budget"]["distill"], "until": "end"}

    class Killed(BaseException):
        pass

    calls = []

    def dies_in_epoch_three(out, batch):  # 23 batches an epoch: after the epoch-2 checkpoint, with the teacher off
        calls.append(1)
        if len(calls) == 2 * len(data[0]) + 10:
            raise Killed
        return CE(out, batch)

    with pytest.raises(Killed):
        falf_fx.compress(_model(weak), data[0], loss_fn=dies_in_epoch_three, checkpoint_dir=tmp_path, **options)
    resumed = falf_fx.compress(_model(weak), data[0], loss_fn=CE, checkpoint_dir=tmp_path, resume=True, **options)
    assert resumed.report["budget"]["distill"]["stopped"] == stopped
    for a, b in zip(resumed.model.state_dict().values(), passed.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("probe", [False, True])
def test_falf_trains_a_copy_and_probe_slims_the_untouched_weights(probe, data, trained):
    from falf_fx.methods import FALF, Round
    from falf_fx.passes.analysis import analyze_graph

    gm = falf_fx.trace(_model(trained), next(iter(data[0]))[0][:1])
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    round_ = Round(gm, analyze_graph(gm), data[0], CE, 10, 0, 0, macs_to_remove=1.0,
                   costs={g.id: torch.ones(g.size).numpy() for g in analyze_graph(gm).prunable_groups},
                   progress=False)
    proposal = FALF(probe=probe, aux_lr=0.05, taylor_batches=2).propose(round_)
    assert proposal.plan.num_removed >= 1
    assert all(torch.equal(before[k], v) for k, v in gm.state_dict().items())  # a rejected round keeps gm
    untouched = all(torch.equal(before[k], v) for k, v in proposal.model.state_dict().items())
    assert untouched == probe


def test_one_round_lands_on_the_target_counted_on_the_slim_model(data, trained):
    # per-channel costs alone overestimate the savings when a conv loses inputs and outputs together
    result = falf_fx.compress(_model(trained), data[0], method="magnitude", target_macs=0.3, rounds=1,
                              finetune_epochs=1, progress=False, measure_latency=False)
    # one plan from per-channel costs stopped near 0.37; the predicted MACs stop within a channel of 0.3
    assert 0.25 <= result.report["macs_ratio"] <= 0.30
    assert result.report["target"] == {"macs": 0.3, "reached": round(result.report["macs_ratio"], 6), "met": True}
    assert result.report["after"]["latency_ms"] is None


def test_a_missed_target_is_said(data, trained):
    # a tolerance below zero rejects every round, so the model keeps all its MACs
    with pytest.warns(UserWarning, match="missed target_macs=0.5: the slim model keeps 1.0000 of the MACs"):
        result = falf_fx.compress(_model(trained), data[0], method="magnitude", val_loader=data[1], target_macs=0.5,
                                  tolerance=-1.0, finetune_epochs=1, progress=False, measure_latency=False)
    assert result.report["target"]["met"] is False and result.report["macs_ratio"] == 1.0


def test_the_budget_is_shared_by_the_rounds_under_one_schedule(data, trained):
    result = falf_fx.compress(_model(trained), data[0], val_loader=data[1], target_macs=0.4, rounds=3,
                              finetune_epochs=4, progress=False, measure_latency=False, method=FALF(aux_epochs=1))
    assert [h["finetune_epochs"] for h in result.history] == [1, 1, 2]
    budget = result.report["budget"]
    assert budget["finetune_epochs"] == 4 and budget["auxiliary_epochs"] == {"fatuous": 3}
    assert budget["distill"] == {"alpha": 0.5, "temperature": 4.0, "where": "all", "until": "teacher_passed",
                                "stopped": None} and budget["allocation"] == "uniform"


@pytest.mark.parametrize("allocation", ["uniform", "global", "cost"])
def test_every_allocation_reaches_the_target(allocation, data, trained):
    result = falf_fx.compress(_model(trained), data[0], method=Taylor(batches=2), target_macs=0.3,
                              allocation=allocation,
                              finetune_epochs=1, distill=0.0, progress=False, measure_latency=False)
    assert 0.25 <= result.report["macs_ratio"] <= 0.30  # 12 and 16 channels: one channel is ~4% of the MACs
    assert result.report["budget"]["allocation"] == allocation


class _Smallest(ScoreMethod):
    """A user's own criterion: L2 magnitude, or its negation (keep the smallest) with flip=True."""

    name = "smallest"

    def __init__(self, flip: bool = False) -> None:
        self.flip = flip

    def scores(self, round_):
        from falf_fx.importance import group_importance

        scores = group_importance(round_.analysis, "l2")
        return {g: (-s if self.flip else s) for g, s in scores.items()}


def test_a_method_object_written_by_the_user_runs_like_ours(data, trained):
    method = _Smallest(flip=True)
    result = falf_fx.compress(_model(trained), data[0], method=method, target_macs=0.5, finetune_epochs=1,
                              progress=False, measure_latency=False)
    assert result.history[0]["method"] == "smallest" and result.report["method"] == "smallest"
    assert result.report["target"]["met"]
    plain = falf_fx.compress(_model(trained), data[0], method=_Smallest(), target_macs=0.5, finetune_epochs=0,
                             progress=False, measure_latency=False)
    flipped = falf_fx.compress(_model(trained), data[0], method=method, target_macs=0.5, finetune_epochs=0,
                               progress=False, measure_latency=False)
    first = [k for k in plain.model.state_dict() if k.endswith("weight")][0]
    assert not torch.equal(plain.model.state_dict()[first], flipped.model.state_dict()[first])  # its scores decide


def test_method_objects_are_checked_and_never_changed(data, trained):
    with pytest.raises(FalfTypeError, match=r"not the class FALF: write method=FALF\(\)"):
        falf_fx.compress(_model(trained), data[0], method=FALF, target_macs=0.5)
    with pytest.raises(FalfTypeError, match="lacks name, default_rounds, propose"):
        falf_fx.compress(_model(trained), data[0], method=object(), target_macs=0.5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'aux_epochs'"):
        falf_fx.compress(_model(trained), data[0], method="falf", target_macs=0.5, aux_epochs=1)
    method = PlayAndPrune(threshold=0.5)
    before = method.state()
    result = falf_fx.compress(_model(trained), data[0], method=method, val_loader=data[1], tolerance=0.05, rounds=2,
                              finetune_epochs=1, progress=False, measure_latency=False)
    assert method.state() == before  # compress ran a copy
    assert result.report["method_options"] == {"threshold": 0.5}


class _DictNet(nn.Module):
    """A model that is not a classifier to compress's eyes: a dict out, a dict of losses from its loss."""

    def __init__(self) -> None:
        super().__init__()
        self.body = tiny_net()

    def forward(self, x):
        logits = self.body(x)
        return {"scores": logits, "energy": logits.square().mean(1)}


def _dict_losses(outputs, batch):
    return {"task": nn.functional.cross_entropy(outputs["scores"], batch[1]), "energy": 1e-3 * outputs["energy"].mean()}


def test_any_output_and_a_dict_of_losses_train_and_the_tuple_example_is_taken(data):
    x = next(iter(data[0]))[0][:1]
    result = falf_fx.compress(_DictNet(), data[0], loss_fn=_dict_losses, example_inputs=(x,), target_macs=0.5,
                              finetune_epochs=1, progress=False)
    assert result.report["target"]["met"] and result.report["budget"]["distill"]["alpha"] == 0.0  # not logits: off
    assert result.report["after"]["latency_ms"] > 0
    assert set(result.model(x)) == {"scores", "energy"}
    with pytest.raises(FalfError, match=r"distill=0.5: the model's outputs are not class logits"):
        falf_fx.compress(_DictNet(), data[0], loss_fn=_dict_losses, target_macs=0.5, distill=0.5, progress=False)
    with pytest.raises(TrainingError, match="loss_fn must return one number"):
        falf_fx.compress(_DictNet(), data[0], loss_fn=lambda out, batch: out["energy"], target_macs=0.5,
                         finetune_epochs=1, progress=False, measure_latency=False)


def test_a_diverged_fine_tuning_is_redone_at_half_the_lr_and_never_kept(data, trained):
    """A fine-tuning at an absurd peak lr ends below where it started: compress redoes it at half the lr, and
    when that diverges too it keeps the slim model as the cut left it, says so, and counts the epochs spent."""
    with pytest.warns(UserWarning, match="diverged"):
        result = falf_fx.compress(_model(trained), data[0], val_loader=data[1], target_macs=0.5, finetune_epochs=1,
                                  finetune_lr=20, distill=0, progress=False, measure_latency=False)
    record = result.history[0]
    assert record["finetune_diverged"] and record["finetune_epochs"] == 2
    untuned = falf_fx.compress(_model(trained), data[0], val_loader=data[1], target_macs=0.5, finetune_epochs=0,
                               progress=False, measure_latency=False)
    assert record["metric"] == untuned.history[0]["metric"]  # the slim model as the cut left it
    assert result.report["budget"]["finetune_epochs"] == 2
