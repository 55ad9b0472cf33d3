"""Tests for keras_gmix.data: loaders, class-balanced subsets, pipelines."""

import os
import re
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_gmix import data as kd
from keras_gmix.data.subset import balanced_counts

PARTIAL_CIFAR10 = os.path.join(
    os.path.dirname(__file__),
    "..",
    "..",
    "shared",
    "data",
    "cifar10_partial.npz",
)

# name -> (image shape, classes, flip, mock examples per split)
TFDS_CASES = {
    "cifar10": ((32, 32, 3), 10, True, 200),
    "cifar100": ((32, 32, 3), 100, True, 600),
    "svhn_cropped": ((32, 32, 3), 10, False, 200),
    "stl10": ((96, 96, 3), 10, True, 60),
}


def _load_mock(name, **kwargs):
    num_examples = TFDS_CASES[name][3]
    # download=False: the mock has nothing to download, and with download=True
    # load_tfds first checks that the real download host is reachable.
    with tfds.testing.mock_data(num_examples=num_examples):
        return kd.load_dataset(name, download=False, **kwargs)


def _assert_balanced(labels, full_labels, num_classes, size):
    """Counts equal the water-filling split of `size` over the classes."""
    available = np.bincount(full_labels, minlength=num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    np.testing.assert_array_equal(counts, balanced_counts(available, size))
    # As even as the classes allow: the uncapped classes differ by <= 1.
    uncapped = counts[counts < available]
    if uncapped.size:
        assert counts.max() - uncapped.min() <= 1


def _row_index(full, rows):
    """Index of each row of `rows` in `full` (the first match)."""
    position = {}
    for i, r in enumerate(full.reshape(full.shape[0], -1)):
        position.setdefault(r.tobytes(), i)
    flat_rows = np.ascontiguousarray(rows, dtype=full.dtype)
    return np.array([position[r.tobytes()] for r in flat_rows.reshape(len(rows), -1)])


# ---------------------------------------------------------------- TFDS --


@pytest.mark.parametrize("name", sorted(TFDS_CASES))
def test_tfds_loader_shapes_dtypes_ranges(name):
    shape, num_classes, flip, n = TFDS_CASES[name]
    splits = _load_mock(name)
    assert isinstance(splits, kd.DataSplits)
    assert splits.name == name
    assert splits.input_shape == shape
    assert splits.num_classes == num_classes
    assert splits.flip is flip
    assert splits.x_train.shape == (n,) + shape
    assert splits.x_test.shape == (n,) + shape
    assert splits.x_train.dtype == np.uint8
    assert splits.y_train.dtype == np.int64
    assert splits.y_train.shape == (n,)
    for y in (splits.y_train, splits.y_test):
        assert y.min() >= 0 and y.max() < num_classes
    assert splits.x_train.max() > 200  # uint8 range, not rescaled
    assert len(splits.mean) == 3 and len(splits.std) == 3
    assert all(0 < m < 1 for m in splits.mean)
    assert all(0 < s < 1 for s in splits.std)


def test_tfds_constants_are_used_for_cifar():
    assert _load_mock("cifar10").mean == kd.CIFAR10_MEAN
    assert _load_mock("cifar100").std == kd.CIFAR100_STD


@pytest.mark.parametrize("name", sorted(TFDS_CASES))
def test_tfds_balanced_subset(name):
    _, num_classes, _, n = TFDS_CASES[name]
    full = _load_mock(name)
    size = n // 2
    a = _load_mock(name, train_size=size, seed=1)
    b = _load_mock(name, train_size=size, seed=1)
    c = _load_mock(name, train_size=size, seed=2)
    assert a.x_train.shape == (size,) + full.input_shape
    assert a.y_train.shape == (size,)
    _assert_balanced(a.y_train, full.y_train, num_classes, size)
    # Same seed, same subset; another seed, another subset.
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_train, c.x_train)
    # The subset is drawn from the training split, labels kept with images,
    # and the test split is untouched.
    idx = _row_index(full.x_train, a.x_train)
    np.testing.assert_array_equal(full.y_train[idx], a.y_train)
    np.testing.assert_array_equal(a.x_test, full.x_test)
    assert a.mean == full.mean


def test_tfds_train_fraction():
    full = _load_mock("cifar10")
    part = _load_mock("cifar10", train_fraction=0.25, seed=0)
    assert part.train_size == 50
    _assert_balanced(part.y_train, full.y_train, 10, 50)
    np.testing.assert_array_equal(np.bincount(part.y_train), [5] * 10)


# -------------------------------------------------------------- digits --


def test_digits_stratified_split():
    splits = kd.load_dataset("digits")
    assert splits.x_train.shape == (1437, 8, 8, 1)
    assert splits.x_test.shape == (360, 8, 8, 1)
    assert splits.input_shape == (8, 8, 1)
    assert splits.x_train.dtype == np.float32
    assert splits.x_train.min() == 0.0 and splits.x_train.max() == 1.0
    assert splits.num_classes == 10 and splits.flip is False
    # Stratified: every class has its share of the test split (+-1).
    full = np.bincount(np.concatenate([splits.y_train, splits.y_test]))
    test = np.bincount(splits.y_test, minlength=10)
    assert np.all(np.abs(test - full * 360 / 1797) <= 1)
    # The split is fixed: a second load, and a different subset seed, give
    # the same test split.
    again = kd.load_dataset("digits", train_size=200, seed=5)
    np.testing.assert_array_equal(again.x_test, splits.x_test)
    np.testing.assert_array_equal(again.y_test, splits.y_test)


@pytest.mark.parametrize("size", [16, 32])
def test_digits_upsampled(size):
    splits = kd.load_dataset("digits", image_size=size)
    assert splits.x_train.shape == (1437, size, size, 1)
    assert splits.input_shape == (size, size, 1)
    assert splits.x_train.dtype == np.float32
    assert splits.x_train.min() >= 0.0 and splits.x_train.max() <= 1.0
    assert splits.x_train.max() > 0.9


def test_digits_subset_deterministic():
    a = kd.load_dataset("digits", train_size=105, seed=3)
    b = kd.load_dataset("digits", train_size=105, seed=3)
    c = kd.load_dataset("digits", train_size=105, seed=4)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    assert np.bincount(a.y_train).tolist() == [11] * 5 + [10] * 5


# ----------------------------------------------------------------- npz --


def _write_npz(path, n_train=30, n_test=10, classes=3, channels=3, **extra):
    rng = np.random.default_rng(0)
    shape = (8, 8, channels) if channels else (8, 8)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n_train,) + shape, dtype=np.uint8),
        y_train=np.arange(n_train) % classes,
        x_test=rng.integers(0, 256, (n_test,) + shape, dtype=np.uint8),
        y_test=np.arange(n_test) % classes,
        **extra,
    )
    return str(path)


def test_npz_loader(tmp_path):
    path = _write_npz(tmp_path / "tiny.npz")
    splits = kd.load_dataset(path)
    assert splits.name == path
    assert splits.x_train.shape == (30, 8, 8, 3)
    assert splits.x_test.shape == (10, 8, 8, 3)
    assert splits.input_shape == (8, 8, 3)
    assert splits.num_classes == 3 and splits.flip is True
    assert splits.y_train.dtype == np.int64
    expected_mean, _ = kd.compute_mean_std(splits.x_train)
    assert splits.mean == expected_mean
    np.testing.assert_allclose(
        splits.mean,
        (splits.x_train / 255.0).mean(axis=(0, 1, 2)),
        rtol=1e-6,
    )
    np.testing.assert_allclose(splits.std, (splits.x_train / 255.0).std(axis=(0, 1, 2)), rtol=1e-6)
    sub = kd.load_dataset(path, train_size=12, seed=0)
    assert np.bincount(sub.y_train).tolist() == [4, 4, 4]


def test_npz_label_names_grayscale_and_options(tmp_path):
    path = _write_npz(
        tmp_path / "gray.npz",
        classes=2,
        channels=0,
        label_names=np.array(["a", "b", "c", "d"]),
    )
    splits = kd.load_dataset(path, flip=False)
    assert splits.x_train.shape == (30, 8, 8, 1)
    assert splits.num_classes == 4  # from label_names, not max label + 1
    assert splits.flip is False
    assert kd.load_dataset(path, num_classes=7).num_classes == 7


def test_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        kd.load_dataset(str(tmp_path / "missing.npz"))
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="y_train"):
        kd.load_dataset(str(bad))
    path = _write_npz(tmp_path / "labels.npz", classes=3)
    with pytest.raises(ValueError, match="outside"):
        kd.load_dataset(path, num_classes=2)


@pytest.mark.parametrize("form", ["column", "whole_floats", "one_hot", "bool"])
def test_npz_labels_in_the_forms_users_save_read_as_class_ids(tmp_path, form):
    """keras.datasets' CIFAR labels are [n, 1]; some pipelines save float
    ids or one-hot rows: each reads as the same int64 ids."""
    ids_path = _write_npz(tmp_path / "ids.npz", classes=3)
    with np.load(ids_path) as f:
        arrays = dict(f)
    convert = {
        "column": lambda y: y[:, None],
        "whole_floats": lambda y: y.astype(np.float32),
        "one_hot": lambda y: np.eye(5, dtype=np.float32)[y],  # 5 columns, 3 classes used
        "bool": lambda y: y.astype(bool),
    }[form]
    if form == "bool":  # two classes
        arrays = {k: v % 2 if k.startswith("y_") else v for k, v in arrays.items()}
        ids_path = str(tmp_path / "two.npz")
        np.savez(ids_path, **arrays)
    path = str(tmp_path / f"{form}.npz")
    np.savez(path, **{k: convert(v) if k.startswith("y_") else v for k, v in arrays.items()})
    expected, got = kd.load_dataset(ids_path), kd.load_dataset(path)
    for split in ("y_train", "y_test"):
        assert getattr(got, split).dtype == np.int64
        np.testing.assert_array_equal(getattr(got, split), getattr(expected, split))
    # One-hot rows say how many classes there are.
    assert got.num_classes == {"one_hot": 5, "bool": 2}.get(form, 3)


@pytest.mark.parametrize(
    "labels, expected",
    [
        (np.full((30, 3), 1 / 3), r"has rows of shape \(3,\) that are not one-hot"),
        (np.arange(30) % 3 + 0.5, r"must hold whole class ids; it holds fractional"),
        (
            np.array(list("abc"))[np.arange(30) % 3],
            r"must hold integer class indices.*map class names to ids first",
        ),
        (np.zeros((30, 1, 1), np.int64), r"must be class ids of shape \[n\]"),
    ],
)
def test_npz_labels_that_are_no_class_ids_are_refused_naming_the_file(tmp_path, labels, expected):
    path = _write_npz(tmp_path / "data.npz")
    with np.load(path) as f:
        arrays = dict(f)
    arrays["y_train"] = labels
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"In '.*data.npz', y_train " + expected):
        kd.load_dataset(path)


def test_npz_test_classes_never_trained_are_named_in_a_warning(tmp_path):
    path = _write_npz(tmp_path / "data.npz", classes=3)
    with np.load(path) as f:
        arrays = dict(f)
    arrays["y_test"] = np.arange(10) % 5  # classes 3 and 4 only in the test split
    np.savez(path, **arrays)
    with pytest.warns(UserWarning, match=r"y_test holds the classes \[3, 4\], which y_train never"):
        splits = kd.load_dataset(path)
    assert splits.num_classes == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kd.load_dataset(_write_npz(tmp_path / "fine.npz", classes=3))


@pytest.mark.skipif(not os.path.exists(PARTIAL_CIFAR10), reason="shared data not present")
def test_partial_cifar10_npz():
    splits = kd.load_dataset(PARTIAL_CIFAR10, train_size=1000, seed=0)
    assert splits.x_train.shape == (1000, 32, 32, 3)
    assert splits.x_test.shape == (1017, 32, 32, 3)
    assert splits.num_classes == 10
    assert np.bincount(splits.y_train).tolist() == [100] * 10
    # The published CIFAR-10 statistics agree with the partial copy's.
    np.testing.assert_allclose(splits.mean, kd.CIFAR10_MEAN, atol=0.005)
    np.testing.assert_allclose(splits.std, kd.CIFAR10_STD, atol=0.005)


# ---------------------------------------------------------- arguments --


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="cifar10.*svhn_cropped.*digits"):
        kd.load_dataset("imagenet")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"train_fraction": 0.0}, "train_fraction"),
        ({"train_fraction": 1.5}, "train_fraction"),
        ({"train_fraction": -0.2}, "train_fraction"),
        ({"train_fraction": "half"}, "train_fraction"),
        ({"train_size": 0}, "train_size"),
        ({"train_size": 2.5}, "train_size"),
        ({"train_size": 10_000}, "at most 1437"),
        ({"train_fraction": 0.5, "train_size": 10}, "at most one"),
        ({"train_size": 9}, r"subset of 9 example\(s\) .* each of its 10 classes"),
        ({"train_fraction": 0.001}, r"subset of 1 example\(s\) .* each of its 10 classes"),
        ({"num_classes": 3}, "num_classes"),
    ],
)
def test_bad_subset_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kd.load_dataset("digits", **kwargs)


def test_bad_arguments_fail_before_loading():
    # No TFDS data and no mock: the argument check must come first.
    with pytest.raises(ValueError, match="train_fraction"):
        kd.load_dataset("cifar10", train_fraction=2.0, download=False)
    with pytest.raises(ValueError, match="image_size"):
        kd.load_dataset("cifar10", image_size=16, download=False)


def test_balanced_counts_water_filling():
    assert balanced_counts([5, 5, 5], 7).tolist() == [3, 2, 2]
    assert balanced_counts([1, 10, 10], 9).tolist() == [1, 4, 4]
    assert balanced_counts([0, 3, 10], 12).tolist() == [0, 3, 9]
    with pytest.raises(ValueError, match="size=5"):
        balanced_counts([1, 1], 5)


# ------------------------------------------------------------ pipeline --


def _images(n=20, size=8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    y = np.arange(n) % 4
    return x, y


def _epoch(ds):
    xs, ys = zip(*[(xb.numpy(), yb.numpy()) for xb, yb in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_pipeline_eval_keeps_order_and_scales():
    x, y = _images(n=10)
    ds = kd.make_pipeline(x, y, batch_size=4, training=False)
    shapes = [tuple(xb.shape) for xb, _ in ds]
    assert shapes == [(4, 8, 8, 3), (4, 8, 8, 3), (2, 8, 8, 3)]
    xs, ys = _epoch(ds)
    assert xs.dtype == np.float32
    np.testing.assert_allclose(xs, x / 255.0, atol=1e-6)
    np.testing.assert_array_equal(ys, y)


def test_pipeline_normalization():
    x, y = _images(n=6)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ds = kd.make_pipeline(x, y, 6, training=False, normalization=(mean, std))
    xs, _ = _epoch(ds)
    np.testing.assert_allclose(xs, (x / 255.0 - mean) / std, atol=1e-5)
    ds = kd.make_pipeline(x, y, 6, training=False, normalization="cifar10")
    xs, _ = _epoch(ds)
    expected = (x / 255.0 - kd.CIFAR10_MEAN) / kd.CIFAR10_STD
    np.testing.assert_allclose(xs, expected, atol=1e-5)


def test_pipeline_float_input_is_not_rescaled():
    x, y = _images(n=4, channels=1)
    xf = x.astype(np.float32) / 255.0
    xs, _ = _epoch(kd.make_pipeline(xf, y, 4, training=False))
    np.testing.assert_allclose(xs, xf)


def test_pipeline_training_shuffles_all_examples():
    x, y = _images(n=20)
    ds = kd.make_pipeline(x, y, 8, training=True, augment="none", seed=0, drop_remainder=True)
    batches = [tuple(xb.shape) for xb, _ in ds]
    assert batches == [(8, 8, 8, 3)] * 2
    xs, ys = _epoch(kd.make_pipeline(x, y, 8, training=True, augment="none", seed=0))
    assert not np.array_equal(ys, y)  # shuffled
    order = _row_index(x, np.round(xs * 255).astype(np.uint8))
    assert sorted(order.tolist()) == list(range(20))  # a permutation
    np.testing.assert_array_equal(y[order], ys)  # labels follow images


@pytest.mark.parametrize("augment", kd.AUGMENTATIONS)
def test_augmentation_keeps_shape_and_range(augment):
    x, y = _images(n=16, size=16)
    ds = kd.make_pipeline(x, y, 8, training=True, augment=augment, seed=1)
    for xb, yb in ds:
        assert tuple(xb.shape) == (8, 16, 16, 3)
        assert xb.dtype == tf.float32 and yb.dtype == tf.int64
        assert float(tf.reduce_min(xb)) >= 0.0
        assert float(tf.reduce_max(xb)) <= 1.0


@pytest.mark.parametrize("augment", ["standard", "strong"])
def test_augmentation_deterministic_with_seed(augment):
    x, y = _images(n=8, size=16)

    def make(seed):
        return kd.make_pipeline(x, y, 4, training=True, augment=augment, seed=seed)

    first = make(3)
    epoch1 = _epoch(first)
    epoch2 = _epoch(first)
    again = _epoch(make(3))
    other = _epoch(make(4))
    np.testing.assert_array_equal(epoch1[0], again[0])
    np.testing.assert_array_equal(epoch1[1], again[1])
    assert not np.array_equal(epoch1[0], other[0])
    assert not np.array_equal(epoch1[0], epoch2[0])  # new draws every epoch


def test_standard_augmentation_changes_images():
    x, y = _images(n=16, size=16)
    plain, _ = _epoch(kd.make_pipeline(x, y, 16, training=True, augment="none", seed=0))
    aug, _ = _epoch(kd.make_pipeline(x, y, 16, training=True, augment="standard", seed=0))
    assert not np.array_equal(plain, aug)
    # Evaluation ignores `augment`.
    ev, _ = _epoch(kd.make_pipeline(x, y, 16, training=False, augment="strong", seed=0))
    np.testing.assert_allclose(ev, x / 255.0, atol=1e-6)


def test_apply_crop_flip_matches_numpy():
    rng = np.random.default_rng(0)
    images = rng.random((3, 5, 6, 2)).astype(np.float32)
    pad = 2
    offsets = np.array([[2, 2], [0, 4], [3, 1]], np.int32)
    flips = np.array([False, True, False])
    out = kd.apply_crop_flip(images, offsets, flips, pad).numpy()
    padded = np.pad(images, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    for i, (r, c) in enumerate(offsets):
        expected = padded[i, r : r + 5, c : c + 6]
        if flips[i]:
            expected = expected[:, ::-1]
        np.testing.assert_array_equal(out[i], expected)
    np.testing.assert_array_equal(out[0], images[0])  # centre, no flip


def test_draw_crop_flip():
    offsets, flips = kd.draw_crop_flip(500, tf.constant([1, 2]), pad=4)
    offsets, flips = offsets.numpy(), flips.numpy()
    assert offsets.shape == (500, 2)
    assert offsets.min() == 0 and offsets.max() == 8
    assert 0.4 < flips.mean() < 0.6
    again = kd.draw_crop_flip(500, tf.constant([1, 2]), pad=4)[0].numpy()
    np.testing.assert_array_equal(offsets, again)
    _, no_flips = kd.draw_crop_flip(500, tf.constant([1, 2]), 4, flip=False)
    assert not no_flips.numpy().any()


def test_make_pipelines_uses_splits():
    splits = kd.load_dataset("digits", image_size=16, train_size=100)
    train, test = kd.make_pipelines(splits, 32, seed=0, eval_batch_size=90)
    xb, yb = next(iter(train))
    assert tuple(xb.shape) == (32, 16, 16, 1)
    assert [int(b.shape[0]) for b, _ in test] == [90, 90, 90, 90]
    xs, ys = _epoch(test)
    expected = (splits.x_test - splits.mean[0]) / splits.std[0]
    np.testing.assert_allclose(xs, expected, atol=1e-5)
    np.testing.assert_array_equal(ys, splits.y_test)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"augment": "mixup"}, "augment.*standard"),
        ({"normalization": "imagenet"}, "imagenet"),
        ({"normalization": "svhn_cropped"}, "svhn_cropped"),
        ({"normalization": ((0.5,), (0.0,))}, "positive"),
        ({"batch_size": 0}, "batch_size"),
        ({"erasing_probability": 2.0}, "erasing_probability"),
    ],
)
def test_pipeline_bad_arguments(kwargs, match):
    x, y = _images(n=4)
    args = {"batch_size": 2, "training": True, **kwargs}
    with pytest.raises(ValueError, match=match):
        kd.make_pipeline(x, y, **args)


def test_pipeline_bad_arrays():
    x, y = _images(n=4)
    with pytest.raises(ValueError, match="shape"):
        kd.make_pipeline(x[0], y, 2, training=False)
    with pytest.raises(ValueError, match="match"):
        kd.make_pipeline(x, y[:3], 2, training=False)
    with pytest.raises(ValueError, match="dtype"):
        kd.make_pipeline(x.astype(np.int32), y, 2, training=False)


def test_epoch_keyed_stream_starts_where_a_resumed_run_needs_it():
    """Epoch k of the stream from `start_epoch=k` equals epoch k of the stream from 0."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    y = np.arange(20) % 4
    steps = 3  # ceil(20 / 8)

    def batches(start, count, seed=7):
        stream = kd.make_pipeline(
            x, y, 8, training=True, augment="standard", seed=seed, start_epoch=start
        )
        return [(xb.numpy(), yb.numpy()) for xb, yb in stream.take(count)]

    from_zero, from_two = batches(0, 4 * steps), batches(2, 2 * steps)
    for (xa, ya), (xb, yb) in zip(from_zero[2 * steps :], from_two):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # Each epoch is a permutation of all examples, and epochs differ.
    epoch_labels = [
        np.concatenate([b[1] for b in from_zero[e * steps : (e + 1) * steps]]) for e in range(4)
    ]
    assert all(sorted(labels.tolist()) == sorted(y.tolist()) for labels in epoch_labels)
    assert not np.array_equal(epoch_labels[0], epoch_labels[1])
    assert not np.array_equal(batches(0, 1)[0][0], batches(0, 1, seed=8)[0][0])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(start_epoch=0, seed=None), "int `seed`"),
        (dict(start_epoch=0, training=False), "training=True"),
        (dict(start_epoch=-1), "int >= 0"),
        (dict(start_epoch=1.5), "int >= 0"),
        (dict(start_epoch=0, drop_remainder=True, batch_size=8), "make no batch of 8"),
    ],
)
def test_start_epoch_is_checked(kwargs, match):
    args = dict(training=True, seed=0, batch_size=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        kd.make_pipeline(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4), **args)


# -- a folder of class subfolders ------------------------------------------


def test_folder_data_set_reads_the_images_and_holds_out_a_fixed_stratified_split(tmp_path):
    from tests.folder_data import write_digit_folder

    images, labels, paths = write_digit_folder(str(tmp_path / "train"), per_class=10)
    splits = kd.load_dataset(str(tmp_path / "train"), color_mode="grayscale")
    assert splits.class_names == ("digit_0", "digit_1", "digit_2")
    assert splits.num_classes == 3 and splits.input_shape == (8, 8, 1)
    # A fifth of every class held out, the rest trained on, no file in both.
    assert np.bincount(splits.y_test).tolist() == [2, 2, 2]
    assert splits.train_size == 24
    assert not set(splits.x_train.paths) & set(splits.x_test.paths)
    # The same images every time (and whatever the run's seed).
    again = kd.load_dataset(str(tmp_path / "train"), seed=5)
    assert list(again.x_test.paths) == list(splits.x_test.paths)
    # Labels follow the subfolders; pixels are the PNGs' own (no resize at 8x8).
    by_path = dict(zip(paths, zip(images, labels)))
    ds = kd.make_pipeline(splits.x_test, splits.y_test, 4, training=False)
    x, y = (np.concatenate(a) for a in zip(*ds.as_numpy_iterator()))
    for path, image, label in zip(splits.x_test.paths, x, y):
        np.testing.assert_allclose(image[..., 0], by_path[path][0] / 255.0, atol=1e-7)
        assert label == by_path[path][1]


def test_folder_data_set_with_a_test_folder_resize_and_subset(tmp_path):
    from tests.folder_data import write_digit_folder

    write_digit_folder(str(tmp_path / "train"), per_class=10)
    write_digit_folder(str(tmp_path / "test"), per_class=4, offset=50)
    splits = kd.load_dataset(
        str(tmp_path / "train"),
        test_dataset=str(tmp_path / "test"),
        image_size=16,
        train_size=12,
        seed=1,
        color_mode="grayscale",
    )
    assert splits.test_size == 12 and np.bincount(splits.y_test).tolist() == [4, 4, 4]
    assert splits.train_size == 12 and np.bincount(splits.y_train).tolist() == [4, 4, 4]
    x, _ = next(
        kd.make_pipeline(
            splits.x_train, splits.y_train, 12, training=True, seed=0
        ).as_numpy_iterator()
    )
    assert x.shape == (12, 16, 16, 1)
    write_digit_folder(str(tmp_path / "other"), per_class=2, classes=(0, 1, 7))
    with pytest.raises(ValueError, match="same class subfolders"):
        kd.load_dataset(str(tmp_path / "train"), test_dataset=str(tmp_path / "other"))
    with pytest.raises(ValueError, match="test_dataset"):
        kd.load_dataset("digits", test_dataset=str(tmp_path / "test"))
    # The training folder as its own test folder: refused, not an accuracy on seen images.
    with pytest.raises(ValueError, match=r"shares 30 image\(s\) with the training folder"):
        kd.load_dataset(str(tmp_path / "train"), test_dataset=str(tmp_path / "train"))


def test_folder_images_stream_from_disk_every_epoch(tmp_path):
    """Nothing is cached: an image changed on disk is read anew the next pass."""
    from PIL import Image

    from tests.folder_data import write_digit_folder

    write_digit_folder(str(tmp_path / "train"), per_class=5)
    splits = kd.load_dataset(str(tmp_path / "train"))
    for epoch_keyed in (False, True):
        ds = kd.make_pipeline(
            splits.x_train,
            splits.y_train,
            64,
            training=True,
            augment="none",
            seed=0,
            start_epoch=0 if epoch_keyed else None,
        )
        first, _ = next(iter(ds))
        assert float(np.max(first)) > 0
        for path in splits.x_train.paths:
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
        second, _ = next(iter(ds))
        assert float(np.max(second)) == 0.0
        write_digit_folder(str(tmp_path / "train"), per_class=5)  # restore


def test_data_arguments_from_a_config_or_its_json():
    from keras_gmix.config import data_arguments
    from keras_gmix.train import TrainConfig

    config = TrainConfig(dataset="digits", image_size=16, seed=3)
    expected = {
        "name": "digits",
        "download": True,
        "image_size": 16,
        "color_mode": "rgb",
        "seed": 3,
    }
    assert data_arguments(config) == expected
    assert data_arguments({**config.to_dict(), "method": "erm"}) == expected


def _write_mixed_mode_folder(root):
    """Two classes of 8x8 images; the first file (sorted) grayscale, the others
    RGB, RGBA, grayscale + alpha and a palette GIF. Returns the paths."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for label in ("a", "b"):
        os.makedirs(os.path.join(root, label))
        for i, (mode, ext) in enumerate(
            [("L", "png"), ("RGB", "png"), ("RGBA", "png"), ("LA", "png"), ("RGB", "gif")]
        ):
            channels = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2}[mode]
            pixels = rng.integers(0, 256, (8, 8, channels), dtype=np.uint8)
            image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
            path = os.path.join(root, label, f"{i}.{ext}")
            image.save(path)
            paths.append(path)
    return paths


@pytest.mark.parametrize("color_mode, pil_mode", [("rgb", "RGB"), ("grayscale", "L")])
def test_folder_images_are_converted_to_one_color_mode(tmp_path, color_mode, pil_mode):
    """Whatever the first image's mode: every image in the mode asked for, with
    PIL's conversion of the same file as the reference (luma within 1 level:
    PIL rounds ITU-R 601 weights in integers)."""
    from PIL import Image

    paths = _write_mixed_mode_folder(str(tmp_path / "images"))
    arguments = {} if color_mode == "rgb" else {"color_mode": color_mode}
    splits = kd.load_dataset(str(tmp_path / "images"), **arguments)
    channels = 3 if color_mode == "rgb" else 1
    assert splits.input_shape == (8, 8, channels)
    files = kd.ImageFiles(paths, splits.input_shape)
    ds = kd.make_pipeline(files, np.zeros(len(paths), np.int64), 16, training=False)
    x = next(ds.as_numpy_iterator())[0]
    assert x.shape == (len(paths), 8, 8, channels)
    for path, image in zip(paths, x):
        reference = np.asarray(Image.open(path).convert(pil_mode), np.float64)
        reference = reference.reshape(8, 8, channels)
        np.testing.assert_allclose(image * 255.0, reference, atol=1.0 if channels == 1 else 1e-3)
    with pytest.raises(ValueError, match="`color_mode` applies only to folders"):
        kd.load_dataset("digits", color_mode="grayscale")


# -- .npz files with bad content: one sentence through gmix-train -------------------


def _npz_case(path, case):
    rng = np.random.default_rng(0)
    arrays = dict(
        x_train=rng.random((16, 8, 8, 3)).astype(np.float32),
        y_train=np.arange(16) % 2,
        x_test=rng.random((8, 8, 8, 3)).astype(np.float32),
        y_test=np.arange(8) % 2,
    )
    if case == "nan-test":
        arrays["x_test"][3, 1, 1, 0] = np.nan
    elif case == "nan-train":
        arrays["x_train"][5, 2, 2, 2] = np.inf
    elif case == "one-class":
        arrays["y_train"][:] = 0
        arrays["y_test"][:] = 0
    elif case == "no-train":
        arrays["x_train"], arrays["y_train"] = arrays["x_train"][:0], arrays["y_train"][:0]
    elif case == "no-test":
        arrays["x_test"], arrays["y_test"] = arrays["x_test"][:0], arrays["y_test"][:0]
    elif case == "test-size":
        arrays["x_test"] = arrays["x_test"][:, :4, :4]
    elif case == "strings":
        arrays["x_train"] = np.full((16, 8, 8, 1), "a")
    elif case == "mixed-dtypes":  # float 0..255 test images beside uint8 training ones
        arrays["x_train"] = (arrays["x_train"] * 255).astype(np.uint8)
        arrays["x_test"] = arrays["x_test"] * 255
    elif case == "channels-first":
        arrays["x_train"] = np.transpose(arrays["x_train"], (0, 3, 1, 2))
        arrays["x_test"] = np.transpose(arrays["x_test"], (0, 3, 1, 2))
    elif case == "stray-id":
        arrays["y_train"][0] = 999
    elif case == "huge-id":
        arrays["y_train"][0] = 10**9
    elif case == "short-names":
        arrays["y_train"][0] = 2
        arrays["label_names"] = np.array(["a", "b"])
    np.savez(path, **arrays)
    if case == "zero-bytes":
        open(path, "wb").close()
    elif case == "truncated":
        content = open(path, "rb").read()
        open(path, "wb").write(content[: len(content) // 2])
    elif case == "not-zip":
        open(path, "w").write("x_train,y_train\n1,2\n")


@pytest.mark.parametrize(
    "case, expected",
    [
        ("nan-test", r"x_test holds NaN or inf values in 1 image\(s\) \(the first at index 3\)"),
        ("nan-train", r"x_train holds NaN or inf values in 1 image\(s\) \(the first at index 5\)"),
        ("one-class", r"training split of '.*data.npz' holds 1 class\(es\) \(\[0\]\)"),
        ("no-train", r"x_train holds no examples"),
        ("no-test", r"x_test holds no examples"),
        ("test-size", r"the test images are \(4, 4, 3\) and the training images \(8, 8, 3\)"),
        ("zero-bytes", r"data.npz' is unreadable \(empty, truncated or not an .npz archive"),
        ("truncated", r"data.npz' is unreadable \(empty, truncated or not an .npz archive"),
        ("not-zip", r"data.npz' holds object \(pickled\) arrays or is not an .npz archive"),
        ("strings", r"x_train has dtype <U1: images must be uint8"),
        ("mixed-dtypes", r"x_train is uint8 and x_test float32: .* scaled differently"),
        ("channels-first", r"shape \(16, 3, 8, 8\): its images look channels first"),
        ("stray-id", r"ids run up to 999 \(1000 classes\), but only 3 of them occur"),
        ("huge-id", r"ids run up to 1000000000 .* only 3 of them occur"),
        ("short-names", r"labels outside \[0, 2\) \(from 0 to 2\).*label_names names 2"),
    ],
)
def test_a_bad_npz_is_refused_in_one_sentence_and_leaves_no_run_folder(
    tmp_path, case, expected, capsys
):
    from keras_gmix import cli

    path, output = str(tmp_path / "data.npz"), str(tmp_path / "run")
    _npz_case(path, case)
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--dataset", path, "--output", output, "--epochs", "1", "--verbose", "0"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert error.startswith("gmix-train: error: ") and error.count("\n") == 1, error
    assert re.search(expected, error), error
    assert "Traceback" not in error
    # Refused while loading: no config.json, no .lock, no folder that looks like a run.
    assert not os.path.exists(output)


# -- image folders with bad content: one sentence through gmix-train ------------------


@pytest.mark.parametrize("case", ["corrupt-train", "corrupt-test", "empty-class", "one-class"])
def test_a_bad_image_folder_is_refused_naming_what_is_wrong(tmp_path, case, capsys):
    from keras_gmix import cli
    from tests.folder_data import write_digit_folder

    train_dir, test_dir = str(tmp_path / "train"), str(tmp_path / "test")
    classes = (0,) if case == "one-class" else (0, 1)
    _, _, paths = write_digit_folder(train_dir, per_class=6, classes=classes)
    _, _, test_paths = write_digit_folder(test_dir, per_class=3, classes=classes, offset=30)
    bad = {"corrupt-train": paths[-2], "corrupt-test": test_paths[1]}.get(case)
    if bad:
        content = open(bad, "rb").read()
        open(bad, "wb").write(content[: len(content) // 3])
    if case == "empty-class":
        os.makedirs(os.path.join(train_dir, "digit_9"))
        os.makedirs(os.path.join(test_dir, "digit_9"))
    output = str(tmp_path / "run")
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(
            ["--dataset", train_dir, "--test-dataset", test_dir, "--output", output]
            + ["--epochs", "1", "--verbose", "0"]
        )
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error, error
    named = rf"1 image file\(s\) cannot be read as images .*: {re.escape(bad or '')}\."
    expected = {
        "corrupt-train": named,
        "corrupt-test": named,
        "empty-class": r"class subfolders \['digit_9'\] of '.*train' hold no image files",
        "one-class": r"training split of '.*train' holds 1 class\(es\) \(\[0\]\): a classifier",
    }[case]
    assert re.search(expected, error), error
    assert not os.path.exists(output)


def test_an_absurd_image_size_is_refused_before_reading(tmp_path, capsys):
    from keras_gmix import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--dataset", "digits", "--image-size", "100000", "--output", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "Argument `image_size` must be an integer in [1, 4096]" in capsys.readouterr().err


class _Payload:
    """Unpickling it would create the file `path`: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_an_npz_with_pickled_arrays_is_refused_unread(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "data.npz"
    images = np.zeros((4, 8, 8, 3), np.uint8)
    np.savez(
        path,
        x_train=images,
        y_train=np.arange(4),
        x_test=images,
        y_test=np.arange(4),
        label_names=np.array([_Payload(str(marker))], dtype=object),
    )
    with pytest.raises(ValueError, match="object \\(pickled\\) arrays"):
        kd.load_dataset(str(path))
    assert not marker.exists()
