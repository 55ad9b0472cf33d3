"""A small folder data set of real images for the tests: scikit-learn's
digits written as PNG files, one subfolder per class."""

import os

import numpy as np
from PIL import Image


def write_digit_folder(root, per_class=12, classes=(0, 1, 2), offset=0):
    """Writes `per_class` digits of each class as 8x8 grayscale PNGs under
    root/<class name>/; returns `(images uint8 [n, 8, 8], labels, paths)` in
    the order written."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels, paths = [], [], []
    for label in classes:
        folder = os.path.join(root, f"digit_{label}")
        os.makedirs(folder, exist_ok=True)
        members = np.flatnonzero(digits.target == label)[offset : offset + per_class]
        for i in members:
            image = np.round(digits.images[i] * 255.0 / 16.0).astype(np.uint8)
            path = os.path.join(folder, f"{i:04d}.png")
            Image.fromarray(image).save(path)  # 2-D uint8: grayscale PNG
            images.append(image)
            labels.append(label)
            paths.append(path)
    return np.stack(images), np.asarray(labels), paths
