"""Per-example losses from whatever loss a user gives `compile`.

G-Mix needs l_i, one loss per (mixed) example, with one-hot soft labels:
the sharpness-sensitivity s_i compares them at w and w + eps. Keras losses
reduce to a scalar, so this module turns a compiled loss into a function
`loss(y_true_one_hot, y_pred) -> [n]`. Sparse cross-entropy becomes the
equivalent categorical cross-entropy, because mixed labels are soft.
"""

import keras
import numpy as np
from keras import ops


def resolve_loss(loss):
    """The loss as a `keras.losses.Loss` object or a function.

    Args:
        loss: a Keras loss name (or serialized config), looked up with
            `keras.losses.get`; a `keras.losses.Loss`; or a function
            `loss(y_true, y_pred)`.

    Returns:
        The `keras.losses.Loss` object or the function.
    """
    if isinstance(loss, (str, dict)):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss) or callable(loss):
        return loss
    raise ValueError(
        "`loss` must be a Keras loss name, a `keras.losses.Loss` or a function "
        "`loss(y_true, y_pred)` (one per output of a model with several). "
        f"Received: loss={loss!r}"
    )


def unreduced_loss(loss):
    """`fn(y_true, y_pred)` giving the unreduced values of `loss` (as `resolve_loss` reads it).

    `Loss.call` is the unreduced loss whatever `reduction` the object was
    built with; `__call__` would reduce it.
    """
    loss = resolve_loss(loss)
    return loss.call if isinstance(loss, keras.losses.Loss) else loss


def _on_one_hot(loss):
    """The resolved loss, sparse cross-entropy converted to its one-hot form."""
    loss = resolve_loss(loss)
    if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        config = loss.get_config()
        if config.get("ignore_class") is not None:
            raise ValueError(
                "GMixModel does not take `ignore_class` (of a sparse cross-entropy "
                "loss): it hands the loss one-hot rows (mixed ones for the mixing "
                "methods), in training and in evaluation alike, and a row has no "
                "class id to ignore. Drop those examples from the data set and "
                "compile without `ignore_class`."
            )
        return keras.losses.CategoricalCrossentropy(
            from_logits=config["from_logits"], axis=config.get("axis", -1), reduction=None
        )
    if loss is keras.losses.sparse_categorical_crossentropy:
        return keras.losses.categorical_crossentropy
    return loss


def _unreduced(loss):
    """`fn(y_true, y_pred) -> [n]` of one output's loss, on one-hot labels."""
    unreduced = unreduced_loss(_on_one_hot(loss))

    def fn(y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        values = ops.cast(unreduced(y_true, y_pred), "float32")
        if len(values.shape) > 1:
            values = ops.mean(values, axis=list(range(1, len(values.shape))))
        return values

    return fn


def per_output(value, output_names, what):
    """`value` (one for all outputs, a list in output order, or a dict keyed by
    output name) as a list with one entry per output."""
    count = len(output_names)
    if isinstance(value, dict):
        missing = [name for name in output_names if name not in value]
        if missing:
            raise ValueError(
                f"`{what}` is a dict, but has no entry for the outputs {missing}; the "
                f"model's outputs are {list(output_names)}. Give one entry per output."
            )
        return [value[name] for name in output_names]
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(
                f"`{what}` is a list of {len(value)}, but the model has {count} outputs "
                f"{list(output_names)}. Give one entry per output, in that order."
            )
        return list(value)
    return [value] * count


def outputs_as_list(values, output_names):
    """A model's predictions (or labels) as a list in output order."""
    if isinstance(values, dict):
        return [values[name] for name in output_names]
    if isinstance(values, (list, tuple)):
        return list(values)
    return [values]


def per_example_loss(loss, output_names=None, loss_weights=None):
    """Returns `fn(y_true, y_pred) -> [n]`, the unreduced loss per example.

    Args:
        loss: what was given to `compile(loss=...)`: a name, a
            `keras.losses.Loss` or a function; with several outputs also a
            list (in output order) or a dict keyed by output name. Sparse
            categorical cross-entropy is replaced by categorical
            cross-entropy with the same `from_logits`, because labels reach
            it one-hot.
        output_names: the model's output names, when it has several
            outputs. Defaults to `None` (one output).
        loss_weights: `compile(loss_weights=...)`: a float, or per output a
            list or dict. Defaults to `None` (all 1).

    Returns:
        A function of (y_true one-hot, y_pred) giving a float32 tensor of
        shape [n]: each example's loss, averaged over any non-batch axes
        (as Keras' "sum_over_batch_size" reduction would). With several
        outputs, y_true and y_pred are lists (or y_pred a dict) in output
        order, and l_i is the weighted sum over outputs, as Keras sums the
        outputs' losses; so is the sharpness-sensitivity s_i.
    """
    if output_names is None or len(output_names) == 1:
        if isinstance(loss, (dict, list, tuple)):
            if len(loss) != 1:
                raise ValueError(
                    "The model has one output, so `compile` takes one loss. "
                    f"Received: loss={loss!r}"
                )
            loss = list(loss.values())[0] if isinstance(loss, dict) else loss[0]
        fn = _unreduced(loss)
        if loss_weights is None:
            return fn
        weight = float(per_output(loss_weights, output_names or ["output"], "loss_weights")[0])
        return lambda y_true, y_pred: weight * fn(y_true, y_pred)

    # An output whose loss is None is not trained (as in Keras).
    fns = [
        None if one is None else _unreduced(one) for one in per_output(loss, output_names, "loss")
    ]
    weights = (
        [1.0] * len(fns)
        if loss_weights is None
        else [float(w) for w in per_output(loss_weights, output_names, "loss_weights")]
    )

    def fn(y_true, y_pred):
        y_true = outputs_as_list(y_true, output_names)
        y_pred = outputs_as_list(y_pred, output_names)
        return sum(w * f(t, p) for w, f, t, p in zip(weights, fns, y_true, y_pred) if f is not None)

    return fn


# Keras' loss reductions (`keras.losses.Loss(reduction=...)`), with their
# aliases ("mean" is "sum_over_batch_size", "none" is None).
REDUCTIONS = ("sum_over_batch_size", "sum", "mean_with_sample_weight", None)
_REDUCTION_ALIASES = {"mean": "sum_over_batch_size", "none": None}


def _reduction(loss):
    """One output's reduction. A loss function has none of its own: Keras
    wraps it with "sum_over_batch_size", and so does GMixModel."""
    loss = resolve_loss(loss)
    if not isinstance(loss, keras.losses.Loss):
        return "sum_over_batch_size"
    reduction = _REDUCTION_ALIASES.get(loss.reduction, loss.reduction)
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"The loss {loss.name!r} has reduction={loss.reduction!r}, which GMixModel "
            f"cannot follow; use one of {REDUCTIONS}."
        )
    return reduction


def reduction_of(loss, output_names=None):
    """The reduction of the compiled loss: how the per-example losses are
    summed into the objective (one of `REDUCTIONS`).

    A model of several outputs sums its per-example losses over the outputs
    before the partition, so all outputs must share one reduction.
    """
    if output_names is None or len(output_names) == 1:
        losses = list(loss.values()) if isinstance(loss, dict) else loss
        losses = losses if isinstance(losses, (list, tuple)) else [losses]
    else:
        losses = per_output(loss, output_names, "loss")
    found = {_reduction(one) for one in losses if one is not None}
    if len(found) > 1:
        raise ValueError(
            f"The outputs' losses have different reductions {sorted(map(str, found))}: "
            "GMixModel sums each example's losses over the outputs before it splits the "
            "batch, so all outputs need one reduction. Build the losses with the same "
            "`reduction=`."
        )
    return found.pop() if found else "sum_over_batch_size"


def objective_scales(reduction, n, sample_weight=None):
    """`(objective_scale, log_scale)`: the objective is
    `objective_scale * sum_i w_i l_i` and the logged loss
    `log_scale * sum_i w_i l_i`, as Keras reduces (`w_i` the sample weights).

    - "sum_over_batch_size": both 1/n;
    - "sum": both 1;
    - "mean_with_sample_weight": 1/sum_i w_i (1/n without sample weights);
      0 when the weights sum to 0, as Keras' divide_no_nan;
    - None: the gradient of the sum (Keras differentiates an unreduced
      loss vector as its sum) and the mean logged (Keras' loss tracker
      averages the vector).
    """
    n = ops.cast(n, "float32")
    if reduction == "sum":
        return 1.0, 1.0
    if reduction is None:
        return 1.0, 1.0 / n
    if reduction == "mean_with_sample_weight" and sample_weight is not None:
        scale = ops.divide_no_nan(1.0, ops.sum(ops.cast(sample_weight, "float32")))
        return scale, scale
    return 1.0 / n, 1.0 / n


def is_mean_over_replicas(reduction):
    """Whether Keras divides this reduction's loss by the number of replicas
    (so that the optimizer's all-reduce SUM gives the global mean); "sum"
    and None are summed over replicas as they are."""
    return reduction in ("sum_over_batch_size", "mean_with_sample_weight")


PER_EXAMPLE_TEXT = (
    "GMixModel needs the loss of each example (a vector of shape (batch,)): it compares "
    "them at w and at w + eps. {problem} It calls the loss as loss(y_true, y_pred) with "
    "y_true one-hot (mixed, hence soft, for the mixing methods), of shape (batch, "
    "classes). Write a custom loss for such labels and return one value per example, "
    "e.g. `keras.losses.categorical_crossentropy(y_true, y_pred)`; for class ids, "
    "compile with 'sparse_categorical_crossentropy', which GMixModel converts itself."
)


def check_per_example(loss_fn, widths):
    """Calls the per-example loss once on a probe batch of two one-hot rows
    (before the first step) and refuses, with a sentence, a loss that fails
    on one-hot labels or returns one number for the whole batch."""
    probe_true = [ops.one_hot(np.array([0, width - 1]), width) for width in widths]
    probe_pred = [ops.full([2, width], 1.0 / (width + 1)) for width in widths]
    several = len(widths) > 1
    try:
        values = loss_fn(
            probe_true if several else probe_true[0], probe_pred if several else probe_pred[0]
        )
    except Exception as error:  # any failure on one-hot labels: say what it is given
        raise ValueError(
            PER_EXAMPLE_TEXT.format(
                problem=f"The compiled loss fails on one-hot labels ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''})."
            )
        ) from error
    if len(values.shape) == 0:
        raise ValueError(
            PER_EXAMPLE_TEXT.format(
                problem="The compiled loss returns one number for the whole batch."
            )
        )


def is_sparse_loss(loss):
    """True if `loss` expects integer class ids rather than one-hot labels."""
    if loss is None:  # an output that is not trained
        return False
    loss = resolve_loss(loss)
    return isinstance(loss, keras.losses.SparseCategoricalCrossentropy) or (
        loss is keras.losses.sparse_categorical_crossentropy
    )
