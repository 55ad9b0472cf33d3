"""update_gradients: the gradient each method hands to the optimizer.

One function serves all six methods (`GMixModel(method=...)`):

| method | input batch | update gradient |
|---|---|---|
| erm   | clean | grad L_B(w) |
| mixup | mixed | grad L_B(w) |
| sam   | clean | grad L_B(w + eps) |
| gmix  | mixed | grad L_B(w + eps) |
| bgmix | mixed | grad L_sharp(w + eps) + grad L_flat(w) |
| dgmix | mixed | g_flat + g_perp + max(<g_sharp, u>, 0) u |

(Which batch is mixed is the caller's business: this module sees a batch.)

The model is evaluated with `Layer.stateless_call` at given weight values,
so no variable is ever written here, not even half-way through: the caller
decides what to keep (GMixModel keeps the unperturbed pass's BatchNorm
statistics). Both passes start from the same non-trainable state, so they
draw the same dropout masks.

Pass counts: erm/mixup 1 forward + 1 backward; sam/gmix 2F + 2B;
bgmix/dgmix 2F + 3B, the third backward pass running through the first
forward pass again (its pull-back is kept) for the flat subset. With
`keep_first_pass=False` bgmix/dgmix make 3F + 3B instead: pass 1 runs again
after the perturbed pass, so that one pass is held at a time, as in sam.
"""

from typing import NamedTuple

import keras
from keras import ops

from keras_gmix import backend, checks, partition
from keras_gmix import losses as losses_lib
from keras_gmix import perturbation as pt

METHODS = ("erm", "mixup", "sam", "gmix", "bgmix", "dgmix")
MIXED_METHODS = ("mixup", "gmix", "bgmix", "dgmix")
PERTURBED_METHODS = ("sam", "gmix", "bgmix", "dgmix")
PARTITIONED_METHODS = ("bgmix", "dgmix")


def check_method(method):
    if method not in METHODS:
        raise ValueError(f"Argument `method` must be one of {METHODS}. Received: method={method!r}")


def check_rho(rho):
    """Returns `rho` as a float; a ValueError unless it is a finite number >= 0."""
    return checks.check_number(
        "rho",
        rho,
        low=0,
        meaning="the radius of the SAM neighbourhood; 0 turns the perturbation off",
    )


def check_eta(eta):
    """Returns `eta` as a float; a ValueError unless it is a finite number >= 0."""
    return checks.check_number("eta", eta, low=0, meaning="ASAM's offset")


class StepResult(NamedTuple):
    """Everything one step computes; GMixModel uses all of it."""

    grads: list  # aligned with inner.trainable_variables, loss-scaled
    stats: dict  # SPEC.md section 5 values, scalar float32 tensors
    y_pred: object  # predictions of the unperturbed pass
    non_trainable: list  # non-trainable values after the unperturbed pass
    sensitivity: object = None  # [n] s_i = l_i(w + eps) - l_i(w), perturbed methods only
    # The plain gradient g = grad (L_B + regularizers)(w), loss-scaled, when
    # asked for (`with_plain_grads`): what a schedule's reuse direction is
    # formed against (SPEC.md section 4b). No extra pass: pass 1's.
    plain_grads: list = None


def _identity(value):
    return value


def _per_example(loss_fn, y, y_pred, sample_weight):
    values = ops.cast(loss_fn(y, y_pred), "float32")
    if sample_weight is not None:
        values = values * ops.reshape(ops.cast(sample_weight, "float32"), [-1])
    return values


def compute_update(
    inner,
    x,
    y,
    loss_fn,
    method="gmix",
    rho=0.05,
    sensitive_fraction=0.5,
    adaptive=False,
    eta=0.01,
    sample_weight=None,
    scale_loss=None,
    mean_over_replicas=None,
    weights=None,
    state=None,
    with_plain_grads=False,
    reduction="sum_over_batch_size",
    keep_first_pass=True,
):
    """One step's update gradient, statistics and new non-trainable state.

    Written once for every backend: each forward pass is differentiated
    through the backend's pull-back (`backend.vjp`), and the cotangent of
    the per-example losses says which examples a gradient takes, at what
    scale (all of them for the ascent direction, the flat subset for
    bgmix/dgmix's third backward pass).

    Args:
        inner: a built Keras model.
        x, y: the (already mixed, if the method mixes) batch; y one-hot/soft
            (a list in output order for several outputs).
        loss_fn: per-example loss `fn(y_true, y_pred) -> [n]` (with several
            outputs: summed over them, `losses.per_example_loss`).
        method, rho, sensitive_fraction, adaptive, eta: see `update_gradients`.
        sample_weight: optional [n] weights multiplying each l_i.
        scale_loss: the optimizer's `scale_loss` (mixed-precision loss
            scaling), a multiplication applied to every differentiated loss.
            The returned gradients are scaled by it. Defaults to identity.
        mean_over_replicas: if given, applied to the ascent gradient before
            eps is computed (`sync_perturbation`). Defaults to `None`.
        weights, state: the values of `inner.trainable_variables` and
            `inner.non_trainable_variables` to evaluate at. Defaults to
            `None` (read the variables). Passing them makes this a pure
            function of tensors, which XLA can compile on its own.
        with_plain_grads: also return the plain gradient at w (pass 1's,
            regularizers included) as `plain_grads`. Defaults to `False`.
        reduction: how the per-example losses are summed into the
            objective and the logged loss, as the compiled loss's
            reduction in Keras (`losses.objective_scales`): the sharp and
            flat subsets' sums are scaled alike. Defaults to
            `"sum_over_batch_size"` (the batch mean).
        keep_first_pass: bgmix/dgmix: keep pass 1's pull-back through the
            perturbed pass (2F + 3B; two forward passes' activations held
            at once). `False` drops it after the ascent gradient, as sam
            does, and runs pass 1 again (the same batch, state, batch
            statistics and dropout masks) after the perturbed pass, for the
            flat subset's gradient: the same update for 3F + 3B, one pass
            held at a time. Defaults to `True`.

    Returns:
        A `StepResult`.
    """
    scale_loss = scale_loss or _identity
    perturbed = method in PERTURBED_METHODS
    partitioned = method in PARTITIONED_METHODS
    if weights is None:
        weights = [ops.copy(v) for v in inner.trainable_variables]
    if state is None:
        state = [ops.copy(v) for v in inner.non_trainable_variables]
    # y is one label tensor, or a list of them for a model of several outputs.
    n = ops.shape(keras.tree.flatten(y)[0])[0]
    scale, log_scale = losses_lib.objective_scales(reduction, n, sample_weight)
    training = {"training": True} if checks.call_takes_training(inner) else {}
    adds_losses = []  # set while pass 1 is traced: whether the model adds losses

    def first_pass(values):
        # At w: its BatchNorm statistics (and RNG state) are the step's.
        y_pred, new_state, extra_losses = inner.stateless_call(
            values, state, x, return_losses=True, **training
        )
        adds_losses.append(bool(extra_losses))
        # Regularizers are evaluated at w only, and added once.
        reg_loss = (
            ops.sum(ops.stack([ops.cast(t, "float32") for t in extra_losses]))
            if extra_losses
            else ops.zeros([], "float32")
        )
        losses = _per_example(loss_fn, y, y_pred, sample_weight)
        return (losses, reg_loss), (y_pred, new_state)

    # Forward pass 1, at w, kept for as many pull-backs as the method takes.
    (losses_at_w, reg_loss), pullback, (y_pred, new_state) = backend.vjp(first_pass, weights)
    regularized = adds_losses[0]
    # The cotangents: d objective / d l_i (loss-scaled), and the regularizers'.
    every_example = scale_loss(ops.ones_like(losses_at_w) * scale)
    regularizers = scale_loss(ops.ones([], "float32")) if regularized else None

    logged_loss = ops.sum(losses_at_w) * log_scale
    total_loss = logged_loss + reg_loss if regularized else logged_loss
    stats = {"loss": total_loss}

    if not perturbed:
        grads = pullback((every_example, regularizers))
        return StepResult(
            grads, stats, y_pred, new_state, plain_grads=grads if with_plain_grads else None
        )

    # Backward pass 1: the ascent direction g = grad L_B(w).
    ascent = pullback((every_example, None))
    reg_grads = pullback((None, regularizers)) if regularized else None
    plain_grads = None
    if with_plain_grads:
        plain_grads = ascent if reg_grads is None else pt.add(ascent, reg_grads)
    if mean_over_replicas is not None:
        ascent = mean_over_replicas(ascent)
    if not partitioned or not keep_first_pass:
        pullback = None  # frees pass 1's activations before pass 2
    eps = pt.perturbation(weights, ascent, rho, adaptive=adaptive, eta=eta)
    perturbed_weights = pt.add(weights, eps)

    def losses_at(values):
        # At w + eps, from the same starting state (same dropout masks); the
        # BatchNorm statistics of this pass are dropped.
        y_pred_eps, _ = inner.stateless_call(values, state, x, **training)
        return _per_example(loss_fn, y, y_pred_eps, sample_weight)

    def flat_examples(sharp):
        # Both subsets are scaled as the whole batch is (1/n by default).
        return scale_loss((1.0 - sharp) * scale)

    # Forward and backward pass 2, at w + eps.
    (losses_at_eps,), perturbed_pullback, _ = backend.vjp(
        lambda values: ((losses_at(values),), ()), perturbed_weights
    )
    if partitioned:
        sharp = partition.sharp_mask(losses_at_eps - losses_at_w, sensitive_fraction)
    sharp_examples = sharp if partitioned else ops.ones_like(losses_at_eps)
    g_sharp = perturbed_pullback((scale_loss(sharp_examples * scale),))
    perturbed_pullback = None
    sensitivity = ops.stop_gradient(losses_at_eps - losses_at_w)

    # Like "loss" (and Keras' own loss), perturbed_loss includes the
    # regularizers at w; with the default reduction, sharpness (the mean
    # s_i) = perturbed_loss - loss.
    sharpness = ops.mean(losses_at_eps) - ops.mean(losses_at_w)
    stats.update(
        perturbed_loss=total_loss + ops.sum(losses_at_eps - losses_at_w) * log_scale,
        sharpness=sharpness,
        eps_norm=pt.global_norm(eps),
    )

    if partitioned:
        if pullback is None:
            # Memory-lean: pass 1 again, at w, from the same state (the same
            # batch statistics and dropout masks), run only once pass 2 is
            # done, so that no two passes' activations are held at once.
            _, pullback, _ = backend.vjp(first_pass, backend.after(weights, g_sharp))
        # Backward pass 3, through pass 1: the flat subset at w.
        g_flat = pullback((flat_examples(sharp), None))
        pullback = None
        stats.update(
            sensitive_fraction=ops.mean(sharp),
            grad_cosine=partition.cosine(g_sharp, g_flat),
        )
        if method == "bgmix":
            grads = pt.add(g_sharp, g_flat)
        else:
            grads, conflict = partition.decompose(g_sharp, g_flat)
            stats["conflict"] = conflict
    else:
        grads = g_sharp

    if reg_grads is not None:
        grads = pt.add(grads, reg_grads)
    grads = [ops.cast(g, w.dtype) for g, w in zip(grads, weights)]
    return StepResult(grads, stats, y_pred, new_state, sensitivity, plain_grads)


def check_update_arguments(method, rho, sensitive_fraction, eta):
    """Returns `(rho, sensitive_fraction, eta)` as Python floats, after checking all four."""
    check_method(method)
    return check_rho(rho), partition.check_sensitive_fraction(sensitive_fraction), check_eta(eta)


def update_gradients(
    inner,
    x,
    y_soft,
    loss,
    method="gmix",
    rho=0.05,
    sensitive_fraction=0.5,
    adaptive=False,
    eta=0.01,
    sample_weight=None,
    keep_first_pass=True,
):
    """The update gradient of one G-Mix family step, without applying it.

    Pure: the model's variables (weights, BatchNorm statistics, RNG state)
    are left exactly as they were.

    Args:
        inner: a built Keras model.
        x: the input batch (mix it first for the mixing methods).
        y_soft: one-hot or soft labels, shape [n, classes].
        loss: per-example loss `loss(y_true, y_pred) -> [n]`, or a Keras loss
            (name or object; it is evaluated per example, and an object's
            `reduction` decides how those are summed, as in Keras).
        method: one of "erm", "mixup", "sam", "gmix", "bgmix", "dgmix"
            ("erm"/"mixup" and "sam"/"gmix" compute the same thing on a
            given batch). Defaults to `"gmix"`.
        rho: SAM radius, >= 0. Defaults to `0.05`.
        sensitive_fraction: gamma, the fraction of examples treated as sharp
            by bgmix/dgmix. Defaults to `0.5`.
        adaptive: ASAM perturbation. Defaults to `False`.
        eta: ASAM offset. Defaults to `0.01`.
        sample_weight: optional per-example weights. Defaults to `None`.
        keep_first_pass: bgmix/dgmix: `False` trades one more forward
            pass for about half the working memory (the same update).
            Defaults to `True`.

    Returns:
        `(grads, stats)`: grads aligned with `inner.trainable_variables`;
        stats a dict of the step's statistics (`loss`; for the perturbed
        methods `perturbed_loss`, `sharpness`, `eps_norm`; for bgmix/dgmix
        `sensitive_fraction`, `grad_cosine`; for dgmix `conflict`): Python
        floats when run eagerly, scalar tensors inside a traced step.

    Example:

    >>> grads, stats = update_gradients(model, x_mix, y_mix,
    ...     loss=keras.losses.categorical_crossentropy, method="dgmix")
    >>> optimizer.apply(grads, model.trainable_variables)

    References:
        - G-Mix: https://arxiv.org/abs/2308.03236
        - SAM: https://arxiv.org/abs/2010.01412
    """
    rho, sensitive_fraction, eta = check_update_arguments(method, rho, sensitive_fraction, eta)
    loss_fn = losses_lib.per_example_loss(loss)
    result = compute_update(
        inner,
        x,
        y_soft,
        loss_fn,
        method=method,
        rho=rho,
        sensitive_fraction=sensitive_fraction,
        adaptive=adaptive,
        eta=eta,
        sample_weight=sample_weight,
        reduction=losses_lib.reduction_of(loss),
        keep_first_pass=checks.check_bool("keep_first_pass", keep_first_pass),
    )
    stats = result.stats
    if not any(backend.is_symbolic(v) for v in stats.values()):
        stats = {k: float(v) for k, v in stats.items()}
    return result.grads, stats


def all_finite(tensors):
    """True if every element of every tensor is finite (a scalar bool tensor)."""
    return ops.all(ops.stack([ops.all(ops.isfinite(ops.cast(t, "float32"))) for t in tensors]))
