"""Tests for keras_gmix.flatness against closed forms on linear least squares.

For a Dense(1) model with mean squared error, L(theta) = mean((X_aug theta -
y)^2) with theta = [kernel; bias] and X_aug = [X, 1], so the Hessian is the
constant H = 2 X_aug^T X_aug / n and every measure has an exact NumPy value.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gmix import flatness

N, K = 64, 4
# Anisotropic features: a clear eigengap, so that power iteration (and the
# ascent, which is power iteration on the quadratic at its minimum) converges
# to 1e-3 in a few dozen iterations.
SCALES = np.array([3.0, 1.0, 0.5, 0.2])


def make_problem(seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(N, K)) * SCALES).astype("float32")
    y = x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.3 + 0.5 * rng.normal(size=N)
    return x, y.astype("float32")[:, None]


def make_linear(kernel=(0.2, -0.1, 0.4, 0.3), bias=0.1):
    model = keras.Sequential([keras.Input((K,)), keras.layers.Dense(1)])
    model.set_weights([np.asarray(kernel, "float32")[:, None], np.asarray([bias], "float32")])
    return model


def theta_of(model):
    return np.concatenate([np.ravel(w) for w in model.get_weights()]).astype("float64")


def augment(x):
    return np.concatenate([x.astype("float64"), np.ones((len(x), 1))], axis=1)


def numpy_loss(x, y, theta):
    return float(np.mean((augment(x) @ theta - y[:, 0].astype("float64")) ** 2))


def numpy_hessian(x):
    xa = augment(x)
    return 2.0 * xa.T @ xa / len(x)


def numpy_gradient(x, y, theta):
    xa = augment(x)
    return 2.0 * xa.T @ (xa @ theta - y[:, 0].astype("float64")) / len(x)


def trust_region_max(g, h, rho):
    """max of g.e + e^T H e / 2 over ||e|| <= rho, for PSD H and g != 0.

    The maximizer is e = (mu I - H)^-1 g with mu > lambda_max chosen so that
    ||e|| = rho; ||e(mu)|| decreases in mu, so bisection finds it.
    """
    lam, q = np.linalg.eigh(h)
    gq = q.T @ g

    def norm(mu):
        return np.linalg.norm(gq / (mu - lam))

    lo, hi = lam[-1] + 1e-12, lam[-1] + np.linalg.norm(g) / rho + 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if norm(mid) > rho else (lo, mid)
    e = q @ (gq / (hi - lam))
    return g @ e + 0.5 * e @ h @ e


def weights_of(model):
    return [np.array(w) for w in model.weights]


def assert_same_weights(before, model):
    after = weights_of(model)
    assert len(before) == len(after)
    for b, a in zip(before, after):
        assert np.array_equal(b, a)


# ---------------------------------------------------------------------------
# Pure helpers


def test_flatten_unflatten_round_trip():
    tensors = [np.arange(6.0).reshape(2, 3), np.array([7.0]), np.arange(8.0).reshape(2, 2, 2)]
    flat = flatness.flatten(tensors)
    assert flat.shape == (15,)
    np.testing.assert_array_equal(flat, np.concatenate([t.ravel() for t in tensors]))
    back = flatness.unflatten(flat, [t.shape for t in tensors])
    for t, b in zip(tensors, back):
        np.testing.assert_array_equal(t, b)
    with pytest.raises(ValueError, match="entries"):
        flatness.unflatten(flat, [(2, 3)])


def test_filter_normalize_matches_filter_norms_and_zeroes_vectors():
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 2, 5))  # Keras conv layout: last axis = filters
    dense = rng.normal(size=(4, 6))
    bias = rng.normal(size=(5,))
    weights = [kernel, dense, bias]
    direction = [rng.normal(size=w.shape) * 10 for w in weights]
    out = flatness.filter_normalize(direction, weights)
    for d, w, o in zip(direction[:2], weights[:2], out[:2]):
        axes = tuple(range(w.ndim - 1))
        np.testing.assert_allclose(
            np.sqrt((np.asarray(o) ** 2).sum(axis=axes)), np.sqrt((w**2).sum(axis=axes)), rtol=1e-6
        )
        # Each filter is only rescaled: same direction as the raw filter.
        ratio = np.asarray(o) / d
        # rtol: float32 arithmetic on JAX (no float64 there by default).
        np.testing.assert_allclose(
            ratio, np.broadcast_to(ratio[(0,) * (w.ndim - 1)], w.shape), rtol=1e-6
        )
    np.testing.assert_array_equal(out[2], np.zeros(5))


# ---------------------------------------------------------------------------
# Hessian


def test_top_eigenvalue_matches_numpy():
    x, y = make_problem()
    model = make_linear()
    expected = np.linalg.eigvalsh(numpy_hessian(x))[-1]
    result = flatness.hessian_top_eigenvalue(
        model, (x, y), keras.losses.MeanSquaredError(), iters=100, tol=1e-7, batch_size=64
    )
    assert result.converged
    assert len(result.history) > 1
    np.testing.assert_allclose(result.value, expected, rtol=1e-3)
    # The returned vector is the top eigenvector (up to sign).
    vec = np.concatenate([np.ravel(v) for v in result.vector])
    top = np.linalg.eigh(numpy_hessian(x))[1][:, -1]
    assert abs(vec @ top) == pytest.approx(1.0, abs=1e-3)


def test_loss_forms_and_data_forms_agree():
    x, y = make_problem()
    model = make_linear()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(20)  # uneven last batch
    values = [
        flatness.hessian_top_eigenvalue(model, data, loss, iters=30, tol=1e-7).value
        for data, loss in [
            ((x, y), "mse"),
            ((x, y), keras.losses.MeanSquaredError(reduction="sum")),
            (dataset, lambda t, p: keras.ops.mean(keras.ops.square(t - p))),
        ]
    ]
    np.testing.assert_allclose(values, values[0], rtol=1e-5)


def test_trace_exact_for_diagonal_hessian():
    # With orthogonal columns of X_aug the Hessian is diagonal, and then every
    # Rademacher sample v^T H v = sum H_ii v_i^2 is exactly the trace.
    rng = np.random.default_rng(2)
    basis = np.concatenate([np.ones((N, 1)), rng.normal(size=(N, K))], axis=1)
    q, _ = np.linalg.qr(basis)
    x = (q[:, 1:] * SCALES * np.sqrt(N)).astype("float32")
    y = rng.normal(size=(N, 1)).astype("float32")
    h = numpy_hessian(x)
    assert np.abs(h - np.diag(np.diag(h))).max() < 1e-4 * np.abs(h).max()
    result = flatness.hessian_trace(make_linear(), (x, y), "mse", samples=5, batch_size=64)
    assert len(result.history) == 5
    np.testing.assert_allclose(result.history, np.trace(h), rtol=1e-4)


def test_trace_matches_numpy_within_sampling_error():
    x, y = make_problem()
    h = numpy_hessian(x)
    samples = 300
    result = flatness.hessian_trace(
        make_linear(), (x, y), "mse", samples=samples, seed=3, batch_size=64
    )
    assert len(result.history) == samples
    assert result.value == pytest.approx(np.mean(result.history))
    # Var(v^T H v) = 2 * sum_{i != j} H_ij^2 for Rademacher v: allow four
    # standard errors of the mean (a correct estimator fails ~1 in 16,000).
    off_diagonal = h - np.diag(np.diag(h))
    std_error = np.sqrt(2.0 * np.sum(off_diagonal**2) / samples)
    assert abs(result.value - np.trace(h)) < 4 * std_error
    # The reported standard error estimates the same quantity.
    assert result.std_error == pytest.approx(std_error, rel=0.3)


# ---------------------------------------------------------------------------
# rho-sharpness


def test_sharpness_at_minimum_is_half_rho_squared_lambda_max():
    x, y = make_problem()
    theta, *_ = np.linalg.lstsq(augment(x), y[:, 0].astype("float64"), rcond=None)
    model = make_linear(theta[:K], theta[K])
    rho = 0.1
    lam_max = np.linalg.eigvalsh(numpy_hessian(x))[-1]
    result = flatness.rho_sharpness(model, (x, y), "mse", rho=rho, steps=30, batch_size=64)
    np.testing.assert_allclose(result.value, rho**2 * lam_max / 2, rtol=1e-3)
    assert result.value == max(result.history)
    eps = np.concatenate([np.ravel(e) for e in result.epsilon])
    assert np.linalg.norm(eps) == pytest.approx(rho, rel=1e-5)


def test_sharpness_away_from_minimum_within_bounds_and_at_exact_max():
    x, y = make_problem()
    model = make_linear()
    theta = theta_of(model)
    h = numpy_hessian(x)
    g = numpy_gradient(x, y, theta)
    lam_max = np.linalg.eigvalsh(h)[-1]
    for rho in (0.05, 0.5):
        result = flatness.rho_sharpness(model, (x, y), "mse", rho=rho, steps=30, batch_size=64)
        g_norm = np.linalg.norm(g)
        # First iterate already gains at least rho * ||g|| (H is PSD).
        assert result.history[0] >= rho * g_norm * (1 - 1e-5)
        assert result.value <= (rho * g_norm + rho**2 * lam_max / 2) * (1 + 1e-5)
        np.testing.assert_allclose(result.value, trust_region_max(g, h, rho), rtol=1e-3)
        # The returned epsilon is the one that achieves the value.
        eps = np.concatenate([np.ravel(e) for e in result.epsilon]).astype("float64")
        reached = numpy_loss(x, y, theta + eps) - numpy_loss(x, y, theta)
        assert reached == pytest.approx(result.value, rel=1e-4)


def test_adaptive_sharpness_uses_scaled_ball():
    # In z = T^-1 eps the problem is the plain one with H' = T H T, so at the
    # minimum ASAM sharpness is rho^2 * lambda_max(T H T) / 2.
    x, y = make_problem()
    theta, *_ = np.linalg.lstsq(augment(x), y[:, 0].astype("float64"), rcond=None)
    model = make_linear(theta[:K], theta[K])
    eta, rho = 0.01, 0.05
    t = np.diag(np.abs(theta_of(model)) + eta)
    expected = rho**2 * np.linalg.eigvalsh(t @ numpy_hessian(x) @ t)[-1] / 2
    result = flatness.rho_sharpness(
        model, (x, y), "mse", rho=rho, steps=30, adaptive=True, eta=eta, batch_size=64
    )
    # Tighter than the SAM check: the float32 loss differences here are good
    # to ~1e-6, and ascending along grad instead of T * grad is off by ~7e-4.
    np.testing.assert_allclose(result.value, expected, rtol=1e-4)
    eps = np.concatenate([np.ravel(e) for e in result.epsilon])
    assert np.linalg.norm(eps / np.diag(t)) == pytest.approx(rho, rel=1e-4)


def test_adaptive_sharpness_away_from_minimum_at_exact_max():
    # max over ||z|| <= rho of (T g).z + z^T (T H T) z / 2, with eps = T z.
    x, y = make_problem()
    model = make_linear()
    theta = theta_of(model)
    eta = 0.01
    t = np.diag(np.abs(theta) + eta)
    g, h = numpy_gradient(x, y, theta), numpy_hessian(x)
    for rho in (0.5, 2.0):
        result = flatness.rho_sharpness(
            model, (x, y), "mse", rho=rho, steps=30, adaptive=True, eta=eta, batch_size=64
        )
        np.testing.assert_allclose(result.value, trust_region_max(t @ g, t @ h @ t, rho), rtol=1e-4)


def test_sharpness_rho_zero_is_zero():
    x, y = make_problem()
    result = flatness.rho_sharpness(make_linear(), (x, y), "mse", rho=0.0)
    assert result.value == 0.0


# ---------------------------------------------------------------------------
# Landscapes


def test_landscape_1d_matches_quadratic():
    x, y = make_problem()
    model = make_linear()
    result = flatness.loss_landscape(
        model, (x, y), "mse", directions=1, span=0.5, points=11, normalization=None
    )
    assert result.betas is None and result.losses.shape == (11,)
    d = np.concatenate([np.ravel(v) for v in result.directions[0]]).astype("float64")
    assert np.all(d != 0)  # no normalization: biases move too
    theta = theta_of(model)
    expected = [numpy_loss(x, y, theta + a * d) for a in result.alphas]
    np.testing.assert_allclose(result.losses, expected, rtol=1e-5)
    assert result.alphas[5] == 0.0


def test_landscape_filter_normalization_on_dense():
    x, y = make_problem()
    model = make_linear()
    result = flatness.loss_landscape(model, (x, y), "mse", points=3)
    kernel_d, bias_d = result.directions[0]
    assert np.linalg.norm(kernel_d) == pytest.approx(
        np.linalg.norm(model.get_weights()[0]), rel=1e-5
    )
    np.testing.assert_array_equal(bias_d, 0.0)


def test_landscape_2d_center_and_grid():
    x, y = make_problem()
    model = make_linear()
    result = flatness.loss_landscape(
        model, (x, y), "mse", directions=2, span=0.4, points=5, normalization=None
    )
    assert result.losses.shape == (5, 5)
    theta = theta_of(model)
    assert result.losses[2, 2] == pytest.approx(numpy_loss(x, y, theta), rel=1e-6)
    d1, d2 = (np.concatenate([np.ravel(v) for v in d]).astype("float64") for d in result.directions)
    i, j = 0, 3  # an off-centre point checks the [alpha index, beta index] layout
    expected = numpy_loss(x, y, theta + result.alphas[i] * d1 + result.betas[j] * d2)
    assert result.losses[i, j] == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------
# State: weights never change, BatchNorm in inference mode


def make_bn_model():
    model = keras.Sequential(
        [
            keras.Input((K,)),
            keras.layers.Dense(6),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(1),
        ]
    )
    # Non-default moving statistics, so that training mode would differ.
    bn = model.layers[1]
    bn.moving_mean.assign(np.full(6, 0.3, "float32"))
    bn.moving_variance.assign(np.full(6, 2.0, "float32"))
    return model


class Wrapper:
    """Stands in for GMixModel: the real network is `.inner`."""

    def __init__(self, inner):
        self.inner = inner


MEASURES = {
    "eigenvalue": lambda m, d, loss: flatness.hessian_top_eigenvalue(m, d, loss, iters=3),
    "trace": lambda m, d, loss: flatness.hessian_trace(m, d, loss, samples=3),
    "sharpness": lambda m, d, loss: flatness.rho_sharpness(m, d, loss, rho=0.5, steps=3),
    "asam": lambda m, d, loss: flatness.rho_sharpness(m, d, loss, rho=0.5, steps=3, adaptive=True),
    "landscape": lambda m, d, loss: flatness.loss_landscape(m, d, loss, points=4),
    "plane": lambda m, d, loss: flatness.loss_landscape(m, d, loss, directions=2, points=3),
}


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_weights_unchanged(name):
    x, y = make_problem()
    model = make_bn_model()
    before = weights_of(model)
    MEASURES[name](Wrapper(model), (x, y), "mse")
    assert_same_weights(before, model)


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_weights_unchanged_when_loss_raises(name):
    x, y = make_problem()
    model = make_bn_model()
    before = weights_of(model)
    calls = []

    def failing_loss(y_true, y_pred):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("loss failed on its 3rd call")
        return keras.losses.mean_squared_error(y_true, y_pred)

    with pytest.raises(RuntimeError, match="3rd call"):
        MEASURES[name](model, (x, y), failing_loss)
    assert_same_weights(before, model)


def test_measures_use_inference_mode():
    x, y = make_problem()
    model = make_bn_model()
    result = flatness.loss_landscape(model, (x, y), "mse", directions=2, points=3)
    inference = float(np.mean((np.asarray(model(x, training=False)) - y) ** 2))
    training = float(np.mean((np.asarray(model(x, training=True)) - y) ** 2))
    assert result.losses[1, 1] == pytest.approx(inference, rel=1e-5)
    assert abs(training - inference) > 1e-3 * inference


def test_verbose_shows_progress(capsys):
    x, y = make_problem()
    flatness.hessian_top_eigenvalue(make_linear(), (x, y), "mse", iters=2, verbose=1)
    assert "eigenvalue" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# Argument checks


def test_bad_arguments_raise_value_error():
    x, y = make_problem()
    model = make_linear()
    with pytest.raises(ValueError, match="directions"):
        flatness.loss_landscape(model, (x, y), "mse", directions=3)
    with pytest.raises(ValueError, match="normalization"):
        flatness.loss_landscape(model, (x, y), "mse", normalization="layer")
    with pytest.raises(ValueError, match="rho"):
        flatness.rho_sharpness(model, (x, y), "mse", rho=-0.1)
    with pytest.raises(ValueError, match="iters"):
        flatness.hessian_top_eigenvalue(model, (x, y), "mse", iters=0)
    with pytest.raises(ValueError, match="data"):
        flatness.hessian_trace(model, x, "mse")
    unbuilt = keras.Sequential([keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="build"):
        flatness.hessian_trace(unbuilt, (x, y), "mse")


def test_the_flatness_defaults_are_defined_once():
    import inspect

    from keras_gmix.callbacks import FlatnessMonitor

    def defaults(function, skip=()):
        parameters = inspect.signature(function).parameters.items()
        return {
            name: p.default
            for name, p in parameters
            if p.default is not p.empty and name not in skip
        }

    assert defaults(flatness.measure_flatness) == dict(flatness.FLATNESS_DEFAULTS)
    monitor = defaults(FlatnessMonitor.__init__, skip=("every", "log_dir", "plot_dir", "loss"))
    assert monitor == {**flatness.FLATNESS_DEFAULTS, "eigenvalue_iters": 10, "sharpness_steps": 5}
