"""keras_gmix: G-Mix, Binary G-Mix and Decomposed G-Mix for Keras 3 `model.fit`.

>>> import keras_gmix as kg
>>> model = kg.GMixModel(inner, method="dgmix", rho=0.05, alpha=1.0)

`import keras_gmix` loads the library core only: the model, the gradient
methods, mixing, layers, callbacks, checkpoints, flatness measures, the
learning-rate schedules and the figure style (`plotting`). The data-set
loaders and architectures (`kg.data`, `kg.models`) load on first use; the
applications (`keras_gmix.train`, `.cli`, `.compare`, `.flatness_report`)
only when imported by name. Nothing here imports TensorFlow Datasets,
matplotlib, scikit-learn or PyYAML: the functions that need them import
them when called.
"""

import importlib

from keras_gmix import (
    callbacks,
    checkpoint,
    flatness,
    layers,
    mixing,
    schedules,  # registers LinearWarmup: saved models with warm-up load
)
from keras_gmix.gradients import METHODS, update_gradients
from keras_gmix.layers import fuse_batchnorm
from keras_gmix.mixing import apply_mix, sample_box_center, sample_mix
from keras_gmix.model import GMixModel

__version__ = "0.1.0"

# Library subpackages that load on first attribute access (PEP 562).
_LAZY_SUBMODULES = ("data", "models")

__all__ = [
    "GMixModel",
    "METHODS",
    "apply_mix",
    "callbacks",
    "checkpoint",
    "data",
    "flatness",
    "fuse_batchnorm",
    "layers",
    "mixing",
    "models",
    "sample_box_center",
    "sample_mix",
    "schedules",
    "update_gradients",
]


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
