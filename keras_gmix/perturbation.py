"""The SAM / ASAM weight perturbation, and global vector arithmetic.

Weights and gradients are lists of tensors (one per trainable variable);
the mathematics treats each list as one flat vector, so norms and dot
products are global, over all variables together. Everything here runs in
float32 whatever the model's compute dtype.

References:
    - Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
      Generalization", 2021, https://arxiv.org/abs/2010.01412
    - Kwon et al., "ASAM: Adaptive Sharpness-Aware Minimization for
      Scale-Invariant Learning of Deep Neural Networks", 2021,
      https://arxiv.org/abs/2102.11600
"""

from keras import ops


def as_float32(tensors):
    return [ops.cast(t, "float32") for t in tensors]


def global_dot(a, b):
    """<a, b> over all tensors of two aligned lists."""
    return ops.sum(ops.stack([ops.sum(x * y) for x, y in zip(as_float32(a), as_float32(b))]))


def global_norm(a):
    """||a||_2 over all tensors of a list."""
    return ops.sqrt(global_dot(a, a))


def scale(tensors, factor):
    return [t * ops.cast(factor, t.dtype) for t in tensors]


def add(a, b):
    return [x + ops.cast(y, x.dtype) for x, y in zip(a, b)]


def safe_divide(numerator, denominator):
    """numerator / denominator, and 0 where the denominator is exactly 0.

    Only an exact zero is guarded: a non-finite denominator must still make
    the result non-finite downstream, so that a loss-scale overflow reaches
    the optimizer (which then skips the step) instead of being hidden.
    """
    is_zero = ops.equal(denominator, 0)
    safe = ops.where(is_zero, ops.ones_like(denominator), denominator)
    return ops.where(is_zero, ops.zeros_like(numerator), numerator / safe)


def perturbation(weights, grads, rho, adaptive=False, eta=0.01):
    """The ascent step eps that SAM (or ASAM) adds to the weights.

    SAM:  eps = rho * g / ||g||.
    ASAM: eps = rho * T^2 g / ||T g||, with T = |w| + eta elementwise.

    A zero gradient gives eps = 0 (never NaN); rho = 0 gives eps = 0.

    Args:
        weights: list of weight tensors w (used by ASAM only).
        grads: list of gradient tensors g, aligned with `weights`.
        rho: radius of the neighbourhood, >= 0.
        adaptive: use ASAM's scale-invariant geometry. Defaults to `False`.
        eta: ASAM's offset in T. Defaults to `0.01`.

    Returns:
        A list of float32 tensors eps, aligned with `weights`.
    """
    grads = as_float32(grads)
    if adaptive:
        t = [ops.abs(w) + eta for w in as_float32(weights)]
        t_grads = [ti * g for ti, g in zip(t, grads)]
        direction = [ti * tg for ti, tg in zip(t, t_grads)]  # T^2 g
        norm = global_norm(t_grads)
    else:
        direction = grads
        norm = global_norm(grads)
    factor = safe_divide(ops.cast(rho, "float32"), norm)
    return scale(direction, factor)
