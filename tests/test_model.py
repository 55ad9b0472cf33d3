"""GMixModel: the train step, fit modes, BatchNorm, serialization, errors, pass counts."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_gmix as kg
from keras_gmix import gradients
from keras_gmix.step_values import STEP_VALUES_CAPACITY
from tests.helpers.common import (
    GUARDED,
    C,
    CountingModel,
    D,
    N,
    assert_trained_to,
    assert_unchanged,
    compiled,
    data,
    dense_bn_model,
    small_model,
    step_inputs,
    weights_after_sgd_step,
    weights_of,
)

TENSORFLOW = keras.backend.backend() == "tensorflow"


@pytest.mark.parametrize("method", kg.METHODS)
def test_train_step_applies_update_gradients(method):
    """With plain SGD, one fit step moves the weights by exactly -lr * update_gradients."""
    x, y = data()
    model = compiled(method, optimizer=keras.optimizers.SGD(1.0))
    reference = dense_bn_model()
    x_in, y_in = step_inputs(model, x, y)
    expected = weights_after_sgd_step(reference, x_in, y_in, method)
    model.fit(x, y, batch_size=N, epochs=1, verbose=0, shuffle=False)
    assert_trained_to(model, expected)


# One method in the default run (dgmix, the step with the most parts); every
# method with -m slow.
@pytest.mark.parametrize(
    "method", [m if m == "dgmix" else pytest.param(m, marks=pytest.mark.slow) for m in kg.METHODS]
)
def test_eager_graph_and_xla_agree(method):
    x, y = data(n=64)
    histories = []
    # jit_gradients is TensorFlow's (on JAX, fit compiles the whole step).
    modes = ("eager", "graph", "xla") + (("jit_gradients",) if TENSORFLOW else ())
    for mode in modes:
        # No dropout here: Keras' Dropout draws other masks under XLA (its RNG
        # algorithm is chosen per device), which says nothing about G-Mix.
        model = compiled(method, inner=dense_bn_model(), jit_gradients=mode == "jit_gradients")
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            run_eagerly=mode == "eager",
            jit_compile=mode == "xla",
        )
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False).history
        histories.append(history)
    for other in histories[1:]:
        assert other.keys() == histories[0].keys()
        for key in histories[0]:
            np.testing.assert_allclose(
                other[key], histories[0][key], rtol=1e-5, atol=1e-6, err_msg=key
            )


@pytest.mark.parametrize("method", ["erm", "sam", "gmix", "dgmix"])
def test_batchnorm_statistics_come_from_the_clean_pass(method):
    x, y = data()
    model = compiled(method, inner=dense_bn_model(dropout=0.3))
    plain = dense_bn_model(dropout=0.3)
    x_in, _ = step_inputs(model, x, y)
    plain(x_in, training=True)  # one plain forward pass on the same (mixed) batch
    model.fit(x, y, batch_size=N, epochs=1, verbose=0, shuffle=False)
    bn, bn_plain = model.inner.layers[1], plain.layers[1]
    np.testing.assert_allclose(
        bn.moving_mean.numpy(), bn_plain.moving_mean.numpy(), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), bn_plain.moving_variance.numpy(), rtol=1e-5, atol=1e-7
    )


def test_both_passes_see_the_same_dropout_masks():
    """With rho = 0 the two passes coincide exactly, dropout included."""
    x, y = data()
    model = compiled("dgmix", inner=dense_bn_model(dropout=0.5), rho=0.0)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert history["sharpness"] == [0.0]
    assert history["perturbed_loss"] == history["loss"]


@pytest.mark.slow  # six methods x two epochs; tests/test_jax.py and the fits above check the logs
def test_logs_report_section_5_values():
    x, y = data(n=64)
    expected = {
        "erm": set(),
        "mixup": set(),
        "sam": {"perturbed_loss", "sharpness", "eps_norm"},
        "gmix": {"perturbed_loss", "sharpness", "eps_norm"},
        "bgmix": {"perturbed_loss", "sharpness", "eps_norm", "sensitive_fraction", "grad_cosine"},
        "dgmix": {
            "perturbed_loss",
            "sharpness",
            "eps_norm",
            "sensitive_fraction",
            "grad_cosine",
            "conflict",
        },
    }
    for method, extra in expected.items():
        history = compiled(method).fit(x, y, batch_size=16, epochs=2, verbose=0).history
        assert set(history) == {"loss", "accuracy", "skipped_steps"} | extra, method
        assert history["skipped_steps"] == [0.0, 0.0]
        for key, values in history.items():
            assert np.all(np.isfinite(values)), (method, key)
        if "eps_norm" in extra:
            np.testing.assert_allclose(history["eps_norm"], 0.05, rtol=1e-4)
            np.testing.assert_allclose(
                np.array(history["perturbed_loss"]) - history["loss"],
                history["sharpness"],
                atol=1e-5,
            )
        if "sensitive_fraction" in extra:
            np.testing.assert_allclose(history["sensitive_fraction"], 0.5)


def test_logged_loss_is_the_mixed_batch_mean():
    x, y = data()
    model = compiled("gmix")
    x_in, y_in = step_inputs(model, x, y)
    reference = dense_bn_model()
    expected = keras.losses.CategoricalCrossentropy(from_logits=True)(
        y_in, reference(x_in, training=True)
    )
    history = model.fit(x, y, batch_size=N, epochs=1, verbose=0, shuffle=False).history
    assert history["loss"][0] == pytest.approx(float(expected), rel=1e-5)


def test_sparse_and_one_hot_labels_train_identically():
    x, y = data()
    sparse = compiled("dgmix")
    sparse.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    one_hot = kg.GMixModel(dense_bn_model(), method="dgmix", seed=5)
    one_hot.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )
    one_hot.fit(x, np.eye(C)[y], batch_size=16, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(sparse.inner.weights, one_hot.inner.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "loss",
    [
        "sparse_categorical_crossentropy",
        keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
        keras.losses.CategoricalFocalCrossentropy(),
        "mean_squared_error",
    ],
)
def test_any_keras_loss_trains(loss):
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((D,)), keras.layers.Dense(C, activation="softmax")])
    x, y = data()
    labels = y if loss == "sparse_categorical_crossentropy" else np.eye(C)[y]
    model = kg.GMixModel(inner, method="bgmix", seed=1)
    model.compile(optimizer="adam", loss=loss)
    before = model.evaluate(x, labels, verbose=0)
    model.fit(x, labels, batch_size=8, epochs=5, verbose=0)
    assert model.evaluate(x, labels, verbose=0) < before


def test_sample_weights_zero_out_examples():
    """Zero-weight examples contribute nothing: same update as dropping... their mixed share."""
    x, y = data()
    model = compiled("erm", optimizer=keras.optimizers.SGD(1.0))
    before = [v.numpy() for v in model.inner.trainable_variables]
    model.fit(x, y, sample_weight=np.zeros(N), batch_size=N, epochs=1, verbose=0)
    for variable, value in zip(model.inner.trainable_variables, before):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_optimizer_options_gradient_accumulation_and_clipping():
    x, y = data()
    model = compiled(
        "dgmix",
        optimizer=keras.optimizers.SGD(0.5, gradient_accumulation_steps=2, global_clipnorm=1e-3),
    )
    before = [v.numpy() for v in model.inner.trainable_variables]
    model.fit(x[:16], y[:16], batch_size=16, epochs=1, verbose=0)
    after_one = [v.numpy() for v in model.inner.trainable_variables]
    for a, b in zip(before, after_one):
        np.testing.assert_array_equal(a, b)  # accumulating, not applied yet
    model.fit(x[:16], y[:16], batch_size=16, epochs=1, verbose=0)
    moved = np.sqrt(
        sum(np.sum((v.numpy() - a) ** 2) for v, a in zip(model.inner.trainable_variables, before))
    )
    assert 0 < moved <= 0.5 * 1e-3 * 1.0001  # lr * global_clipnorm bounds the step


def test_evaluate_and_predict_are_plain():
    x, y = data()
    model = compiled("dgmix")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    logits = model.inner(x, training=False)
    # atol: predict runs compiled in batches, the reference eagerly (a near-zero
    # logit differs in its last float32 bits on JAX's XLA).
    np.testing.assert_allclose(model.predict(x, verbose=0), logits, rtol=1e-6, atol=1e-6)
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)
    results = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(results) == {"loss", "accuracy"}
    assert results["loss"] == pytest.approx(float(expected), rel=1e-5)


def test_callbacks_receive_the_logs():
    x, y = data()
    seen = []
    callback = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(dict(logs))
    )
    compiled("dgmix").fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[callback])
    assert len(seen) == 2 and "conflict" in seen[0] and "sharpness" in seen[1]


def test_last_step_values_are_kept_for_histograms():
    x, y = data()
    model = compiled("gmix", optimizer=keras.optimizers.SGD(0.0))
    x_in, y_in = step_inputs(model, x[:20], y[:20])
    _, lam_label = model.mix_data(x[:20], keras.ops.one_hot(y[:20], C), None, model.mixing_seed(1))[
        2:
    ]
    model.fit(x[:20], y[:20], batch_size=20, epochs=1, verbose=0, shuffle=False)
    lam = model.last_lam.numpy()
    np.testing.assert_allclose(lam[:20], float(lam_label))
    assert np.all(np.isnan(lam[20:]))
    reference = dense_bn_model()
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, reduction=None)
    _, stats = kg.update_gradients(reference, x_in, y_in, loss=loss, method="gmix")
    sensitivity = model.last_sensitivity.numpy()
    assert np.all(np.isfinite(sensitivity[:20])) and np.all(np.isnan(sensitivity[20:]))
    assert sensitivity[:20].mean() == pytest.approx(stats["sharpness"], rel=1e-4, abs=1e-6)


# -- serialization ---------------------------------------------------------


def test_config_has_every_constructor_argument():
    model = kg.GMixModel(
        dense_bn_model(),
        method="bgmix",
        rho=0.1,
        alpha=0.4,
        sensitive_fraction=0.3,
        adaptive=True,
        eta=0.02,
        mix="mixup",
        per_example_lam=True,
        sync_perturbation=True,
        seed=9,
    )
    config = model.get_config()
    arguments = set(inspect.signature(kg.GMixModel.__init__).parameters) - {"self", "kwargs"}
    assert arguments <= set(config)
    clone = kg.GMixModel.from_config(config)
    for name in arguments - {"inner"}:
        assert getattr(clone, name) == getattr(model, name), name


@pytest.mark.parametrize("safe_mode", [True])
def test_keras_file_round_trip(tmp_path, safe_mode):
    x, y = data()
    model = compiled("dgmix", rho=0.07, alpha=0.5, sensitive_fraction=0.25)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=safe_mode)
    assert isinstance(loaded, kg.GMixModel)
    assert (loaded.method, loaded.rho, loaded.alpha, loaded.sensitive_fraction) == (
        "dgmix",
        0.07,
        0.5,
        0.25,
    )
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert int(loaded.mix_step.numpy()) == int(model.mix_step.numpy())
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)  # and it trains on


def test_step_values_are_neither_weights_nor_saved_nor_logged(tmp_path):
    x, y = data()
    model = compiled("gmix")
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, validation_data=(x, y))
    state = model.weights + model.variables
    assert not {v.name for v in state} & {"last_lam", "last_sensitivity"}
    assert not any(v is model.last_lam or v is model.last_sensitivity for v in state)
    assert not set(history.history) & {"last_lam", "last_sensitivity"}
    # Keras' per-epoch and per-evaluate metric resets leave the last training step's values.
    lam = model.last_lam.numpy()
    assert np.isfinite(lam[:16]).all() and np.isnan(lam[16:]).all()
    model.evaluate(x, y, verbose=0)
    np.testing.assert_array_equal(model.last_lam.numpy(), lam)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert np.isnan(loaded.last_lam.numpy()).all()
    assert np.isnan(loaded.last_sensitivity.numpy()).all()


def old_layout(model, lam, sensitivity):
    """GMixModel's own variables as files written while the step values were
    weights store them: mix_step, last_lam, last_sensitivity,
    consecutive_skips, then the reuse direction."""
    own = [model.mix_step, lam, sensitivity, model.consecutive_skips]
    own += list(model.reuse_direction or [])
    return {str(i): np.array(keras.ops.convert_to_numpy(v)) for i, v in enumerate(own)}


def reusing_model(seed):
    """A trained model with every kind of own variable: counters and the reuse direction."""
    x, y = data(seed=seed)
    model = compiled(
        "gmix",
        inner=dense_bn_model(seed),
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        perturb_every=2,
        reuse_scale=0.5,
    )
    # Models of other seeds differ in every variable, counters included.
    model.fit(x, y, batch_size=8, epochs=1 + seed, verbose=0)
    model.consecutive_skips.assign(3 + seed)
    return model


def test_old_layout_of_own_variables_loads_without_the_step_values():
    saved = reusing_model(0)
    lam = np.arange(STEP_VALUES_CAPACITY, dtype="float32")
    store = old_layout(saved, lam, -lam)
    fresh = reusing_model(1)
    fresh_lam = fresh.last_lam.numpy()
    fresh.load_own_variables(store)
    own = [saved.mix_step, saved.consecutive_skips] + saved.reuse_direction
    loaded = [fresh.mix_step, fresh.consecutive_skips] + fresh.reuse_direction
    assert float(np.abs(saved.reuse_direction[0].numpy()).max()) > 0
    for a, b in zip(loaded, own):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The old buffers are dropped: the step values are the fresh model's own.
    np.testing.assert_array_equal(fresh.last_lam.numpy(), fresh_lam)


@pytest.mark.parametrize(
    "kind",
    [
        "keras",
        pytest.param("weights", marks=pytest.mark.slow),
        pytest.param("checkpoint", marks=pytest.mark.slow),
    ],
)
def test_files_written_with_the_step_values_as_weights_still_load(tmp_path, monkeypatch, kind):
    saved = reusing_model(0)
    lam = saved.last_lam.numpy()

    def save_old_layout(model, store):
        for key, value in old_layout(model, lam, model.last_sensitivity).items():
            store[key] = value

    monkeypatch.setattr(kg.GMixModel, "save_own_variables", save_old_layout)
    path = str(tmp_path / ("model.keras" if kind == "keras" else "model.weights.h5"))
    if kind == "keras":
        saved.save(path)
    elif kind == "weights":
        saved.save_weights(path)
    else:
        kg.checkpoint.save(saved, str(tmp_path / "backup"), epochs_done=1)
    monkeypatch.undo()
    if kind == "keras":
        loaded = keras.saving.load_model(path)
    else:
        loaded = reusing_model(1)  # other weights, counters and optimizer state
        if kind == "weights":
            loaded.load_weights(path)
        else:
            assert kg.checkpoint.restore(loaded, str(tmp_path / "backup")) == 1
    assert [v.name for v in loaded.weights] == [v.name for v in saved.weights]
    assert len(loaded.optimizer.variables) == len(saved.optimizer.variables)
    for a, b in zip(
        loaded.weights + loaded.optimizer.variables, saved.weights + saved.optimizer.variables
    ):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert int(loaded.mix_step.numpy()) == 4 and int(loaded.consecutive_skips.numpy()) == 3


# -- bad arguments ------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "adam"}, r"method.*erm.*dgmix"),
        ({"alpha": 0.0}, r"alpha.*> 0"),
        ({"alpha": -1}, r"alpha.*> 0"),
        ({"rho": -0.1}, r"rho.*>= 0"),
        ({"sensitive_fraction": 1.5}, r"sensitive_fraction.*\[0, 1\]"),
        ({"sensitive_fraction": -0.1}, r"sensitive_fraction.*\[0, 1\]"),
        ({"mix": "manifold"}, r"mix.*mixup.*cutmix"),
        pytest.param(
            {"jit_gradients": True, "sync_perturbation": True},
            r"jit_gradients.*sync_perturbation",
            marks=pytest.mark.tensorflow_only,
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kg.GMixModel(dense_bn_model(), **kwargs)


def test_model_without_trainable_weights():
    inner = dense_bn_model()
    inner.trainable = False
    with pytest.raises(ValueError, match="no trainable weights"):
        kg.GMixModel(inner)


def test_labels_with_the_wrong_class_count():
    x, y = data()
    model = compiled("dgmix")
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    before = [v.numpy() for v in model.inner.weights]
    with pytest.raises(ValueError, match=f"5 columns.*outputs {C} classes"):
        model.fit(x, np.eye(5)[y % 5], verbose=0)
    for variable, value in zip(model.inner.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value)


# -- pass counts ---------------------------------------------------------------


@pytest.mark.parametrize(
    "method,forward,backward,options",
    [
        ("erm", 1, 1, {}),
        ("mixup", 1, 1, {}),
        ("sam", 2, 2, {}),
        ("gmix", 2, 2, {}),
        ("bgmix", 2, 3, {}),
        ("dgmix", 2, 3, {}),
        # The memory-lean step: one more forward pass, no more backward passes.
        ("bgmix", 3, 3, {"keep_first_pass": False}),
        ("dgmix", 3, 3, {"keep_first_pass": False}),
    ],
)
# Counted in Python as the passes are traced: JAX traces a custom gradient's
# backward function once and reuses it for every pull-back of the same pass.
@pytest.mark.tensorflow_only
def test_pass_counts(method, forward, backward, options):
    inner = CountingModel()
    inner(np.zeros((1, D), "float32"))
    x, y = data(n=8)
    model = compiled(method, inner=inner, **options)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", run_eagerly=True)
    model.train_on_batch(x, y)  # the first step also traces the model symbolically
    inner.forward_calls = inner.backward_calls = 0
    model.train_on_batch(x, y)
    assert (inner.forward_calls, inner.backward_calls) == (forward, backward)


@pytest.mark.parametrize("method", gradients.PARTITIONED_METHODS)
@pytest.mark.parametrize(
    "schedule",
    [
        pytest.param({}, id="full"),
        pytest.param(
            {"perturb_every": 2, "reuse_scale": 0.3}, id="schedule", marks=pytest.mark.slow
        ),
        pytest.param(
            {"jit_gradients": True},
            id="xla",
            marks=[pytest.mark.tensorflow_only, pytest.mark.slow],
        ),
    ],
)
def test_fit_with_keep_first_pass_false_trains_as_the_kept_tape(method, schedule):
    """Several fit steps of a BatchNorm + dropout model: the memory-lean step
    ends with the same weights, BatchNorm statistics and logs (float
    tolerance); also when XLA compiles both steps."""
    x, y = data(n=64)
    histories, variables = [], []
    for keep_first_pass in (True, False):
        model = compiled(
            method,
            inner=dense_bn_model(dropout=0.3),
            rho=0.2,
            keep_first_pass=keep_first_pass,
            **schedule,
        )
        histories.append(model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False).history)
        variables.append([v.numpy() for v in model.inner.weights])
        assert model.get_config()["keep_first_pass"] is keep_first_pass
    assert histories[0]["sharpness"][-1] > 0
    for key, values in histories[0].items():
        np.testing.assert_allclose(histories[1][key], values, rtol=1e-5, atol=1e-6, err_msg=key)
    for a, b in zip(variables[1], variables[0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# -- numerical faults: skip, count, stop -------------------------------------------------


@pytest.mark.parametrize("method", ["erm", "gmix", "dgmix"])
def test_nan_in_a_batch_skips_the_step(method):
    x, y = data(16)
    x[5] = np.nan
    model = compiled(method, small_model(), **GUARDED)
    before = weights_of(model)
    optimizer_state = [v.numpy().copy() for v in model.optimizer.variables]
    # Arrays are refused up front; a data set reaches the step.
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = model.fit(dataset, verbose=0).history
    assert history["skipped_steps"] == [1.0]
    assert_unchanged(model, before)
    model.optimizer.build(model.inner.trainable_variables)
    for variable, value in zip(model.optimizer.variables, optimizer_state):
        np.testing.assert_array_equal(variable.numpy(), value)
    clean_x, clean_y = data(16, seed=1)
    model.fit(clean_x, clean_y, batch_size=16, verbose=0)  # and it goes on training
    assert int(model.consecutive_skips.numpy()) == 0
    assert all(np.all(np.isfinite(w)) for w in weights_of(model))
    assert any(not np.array_equal(a, b) for a, b in zip(weights_of(model), before))


class NaNGradient(keras.layers.Layer):
    """Identity forward; its backward pass returns NaN (a fault in a gradient only)."""

    def call(self, x):
        @keras.ops.custom_gradient
        def identity(x):
            def grad(*args, upstream=None):
                upstream = args[0] if upstream is None else upstream
                return upstream * np.nan

            return x * 1.0, grad

        return identity(x)


@pytest.mark.parametrize("method", ["mixup", "sam", "bgmix"])
def test_nan_gradient_skips_the_step(method):
    keras.utils.set_random_seed(0)
    inner = keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(8), NaNGradient(), keras.layers.Dense(C)]
    )
    model = compiled(method, inner, max_consecutive_skips=5, **GUARDED)
    before = weights_of(model)
    x, y = data(16)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert history["skipped_steps"] == [2.0]
    assert_unchanged(model, before)
    assert int(model.consecutive_skips.numpy()) == 2


def test_training_stops_after_consecutive_skips():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(8), NaNGradient(), keras.layers.Dense(C)]
    )
    model = compiled("gmix", inner, max_consecutive_skips=3, **GUARDED)
    before = weights_of(model)
    x, y = data(64)
    with pytest.raises(
        FloatingPointError, match="last 3 steps all had a non-finite loss or gradient"
    ):
        model.fit(x, y, batch_size=8, epochs=5, verbose=0)
    assert_unchanged(model, before)
    assert int(model.consecutive_skips.numpy()) == 3


def test_max_consecutive_skips_is_checked():
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        kg.GMixModel(small_model(), max_consecutive_skips=0)
