"""Architectures used by the recipes, as Keras functional models.

Every builder takes `num_classes`, `input_shape`, `batchnorm` (a
BatchNormalization class, called with axis/momentum/epsilon/name only),
`weight_decay` (L2 on kernels) and `classifier_activation`. `build_model`
selects one by name.
"""

from keras_gmix.models.blocks import ZeroPadChannels
from keras_gmix.models.mobilenet import mobilenet_v2
from keras_gmix.models.pyramidnet import pyramidnet
from keras_gmix.models.registry import MODEL_NAMES, build_model
from keras_gmix.models.resnet import cifar_resnet, preact_resnet18
from keras_gmix.models.small_cnn import small_cnn
from keras_gmix.models.wide_resnet import wide_resnet

__all__ = [
    "MODEL_NAMES",
    "ZeroPadChannels",
    "build_model",
    "cifar_resnet",
    "mobilenet_v2",
    "preact_resnet18",
    "pyramidnet",
    "small_cnn",
    "wide_resnet",
]
