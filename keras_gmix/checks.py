"""Checks of arguments and of training data, with errors that say the fix.

`check_number` and `check_bool` check one argument (API or config file)
and name it in a Keras-style sentence. Training data is checked before
`fit` starts: arrays whole (cheap next to training); a tf.data.Dataset for
emptiness only: its batches are guarded step by step, inside the compiled
step, with the same rules (`labels_to_one_hot`, `checked_sample_weight`; a
non-finite loss or gradient skips the step, see GMixModel), so the data is
never read twice.
"""

import inspect
import math
import numbers

import numpy as np
import tensorflow as tf


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


def _is_array(value):
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
        if not _is_array(array):
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


def check_labels(y, num_classes):
    """Array labels of one output, before fit, by the rule of `label_kind`."""
    if y is None or not _is_array(y):
        return
    y = np.asarray(y)
    if not (np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.bool_)):
        raise TypeError(
            f"Labels must be numbers (class ids or one-hot rows); received dtype {y.dtype}. "
            "Map class names to integer ids first."
        )
    if y.shape[0] == 0:
        raise ValueError("The training labels are empty (0 examples).")
    kind = label_kind(y.shape, num_classes)
    if kind == "binary":
        values = y.astype(np.float64)
        if (
            y.ndim > 2
            or not np.all(np.isfinite(values))
            or np.any(values < 0)
            or np.any(values > 1)
        ):
            raise ValueError(_binary_labels_text(y.shape))
    elif kind == "ids":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(
                "Class-id labels must be whole numbers; some are fractional, NaN or inf."
            )
        low, high = y.min(), y.max()
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"Class ids must lie in [0, {num_classes - 1}] (the model has {num_classes} "
                f"outputs); received ids from {low:g} to {high:g}. Relabel the data or "
                "build the model with more classes."
            )
    else:
        if y.ndim != 2:
            raise ValueError(_label_shape_text(y.shape, num_classes))
        if y.shape[1] != num_classes:
            raise ValueError(
                f"One-hot labels have {y.shape[-1]} columns (shape {y.shape}) but the model "
                f"outputs {num_classes} classes."
            )
        if not np.all(np.isfinite(y)):
            raise ValueError("The labels hold NaN or inf values.")


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


def check_output_shape(shape):
    """The model must output (batch, classes) scores."""
    if len(shape) != 2 or shape[-1] is None:
        raise ValueError(
            "GMixModel trains classifiers: the wrapped model must output class "
            f"scores (probabilities or logits) of shape (batch, classes); it outputs {tuple(shape)}. "
            "Flatten or pool the output and end with a Dense(num_classes) layer."
        )


def label_kind(shape, num_classes):
    """The label rule, for array labels before fit and for each batch in the step.

    - `"binary"`: the output has one unit (a sigmoid or a logit); labels of
      shape (n,) or (n, 1) are the probability of the positive class (0/1,
      or soft), and a mixed label is the mixed probability.
    - `"ids"`: labels of shape (n,) or (n, 1) for an output of more units
      are class ids.
    - `"one_hot"`: anything else is one-hot (or soft) rows, of any dtype
      (integer one-hot rows for CategoricalCrossentropy too).
    """
    rank = len(shape)
    if num_classes == 1:
        return "binary"
    if rank == 1 or (rank == 2 and shape[-1] == 1):
        return "ids"
    return "one_hot"


def _label_shape_text(shape, num_classes):
    return (
        f"Labels must be class ids of shape (n,) or (n, 1), or one-hot rows of shape "
        f"(n, {num_classes}) (the model's output width). Received labels of shape {tuple(shape)}."
    )


def _binary_labels_text(shape):
    return (
        "The model has one output unit (binary classification): its labels must have "
        "shape (batch,) or (batch, 1) and hold the probability of the positive class, "
        f"in [0, 1] (0 or 1 for hard labels). Received labels of shape {tuple(shape)}. "
        "For several classes, end the model with Dense(num_classes)."
    )


def labels_to_one_hot(y, num_classes):
    """One batch's labels as `(y_soft float32 [n, C], kind)`, checked in the step.

    `kind` is `label_kind`'s. Class ids must be whole numbers in
    [0, num_classes): tf.one_hot would map an out-of-range id to a zero row
    and a cast would truncate 3.7 to 3, and training would go on silently
    with wrong labels. Binary labels must lie in [0, 1] for the same reason.
    """
    y = tf.convert_to_tensor(y)
    if not (y.dtype.is_integer or y.dtype.is_floating or y.dtype == tf.bool):
        raise TypeError(
            f"Labels must be numbers (class ids or one-hot rows); received dtype {y.dtype.name}. "
            "Map class names to integer ids first (e.g. with tf.keras.layers.StringLookup "
            "in the pipeline)."
        )
    kind = label_kind(y.shape, num_classes)
    if kind == "binary":
        if y.shape.rank not in (1, 2):
            raise ValueError(_binary_labels_text(y.shape))
        values = tf.reshape(tf.cast(y, tf.float32), [-1, 1])
        checks = [
            tf.debugging.assert_non_negative(values, message="binary labels must be >= 0"),
            tf.debugging.assert_less_equal(values, 1.0, message="binary labels must be <= 1"),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(values), kind
    if kind == "ids":
        flat = tf.reshape(y, [-1])
        checks = []
        if not y.dtype.is_integer:
            values = tf.cast(flat, tf.float32)
            checks.append(
                tf.debugging.assert_equal(
                    values,
                    tf.round(values),
                    message="class-id labels must be whole numbers; a batch holds fractional, NaN or inf ids",
                )
            )
        ids = tf.cast(flat, tf.int32)
        checks.append(
            tf.debugging.assert_less(
                ids,
                num_classes,
                message=f"class ids must be < {num_classes}, the model's output width",
            )
        )
        checks.append(tf.debugging.assert_non_negative(ids, message="class ids must be >= 0"))
        with tf.control_dependencies(checks):
            return tf.one_hot(ids, num_classes, dtype=tf.float32), kind
    if y.shape.rank != 2:
        raise ValueError(_label_shape_text(y.shape, num_classes))
    if y.shape[-1] != num_classes:
        raise ValueError(
            f"Labels have {y.shape[-1]} classes (shape {y.shape}) but the model "
            f"outputs {num_classes}. Give one-hot labels of shape (batch, "
            f"{num_classes}) or integer class ids of shape (batch,)."
        )
    return tf.cast(y, tf.float32), kind


def metric_labels(y, y_soft, kind, mixed):
    """The labels the compiled metrics see, in the form the user gave.

    Class ids stay class ids and binary labels stay 0/1 (the dominant class
    of a mixed label, as categorical accuracy's argmax reads soft rows);
    one-hot rows, and unmixed binary labels, are passed as they are.
    """
    if kind == "ids":
        return tf.reshape(tf.cast(tf.argmax(y_soft, axis=-1), y.dtype), tf.shape(y))
    if kind == "binary":
        if not mixed:
            return y
        return tf.reshape(tf.cast(tf.round(y_soft), y.dtype), tf.shape(y))
    return y_soft


def labels_are_soft(y_soft):
    """Scalar bool: some label value lies strictly between 0 and 1 (soft or
    already mixed labels, e.g. from Keras' MixUp or CutMix layers)."""
    return tf.reduce_any(tf.logical_and(y_soft > 0.0, y_soft < 1.0))


def checked_sample_weight(sample_weight):
    """One batch's sample weights as float32 [n], checked finite and >= 0 in the step.

    A NaN weight would make the loss NaN and skip the step, every epoch,
    without a word; fail instead and say which.
    """
    weights = tf.cast(tf.reshape(sample_weight, [-1]), tf.float32)
    finite = tf.debugging.assert_all_finite(
        weights, "Sample weights must be finite; a batch holds NaN or inf weights"
    )
    non_negative = tf.debugging.assert_non_negative(weights, message="Sample weights must be >= 0")
    with tf.control_dependencies([finite, non_negative]):
        return tf.identity(weights)


def check_sample_weight(sample_weight):
    """Array sample weights, before fit: finite and >= 0."""
    if sample_weight is None or not _is_array(sample_weight):
        return
    weights = np.asarray(sample_weight, dtype=np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(
            "Sample weights must be finite numbers >= 0; received NaN, inf or negative values. "
            "A NaN weight makes its batch's loss NaN, and that step would be skipped every epoch."
        )
