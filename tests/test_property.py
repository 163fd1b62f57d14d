"""Property tests: the exactness oracle holds on random networks under random plans.

The networks come from tests/strategies.py (random DAGs of conv, norm,
activation, add/mul, cat, split/chunk/narrow/slices, strided slices, channel
shuffle, pooling and linear heads, on 1d, 2d and 3d feature maps; every op drawn
in each of its spellings); the plans are ``falf_fx.random_plan`` draws.
Examples are derandomized so CI is reproducible; a failure prints the shrunk
ProgramSpec and seed, ready for ``tests.strategies.instantiate``.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import falf_fx
from falf_fx.flops import count_cost
from falf_fx.testing import check_equivalence
from tests.strategies import instantiate, programs

_SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
_SEEDS = st.integers(0, 2**16)


def _random_plan_removing_something(analysis, seed, tries=3):
    """random_plan(seed), or of the next seeds when it happens to remove nothing (a plan that tests nothing)."""
    for attempt in range(tries):
        plan = falf_fx.random_plan(analysis, seed + attempt)
        if plan.num_removed:
            break
    return plan


# 3 x 330 random networks here and 40 below: over 1,000 architectures a CI run, every op in every spelling
@pytest.mark.parametrize("dims", [1, 2, 3])
@settings(max_examples=330, **_SETTINGS)
@given(data=st.data())
def test_random_plan_on_random_network_is_exact(dims, data):
    spec = data.draw(programs(dims), label="spec")
    seed = data.draw(_SEEDS, label="seed")
    model, x = instantiate(spec, seed)
    plan = _random_plan_removing_something(falf_fx.analyze(falf_fx.trace(model, x)), seed)
    result = check_equivalence(model, x, plan)
    assert result.outputs == len(spec.outputs)
    event("channels removed" if result.channels_removed else "nothing removed")


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


@settings(max_examples=40, **_SETTINGS)
@given(data=st.data())
def test_prune_keeps_output_shapes_and_never_adds_macs(data):
    spec = data.draw(st.sampled_from([2, 1, 3]).flatmap(programs), label="spec")
    seed = data.draw(_SEEDS, label="seed")
    ratio = data.draw(st.floats(0.01, 0.99), label="ratio")
    importance = data.draw(st.sampled_from(["l1", "l2", "random"]), label="importance")
    round_to = data.draw(st.sampled_from([None, 2, 4]), label="round_to")
    model, x = instantiate(spec, seed)
    slim = falf_fx.prune(model, x, ratio=ratio, importance=importance, seed=seed, round_to=round_to)
    with torch.no_grad():
        want, got = _as_tuple(model(x)), _as_tuple(slim(x))
    assert [t.shape for t in got] == [t.shape for t in want]
    assert count_cost(slim, x).macs <= count_cost(model, x).macs
