"""What several test files share: small models and data, the compiled GMixModel,
one-step references, and the runs of gmix-train the resume tests start from.

Plain functions; the pytest fixtures built on them are in tests/conftest.py.
"""

import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

import keras_gmix as kg
from keras_gmix import config as config_lib
from keras_gmix import gradients

D, C, N = 6, 3, 32
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HELPERS = os.path.join(ROOT, "tests", "helpers")


def small_model(seed=0, head=None):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((D,)), keras.layers.Dense(8, activation="relu"), head or keras.layers.Dense(C)]
    )


def dense_bn_model(seed=0, dropout=0.0):
    keras.utils.set_random_seed(seed)
    layers = [
        keras.Input((D,)),
        keras.layers.Dense(8),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
    ]
    if dropout:
        layers.append(keras.layers.Dropout(dropout, seed=seed))
    layers.append(keras.layers.Dense(C))
    return keras.Sequential(layers)


def traced(fn):
    """`fn` traced and compiled as the backend's trainer does: a tf.function
    on TensorFlow, jax.jit on JAX (with Python arguments as constants)."""
    if keras.backend.backend() == "jax":
        import jax

        return lambda *args: jax.jit(lambda: fn(*args))()

    return tf.function(fn, autograph=False)


def step_check_error():
    """The error type a failed data check inside the training step raises:
    TensorFlow's assert, or JAX's runtime error around the host check's
    ValueError."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.errors.JaxRuntimeError
    import tensorflow as tf

    return tf.errors.InvalidArgumentError


def linear_model(seed=0, classes=C, normal_weights=False):
    """One Dense layer from D inputs to `classes`; `normal_weights` draws its
    kernel and bias from N(0, 1) instead of Keras' initializers."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((D,)), keras.layers.Dense(classes)])
    if normal_weights:
        rng = np.random.default_rng(seed)
        model.set_weights(
            [
                rng.normal(size=(D, classes)).astype("float32"),
                rng.normal(size=classes).astype("float32"),
            ]
        )
    return model


def data(n=N, *, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, D)).astype("float32"), rng.integers(0, C, n)


# What the tests of the guarded step (bad input, skipped steps, checkpoints)
# compile with: a momentum optimizer, whose state a skipped step must leave as
# it was, seed 0, no metrics.
GUARDED = dict(momentum=0.9, seed=0, metrics=())


def compiled(
    method="dgmix",
    inner=None,
    *,
    optimizer=None,
    loss=None,
    momentum=0.0,
    seed=5,
    metrics=("accuracy",),
    **kwargs,
):
    """A GMixModel over `inner` (dense_bn_model() if None), compiled with
    SGD(0.1, momentum) and sparse cross-entropy on logits unless given."""
    model = kg.GMixModel(inner or dense_bn_model(), method=method, seed=seed, **kwargs)
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.1, momentum=momentum),
        loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=list(metrics) or None,
    )
    return model


def step_inputs(model, x, y, step=1):
    """The batch that step `step` of `model` trains on (mixed if the method mixes)."""
    y_one_hot = keras.ops.one_hot(y, C)
    if model.method not in gradients.MIXED_METHODS:
        return x, y_one_hot
    x_mix, y_mix, _, _ = model.mix_data(x, y_one_hot, None, model.mixing_seed(step))
    return x_mix, y_mix


def weights_after_sgd_step(reference, x, y_soft, method, learning_rate=1.0):
    """The reference model's weights after one plain SGD step on `update_gradients`."""
    grads, _ = kg.update_gradients(
        reference,
        x,
        y_soft,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        method=method,
    )
    return [
        w.numpy() - learning_rate * np.asarray(g)
        for w, g in zip(reference.trainable_variables, grads)
    ]


def assert_trained_to(model, expected):
    for variable, value in zip(model.inner.trainable_variables, expected):
        np.testing.assert_allclose(variable.numpy(), value, rtol=1e-5, atol=1e-6)


def weights_of(model):
    return [v.numpy().copy() for v in model.inner.weights]


def assert_unchanged(model, before):
    for variable, value in zip(model.inner.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value)


class CountingModel(keras.Model):
    """Counts forward calls, and backward passes through its first layer."""

    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.head = keras.layers.Dense(C)
        self.forward_calls = 0
        self.backward_calls = 0

    def call(self, x):
        self.forward_calls += 1

        @keras.ops.custom_gradient
        def counted(h):
            def grad(*args, upstream=None):
                self.backward_calls += 1
                return args[0] if upstream is None else upstream

            return h * 1.0, grad

        return self.head(counted(self.hidden(x)))


class Kill(keras.callbacks.Callback):
    """Stands for a kill: stops the process's fit after epoch `after` (backup written)."""

    def __init__(self, after):
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after:
            raise KeyboardInterrupt("killed")


def copy_run(folder, tmp_path):
    """A copy of the run folder `folder` in `tmp_path` (a test may damage it)."""
    output = str(tmp_path / "run")
    shutil.copytree(folder, output)
    return output


# A run of a few steps; schedule "constant" so that its epochs may grow on resume.
TINY_RUN = dict(
    method="gmix",
    epochs=2,
    train_size=32,
    batch_size=16,
    verbose=0,
    tensorboard_update_freq=1,
    schedule="constant",  # its epochs may grow on resume
)


def resume_config(output, **changes):
    """The TrainConfig of `--resume --output output` with `changes`."""
    from keras_gmix import train

    return train.TrainConfig.from_dict(
        config_lib.resume_values({"output": output, "resume": True, **changes})
    )


def gmix_train(args, prefix=(), expect=0):
    """Runs `python *prefix *args` from the repository root; expects exit code `expect`."""
    completed = subprocess.run(
        [sys.executable, *prefix, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT),
    )
    assert completed.returncode == expect, completed.stderr[-3000:]
    return completed


def truncate(path):
    """Cuts the file at `path` to half its length, as a kill mid-write would."""
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[: len(content) // 2])


def epochs_in_backup(backup_dir):
    """The finished epochs a running process's backup holds: 0 before its
    first checkpoint (the backup begins with a state of epoch 0)."""
    try:
        return kg.checkpoint.saved_epoch(str(backup_dir))
    except (OSError, ValueError):  # not there yet
        return 0
