"""Tests for keras_gmix.layers: the fused BatchNormalization and fuse_batchnorm.

Every numerical check compares against Keras' stock layer given the same
weights; the graph checks make sure the fused kernel is really the one used.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gmix.layers import BatchNormalization, fuse_batchnorm

TOL = dict(rtol=1e-4, atol=1e-4)


def _op_types(fn, *specs):
    """The op types of fn's traced graph, nested functions included."""
    graph_def = fn.get_concrete_function(*specs).graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types.update(node.op for node in function.node_def)
    return types


def _pair(shape, axis, seed=0, **kwargs):
    """Ours and the stock layer, built with the same random weights."""
    ours = BatchNormalization(axis=axis, momentum=0.9, **kwargs)
    stock = keras.layers.BatchNormalization(axis=axis, momentum=0.9, **kwargs)
    ours.build(shape)
    stock.build(shape)
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=w.shape).astype(w.dtype) for w in stock.get_weights()]
    # The moving variance (always the last weight) must stay positive.
    weights[-1] = np.abs(weights[-1]) + 0.5
    ours.set_weights(weights)
    stock.set_weights(weights)
    return ours, stock


def _inputs(shape, seed=1, dtype="float32"):
    # A large offset and scale make a biased/unbiased variance mix-up visible.
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * 3.0 + 2.0).astype(dtype)


def _forward_and_grads(layer, x, training, cotangent):
    x = tf.constant(x)
    params = [v for v in (layer.gamma, layer.beta) if v is not None]
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        # A random cotangent: with sum(y) the input gradient of a training-mode
        # batch norm is zero, which would hide errors.
        loss = tf.reduce_sum(tf.cast(y, "float32") * cotangent)
    grads = tape.gradient(loss, [x] + params)
    return y, grads


def _assert_same_as_stock(ours, stock, x, training):
    cotangent = tf.constant(_inputs(x.shape, seed=2))
    y_ours, g_ours = _forward_and_grads(ours, x, training, cotangent)
    y_stock, g_stock = _forward_and_grads(stock, x, training, cotangent)
    np.testing.assert_allclose(y_ours, y_stock, **TOL)
    assert len(g_ours) == len(g_stock)
    for a, b in zip(g_ours, g_stock):
        np.testing.assert_allclose(a, b, **TOL)
    np.testing.assert_allclose(ours.moving_mean, stock.moving_mean, **TOL)
    np.testing.assert_allclose(ours.moving_variance, stock.moving_variance, **TOL)


FUSED_CASES = [
    ((4, 5, 6, 3), -1),
    ((2, 3, 7, 5), 3),
    ((4, 3, 5, 6), 1),
    ((3, 8, 4, 4), 1),
]


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("shape,axis", FUSED_CASES)
@pytest.mark.parametrize("training", [True, False])
def test_matches_stock(shape, axis, training):
    ours, stock = _pair(shape, axis)
    x = _inputs(shape)
    before = ours.moving_variance.numpy().copy()
    _assert_same_as_stock(ours, stock, x, training)
    # Training must move the statistics and inference must not.
    assert np.allclose(ours.moving_variance, before) != training


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("shape,axis", FUSED_CASES[:1] + FUSED_CASES[2:3])
def test_fused_kernel_is_used(shape, axis):
    ours, stock = _pair(shape, axis)
    spec = tf.TensorSpec((None,) + shape[1:], "float32")
    assert "FusedBatchNormV3" in _op_types(tf.function(lambda x: ours(x, training=True)), spec)
    # Inference is the stock code path.
    assert "FusedBatchNormV3" not in _op_types(tf.function(lambda x: ours(x, training=False)), spec)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("center,scale", [(False, True), (True, False), (False, False)])
@pytest.mark.parametrize("axis", [-1, 1])
def test_center_scale_off_matches_stock(center, scale, axis):
    shape = (4, 3, 5, 6)
    ours, stock = _pair(shape, axis, center=center, scale=scale)
    assert (ours.beta is None) != center and (ours.gamma is None) != scale
    _assert_same_as_stock(ours, stock, _inputs(shape), training=True)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize(
    "shape,axis,kwargs",
    [
        ((16, 5), -1, {}),  # 2-D: no fused kernel
        ((6, 7, 5), -1, {}),  # 3-D
        ((4, 5, 6, 3), 2, {}),  # a spatial axis
        ((4, 5, 6, 3), -1, {"epsilon": 1e-6}),  # TF would raise epsilon
    ],
)
def test_fallback_matches_stock(shape, axis, kwargs):
    ours, stock = _pair(shape, axis, **kwargs)
    spec = tf.TensorSpec((None,) + shape[1:], "float32")
    assert "FusedBatchNormV3" not in _op_types(tf.function(lambda x: ours(x, training=True)), spec)
    _assert_same_as_stock(ours, stock, _inputs(shape), training=True)


def _conv_model(bn_class, data_format="channels_last"):
    keras.utils.set_random_seed(0)
    shape = (8, 8, 3) if data_format == "channels_last" else (3, 8, 8)
    axis = -1 if data_format == "channels_last" else 1
    return keras.Sequential(
        [
            keras.Input(shape),
            keras.layers.Conv2D(4, 3, use_bias=False, data_format=data_format),
            bn_class(axis=axis),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(data_format=data_format),
            keras.layers.Dense(3),
        ]
    )


def _train_step_fn(model, jit_compile=False):
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=jit_compile)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    return step


@pytest.mark.tensorflow_only
def test_train_step_graph_contains_fused_op():
    specs = (tf.TensorSpec((None, 8, 8, 3)), tf.TensorSpec((None,), "int32"))
    ours = _op_types(_train_step_fn(_conv_model(BatchNormalization)), *specs)
    stock = _op_types(_train_step_fn(_conv_model(keras.layers.BatchNormalization)), *specs)
    assert {"FusedBatchNormV3", "FusedBatchNormGradV3"} <= ours
    assert not any("FusedBatchNorm" in op for op in stock)


@pytest.mark.tensorflow_only
def test_train_steps_match_stock_in_graph_and_xla():
    x = _inputs((6, 8, 8, 3))
    y = np.arange(6, dtype="int32") % 3
    results = []
    for bn_class in (keras.layers.BatchNormalization, BatchNormalization):
        for jit in (False, True):
            model = _conv_model(bn_class)
            step = _train_step_fn(model, jit_compile=jit)
            losses = [float(step(x, y)) for _ in range(2)]
            results.append((losses, [w.copy() for w in model.get_weights()]))
    reference_losses, reference_weights = results[0]
    for losses, weights in results[1:]:
        np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)
        for a, b in zip(weights, reference_weights):
            np.testing.assert_allclose(a, b, **TOL)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("axis", [-1, 1])
def test_stateless_call_returns_updates_without_writing(axis):
    shape = (4, 3, 5, 6)
    ours, stock = _pair(shape, axis)
    x = tf.constant(_inputs(shape))
    before = [v.numpy().copy() for v in ours.variables]
    results = []
    for layer in (ours, stock):
        trainable = [tf.identity(v.value) for v in layer.trainable_variables]
        non_trainable = [tf.identity(v.value) for v in layer.non_trainable_variables]
        with tf.GradientTape() as tape:
            tape.watch(trainable)
            y, new_non_trainable = layer.stateless_call(trainable, non_trainable, x, training=True)
            loss = tf.reduce_sum(tf.sin(y))
        results.append((y, new_non_trainable, tape.gradient(loss, trainable)))
    (y_o, nt_o, g_o), (y_s, nt_s, g_s) = results
    np.testing.assert_allclose(y_o, y_s, **TOL)
    for a, b in zip(nt_o + g_o, nt_s + g_s):
        np.testing.assert_allclose(a, b, **TOL)
    # The returned statistics moved, the variables did not.
    assert not np.allclose(nt_o[1], before[-1])
    for v, b in zip(ours.variables, before):
        np.testing.assert_array_equal(v.numpy(), b)


@pytest.mark.tensorflow_only
def test_stateless_call_inside_xla_function():
    shape = (4, 5, 6, 3)
    ours, _ = _pair(shape, -1)
    before = ours.moving_mean.numpy().copy()

    def fn(x, trainable, non_trainable):
        return ours.stateless_call(trainable, non_trainable, x, training=True)

    args = (
        tf.constant(_inputs(shape)),
        [tf.identity(v.value) for v in ours.trainable_variables],
        [tf.identity(v.value) for v in ours.non_trainable_variables],
    )
    y_graph, nt_graph = tf.function(fn)(*args)
    y_xla, nt_xla = tf.function(fn, jit_compile=True)(*args)
    np.testing.assert_allclose(y_xla, y_graph, **TOL)
    np.testing.assert_allclose(nt_xla[0], nt_graph[0], **TOL)
    np.testing.assert_allclose(nt_xla[1], nt_graph[1], **TOL)
    np.testing.assert_array_equal(ours.moving_mean.numpy(), before)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("axis", [-1, 1])
def test_jit_compile_matches_graph(axis):
    shape = (4, 3, 5, 6)
    x = tf.constant(_inputs(shape))
    outputs = []
    for jit in (False, True):
        ours, _ = _pair(shape, axis)
        y = tf.function(lambda t, layer=ours: layer(t, training=True), jit_compile=jit)(x)
        outputs.append((y, ours.moving_mean.numpy(), ours.moving_variance.numpy()))
    for a, b in zip(*outputs):
        np.testing.assert_allclose(a, b, **TOL)


def _reference_batchnorm(x, gamma, beta, epsilon):
    # Float64, and no stop_gradient in the variance (tf.nn.moments has one,
    # which makes the stock layer's second derivative in x inexact).
    mean = tf.reduce_mean(x, [0, 1, 2])
    variance = tf.reduce_mean(tf.square(x - mean), [0, 1, 2])
    return (x - mean) * tf.math.rsqrt(variance + epsilon) * gamma + beta


def _hvp(batchnorm, x, kernel, gamma, beta, vectors, cotangent):
    """Hessian-vector product of a conv + batch norm loss, nested tapes."""
    params = [x, kernel, gamma, beta]
    with tf.GradientTape() as outer:
        outer.watch([x, kernel])
        with tf.GradientTape() as inner:
            inner.watch([x, kernel])
            y = batchnorm(tf.nn.conv2d(x, kernel, 1, "VALID"))
            loss = tf.reduce_sum(tf.sin(y) * cotangent)
        grads = inner.gradient(loss, params)
        dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vectors)])
    return outer.gradient(dot, params)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_hessian_vector_product_is_exact(mode):
    # Double backprop through FusedBatchNormGradV3 (what flatness tools
    # need), checked against float64 autodiff of the textbook formula.
    rng = np.random.default_rng(4)
    x, kernel, gamma, beta = arrays = [
        rng.normal(size=(6, 6, 6, 3)),
        rng.normal(size=(3, 3, 3, 4)) * 0.3,
        rng.normal(size=4) + 1.0,
        rng.normal(size=4),
    ]
    vectors = [rng.normal(size=a.shape) for a in arrays]
    cotangent = rng.normal(size=(6, 4, 4, 4))

    gamma64, beta64 = tf.Variable(gamma), tf.Variable(beta)
    reference = _hvp(
        lambda y: _reference_batchnorm(y, gamma64, beta64, 1e-3),
        tf.constant(x),
        tf.constant(kernel),
        gamma64,
        beta64,
        [tf.constant(v) for v in vectors],
        tf.constant(cotangent),
    )
    layer = BatchNormalization(epsilon=1e-3)
    layer.build((None, 4, 4, 4))
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    f32 = lambda a: tf.constant(a, "float32")  # noqa: E731
    args = [f32(x), f32(kernel), layer.gamma, layer.beta]
    args += [[f32(v) for v in vectors], f32(cotangent)]

    def ours_hvp():
        return _hvp(lambda y: layer(y, training=True), *args)

    if mode != "eager":
        # A closure, so that the traced function captures the variables.
        ours_hvp = tf.function(ours_hvp, jit_compile=mode == "xla")
    result = ours_hvp()
    for a, b in zip(result, reference):
        assert a is not None
        scale = np.abs(b).max()
        np.testing.assert_allclose(np.asarray(a) / scale, b / scale, atol=1e-5)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("dtype", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_matches_stock(dtype):
    shape = (4, 5, 6, 3)
    ours, stock = _pair(shape, -1, dtype=dtype)
    compute = keras.DTypePolicy(dtype).compute_dtype
    x = _inputs(shape, dtype=compute)
    spec = tf.TensorSpec((None,) + shape[1:], compute)
    assert "FusedBatchNormV3" in _op_types(tf.function(lambda t: ours(t, training=True)), spec)
    y_ours = ours(x, training=True)
    y_stock = stock(x, training=True)
    assert y_ours.dtype == y_stock.dtype == compute
    assert ours.moving_variance.dtype == "float32"
    y_ours = np.asarray(tf.cast(y_ours, "float32"))
    assert np.all(np.isfinite(y_ours))
    # One rounding to the compute dtype's precision: 2**-10 or 2**-7.
    tol = 4e-3 if compute == "float16" else 3e-2
    np.testing.assert_allclose(y_ours, tf.cast(y_stock, "float32"), rtol=tol, atol=tol)
    np.testing.assert_allclose(ours.moving_mean, stock.moving_mean, **TOL)
    np.testing.assert_allclose(ours.moving_variance, stock.moving_variance, **TOL)


def test_config_is_the_stock_config():
    ours = BatchNormalization(axis=1, momentum=0.8, epsilon=1e-4, center=False)
    stock = keras.layers.BatchNormalization(axis=1, momentum=0.8, epsilon=1e-4, center=False)
    config = ours.get_config()
    assert config == stock.get_config() | {"name": config["name"]}
    clone = BatchNormalization.from_config(config)
    assert isinstance(clone, BatchNormalization)
    assert clone.get_config() == config
    assert keras.saving.get_registered_name(BatchNormalization) == ("keras_gmix>BatchNormalization")


def _functional_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = x * 2.0  # a bare operation in the graph: cloned, but has no weights
    # A nested Sequential model, whose layer must be replaced too.
    x = keras.Sequential([keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(axis=-1)])(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.BatchNormalization()(x)  # 2-D: fallback inside ours
    outputs = keras.layers.Dense(3)(x)
    return keras.Model(inputs, outputs)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _randomize_statistics(model):
    rng = np.random.default_rng(5)
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(size=n))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=n))
            layer.gamma.assign(rng.normal(size=n))


def _stock_conv_model():
    return _conv_model(keras.layers.BatchNormalization)


@pytest.mark.parametrize("builder", [_functional_model, _stock_conv_model])
def test_fuse_batchnorm_keeps_predictions_and_weights(builder):
    model = builder()
    _randomize_statistics(model)
    fused = fuse_batchnorm(model)
    assert type(fused) is type(model)
    kinds = [type(layer) for layer in _all_layers(fused)]
    assert keras.layers.BatchNormalization not in kinds
    assert (
        kinds.count(BatchNormalization)
        == sum(type(layer) is keras.layers.BatchNormalization for layer in _all_layers(model))
        > 0
    )
    assert len(fused.weights) == len(model.weights)
    for a, b in zip(fused.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x = _inputs((5, 8, 8, 3))
    np.testing.assert_allclose(
        fused.predict(x, verbose=0),
        model.predict(x, verbose=0),
        rtol=1e-5,
        atol=1e-5,
    )
    # Training mode too: fused kernel against stock, same weights.
    np.testing.assert_allclose(fused(x, training=True), model(x, training=True), **TOL)
    # The copy owns its variables.
    assert not any(a is b for a, b in zip(fused.weights, model.weights))


def test_fit_matches_stock():
    """Ours trains as the stock layer does: the fused kernel on TensorFlow,
    the stock layer itself on JAX (where XLA fuses the stock computation)."""
    x, y = _inputs((12, 8, 8, 3)), np.arange(12) % 3
    weights = []
    for bn_class in (BatchNormalization, keras.layers.BatchNormalization):
        model = _conv_model(bn_class)
        model.set_weights(_conv_model(keras.layers.BatchNormalization).get_weights())
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    start = _conv_model(keras.layers.BatchNormalization).get_weights()
    for ours, stock in zip(*weights):
        np.testing.assert_allclose(ours, stock, **TOL)
    # Trained: the moving mean (index 3) left its initial zeros.
    assert np.abs(weights[0][3] - start[3]).max() > 1e-2


def test_fuse_batchnorm_rejects_subclassed_model():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.bn = keras.layers.BatchNormalization()

        def call(self, x):
            return self.bn(x)

    model = Net()
    model(np.zeros((2, 4, 4, 3), "float32"))
    message = "keras_gmix.layers.BatchNormalization"
    with pytest.raises(ValueError, match=message):
        fuse_batchnorm(model)


def test_keras_file_round_trip(tmp_path):
    model = _conv_model(BatchNormalization)
    x = _inputs((6, 8, 8, 3))
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, np.arange(6) % 3, batch_size=6, verbose=0)  # moves the statistics
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe_mode=True
    assert type(loaded.layers[1]) is BatchNormalization
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    for a, b in zip(loaded.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras
    from keras_gmix.layers import BatchNormalization

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6, 6, 3)).astype("float32")
    y = rng.integers(0, 4, 16)
    results = []
    for bn_class in (BatchNormalization, keras.layers.BatchNormalization):
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            keras.utils.set_random_seed(1)
            model = keras.Sequential([
                keras.Input((6, 6, 3)),
                keras.layers.Conv2D(4, 3, use_bias=False),
                bn_class(momentum=0.8),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(4),
            ])
            model.compile(
                optimizer="sgd",
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True
                ),
            )
        history = model.fit(
            x, y, batch_size=8, epochs=2, shuffle=False, verbose=0
        )
        results.append((history.history["loss"], model.get_weights()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    print("OK")
    """
)


@pytest.mark.tensorflow_only
def test_mirrored_strategy_fit_matches_stock():
    # Logical devices must be set before TensorFlow starts: a fresh process.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONPATH=root)
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout
