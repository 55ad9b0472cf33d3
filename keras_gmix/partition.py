"""Sharpness-sensitivity, the sharp/flat split, and the dgmix decomposition.

Binary and Decomposed G-Mix split each mixed batch by how much each
example's loss rises under the weight perturbation, s_i = l_i(w + eps) -
l_i(w) (ESAM's sharpness-sensitive data selection), and treat the two
subsets differently.

References:
    - Li & Tang, "G-Mix: A Generalized Mixup Learning Framework Towards Flat
      Minima", https://arxiv.org/abs/2308.03236
    - Du et al., "Efficient Sharpness-aware Minimization for Improved
      Training of Neural Networks" (ESAM), https://arxiv.org/abs/2110.03141
    - Zhuang et al., "Surrogate Gap Guided Sharpness-Aware Minimization"
      (GSAM), https://arxiv.org/abs/2203.08065
"""

import math

from keras import ops

from keras_gmix import checks
from keras_gmix import perturbation as pt


def check_sensitive_fraction(sensitive_fraction):
    """Returns gamma as a float; a ValueError unless it is a finite number in [0, 1]."""
    return checks.check_number(
        "sensitive_fraction",
        sensitive_fraction,
        low=0,
        high=1,
        meaning="the fraction gamma of each batch treated as sharp",
    )


def sharp_count(batch_size, sensitive_fraction):
    """k = ceil(gamma * n): an int for a static n, an int32 tensor for a dynamic one."""
    if isinstance(batch_size, int):
        # Round gamma * n to 9 decimals before ceil, so that e.g. 0.3 * 10
        # (3.0000000000000004 in binary) gives 3, not 4.
        return math.ceil(round(batch_size * sensitive_fraction, 9))
    n = ops.cast(batch_size, "float64")
    product = ops.round(n * sensitive_fraction * 1e9) / 1e9
    return ops.cast(ops.ceil(product), "int32")


def stable_rank(values):
    """rank[i] = the position of example i when `values` are sorted in
    descending order, ties broken towards the lower index.

    Counted pairwise ([n, n] comparisons, nothing next to a forward pass),
    so that it is the same on every backend: a sort need not be stable
    (TensorFlow's argsort is not by default, JAX's is).
    """
    n = ops.shape(values)[0]
    above = values[None, :] > values[:, None]  # [i, j]: s_j > s_i
    index = ops.arange(n)
    tie_before = ops.logical_and(
        values[None, :] == values[:, None], index[None, :] < index[:, None]
    )
    return ops.sum(ops.cast(ops.logical_or(above, tie_before), "int32"), axis=1)


def sharp_mask(sensitivity, sensitive_fraction):
    """1.0 for the k = ceil(gamma n) examples with the largest s_i, else 0.0.

    Ties are broken towards the lower index (as a stable sort would). The
    mask is a constant: no gradient flows through it.

    Args:
        sensitivity: [n] float tensor of s_i.
        sensitive_fraction: gamma in [0, 1].

    Returns:
        [n] float32 tensor.
    """
    sensitivity = ops.stop_gradient(ops.cast(sensitivity, "float32"))
    k = sharp_count(ops.shape(sensitivity)[0], sensitive_fraction)
    return ops.cast(stable_rank(sensitivity) < k, "float32")


def decompose(g_sharp, g_flat):
    """Decomposed G-Mix's update from the two subset gradients.

    With u = g_flat / ||g_flat||:
        g = g_flat + (g_sharp - <g_sharp, u> u) + max(<g_sharp, u>, 0) u,
    i.e. the component of g_sharp that opposes the flat subset's descent
    direction is dropped. g_flat == 0 gives g = g_sharp.

    Returns:
        `(grads, conflict)`: a list of float32 tensors, and 1.0 if
        <g_sharp, g_flat> < 0 else 0.0.
    """
    g_sharp = pt.as_float32(g_sharp)
    g_flat = pt.as_float32(g_flat)
    flat_norm = pt.global_norm(g_flat)
    u = pt.scale(g_flat, pt.safe_divide(1.0, flat_norm))
    along = pt.global_dot(g_sharp, u)
    # g_perp + max(along, 0) u = g_sharp - min(along, 0) u
    removed = ops.minimum(along, 0.0)
    grads = [f + s - removed * ui for f, s, ui in zip(g_flat, g_sharp, u)]
    conflict = ops.cast(along < 0, "float32")
    return grads, conflict


def cosine(a, b):
    """Cosine of two gradient lists; 0 when either is zero."""
    return pt.safe_divide(pt.global_dot(a, b), pt.global_norm(a) * pt.global_norm(b))
