"""gmix-train, its checkpoints and its record on Keras' JAX backend (run with
KERAS_BACKEND=jax; tests/conftest.py collects this module on JAX only).

The training application is the TensorFlow one (tf.data pipelines feed
Keras' JAX trainer); these tests check what a JAX run must give as well: a
killed run resumes to the uninterrupted run bit for bit, TensorBoard gets
every epoch's scalars with the values of history.csv, config.json and
results.json name the backend, a run of another backend is not resumed, and
the console scripts choose the backend before Keras is imported.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_gmix as kg
from keras_gmix import cli, train
from tests.helpers.common import ROOT, TINY_RUN, resume_config

# TINY_RUN with the method that uses every part of the step (partition,
# decomposition) and TensorFlow's op determinism for the tf.data side.
RUN = dict(TINY_RUN, method="dgmix", deterministic=True)


class KillMidEpoch(keras.callbacks.Callback):
    """Stands for a kill in the middle of epoch `epoch`, after batch `batch`:
    that epoch's checkpoint is never written."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.kill_epoch, self.kill_batch, self.epoch = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == (self.kill_epoch, self.kill_batch):
            raise KeyboardInterrupt("killed")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run uninterrupted, and killed mid-epoch 1 then resumed."""
    root = tmp_path_factory.mktemp("jax_runs")
    reference, killed = str(root / "reference"), str(root / "killed")
    train.run(train.TrainConfig(output=reference, **RUN))
    with pytest.raises(KeyboardInterrupt):
        train.run(train.TrainConfig(output=killed, **RUN), callbacks=[KillMidEpoch(1, 0)])
    killed_at = kg.checkpoint.saved_epoch(os.path.join(killed, "backup"))
    train.run(resume_config(killed))
    return reference, killed, killed_at


def _state_of(output):
    """Every variable of the saved GMixModel and optimizer, and history.csv without times."""
    model = keras.saving.load_model(os.path.join(output, "model.keras"))
    values = [np.array(v.numpy()) for v in model.variables + model.optimizer.variables]
    history = [
        {k: v for k, v in row.items() if k != "seconds"}
        for row in kg.records.read_history(os.path.join(output, "history.csv"))
    ]
    return values, history


def _scalars(folder):
    """{tag: {step: value}} of the scalars in a TensorBoard run folder."""
    found = {}
    for name in sorted(os.listdir(folder)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)
                if tensor.ndim == 0:  # not a histogram
                    found.setdefault(value.tag, {})[event.step] = float(tensor)
    return found


@pytest.mark.slow  # three JAX runs, each compiling its step (126 s on 2 loaded cores)
def test_a_killed_jax_run_resumes_to_the_uninterrupted_run_bit_for_bit(runs):
    reference, killed, killed_at = runs
    assert killed_at == 1, "the kill came after epoch 0's checkpoint, before epoch 1's"
    (ref_values, ref_history), (values, history) = _state_of(reference), _state_of(killed)
    assert [row["epoch"] for row in history] == [0, 1]
    assert history == ref_history
    assert len(values) == len(ref_values) > 0
    for got, want in zip(values, ref_values):
        np.testing.assert_array_equal(got, want)
    assert not os.path.exists(os.path.join(killed, "backup"))


@pytest.mark.slow  # shares the runs above
def test_tensorboard_gets_every_epochs_scalars_with_history_values_on_jax(runs):
    for output in runs[:2]:
        history = kg.records.read_history(os.path.join(output, "history.csv"))
        board = os.path.join(output, "tensorboard")
        trained, validated = (
            _scalars(os.path.join(board, "train")),
            _scalars(os.path.join(board, "validation")),
        )
        for tag, column, scalars in (
            ("epoch_loss", "loss", trained),
            ("epoch_sharpness", "sharpness", trained),
            ("epoch_conflict", "conflict", trained),
            ("epoch_accuracy", "val_accuracy", validated),
        ):
            assert sorted(scalars[tag]) == [0, 1], (output, tag)
            np.testing.assert_allclose(
                [scalars[tag][row["epoch"]] for row in history],
                [row[column] for row in history],
                rtol=1e-6,
                err_msg=f"{output}: {tag}",
            )
        # The step values of every optimizer step (update_freq 1, 2 x 2 steps).
        steps = _scalars(os.path.join(board, kg.callbacks.STEPS_RUN))
        assert sorted(steps["learning_rate"]) == [1, 2, 3, 4], output
        assert sorted(trained["batch_loss"]) == [1, 2, 3, 4], output


@pytest.mark.slow  # shares the runs above
def test_config_and_results_name_the_jax_backend_and_gmix_flatness_measures(runs, tmp_path):
    reference = runs[0]
    for name in ("config.json", "results.json"):
        assert json.load(open(os.path.join(reference, name)))["backend"] == "jax", name
    assert json.load(open(os.path.join(reference, "config.json")))["jit"] is True
    flags = ["--examples", "32", "--eigenvalue-iters", "3", "--sharpness-steps", "2"]
    output = str(tmp_path / "flatness")
    model = os.path.join(reference, "model.keras")
    cli.flatness_main([model, *flags, "--points", "3", "--output", output, "--backend", "jax"])
    measured = json.load(open(os.path.join(output, "flatness.json")))
    text = json.dumps(measured)
    assert "top_eigenvalue" in text and "NaN" not in text


def test_a_jax_run_compiles_its_step_with_xla_unless_told_not_to():
    """Without jit, Keras' JAX `fit` dispatches every op from Python: the
    default digits job took 9.1 s an epoch against 1.9 s with XLA."""
    splits = kg.data.load_dataset("digits")
    for asked, expected in ((None, True), (False, False)):
        config = train.TrainConfig(method="gmix", jit=asked)
        model = train.build_compiled_model(config, splits, steps_per_epoch=4)
        assert model.jit_compile is expected, asked


def _tensorflow_run_folder(tmp_path, **saved):
    """A run folder whose config.json is a TensorFlow run's, unfinished."""
    output = tmp_path / "run"
    output.mkdir(parents=True)
    values = dict(train.TrainConfig(output=str(output), **RUN).to_dict(), **saved)
    (output / "config.json").write_text(json.dumps(values))
    return str(output)


def test_a_tensorflow_run_is_not_resumed_on_jax(tmp_path, capsys):
    """Refused before anything is read or written: its random streams
    (philox against threefry) and counters (int64 against int32) differ, so
    a JAX resume could not continue it. A config.json written before
    `backend` existed is a TensorFlow run's."""
    output = _tensorflow_run_folder(tmp_path, backend="tensorflow")
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--resume", "--output", output])
    assert exit_info.value.code == 2
    assert (
        "`backend` is 'tensorflow' (the backend the run in --output was started on), but "
        "Keras runs on 'jax'" in " ".join(capsys.readouterr().err.split())
    )
    legacy = _tensorflow_run_folder(tmp_path / "legacy")
    config_path = os.path.join(legacy, "config.json")
    values = json.load(open(config_path))
    del values["backend"]
    with open(config_path, "w") as f:
        json.dump(values, f)
    with pytest.raises(ValueError, match=r"backend: 'tensorflow' -> 'jax'"):
        train.run(resume_config(legacy))
    assert sorted(os.listdir(legacy)) == [".lock", "config.json"]


def test_tf_distribute_strategies_are_refused_on_jax(tmp_path):
    output = tmp_path / "run"
    with pytest.raises(ValueError, match="tf.distribute strategy, which Keras' jax backend"):
        train.run(train.TrainConfig(output=str(output), distribute="mirrored", **RUN))
    assert not output.exists()


def _launch(args, env_backend):
    """`python gmix_launch.py *args` with KERAS_BACKEND=env_backend in its environment."""
    env = dict(os.environ, KERAS_BACKEND=env_backend, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "gmix_launch.py"), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env=env,
    )


def test_the_launcher_sets_the_backend_before_keras_is_imported(tmp_path):
    """`--backend jax` wins over KERAS_BACKEND=tensorflow: the run meets the
    JAX backend's own refusal of tf.distribute (no training needed)."""
    output = tmp_path / "run"
    args = ["gmix-train", "--backend", "jax", "--distribute", "mirrored", "--output", str(output)]
    done = _launch(args, env_backend="tensorflow")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Keras' jax backend does not run" in done.stderr
    assert not output.exists()


@pytest.mark.slow  # the default job on JAX and a TensorFlow load: minutes
def test_gmix_train_backend_jax_trains_the_default_job_to_tensorflows_accuracy(tmp_path):
    output = str(tmp_path / "main")
    done = _launch(["gmix-train", "--backend", "jax", "--output", output], "tensorflow")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.load(open(os.path.join(output, "results.json")))
    assert results["backend"] == "jax"
    # The CI bar of the default job on TensorFlow (.ci/run).
    assert results["test_accuracy"] >= 0.95, results
    # The model.keras of a JAX run loads and predicts alike on TensorFlow.
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, keras, numpy as np; import keras_gmix; "
        "m = keras.saving.load_model(sys.argv[1]); "
        "np.save(sys.argv[3], np.asarray(m.predict(np.load(sys.argv[2]), verbose=0)))"
    )
    env = dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            os.path.join(output, "model.keras"),
            str(tmp_path / "x.npy"),
            str(tmp_path / "tf.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    on_jax = keras.saving.load_model(os.path.join(output, "model.keras")).predict(x, verbose=0)
    np.testing.assert_allclose(np.load(tmp_path / "tf.npy"), on_jax, rtol=1e-4, atol=1e-5)
