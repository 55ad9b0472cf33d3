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
(every k-th step, from a first step on) or of (seed, step) (with
probability p), so every replica and a resumed run make the same choice.

Everything here is a pure function of tensors (no variable is read or
written), so that it moves to another backend unchanged in meaning.

References:
    - LookSAM: Liu et al., "Towards Efficient and Scalable Sharpness-Aware
      Minimization", CVPR 2022, https://arxiv.org/abs/2203.02714
    - RST: Zhao et al., "Randomized Sharpness-Aware Training for Boosting
      Computational Efficiency in Deep Learning", 2022
    - Late phase: Zhou et al., "Sharpness-Aware Minimization Efficiently
      Selects Flatter Minima Late in Training", ICLR 2025,
      https://arxiv.org/abs/2410.10373
"""

import math

from keras import ops

from keras_gmix import backend, checks, mixing
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


PERTURB_FROM_MEANING = "the first step that may be a full step; 0: from the start"
PERTURB_FROM_SETTING = "a step (an integer >= 0) or a fraction of the run's total steps in [0, 1)"


def check_perturb_from(perturb_from):
    """Checks GMixModel's `perturb_from`, a step (int >= 0); returns it as an int."""
    return checks.check_number(
        "perturb_from", perturb_from, low=0, integer=True, meaning=PERTURB_FROM_MEANING
    )


def check_perturb_from_setting(perturb_from):
    """Checks a run's `perturb_from` (config file, CLI): a step, or a fraction
    of the run's steps. Returns an int step, or a float fraction in (0, 1).

    A whole number >= 1 is a step (`1.0` from a float flag is step 1);
    a number in [0, 1) is a fraction (`0` is step 0 either way).
    """
    value = checks.check_number("perturb_from", perturb_from, low=0, meaning=PERTURB_FROM_SETTING)
    if value >= 1 and value != int(value):
        raise ValueError(
            f"Argument `perturb_from` must be {PERTURB_FROM_SETTING}, e.g. 0.875 "
            f"(the last 12.5% of the steps) or 5000. Received: perturb_from={perturb_from!r}"
        )
    return value if 0 < value < 1 else int(value)


def resolve_perturb_from(perturb_from, total_steps):
    """The step a run's `perturb_from` names: a fraction f of `total_steps`
    becomes floor(f * total_steps) (so the perturbed phase is at least the
    last 1 - f of the steps); a step stays what it is."""
    perturb_from = check_perturb_from_setting(perturb_from)
    if isinstance(perturb_from, float):
        return int(math.floor(perturb_from * total_steps))
    return perturb_from


def has_cheap_steps(perturb_every, perturb_probability, perturb_from=0):
    """Whether a schedule skips the perturbation on some steps."""
    return perturb_every > 1 or perturb_probability < 1 or perturb_from > 0


def is_full_step(step, seed, perturb_every=1, perturb_probability=1.0, perturb_from=0):
    """Whether step `step` (0-based, global) is a full step: a scalar bool tensor.

    Args:
        step: the optimizer's iteration counter before this step's update.
        seed: an int, the model's seed (only the random schedule uses it).
        perturb_every: k; step t is full when t mod k == 0.
        perturb_probability: p; step t is full with probability p, drawn
            from (seed, t) alone.
        perturb_from: s; every step t < s is cheap, whatever k or p say
            (the late phase).
    """
    # int32: JAX has no int64 by default, and 2**31 steps are not reached.
    step = ops.cast(step, "int32")
    if perturb_probability < 1:
        stream = backend.fold_in(mixing.step_seed(seed, step), _FULL_STEP_STREAM)
        # mixing.uniform: the same draw in graph mode and under XLA.
        full = mixing.uniform([], stream) < perturb_probability
    else:
        full = ops.equal(step % perturb_every, 0)
    if perturb_from > 0:  # no op at all for s = 0: the schedules stay bit for bit
        full = ops.logical_and(full, step >= perturb_from)
    return full


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
    factor = ops.cast(reuse_scale, "float32") * pt.safe_divide(
        pt.global_norm(plain), pt.global_norm(stored)
    )
    return [g + ops.cast(factor * ops.cast(v, "float32"), g.dtype) for g, v in zip(plain, stored)]
