"""Class-balanced training subsets for the limited-data regime."""

import math

import numpy as np


def balanced_counts(class_sizes, size):
    """Splits `size` examples over classes as evenly as the classes allow.

    Every class gets the same share; a class with fewer examples than its
    share gives all it has, and the rest is shared among the other classes
    ("water filling"). Shares that cannot be split evenly give one more
    example to the lower class indices first.

    Args:
        class_sizes: sequence of ints, the number of available examples of
            each class.
        size: int, the total number of examples to take. At most
            `sum(class_sizes)`.

    Returns:
        A NumPy int64 array with one count per class, summing to `size`.
    """
    available = np.asarray(class_sizes, dtype=np.int64)
    if size < 0 or size > available.sum():
        raise ValueError(
            f"Cannot take size={size} examples from {int(available.sum())} available ones."
        )
    counts = np.zeros_like(available)
    remaining = int(size)
    while remaining > 0:
        open_classes = np.flatnonzero(counts < available)
        share = remaining // len(open_classes)
        if share == 0:
            # Fewer examples left than open classes: one each, lowest first.
            counts[open_classes[:remaining]] += 1
            break
        for c in open_classes:
            add = min(share, int(available[c] - counts[c]))
            counts[c] += add
            remaining -= add
    return counts


def balanced_subset_indices(labels, size, num_classes=None, seed=0):
    """Draws a class-balanced subset of example indices.

    Each class contributes `balanced_counts(...)` examples, drawn without
    replacement by a NumPy generator seeded with `seed`, so the same seed
    always returns the same subset.

    Args:
        labels: 1-D integer array of class labels.
        size: int, the number of indices to return.
        num_classes: int or None, the number of classes. Defaults to
            `labels.max() + 1`.
        seed: int, seed of the draw. Defaults to 0.

    Returns:
        A sorted NumPy int64 array of `size` indices into `labels`.

    Example:

    >>> y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    >>> idx = balanced_subset_indices(y, 6, seed=0)
    >>> np.bincount(y[idx]).tolist()
    [2, 2, 2]
    """
    labels = np.asarray(labels)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    class_sizes = np.bincount(labels, minlength=num_classes)
    counts = balanced_counts(class_sizes, size)
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=int(k), replace=False)
        for c, k in enumerate(counts)
        if k > 0
    ]
    if not chosen:
        return np.zeros([0], dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def check_subset_args(train_fraction=None, train_size=None):
    """Checks `train_fraction` and `train_size` before any data is loaded.

    Raises:
        ValueError: both are given, the fraction is outside (0, 1], or the
            size is not a positive integer.
    """
    if train_fraction is not None and train_size is not None:
        raise ValueError(
            "Pass at most one of `train_fraction` and `train_size`. "
            f"Received: train_fraction={train_fraction}, "
            f"train_size={train_size}"
        )
    if train_fraction is not None and (
        isinstance(train_fraction, bool)
        or not isinstance(train_fraction, (int, float, np.floating))
        or not 0.0 < float(train_fraction) <= 1.0
    ):
        raise ValueError(
            "`train_fraction` must be a number in (0, 1]. "
            f"Received: train_fraction={train_fraction!r}"
        )
    if train_size is not None and (
        isinstance(train_size, bool)
        or not isinstance(train_size, (int, np.integer))
        or train_size < 1
    ):
        raise ValueError(
            f"`train_size` must be a positive integer. Received: train_size={train_size!r}"
        )


def resolve_subset_size(num_examples, train_fraction=None, train_size=None):
    """Turns `train_fraction` or `train_size` into a number of examples.

    Args:
        num_examples: int, the size of the full training split.
        train_fraction: float in (0, 1] or None. The size is rounded half
            up, and is at least 1.
        train_size: int in [1, num_examples] or None.

    Returns:
        The subset size, or None when neither argument is given (use all).
    """
    check_subset_args(train_fraction, train_size)
    if train_fraction is not None:
        size = math.floor(float(train_fraction) * num_examples + 0.5)
        return max(1, min(num_examples, size))
    if train_size is not None:
        if train_size > num_examples:
            raise ValueError(
                f"`train_size` must be at most {num_examples}, the size of "
                f"the training split. Received: train_size={train_size}"
            )
        return int(train_size)
    return None
