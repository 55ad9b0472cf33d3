"""Tests for the pure functions of the benchmark scripts (benchmarks/).

The statistics in the committed reports come from these functions, so they
are checked against independent references: SciPy's paired t-test for the
by-hand fallback, and sums worked out by hand for the flattening measure.
"""

import builtins
import importlib.util
import os

import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generalization():
    return load("generalization")


PAIRED_CASES = [
    ([0.61, 0.65, 0.63], [0.66, 0.69, 0.67]),  # 3 seeds, a clear gain
    ([0.9171, 0.9080, 0.9262], [0.9542, 0.9537, 0.9547]),
    ([0.50, 0.52, 0.49, 0.51, 0.50], [0.51, 0.50, 0.50, 0.52, 0.49]),  # no effect
]


@pytest.mark.parametrize("a, b", PAIRED_CASES)
def test_paired_test_by_hand_matches_scipy(generalization, a, b, monkeypatch):
    """Without SciPy the p-value is integrated by hand; it must match ttest_rel."""
    from scipy import stats

    expected_diff = float(np.mean(np.subtract(b, a)))
    expected_p = float(stats.ttest_rel(b, a).pvalue)
    real_import = builtins.__import__

    def refuse_scipy(name, *args, **kwargs):
        if name == "scipy" or name.startswith("scipy."):
            raise ImportError("scipy hidden by the test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse_scipy)
    with pytest.raises(ImportError):
        from scipy import stats as _  # noqa: F401  (the hiding works)
    diff, p = generalization.paired_test(a, b)
    assert diff == pytest.approx(expected_diff, abs=1e-12)
    assert p == pytest.approx(expected_p, rel=1e-4, abs=1e-6)


def test_paired_test_degenerate_cases(generalization):
    assert generalization.paired_test([], []) == (None, None)
    diff, p = generalization.paired_test([0.5], [0.6])  # one seed: no test
    assert diff == pytest.approx(0.1) and p is None
    diff, p = generalization.paired_test([0.5, 0.6], [0.6, 0.7])  # constant difference
    assert diff == pytest.approx(0.1) and p is None


def test_flattening_compares_the_last_two_tenths(generalization):
    # 20 epochs: k = 2; epochs 17-18 average 3.0, epochs 19-20 average 2.0.
    loss = [9.0] * 16 + [3.5, 2.5, 2.0, 2.0]
    assert generalization.flattening(loss) == pytest.approx(3.0 / 2.0 - 1.0)
    assert generalization.flattening([1.0] * 50) == pytest.approx(0.0)


def test_late_gain_is_end_minus_seventy_percent(generalization):
    acc = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    # index round(0.7 * 10) - 1 = 6 holds 0.7
    assert generalization.late_gain({"history": {"val_accuracy": acc}}) == pytest.approx(0.95 - 0.7)
    assert np.isnan(generalization.late_gain({"history": {}}))


def test_budget_epochs_per_subset(generalization):
    assert generalization.budget_epochs("mnist1d", "4000") == 200
    assert generalization.budget_epochs("cifar10_partial", "2500") == 200
    assert generalization.budget_epochs("cifar10_partial", "5438") == 200
    generalization.BUDGETS["cifar10_partial"]["epochs_by_subset"] = {"5438": 100}
    try:
        assert generalization.budget_epochs("cifar10_partial", "5438") == 100
        assert generalization.budget_epochs("cifar10_partial", "2500") == 200
    finally:
        del generalization.BUDGETS["cifar10_partial"]["epochs_by_subset"]


@pytest.mark.parametrize("key, expected", [
    ("mnist1d", ("mnist1d", "4000")),
    ("cifar10_partial:2500", ("cifar10_partial", "2500")),
    ("cifar10_partial:5438", ("cifar10_partial", "5438")),
])
def test_parse_dataset(generalization, key, expected):
    assert generalization.parse_dataset(key) == expected


@pytest.mark.parametrize("key", ["cifar10", "cifar10_partial", "cifar10_partial:3000", "mnist1d:100"])
def test_parse_dataset_refuses_unknown_keys(generalization, key):
    with pytest.raises(ValueError):
        generalization.parse_dataset(key)


def test_a_claimed_run_is_not_claimed_twice(generalization, tmp_path):
    path = str(tmp_path / "erm_seed0.json")
    assert generalization.claim(path)
    assert not generalization.claim(path)  # held by a live process (this one)
    generalization.release(path)
    assert generalization.claim(path)


def test_a_finished_run_is_not_claimed(generalization, tmp_path):
    path = str(tmp_path / "erm_seed0.json")
    generalization.write_json(path, {"test_accuracy": 0.5})
    assert not generalization.claim(path)
    assert not os.path.exists(path + ".claim")


def test_the_claim_of_a_dead_process_is_taken_over(generalization, tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = str(tmp_path / "erm_seed0.json")
    generalization.write_json(path + ".claim", {"pid": dead.pid, "boot": generalization.boot_id()})
    assert generalization.claim(path)
    assert generalization.read_json(path + ".claim")["pid"] == os.getpid()


def test_the_claim_of_another_boot_is_taken_over(generalization, tmp_path):
    path = str(tmp_path / "erm_seed0.json")
    generalization.write_json(path + ".claim", {"pid": os.getpid(), "boot": "another boot"})
    assert generalization.claim(path)
    assert generalization.read_json(path + ".claim")["boot"] == generalization.boot_id()


def test_an_empty_claim_blocks_while_it_may_still_be_written(generalization, tmp_path):
    path = str(tmp_path / "erm_seed0.json")
    open(path + ".claim", "w").close()  # created, not yet written
    assert not generalization.claim(path)
    assert os.path.getsize(path + ".claim") == 0  # left to its owner


def test_an_old_empty_claim_is_taken_over(generalization, tmp_path):
    # Its process was killed between creating the file and writing it.
    path = str(tmp_path / "erm_seed0.json")
    open(path + ".claim", "w").close()
    old = os.path.getmtime(path + ".claim") - generalization.CLAIM_WRITE_SECONDS - 1
    os.utime(path + ".claim", (old, old))
    assert generalization.claim(path)
    assert generalization.read_json(path + ".claim")["pid"] == os.getpid()


def test_write_json_leaves_no_temporary_file(generalization, tmp_path):
    path = str(tmp_path / "runs" / "erm_seed0.json")
    generalization.write_json(path, {"test_accuracy": 0.5})
    generalization.write_json(path, {"test_accuracy": 0.75})
    assert generalization.read_json(path) == {"test_accuracy": 0.75}
    assert os.listdir(tmp_path / "runs") == ["erm_seed0.json"]


def test_history_from_rows_is_shaped_like_keras_history(generalization):
    nan = float("nan")
    rows = [
        {"epoch": 0, "loss": 2.0, "seconds": 1.0, "val_loss": nan, "val_seconds": nan},
        {"epoch": 1, "loss": 1.5, "seconds": 1.1, "val_loss": 1.7, "val_seconds": nan},
        {"epoch": 2, "loss": nan, "seconds": 1.2, "val_loss": nan, "val_seconds": nan},
    ]
    history = generalization.history_from_rows(rows)
    assert list(history) == ["loss", "seconds", "val_loss"]
    np.testing.assert_array_equal(history["loss"], [2.0, 1.5, nan])  # a diverged epoch stays
    assert history["val_loss"] == [1.7]


def tiny_cifar_task(generalization, epochs):
    """A Task of the CIFAR kind on 48 random 8x8 images and a 3-class CNN."""
    import keras
    import keras_gmix as kg

    rng = np.random.default_rng(0)
    task = object.__new__(generalization.Task)
    task.key, task.name, task.subset = "cifar10_partial:5438", "cifar10_partial", "5438"
    task.budget = dict(generalization.BUDGETS["cifar10_partial"], epochs=epochs, batch_size=16,
                       learning_rate=0.05, eval_every=2)
    task.x_train = rng.integers(0, 256, (48, 8, 8, 3)).astype("uint8")
    task.y_train = np.arange(48) % 3
    task.x_test, task.y_test = task.x_train[:24], task.y_train[:24]
    task.num_classes, task.normalization, task.flip = 3, None, True
    task.build_inner = lambda: keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), kg.layers.BatchNormalization(),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3),
    ])
    return task


class Killed(Exception):
    pass


def test_a_killed_resumable_run_resumes_and_ends_as_an_uninterrupted_one(generalization, tmp_path, monkeypatch):
    epochs = 4
    task = tiny_cifar_task(generalization, epochs)
    run = lambda backup: generalization.train_run(  # noqa: E731
        task, "gmix", 0, epochs, 0.05, 0.2, eigen=False, backup_dir=str(backup))
    whole = run(tmp_path / "whole")

    clocks = generalization.epoch_clocks

    def killing_clocks():  # dies at the end of the second epoch, before its checkpoint
        callback = clocks()
        end = callback.on_epoch_end

        def on_epoch_end(epoch, logs=None):
            end(epoch, logs)
            if epoch == 1:
                raise Killed

        callback.on_epoch_end = on_epoch_end
        return callback

    monkeypatch.setattr(generalization, "epoch_clocks", killing_clocks)
    with pytest.raises(Killed):
        run(tmp_path / "killed")
    monkeypatch.undo()
    import keras_gmix as kg

    assert kg.checkpoint.saved_epoch(str(tmp_path / "killed")) == 1
    resumed = run(tmp_path / "killed")

    assert whole["last_attempt_started_at_epoch"] == 0 and resumed["last_attempt_started_at_epoch"] == 1
    assert len(resumed["history"]["loss"]) == epochs and len(resumed["history"]["val_loss"]) == epochs // 2
    for key in ("loss", "accuracy", "sharpness", "val_loss"):
        np.testing.assert_allclose(resumed["history"][key], whole["history"][key], rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(resumed["test_loss"], whole["test_loss"], rtol=1e-5)
    assert resumed["cpu_seconds"] > 0 and len(resumed["history"]["cpu_seconds"]) == epochs
    assert resumed["config"]["training_stream"] == "keyed by (seed, epoch), resumable"


def test_only_the_5438_set_is_resumable(generalization):
    assert generalization.is_resumable("cifar10_partial", "5438")
    assert not generalization.is_resumable("cifar10_partial", "2500")  # its runs used the plain stream
    assert not generalization.is_resumable("mnist1d", "4000")


def fake_run(method, seed, epochs, test_accuracy, loss):
    return {"method": method, "seed": seed, "test_accuracy": test_accuracy, "seconds": 1.0,
            "config": {"epochs": epochs, "rho": 0.0, "alpha": 1.0},
            "hessian_top_eigenvalue": {"value": 1.0},
            "history": {"loss": loss, "val_accuracy": [test_accuracy]}}


def test_a_budget_check_is_paired_with_the_same_seed_at_the_budget(generalization, tmp_path):
    folder = generalization.run_dir(str(tmp_path), "cifar10_partial", "5438")
    # 20 epochs: the last two tenths are epochs 17-18 and 19-20.
    budget_loss = [1.0] * 16 + [0.6, 0.6, 0.5, 0.5]  # 0.6 / 0.5 - 1 = 20%
    check_loss = [1.0] * 26 + [0.44, 0.44, 0.44, 0.4, 0.4, 0.4]  # 30 epochs: 0.44 / 0.4 - 1 = 10%
    generalization.write_json(os.path.join(folder, "erm_seed0.json"),
                              fake_run("erm", 0, 20, 0.70, budget_loss))
    generalization.write_json(os.path.join(folder, "erm_seed1.json"),
                              fake_run("erm", 1, 20, 0.60, [1.0] * 20))
    generalization.write_json(os.path.join(folder, "erm_seed0_e30.json"),
                              fake_run("erm", 0, 30, 0.75, check_loss))
    data = generalization.collect(str(tmp_path), seeds=[0, 1])["datasets"]["cifar10_partial:5438"]

    (check,) = data["budget_checks"]
    assert (check["method"], check["seed"], check["epochs"], check["budget_epochs"]) == ("erm", 0, 30, 20)
    assert check["test_accuracy"] == 0.75 and check["budget_test_accuracy"] == 0.70  # seed 0, not 1
    assert check["budget_loss_drop"] == pytest.approx(0.20)
    assert check["loss_drop"] == pytest.approx(0.10)
    # The check run stays out of the budget's own rows.
    assert data["rows"]["erm"]["test_accuracy"] == [0.70, 0.60]
    assert data["other_budgets"][30]["erm"]["test_accuracy"] == [0.75]


def test_the_summary_tables_show_means_and_paired_differences(generalization):
    accuracies = {"mixup": [0.70, 0.72], "sam": [0.60, 0.64], "gmix": [0.73, 0.71]}
    runs = {(m, s): fake_run(m, s, 20, a, [1.0] * 20)
            for m, accs in accuracies.items() for s, a in enumerate(accs)}
    runs[("dgmix", 1)] = fake_run("dgmix", 1, 20, 0.75, [1.0] * 20)
    report = {"datasets": {"mnist1d": {"rows": generalization.method_rows(runs, [0, 1])}}}
    lines = generalization.summary_lines(report, n_seeds=2)

    assert "| gmix | 72.00 ± 1.41 |" in lines  # std with ddof=1: |0.73 - 0.71| / sqrt(2)
    assert "| dgmix | 75.00 (1/2 seeds) |" in lines
    assert "| erm | — |" in lines
    # gmix - mixup per seed: +3, -1 points; mean +1, paired t = 1 / (sqrt(8) / sqrt(2)) = 0.5, p = 0.705.
    assert "| MNIST-1D | Mixup | +1.00 (p 0.705) | — | +3.00 (1 seed) |" in lines
    # gmix - sam: +13, +7; mean +10, t = 10 / (sqrt(18) / sqrt(2)) = 3.33, p = 0.186.
    assert "| MNIST-1D | SAM | +10.00 (p 0.186) | — | +11.00 (1 seed) |" in lines
