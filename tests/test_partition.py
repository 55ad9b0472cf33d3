"""keras_gmix/partition.py: the dgmix decomposition, with values worked out by hand.

decompose(g_sharp, g_flat) = g_flat + g_sharp - min(<g_sharp, u>, 0) u with
u = g_flat / ||g_flat||: the part of the sharp subset's gradient that opposes
the flat subset's descent direction is removed. Gradients are lists of two
tensors, so that the dot and the norm must run over both.
"""

import numpy as np
import pytest

from keras_gmix import partition


def pair(first, second):
    return [np.asarray(first, "float32"), np.asarray(second, "float32")]


def assert_grads(grads, first, second):
    np.testing.assert_allclose(grads[0], first, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads[1], second, rtol=1e-6, atol=1e-7)


def test_no_conflict_adds_the_two_gradients():
    # u = ([1, 0], [0]); <g_sharp, u> = 1 > 0: nothing is removed.
    grads, conflict = partition.decompose(pair([1.0, 1.0], [2.0]), pair([1.0, 0.0], [0.0]))
    assert_grads(grads, [2.0, 1.0], [2.0])
    assert float(conflict) == 0.0


def test_a_conflict_removes_the_opposing_component():
    # g_flat = ([3, 0], [4]): ||g_flat|| = 5, u = ([0.6, 0], [0.8]).
    # g_sharp = ([-1, 2], [-2]): <g_sharp, u> = -0.6 - 1.6 = -2.2 < 0.
    # g = g_flat + g_sharp + 2.2 u = ([3 - 1 + 1.32, 2], [4 - 2 + 1.76]).
    grads, conflict = partition.decompose(pair([-1.0, 2.0], [-2.0]), pair([3.0, 0.0], [4.0]))
    assert_grads(grads, [3.32, 2.0], [3.76])
    assert float(conflict) == 1.0
    # What is left of g_sharp is orthogonal to g_flat: <g - g_flat, g_flat> = 0.
    left = np.concatenate([np.asarray(grads[0]) - [3.0, 0.0], np.asarray(grads[1]) - [4.0]])
    assert abs(float(np.dot(left, [3.0, 0.0, 4.0]))) < 1e-5


def test_orthogonal_gradients_are_no_conflict():
    grads, conflict = partition.decompose(pair([0.0, 5.0], [0.0]), pair([2.0, 0.0], [0.0]))
    assert_grads(grads, [2.0, 5.0], [0.0])
    assert float(conflict) == 0.0


def test_a_zero_flat_gradient_gives_the_sharp_gradient():
    grads, conflict = partition.decompose(pair([-1.0, 2.0], [-2.0]), pair([0.0, 0.0], [0.0]))
    assert_grads(grads, [-1.0, 2.0], [-2.0])
    assert float(conflict) == 0.0
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_decompose_against_numpy():
    rng = np.random.default_rng(0)
    sharp = [rng.normal(size=(3, 2)), rng.normal(size=4)]
    flat_part = [rng.normal(size=(3, 2)), rng.normal(size=4)]
    s = np.concatenate([np.ravel(t) for t in sharp])
    f = np.concatenate([np.ravel(t) for t in flat_part])
    u = f / np.linalg.norm(f)
    along = s @ u
    # g_flat + g_perp + max(along, 0) u, written as the paper states it.
    expected = f + (s - along * u) + max(along, 0.0) * u
    grads, conflict = partition.decompose(
        [np.asarray(t, "float32") for t in sharp], [np.asarray(t, "float32") for t in flat_part]
    )
    got = np.concatenate([np.ravel(np.asarray(g)) for g in grads])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert float(conflict) == float(along < 0)


def test_cosine_of_zero_gradients_is_zero():
    a = pair([3.0, 0.0], [4.0])
    assert float(partition.cosine(a, pair([6.0, 0.0], [8.0]))) == pytest.approx(1.0)
    assert float(partition.cosine(a, pair([0.0, 0.0], [0.0]))) == 0.0
