"""Baselines for benchmarks/step_time.py: SAM as most Keras code writes it.

`NaiveSAM` is the textbook Keras 3 SAM step: gradient at w, perturb the
variables in place with `assign_add(eps)`, gradient there, restore with
`assign_sub(eps)`, apply. It is what `GMixModel(method="sam")` is compared
against: ours evaluates the model at w + eps with `stateless_call` instead of
writing the variables, and must be no slower.

`tf_keras_resnet20` builds the same ResNet-20 as
`keras_gmix.models.build_model("resnet20")` (same layers, shapes,
initializers and BatchNormalization settings) with tf-keras, for the peer
rows (tf-keras plain fit and tf-keras `SharpnessAwareMinimization`).

Benchmark code only: not part of the package.
"""

import keras
import tensorflow as tf


class NaiveSAM(keras.Model):
    """SAM with in-place weight perturbation (assign_add / assign_sub).

    Both passes run the wrapped model in training mode through its own
    `__call__`, so BatchNormalization updates its moving statistics twice
    per step, once at the perturbed weights, as in most hand-written SAM
    code. An exception between the two assignments would leave the weights
    perturbed: one reason the package does not do it this way.

    Args:
        inner: a built `keras.Model`.
        rho: SAM radius. Defaults to `0.05`.
    """

    def __init__(self, inner, rho=0.05, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner
        self.rho = rho
        if inner.built:
            self.built = True

    def call(self, inputs, training=None):
        return self.inner(inputs, training=training)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.inner.trainable_variables

        with tf.GradientTape() as tape:
            y_pred = self.inner(x, training=True)
            loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
            scaled_loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled_loss, variables)

        # climb to the local maximum w + eps, in place
        scale = self.rho / (tf.linalg.global_norm(grads) + 1e-12)
        epsilons = [g * scale for g in grads]
        for variable, eps in zip(variables, epsilons):
            variable.assign_add(eps)

        with tf.GradientTape() as tape:
            y_pred_eps = self.inner(x, training=True)
            perturbed_loss = self.compute_loss(
                x=x, y=y, y_pred=y_pred_eps, sample_weight=sample_weight, training=True
            )
            scaled_perturbed_loss = self.optimizer.scale_loss(perturbed_loss)
        grads = tape.gradient(scaled_perturbed_loss, variables)

        # back to w before the optimizer applies the update
        for variable, eps in zip(variables, epsilons):
            variable.assign_sub(eps)
        self.optimizer.apply(grads, variables)

        self._loss_tracker.update_state(loss, sample_weight=tf.shape(x)[0])
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def tf_keras_resnet20(num_classes=10, input_shape=(32, 32, 3)):
    """ResNet-20 (shortcut A) with tf-keras, layer for layer as keras_gmix's.

    Bias-free 'same' 3x3 convolutions (He-normal), BatchNormalization with
    momentum 0.9 and epsilon 1.001e-5 (tf-keras uses its fused kernel),
    ReLU, parameter-free shortcuts (1x1 max-pool subsampling and zero-padded
    channels), global average pooling, a softmax dense classifier: 271,098
    parameters for 10 classes, like `build_model("resnet20")`.
    """
    import tf_keras

    layers = tf_keras.layers

    class ZeroPadChannels(layers.Layer):
        def __init__(self, channels, **kwargs):
            super().__init__(**kwargs)
            self.channels = channels

        def call(self, inputs):
            extra = self.channels - inputs.shape[-1]
            return tf.pad(inputs, [[0, 0], [0, 0], [0, 0], [0, extra]])

    def conv(x, filters, kernel_size, strides, name):
        return layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            name=name,
        )(x)

    def norm(x, name):
        return layers.BatchNormalization(axis=-1, momentum=0.9, epsilon=1.001e-5, name=name)(x)

    inputs = tf_keras.Input(shape=input_shape, name="images")
    x = conv(inputs, 16, 3, 1, "stem_conv")
    x = layers.ReLU(name="stem_relu")(norm(x, "stem_bn"))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            prefix = f"stage{stage + 1}_block{block + 1}"
            in_channels = x.shape[-1]
            y = conv(x, filters, 3, strides, f"{prefix}_conv1")
            y = layers.ReLU(name=f"{prefix}_relu1")(norm(y, f"{prefix}_bn1"))
            y = norm(conv(y, filters, 3, 1, f"{prefix}_conv2"), f"{prefix}_bn2")
            if strides != 1 or in_channels != filters:
                if strides != 1:
                    x = layers.MaxPooling2D(
                        pool_size=1, strides=strides, name=f"{prefix}_subsample"
                    )(x)
                x = ZeroPadChannels(filters, name=f"{prefix}_pad")(x)
            x = layers.ReLU(name=f"{prefix}_out")(layers.Add(name=f"{prefix}_add")([x, y]))
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return tf_keras.Model(inputs, outputs, name="resnet20_tf_keras")
