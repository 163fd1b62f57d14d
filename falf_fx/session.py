"""The step-by-step API: compress's rounds, with the user's own training loop doing every training.

For loops that cannot be handed over as ``compress(finetune=...)`` (a Hugging Face
``Trainer``, a Lightning or Ultralytics trainer, a script's own loop)::

    session = falf_fx.PruningSession(model, loader, method="falf", target_macs=0.5, loss_fn=my_loss)
    for phase in session.phases():          # each method phase, then each round's fine-tuning
        optimizer = torch.optim.SGD(phase.model.parameters(), lr=phase.lr, momentum=0.9)
        for epoch in range(phase.epochs):
            for x, y in loader:
                loss = my_loss(phase.model(x), y) + phase.penalty()   # the method's term
                optimizer.zero_grad(); loss.backward(); optimizer.step()
        torch.save(session.state_dict(), "session.pt")   # resume: load_state_dict(torch.load(...))
    slim = session.result().model

It follows how Torch-Pruning's users already work (a pruner object stepped from
their loop, ``pruner.regularize(model)`` adding the sparsity term) and ModelOpt's
(``mtp.prune`` scores with the user's ``score_func``, the user fine-tunes after):
``phase.penalty()`` is the method's term, ``evaluate=`` the user's score.  ``loader``
and ``loss_fn`` are only *measured* on (saliencies, folds, held-out gates); the
training is the user's.

Why a thread: a method decides its next phase from the outcome of the last one
(NPN's lambda search, Play-and-Prune's controller), deep inside its own code.
The round runs in a worker thread that stops at each phase and waits while the
user's loop trains it, so the methods are the very code ``compress`` runs; only
one of the two threads ever works at a time.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Optional, Union

from torch import nn
from torch.utils.data import DataLoader

from .compress import CompressResult, _Run
from .errors import FalfError
from .latency import LatencySettings
from .methods import PruningMethod
from .methods.base import Phase
from .training import Forward, inputs_only

__all__ = ["PruningSession"]

_GO, _STOP = "go", "stop"


class _Stopped(Exception):
    """The user left the loop over phases: the worker unwinds without finishing the round."""


class _Handoff:
    """The trainer of a session's run: hands each phase to the user's thread and waits for the next step."""

    def __init__(self) -> None:
        self.to_user: queue.Queue = queue.Queue()
        self.to_worker: queue.Queue = queue.Queue()

    def __call__(self, phase: Phase) -> None:
        self.to_user.put(("phase", phase))
        if self.to_worker.get() == _STOP:
            raise _Stopped


class PruningSession:
    """compress's rounds, one phase at a time, trained by the caller's loop (see the module docstring).

    Takes compress's arguments but the training ones: ``loader`` and ``loss_fn`` are
    what methods measure on; ``evaluate``/``val_loader`` score each round and
    ``tolerance`` undoes a round that loses too much.  :meth:`state_dict` holds the
    last finished round, in the pickle-free format ``torch.load(weights_only=True)``
    reads; :meth:`load_state_dict` on a session made alike resumes after it.
    """

    def __init__(self, model: nn.Module, loader: DataLoader, *, method: Union[str, PruningMethod] = "magnitude",
                 example_inputs: Any = None, val_loader: Optional[DataLoader] = None,
                 loss_fn: Optional[Callable] = None, evaluate: Union[None, str, Callable[[nn.Module], float]] = None,
                 target_macs: Optional[float] = None, tolerance: Optional[float] = None,
                 rounds: Optional[int] = None, step: float = 0.3, finetune_epochs: int = 8, finetune_lr: float = 0.02,
                 allocation: str = "uniform", min_keep: float = 0.05, min_channels: int = 4, seed: int = 0,
                 measure_latency: bool = False, forward: Forward = inputs_only,
                 target_latency: Optional[float] = None, latency: LatencySettings = LatencySettings()) -> None:
        self._handoff = _Handoff()
        self._run = _Run(model, loader, method=method, example_inputs=example_inputs, val_loader=val_loader,
                         loss_fn=loss_fn, evaluate=evaluate, target_macs=target_macs, tolerance=tolerance,
                         rounds=rounds, step=step, finetune_epochs=finetune_epochs, finetune_lr=finetune_lr,
                         warmup=0.0, allocation=allocation, min_keep=min_keep,
                         min_channels=min_channels, distill=0.0, distill_temperature=1.0,
                         distill_where="all", distill_until="end",
                         checkpoint_dir=None, resume=False, seed=seed, progress=False,
                         measure_latency=measure_latency, trainer=self._handoff, forward=forward,
                         target_latency=target_latency, latency=latency)
        self._iterating = False

    @property
    def model(self) -> nn.Module:
        """The model after the last kept round (the traced original before any)."""
        return self._run.gm

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per finished round, as in ``compress(...).history``."""
        return self._run.history

    def phases(self) -> Iterator[Phase]:
        """Every training the run needs, in order; each round slims once its method's phases are trained.

        Train ``phase.model`` in place for ``phase.epochs`` (a suggestion: ``phase.lr``,
        ``phase.config``), adding ``phase.penalty()`` to the loss after each forward.
        Leaving the loop early abandons the round in progress.
        """
        if self._iterating:
            raise FalfError("this session's phases are already being iterated: one loop at a time")
        self._iterating = True
        worker = threading.Thread(target=self._work, name="falf_fx-session", daemon=True)
        worker.start()
        try:
            while True:
                kind, item = self._handoff.to_user.get()
                if kind == "error":
                    raise item
                if kind == "done":
                    return
                yield item
                self._handoff.to_worker.put(_GO)
        finally:
            if worker.is_alive():
                self._handoff.to_worker.put(_STOP)
            worker.join()
            self._iterating = False

    def _work(self) -> None:
        try:
            while not self._run.done():
                self._run.run_round()
            self._handoff.to_user.put(("done", None))
        except _Stopped:
            pass
        except BaseException as error:  # noqa: BLE001 - raised again in the user's thread
            self._handoff.to_user.put(("error", error))

    def result(self) -> CompressResult:
        """The slim model and compress's report, once :meth:`phases` is exhausted."""
        if not self._run.done():
            raise FalfError(f"the session has run {self._run.next_round} of its rounds: iterate session.phases() "
                            "to the end first")
        return self._run.result()

    def state_dict(self) -> dict[str, Any]:
        """The run after its last finished round: model, history and method state, tensors and strings only."""
        return {"fingerprint": self._run.origin, **self._run.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on from a :meth:`state_dict` of a session made from the same model and options."""
        if self._iterating:
            raise FalfError("load_state_dict between runs of session.phases(), not during one")
        self._run.load_state(state)
