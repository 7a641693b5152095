"""The analytic FLOPs count against torch's own FLOP counter on tiny models."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lmsleep.models import SleepConfig, run_windows
from lmsleep.models.flops import forward_flops
from lmsleep.ops.update_rule import UPDATE_RULES
from tests.support.models import make_model, random_ids

RULES = tuple(UPDATE_RULES)  # every rule of the one table


def counted(fn) -> int:
    # The math backend runs attention as two bmm, which the counter sees (the CPU flash kernel it does not).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(
    "eviction, passes, T, loop",
    [
        ("hard", 1, 29, "all"),  # one span, a short last window
        ("hard", 3, 29, "all"),  # wake + 2 sleep passes per window
        ("sliding", 1, 29, "all"),
        ("sliding", 2, 21, "all"),
        ("none", 1, 13, "all"),
        ("hard", 3, 21, "1:3"),  # a looped slice
        ("hard", 2, 40, "all"),  # windows above the chunk size: several chunks and the blocked inverse
    ],
)
def test_forward_flops_equal_the_flop_counter(rule, eviction, passes, T, loop):
    window = 20 if T == 40 else 8
    model = make_model(rule, loop=loop, dtype=torch.float32, chunk_size=16)
    cfg = SleepConfig(passes=passes, window=window, eviction=eviction)
    ids = random_ids(1, T)
    with torch.no_grad():
        expected = counted(lambda: run_windows(model, ids, cfg))
    assert forward_flops(model, cfg, T).forward_total == expected


@pytest.mark.parametrize("rule", RULES)
def test_training_flops_are_three_forwards_within_ten_percent(rule):
    model = make_model(rule, dtype=torch.float32).train()
    cfg = SleepConfig(passes=2, window=8, eviction="hard")
    ids = random_ids(2, 29)

    def step():
        logits, _ = run_windows(model, ids, cfg)
        logits.square().mean().backward()

    count = forward_flops(model, cfg, 29)
    assert count.training_total * 2 == pytest.approx(counted(step), rel=0.10)
    assert count.training_per_token == count.training_total / 29
    assert set(count.forward) == {"projections", "attention", "fast_weight_op", "mlp", "head"}
    assert all(v > 0 for v in count.forward.values())
