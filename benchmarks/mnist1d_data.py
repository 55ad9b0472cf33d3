"""MNIST-1D data and a small 1D CNN for the generalization benchmark.

MNIST-1D (Greydanus 2020, arXiv 2011.14439) is generated offline by the
`mnist1d` package from the ten templates it ships. The training set is the
standard one: the first 4,000 of the 5,000 examples that the package's
default arguments (seed 42) generate. The test set is 10,000 fresh examples
generated with the same arguments and a different seed, so that accuracy
differences of a fraction of a point are measurable (the standard test set
has 1,000). `make_dataset` standardizes each generated set by its own mean
and standard deviation; with thousands of examples both sets get nearly the
same constants.

The CNN follows the shape of the paper's baseline CNN (three strided
convolutions of 25 channels, ReLU, a linear classifier), written in Keras.
"""

import functools

import keras
import numpy as np

TRAIN_SEED = 42  # the package's default: the standard data set
TEST_SEED = 2020  # any seed other than 42
TEST_SIZE = 10000
NUM_CLASSES = 10


@functools.lru_cache(maxsize=None)
def load_mnist1d(test_seed=TEST_SEED, test_size=TEST_SIZE):
    """The standard 4,000 training examples and `test_size` fresh test examples.

    Args:
        test_seed: int, the generator seed of the test set. Defaults to 2020.
        test_size: int, the number of test examples. Defaults to 10,000.

    Returns:
        (x_train, y_train, x_test, y_test): float32 [n, 40, 1] and int64 [n].
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = TRAIN_SEED
    train = make_dataset(args)
    args = get_dataset_args()
    args.seed = int(test_seed)
    args.num_samples = int(test_size)
    args.train_split = 0.0  # every generated example goes to `x_test`
    test = make_dataset(args)

    def arrays(x, y):
        return np.asarray(x, np.float32)[..., None], np.asarray(y, np.int64)

    return arrays(train["x"], train["y"]) + arrays(test["x_test"], test["y_test"])


def build_mnist1d_cnn(num_classes=NUM_CLASSES, length=40, channels=25, weight_decay=0.0):
    """A small 1D CNN: three strided Conv1D + ReLU, then a linear classifier (logits).

    Args:
        num_classes: int. Defaults to 10.
        length: int, the sequence length. Defaults to 40.
        channels: int, filters of each convolution. Defaults to 25.
        weight_decay: float, L2 factor on the kernels (the loss gets
            `weight_decay * ||w||^2`). Defaults to 0.

    Returns:
        A functional `keras.Model` that outputs logits.
    """
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    inputs = keras.Input((length, 1))
    x = inputs
    for kernel_size in (5, 3, 3):
        x = keras.layers.Conv1D(
            channels,
            kernel_size,
            strides=2,
            padding="same",
            activation="relu",
            kernel_regularizer=reg,
        )(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(num_classes, kernel_regularizer=reg)(x)
    return keras.Model(inputs, outputs, name="mnist1d_cnn")
