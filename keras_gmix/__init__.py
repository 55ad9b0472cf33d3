"""keras_gmix: G-Mix, Binary G-Mix and Decomposed G-Mix for Keras 3 `model.fit`.

>>> import keras_gmix as kg
>>> model = kg.GMixModel(inner, method="dgmix", rho=0.05, alpha=1.0)
"""

from keras_gmix import checkpoint, data, flatness, layers, models
from keras_gmix import train  # registers LinearWarmup, so saved models with warm-up load
from keras_gmix.gradients import METHODS, update_gradients
from keras_gmix.layers import fuse_batchnorm
from keras_gmix.mixing import apply_mix, sample_box_center, sample_mix
from keras_gmix.model import GMixModel

__version__ = "0.1.0"

__all__ = [
    "GMixModel",
    "METHODS",
    "apply_mix",
    "checkpoint",
    "fuse_batchnorm",
    "data",
    "flatness",
    "layers",
    "models",
    "sample_box_center",
    "sample_mix",
    "update_gradients",
]
