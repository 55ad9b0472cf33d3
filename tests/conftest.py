import os

import pytest

# The backend is fixed when Keras is first imported: each backend's tests run
# in their own pytest process (`KERAS_BACKEND=jax python -m pytest` for JAX).
BACKEND = os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The test modules that also run on JAX: the step's arithmetic, the model
# around it, the flatness measures and the timing of a step, against the
# same references. The others test what is TensorFlow's (tf.data pipelines,
# tf.distribute, the applications' TensorFlow runs) and run there only;
# `test_jax` (the step) and `test_jax_train` (gmix-train, checkpoints,
# TensorBoard, the launcher) run on JAX only.
BOTH_BACKENDS = {
    "test_fit_mixes",
    "test_callbacks",
    "test_flatness",
    "test_gradients",
    "test_layers",
    "test_mixing",
    "test_model",
    "test_model_keras_api",
    "test_partition",
    "test_perturbation",
    "test_schedule",
    "test_step_guards",
    "test_timing",
}
JAX_ONLY = {"test_jax", "test_jax_train"}


def pytest_ignore_collect(collection_path, config):
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    name = collection_path.stem
    if BACKEND == "jax":
        return None if name in BOTH_BACKENDS | JAX_ONLY else True
    return True if name in JAX_ONLY else None


# Tests of backend-neutral code whose every case also runs in the default
# TensorFlow run: on JAX, where each case compiles its steps anew (about a
# minute per group on 2 cores), they run with the slow tests, so that the
# default run of both backends stays within 15 minutes.
SLOW_ON_JAX = (
    "tests/test_model_keras_api.py::test_two_stage_fine_tuning",
    "tests/test_schedule.py::test_defaults_reproduce_every_method_bit_for_bit",
    "tests/test_schedule.py::test_perturb_from_zero_keeps_a_schedule_bit_for_bit",
    "tests/test_schedule.py::test_config_and_keras_file_round_trip",
    "tests/test_schedule.py::test_a_compiled_schedule_follows_an_accumulating_optimizers_step_counter",
    "tests/test_model.py::test_old_layout_of_own_variables_loads_without_the_step_values",
)


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(config, items):
    """Tests marked `tensorflow_only` (a tf.function, a tf.data pipeline) are
    deselected on another backend; `SLOW_ON_JAX` are marked slow there."""
    if BACKEND == "tensorflow":
        return
    for item in items:
        if item.nodeid.startswith(SLOW_ON_JAX):
            item.add_marker(pytest.mark.slow)
    kept = [item for item in items if item.get_closest_marker("tensorflow_only") is None]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A gmix run of 2 epochs stopped after its first: config.json, history.csv, backup/."""
    from keras_gmix import train
    from tests.helpers.common import TINY_RUN, Kill

    output = str(tmp_path_factory.mktemp("interrupted") / "run")
    with pytest.raises(KeyboardInterrupt):
        train.run(train.TrainConfig(output=output, **TINY_RUN), callbacks=[Kill(after=0)])
    return output


@pytest.fixture
def run_copy(interrupted_run, tmp_path):
    from tests.helpers.common import copy_run

    return copy_run(interrupted_run, tmp_path)
