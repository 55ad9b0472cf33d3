"""tf.distribute: MirroredStrategy (two logical CPUs), multi-worker (two
processes), mixed precision."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import keras_gmix as kg
from tests.distributed import multiworker_worker as worker
from tests.helpers.common import epochs_in_backup

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER_TIMEOUT = 240  # seconds; a hung collective must not hang CI


def subprocess_env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT, **extra)
    return env


# -- MirroredStrategy --------------------------------------------------------


@pytest.fixture(scope="module")
def mirrored():
    """Runs tests/distributed/mirrored_checks.py once; its measured numbers."""
    completed = subprocess.run(
        [sys.executable, os.path.join(HERE, "distributed", "mirrored_checks.py")],
        capture_output=True,
        text=True,
        timeout=1800,
        env=subprocess_env(),
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout)


def test_mirrored_runs_on_two_replicas(mirrored):
    assert mirrored["replicas"] == 2


def test_mirrored_sync_sam_equals_one_device(mirrored):
    assert mirrored["sync_sam"] < 1e-5


@pytest.mark.parametrize("method", ["sam", "dgmix"])
def test_mirrored_per_replica_update_is_mean_of_halves(mirrored, method):
    assert mirrored["per_replica"][method]["weights"] < 1e-5
    # The logged loss is the global mean, not a per-replica scaled value.
    assert mirrored["per_replica"][method]["logged_loss"] < 1e-5


@pytest.mark.parametrize("method", ["sam", "dgmix"])
def test_mirrored_step_values_are_the_first_replicas(mirrored, method):
    """`last_lam` and `last_sensitivity` (metrics, not weights) read as replica 0's values."""
    values = mirrored["per_replica"][method]
    assert values["last_lam_all_nan"] == (method == "sam")
    assert values["last_lam"] < 1e-6
    assert values["last_sensitivity"] < 1e-5
    assert values["padding_is_nan"]


def test_mirrored_replicas_draw_different_mixes(mirrored):
    lams, perms = mirrored["draws"]["lams"], mirrored["draws"]["perms"]
    assert lams[0] != lams[1] and perms[0] != perms[1]
    assert all(sorted(p) == list(range(8)) for p in perms)


def test_mirrored_every_method_logs_finite_values(mirrored):
    assert set(mirrored["logs"]) == set(kg.METHODS)
    for method, logs in mirrored["logs"].items():
        assert all(np.isfinite(v) for v in logs.values()), (method, logs)
    assert "conflict" in mirrored["logs"]["dgmix"]


def test_mirrored_schedule_keeps_one_v_and_one_choice_on_every_replica(mirrored):
    schedule = mirrored["schedule"]
    assert schedule["v_norm"] > 1e-3  # a real direction, not zeros on both sides
    assert schedule["v_between_replicas"] == 0.0
    assert schedule["v_vs_reference"] < 1e-5
    assert schedule["random_logged"] == schedule["random_drawn"]
    assert 0 < sum(schedule["random_drawn"]) < 8  # both kinds of step were taken


@pytest.mark.parametrize("case", ["every_2_from_3", "random_from_4"])
def test_mirrored_late_phase_makes_one_choice_on_every_replica(mirrored, case):
    late = mirrored["late_phase"][case]
    assert late["logged"] == late["drawn"]
    assert late["drawn"][:3] == [0.0, 0.0, 0.0] and 0 < sum(late["drawn"]) < 10


@pytest.mark.parametrize("method", ["dgmix", "sam"])
def test_mirrored_jit_gradients_equal_graph_mode(mirrored, method):
    """XLA per replica (optimizer.apply outside) where compile(jit_compile=True) cannot run."""
    assert mirrored["jit_gradients"][method] < 1e-5


def test_mirrored_nan_on_one_replica_skips_the_step_everywhere(mirrored):
    assert mirrored["nan_skip"] == {"skipped": 1.0, "changed": 0.0}


# -- MultiWorkerMirroredStrategy: two processes on 127.0.0.1 ---------------------


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    with contextlib.ExitStack() as stack:
        for s in sockets:
            stack.enter_context(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def start_workers(tmp_path, tag, method, sync, *extra):
    """Starts the two workers of a cluster on free local ports; logs in tmp_path."""
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    processes = []
    for index in range(2):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        log = open(tmp_path / f"{tag}{index}.log", "w")
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    os.path.join(HERE, "distributed", "multiworker_worker.py"),
                    str(tmp_path / f"{tag}{index}.npz"),
                    method,
                    "1" if sync else "0",
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=subprocess_env(TF_CONFIG=config),
                cwd=ROOT,
            )
        )
    return processes


def stop(processes):
    for p in processes:
        if p.poll() is None:
            p.kill()
            p.wait()


def worker_results(tmp_path, tag):
    logs = [(tmp_path / f"{tag}{i}.log").read_text() for i in range(2)]
    results = []
    for index in range(2):
        path = tmp_path / f"{tag}{index}.npz"
        if path.exists():
            saved = np.load(path)
            weights = [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)]
            results.append((weights, json.loads(str(saved["history"]))))
    return results, logs


def run_workers(tmp_path, method, sync, *extra, tag="worker"):
    """Runs a two-worker cluster to the end (bounded), kills whatever is left."""
    processes = start_workers(tmp_path, tag, method, sync, *extra)
    try:
        codes = [p.wait(timeout=WORKER_TIMEOUT) for p in processes]
    finally:
        stop(processes)
    return (codes, *worker_results(tmp_path, tag))


def one_process_reference(method, sync, epochs=2):
    x, y = worker.make_data()
    model = worker.make_model(method, sync)
    history = model.fit(
        x, y, batch_size=worker.GLOBAL_BATCH, epochs=epochs, verbose=0, shuffle=False
    )
    return model.inner.get_weights(), history.history


@pytest.mark.slow  # two worker processes
def test_multiworker_sync_sam_equals_one_process(tmp_path):
    codes, results, logs = run_workers(tmp_path, "sam", True)
    assert codes == [0, 0], logs[0][-3000:]
    weights, history = one_process_reference("sam", True)
    for worker_weights, worker_history in results:
        assert max(np.abs(a - b).max() for a, b in zip(worker_weights, weights)) < 1e-5
        np.testing.assert_allclose(worker_history["loss"], history["loss"], rtol=1e-5)
        assert worker_history["epochs_run"] == [0, 1]


@pytest.mark.slow  # two worker processes
def test_multiworker_gmix_completes_and_workers_agree(tmp_path):
    codes, results, logs = run_workers(tmp_path, "gmix", False)
    assert codes == [0, 0], logs[0][-3000:]
    (w0, h0), (w1, h1) = results
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(a, b)
    assert h0 == h1 and all(np.isfinite(h0["loss"]))


@pytest.mark.slow
def test_multiworker_lost_worker_restart_resumes_from_checkpoint(tmp_path):
    """Kill one worker mid-training; restarting both resumes from the last
    checkpoint and completes."""
    backup = tmp_path / "backup"
    args = ["--epochs", "8", "--backup", str(backup)]
    first = start_workers(tmp_path, "first", "gmix", False, *args, "--step-seconds", "0.25")
    try:
        deadline = time.time() + WORKER_TIMEOUT
        # Wait until both workers have a checkpoint (epoch 1 done), then kill one mid-epoch.
        while not all(epochs_in_backup(backup / f"worker{i}") >= 1 for i in range(2)):
            assert time.time() < deadline and all(p.poll() is None for p in first), (
                "no checkpoint in time"
            )
            time.sleep(0.2)
        time.sleep(0.5)
        first[1].kill()
        first[1].wait()
        # The survivor blocks in its next all-reduce or fails: either way it is stopped.
        try:
            first[0].wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    finally:
        stop(first)
    assert not (tmp_path / "first0.npz").exists()  # the first run did not finish

    codes, results, logs = run_workers(tmp_path, "gmix", False, *args, tag="second")
    assert codes == [0, 0], logs[0][-3000:]
    (w0, h0), (w1, h1) = results
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(a, b)
    assert h0["epochs_run"] == h1["epochs_run"]
    assert 0 < h0["epochs_run"][0] and h0["epochs_run"][-1] == 7  # resumed, then completed


@pytest.mark.slow
def test_multiworker_workers_one_epoch_apart_resume_together(tmp_path):
    """Killed between two workers' commits (worker 0 saved epoch 2, worker 1
    only epoch 1): both resume from epoch 1 and end as an uninterrupted run."""
    backup = tmp_path / "backup"
    args = ["--epochs", "3", "--backup", str(backup)]
    first = start_workers(tmp_path, "first", "sam", True, *args, "--die-before-commit", "2")
    try:
        deadline = time.time() + WORKER_TIMEOUT
        while kg.checkpoint.saved_epoch(str(backup / "worker0")) < 2:
            assert time.time() < deadline and first[0].poll() is None, (
                "worker 0 did not save epoch 2"
            )
            time.sleep(0.2)
        assert first[1].wait(timeout=WORKER_TIMEOUT) == 3  # died before its commit
    finally:
        stop(first)
    assert [kg.checkpoint.saved_epoch(str(backup / f"worker{i}")) for i in range(2)] == [2, 1]

    codes, results, logs = run_workers(tmp_path, "sam", True, *args, tag="second")
    assert codes == [0, 0], logs[0][-3000:]
    weights, history = one_process_reference("sam", True, epochs=3)
    for worker_weights, worker_history in results:
        assert worker_history["epochs_run"] == [1, 2]  # both from epoch 1
        assert max(np.abs(a - b).max() for a, b in zip(worker_weights, weights)) < 1e-5
        np.testing.assert_allclose(worker_history["loss"], history["loss"][1:], rtol=1e-5)


@pytest.mark.slow  # two worker processes
def test_keras_still_needs_the_multiworker_workaround(tmp_path):
    """Fails when a Keras release fixes keras-team/keras#20585: then drop the workaround."""
    codes, _, logs = run_workers(tmp_path, "sam", True, "--no-workaround")
    assert codes != [0, 0], "Keras now trains across workers without the workaround"
    assert any("PerReplica" in log for log in logs), logs[0][-3000:]


# -- mixed precision ------------------------------------------------------------


@contextlib.contextmanager
def dtype_policy(name):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def separable_problem(n=256, seed=0):
    centers = np.random.default_rng(99).normal(
        scale=2.0, size=(3, 8)
    )  # the same classes for every split
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return (centers[y] + rng.normal(size=(n, 8))).astype("float32"), y


def train_small(policy, optimizer=None, epochs=8):
    x, y = separable_problem()
    with dtype_policy(policy):
        keras.utils.set_random_seed(0)
        inner = keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Dense(32),
                keras.layers.BatchNormalization(),
                keras.layers.ReLU(),
                keras.layers.Dense(3, dtype="float32"),
            ]
        )
        model = kg.GMixModel(inner, method="dgmix", seed=0)
        model.compile(
            optimizer=optimizer or keras.optimizers.SGD(0.1, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)
        x_test, y_test = separable_problem(seed=1)
        accuracy = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
    return model, accuracy


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_like_float32(policy):
    optimizer = (
        keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1, momentum=0.9))
        if policy == "mixed_float16"
        else None
    )
    model, accuracy = train_small(policy, optimizer)
    _, reference = train_small("float32")
    assert model.inner.layers[0].compute_dtype == policy.split("_")[1]
    assert all(np.all(np.isfinite(w)) for w in model.inner.get_weights())
    assert reference > 0.9 and abs(accuracy - reference) < 0.05


def test_mixed_float16_overflow_skips_the_step():
    """A loss scale that overflows float16 gives non-finite gradients: the step
    is skipped, not applied."""
    x, y = separable_problem(32)
    with dtype_policy("mixed_float16"):
        keras.utils.set_random_seed(0)
        inner = keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dense(3, dtype="float32"),
            ]
        )
        optimizer = keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.1), initial_scale=2.0**40
        )
        model = kg.GMixModel(inner, method="gmix", seed=0)
        model.compile(
            optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        before = inner.get_weights()
        model.train_on_batch(x, y)
        for a, b in zip(inner.get_weights(), before):
            np.testing.assert_array_equal(a, b)
        assert float(optimizer.dynamic_scale) < 2.0**40  # the scale was lowered
        model.fit(x, y, batch_size=8, epochs=10, verbose=0)  # until the scale fits, then it trains
        after = inner.get_weights()
    assert all(np.all(np.isfinite(w)) for w in after)
    assert any(not np.array_equal(a, b) for a, b in zip(after, before))
