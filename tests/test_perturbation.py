"""keras_gmix/perturbation.py: SAM's and ASAM's eps, and the global vector arithmetic.

Values are worked out by hand or with NumPy; the weights and gradients are
lists of two tensors, so that norms and dots must run over both.
"""

import keras
import numpy as np
import pytest

from keras_gmix import perturbation as pt

W = [np.array([[1.0, -2.0], [0.0, 0.5]], "float32"), np.array([3.0, -0.25], "float32")]
G = [np.array([[0.3, 0.1], [-0.2, 0.4]], "float32"), np.array([-0.5, 0.2], "float32")]


def flat(tensors):
    return np.concatenate([np.ravel(np.asarray(t, "float64")) for t in tensors])


def eps_of(weights, grads, rho, **kwargs):
    return pt.perturbation(
        [np.asarray(w) for w in weights], [np.asarray(g) for g in grads], rho, **kwargs
    )


def test_global_dot_and_norm_run_over_every_tensor():
    # <[1, 2], [3, 4]> + <[5], [6]> = 3 + 8 + 30; ||[1, 2, 5]|| = sqrt(30).
    a = [np.array([1.0, 2.0], "float32"), np.array([5.0], "float32")]
    b = [np.array([3.0, 4.0], "float32"), np.array([6.0], "float32")]
    assert float(pt.global_dot(a, b)) == pytest.approx(41.0)
    assert float(pt.global_norm(a)) == pytest.approx(np.sqrt(30.0))


def test_sam_eps_by_hand():
    # g = ([3, 0], [4]): ||g|| = 5, eps = 0.1 * g / 5.
    eps = eps_of(
        [np.zeros(2, "float32"), np.zeros(1, "float32")],
        [np.array([3.0, 0.0], "float32"), np.array([4.0], "float32")],
        0.1,
    )
    np.testing.assert_allclose(eps[0], [0.06, 0.0], rtol=1e-6)
    np.testing.assert_allclose(eps[1], [0.08], rtol=1e-6)


@pytest.mark.parametrize("rho", [1e-3, 0.05, 2.0])
def test_sam_eps_has_norm_rho_along_g(rho):
    eps = flat(eps_of(W, G, rho))
    g = flat(G)
    np.testing.assert_allclose(np.linalg.norm(eps), rho, rtol=1e-6)
    np.testing.assert_allclose(eps, rho * g / np.linalg.norm(g), rtol=1e-5, atol=1e-9)


def test_asam_eps_by_hand():
    # w = [1, -2], g = [1, 1], eta = 0: T = [1, 2], T g = [1, 2] (norm sqrt 5),
    # T^2 g = [1, 4]; eps = 0.5 * [1, 4] / sqrt(5).
    (eps,) = eps_of(
        [np.array([1.0, -2.0], "float32")],
        [np.array([1.0, 1.0], "float32")],
        0.5,
        adaptive=True,
        eta=0.0,
    )
    np.testing.assert_allclose(eps, 0.5 * np.array([1.0, 4.0]) / np.sqrt(5.0), rtol=1e-6)


@pytest.mark.parametrize("eta", [0.0, 0.01, 1.0])
def test_asam_eps_against_numpy(eta):
    t = np.abs(flat(W)) + eta
    g = flat(G)
    expected = 0.05 * t**2 * g / np.linalg.norm(t * g)
    eps = flat(eps_of(W, G, 0.05, adaptive=True, eta=eta))
    np.testing.assert_allclose(eps, expected, rtol=1e-5, atol=1e-9)
    # ASAM's neighbourhood: ||T^-1 eps|| = rho (where T = 0, eps = 0 too).
    moved = t > 0
    np.testing.assert_allclose(np.linalg.norm(eps[moved] / t[moved]), 0.05, rtol=1e-5)


def test_asam_with_a_large_eta_is_sam_scaled_by_eta():
    # T = |w| + eta is nearly the constant eta: T^2 g / ||T g|| -> eta g / ||g||.
    eta = 1e4
    sam = flat(eps_of(W, G, 0.05))
    asam = flat(eps_of(W, G, 0.05, adaptive=True, eta=eta))
    np.testing.assert_allclose(asam / eta, sam, rtol=1e-3)


def test_asam_with_eta_zero_leaves_zero_weights_alone():
    # T = |w| = 0 where w = 0: those weights are not perturbed.
    eps = eps_of(W, G, 0.05, adaptive=True, eta=0.0)
    assert float(eps[0][1, 0]) == 0.0
    assert np.all(flat(eps)[flat(W) != 0] != 0)


@pytest.mark.parametrize("adaptive", [False, True])
def test_a_zero_gradient_gives_zero_eps_never_nan(adaptive):
    zeros = [np.zeros_like(g) for g in G]
    eps = eps_of(W, zeros, 0.05, adaptive=adaptive)
    for e in eps:
        assert keras.backend.standardize_dtype(e.dtype) == "float32"
        np.testing.assert_array_equal(e, np.zeros_like(e))


@pytest.mark.parametrize("adaptive", [False, True])
def test_rho_zero_gives_zero_eps(adaptive):
    for e in eps_of(W, G, 0.0, adaptive=adaptive):
        np.testing.assert_array_equal(e, np.zeros_like(e))


def test_a_non_finite_gradient_is_not_hidden():
    # Only an exact zero norm is guarded: an overflow must reach the optimizer.
    grads = [G[0], np.array([np.inf, 0.2], "float32")]
    assert not np.all(np.isfinite(flat(eps_of(W, grads, 0.05))))


def test_half_precision_gradients_give_float32_eps():
    eps = eps_of(W, [g.astype("float16") for g in G], 0.05)
    assert all(keras.backend.standardize_dtype(e.dtype) == "float32" for e in eps)
    g = flat([g.astype("float16") for g in G])
    np.testing.assert_allclose(flat(eps), 0.05 * g / np.linalg.norm(g), rtol=1e-5, atol=1e-9)
