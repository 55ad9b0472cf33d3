"""What every loader returns: `DataSplits`, and the per-channel statistics
of its training images (`compute_mean_std`).

Its own module so that the loaders (`datasets.py`, `folder.py`) import it
and not each other.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class DataSplits:
    """A train and a test split held as NumPy arrays.

    Attributes:
        name: str, the data set's name (or the `.npz` path).
        x_train: array [n_train, H, W, C]; uint8 in [0, 255] or float32 in
            [0, 1].
        y_train: int64 array [n_train] of class indices.
        x_test: array [n_test, H, W, C], same dtype as `x_train`.
        y_test: int64 array [n_test].
        num_classes: int.
        input_shape: tuple (H, W, C).
        flip: bool, True when a horizontal flip keeps the label (natural
            images), False for digits and house numbers.
        mean: tuple of C floats, per-channel mean of the training pixels in
            [0, 1] units (for normalization).
        std: tuple of C floats, per-channel standard deviation likewise.
        class_names: tuple of str or None, the name of each class id (a
            folder's subfolders, a `.npz` file's `label_names`).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple
    flip: bool
    mean: tuple
    std: tuple
    class_names: tuple = None

    @property
    def train_size(self):
        return int(self.y_train.shape[0])

    @property
    def test_size(self):
        return int(self.y_test.shape[0])

    def __repr__(self):
        return (
            f"DataSplits(name={self.name!r}, train={self.x_train.shape} "
            f"{self.x_train.dtype}, test={self.x_test.shape}, "
            f"num_classes={self.num_classes}, flip={self.flip})"
        )


def compute_mean_std(x, chunk_size=4096):
    """Per-channel mean and standard deviation of images, in [0, 1] units.

    Pools all images and pixel positions; works in chunks of float64 so a
    50,000-image uint8 array needs no full float copy.

    Args:
        x: array [n, H, W, C], uint8 in [0, 255] or float in [0, 1].
        chunk_size: int, images per chunk. Defaults to 4096.

    Returns:
        (mean, std): two tuples of C Python floats.
    """
    x = np.asarray(x)
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    channels = x.shape[-1]
    total = np.zeros(channels, np.float64)
    total_sq = np.zeros(channels, np.float64)
    count = 0
    for start in range(0, x.shape[0], chunk_size):
        chunk = x[start : start + chunk_size].astype(np.float64) / scale
        chunk = chunk.reshape(-1, channels)
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
        count += chunk.shape[0]
    mean = total / count
    var = np.maximum(total_sq / count - np.square(mean), 0.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in np.sqrt(var))
