"""`build_model`: architectures by name."""

import functools

from keras_gmix.models.mobilenet import mobilenet_v2
from keras_gmix.models.pyramidnet import pyramidnet
from keras_gmix.models.resnet import cifar_resnet, preact_resnet18
from keras_gmix.models.small_cnn import small_cnn
from keras_gmix.models.wide_resnet import wide_resnet


def _named(builder, name, **fixed):
    return functools.partial(builder, name=name, **fixed)


MODELS = {
    "small_cnn": small_cnn,
    # ResNet-8 (n = 1): the benchmarks' CIFAR model on 2 CPU cores.
    "resnet8": _named(cifar_resnet, "resnet8", depth=8),
    "resnet20": _named(cifar_resnet, "resnet20", depth=20),
    "resnet32": _named(cifar_resnet, "resnet32", depth=32),
    "resnet56": _named(cifar_resnet, "resnet56", depth=56),
    "preact_resnet18": preact_resnet18,
    "wrn16_8": _named(wide_resnet, "wrn16_8", depth=16, width=8),
    "wrn28_10": _named(wide_resnet, "wrn28_10", depth=28, width=10),
    "pyramidnet110_270": _named(pyramidnet, "pyramidnet110_270", depth=110, alpha=270),
    "pyramidnet272_200": _named(
        pyramidnet, "pyramidnet272_200", depth=272, alpha=200, bottleneck=True
    ),
    "pyramidnet_small": _named(pyramidnet, "pyramidnet_small", depth=20, alpha=48),
    "mobilenetv2": mobilenet_v2,
}
MODEL_NAMES = tuple(MODELS)


def build_model(name, num_classes=10, input_shape=(32, 32, 3), **kwargs):
    """Builds an architecture by name.

    Args:
        name: one of `MODEL_NAMES`: "small_cnn", "resnet8", "resnet20",
            "resnet32", "resnet56" (He et al. 2016, shortcut A), "preact_resnet18",
            "wrn16_8", "wrn28_10", "pyramidnet110_270" (basic blocks, 28.3M),
            "pyramidnet272_200" (bottleneck, 26.0M), "pyramidnet_small"
            (depth 20, alpha 48, basic), "mobilenetv2".
        num_classes: int. Defaults to 10.
        input_shape: (H, W, C). Defaults to (32, 32, 3).
        **kwargs: passed to the builder: `batchnorm`, `weight_decay`,
            `classifier_activation`, and architecture options such as
            `shortcut`, `dropout_rate`, `alpha`, `width`.

    Returns:
        A functional `keras.Model`, not compiled.

    Example:

    >>> model = build_model("resnet20", num_classes=100, weight_decay=2.5e-4)
    >>> model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    """
    builder = MODELS.get(name)
    if builder is None:
        raise ValueError(f"Unknown model name={name!r}. Expected one of {list(MODEL_NAMES)}.")
    return builder(num_classes=num_classes, input_shape=input_shape, **kwargs)
