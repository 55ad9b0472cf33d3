"""Tests for the benchmark scripts (benchmarks/).

The statistics in the committed reports come from these functions, so they
are checked against values worked out by hand; the run claims against real
processes; a killed training run against an uninterrupted one.
"""

import argparse
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture(scope="module")
def generalization():
    sys.path.insert(0, BENCHMARKS)
    import generalization

    return generalization


@pytest.fixture(scope="module")
def plan(generalization):
    import generalization_plan

    return generalization_plan


@pytest.fixture(scope="module")
def report(generalization):
    import generalization_report

    return generalization_report


def test_paired_test_p_value_by_hand(report):
    # Differences +3 and -1 points: t = 1 / (sqrt(8) / sqrt(2)) = 0.5 with one
    # degree of freedom, where Student's t is Cauchy: p = 1 - 2 / pi * atan(t).
    diff, p = report.paired_test([0.70, 0.72], [0.73, 0.71])
    assert diff == pytest.approx(0.01)
    assert p == pytest.approx(1 - 2 / np.pi * np.arctan(0.5), rel=1e-9)


def test_paired_test_degenerate_cases(report):
    assert report.paired_test([], []) == (None, None)
    diff, p = report.paired_test([0.5], [0.6])  # one seed: no test
    assert diff == pytest.approx(0.1) and p is None
    diff, p = report.paired_test([0.5, 0.6], [0.6, 0.7])  # constant difference
    assert diff == pytest.approx(0.1) and p is None


def test_flattening_compares_the_last_two_tenths(report):
    # 20 epochs: k = 2; epochs 17-18 average 3.0, epochs 19-20 average 2.0.
    loss = [9.0] * 16 + [3.5, 2.5, 2.0, 2.0]
    assert report.flattening(loss) == pytest.approx(3.0 / 2.0 - 1.0)
    assert report.flattening([1.0] * 50) == pytest.approx(0.0)


def test_late_gain_is_end_minus_seventy_percent(report):
    acc = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    # index round(0.7 * 10) - 1 = 6 holds 0.7
    assert report.late_gain({"history": {"val_accuracy": acc}}) == pytest.approx(0.95 - 0.7)
    assert np.isnan(report.late_gain({"history": {}}))


@pytest.mark.parametrize(
    "key, expected",
    [
        ("mnist1d", ("mnist1d", "4000")),
        ("cifar10_partial:2500", ("cifar10_partial", "2500")),
        ("cifar10_partial:5438", ("cifar10_partial", "5438")),
    ],
)
def test_parse_dataset(plan, key, expected):
    assert plan.parse_dataset(key) == expected


@pytest.mark.parametrize(
    "key", ["cifar10", "cifar10_partial", "cifar10_partial:3000", "mnist1d:100"]
)
def test_parse_dataset_refuses_unknown_keys(plan, key):
    with pytest.raises(ValueError):
        plan.parse_dataset(key)


@pytest.mark.parametrize(
    "variant, expected",
    [
        ("gmix", ("gmix", {})),
        ("gmix-k5", ("gmix", {"perturb_every": 5})),
        ("dgmix-k5-r0.3", ("dgmix", {"perturb_every": 5, "reuse_scale": 0.3})),
        ("gmix-p0.2", ("gmix", {"perturb_probability": 0.2})),
        ("gmix-f0.875", ("gmix", {"perturb_from": 0.875})),
        ("dgmix-f0.875-k5", ("dgmix", {"perturb_from": 0.875, "perturb_every": 5})),
        ("dgmix-f4000", ("dgmix", {"perturb_from": 4000.0})),
        ("bgmix-lean", ("bgmix", {"keep_first_pass": False})),
        ("dgmix-k5-lean", ("dgmix", {"perturb_every": 5, "keep_first_pass": False})),
    ],
)
def test_parse_variant(plan, variant, expected):
    assert plan.parse_variant(variant) == expected
    # A run's file name is the variant's name again.
    method, schedule = expected
    assert "-".join([method] + plan.variant_suffix(schedule)) == variant


@pytest.mark.parametrize("variant", ["sgd", "gmix-x5", "gmix-", "gmix-f", "gmix-fast", "gmix-kx"])
def test_parse_variant_refuses_unknown_names(plan, variant):
    with pytest.raises(ValueError):
        plan.parse_variant(variant)


def test_a_claimed_run_is_not_claimed_twice(plan, generalization, tmp_path):
    path = str(tmp_path / "erm_seed0.json")
    fd = generalization.claim(path)
    assert fd is not None
    assert generalization.claim(path) is None  # held (by this process, through another descriptor)
    generalization.release(path, fd)  # failed: no result
    assert os.path.exists(path + ".claim")  # left, unlocked
    fd = generalization.claim(path)
    assert fd is not None
    plan.write_json(path, {"test_accuracy": 0.5})
    generalization.release(path, fd)
    assert not os.path.exists(path + ".claim")  # the result is there: the claim goes


def test_a_finished_run_is_not_claimed(plan, generalization, tmp_path):
    path = str(tmp_path / "erm_seed0.json")
    plan.write_json(path, {"test_accuracy": 0.5})
    assert generalization.claim(path) is None
    assert not os.path.exists(path + ".claim")


def test_the_claim_of_a_killed_process_is_free_at_once(generalization, tmp_path):
    path = str(tmp_path / "erm_seed0.json")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import generalization as g\n"
            "assert g.claim(sys.argv[2]) is not None\nprint('held', flush=True)\nsys.stdin.read()",
            BENCHMARKS,
            path,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert generalization.claim(path) is None  # a live process holds it
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    fd = generalization.claim(path)
    assert fd is not None
    assert f"process {os.getpid()}" in open(path + ".claim").read()
    generalization.release(path, fd)


def test_a_claim_file_of_the_pid_protocol_is_taken(plan, generalization, tmp_path):
    # Left by the script before the OS lock (a JSON pid and boot id): unlocked.
    path = str(tmp_path / "erm_seed0.json")
    plan.write_json(path + ".claim", {"pid": os.getpid(), "boot": "an old boot"})
    fd = generalization.claim(path)
    assert fd is not None
    generalization.release(path, fd)


def test_write_json_leaves_no_temporary_file(plan, tmp_path):
    path = str(tmp_path / "runs" / "erm_seed0.json")
    plan.write_json(path, {"test_accuracy": 0.5})
    plan.write_json(path, {"test_accuracy": 0.75})
    assert plan.read_json(path) == {"test_accuracy": 0.75}
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
    task.budget = dict(
        generalization.BUDGETS["cifar10_partial"],
        epochs=epochs,
        batch_size=16,
        learning_rate=0.05,
        eval_every=2,
    )
    task.x_train = rng.integers(0, 256, (48, 8, 8, 3)).astype("uint8")
    task.y_train = np.arange(48) % 3
    task.x_test, task.y_test = task.x_train[:24], task.y_train[:24]
    task.num_classes, task.normalization, task.flip, task.splits = 3, None, True, None
    task.inner = lambda: keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3),
            kg.layers.BatchNormalization(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3),
        ]
    )
    return task


class Killed(Exception):
    pass


# The late phase too: killed before epoch 1's checkpoint, the resumed run
# starts at epoch 1 and crosses the switch (step 2 of 4 epochs) in epoch 2.
@pytest.mark.parametrize("schedule", [None, {"perturb_from": 0.5}], ids=["full", "late_phase"])
def test_a_killed_resumable_run_resumes_and_ends_as_an_uninterrupted_one(
    generalization, tmp_path, monkeypatch, schedule
):
    epochs = 4
    task = tiny_cifar_task(generalization, epochs)
    run = lambda backup: generalization.train_run(  # noqa: E731
        task,
        "gmix",
        0,
        epochs,
        0.05,
        0.2,
        eigen=False,
        backup_dir=str(backup),
        step_schedule=schedule,
    )
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

    assert (
        whole["last_attempt_started_at_epoch"] == 0
        and resumed["last_attempt_started_at_epoch"] == 1
    )
    assert (
        len(resumed["history"]["loss"]) == epochs
        and len(resumed["history"]["val_loss"]) == epochs // 2
    )
    for key in ("loss", "accuracy", "sharpness", "val_loss"):
        np.testing.assert_allclose(
            resumed["history"][key], whole["history"][key], rtol=1e-5, err_msg=key
        )
    np.testing.assert_allclose(resumed["test_loss"], whole["test_loss"], rtol=1e-5)
    assert resumed["cpu_seconds"] > 0 and len(resumed["history"]["cpu_seconds"]) == epochs
    assert resumed["config"]["training_stream"] == "keyed by (seed, epoch), resumable"
    if schedule:
        steps = len(task.y_train) // task.budget["batch_size"]  # 3 per epoch
        assert resumed["method"] == "gmix-f0.5"
        assert resumed["config"]["perturb_from_step"] == epochs * steps // 2 == 6
        assert resumed["history"]["full_step"] == whole["history"]["full_step"] == [0, 0, 1, 1]


def test_only_the_5438_set_is_resumable(plan):
    assert plan.is_resumable("cifar10_partial", "5438")
    assert not plan.is_resumable("cifar10_partial", "2500")  # its runs used the plain stream
    assert not plan.is_resumable("mnist1d", "4000")


def fake_run(method, seed, epochs, test_accuracy, loss):
    return {
        "method": method,
        "seed": seed,
        "test_accuracy": test_accuracy,
        "seconds": 1.0,
        "config": {"epochs": epochs, "rho": 0.0, "alpha": 1.0},
        "hessian_top_eigenvalue": {"value": 1.0},
        "history": {"loss": loss, "val_accuracy": [test_accuracy]},
    }


def test_a_budget_check_is_paired_with_the_same_seed_at_the_budget(plan, report, tmp_path):
    folder = plan.run_dir(str(tmp_path), "cifar10_partial", "5438")
    # 20 epochs: the last two tenths are epochs 17-18 and 19-20.
    budget_loss = [1.0] * 16 + [0.6, 0.6, 0.5, 0.5]  # 0.6 / 0.5 - 1 = 20%
    check_loss = [1.0] * 26 + [0.44, 0.44, 0.44, 0.4, 0.4, 0.4]  # 30 epochs: 0.44 / 0.4 - 1 = 10%
    plan.write_json(
        os.path.join(folder, "erm_seed0.json"), fake_run("erm", 0, 20, 0.70, budget_loss)
    )
    plan.write_json(
        os.path.join(folder, "erm_seed1.json"), fake_run("erm", 1, 20, 0.60, [1.0] * 20)
    )
    plan.write_json(
        os.path.join(folder, "erm_seed0_e30.json"), fake_run("erm", 0, 30, 0.75, check_loss)
    )
    data = report.collect(str(tmp_path), seeds=[0, 1])["datasets"]["cifar10_partial:5438"]

    (check,) = data["budget_checks"]
    assert (check["method"], check["seed"], check["epochs"], check["budget_epochs"]) == (
        "erm",
        0,
        30,
        20,
    )
    assert check["test_accuracy"] == 0.75 and check["budget_test_accuracy"] == 0.70  # seed 0, not 1
    assert check["budget_loss_drop"] == pytest.approx(0.20)
    assert check["loss_drop"] == pytest.approx(0.10)
    # The check run stays out of the budget's own rows.
    assert data["rows"]["erm"]["test_accuracy"] == [0.70, 0.60]
    assert data["other_budgets"][30]["erm"]["test_accuracy"] == [0.75]


def test_the_summary_tables_show_means_and_paired_differences(report):
    accuracies = {"mixup": [0.70, 0.72], "sam": [0.60, 0.64], "gmix": [0.73, 0.71]}
    runs = {
        (m, s): fake_run(m, s, 20, a, [1.0] * 20)
        for m, accs in accuracies.items()
        for s, a in enumerate(accs)
    }
    runs[("dgmix", 1)] = fake_run("dgmix", 1, 20, 0.75, [1.0] * 20)
    lines = report.summary_lines(
        {"datasets": {"mnist1d": {"rows": report.method_rows(runs, [0, 1])}}}, n_seeds=2
    )

    assert "| gmix | 72.00 ± 1.41 |" in lines  # std with ddof=1: |0.73 - 0.71| / sqrt(2)
    assert "| dgmix | 75.00 (1/2 seeds) |" in lines
    assert "| erm | — |" in lines
    # gmix - mixup per seed: +3, -1 points; mean +1,
    # paired t = 1 / (sqrt(8) / sqrt(2)) = 0.5, p = 0.705.
    assert "| MNIST-1D | Mixup | +1.00 (p 0.705) | — | +3.00 (1 seed) |" in lines
    # gmix - sam: +13, +7; mean +10, t = 10 / (sqrt(18) / sqrt(2)) = 3.33, p = 0.186.
    assert "| MNIST-1D | SAM | +10.00 (p 0.186) | — | +11.00 (1 seed) |" in lines


def test_a_folder_with_schedule_variant_runs_is_read(plan, report, tmp_path):
    folder = plan.run_dir(str(tmp_path), "mnist1d", "4000")
    plan.write_json(
        os.path.join(folder, "gmix_seed0.json"), fake_run("gmix", 0, 20, 0.70, [1.0] * 20)
    )
    plan.write_json(
        os.path.join(folder, "gmix-k5_seed0.json"), fake_run("gmix-k5", 0, 20, 0.60, [1.0] * 20)
    )
    plan.write_json(
        os.path.join(folder, "dgmix-k5-r0.3_seed0.json"),
        fake_run("dgmix-k5-r0.3", 0, 20, 0.60, [1.0] * 20),
    )
    data = report.collect(str(tmp_path), seeds=[0])["datasets"]["mnist1d"]
    assert data["rows"]["gmix"]["test_accuracy"] == [0.70]
    assert data["rows"]["dgmix"]["seeds_done"] == []
    assert data["budget_checks"] == []


def test_budget_reasons_are_read_from_wrapped_bullets(report, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "# B\n\n### Why these budgets\n\nIntro.\n\n"
        "- `mnist1d`: at 100 epochs it still rose\n  (0.4-1.7 points).\n"
        "- `cifar10_partial:2500`: the same.\n- `cifar10_partial:5438`: the same.\n\n"
        "### Next\n- `x`: y\n"
    )
    reasons = report.budget_reasons(str(readme))
    assert reasons["mnist1d"] == "at 100 epochs it still rose (0.4-1.7 points)"
    assert "x" not in reasons
    budgets = report.recorded_budgets(reasons)
    assert budgets["cifar10_partial"]["why"] == "the same"
    assert "why_by_subset" not in budgets["cifar10_partial"]  # 5438 says the same
    assert "sweep" not in budgets["mnist1d"]
    readme.write_text("# B\n\n### Why these budgets\n\n- `mnist1d`: one.\n")
    with pytest.raises(ValueError, match="no reason for"):
        report.budget_reasons(str(readme))


def test_the_committed_report_records_the_readme_budgets(report):
    # The report quotes benchmarks/README.md: an edit there changes the report.
    committed = report.read_json(os.path.join(BENCHMARKS, "results", "generalization.json"))
    recorded = json.loads(json.dumps(report.recorded_budgets(report.budget_reasons())))
    assert committed["budgets"] == recorded


def test_the_committed_reports_are_rebuilt_from_the_committed_runs(report, tmp_path):
    # Rebuilt from the run files, generalization.md/.json and schedules.md/.json
    # come out as committed: the reports hold nothing the runs do not say
    # (a run added without rebuilding them fails here). Only the machine
    # that builds the report may differ.
    import schedule_report

    results = os.path.join(BENCHMARKS, "results")
    os.symlink(os.path.join(results, "generalization_runs"), tmp_path / "generalization_runs")
    report.write_report(argparse.Namespace(out=str(tmp_path), seeds=[0, 1, 2]), draw=False)
    schedule_report.write(str(tmp_path), draw=False)

    def without_machine(text):
        return [line for line in text.splitlines() if not line.startswith("- Machine:")]

    for name in ("generalization.md", "schedules.md"):
        with open(os.path.join(results, name), encoding="utf-8") as f:
            committed = f.read()
        assert without_machine((tmp_path / name).read_text(encoding="utf-8")) == without_machine(
            committed
        ), name
    for name in ("generalization.json", "schedules.json"):
        rebuilt = report.read_json(str(tmp_path / name))
        committed = report.read_json(os.path.join(results, name))
        rebuilt.pop("machine", None), committed.pop("machine", None)
        assert rebuilt == committed, name


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("erm", ("erm", {})),
        ("gmix:k5", ("gmix", {"perturb_every": 5})),
        ("dgmix:k5-r0.3", ("dgmix", {"perturb_every": 5, "reuse_scale": 0.3})),
        ("dgmix:lean", ("dgmix", {"keep_first_pass": False})),
        ("bgmix:k5-lean", ("bgmix", {"perturb_every": 5, "keep_first_pass": False})),
    ],
)
def test_step_time_reads_schedules_as_generalization_does(generalization, spec, expected):
    import step_time

    assert step_time.parse_method(spec) == expected


@pytest.mark.parametrize(
    "spec", ["gmix:k1", "gmix:p0.2", "gmix:r0.3", "gmix:x5", "adam:k5", "gmix:f0.875-k5"]
)
def test_step_time_refuses_schedules_it_cannot_time(generalization, spec):
    import step_time

    with pytest.raises(ValueError, match="unknown method"):
        step_time.parse_method(spec)


def test_step_time_backends_alternate_and_get_each_backends_fit_default(generalization):
    import step_time

    assert step_time.process_order(["tensorflow", "jax"], 3) == [
        (0, "tensorflow"),
        (0, "jax"),
        (1, "jax"),
        (1, "tensorflow"),
        (2, "tensorflow"),
        (2, "jax"),
    ]
    # The driver imports no Keras: its processes set their own backend.
    args = step_time.parse_args(["--backends", "tensorflow", "jax", "--models", "resnet20:2x3"])
    assert args.output.endswith(os.path.join("results", "step_time_backends"))
    jax_argv = step_time.process_argv(args, "jax", "out")
    assert jax_argv[:2] == ["--backend", "jax"] and jax_argv[-2:] == ["--output", "out"]
    assert jax_argv[jax_argv.index("--jit") + 1] == "on"
    assert jax_argv[jax_argv.index("--models") + 1] == "resnet20:2x3"
    assert "--no-naive" in jax_argv and jax_argv[jax_argv.index("--peer-model") + 1] == ""
    tf_argv = step_time.process_argv(args, "tensorflow", "out")
    assert tf_argv[tf_argv.index("--jit") + 1] == "off"
    with pytest.raises(SystemExit):
        step_time.parse_args(["--backends", "jax"])
