"""The shared training loop: determinism, resume, checkpoints, errors, DDP."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from falf_fx.checkpoint import CheckpointError, CheckpointStore
from falf_fx.models import lenet5
from falf_fx.training import TrainConfig, TrainingError, evaluate, train

CE = lambda out, batch: torch.nn.functional.cross_entropy(out, batch[1])  # noqa: E731


@pytest.fixture
def loader():
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(128, 1, 28, 28, generator=gen), torch.randint(0, 10, (128,), generator=gen))
    return DataLoader(data, batch_size=16, shuffle=True)


def _fresh(state):
    model = lenet5()
    model.load_state_dict(state)
    return model


def test_training_lowers_the_loss_and_is_deterministic(loader):
    start = lenet5().state_dict()
    first = train(_fresh(start), loader, CE, TrainConfig(epochs=4, lr=0.05), progress=False)
    again = train(_fresh(start), loader, CE, TrainConfig(epochs=4, lr=0.05), progress=False)
    assert first == again
    assert first[-1]["loss"] < first[0]["loss"]


def test_a_killed_run_resumed_ends_where_an_uninterrupted_one_does(loader, tmp_path):
    start, config = lenet5().state_dict(), TrainConfig(epochs=3, lr=0.05)
    uninterrupted = _fresh(start)
    train(uninterrupted, loader, CE, config, progress=False)

    class Killed(BaseException):  # a crash (like KeyboardInterrupt), not a loss error
        pass

    def kill_after_two(model, calls=[]):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        return {}

    with pytest.raises(Killed):
        train(_fresh(start), loader, CE, config, checkpoints=CheckpointStore(tmp_path), evaluate_fn=kill_after_two,
              progress=False)
    resumed = _fresh(start)
    history = train(resumed, loader, CE, config, checkpoints=CheckpointStore(tmp_path), resume=True, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for a, b in zip(uninterrupted.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_nan_loss_names_the_batch_and_keeps_the_last_good_checkpoint(loader, tmp_path):
    store = CheckpointStore(tmp_path)
    model = lenet5()
    train(model, loader, CE, TrainConfig(epochs=1), checkpoints=store, phase="p", progress=False)
    calls = []

    def nan_on_third(out, batch):
        calls.append(1)
        return CE(out, batch) * (float("nan") if len(calls) == 3 else 1.0)

    with pytest.raises(TrainingError, match=r"phase 'p', epoch 1, batch 3; last good checkpoint: .*p\.pt"):
        train(model, loader, nan_on_third, TrainConfig(epochs=1), checkpoints=store, phase="p", progress=False)
    assert store.load("p") is not None


def test_empty_loader_and_foreign_checkpoint(loader, tmp_path):
    empty = DataLoader(TensorDataset(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(TrainingError, match="empty"):
        train(lenet5(), empty, CE, TrainConfig(), progress=False)
    store = CheckpointStore(tmp_path)
    train(lenet5(), loader, CE, TrainConfig(epochs=1), checkpoints=store, progress=False)
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    with pytest.raises(CheckpointError, match="different model"):
        train(other, loader, CE, TrainConfig(epochs=2), checkpoints=store, resume=True, progress=False)


def test_evaluate_reports_accuracy(loader):
    stats = evaluate(lenet5(), loader)
    assert 0.0 <= stats["accuracy"] <= 1.0 and stats["val_loss"] > 0


def test_ddp_ranks_end_identical_and_share_scores(tmp_path):
    script = Path(__file__).parent / "scripts" / "ddp_train.py"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for a, b in zip(rank0["weights"].values(), rank1["weights"].values()):
        assert torch.equal(a, b)
    assert torch.equal(rank0["scores"], torch.full((4,), 0.5)) and torch.equal(rank1["scores"], rank0["scores"])


def test_one_schedule_spans_several_calls(loader):
    """Two calls sharing a 4-epoch horizon step the learning rate exactly as one 4-epoch call."""
    whole = TrainConfig(epochs=4, lr=0.1, warmup=0.25)
    one = train(lenet5(), loader, CE, whole, progress=False)
    steps = len(loader)
    halves = [train(lenet5(), loader, CE, TrainConfig(epochs=2, lr=0.1, warmup=0.25, horizon=4 * steps,
                                                       offset=k * 2 * steps), progress=False) for k in (0, 1)]
    assert [r["lr"] for r in one] == pytest.approx([r["lr"] for h in halves for r in h])
    assert one[0]["lr"] > one[1]["lr"] > one[2]["lr"] > one[3]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_warm_up_ramps_then_cosine_decays():
    from falf_fx.training import lr_factor
    config = TrainConfig(warmup=0.1)
    factors = [lr_factor(config, step, 100) for step in range(100)]
    assert factors[0] < factors[5] < factors[10] == pytest.approx(1.0, abs=0.01)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert lr_factor(TrainConfig(schedule="constant"), 99, 100) == 1.0
