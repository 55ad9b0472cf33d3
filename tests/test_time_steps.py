"""recipes/time_steps.py: a step's cost in forward passes, from keras_gmix.gradients."""

import os
import sys

import pytest

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")
)
import time_steps  # noqa: E402

# (forward, backward) passes and forward-pass equivalents, by hand.
EXPECTED = [
    ("erm", (1, 1), 3),
    ("mixup", (1, 1), 3),
    ("sam", (2, 2), 6),
    ("gmix", (2, 2), 6),
    ("bgmix", (2, 3), 8),
    ("dgmix", (2, 3), 8),
]


@pytest.mark.parametrize("method, passes, cost", EXPECTED)
def test_pass_counts_of_every_method(method, passes, cost):
    # 1F+1B, 2F+2B, 2F+3B as gradients.compute_update runs them; a backward
    # pass counted as two forward passes.
    assert time_steps.pass_counts(method) == passes
    assert time_steps.forward_equivalents(method) == cost


def test_the_table_above_covers_every_method():
    from keras_gmix.gradients import METHODS

    assert [method for method, _, _ in EXPECTED] == list(METHODS)
