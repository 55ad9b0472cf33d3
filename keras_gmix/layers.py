"""Layers: a BatchNormalization that uses TensorFlow's fused kernel.

`BatchNormalization` is Keras' own layer except for one case (training mode,
TensorFlow backend, 4-D input normalized over its channel axis), where it
calls TensorFlow's fused kernel (`FusedBatchNormV3`) instead of a chain of
reductions and elementwise ops. `fuse_batchnorm` swaps the stock layer for
this one in an existing functional or Sequential model.

On JAX both are Keras' own layer in every case (XLA fuses the stock
computation there): same class name, constructor and config on both
backends, so a model saved on one loads on the other.
"""

import keras
from keras import ops

from keras_gmix import compat

# `tf.compat.v1.nn.fused_batch_norm` raises any epsilon below this to it
# (a cuDNN requirement); with a smaller epsilon the fused result would differ
# from the stock layer, so such layers keep the stock code path.
_MIN_FUSED_EPSILON = 1.001e-5

# Input dtypes the fused kernel accepts (with float32 scale, offset and
# statistics); float64 and others keep the stock code path.
_FUSED_DTYPES = ("float16", "bfloat16", "float32")


@keras.saving.register_keras_serializable(package="keras_gmix")
class BatchNormalization(keras.layers.BatchNormalization):
    """Batch normalization that uses TensorFlow's fused kernel when training.

    Same arguments, weights, config and results as
    `keras.layers.BatchNormalization`; only the training-mode computation
    changes, and only where TensorFlow's fused kernel (`FusedBatchNormV3`,
    through `tf.compat.v1.nn.fused_batch_norm`) applies:

    - the TensorFlow backend;
    - `training=True` and `layer.trainable`;
    - 4-D inputs with `axis` the last axis (`NHWC`) or axis 1 (`NCHW`);
    - float32, float16 or bfloat16 inputs (for example under the
      `"mixed_float16"` policy: float16 inputs and outputs, float32 `gamma`,
      `beta` and statistics);
    - no mask, `renorm=False`, `synchronized=False`, and
      `epsilon >= 1.001e-5` (TensorFlow raises smaller values to this).

    Everywhere else, including inference and the JAX backend (where XLA
    fuses the stock computation itself), it runs Keras' own layer; the
    saved config is the stock one, so a model saved on one backend loads
    on the other.

    The moving statistics follow Keras' semantics exactly:
    `moving = moving * momentum + batch * (1 - momentum)`, where the batch
    variance is the biased one (divided by the number of values per channel,
    `m`). In training mode the fused kernel returns the Bessel-corrected
    variance (divided by `m - 1`) on CPU and under XLA alike; it is multiplied
    by `(m - 1) / m` before the update. The updates are `assign` calls inside
    `call`, as in the stock layer, so `Layer.stateless_call` captures and
    returns them instead of writing the variables. They carry no gradient
    (the fused kernel's gradient ignores its statistics outputs), whereas the
    stock layer's updated statistics are differentiable with respect to the
    inputs; the outputs and their gradients are the same.

    Second derivatives work, and are exact: the gradient of
    `FusedBatchNormV3` is `FusedBatchNormGradV3`, whose own gradient
    TensorFlow computes from the closed-form first derivative. Hessian-vector
    products through nested `tf.GradientTape`s (with respect to the input,
    `gamma`, `beta` and the weights before the layer; eager, `tf.function`
    and XLA) match float64 finite differences to float32 rounding. The stock
    layer's do not, in training mode: `tf.nn.moments` computes the variance
    around `stop_gradient(mean)`, which leaves first derivatives exact but
    drops a term of the second derivative with respect to the input (measured
    errors of 0.1% to 5% of the largest Hessian-vector product entry).

    Args:
        axis: Integer, the axis that should be normalized (the features
            axis). Defaults to `-1`.
        momentum: Momentum for the moving average. Defaults to `0.99`.
        epsilon: Small float added to the variance to avoid dividing by
            zero. Defaults to `1e-3`.
        center: If `True`, add the offset `beta`. Defaults to `True`.
        scale: If `True`, multiply by `gamma`. Defaults to `True`.
        beta_initializer: Initializer for `beta`. Defaults to `"zeros"`.
        gamma_initializer: Initializer for `gamma`. Defaults to `"ones"`.
        moving_mean_initializer: Initializer for the moving mean.
            Defaults to `"zeros"`.
        moving_variance_initializer: Initializer for the moving variance.
            Defaults to `"ones"`.
        beta_regularizer: Optional regularizer for `beta`. Defaults to
            `None`.
        gamma_regularizer: Optional regularizer for `gamma`. Defaults to
            `None`.
        beta_constraint: Optional constraint for `beta`. Defaults to `None`.
        gamma_constraint: Optional constraint for `gamma`. Defaults to
            `None`.
        renorm: Whether to use Batch Renormalization (always the stock code
            path). Defaults to `False`.
        renorm_clipping: Dictionary of `"rmax"`, `"rmin"`, `"dmax"`, used only
            if `renorm=True`. Defaults to `None`.
        renorm_momentum: Momentum of the renorm statistics, used only if
            `renorm=True`. Defaults to `0.99`.
        synchronized: If `True`, use the global batch statistics across the
            replicas of a `tf.distribute` strategy (always the stock code
            path). Defaults to `False`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Example:

    ```python
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, use_bias=False)(inputs)
    x = keras_gmix.layers.BatchNormalization()(x)
    outputs = keras.layers.ReLU()(x)
    model = keras.Model(inputs, outputs)
    ```

    References:

    - [Ioffe and Szegedy, 2015](https://arxiv.org/abs/1502.03167).
    """

    def call(self, inputs, training=None, mask=None):
        # Same condition as the stock layer for using batch statistics.
        if training and self.trainable and self._can_fuse(inputs, mask):
            return self._fused_call(inputs)
        return super().call(inputs, training=training, mask=mask)

    def _can_fuse(self, inputs, mask):
        if keras.backend.backend() != "tensorflow":
            return False
        if mask is not None or self.renorm or self.synchronized:
            return False
        if self.epsilon < _MIN_FUSED_EPSILON:
            return False
        if len(inputs.shape) != 4 or self.axis % 4 not in (1, 3):
            return False
        return keras.backend.standardize_dtype(inputs.dtype) in _FUSED_DTYPES

    def _fused_call(self, inputs):
        # Imported here so that the module loads under any Keras backend.
        import tensorflow as tf

        axis = self.axis % 4
        channels = inputs.shape[axis]
        # The fused kernel needs float32 scale and offset even for float16
        # inputs; with scale/center off it gets the identity values, which
        # are constants and so receive no gradient.
        if self.scale:
            gamma = ops.cast(self.gamma, "float32")
        else:
            gamma = ops.ones((channels,), "float32")
        if self.center:
            beta = ops.cast(self.beta, "float32")
        else:
            beta = ops.zeros((channels,), "float32")

        # exponential_avg_factor defaults to 1.0: the kernel returns the
        # batch statistics and the moving averages are updated below, with
        # Keras' formula, instead of inside the kernel.
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            gamma,
            beta,
            epsilon=self.epsilon,
            data_format="NHWC" if axis == 3 else "NCHW",
            is_training=True,
        )

        # The kernel's variance is Bessel-corrected (divided by m - 1); Keras
        # keeps the biased one (divided by m) in moving_variance. For m == 1
        # the kernel returns 0, which the factor (m - 1) / m leaves at 0.
        shape = tf.cast(tf.shape(inputs), "float32")
        reduced = [a for a in range(4) if a != axis]
        count = tf.reduce_prod(tf.gather(shape, reduced))
        variance = variance * ((count - 1.0) / tf.maximum(count, 1.0))
        mean = tf.stop_gradient(mean)
        variance = tf.stop_gradient(variance)

        # Assigned exactly as the stock layer does, so that stateless_call
        # and tf.distribute see the same updates.
        moving_mean = ops.cast(self.moving_mean, "float32")
        moving_variance = ops.cast(self.moving_variance, "float32")
        self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            moving_variance * self.momentum + variance * (1.0 - self.momentum)
        )
        return ops.cast(outputs, self.compute_dtype)


def fuse_batchnorm(model):
    """Copies a model with every stock BatchNormalization replaced by ours.

    The copy is made with `keras.models.clone_model`: every layer is rebuilt
    from its config, each `keras.layers.BatchNormalization` (the stock class
    itself, not a subclass) as `keras_gmix.layers.BatchNormalization` with the
    same config, and every layer then receives the weights of the layer it
    copies, moving statistics included. Nested functional and Sequential
    models are copied the same way. The copy is not compiled. Batch
    normalization layers hidden inside custom layers or subclassed models are
    copied unchanged.

    Args:
        model: A built functional or Sequential `keras.Model`.

    Returns:
        A new model of the same kind, with the same weights and predictions,
        whose training-mode batch normalization uses the fused kernel.

    Raises:
        ValueError: if `model` is a subclassed model (which `clone_model`
            cannot rebuild: build it with
            `keras_gmix.layers.BatchNormalization` instead) or is not built.

    Example:

    ```python
    model = keras.applications.ResNet50(weights=None)
    fused = keras_gmix.layers.fuse_batchnorm(model)
    fused.compile(optimizer="sgd", loss="categorical_crossentropy")
    ```

    References:

    - [Ioffe and Szegedy, 2015](https://arxiv.org/abs/1502.03167).
    """
    # clone_model accepts a clone_function only for these two kinds.
    if not (isinstance(model, keras.Sequential) or compat.is_functional(model)):
        raise ValueError(
            "fuse_batchnorm() needs a functional or Sequential model, which "
            "keras.models.clone_model can rebuild layer by layer. Received "
            f"model={model.__class__.__name__}, a subclassed model: build it "
            "with keras_gmix.layers.BatchNormalization instead of "
            "keras.layers.BatchNormalization."
        )
    if not model.built:
        raise ValueError(
            "fuse_batchnorm() needs a built model, whose weights it can copy. "
            f"Received model={model.name}, which is not built: call it on "
            "data or build it first."
        )

    copies = []

    def clone_function(layer):
        # An exact type check: subclasses of the stock layer may change call.
        if type(layer) is keras.layers.BatchNormalization:
            new = BatchNormalization.from_config(layer.get_config())
        else:
            new = layer.__class__.from_config(layer.get_config())
        # Functional graphs also hold bare operations (`x * 2.0`): no weights.
        if isinstance(layer, keras.layers.Layer):
            copies.append((layer, new))
        return new

    new_model = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    if not new_model.built:
        # A Sequential model without an Input is rebuilt unbuilt.
        new_model.build(model.input_shape)
    # Layer by layer rather than model.get_weights(), so that the copy does
    # not rely on the two models listing their weights in the same order.
    for layer, new in copies:
        new.set_weights(layer.get_weights())
    return new_model
