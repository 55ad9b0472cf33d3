"""Canaries for the private Keras/TensorFlow names of keras_gmix/compat.py.

One test per function of compat.py: it checks that the private name still
exists and, where it is cheap, still does what compat relies on. On a Keras
or TensorFlow release that moved one, the failure says which, in a
sentence, before a training run fails somewhere deep inside `fit`. The last
tests check that no other module of the package touches a private upstream
name.
"""

import ast
import csv
import importlib
import inspect
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_gmix import compat
from keras_gmix.model import GMixModel

PACKAGE_DIR = os.path.dirname(os.path.abspath(compat.__file__))


def moved(name, library="Keras"):
    version = keras.__version__ if library == "Keras" else tf.__version__
    return f"{library} {version} moved `{name}`; update keras_gmix/compat.py"


def require(condition, name, library="Keras"):
    if not condition:
        pytest.fail(moved(name, library))


def parameters(function):
    return set(inspect.signature(function).parameters)


def tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_every_compat_function_has_a_canary():
    public = {
        name
        for name, value in vars(compat).items()
        if inspect.isfunction(value) and not name.startswith("_")
    }
    assert public == set(compat.INTERNALS)
    missing = [name for name in compat.INTERNALS if f"test_{name}" not in globals()]
    assert not missing, f"compat functions without a canary: {missing}"


def test_per_batch_function_around():
    require(hasattr(keras.Model, "_make_function"), "Trainer._make_function")
    model = tiny_model()
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    require(hasattr(model, "_jit_compile"), "Trainer._jit_compile")
    # compat's xla=False relies on the function reading jit_compile when made.
    require(
        "self.jit_compile" in inspect.getsource(type(model)._make_function),
        "Trainer._make_function (no longer reads jit_compile)",
    )

    def step(data):
        logs = model.train_step(data)
        logs["extra"] = tf.constant(2.0)
        return logs

    data = tf.data.Dataset.from_tensors((tf.zeros((4, 3)), tf.zeros((4, 2))))
    function = compat.per_batch_function_around(model, step, xla=False)
    require(model.jit_compile is True, "Trainer._jit_compile (not restored)")
    logs = function(iter(data))
    logs = logs.get_value() if hasattr(logs, "get_value") else logs
    require(float(logs["extra"]) == 2.0, "Trainer._make_function (the step's logs)")


def test_state_shardings():
    # JAX's trainer, read without switching the backend of this process.
    trainer = importlib.import_module("keras.src.backend.jax.trainer").JAXTrainer
    require(
        parameters(getattr(trainer, "_get_state_sharding_spec", lambda self: None)) == {"self"}
        and hasattr(trainer, "_get_state_sharding_spec"),
        "JAXTrainer._get_state_sharding_spec",
    )
    require(
        parameters(getattr(trainer, "_make_function", lambda self, x: None))
        >= {"self", "step_function"},
        "JAXTrainer._make_function",
    )


def test_maybe_symbolic_build():
    method = getattr(keras.Model, "_maybe_symbolic_build", None)
    require(callable(method), "Model._maybe_symbolic_build")
    require(
        {"iterator", "data_batch"} <= parameters(method),
        "Model._maybe_symbolic_build(iterator, data_batch)",
    )
    # The override only works while it sits on a class of GMixModel's under
    # this name: the TensorFlow backend's step shell.
    from keras_gmix import backend

    assert "_maybe_symbolic_build" in vars(backend.StepShell)
    assert issubclass(GMixModel, backend.StepShell)


def test_symbolic_build():
    method = getattr(keras.Model, "_symbolic_build", None)
    require(callable(method), "Model._symbolic_build")
    require("data_batch" in parameters(method), "Model._symbolic_build(data_batch=...)")


def test_build_if_deferred():
    require(hasattr(tiny_model(), "_distribute_strategy"), "Trainer._distribute_strategy")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Dense(2)])  # built by its first batch
    model.compile(optimizer="sgd", loss="mse")
    batch = (np.zeros((4, 3), "float32"), np.zeros((4, 2), "float32"))
    compat.build_if_deferred(model, data_batch=batch)
    require(model.built and model.count_params() == 8, "Model._symbolic_build (no longer builds)")


def test_flatten_logs_like_keras():
    model = tiny_model()
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    model.fit(np.zeros((4, 3)), np.zeros((4, 2)), epochs=1, verbose=0)
    require(
        compat.flatten_logs_like_keras(model, {"mae": 2.0, "loss": 1.0}) == [1.0, 2.0],
        "Trainer._flatten_metrics_in_order",
    )
    require(
        compat.flatten_logs_like_keras(model, {"loss": 1.0}) == 1.0,
        "Trainer._flatten_metrics_in_order (one value alone)",
    )


def test_loss_tracker():
    model = tiny_model()
    try:
        tracker = compat.loss_tracker(model)
    except AttributeError:
        pytest.fail(moved("Model._loss_tracker"))
    require(
        isinstance(tracker, keras.metrics.Mean) and tracker.name == "loss", "Model._loss_tracker"
    )
    require(
        any(metric is tracker for metric in model.metrics),
        "Model._loss_tracker (no longer in model.metrics)",
    )


def test_per_output_loss_metrics():
    inputs = keras.Input((3,))
    model = keras.Model(
        inputs, {"a": keras.layers.Dense(2, name="a")(inputs), "b": keras.layers.Dense(2)(inputs)}
    )
    model.compile(optimizer="sgd", loss={"a": "mse", "b": "mse"})
    require(compat.per_output_loss_metrics(model) == [], "Model._compile_loss (built too early)")
    x = np.zeros((4, 3), "float32")
    model.evaluate(x, {"a": np.zeros((4, 2)), "b": np.zeros((4, 2))}, verbose=0)
    try:
        names = [metric.name for metric in compat.per_output_loss_metrics(model)]
    except AttributeError:
        pytest.fail(moved("Model._compile_loss.metrics"))
    require(names == ["a_loss", "b_loss"], "Model._compile_loss.metrics (per-output losses)")


def test_set_initial_epoch():
    model = tiny_model()
    require(hasattr(model, "_initial_epoch"), "Trainer._initial_epoch")
    compat.set_initial_epoch(model, 2)
    history = model.fit(np.zeros((4, 3)), np.zeros((4, 2)), epochs=3, verbose=0)
    require(history.epoch == [2], "Trainer._initial_epoch (fit no longer starts there)")


def test_set_tensorboard_train_step(tmp_path):
    callback = keras.callbacks.TensorBoard(str(tmp_path), update_freq="epoch")
    require(
        isinstance(getattr(callback, "_global_train_batch", None), int),
        "TensorBoard._global_train_batch",
    )
    callback.set_model(tiny_model())
    compat.set_tensorboard_train_step(callback, 41)
    callback.on_train_batch_begin(0)
    require(
        callback._global_train_batch == 42,
        "TensorBoard._global_train_batch (no longer counted per batch)",
    )


def test_csv_logger_write_header(tmp_path):
    path = str(tmp_path / "log.csv")
    logger = keras.callbacks.CSVLogger(path, append=True)
    require(getattr(logger, "append_header", None) is True, "CSVLogger.append_header")
    logger.on_train_begin()
    logger.append_header = False  # what on_train_begin sets for a file with rows
    compat.csv_logger_write_header(logger)
    logger.on_epoch_end(0, {"loss": 1.0})
    logger.on_train_end()
    with open(path, newline="") as f:
        require(
            next(csv.reader(f))[:2] == ["epoch", "loss"],
            "CSVLogger.append_header (no header written)",
        )


def test_csv_logger_set_columns(tmp_path):
    path = str(tmp_path / "log.csv")
    logger = keras.callbacks.CSVLogger(path)
    require(hasattr(logger, "keys"), "CSVLogger.keys")
    logger.on_train_begin()
    compat.csv_logger_set_columns(logger, ["loss", "val_loss"])
    logger.on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5, "val_loss": 2.0})
    logger.on_train_end()
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    require(
        rows[0] == ["epoch", "loss", "val_loss"],
        "CSVLogger.keys (the columns are no longer taken from it)",
    )


def test_weights_h5_bytes(tmp_path):
    model = tiny_model()
    model.optimizer.build(model.trainable_variables)
    try:
        content = compat.weights_h5_bytes(model)
    except (ImportError, AttributeError, TypeError):
        pytest.fail(moved("keras.src.saving.saving_lib.H5IOStore / _save_state"))
    path = tmp_path / "m.weights.h5"
    path.write_bytes(content)
    other = tiny_model()
    other.optimizer.build(other.trainable_variables)
    other.load_weights(str(path))
    for got, want in zip(other.weights, model.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    saved = tmp_path / "keras.weights.h5"
    model.save_weights(str(saved))
    require(
        len(content) > 0 and abs(len(content) - saved.stat().st_size) < 4096,
        "saving_lib.H5IOStore / _save_state (no longer the file save_weights writes)",
    )


def test_is_functional():
    try:
        inputs = keras.Input((3,))
        functional = keras.Model(inputs, keras.layers.Dense(2)(inputs))
        result = compat.is_functional(functional)
    except ImportError:
        pytest.fail(moved("keras.src.models.functional.Functional"))
    require(result, "keras.src.models.functional.Functional")
    assert not compat.is_functional(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))


def test_in_multi_worker_mode():
    default = tf.distribute.get_strategy()
    require(
        callable(getattr(default.extended, "_in_multi_worker_mode", None)),
        "StrategyExtended._in_multi_worker_mode",
        "TensorFlow",
    )
    assert compat.in_multi_worker_mode(default) is False
    # The class that answers True; not instantiated here (that would set up
    # collective ops for the whole test process).
    module = inspect.getmodule(tf.distribute.MultiWorkerMirroredStrategy)
    extended = getattr(module, "CollectiveAllReduceExtended", None)
    require(
        extended is not None and "_in_multi_worker_mode" in vars(extended),
        "CollectiveAllReduceExtended._in_multi_worker_mode",
        "TensorFlow",
    )


def test_strategy_supports_no_merge_call():
    function = getattr(
        getattr(getattr(tf, "__internal__", None), "distribute", None),
        "strategy_supports_no_merge_call",
        None,
    )
    require(
        callable(function),
        "tf.__internal__.distribute.strategy_supports_no_merge_call",
        "TensorFlow",
    )
    assert compat.strategy_supports_no_merge_call() is True  # no strategy: no merge_call
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        assert compat.strategy_supports_no_merge_call() is False


# -- nothing else touches a private upstream name ---------------------------------


def _package_files():
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in sorted(files):
            if name.endswith(".py") and os.path.join(folder, name) != compat.__file__:
                yield os.path.join(folder, name)


# collections.namedtuple's documented public methods: underscored only so
# that they cannot clash with field names.
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}


def _private(name):
    return (
        name.startswith("_")
        and not name.startswith("__")
        and name != "_"
        and name not in NAMEDTUPLE_API
    )


def _private_names(tree):
    """`(used, defined)`: private attribute names a module uses, and those it defines."""
    used, defined = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _private(
            node.name
        ):
            defined.add(node.name)
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            used.add(node.attr)
            if (
                isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                defined.add(node.attr)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            used.add(node.args[1].value)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and _private(node.id):
            defined.add(node.id)
    return used, defined


def test_no_module_but_compat_names_keras_or_tensorflow_internals():
    offences = []
    for path in _package_files():
        text = open(path, encoding="utf-8").read()
        for pattern in ("keras.src", "__internal__", "tf.python", "tensorflow.python"):
            if pattern in text:
                offences.append(f"{os.path.relpath(path, PACKAGE_DIR)} names {pattern}")
    assert not offences, "Move these into keras_gmix/compat.py: " + "; ".join(offences)


def test_no_module_but_compat_uses_a_private_upstream_attribute():
    # A private attribute name is keras_gmix's own when the package defines
    # it (a def, a class, `self._x = ...`); any other one is upstream's.
    trees = {path: ast.parse(open(path, encoding="utf-8").read()) for path in _package_files()}
    ours = set().union(*(_private_names(tree)[1] for tree in trees.values()))
    offences = [
        f"{os.path.relpath(path, PACKAGE_DIR)} uses {name}"
        for path, tree in trees.items()
        for name in sorted(_private_names(tree)[0] - ours)
    ]
    assert not offences, "Private upstream names outside keras_gmix/compat.py: " + "; ".join(
        offences
    )


# Private upstream methods that keras_gmix overrides on purpose: Keras calls
# them by name, so the override cannot move into compat.py (its body
# delegates there, and a canary above checks the name).
SANCTIONED_OVERRIDES = {("GMixModel", "_maybe_symbolic_build")}


def _module_names():
    for path in _package_files():
        relative = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[: -len(".py")]
        yield relative.replace(os.sep, ".").removesuffix(".__init__")


def test_no_class_reuses_a_private_name_of_its_upstream_base():
    # A private name our subclass defines that its Keras/TF base class also
    # uses is an upstream internal in disguise (`self._global_train_batch =`
    # in a TensorBoard subclass sets Keras' counter), or a clash waiting to
    # happen.
    offences = []
    for module_name in _module_names():
        module = importlib.import_module(module_name)
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module_name:
                continue
            upstream = [
                base
                for base in cls.__mro__
                if base.__module__ != "builtins" and not base.__module__.startswith("keras_gmix")
            ]
            if not upstream:
                continue
            upstream_source = "\n".join(
                {inspect.getsource(inspect.getmodule(base)) for base in upstream}
            )
            defined = _private_names(ast.parse(inspect.getsource(cls)))[1]
            for name in sorted(defined):
                if (cls.__name__, name) not in SANCTIONED_OVERRIDES and re.search(
                    rf"\b{re.escape(name)}\b", upstream_source
                ):
                    offences.append(f"{module_name}.{cls.__name__}.{name}")
    assert not offences, "Private names shared with an upstream base class: " + "; ".join(offences)
