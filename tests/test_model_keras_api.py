"""GMixModel (model.py) where a Keras user reaches past `fit`: loss reductions,
weights, layers, train_on_batch, export, fine-tuning, losses it cannot use.

Every test compares with plain Keras on the same data and weights, or with
numbers worked out by hand.
"""

import os
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_gmix as kg
from keras_gmix import gradients

D, C, N = 5, 3, 16
HERE = os.path.dirname(os.path.abspath(__file__))
REDUCTIONS = ["sum", "sum_over_batch_size", "mean_with_sample_weight", None]


def network(seed=1, with_input=True):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((D,))] if with_input else []
    return keras.Sequential(
        layers
        + [
            keras.layers.Dense(8, activation="relu", name="d1"),
            keras.layers.Dense(C, name="d2"),
        ]
    )


def batch(seed=0, n=N):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype("float32")
    return x, rng.integers(0, C, n), rng.uniform(0.1, 2.0, n).astype("float32")


def sparse_loss(reduction="sum_over_batch_size"):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)


def compile_model(model, learning_rate=0.1, reduction="sum_over_batch_size", metrics=None):
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=sparse_loss(reduction),
        metrics=metrics,
    )
    return model


def one_step(model, x, y, sample_weight=None):
    """Fits one batch of everything; returns the logged loss."""
    history = model.fit(
        x, y, sample_weight=sample_weight, batch_size=len(x), epochs=1, shuffle=False, verbose=0
    )
    return history.history["loss"][0]


def numpy_weights(model):
    return [np.array(w) for w in model.get_weights()]


# -- loss reductions ------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_erm_follows_the_loss_reduction_as_keras_does(reduction, weighted):
    x, y, sw = batch()
    sw = sw if weighted else None
    wrapped = compile_model(kg.GMixModel(network(), method="erm"), reduction=reduction)
    loss_wrapped = one_step(wrapped, x, y, sw)
    loss_plain, weights_plain = plain_keras_step(reduction, x, y, sw)
    np.testing.assert_allclose(loss_wrapped, loss_plain, rtol=1e-6)
    for a, b in zip(numpy_weights(wrapped), weights_plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def plain_keras_step(reduction, x, y, sw):
    """The logged loss and the weights after one step of plain Keras.

    With `reduction=None` TensorFlow's Keras differentiates the unreduced
    losses (the gradient of their sum) and logs their mean; JAX's Keras
    cannot differentiate a vector ("Gradient only defined for
    scalar-output functions"), so there GMixModel keeps TensorFlow's
    meaning, checked against Keras' "sum" step and its batch-mean loss."""
    if reduction is None and keras.backend.backend() == "jax":
        _, weights = plain_keras_step("sum", x, y, sw)
        loss, _ = plain_keras_step("sum_over_batch_size", x, y, sw)
        return loss, weights
    plain = compile_model(network(), reduction=reduction)
    return one_step(plain, x, y, sw), numpy_weights(plain)


def mixed_batch(model, x, y, sw):
    """The batch (and sample weights) the first step of `model` trains on."""
    y_one_hot = np.eye(C, dtype="float32")[y]
    if model.method not in gradients.MIXED_METHODS:
        return x, y_one_hot, sw
    x_mix, y_mix, sw_mix, _ = model.mix_data(x, y_one_hot, sw, model.mixing_seed(1))
    to_numpy = keras.ops.convert_to_numpy
    return to_numpy(x_mix), to_numpy(y_mix), None if sw_mix is None else to_numpy(sw_mix)


def cross_entropy_by_hand(logits, y_soft):
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(y_soft * log_p).sum(axis=1)


@pytest.mark.slow  # 21 cases of two fits; erm against plain Keras stays in the default run
@pytest.mark.parametrize(
    "method,options",
    [
        ("mixup", {}),
        ("sam", {}),
        ("gmix", {}),
        ("bgmix", {}),
        ("dgmix", {}),
        ("bgmix", {"keep_first_pass": False}),
        ("dgmix", {"keep_first_pass": False}),
    ],
)
@pytest.mark.parametrize("reduction", ["sum", "mean_with_sample_weight", None])
def test_the_reduction_scales_every_methods_objective(method, options, reduction):
    """The per-example losses stay per example (the same eps, s_i and
    partition); the reduction only scales the objective. So a step with the
    reduction at learning rate lr equals a default (batch-mean) step at
    lr * scale, and the logged loss is the by-hand reduction of the mixed
    batch's per-example losses."""
    x, y, sw = batch(3)
    sw = sw if reduction == "mean_with_sample_weight" else None
    lr = 0.05
    model = compile_model(
        kg.GMixModel(network(), method=method, seed=7, **options),
        learning_rate=lr,
        reduction=reduction,
    )
    x_mix, y_mix, sw_mix = mixed_batch(model, x, y, sw)
    weighted = cross_entropy_by_hand(model.predict(x_mix, verbose=0), y_mix) * (
        1.0 if sw_mix is None else sw_mix
    )
    n = len(x)
    if reduction == "sum":
        objective_scale, logged = n, weighted.sum()
    elif reduction is None:  # Keras: gradient of the sum, the mean logged
        objective_scale, logged = n, weighted.mean()
    else:
        objective_scale, logged = float(n / sw_mix.sum()), weighted.sum() / sw_mix.sum()
    loss = one_step(model, x, y, sw)
    np.testing.assert_allclose(loss, logged, rtol=2e-5)

    reference = compile_model(
        kg.GMixModel(network(), method=method, seed=7, **options),
        learning_rate=lr * objective_scale,
    )
    one_step(reference, x, y, sw)
    for a, b in zip(numpy_weights(model), numpy_weights(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_outputs_with_different_reductions_are_refused():
    inputs = keras.Input((D,))
    hidden = keras.layers.Dense(8)(inputs)
    net = keras.Model(
        inputs,
        {
            "a": keras.layers.Dense(C, name="a")(hidden),
            "b": keras.layers.Dense(2, name="b")(hidden),
        },
    )
    model = kg.GMixModel(net, method="gmix")
    model.compile(optimizer="sgd", loss={"a": sparse_loss("sum"), "b": sparse_loss()})
    x, y, _ = batch()
    with pytest.raises(ValueError, match="one reduction"):
        model.fit(x, {"a": y, "b": y % 2}, epochs=1, verbose=0)


# -- the user's network is the user's model -------------------------------------


def trained(method="dgmix", with_input=True, **kwargs):
    x, y, _ = batch()
    model = compile_model(
        kg.GMixModel(network(with_input=with_input), method=method, **kwargs),
        metrics=["accuracy"],
    )
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return model


def summary_text(model):
    lines = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    return "\n".join(lines)


@pytest.mark.parametrize("kwargs", [{}, {"perturb_every": 2, "reuse_scale": 0.5}])
def test_weights_count_and_summary_are_the_networks(kwargs):
    model = trained(**kwargs)
    net = model.inner
    assert model.count_params() == net.count_params() == 5 * 8 + 8 + 8 * C + C
    assert [w.path for w in model.weights] == [w.path for w in net.weights]
    assert [w.path for w in model.trainable_weights] == [w.path for w in net.trainable_weights]
    assert model.non_trainable_weights == []
    for a, b in zip(model.get_weights(), net.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert summary_text(model) == summary_text(net)
    assert "Non-trainable params: 0" in summary_text(model)
    # set_weights takes the bare network's list, and sets the network.
    other = network(seed=9)
    model.set_weights(other.get_weights())
    for a, b in zip(net.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_counters_are_still_saved_and_restored(tmp_path):
    model = trained(perturb_every=2, reuse_scale=0.5)
    direction = [d.numpy() for d in model.reuse_direction]
    assert max(float(np.abs(d).max()) for d in direction) > 0
    model.save_weights(tmp_path / "model.weights.h5")
    fresh = compile_model(
        kg.GMixModel(network(seed=4), method="dgmix", perturb_every=2, reuse_scale=0.5)
    )
    fresh.load_weights(tmp_path / "model.weights.h5")
    assert int(fresh.mix_step.numpy()) == int(model.mix_step.numpy()) == 2
    for a, b in zip(fresh.reuse_direction, direction):
        np.testing.assert_array_equal(a.numpy(), b)
    for a, b in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_bare_networks_weights_file_loads_into_the_wrapped_network(tmp_path):
    """Pretrained weights saved by the network alone load with
    GMixModel.load_weights (as into a plain keras.Model of it); the
    wrapper's state stays; a file of another architecture keeps Keras' error."""
    pretrained = network(seed=7)
    pretrained.save_weights(tmp_path / "network.weights.h5")
    model = trained(perturb_every=2, reuse_scale=0.5)
    steps, direction = int(model.mix_step.numpy()), [d.numpy() for d in model.reuse_direction]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the failed first reading warns of nothing
        model.load_weights(tmp_path / "network.weights.h5")
    for got, expected in zip(model.get_weights(), pretrained.get_weights()):
        np.testing.assert_array_equal(got, expected)
    assert int(model.mix_step.numpy()) == steps
    for got, expected in zip(model.reuse_direction, direction):
        np.testing.assert_array_equal(got.numpy(), expected)
    x, y, _ = batch(8)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # and trains on from there
    keras.utils.set_random_seed(0)
    other = keras.Sequential([keras.Input((D,)), keras.layers.Dense(C)])
    other.save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(ValueError, match="could not be loaded"):
        model.load_weights(tmp_path / "other.weights.h5")


def test_layers_inputs_outputs_and_the_feature_extractor_idiom():
    model = trained()
    net = model.inner
    assert model.layers == net.layers
    assert model.get_layer("d1") is net.get_layer("d1")
    assert model.get_layer(index=1) is net.layers[1]
    extractor = keras.Model(model.inputs, model.get_layer("d1").output)
    x, _, _ = batch(5)
    kernel, bias = net.get_layer("d1").get_weights()
    np.testing.assert_allclose(
        extractor.predict(x, verbose=0), np.maximum(x @ kernel + bias, 0), rtol=1e-5, atol=1e-6
    )
    assert model.outputs[0].shape == (None, C)
    # The single-input attributes answer as the network's, and are missing
    # where the network's are (a Sequential network has no `input`).
    assert model.input_shape == net.input_shape == (None, D)
    assert model.output_shape == net.output_shape == (None, C)
    with pytest.raises(AttributeError, match="no `input`: The layer .* has never been called"):
        _ = model.input
    functional = keras.Model(net.inputs, net.outputs)
    wrapped = kg.GMixModel(functional)
    assert wrapped.input is functional.input and wrapped.output is functional.output
    with pytest.raises(AttributeError, match="no `input_shape`"):
        _ = kg.GMixModel(subclassed_network()).input_shape
    assert model.compute_output_shape((None, D)) == net.compute_output_shape((None, D))
    assert model.compute_output_shape((7, D)) == (7, C)


def image_network(seed=3):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((6, 6, 3)),  # float32: Keras casts uint8 images to it
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(C),
        ]
    )


@pytest.mark.parametrize("method", ["mixup", "dgmix"])
def test_uint8_images_train_as_the_float32_images_keras_would_make_of_them(method):
    """A network with a float Input reads uint8 images as float32 (Keras
    converts them); the mixing methods blend them as those floats."""
    images = np.random.default_rng(4).integers(0, 256, (N, 6, 6, 3)).astype("uint8")
    _, y, _ = batch()
    trained_weights = []
    for x in (images, images.astype("float32")):
        model = compile_model(kg.GMixModel(image_network(), method=method, seed=3))
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        trained_weights.append(numpy_weights(model))
    for got, expected in zip(*trained_weights):
        np.testing.assert_array_equal(got, expected)


def test_integer_inputs_of_an_integer_input_are_still_refused_for_mixing():
    keras.utils.set_random_seed(0)
    tokens = keras.Input((4,), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(10, 3)(tokens))
    model = compile_model(kg.GMixModel(keras.Model(tokens, keras.layers.Dense(C)(pooled))))
    x = np.random.default_rng(0).integers(0, 10, (N, 4)).astype("int32")
    with pytest.raises(ValueError, match="dtype int32: Mixup and CutMix blend inputs"):
        model.fit(x, batch()[1], verbose=0)


def test_legacy_hdf5_saving_is_refused_naming_the_keras_format(tmp_path):
    model = trained()
    for path in ("model.h5", "model.HDF5"):
        with pytest.raises(ValueError, match=r"'\.keras' path.*model\.inner\.save"):
            model.save(tmp_path / path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "metrics", [None, ["accuracy"], ["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(2)]]
)
def test_train_and_test_on_batch_return_what_keras_returns(metrics):
    x, y, _ = batch()
    plain = compile_model(network(), metrics=metrics)
    model = compile_model(kg.GMixModel(network(), method="erm"), metrics=metrics)
    expected = plain.train_on_batch(x, y)
    got = model.train_on_batch(x, y)
    assert type(got) is type(expected)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(model.test_on_batch(x, y)), np.asarray(plain.test_on_batch(x, y)), rtol=1e-5
    )
    gmix = compile_model(kg.GMixModel(network(), method="dgmix"), metrics=metrics)
    values = gmix.train_on_batch(x, y)
    assert np.ndim(values) == (0 if metrics is None else 1)
    logs = gmix.train_on_batch(x, y, return_dict=True)
    assert {"loss", "sharpness", "perturbed_loss", "conflict"} <= set(logs)


# -- deployment -------------------------------------------------------------


def subclassed_network():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(8, activation="relu")
            self.head = keras.layers.Dense(C)

        def call(self, x):
            return self.head(self.hidden(x))

    keras.utils.set_random_seed(2)
    return Net()


@pytest.mark.parametrize("kind", ["input", "first_batch", "subclassed"])
def test_export_after_fit_serves_predict(tmp_path, kind):
    x, y, _ = batch()
    net = subclassed_network() if kind == "subclassed" else network(with_input=kind == "input")
    model = compile_model(kg.GMixModel(net, method="gmix"), metrics=["accuracy"])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert model.built
    assert model.count_params() == net.count_params() > 0
    expected = model.predict(x, verbose=0)
    model.export(str(tmp_path / "served"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "served"))
    np.testing.assert_allclose(served.serve(x).numpy(), expected, atol=1e-6)


@pytest.mark.slow
def test_the_trained_network_saves_alone_for_plain_keras(tmp_path):
    """README's "Deploy the trained network": `model.inner.save(...)` loads
    in a process that never imports keras_gmix."""
    import subprocess
    import sys

    model = trained(with_input=False)
    x, _, _ = batch(6)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", model.predict(x, verbose=0))
    model.inner.save(tmp_path / "network.keras")
    code = (
        "import sys, numpy as np, keras\n"
        "net = keras.saving.load_model(sys.argv[1] + '/network.keras')\n"
        "got = net.predict(np.load(sys.argv[1] + '/x.npy'), verbose=0)\n"
        "np.testing.assert_allclose(got, np.load(sys.argv[1] + '/expected.npy'), atol=1e-6)\n"
        "assert 'keras_gmix' not in sys.modules\n"
    )
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_a_network_built_by_its_first_batch_is_built_after_fit():
    model = trained(with_input=False)
    assert model.built and model.inner.built
    assert model.count_params() == model.inner.count_params() == 5 * 8 + 8 + 8 * C + C
    assert "d1 (Dense)" in summary_text(model)


# -- fine-tuning: the trainable set changes between fits ------------------------------


def freeze(model, frozen):
    model.get_layer("d1").trainable = not frozen


@pytest.mark.parametrize(
    "method,kwargs",
    [
        ("erm", {}),
        ("dgmix", {}),
        ("gmix", {"perturb_every": 2, "reuse_scale": 0.5}),
        ("dgmix", {"perturb_every": 3, "reuse_scale": 0.7}),
        ("bgmix", {"perturb_probability": 0.5, "reuse_scale": 0.5}),
    ],
)
def test_two_stage_fine_tuning(method, kwargs):
    """Freeze the first layer, fit, unfreeze, recompile, fit: the frozen
    layer stays put in stage 1 and trains in stage 2, the stored direction
    follows the trainable set (starting from zero), and erm's two stages
    equal plain Keras'."""
    x, y, _ = batch(8, n=32)
    model = kg.GMixModel(network(), method=method, seed=3, **kwargs)
    plain = network()
    stages = []
    for frozen in (True, False):
        for m in (model, plain):
            freeze(m, frozen)
            compile_model(m)
        kernel_before = model.get_layer("d1").get_weights()[0]
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
        if method == "erm":
            plain.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
        kernel_after = model.get_layer("d1").get_weights()[0]
        stages.append(float(np.abs(kernel_after - kernel_before).max()))
        if model.reuse_direction is not None:
            assert [d.shape for d in model.reuse_direction] == [
                v.shape for v in model.inner.trainable_variables
            ]
    assert stages[0] == 0.0 and stages[1] > 0.0
    assert np.isfinite(np.concatenate([w.ravel() for w in model.get_weights()])).all()
    if method == "erm":
        for a, b in zip(model.get_weights(), plain.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_stored_direction_restarts_when_the_trainable_set_changes(capsys):
    model = trained("gmix", perturb_every=2, reuse_scale=0.5)
    assert any(float(np.abs(d.numpy()).max()) > 0 for d in model.reuse_direction)
    freeze(model, True)
    compile_model(model)
    model.make_train_function(force=True)
    assert "reuse direction starts again from zero" in capsys.readouterr().out
    assert len(model.reuse_direction) == 2
    assert all(float(np.abs(d.numpy()).max()) == 0 for d in model.reuse_direction)


# -- losses GMixModel cannot hand one-hot labels ------------------------------------


def class_id_loss(y_true, y_pred):
    return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)


def batch_mean_loss(y_true, y_pred):
    return keras.ops.mean(keras.losses.categorical_crossentropy(y_true, y_pred, from_logits=True))


@pytest.mark.parametrize("method", ["erm", "sam", "dgmix"])
@pytest.mark.parametrize(
    "loss,match",
    [(class_id_loss, r"fails on one-hot labels.*one-hot"), (batch_mean_loss, r"one number")],
)
def test_losses_that_cannot_take_one_hot_rows_are_refused_before_a_step(method, loss, match):
    x, y, _ = batch()
    model = kg.GMixModel(network(), method=method)
    model.compile(optimizer="sgd", loss=loss)
    before = model.get_weights()
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, epochs=1, verbose=0)
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert int(model.optimizer.iterations.numpy()) == 0


def test_ignore_class_is_refused_in_one_sentence_before_the_labels_are_read():
    """Labels of -1 for `ignore_class=-1` are valid for that loss only: the
    refusal names ignore_class (not the class id range), in fit and in
    evaluate alike, with erm too, before any step."""
    x, y, _ = batch()
    y[::4] = -1
    model = kg.GMixModel(network(), method="erm")
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1),
    )
    for call in (lambda: model.fit(x, y, verbose=0), lambda: model.evaluate(x, y, verbose=0)):
        with pytest.raises(ValueError, match=r"does not take `ignore_class`.*Drop those examples"):
            call()
    assert int(model.optimizer.iterations.numpy()) == 0


# -- labels and losses where Keras computes the loss itself ---------------------------


def test_class_ids_with_a_loss_on_one_hot_rows_train_validate_and_evaluate_as_one_hot():
    """fit trains class ids against a loss on one-hot rows; evaluate, fit's
    validation and the JAX trainer's build (which computes the loss on the
    first batch before the step) take them too, with plain Keras' numbers
    on one-hot rows."""
    x, y, _ = batch()
    one_hot = np.eye(C, dtype="float32")[y]
    smoothed = lambda: keras.losses.CategoricalCrossentropy(  # noqa: E731
        from_logits=True, label_smoothing=0.1
    )
    plain, wrapped = network(), kg.GMixModel(network(), method="erm")
    for model in (plain, wrapped):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=smoothed(), metrics=["accuracy"])
    kept = plain.fit(
        x, one_hot, batch_size=8, epochs=2, shuffle=False, verbose=0, validation_data=(x, one_hot)
    ).history
    got = wrapped.fit(
        x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, validation_data=(x, y)
    ).history
    for name in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(got[name], kept[name], rtol=1e-5, err_msg=name)
    for a, b in zip(numpy_weights(wrapped), numpy_weights(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    evaluated = wrapped.evaluate(x, y, verbose=0, return_dict=True)
    expected = plain.evaluate(x, one_hot, verbose=0, return_dict=True)
    np.testing.assert_allclose(evaluated["loss"], expected["loss"], rtol=1e-6)


def test_one_hot_rows_for_a_sparse_loss_are_refused_with_the_fix_before_a_step():
    """On JAX the trainer's build computes Keras' loss before the first
    step: it refuses with the step's sentence, not Keras' shape error."""
    x, y, _ = batch()
    model = compile_model(kg.GMixModel(network(), method="dgmix"))
    with pytest.raises(ValueError, match="is sparse.*'categorical_crossentropy'"):
        model.fit(x, np.eye(C, dtype="float32")[y], epochs=1, verbose=0)
    with pytest.raises(ValueError, match="is sparse.*'categorical_crossentropy'"):
        model.evaluate(x, np.eye(C, dtype="float32")[y], verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 0


def test_a_model_of_several_outputs_logs_only_the_losses_its_step_computes():
    """Keras' per-output losses (`a_loss`) are not what the step trains
    (one per-example sum over outputs, on mixed labels), and the step never
    updates them: on JAX, whose trainer builds them before the first step,
    fit logged them as 0. Validation's come from Keras' evaluation."""
    x, y, _ = batch()
    keras.utils.set_random_seed(3)
    inputs = keras.Input((D,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    net = keras.Model(
        inputs,
        {
            "a": keras.layers.Dense(C, name="a")(hidden),
            "b": keras.layers.Dense(2, name="b")(hidden),
        },
    )
    labels = {"a": y, "b": y % 2}
    losses = {"a": sparse_loss(), "b": sparse_loss()}
    model = kg.GMixModel(net, method="gmix")
    model.compile(optimizer="sgd", loss=losses)
    history = model.fit(
        x, labels, batch_size=8, epochs=2, verbose=0, validation_data=(x, labels)
    ).history
    assert "a_loss" not in history and "b_loss" not in history, sorted(history)
    assert all(value != 0 for value in history["loss"])
    plain = keras.models.clone_model(net)
    plain.set_weights(net.get_weights())
    plain.compile(optimizer="sgd", loss=losses)
    expected = plain.evaluate(x, labels, verbose=0, return_dict=True)
    for name in ("a_loss", "b_loss", "loss"):
        np.testing.assert_allclose(history[f"val_{name}"][-1], expected[name], rtol=1e-6)


def two_output_network():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((D,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(
        inputs, {"a": keras.layers.Dense(C, name="a")(hidden), "b": keras.layers.Dense(1)(hidden)}
    )


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "mean_with_sample_weight", "sum"])
@pytest.mark.parametrize("given", ["one_array", "per_output_dict"])
def test_sample_weights_of_a_model_of_several_outputs_train_as_keras(given, reduction):
    """Keras hands a model of several outputs one weight array per output
    (the user's one array, repeated); the step weighs each example once."""
    x, y, weights = batch()
    labels = {"a": y, "b": (y % 2).astype("float32")}
    losses = {
        "a": sparse_loss(reduction),
        "b": keras.losses.MeanSquaredError(reduction=reduction),
    }
    sample_weight = weights if given == "one_array" else {"a": weights, "b": weights}
    trained_weights = []
    for model in (two_output_network(), kg.GMixModel(two_output_network(), method="erm")):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=losses)
        model.fit(x, labels, sample_weight=sample_weight, batch_size=N, verbose=0, shuffle=False)
        trained_weights.append(numpy_weights(model))
    for got, expected in zip(trained_weights[1], trained_weights[0]):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_different_sample_weights_per_output_are_refused_before_and_in_the_step():
    x, y, weights = batch()
    labels = {"a": y, "b": (y % 2).astype("float32")}
    model = kg.GMixModel(two_output_network(), method="dgmix")
    model.compile(optimizer="sgd", loss={"a": sparse_loss(), "b": "mse"})
    before = numpy_weights(model)
    different = {"a": weights, "b": weights[::-1].copy()}
    with pytest.raises(ValueError, match="one sample weight per example"):
        model.fit(x, labels, sample_weight=different, verbose=0)
    pipeline = tf.data.Dataset.from_tensor_slices((x, labels, different)).batch(8)
    with pytest.raises(Exception, match="one sample weight per example"):
        model.fit(pipeline, verbose=0)
    for got, expected in zip(numpy_weights(model), before):
        np.testing.assert_array_equal(got, expected)


class Batches(keras.utils.PyDataset):
    """The given (x, y) batches in order."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


@pytest.mark.parametrize("options", [{}, {"perturb_every": 2}])
def test_a_step_that_fails_on_its_batch_leaves_the_model_as_the_last_good_step_did(options):
    """A class id out of range is found as the step runs (in the compiled
    step, on the batch). The model keeps the weights of the step before:
    on JAX too, where a step that failed had consumed (donated) its state
    and left deleted arrays. Training then goes on."""
    x, y, _ = batch()
    bad = y[8:].copy()
    bad[3] = C + 4
    good_first = Batches([(x[:8], y[:8])])
    failing = Batches([(x[:8], y[:8]), (x[8:], bad)])
    reference = compile_model(kg.GMixModel(network(), method="gmix", seed=3, **options))
    reference.fit(good_first, epochs=1, verbose=0)
    model = compile_model(kg.GMixModel(network(), method="gmix", seed=3, **options))
    with pytest.raises(Exception, match=f"class ids must be < {C}"):
        model.fit(failing, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(numpy_weights(model), numpy_weights(reference)):
        np.testing.assert_array_equal(a, b)
    model.fit(good_first, epochs=1, verbose=0)
    assert np.isfinite(model.evaluate(x, y, verbose=0))


def test_an_evaluation_that_fails_on_its_batch_leaves_the_weights():
    """Class ids reach a loss on one-hot rows checked (`compute_loss`); a
    batch out of range fails the evaluation, not the model (on JAX,
    evaluate takes the values out of the variables first)."""
    x, y, _ = batch()
    bad = y.copy()
    bad[11] = C + 4
    model = kg.GMixModel(network(), method="gmix")
    model.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    before = numpy_weights(model)
    with pytest.raises(Exception, match=f"class ids must be < {C}"):
        model.evaluate(Batches([(x[:8], bad[:8]), (x[8:], bad[8:])]), verbose=0)
    for a, b in zip(numpy_weights(model), before):
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(model.evaluate(x, y, verbose=0))


# -- README: fine-tune a pretrained backbone ---------------------------------------


def readme_block(title):
    text = open(os.path.join(HERE, "..", "README.md"), encoding="utf-8").read()
    section = text.split(f"### {title}", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_fine_tuning_example_runs_offline():
    """README's example, with weights=None (no download) and a few images."""
    code = readme_block("Fine-tune a pretrained backbone")
    assert 'weights="imagenet"' in code
    code = code.replace('weights="imagenet"', "weights=None")
    rng = np.random.default_rng(0)
    namespace = {
        "x_train": rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32"),
        "y_train": rng.integers(0, 10, 16),
        "x_test": rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32"),
        "y_test": rng.integers(0, 10, 8),
        "EPOCHS": 1,
    }
    exec(compile(code, "README.md", "exec"), namespace)
    model, backbone = namespace["model"], namespace["backbone"]
    assert isinstance(model, kg.GMixModel) and backbone.trainable
    assert model.count_params() == model.inner.count_params()
    # Frozen BatchNorm layers kept their (here: initial) statistics through
    # both stages, while the rest of the backbone trained in stage 2.
    means = [v.numpy() for v in backbone.non_trainable_weights if v.path.endswith("moving_mean")]
    assert means and all(float(np.abs(m).max()) == 0 for m in means)
