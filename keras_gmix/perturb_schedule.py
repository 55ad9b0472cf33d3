"""Efficient schedules: which steps pay for the perturbation.

A perturbed method (sam, gmix, bgmix, dgmix) makes a *full* step (the
method's own step, as `GMixModel(method=...)` describes it) only on some
steps; the other, *cheap* steps compute only the
plain gradient g = grad L_B(w) on the same batch (1 forward + 1 backward
pass). Optionally a cheap step reuses the part of the last full step's update
that is orthogonal to its plain gradient (LookSAM's idea):

    on a full step:  v = u - (<u, g> / ||g||^2) g      (v = u when g == 0)
    on a cheap step: g + reuse_scale * (||g|| / ||v||) v  (g when v == 0)

Which steps are full is a pure function of the optimizer's step counter
(every k-th step) or of (seed, step) (with probability p), so every replica
and a resumed run make the same choice.

Everything here is a pure function of tensors (no variable is read or
written), so that it moves to another backend unchanged in meaning.

References:
    - LookSAM: Liu et al., "Towards Efficient and Scalable Sharpness-Aware
      Minimization", CVPR 2022, https://arxiv.org/abs/2203.02714
    - RST: Zhao et al., "Randomized Sharpness-Aware Training for Boosting
      Computational Efficiency in Deep Learning", 2022
"""

import tensorflow as tf

from keras_gmix import checks
from keras_gmix import mixing
from keras_gmix import perturbation as pt

# Folded into the seed of the full-step draw, so that it is independent of
# the mixing draws made from the same (seed, step).
_FULL_STEP_STREAM = 0x5EED


def check_schedule(perturb_every, reuse_scale, perturb_probability):
    """Checks the three schedule arguments; returns them as Python numbers.

    Raises a ValueError naming the first bad one.
    """
    perturb_every = checks.check_number(
        "perturb_every",
        perturb_every,
        low=1,
        integer=True,
        meaning="1: every step is a full, perturbed step",
    )
    reuse_scale = checks.check_number(
        "reuse_scale", reuse_scale, low=0, meaning="0: cheap steps reuse nothing"
    )
    perturb_probability = checks.check_number(
        "perturb_probability",
        perturb_probability,
        low=0,
        high=1,
        low_inclusive=False,
        meaning="1: every step is a full, perturbed step",
    )
    if perturb_every > 1 and perturb_probability < 1:
        raise ValueError(
            "Arguments `perturb_every` and `perturb_probability` cannot both be set: "
            "choose full steps every k-th step or at random. Received: "
            f"perturb_every={perturb_every!r}, perturb_probability={perturb_probability!r}"
        )
    return perturb_every, reuse_scale, perturb_probability


def has_cheap_steps(perturb_every, perturb_probability):
    """Whether a schedule skips the perturbation on some steps."""
    return perturb_every > 1 or perturb_probability < 1


def is_full_step(step, seed, perturb_every=1, perturb_probability=1.0):
    """Whether step `step` (0-based, global) is a full step: a scalar bool tensor.

    Args:
        step: the optimizer's iteration counter before this step's update.
        seed: an int, the model's seed (only the random schedule uses it).
        perturb_every: k; step t is full when t mod k == 0.
        perturb_probability: p; step t is full with probability p, drawn
            from (seed, t) alone.
    """
    step = tf.cast(step, tf.int64)
    if perturb_probability < 1:
        pair = tf.stack([tf.constant(seed % (2**31 - 1), tf.int64), step % (2**31 - 1)])
        stream = tf.random.experimental.stateless_fold_in(
            tf.cast(pair, tf.int32), _FULL_STEP_STREAM, alg=mixing.RNG_ALG
        )
        # mixing.uniform: the same draw in graph mode and under XLA.
        return mixing.uniform([], stream) < perturb_probability
    return tf.equal(step % perturb_every, 0)


def orthogonal_part(update, plain):
    """v = u - (<u, g> / ||g||^2) g: the part of the update orthogonal to g.

    v = u when g == 0. Lists of tensors aligned with the trainable variables;
    returns float32 tensors.
    """
    update, plain = pt.as_float32(update), pt.as_float32(plain)
    along = pt.safe_divide(pt.global_dot(update, plain), pt.global_dot(plain, plain))
    return [u - along * g for u, g in zip(update, plain)]


def reuse_update(plain, stored, reuse_scale):
    """A cheap step's update gradient: g + reuse_scale * (||g|| / ||v||) v.

    Just g when v == 0 (nothing stored yet). Returns tensors of g's dtypes.
    """
    factor = tf.cast(reuse_scale, tf.float32) * pt.safe_divide(
        pt.global_norm(plain), pt.global_norm(stored)
    )
    return [g + tf.cast(factor * tf.cast(v, tf.float32), g.dtype) for g, v in zip(plain, stored)]
