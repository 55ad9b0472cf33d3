"""Checks of training data, run before `fit` starts, with errors that say the fix.

Arrays are checked whole (cheap next to training); a tf.data.Dataset is
checked for emptiness only: its batches are guarded step by step (class ids
in range; a non-finite loss or gradient skips the step, see GMixModel).
"""

import numpy as np
import tensorflow as tf


def _is_array(value):
    return isinstance(value, np.ndarray) or (
        hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, tf.data.Dataset)
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
    """Labels: numbers, class ids in [0, num_classes), or one-hot rows of the right width."""
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
    is_ids = np.issubdtype(y.dtype, np.integer) or y.ndim == 1 or (
        y.ndim == 2 and y.shape[1] == 1 and num_classes > 1
    )
    if is_ids:
        if y.ndim > 2 or (y.ndim == 2 and y.shape[1] != 1):
            raise ValueError(
                f"Class-id labels must have shape (n,) or (n, 1); received {y.shape}."
            )
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError("Class-id labels must be whole numbers; some are fractional, NaN or inf.")
        low, high = y.min(), y.max()
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"Class ids must lie in [0, {num_classes - 1}] (the model has {num_classes} "
                f"outputs); received ids from {low:g} to {high:g}. Relabel the data or "
                "build the model with more classes."
            )
    else:
        if y.ndim != 2 or y.shape[1] != num_classes:
            raise ValueError(
                f"One-hot labels have {y.shape[-1]} columns (shape {y.shape}) but the model "
                f"outputs {num_classes} classes."
            )
        if not np.all(np.isfinite(y)):
            raise ValueError("The labels hold NaN or inf values.")


def check_output_shape(shape):
    """The model must output (batch, classes) scores."""
    if len(shape) != 2 or shape[-1] is None:
        raise ValueError(
            "GMixModel trains classifiers: the wrapped model must output class "
            f"scores (probabilities or logits) of shape (batch, classes); it outputs {tuple(shape)}. "
            "Flatten or pool the output and end with a Dense(num_classes) layer."
        )
