"""Everything Keras' fit takes, and the user's own images (issue 20).

Each input form trains through `GMixModel.fit` with a mixing and a
partitioned method; where the numbers matter they are checked against
`apply_mix` by hand. The folder data set trains through `gmix-train`.
"""

import json
import os

import numpy as np
import pytest

from keras_gmix import cli
from tests.folder_data import write_digit_folder

# -- gmix-train on a folder of class subfolders ------------------------------


def test_gmix_train_on_a_folder_of_png_images(tmp_path, capsys):
    write_digit_folder(str(tmp_path / "images"), per_class=30)
    output = str(tmp_path / "run")
    code = cli.train_main(
        [
            "--dataset",
            str(tmp_path / "images"),
            "--image-size",
            "8",
            "--epochs",
            "6",
            "--batch-size",
            "16",
            "--method",
            "dgmix",
            "--output",
            output,
            "--verbose",
            "0",
        ]
    )
    assert code == 0
    results = json.load(open(os.path.join(output, "results.json")))
    assert results["class_names"] == ["digit_0", "digit_1", "digit_2"]
    assert results["train_size"] == 72 and results["test_size"] == 18
    # Three well-separated digits: well above chance (1/3) after six short epochs.
    assert results["test_accuracy"] > 0.8
    config = json.load(open(os.path.join(output, "config.json")))
    assert config["dataset"] == str(tmp_path / "images") and config["test_dataset"] is None


def test_gmix_train_with_a_test_folder_and_a_bad_folder(tmp_path, capsys):
    write_digit_folder(str(tmp_path / "train"), per_class=10)
    write_digit_folder(str(tmp_path / "test"), per_class=5, offset=40)
    output = str(tmp_path / "run")
    code = cli.train_main(
        [
            "--dataset",
            str(tmp_path / "train"),
            "--test-dataset",
            str(tmp_path / "test"),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--method",
            "bgmix",
            "--output",
            output,
            "--verbose",
            "0",
        ]
    )
    assert code == 0
    results = json.load(open(os.path.join(output, "results.json")))
    assert results["train_size"] == 30 and results["test_size"] == 15
    # A folder that is not a data set: one sentence, exit code 2.
    os.makedirs(tmp_path / "empty" / "a")
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--dataset", str(tmp_path / "empty"), "--output", str(tmp_path / "run2")])
    assert exit_info.value.code == 2
    assert "one subfolder per class" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.train_main(["--dataset", "digits", "--test-dataset", str(tmp_path / "test")])
    assert "needs a folder" in capsys.readouterr().err


# -- GMixModel.fit takes what Keras' fit takes --------------------------------

import warnings  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_gmix as kg  # noqa: E402
from keras_gmix import labels as labels_lib  # noqa: E402
from keras_gmix import losses as losses_lib  # noqa: E402
from keras_gmix import mixing  # noqa: E402

N, BATCH = 32, 8
RNG = np.random.default_rng(0)
X = RNG.normal(size=(N, 6)).astype("float32")
IMAGES = RNG.normal(size=(N, 4, 4, 1)).astype("float32")
Y = RNG.integers(0, 3, N)


def dense_model(units=3, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(units)]
    )


def gmix(inner, method, loss=None, loss_weights=None, metrics=("accuracy",), **kwargs):
    model = kg.GMixModel(inner, method=method, seed=3, **kwargs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        loss_weights=loss_weights,
        metrics=list(metrics),
    )
    return model


def weights(model):
    return [np.array(v) for v in model.inner.trainable_variables]


def batches():
    for start in range(0, N, BATCH):
        yield X[start : start + BATCH], Y[start : start + BATCH]


class Batches(keras.utils.PyDataset):
    def __len__(self):
        return N // BATCH

    def __getitem__(self, index):
        return X[index * BATCH : (index + 1) * BATCH], Y[index * BATCH : (index + 1) * BATCH]


def fit_form(model, form):
    if form == "arrays":
        return model.fit(X, Y, batch_size=BATCH, shuffle=False, epochs=1, verbose=0)
    if form == "tf.data":
        return model.fit(
            tf.data.Dataset.from_tensor_slices((X, Y)).batch(BATCH), epochs=1, verbose=0
        )
    if form == "generator":
        return model.fit(batches(), steps_per_epoch=N // BATCH, epochs=1, verbose=0)
    return model.fit(
        Batches(), epochs=1, shuffle=False, verbose=0
    )  # fit shuffles a PyDataset's batches


@pytest.mark.parametrize("method", ["mixup", "dgmix"])
@pytest.mark.parametrize("form", ["tf.data", "generator", "PyDataset"])
def test_every_data_form_trains_exactly_like_arrays(form, method):
    """The same batches in the same order give the same weights, bit for bit."""
    reference = gmix(dense_model(), method)
    fit_form(reference, "arrays")
    model = gmix(dense_model(), method)
    history = fit_form(model, form)
    assert np.isfinite(history.history["loss"][0])
    for a, b in zip(weights(reference), weights(model)):
        np.testing.assert_array_equal(a, b)


def test_two_inputs_are_mixed_with_one_lambda_and_one_partner():
    a, b = tf.constant(X[:BATCH]), tf.constant(IMAGES[:BATCH])
    y = tf.one_hot(Y[:BATCH], 3)
    lam, perm = tf.constant(0.3), tf.constant([3, 0, 1, 2, 7, 6, 5, 4])
    (a_mix, b_mix), y_mix, _ = mixing.mix_batch([a, b], y, lam, perm)
    np.testing.assert_allclose(a_mix, kg.apply_mix(a, y, lam, perm)[0])
    np.testing.assert_allclose(b_mix, kg.apply_mix(b, y, lam, perm)[0])
    np.testing.assert_allclose(a_mix, 0.3 * X[:BATCH] + 0.7 * X[:BATCH][perm.numpy()], rtol=1e-6)
    np.testing.assert_allclose(y_mix, kg.apply_mix(a, y, lam, perm)[1])
    # The model's own draw: every input with the same (lambda, perm).
    inputs = {"a": keras.Input((6,), name="a"), "b": keras.Input((4, 4, 1), name="b")}
    joined = keras.layers.Concatenate()([inputs["a"], keras.layers.Flatten()(inputs["b"])])
    model = kg.GMixModel(keras.Model(inputs, keras.layers.Dense(3)(joined)), method="dgmix", seed=3)
    seed = model.mixing_seed(5)
    mixed, y_model, _, _ = model.mix_data({"a": a, "b": b}, y, None, seed)
    lam, perm = kg.sample_mix(BATCH, 1.0, seed=mixing.split_seed(seed, 2)[0])
    np.testing.assert_array_equal(mixed["a"], kg.apply_mix(a, y, lam, perm)[0])
    np.testing.assert_array_equal(mixed["b"], kg.apply_mix(b, y, lam, perm)[0])
    np.testing.assert_array_equal(y_model, kg.apply_mix(a, y, lam, perm)[1])
    # And it trains from a dict and from a list of arrays, mixed and partitioned.
    for method in ("mixup", "bgmix"):
        model = gmix(model.inner, method)
        assert np.isfinite(
            model.fit({"a": X, "b": IMAGES}, Y, batch_size=BATCH, verbose=0).history["loss"][0]
        )
        assert np.isfinite(
            model.fit([X, IMAGES], Y, batch_size=BATCH, verbose=0).history["loss"][0]
        )


def test_cutmix_pastes_into_image_inputs_and_blends_the_others_like_the_label():
    a, b = tf.constant(X[:BATCH]), tf.constant(IMAGES[:BATCH])
    y = tf.one_hot(Y[:BATCH], 3)
    lam, perm, center = (
        tf.constant(0.6),
        tf.constant([1, 0, 3, 2, 5, 4, 7, 6]),
        tf.constant([0.4, 0.5]),
    )
    (a_mix, b_mix), y_mix, label_lam = mixing.mix_batch(
        [a, b], y, lam, perm, mix="cutmix", box_center=center
    )
    b_ref, y_ref = kg.apply_mix(b, y, lam, perm, mix="cutmix", box_center=center)
    np.testing.assert_array_equal(b_mix, b_ref)
    np.testing.assert_array_equal(y_mix, y_ref)
    np.testing.assert_allclose(a_mix, kg.apply_mix(a, y, label_lam, perm)[0])
    with pytest.raises(ValueError, match="needs image batches of rank 4"):
        mixing.mix_batch([a, a], y, lam, perm, mix="cutmix")
    with pytest.raises(ValueError, match="share their height and width"):
        mixing.mix_batch([b, tf.zeros([BATCH, 5, 5, 1])], y, lam, perm, mix="cutmix")


def test_integer_inputs_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="floating-point values.*method='sam'"):
        mixing.mix_batch(tf.constant(Y[:BATCH]), tf.one_hot(Y[:BATCH], 3), 0.5, tf.range(BATCH))


@pytest.mark.parametrize("activation", [None, "sigmoid"])
def test_binary_labels_with_one_output_unit_mix_as_probabilities(activation):
    labels = (Y > 0).astype("int64")
    y_soft, kind = labels_lib.labels_to_one_hot(labels[:BATCH], 1)
    assert kind == "binary" and y_soft.shape == (BATCH, 1)
    lam, perm = tf.constant(0.25), tf.constant([7, 6, 5, 4, 3, 2, 1, 0])
    _, y_mix, _ = mixing.mix_batch(tf.constant(X[:BATCH]), y_soft, lam, perm)
    expected = 0.25 * labels[:BATCH] + 0.75 * labels[:BATCH][::-1]
    np.testing.assert_allclose(y_mix[:, 0], expected)
    # Metrics see the dominant label, 0 or 1, in the user's shape and dtype.
    shown = labels_lib.metric_labels(tf.constant(labels[:BATCH]), y_mix, kind, mixed=True)
    np.testing.assert_array_equal(shown, np.round(expected).astype("int64"))
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1, activation=activation)])
    loss = keras.losses.BinaryCrossentropy(from_logits=activation is None)
    for method in ("mixup", "dgmix"):
        model = gmix(inner, method, loss=loss)
        history = model.fit(X, labels.astype("float32"), batch_size=BATCH, verbose=0).history
        assert np.isfinite(history["loss"][0]) and 0 <= history["accuracy"][0] <= 1
    with pytest.raises(ValueError, match="one output unit"):
        model.fit(X, labels + 1, batch_size=BATCH, verbose=0)


def test_integer_one_hot_labels_train_like_float_one_hot_and_class_ids():
    results = []
    for labels, loss in (
        (np.eye(3, dtype="int64")[Y], keras.losses.CategoricalCrossentropy(from_logits=True)),
        (np.eye(3, dtype="float32")[Y], keras.losses.CategoricalCrossentropy(from_logits=True)),
        (Y, keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
    ):
        model = gmix(dense_model(), "bgmix", loss=loss)
        model.fit(X, labels, batch_size=BATCH, shuffle=False, verbose=0)
        results.append(weights(model))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def two_output_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    return keras.Model(
        inputs,
        [
            keras.layers.Dense(3, name="cls")(hidden),
            keras.layers.Dense(1, activation="sigmoid", name="bin")(hidden),
        ],
    )


def test_several_outputs_sum_their_losses_as_keras_does():
    inner = two_output_model()
    labels = [Y, (Y > 0).astype("float32")]
    losses = [keras.losses.SparseCategoricalCrossentropy(from_logits=True), "binary_crossentropy"]
    per_output = [["accuracy"], ["accuracy"]]  # Keras asks for metrics per output
    model = gmix(inner, "bgmix", loss=losses, loss_weights=[1.0, 0.5], metrics=per_output)
    keras_loss = model.evaluate(X, labels, batch_size=N, verbose=0, return_dict=True)["loss"]
    fn = losses_lib.per_example_loss(losses, ["cls", "bin"], [1.0, 0.5])
    soft = [labels_lib.labels_to_one_hot(t, w)[0] for t, w in zip(labels, (3, 1))]
    per_example = fn(soft, inner(X))
    assert per_example.shape == (N,)
    np.testing.assert_allclose(float(tf.reduce_mean(per_example)), keras_loss, rtol=1e-5)
    for method in ("mixup", "bgmix"):
        model = gmix(inner, method, loss=losses, loss_weights=[1.0, 0.5], metrics=per_output)
        logs = model.fit(X, labels, batch_size=BATCH, verbose=0).history
        assert np.isfinite(logs["loss"][0]) and "cls_accuracy" in logs and "bin_accuracy" in logs
        logs = model.fit(
            X, {"cls": labels[0], "bin": labels[1]}, batch_size=BATCH, verbose=0
        ).history
        assert np.isfinite(logs["loss"][0])
    with pytest.raises(ValueError, match="2 outputs"):
        model.fit(X, Y, batch_size=BATCH, verbose=0)


def test_a_data_set_without_labels_is_refused_before_training():
    model = gmix(dense_model(), "gmix")
    before = weights(model)
    with pytest.raises(ValueError, match="inputs without labels"):
        model.fit(tf.data.Dataset.from_tensor_slices(X).batch(BATCH), verbose=0)
    for a, b in zip(before, weights(model)):
        np.testing.assert_array_equal(a, b)


def test_an_inner_sequential_that_was_never_built_trains():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(3)])
    for method in ("mixup", "dgmix"):
        model = gmix(inner, method)
        assert np.isfinite(model.fit(X, Y, batch_size=BATCH, verbose=0).history["loss"][0])


def soft_warnings(method, labels, epochs=2):
    model = gmix(dense_model(), method, loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    data = tf.data.Dataset.from_tensor_slices((X, labels)).batch(BATCH)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(data, epochs=epochs, verbose=0)
        model.fit(X, labels, batch_size=BATCH, verbose=0)
    return [w for w in caught if "mixed twice" in str(w.message)]


def test_labels_that_arrive_soft_warn_once_that_they_are_mixed_twice():
    hard = np.eye(3, dtype="float32")[Y]
    # As Keras' MixUp layer leaves them: soft rows.
    soft = 0.7 * hard + 0.3 * hard[::-1]
    caught = soft_warnings("gmix", soft)
    assert len(caught) == 1 and "method='sam'" in str(caught[0].message)
    assert soft_warnings("gmix", hard) == []
    assert soft_warnings("sam", soft) == []
