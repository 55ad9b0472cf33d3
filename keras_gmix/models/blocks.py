"""Building blocks shared by the architectures.

Conventions, following the PyTorch/Torch reference implementations the
published parameter counts come from: convolutions without bias (a
normalization follows), He-normal initialization, BatchNormalization with
momentum 0.9 (PyTorch's momentum=0.1), an L2 penalty on convolution and
dense kernels only (not on biases or normalization parameters).
BatchNormalization's epsilon is 1.001e-5 rather than PyTorch's 1e-5, as in
keras.applications' ResNets: TensorFlow's fused batch-norm kernel raises
smaller values to 1.001e-5, so a fused layer
(`keras_gmix.layers.BatchNormalization`) takes its fused path only from there
up.
"""

import keras
from keras import ops

from keras_gmix import checks

BN_MOMENTUM = 0.9
BN_EPSILON = 1.001e-5


def check_common_args(num_classes, input_shape, weight_decay):
    """Validates the arguments every builder takes; returns `(num_classes, input_shape)`
    as a Python int and a tuple of ints (Keras layers refuse NumPy integers)."""
    num_classes = checks.check_number("num_classes", num_classes, integer=True, low=1)
    try:
        input_shape = tuple(int(d) for d in input_shape)
    except TypeError:
        input_shape = ()
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(
            "`input_shape` must be (height, width, channels) with positive "
            f"sizes. Received: input_shape={input_shape!r}"
        )
    checks.check_number("weight_decay", weight_decay, low=0)
    return num_classes, input_shape


def check_depth(depth, per_stage, extra, examples):
    """Checks that `depth` is `per_stage * n + extra` layers with n >= 1; returns it."""
    meaning = f"{per_stage}n + {extra} with n >= 1: {examples}"
    depth = checks.check_number(
        "depth", depth, integer=True, low=per_stage + extra, meaning=meaning
    )
    if (depth - extra) % per_stage:
        raise ValueError(f"Argument `depth` must be {meaning}. Received: depth={depth!r}")
    return depth


def kernel_regularizer(weight_decay):
    """`L2(weight_decay)` (adds weight_decay * sum(w**2)), or None if 0."""
    return keras.regularizers.L2(weight_decay) if weight_decay else None


def conv(x, filters, kernel_size, strides=1, weight_decay=0.0, name=None):
    """A bias-free, 'same'-padded Conv2D applied to `x`."""
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=kernel_regularizer(weight_decay),
        name=name,
    )(x)


def norm(x, batchnorm, name=None):
    """Applies a new `batchnorm` layer over the channel axis.

    Only the constructor's standard keyword arguments are used, so any
    BatchNormalization subclass (for example a fused one) can be passed.
    """
    return batchnorm(axis=-1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)(x)


def relu(x, name=None):
    return keras.layers.ReLU(name=name)(x)


def classifier_head(x, num_classes, weight_decay, classifier_activation, name="predictions"):
    """Global average pooling and a dense classifier with float32 outputs.

    float32 even under a mixed-precision policy, as Keras' mixed-precision
    guide advises: softmax and the loss on float16 logits lose precision
    and overflow (logits beyond 65504).
    """
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.layers.Dense(
        num_classes,
        activation=classifier_activation,
        kernel_regularizer=kernel_regularizer(weight_decay),
        dtype="float32",
        name=name,
    )(x)


@keras.saving.register_keras_serializable(package="keras_gmix")
class ZeroPadChannels(keras.layers.Layer):
    """Appends zero channels so that the output has `channels` channels.

    The parameter-free shortcut of He et al. 2016 (option A) and of
    PyramidNet: the identity, extended with zeros where the residual branch
    has more channels.

    Args:
        channels: int, the number of output channels; at least the number
            of input channels.
    """

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.channels,)

    def call(self, inputs):
        extra = self.channels - inputs.shape[-1]
        if extra < 0:
            raise ValueError(
                f"ZeroPadChannels(channels={self.channels}) got an input "
                f"with {inputs.shape[-1]} channels."
            )
        if extra == 0:
            return inputs
        paddings = [[0, 0]] * (len(inputs.shape) - 1) + [[0, extra]]
        return ops.pad(inputs, paddings)

    def get_config(self):
        config = super().get_config()
        config["channels"] = self.channels
        return config


def preact_block(x, filters, strides, batchnorm, weight_decay, prefix, dropout_rate=0.0):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus the shortcut.

    The pre-activation block of PreAct ResNet (He et al. 2016b) and, with
    dropout, of WideResNet (Zagoruyko & Komodakis 2016). The projection
    shortcut sees the pre-activated input, as the residual does.
    """
    in_channels = x.shape[-1]
    pre = norm(x, batchnorm, name=f"{prefix}_bn1")
    pre = relu(pre, name=f"{prefix}_relu1")
    if strides != 1 or in_channels != filters:
        shortcut = conv(pre, filters, 1, strides, weight_decay, name=f"{prefix}_proj")
    else:
        shortcut = x
    y = conv(pre, filters, 3, strides, weight_decay, name=f"{prefix}_conv1")
    y = norm(y, batchnorm, name=f"{prefix}_bn2")
    y = relu(y, name=f"{prefix}_relu2")
    if dropout_rate:
        y = keras.layers.Dropout(dropout_rate, name=f"{prefix}_dropout")(y)
    y = conv(y, filters, 3, 1, weight_decay, name=f"{prefix}_conv2")
    return keras.layers.Add(name=f"{prefix}_add")([shortcut, y])
