"""Per-example losses from whatever loss a user gives `compile`.

G-Mix needs l_i, one loss per (mixed) example, with one-hot soft labels:
the sharpness-sensitivity s_i compares them at w and w + eps. Keras losses
reduce to a scalar, so this module turns a compiled loss into a function
`loss(y_true_one_hot, y_pred) -> [n]`. Sparse cross-entropy becomes the
equivalent categorical cross-entropy, because mixed labels are soft.
"""

import keras
import tensorflow as tf


def _resolve(loss):
    """The loss as a Keras `Loss` object or a function, sparse ones converted."""
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        config = loss.get_config()
        if config.get("ignore_class") is not None:
            raise ValueError(
                "`ignore_class` of a sparse cross-entropy loss has no meaning "
                "on mixed (soft) labels; remove it, or drop those examples "
                "from the data set instead."
            )
        return keras.losses.CategoricalCrossentropy(
            from_logits=config["from_logits"], axis=config.get("axis", -1), reduction=None
        )
    if loss is keras.losses.sparse_categorical_crossentropy:
        return keras.losses.categorical_crossentropy
    if isinstance(loss, keras.losses.Loss) or callable(loss):
        return loss
    raise ValueError(
        "GMixModel needs one loss for its single output: a Keras loss name, "
        "a `keras.losses.Loss` or a function `loss(y_true, y_pred)`. "
        f"Received: loss={loss!r}"
    )


def per_example_loss(loss):
    """Returns `fn(y_true, y_pred) -> [n]`, the unreduced loss per example.

    Args:
        loss: what was given to `compile(loss=...)`: a name, a
            `keras.losses.Loss` or a function. Sparse categorical
            cross-entropy is replaced by categorical cross-entropy with the
            same `from_logits`, because labels reach it one-hot.

    Returns:
        A function of (y_true one-hot, y_pred) giving a float32 tensor of
        shape [n]: each example's loss, averaged over any non-batch axes
        (as Keras' "sum_over_batch_size" reduction would).
    """
    if isinstance(loss, (dict, list, tuple)):
        raise ValueError(
            "GMixModel supports models with one output and one loss. "
            f"Received: loss={loss!r}"
        )
    loss = _resolve(loss)
    # `Loss.call` is the unreduced loss; `__call__` would reduce it.
    unreduced = loss.call if isinstance(loss, keras.losses.Loss) else loss

    def fn(y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        y_pred = tf.cast(y_pred, tf.float32)
        values = tf.cast(unreduced(y_true, y_pred), tf.float32)
        if values.shape.rank is not None and values.shape.rank > 1:
            values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
        return values

    return fn


def is_sparse_loss(loss):
    """True if `loss` expects integer class ids rather than one-hot labels."""
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    return isinstance(loss, keras.losses.SparseCategoricalCrossentropy) or (
        loss is keras.losses.sparse_categorical_crossentropy
    )
