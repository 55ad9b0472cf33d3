"""Measuring flatness: Hessian eigenvalue and trace, rho-sharpness, landscapes.

Every measure here looks at the mean loss over the given data,

    L(w) = (1 / N) * sum over all N examples of l(y_i, f(x_i; w)),

as a function of the model's trainable variables w, seen as one flat vector.
Regularization penalties (`model.losses`) are not part of L.

All measures evaluate the network with
`model.stateless_call(trainable_values, non_trainable_values, x,
training=False)`, at weight values that they hold themselves, so the
model's variables are never assigned to: whatever happens (an exception,
a KeyboardInterrupt), the weights are bit-for-bit what they were. Because
`training=False`, BatchNormalization uses its moving statistics and Dropout
is off: the measured function of w is deterministic, as power iteration and
gradient ascent require.

`data` is a `tf.data.Dataset` of `(x, y)` batches, iterated once per loss,
gradient or Hessian-vector evaluation (so it must yield the same examples on
every pass: do not reshuffle it), or a tuple `(x, y)` of arrays, which is
batched here with `batch_size`. The batch size does not change any measured
value, only memory use and speed.

The landscapes' figures are drawn by `keras_gmix.flatness_plots`.
"""

import dataclasses
import functools
import math
import types

import keras
import numpy as np
import tensorflow as tf
from keras import ops

# keras.ops (and keras.tree) for the tensor arithmetic; the backend's own
# differentiation (keras_gmix.backend: gradients, Hessian-vector products)
# where Keras has no API; tf.data for the batches.
from keras_gmix import backend, checks
from keras_gmix import losses as losses_lib

NORMALIZATIONS = ("filter", None)


# ---------------------------------------------------------------------------
# Results


@dataclasses.dataclass
class EigenvalueResult:
    """Result of `hessian_top_eigenvalue`.

    Attributes:
        value: the final Rayleigh quotient `v^T H v`, the eigenvalue estimate.
        history: the Rayleigh quotient after every power iteration.
        converged: whether the relative change fell below `tol`.
        vector: the unit eigenvector estimate, one NumPy array per trainable
            variable (aligned with `model.trainable_variables`).
    """

    value: float
    history: list
    converged: bool
    vector: list


@dataclasses.dataclass
class TraceResult:
    """Result of `hessian_trace`.

    Attributes:
        value: the Hutchinson estimate of `trace(H)`, the mean of `history`.
        history: one sample `v^T H v` per Rademacher vector `v`.
        std_error: the standard error of `value` (sample standard deviation
            over `sqrt(samples)`; NaN for a single sample).
    """

    value: float
    history: list
    std_error: float


@dataclasses.dataclass
class SharpnessResult:
    """Result of `rho_sharpness`.

    Attributes:
        value: `max_k L(w + eps_k) - L(w)` over the ascent iterates.
        history: `L(w + eps_k) - L(w)` for every iterate `k`.
        loss: `L(w)`, the loss at the current weights.
        epsilon: the best perturbation found, one NumPy array per trainable
            variable.
    """

    value: float
    history: list
    loss: float
    epsilon: list


@dataclasses.dataclass
class LandscapeResult:
    """Result of `loss_landscape`.

    Attributes:
        alphas: the coefficients along the first direction, shape `[points]`.
        betas: the coefficients along the second direction, shape
            `[points]`, or None for a one-dimensional landscape.
        losses: `L(w + alphas[i] * d1)`, shape `[points]`, or
            `L(w + alphas[i] * d1 + betas[j] * d2)` at `losses[i, j]`,
            shape `[points, points]`.
        directions: the directions used (after normalization), one list of
            NumPy arrays per direction, aligned with
            `model.trainable_variables`.
        normalization: the normalization that was applied.
    """

    alphas: np.ndarray
    betas: np.ndarray
    losses: np.ndarray
    directions: list
    normalization: str


# ---------------------------------------------------------------------------
# Small pure functions


def flatten(tensors, dtype=None):
    """Concatenates a list of tensors into one flat vector.

    Args:
        tensors: list of tensors of any shapes.
        dtype: dtype of the result. Defaults to `None`, the dtype of the
            first tensor.

    Returns:
        A 1-D tensor with `sum(size(t))` entries, in list order, each tensor
        flattened in row-major order.

    Example:

    >>> flatten([np.ones((2, 2)), np.zeros(3)]).shape
    TensorShape([7])
    """
    tensors = [ops.convert_to_tensor(t) for t in tensors]
    if dtype is None:
        dtype = tensors[0].dtype
    return ops.concatenate([ops.reshape(ops.cast(t, dtype), [-1]) for t in tensors], axis=0)


def unflatten(flat, shapes):
    """Splits a flat vector into tensors of the given shapes (inverse of `flatten`).

    Args:
        flat: 1-D tensor with exactly `sum(prod(shape))` entries.
        shapes: list of shapes (tuples of ints).

    Returns:
        A list of tensors, one per shape.

    Example:

    >>> [t.shape for t in unflatten(np.arange(7.0), [(2, 2), (3,)])]
    [TensorShape([2, 2]), TensorShape([3])]
    """
    sizes = [int(np.prod(shape)) for shape in shapes]
    if int(ops.shape(flat)[0]) != sum(sizes):
        raise ValueError(
            f"`flat` has {int(ops.shape(flat)[0])} entries but `shapes` need {sum(sizes)}."
        )
    out, start = [], 0
    for shape, size in zip(shapes, sizes):
        out.append(ops.reshape(flat[start : start + size], shape))
        start += size
    return out


def filter_normalize(direction, weights, epsilon=1e-10):
    """Filter-wise normalization of a direction (Li et al. 2018).

    For every weight tensor with two or more axes, each filter of
    `direction` is rescaled to the norm of the same filter of `weights`.
    A filter is one slice along the last axis: Keras stores kernels as
    `(..., input_channels, output_channels)`, so the last axis indexes the
    output channels (conv) or units (Dense), the filters of the paper.
    Tensors with at most one axis (biases, BatchNormalization's gamma and
    beta) get a zero direction, as in the paper, because scaling them
    filter-wise is meaningless.

    Args:
        direction: list of tensors, the random direction.
        weights: list of tensors of the same shapes, the weights `w`.
        epsilon: added to the direction's filter norms to avoid dividing by
            zero. Defaults to `1e-10`.

    Returns:
        The normalized direction, a list of tensors.

    Example:

    >>> d = filter_normalize([np.ones((2, 3)), np.ones(3)],
    ...                      [np.full((2, 3), 2.0), np.ones(3)])
    >>> np.round(np.linalg.norm(d[0], axis=0), 6).tolist(), np.asarray(d[1]).tolist()
    ([2.828427, 2.828427, 2.828427], [0.0, 0.0, 0.0])

    References:
        - [Li et al., 2018](https://arxiv.org/abs/1712.09913), section 4.
    """
    out = []
    for d, w in zip(direction, weights):
        d = ops.convert_to_tensor(d)
        w = ops.cast(ops.convert_to_tensor(w), d.dtype)
        if len(d.shape) <= 1:
            out.append(ops.zeros_like(d))
            continue
        axes = tuple(range(len(d.shape) - 1))
        d_norm = ops.sqrt(ops.sum(ops.square(d), axis=axes, keepdims=True))
        w_norm = ops.sqrt(ops.sum(ops.square(w), axis=axes, keepdims=True))
        out.append(d * (w_norm / (d_norm + epsilon)))
    return out


def _project_to_ball(z, radius):
    """Projects the flat vector `z` onto the L2 ball of the given radius."""
    norm = ops.sqrt(ops.sum(ops.square(z)))
    scale = ops.minimum(ops.cast(1.0, z.dtype), radius / ops.maximum(norm, 1e-30))
    return z * scale


def _unit(v):
    """Returns v / ||v|| and ||v|| (a zero vector stays zero, never NaN)."""
    norm = ops.sqrt(ops.sum(ops.square(v)))
    safe = ops.where(norm > 0, norm, ops.ones_like(norm))
    return v / safe, float(norm)


# ---------------------------------------------------------------------------
# The objective L(w), evaluated statelessly


def _as_batches(data, batch_size):
    if isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        _check_positive_int("batch_size", batch_size)
        # Arrays are in memory already: batch them once into tensors, rather
        # than paying a tf.data iterator on each of the many passes.
        batches = tf.data.Dataset.from_tensor_slices(tuple(data)).batch(batch_size)
        return [_backend_tensors(batch) for batch in batches]
    raise ValueError(
        "`data` must be a tf.data.Dataset of (x, y) batches or a tuple (x, y) "
        f"of arrays. Received: data of type {type(data).__name__}"
    )


def _backend_tensors(batch):
    """`batch` as tensors of Keras' backend: tf.data yields TensorFlow
    tensors, which a loss on another backend (JAX) cannot mix with its own."""
    return keras.tree.map_structure(ops.convert_to_tensor, batch)


def _is_floating(tensor):
    return keras.backend.is_float_dtype(keras.backend.standardize_dtype(tensor.dtype))


def _batch_size(x):
    """The number of examples in the batch `x` (a static int)."""
    return int(keras.tree.flatten(x)[0].shape[0])


class _Objective:
    """L(w) over all batches at given flat weights; never writes variables."""

    def __init__(self, model, data, loss, batch_size):
        self.network = getattr(model, "inner", model)
        variables = list(self.network.trainable_variables)
        if not variables:
            raise ValueError(
                "The model has no trainable variables: build it (call it on "
                "data or give it an Input) before measuring flatness."
            )
        self.shapes = [tuple(v.shape) for v in variables]
        # Snapshots of the values: everything below works on these copies.
        self.values = [ops.copy(v.value) for v in variables]
        self.non_trainable = [ops.copy(v.value) for v in self.network.non_trainable_variables]
        self.w = flatten(self.values)
        self.dtype = self.w.dtype
        # The mean over the data of the unreduced values is exact whatever
        # `reduction` a Loss object was built with.
        self.loss_fn = losses_lib.unreduced_loss(loss)
        self.dataset = _as_batches(data, batch_size)
        self.call_kwargs = {"training": False} if checks.call_takes_training(self.network) else {}

    def _batches(self):
        for batch in self.dataset:
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(_backend_tensors(batch))
            if sample_weight is not None:
                raise ValueError("Sample weights are not supported by the flatness measures.")
            yield x, y

    def _batch_sum(self, flat_w, x, y):
        """Sum of the per-example losses of one batch."""
        y_pred, _ = self.network.stateless_call(
            unflatten(flat_w, self.shapes), self.non_trainable, x, **self.call_kwargs
        )
        # Under mixed precision the outputs are float16: compute the loss in
        # the weights' dtype, as a compiled Keras loss would.
        y_pred = keras.tree.map_structure(
            lambda t: ops.cast(t, self.dtype) if _is_floating(t) else t, y_pred
        )
        values = self.loss_fn(y, y_pred)
        # mean * n (not sum): a callable may already return the batch mean.
        return ops.mean(ops.cast(values, self.dtype)) * ops.cast(_batch_size(x), self.dtype)

    def _of_weights(self, x, y):
        """The batch's loss sum as a function of the flat weights alone."""
        return functools.partial(self._batch_sum, x=x, y=y)

    def loss(self, flat_w):
        total, count = 0.0, 0
        for x, y in self._batches():
            total += float(self._batch_sum(flat_w, x, y))
            count += _batch_size(x)
        return self._mean(total, count)

    def loss_and_grad(self, flat_w):
        total, count, grad = 0.0, 0, ops.zeros_like(flat_w)
        for x, y in self._batches():
            s, g = backend.value_and_gradient(self._of_weights(x, y), flat_w)
            grad += g
            total += float(s)
            count += _batch_size(x)
        return self._mean(total, count), grad / count

    def hvp(self, flat_w, v):
        """Exact Hessian-vector product H v by double differentiation."""
        count, hv = 0, ops.zeros_like(flat_w)
        for x, y in self._batches():
            hv += backend.hessian_vector_product(self._of_weights(x, y), flat_w, v)
            count += _batch_size(x)
        if count == 0:
            raise ValueError("`data` is empty.")
        return hv / count

    @staticmethod
    def _mean(total, count):
        if count == 0:
            raise ValueError("`data` is empty.")
        return total / count


def _progbar(target, verbose):
    return keras.utils.Progbar(target, verbose=verbose) if verbose else None


def _check_positive_int(name, value, minimum=1):
    return checks.check_number(name, value, low=minimum, integer=True)


# ---------------------------------------------------------------------------
# Hessian


def hessian_top_eigenvalue(model, data, loss, iters=20, seed=0, tol=1e-4, batch_size=32, verbose=0):
    """Top eigenvalue of the Hessian of the mean loss, by power iteration.

    Power iteration on exact Hessian-vector products (double backpropagation
    through nested `tf.GradientTape`s) over all trainable variables as one
    flat vector. Each iteration is one pass over `data`. The model is
    evaluated with `training=False` (BatchNormalization in inference mode)
    at held weight values; its variables are never changed.

    Power iteration converges to the eigenvalue of largest magnitude. Near a
    minimum, where sharpness is usually measured, that is the largest
    eigenvalue; far from one, a negative eigenvalue of larger magnitude would
    be returned instead (the sign of `value` tells).

    Args:
        model: a built Keras model, or a wrapper whose `.inner` is one.
        data: a `tf.data.Dataset` of `(x, y)` batches, or a tuple `(x, y)`.
        loss: a `keras.losses.Loss`, a loss name, or a callable
            `loss(y_true, y_pred)`; reduced to the mean over the data.
        iters: maximum number of power iterations. Defaults to `20`.
        seed: seed of the random start vector. Defaults to `0`.
        tol: stop when the eigenvalue estimate changes by less than
            `tol` relative to the previous one. Defaults to `1e-4`.
        batch_size: batch size when `data` is a tuple of arrays.
            Defaults to `32`.
        verbose: 1 shows a `keras.utils.Progbar`. Defaults to `0`.

    Returns:
        An `EigenvalueResult` with `value`, `history`, `converged`, `vector`.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> x, y = np.random.rand(64, 3), np.random.rand(64, 1)
    >>> hessian_top_eigenvalue(model, (x, y), "mse").value  # doctest: +SKIP
    1.63...

    References:
        - [Yao et al., 2020. PyHessian](https://arxiv.org/abs/1912.07145).
        - [Keskar et al., 2017](https://arxiv.org/abs/1609.04836), on
          sharpness and generalization.
    """
    _check_positive_int("iters", iters)
    objective = _Objective(model, data, loss, batch_size)
    generator = keras.random.SeedGenerator(seed)
    v, _ = _unit(keras.random.normal(objective.w.shape, dtype=objective.dtype, seed=generator))
    history, converged, progbar = [], False, _progbar(iters, verbose)
    for i in range(iters):
        hv = objective.hvp(objective.w, v)
        # Rayleigh quotient of the current unit vector: the eigenvalue estimate.
        eigenvalue = float(ops.sum(v * hv))
        history.append(eigenvalue)
        if progbar:
            progbar.update(i + 1, values=[("eigenvalue", eigenvalue)])
        v_next, hv_norm = _unit(hv)
        if hv_norm == 0.0:
            converged = True  # H v = 0: v is an eigenvector of eigenvalue 0
            break
        v = v_next
        if i > 0 and abs(history[-1] - history[-2]) <= tol * abs(history[-2]):
            converged = True
            break
    if progbar and len(history) < iters:
        progbar.update(iters, values=[("eigenvalue", history[-1])], finalize=True)
    return EigenvalueResult(
        value=history[-1],
        history=history,
        converged=converged,
        vector=[np.asarray(t) for t in unflatten(v, objective.shapes)],
    )


def hessian_trace(model, data, loss, samples=100, seed=0, batch_size=32, verbose=0):
    """Hutchinson estimate of the trace of the Hessian of the mean loss.

    `trace(H) = E[v^T H v]` for Rademacher vectors `v` (entries +-1 with
    equal probability); the estimate is the mean over `samples` vectors, each
    one exact Hessian-vector product (one pass over `data`). The model is
    evaluated with `training=False` (BatchNormalization in inference mode)
    at held weight values; its variables are never changed.

    Args:
        model: a built Keras model, or a wrapper whose `.inner` is one.
        data: a `tf.data.Dataset` of `(x, y)` batches, or a tuple `(x, y)`.
        loss: a `keras.losses.Loss`, a loss name, or a callable
            `loss(y_true, y_pred)`; reduced to the mean over the data.
        samples: number of Rademacher vectors. Defaults to `100`.
        seed: seed of the Rademacher vectors. Defaults to `0`.
        batch_size: batch size when `data` is a tuple of arrays.
            Defaults to `32`.
        verbose: 1 shows a `keras.utils.Progbar`. Defaults to `0`.

    Returns:
        A `TraceResult` with `value`, `history` (the per-sample `v^T H v`)
        and `std_error`.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> x, y = np.random.rand(64, 3), np.random.rand(64, 1)
    >>> hessian_trace(model, (x, y), "mse", samples=20).value  # doctest: +SKIP
    2.6...

    References:
        - Hutchinson, 1989. A stochastic estimator of the trace of the
          influence matrix for Laplacian smoothing splines.
        - [Yao et al., 2020. PyHessian](https://arxiv.org/abs/1912.07145).
    """
    _check_positive_int("samples", samples)
    objective = _Objective(model, data, loss, batch_size)
    generator = keras.random.SeedGenerator(seed)
    history, progbar = [], _progbar(samples, verbose)
    for i in range(samples):
        bits = keras.random.randint(objective.w.shape, 0, 2, seed=generator)
        v = ops.cast(2 * bits - 1, objective.dtype)
        history.append(float(ops.sum(v * objective.hvp(objective.w, v))))
        if progbar:
            progbar.update(i + 1, values=[("trace", float(np.mean(history)))])
    std_error = float(np.std(history, ddof=1) / math.sqrt(samples)) if samples > 1 else math.nan
    return TraceResult(value=float(np.mean(history)), history=history, std_error=std_error)


# ---------------------------------------------------------------------------
# rho-sharpness


def rho_sharpness(
    model,
    data,
    loss,
    rho,
    steps=10,
    adaptive=False,
    eta=0.01,
    seed=0,
    batch_size=32,
    verbose=0,
):
    """Largest loss increase within an L2 ball of radius rho around the weights.

    Estimates `max_{||eps|| <= rho} L(w + eps) - L(w)` by projected gradient
    ascent. The ascent starts, like SAM, at `eps_0 = rho * g / ||g||` with
    `g = grad L(w)` (a random direction when `g == 0`), then takes `steps`
    normalized steps of length `rho` along the gradient at `w + eps_k`, each
    projected back onto the ball. With `adaptive=True` the ball is
    `||T^-1 eps|| <= rho` with `T = |w| + eta` elementwise (ASAM), so that
    `eps_0 = rho * T^2 g / ||T g||`, and the ascent runs in the scaled
    coordinates `z = T^-1 eps`. The model is evaluated with `training=False`
    (BatchNormalization in inference mode) at held weight values; its
    variables are never changed.

    Each step is one pass over `data` with a gradient; the reported value is
    the largest increase over all `steps + 1` iterates, a lower bound of the
    true maximum.

    Args:
        model: a built Keras model, or a wrapper whose `.inner` is one.
        data: a `tf.data.Dataset` of `(x, y)` batches, or a tuple `(x, y)`.
        loss: a `keras.losses.Loss`, a loss name, or a callable
            `loss(y_true, y_pred)`; reduced to the mean over the data.
        rho: radius of the ball, `>= 0`.
        steps: number of ascent steps after the start. Defaults to `10`.
        adaptive: whether to use ASAM's scale-invariant ball.
            Defaults to `False`.
        eta: ASAM's offset in `T = |w| + eta`. Defaults to `0.01`.
        seed: seed of the random start used when the gradient is zero.
            Defaults to `0`.
        batch_size: batch size when `data` is a tuple of arrays.
            Defaults to `32`.
        verbose: 1 shows a `keras.utils.Progbar`. Defaults to `0`.

    Returns:
        A `SharpnessResult` with `value`, `history`, `loss` and `epsilon`.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> x, y = np.random.rand(64, 3), np.random.rand(64, 1)
    >>> rho_sharpness(model, (x, y), "mse", rho=0.05).value  # doctest: +SKIP
    0.04...

    References:
        - [Foret et al., 2021. SAM](https://arxiv.org/abs/2010.01412).
        - [Kwon et al., 2021. ASAM](https://arxiv.org/abs/2102.11600).
        - [Andriushchenko et al., 2023. A modern look at the relationship
          between sharpness and generalization](
          https://arxiv.org/abs/2302.07011).
    """
    rho = checks.check_number("rho", rho, low=0)
    _check_positive_int("steps", steps, minimum=0)
    eta = checks.check_number("eta", eta, low=0)
    objective = _Objective(model, data, loss, batch_size)
    w, dtype = objective.w, objective.dtype
    base_loss, grad = objective.loss_and_grad(w)
    shape = objective.shapes
    if rho == 0:
        zero = [np.zeros(s, dtype=dtype.name) for s in shape]
        return SharpnessResult(value=0.0, history=[0.0], loss=base_loss, epsilon=zero)

    # Work in z = T^-1 eps, where the ball is a plain L2 ball (T = 1 for SAM).
    scale = ops.abs(w) + ops.cast(eta, dtype) if adaptive else ops.ones_like(w)
    radius = ops.cast(rho, dtype)
    direction, norm = _unit(scale * grad)
    if norm == 0.0:
        # At a stationary point SAM's direction is undefined; any start
        # works because the ascent then follows the curvature.
        generator = keras.random.SeedGenerator(seed)
        direction, _ = _unit(keras.random.normal(w.shape, dtype=dtype, seed=generator))
    z = radius * direction

    history, best, best_eps = [], -math.inf, None
    progbar = _progbar(steps + 1, verbose)
    for k in range(steps + 1):
        eps = scale * z
        if k < steps:
            value, g = objective.loss_and_grad(w + eps)
        else:
            value = objective.loss(w + eps)
        increase = value - base_loss
        history.append(increase)
        if increase > best:
            best, best_eps = increase, eps
        if progbar:
            progbar.update(k + 1, values=[("sharpness", best)])
        if k == steps:
            break
        # Chain rule: the gradient in z coordinates is T * grad.
        step, g_norm = _unit(scale * g)
        if g_norm == 0.0:
            break  # a stationary point of the ascent: nothing left to climb
        z = _project_to_ball(z + radius * step, radius)
    if progbar and len(history) < steps + 1:
        progbar.update(steps + 1, values=[("sharpness", best)], finalize=True)
    return SharpnessResult(
        value=best,
        history=history,
        loss=base_loss,
        epsilon=[np.asarray(t) for t in unflatten(best_eps, shape)],
    )


# ---------------------------------------------------------------------------
# Loss landscapes


def loss_landscape(
    model,
    data,
    loss,
    directions=1,
    span=1.0,
    points=21,
    seed=0,
    normalization="filter",
    batch_size=32,
    verbose=0,
):
    """Loss along one random direction, or over a plane of two.

    Draws `directions` Gaussian random directions `d` over the trainable
    variables, normalizes them filter-wise (Li et al. 2018: each filter of
    `d` gets the norm of the same filter of `w`; biases and
    BatchNormalization parameters, the 1-D variables, get zero), and
    evaluates `L(w + a * d1)` or `L(w + a * d1 + b * d2)` for `a, b` on
    `points` evenly spaced values in `[-span, span]`. The model is evaluated
    with `training=False` (BatchNormalization in inference mode) at held
    weight values; its variables are never changed.

    Args:
        model: a built Keras model, or a wrapper whose `.inner` is one.
        data: a `tf.data.Dataset` of `(x, y)` batches, or a tuple `(x, y)`.
        loss: a `keras.losses.Loss`, a loss name, or a callable
            `loss(y_true, y_pred)`; reduced to the mean over the data.
        directions: 1 for a curve, 2 for a plane. Defaults to `1`.
        span: the coefficients run over `[-span, span]`. Defaults to `1.0`.
        points: number of coefficients per direction (an odd number puts
            `w` itself on the grid). Defaults to `21`.
        seed: seed of the random directions. Defaults to `0`.
        normalization: `"filter"`, or `None` to use the raw Gaussian
            directions. Defaults to `"filter"`.
        batch_size: batch size when `data` is a tuple of arrays.
            Defaults to `32`.
        verbose: 1 shows a `keras.utils.Progbar`. Defaults to `0`.

    Returns:
        A `LandscapeResult` with `alphas`, `betas` (None in 1-D), `losses`
        and the `directions` used.

    Example:

    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> x, y = np.random.rand(64, 3), np.random.rand(64, 1)
    >>> result = loss_landscape(model, (x, y), "mse", points=11)
    >>> result.losses.shape
    (11,)

    References:
        - [Li et al., 2018. Visualizing the loss landscape of neural
          nets](https://arxiv.org/abs/1712.09913).
    """
    if directions not in (1, 2):
        raise ValueError(f"`directions` must be 1 or 2. Received: directions={directions!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"`normalization` must be one of {NORMALIZATIONS}. "
            f"Received: normalization={normalization!r}"
        )
    if not span > 0:
        raise ValueError(f"`span` must be > 0. Received: span={span!r}")
    _check_positive_int("points", points, minimum=2)
    objective = _Objective(model, data, loss, batch_size)
    dtype = objective.dtype
    generator = keras.random.SeedGenerator(seed)
    drawn = []
    for _ in range(directions):
        d = [keras.random.normal(s, dtype=dtype, seed=generator) for s in objective.shapes]
        if normalization == "filter":
            d = filter_normalize(d, objective.values)
        drawn.append(flatten(d, dtype=dtype))

    alphas = np.linspace(-span, span, points)
    if points % 2 == 1:
        # Exactly 0, so that the centre is L(w) itself and not L(w + 1e-17 d).
        alphas[points // 2] = 0.0
    grid = [(a,) for a in alphas] if directions == 1 else [(a, b) for a in alphas for b in alphas]
    losses, progbar = [], _progbar(len(grid), verbose)
    for i, coefficients in enumerate(grid):
        w = objective.w
        for c, d in zip(coefficients, drawn):
            w = w + ops.cast(c, dtype) * d
        losses.append(objective.loss(w))
        if progbar:
            progbar.update(i + 1)
    losses = np.asarray(losses)
    if directions == 2:
        losses = losses.reshape(points, points)
    return LandscapeResult(
        alphas=alphas,
        betas=alphas.copy() if directions == 2 else None,
        losses=losses,
        directions=[[np.asarray(t) for t in unflatten(d, objective.shapes)] for d in drawn],
        normalization=normalization,
    )


# ---------------------------------------------------------------------------
# One record of all measures


# The settings of `measure_flatness` and their defaults, defined once:
# `measure_flatness` and `gmix-flatness` (on saved models) use them as they are.
FLATNESS_DEFAULTS = types.MappingProxyType(
    dict(
        rho=0.05,
        eigenvalue_iters=20,
        sharpness_steps=10,
        trace_samples=0,
        landscape_points=21,
        landscape_span=1.0,
        seed=0,
        batch_size=256,
    )
)
# `FlatnessMonitor` measures again every few epochs during training: fewer
# power iterations and ascent steps, the rest as above.
MONITOR_FLATNESS_DEFAULTS = types.MappingProxyType(
    {**FLATNESS_DEFAULTS, "eigenvalue_iters": 10, "sharpness_steps": 5}
)


def measure_flatness(
    model,
    data,
    loss,
    rho=FLATNESS_DEFAULTS["rho"],
    eigenvalue_iters=FLATNESS_DEFAULTS["eigenvalue_iters"],
    sharpness_steps=FLATNESS_DEFAULTS["sharpness_steps"],
    trace_samples=FLATNESS_DEFAULTS["trace_samples"],
    landscape_points=FLATNESS_DEFAULTS["landscape_points"],
    landscape_span=FLATNESS_DEFAULTS["landscape_span"],
    seed=FLATNESS_DEFAULTS["seed"],
    batch_size=FLATNESS_DEFAULTS["batch_size"],
):
    """The flatness measures of a model at its current weights, as one record.

    The model is evaluated in inference mode with the measures above; its
    weights are never changed. `FlatnessMonitor` (during training) and
    `gmix-flatness` (on saved models) both record this.

    Args:
        model: a built Keras model, or a `GMixModel` (its `inner` is measured).
        data: a tuple `(x, y)` of arrays or a finite `tf.data.Dataset` of
            `(x, y)` batches, not reshuffled between passes.
        loss: a `keras.losses.Loss`, a loss name or a callable.
        rho: radius of the rho-sharpness ball. Defaults to `0.05`.
        eigenvalue_iters: power iterations of the top eigenvalue.
            Defaults to `20`.
        sharpness_steps: ascent steps of rho-sharpness. Defaults to `10`.
        trace_samples: Hutchinson samples of the Hessian trace; 0 skips it.
            Defaults to `0`.
        landscape_points: points of the 1D landscape. Defaults to `21`.
        landscape_span: the landscape runs over [-span, span] times a
            filter-normalized random direction. Defaults to `1.0`.
        seed: seed of every random vector. Defaults to `0`.
        batch_size: batch size when `data` is arrays. Defaults to `256`.

    Returns:
        `(record, landscape)`: a dict with `loss` (L(w)), `top_eigenvalue`,
        `eigenvalue_converged`, `rho`, `rho_sharpness`, `hessian_trace` and
        `hessian_trace_std_error` (None when skipped) and
        `landscape_mean_rise` (the mean of L(w + a d) - L(w) over the
        landscape's points); and the 1D `LandscapeResult`.
    """
    common = dict(seed=seed, batch_size=batch_size)
    eigen = hessian_top_eigenvalue(model, data, loss, iters=eigenvalue_iters, **common)
    sharp = rho_sharpness(model, data, loss, rho=rho, steps=sharpness_steps, **common)
    trace = None
    if trace_samples:
        trace = hessian_trace(model, data, loss, samples=trace_samples, **common)
    landscape = loss_landscape(
        model, data, loss, directions=1, span=landscape_span, points=landscape_points, **common
    )
    record = {
        "loss": float(sharp.loss),
        "top_eigenvalue": float(eigen.value),
        "eigenvalue_converged": bool(eigen.converged),
        "rho": float(rho),
        "rho_sharpness": float(sharp.value),
        "hessian_trace": None if trace is None else float(trace.value),
        "hessian_trace_std_error": None if trace is None else float(trace.std_error),
        "landscape_mean_rise": float(np.mean(landscape.losses - sharp.loss)),
    }
    return record, landscape
