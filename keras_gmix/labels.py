"""The label rule: what GMixModel makes of the labels a batch brings.

One module for everything about labels: their kind (class ids, one-hot or
soft rows, binary probabilities), the one-hot rows the loss and the mixing
see, one label array per output of a model of several, soft-label
detection, and the labels the compiled metrics see. The step calls
`prepare_labels` and `metric_labels_like`; `fit` calls `check_array_labels`
on arrays before training; Keras' own loss (`GMixModel.compute_loss`: the
evaluation, the JAX trainer's build) sees `labels_for_compiled_loss`.
"""

from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_gmix import backend, checks
from keras_gmix import losses as losses_lib


def symbolic_spec(value):
    """A KerasTensor with a value's shape (batch axis unknown) and dtype."""
    return keras.KerasTensor(
        (None,) + tuple(value.shape[1:]), dtype=keras.backend.standardize_dtype(value.dtype)
    )


def output_widths_and_names(inner, x):
    """`(widths, names)` of the network's outputs: each output's width
    (classes; 1 for a binary one) from the static output shapes, and the
    output names (`output_<i>` when the network has none). `x` is a batch or
    its structure of specs; a subclassed network is traced symbolically."""
    outputs = getattr(inner, "outputs", None) if inner.built else None
    names = getattr(inner, "output_names", None) if outputs else None
    if outputs and isinstance(_output_structure(inner), dict):
        # A dict of outputs is keyed (labels, losses, Keras' own compiled
        # loss) by its keys, in flattening order; `output_names` gives the
        # layers' names, which need not be the keys.
        names = sorted(_output_structure(inner))
    if not outputs:
        specs = keras.tree.map_structure(symbolic_spec, x)
        # A call builds a model that is not built yet (Sequential's
        # compute_output_spec fails then, passing `training` to layers that
        # take none).
        outputs = inner.compute_output_spec(specs) if inner.built else inner(specs)
        names = sorted(outputs) if isinstance(outputs, dict) else None
        outputs = losses_lib.outputs_as_list(outputs, names)
    for output in outputs:
        check_output_shape(output.shape)
    names = list(names) if names else [f"output_{i}" for i in range(len(outputs))]
    return tuple(output.shape[-1] for output in outputs), names


def _output_structure(inner):
    """The network's symbolic outputs in their structure, or None (a
    Sequential network, which has no `output` of its own)."""
    try:
        return inner.output
    except (AttributeError, ValueError):
        return None


def labels_per_output(y, widths, names):
    """The labels as a list in output order (one array per output)."""
    if len(widths) == 1:
        if isinstance(y, (list, tuple)) and len(y) == 1:
            return [y[0]]
        if isinstance(y, dict) and len(y) == 1:
            return list(y.values())
        return [y]
    if isinstance(y, dict) or (isinstance(y, (list, tuple)) and len(y) == len(widths)):
        return losses_lib.per_output(y, names, "y")
    raise ValueError(
        f"The model has {len(widths)} outputs {names}: give one label array per output, "
        "as a list in that order or a dict keyed by output name. "
        f"Received labels of type {type(y).__name__}."
    )


def pack_like_labels(y, values, names):
    """Per-output values in the structure the user's labels have."""
    if len(values) == 1 and not isinstance(y, (list, tuple, dict)):
        return values[0]
    if isinstance(y, dict):
        return dict(zip(names, values))
    return list(values)


def check_labels(y, num_classes, loss=None):
    """Array labels of one output, before fit, by the rule of `label_kind`
    (`loss`: the output's compiled loss)."""
    if y is None or not checks.is_array(y):
        return
    y = np.asarray(y)
    if not (np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.bool_)):
        raise TypeError(
            f"Labels must be numbers (class ids or one-hot rows); received dtype {y.dtype}. "
            "Map class names to integer ids first."
        )
    if y.shape[0] == 0:
        raise ValueError("The training labels are empty (0 examples).")
    kind = label_kind(y.shape, num_classes, loss)
    if kind == "values":
        if y.ndim > 2 or (y.ndim == 2 and y.shape[1] != 1):
            raise ValueError(_values_labels_text(y.shape))
        if not np.all(np.isfinite(y.astype(np.float64))):
            raise ValueError("The labels hold NaN or inf values.")
    elif kind == "binary":
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


def check_output_shape(shape):
    """The model must output (batch, classes) scores."""
    if len(shape) != 2 or shape[-1] is None:
        raise ValueError(
            "GMixModel trains classifiers: the wrapped model must output class "
            "scores (probabilities or logits) of shape (batch, classes); "
            f"it outputs {tuple(shape)}. "
            "Flatten or pool the output and end with a Dense(num_classes) layer."
        )


def label_kind(shape, num_classes, loss=None):
    """The label rule, for array labels before fit and for each batch in the step.

    - `"values"`: the output has one unit and its loss (`loss`, the output's
      compiled loss) is a regression loss (`is_regression_loss`): labels of
      shape (n,) or (n, 1) are real targets, and a mixed label is the mixed
      target.
    - `"binary"`: the output has one unit (a sigmoid or a logit) and any
      other loss; labels of shape (n,) or (n, 1) are the probability of the
      positive class (0/1, or soft), and a mixed label is the mixed
      probability.
    - `"ids"`: labels of shape (n,) or (n, 1) for an output of more units
      are class ids.
    - `"one_hot"`: anything else is one-hot (or soft) rows, of any dtype
      (integer one-hot rows for CategoricalCrossentropy too).
    """
    rank = len(shape)
    if num_classes == 1:
        return "values" if is_regression_loss(loss) else "binary"
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
        "For several classes, end the model with Dense(num_classes); for a regression "
        "target, compile the output with a Keras regression loss ('mse', 'mae', 'huber', ...)."
    )


def _values_labels_text(shape):
    return (
        "The model has one output unit with a regression loss: its labels must have "
        f"shape (batch,) or (batch, 1), one target per example. Received labels of shape "
        f"{tuple(shape)}."
    )


def labels_to_one_hot(y, num_classes, loss=None):
    """One batch's labels as `(y_soft float32 [n, C], kind)`, checked in the step.

    `kind` is `label_kind`'s. Class ids must be whole numbers in
    [0, num_classes): a one-hot encoding would map an out-of-range id to a zero row
    and a cast would truncate 3.7 to 3, and training would go on silently
    with wrong labels. Binary labels must lie in [0, 1] for the same reason.
    """
    y = ops.convert_to_tensor(y)
    dtype = keras.backend.standardize_dtype(y.dtype)
    integer = "int" in dtype
    if not (integer or keras.backend.is_float_dtype(dtype) or dtype == "bool"):
        raise TypeError(
            f"Labels must be numbers (class ids or one-hot rows); received dtype {dtype}. "
            "Map class names to integer ids first (e.g. with keras.layers.StringLookup "
            "in the pipeline)."
        )
    shape = tuple(y.shape)
    kind = label_kind(shape, num_classes, loss)
    if kind == "values":
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise ValueError(_values_labels_text(shape))
        values = ops.reshape(ops.cast(y, "float32"), [-1, 1])
        return backend.checked(
            values, [(ops.all(ops.isfinite(values)), "labels must be finite")]
        ), kind
    if kind == "binary":
        if len(shape) not in (1, 2):
            raise ValueError(_binary_labels_text(shape))
        values = ops.reshape(ops.cast(y, "float32"), [-1, 1])
        return backend.checked(
            values,
            [
                (ops.all(values >= 0), "binary labels must be >= 0"),
                (ops.all(values <= 1.0), "binary labels must be <= 1"),
            ],
        ), kind
    if kind == "ids":
        flat = ops.reshape(y, [-1])
        conditions = []
        if not integer:
            values = ops.cast(flat, "float32")
            conditions.append(
                (
                    ops.all(values == ops.round(values)),
                    "class-id labels must be whole numbers; "
                    "a batch holds fractional, NaN or inf ids",
                )
            )
        ids = ops.cast(flat, "int32")
        conditions += [
            (
                ops.all(ids < num_classes),
                f"class ids must be < {num_classes}, the model's output width",
            ),
            (ops.all(ids >= 0), "class ids must be >= 0"),
        ]
        return backend.checked(ops.one_hot(ids, num_classes, dtype="float32"), conditions), kind
    if len(shape) != 2:
        raise ValueError(_label_shape_text(shape, num_classes))
    if shape[-1] != num_classes:
        raise ValueError(
            f"Labels have {shape[-1]} classes (shape {shape}) but the model "
            f"outputs {num_classes}. Give one-hot labels of shape (batch, "
            f"{num_classes}) or integer class ids of shape (batch,)."
        )
    return ops.cast(y, "float32"), kind


def metric_labels(y, y_soft, kind, mixed):
    """The labels the compiled metrics see, in the form the user gave.

    Class ids stay class ids and binary labels stay 0/1 (the dominant class
    of a mixed label, as categorical accuracy's argmax reads soft rows);
    one-hot rows, and unmixed binary labels, are passed as they are. Mixed
    regression targets (`"values"`) are the mixed values, in y's shape.
    """
    if kind == "ids":
        # The dtype of y as a tensor: NumPy's int64 ids are int32 on JAX.
        y = ops.convert_to_tensor(y)
        return ops.reshape(ops.cast(ops.argmax(y_soft, axis=-1), y.dtype), ops.shape(y))
    if kind == "binary":
        if not mixed:
            return y
        return ops.reshape(ops.cast(ops.round(y_soft), y.dtype), ops.shape(y))
    if kind == "values":
        return ops.reshape(y_soft, ops.shape(y)) if mixed else y
    return y_soft


def labels_are_soft(y_soft):
    """Scalar bool: some label value lies strictly between 0 and 1 (soft or
    already mixed labels, e.g. from Keras' MixUp or CutMix layers)."""
    return ops.any(ops.logical_and(y_soft > 0.0, y_soft < 1.0))


def soft_array(labels, width, loss=None):
    """Array labels of one output that are soft (not class ids, not
    regression targets)."""
    labels = np.asarray(labels)
    if label_kind(labels.shape, width, loss) in ("ids", "values") or not np.issubdtype(
        labels.dtype, np.floating
    ):
        return False
    return bool(np.any((labels > 0) & (labels < 1)))


# Losses of class probabilities: for them, soft labels can mean that the
# input pipeline already mixed. A regression loss (mse on a Dense(3)) has
# real-valued labels, which are not "soft".
_CLASS_PROBABILITY_LOSSES = (
    keras.losses.CategoricalCrossentropy,
    keras.losses.SparseCategoricalCrossentropy,
    keras.losses.BinaryCrossentropy,
    keras.losses.CategoricalFocalCrossentropy,
    keras.losses.BinaryFocalCrossentropy,
    keras.losses.KLDivergence,
)
_CLASS_PROBABILITY_FUNCTIONS = (
    keras.losses.categorical_crossentropy,
    keras.losses.sparse_categorical_crossentropy,
    keras.losses.binary_crossentropy,
    keras.losses.categorical_focal_crossentropy,
    keras.losses.binary_focal_crossentropy,
    keras.losses.kl_divergence,
)


# Keras' regression losses: on an output of one unit their labels are real
# targets (`label_kind` "values"), not the probability of a positive class.
_REGRESSION_LOSSES = (
    keras.losses.MeanSquaredError,
    keras.losses.MeanAbsoluteError,
    keras.losses.MeanAbsolutePercentageError,
    keras.losses.MeanSquaredLogarithmicError,
    keras.losses.Huber,
    keras.losses.LogCosh,
    keras.losses.Poisson,
    keras.losses.CosineSimilarity,
    keras.losses.Hinge,
    keras.losses.SquaredHinge,
)
_REGRESSION_FUNCTIONS = (
    keras.losses.mean_squared_error,
    keras.losses.mean_absolute_error,
    keras.losses.mean_absolute_percentage_error,
    keras.losses.mean_squared_logarithmic_error,
    keras.losses.huber,
    keras.losses.log_cosh,
    keras.losses.poisson,
    keras.losses.cosine_similarity,
    keras.losses.hinge,
    keras.losses.squared_hinge,
)


def is_regression_loss(loss):
    """Whether `loss` (one output's compiled loss: a name, a Loss or a
    function) is one of Keras' regression losses. A custom function is not
    (its one-unit output is read as binary classification)."""
    if isinstance(loss, dict) and len(loss) == 1:  # a single output's loss, keyed
        loss = next(iter(loss.values()))
    if isinstance(loss, (list, tuple)) and len(loss) == 1:
        loss = loss[0]
    if loss is None or isinstance(loss, (list, tuple, dict)):
        return False
    loss = losses_lib.resolve_loss(loss)
    return isinstance(loss, _REGRESSION_LOSSES) or any(loss is f for f in _REGRESSION_FUNCTIONS)


def soft_labels_may_be_mixed(loss, names):
    """Whether soft labels of this compiled loss can mean an earlier mix:
    some output's loss compares class probabilities (a cross-entropy)."""
    for one in losses_lib.per_output(loss, names, "loss") if len(names) > 1 else [loss]:
        if isinstance(one, (list, tuple, dict)):
            one = list(one.values())[0] if isinstance(one, dict) else one[0]
        if one is None:
            continue
        one = losses_lib.resolve_loss(one)
        if isinstance(one, _CLASS_PROBABILITY_LOSSES) or any(
            one is f for f in _CLASS_PROBABILITY_FUNCTIONS
        ):
            return True
    return False


def check_array_labels(y, widths, names, loss=None):
    """Array labels, whole, before fit; returns them as one array per output."""
    per_output = labels_per_output(y, widths, names)
    for labels, width, output_loss in zip(per_output, widths, output_losses(loss, widths, names)):
        check_labels(labels, width, output_loss)
    return per_output


class PreparedLabels(NamedTuple):
    """One batch's labels, as the step uses them."""

    given: list  # the user's labels, one per output
    one_hot: object  # float32 one-hot/soft rows: a tensor, or a list per output
    kinds: list  # `label_kind` of each output


def prepare_labels(y, widths, loss, names):
    """One batch's labels as one-hot rows (in the step), with their kinds.

    A sparse cross-entropy (which expects class ids) given one-hot labels is
    refused with the fix."""
    given = labels_per_output(y, widths, names)
    converted = [
        labels_to_one_hot(t, width, output_loss)
        for t, width, output_loss in zip(given, widths, output_losses(loss, widths, names))
    ]
    kinds = [kind for _, kind in converted]
    _check_sparse_losses_get_ids(given, widths, loss, names)
    one_hot = [soft for soft, _ in converted]
    return PreparedLabels(given, one_hot if len(widths) > 1 else one_hot[0], kinds)


def output_losses(loss, widths, names):
    """The compiled loss as a list with one entry per output."""
    return losses_lib.per_output(loss, names, "loss") if len(widths) > 1 else [loss]


def _check_sparse_losses_get_ids(given, widths, loss, names):
    """Refuses, with the fix, labels other than class ids for an output
    whose compiled loss is a sparse cross-entropy."""
    several = len(widths) > 1
    for output_loss, labels, width, name in zip(
        output_losses(loss, widths, names), given, widths, names or [None]
    ):
        if losses_lib.is_sparse_loss(output_loss) and label_kind(labels.shape, width) != "ids":
            where = f" of output {name!r}" if several else ""
            raise ValueError(
                f"The compiled loss{where} is sparse (it expects integer class ids) but "
                f"the labels have shape {tuple(labels.shape)}: pass class ids of shape "
                "(batch,), or compile with 'categorical_crossentropy'."
            )


def labels_for_compiled_loss(y, widths, loss, names):
    """The labels in the form the compiled loss takes, for Keras' own loss
    (evaluation, the JAX trainer's build), with the step's refusals: class
    ids become one-hot rows (`labels_to_one_hot`, checked) for an output
    whose loss is not a sparse one, as the step trains them; other labels
    stay as given."""
    given = labels_per_output(y, widths, names)
    _check_sparse_losses_get_ids(given, widths, loss, names)
    converted = [
        labels_to_one_hot(labels, width)[0]
        if output_loss is not None
        and not losses_lib.is_sparse_loss(output_loss)
        and label_kind(tuple(labels.shape), width) == "ids"
        else labels
        for labels, width, output_loss in zip(given, widths, output_losses(loss, widths, names))
    ]
    return pack_like_labels(y, converted, names)


def any_soft(prepared):
    """Scalar bool: some output's labels (not class ids) arrive soft."""
    soft = [
        labels_are_soft(v)
        for v, kind in zip(keras.tree.flatten(prepared.one_hot), prepared.kinds)
        if kind not in ("ids", "values")
    ]
    return ops.any(ops.stack(soft)) if soft else ops.convert_to_tensor(False)


def metric_labels_like(y, prepared, one_hot, mixed, names):
    """The labels the compiled metrics see for the (possibly mixed) rows
    `one_hot`, in the structure and form the user gave (`metric_labels`)."""
    return pack_like_labels(
        y,
        [
            metric_labels(t, soft, kind, mixed)
            for t, soft, kind in zip(prepared.given, keras.tree.flatten(one_hot), prepared.kinds)
        ],
        names,
    )
