"""Checks of arguments and of training data, with errors that say the fix.

`check_number` and `check_bool` check one argument (API or config file)
and name it in a Keras-style sentence. Training data is checked before
`fit` starts: arrays whole (cheap next to training); a tf.data.Dataset for
emptiness only: its batches are guarded step by step, inside the compiled
step, with the same rules (`labels.labels_to_one_hot`, `checked_sample_weight`; a
non-finite loss or gradient skips the step, see GMixModel), so the data is
never read twice.
"""

import inspect
import math
import numbers

import numpy as np
import tensorflow as tf
from keras import ops

from keras_gmix import backend


def _bound(value):
    return str(value) if isinstance(value, int) else f"{value:g}"


def _range_text(low, high, low_inclusive, high_inclusive):
    if low is not None and high is not None:
        left, right = "[" if low_inclusive else "(", "]" if high_inclusive else ")"
        return f"in {left}{_bound(low)}, {_bound(high)}{right}"
    if low is not None:
        return f"{'>=' if low_inclusive else '>'} {_bound(low)}"
    if high is not None:
        return f"{'<=' if high_inclusive else '<'} {_bound(high)}"
    return ""


def _in_range(value, low, high, low_inclusive, high_inclusive):
    if low is not None and not (value >= low if low_inclusive else value > low):
        return False
    return high is None or (value <= high if high_inclusive else value < high)


def check_number(
    name,
    value,
    low=None,
    high=None,
    low_inclusive=True,
    high_inclusive=True,
    integer=False,
    meaning=None,
):
    """Checks one numeric argument; returns it as a Python `int` or `float`.

    Python and NumPy numbers (and 0-d arrays) are accepted; `bool` is
    refused where a number is meant (`True` as a radius is a mistake, not
    1.0), and so are NaN and inf: they would train silently on garbage.

    Args:
        name: the argument's name, as the user wrote it.
        value: the value to check.
        low: the smallest allowed value, or `None` (no bound). Defaults to `None`.
        high: the largest allowed value, or `None` (no bound). Defaults to `None`.
        low_inclusive: whether `low` itself is allowed. Defaults to `True`.
        high_inclusive: whether `high` itself is allowed. Defaults to `True`.
        integer: whether only whole-number types (int, np.integer) are
            allowed. Defaults to `False`.
        meaning: a few words on what the argument is, added to the error.
            Defaults to `None`.

    Returns:
        `value` as a Python `int` (`integer=True`) or `float`, so that
        configs stay JSON-serializable.

    Raises:
        ValueError: naming the argument, the allowed values and what was received.

    Example:

    >>> check_number("rho", np.float32(0.05), low=0)
    0.05000000074505806
    """
    received = value
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, (bool, np.bool_))
    if ok:
        value = int(value) if integer else float(value)
        ok = math.isfinite(value) and _in_range(value, low, high, low_inclusive, high_inclusive)
    if not ok:
        what = "an integer" if integer else "a finite number"
        bounds = _range_text(low, high, low_inclusive, high_inclusive)
        about = f" ({meaning})" if meaning else ""
        raise ValueError(
            f"Argument `{name}` must be {what}{' ' + bounds if bounds else ''}{about}. "
            f"Received: {name}={received!r}"
        )
    return value


def check_optional_number(name, value, **kwargs):
    """`check_number` that also lets `None` (meaning "not set") through."""
    return None if value is None else check_number(name, value, **kwargs)


def check_bool(name, value):
    """Checks a flag; returns it as a Python `bool`.

    Only real booleans pass: a config file's `adaptive: "no"` is a
    non-empty string, and Python would read it as True.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"Argument `{name}` must be True or False. Received: {name}={value!r}")
    return bool(value)


def is_array(value):
    """An array-like batch of values (NumPy or tensor), not a tf.data.Dataset."""
    return isinstance(value, np.ndarray) or (
        hasattr(value, "shape")
        and hasattr(value, "dtype")
        and not isinstance(value, tf.data.Dataset)
    )


def check_inputs(x):
    """x must be non-empty and finite."""
    if isinstance(x, tf.data.Dataset):
        if int(x.cardinality()) == 0:
            raise ValueError("The training data set is empty: it yields no batch.")
        return
    for array in tf.nest.flatten(x):
        if not is_array(array):
            continue
        array = np.asarray(array)
        if array.shape[0] == 0:
            raise ValueError("The training inputs are empty (0 examples).")
        if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
            bad = int(np.sum(~np.isfinite(array).reshape(len(array), -1).all(axis=1)))
            raise ValueError(
                f"The training inputs hold NaN or inf values ({bad} examples). "
                "Clean or drop those examples (e.g. np.nan_to_num) before fit."
            )


def call_takes_training(layer):
    """Whether `layer.call` accepts a `training` argument.

    Not every subclassed model's `call` does; `**kwargs` counts as taking it,
    and so does a `call` whose signature cannot be read.
    """
    try:
        parameters = inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return True
    return "training" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


PER_OUTPUT_WEIGHTS = (
    "GMixModel weighs each example once, over all outputs (the per-example loss that drives "
    "the sharpness is the sum over outputs): give one sample weight per example (one array, "
    "which Keras hands every output), not different weights per output"
)


def checked_sample_weight(sample_weight):
    """One batch's sample weights as float32 [n], checked finite and >= 0 in the step.

    A NaN weight would make the loss NaN and skip the step, every epoch,
    without a word; fail instead and say which. For a model of several
    outputs Keras hands one weight array per output (the user's one array,
    repeated): they must agree (`PER_OUTPUT_WEIGHTS`).
    """
    leaves = [ops.cast(ops.reshape(w, [-1]), "float32") for w in _weight_leaves(sample_weight)]
    if not leaves:
        return None
    weights = leaves[0]
    agree = [
        ops.all(ops.logical_or(other == weights, ops.isnan(other) & ops.isnan(weights)))
        for other in leaves[1:]
    ]
    return backend.checked(
        weights,
        [(condition, PER_OUTPUT_WEIGHTS) for condition in agree]
        + [
            (
                ops.all(ops.isfinite(weights)),
                "Sample weights must be finite; a batch holds NaN or inf weights",
            ),
            (ops.all(weights >= 0), "Sample weights must be >= 0"),
        ],
    )


def _weight_leaves(sample_weight):
    """The weight arrays of a (possibly per-output) `sample_weight` structure."""
    if isinstance(sample_weight, dict):
        leaves = list(sample_weight.values())
    elif isinstance(sample_weight, (list, tuple)):
        leaves = list(sample_weight)
    else:
        leaves = [sample_weight]
    return [leaf for leaf in leaves if leaf is not None]


def check_sample_weight(sample_weight):
    """Array sample weights, before fit: finite and >= 0, and one per example."""
    if sample_weight is None:
        return
    leaves = _weight_leaves(sample_weight)
    if not leaves or not all(is_array(leaf) for leaf in leaves):
        return
    first = np.asarray(leaves[0], dtype=np.float64).reshape(-1)
    for other in leaves[1:]:
        other = np.asarray(other, dtype=np.float64).reshape(-1)
        if other.shape != first.shape or not np.array_equal(other, first, equal_nan=True):
            raise ValueError(PER_OUTPUT_WEIGHTS + ".")
    weights = first
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(
            "Sample weights must be finite numbers >= 0; received NaN, inf or negative values. "
            "A NaN weight makes its batch's loss NaN, and that step would be skipped every epoch."
        )
