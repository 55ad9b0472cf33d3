"""gmix-train: end-to-end runs, the output folder, resume after a kill, config files."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import yaml

import keras_gmix as kg
from keras_gmix import cli
from keras_gmix import config as config_lib
from keras_gmix import train
from keras_gmix.gradients import METHODS, PERTURBED_METHODS
from keras_gmix.layers import BatchNormalization as FusedBatchNormalization

# A few steps: 32 examples in batches of 16, one epoch.
TINY = ["--epochs", "1", "--batch-size", "16", "--verbose", "0", "--tensorboard-update-freq", "1"]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """A small .npz data set of random uint8 8x8 RGB images, 4 classes."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("npz") / "tiny.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (48, 8, 8, 3), dtype=np.uint8),
        y_train=np.arange(48) % 4,
        x_test=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8),
        y_test=np.arange(16) % 4,
    )
    return str(path)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def event_files(folder):
    return (
        [f for f in os.listdir(folder) if f.startswith("events.out.tfevents")]
        if os.path.isdir(folder)
        else []
    )


def check_run_folder(output, method, dataset, epochs):
    """Every file of the output folder is there, with the right content."""
    for name in ("config.json", "history.csv", "model.keras", "results.json"):
        assert os.path.isfile(os.path.join(output, name)), name
    for run in ("train", "validation", "steps"):
        assert event_files(os.path.join(output, "tensorboard", run)), run
    assert not os.path.exists(os.path.join(output, "backup")), "a finished run keeps no backup"

    config = json.load(open(os.path.join(output, "config.json")))
    assert config["method"] == method and config["dataset"] == dataset
    assert config["augment"] != "auto", "config.json holds the resolved settings"
    assert train.TrainConfig.from_dict(config).output == output

    history = read_csv(os.path.join(output, "history.csv"))
    assert [int(row["epoch"]) for row in history] == list(range(epochs))
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"} <= set(history[0])

    results = json.load(open(os.path.join(output, "results.json")))
    assert results["method"] == method and results["dataset"] == dataset
    assert results["epochs"] == epochs and results["epochs_done"] == epochs
    # results.json's test accuracy is the trained model's on the test split:
    # the same weights validated on the same data after the last epoch.
    assert results["test_accuracy"] == pytest.approx(float(history[-1]["val_accuracy"]), abs=1e-6)
    assert results["test_loss"] == pytest.approx(float(history[-1]["val_loss"]), rel=1e-5)
    assert results["seconds"] > 0 and results["output"] == output
    stats = set(results["final_train"])
    assert {"loss", "accuracy"} <= stats
    assert ("perturbed_loss" in stats) == (method in PERTURBED_METHODS)
    assert ("conflict" in stats) == (method == "dgmix")
    return results


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dataset", ["digits", "npz"])
def test_gmix_train_end_to_end(method, dataset, tiny_npz, tmp_path, capsys):
    output = str(tmp_path / "run")
    name = tiny_npz if dataset == "npz" else "digits"
    size = ["--train-size", "32"]
    assert (
        cli.train_main(TINY + size + ["--dataset", name, "--method", method, "--output", output])
        == 0
    )
    results = check_run_folder(output, method, name, epochs=1)
    assert results["train_size"] == 32 and results["steps_per_epoch"] == 2
    assert json.loads(capsys.readouterr().out.split("\n\n")[0])["method"] == method
    config = json.load(open(os.path.join(output, "config.json")))
    assert config["augment"] == ("none" if dataset == "digits" else "standard")


def test_saved_model_loads_and_keeps_settings(tmp_path):
    output = str(tmp_path / "run")
    cli.train_main(
        TINY
        + [
            "--train-size",
            "32",
            "--method",
            "bgmix",
            "--rho",
            "0.1",
            "--sensitive-fraction",
            "0.25",
            "--output",
            output,
        ]
    )
    model = keras.saving.load_model(os.path.join(output, "model.keras"))
    assert (model.method, model.rho, model.sensitive_fraction) == ("bgmix", 0.1, 0.25)
    assert int(model.optimizer.iterations) == 2
    bn = [
        layer for layer in model.inner.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert bn and all(type(layer) is FusedBatchNormalization for layer in bn)


def test_stock_batchnorm_flag_selects_the_layer():
    splits = train.data_lib.load_dataset("digits", train_size=20)
    for stock, expected in (
        (False, FusedBatchNormalization),
        (True, keras.layers.BatchNormalization),
    ):
        model = train.build_model(train.TrainConfig(stock_batchnorm=stock), splits)
        bn = [
            layer
            for layer in model.inner.layers
            if isinstance(layer, keras.layers.BatchNormalization)
        ]
        assert bn and all(type(layer) is expected for layer in bn)


class _Kill(keras.callbacks.Callback):
    """Stands for a kill: stops the process's fit after epoch `after` (backup written)."""

    def __init__(self, after):
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after:
            raise KeyboardInterrupt("killed")


class _Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def _tensorboard_steps(folder, tag):
    import tensorflow as tf

    steps = []
    for name in sorted(event_files(folder)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
            steps += [event.step for value in event.summary.value if value.tag == tag]
    return steps


def test_resume_continues_from_the_next_epoch(tmp_path):
    output = str(tmp_path / "run")
    config = train.TrainConfig(
        method="gmix",
        epochs=3,
        train_size=32,
        batch_size=16,
        verbose=0,
        output=output,
        tensorboard_update_freq=1,
    )
    with pytest.raises(KeyboardInterrupt):
        train.run(config, callbacks=[_Kill(after=0)])
    # The interrupted run left no TensorBoard context behind that stops summaries.
    import tensorflow as tf

    with tf.summary.create_file_writer(str(tmp_path / "probe")).as_default(step=5):
        assert bool(tf.summary.should_record_summaries())
    first = read_csv(os.path.join(output, "history.csv"))
    assert [row["epoch"] for row in first] == ["0"]
    assert os.path.exists(os.path.join(output, "backup"))
    with pytest.raises(ValueError, match="unfinished run: pass --resume"):
        train.run(config)

    # `--resume --output DIR` alone takes the settings from config.json.
    values = config_lib.resume_values({"output": output, "resume": True, "verbose": 0})
    assert values["method"] == "gmix" and values["epochs"] == 3
    seen = _Epochs()
    results = train.run(train.TrainConfig.from_dict(values), callbacks=[seen])
    assert seen.epochs == [1, 2], "the resumed run trains epochs 2 and 3 only"
    history = read_csv(os.path.join(output, "history.csv"))
    assert [row["epoch"] for row in history] == ["0", "1", "2"]
    assert history[0] == first[0], "the first attempt's row is kept as it was"
    assert results["epochs_done"] == 3
    assert results["seconds"] == pytest.approx(sum(float(r["seconds"]) for r in history), abs=0.01)
    assert not os.path.exists(os.path.join(output, "backup"))

    # Weights, optimizer and mixing counter were restored: 3 epochs x 2 steps.
    model = keras.saving.load_model(os.path.join(output, "model.keras"))
    assert int(model.optimizer.iterations) == 6 and int(model.mix_step) == 6
    # TensorBoard's batch steps continue instead of starting over.
    assert _tensorboard_steps(os.path.join(output, "tensorboard", "train"), "batch_loss") == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    assert _tensorboard_steps(os.path.join(output, "tensorboard", "steps"), "learning_rate") == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    assert _tensorboard_steps(os.path.join(output, "tensorboard", "train"), "epoch_loss") == [
        0,
        1,
        2,
    ]

    # Resuming a finished run trains nothing and returns its results.
    again = train.run(train.TrainConfig.from_dict(values), callbacks=[_Epochs()])
    assert again == results


def test_a_kill_after_training_but_before_the_results_resumes_without_training(
    tmp_path, monkeypatch
):
    """The backup outlives fit until results.json is written."""
    output = str(tmp_path / "run")
    config = train.TrainConfig(
        method="erm", epochs=2, train_size=32, batch_size=16, verbose=0, output=output
    )

    def killed(self, path, *args, **kwargs):  # dies while saving the trained model
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(train.GMixModel, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        train.run(config)
    monkeypatch.undo()
    assert not os.path.exists(os.path.join(output, "results.json"))
    assert train.checkpoint_lib.saved_epoch(os.path.join(output, "backup")) == 2
    seen = _Epochs()
    results = train.run(
        train.TrainConfig.from_dict(config_lib.resume_values({"output": output, "resume": True})),
        callbacks=[seen],
    )
    assert seen.epochs == [] and results["epochs_done"] == 2
    assert os.path.exists(os.path.join(output, "results.json")) and not os.path.exists(
        os.path.join(output, "backup")
    )


def test_resume_drops_a_row_written_after_the_last_backup(tmp_path):
    """A kill between the CSV row and the backup: the epoch is redone, logged once."""
    output = str(tmp_path / "run")
    config = train.TrainConfig(
        method="erm", epochs=2, train_size=32, batch_size=16, verbose=0, output=output
    )
    with pytest.raises(KeyboardInterrupt):
        train.run(config, callbacks=[_Kill(after=0)])
    path = os.path.join(output, "history.csv")
    with open(path, "a", encoding="utf-8") as f:
        f.write("1,0.5,0.5,0.5,0.5,0.5\n2,0.5")  # epoch 1's row without its backup; a torn line
    train.run(
        train.TrainConfig.from_dict(config_lib.resume_values({"output": output, "resume": True}))
    )
    assert [row["epoch"] for row in read_csv(path)] == ["0", "1"]


@pytest.mark.slow
def test_killed_process_resumes(tmp_path):
    """A real SIGKILL once the first epoch's backup exists; --resume finishes the run."""
    output = str(tmp_path / "run")
    args = [
        sys.executable,
        "-m",
        "keras_gmix.cli",
        "--epochs",
        "4",
        "--method",
        "erm",
        "--verbose",
        "0",
        "--output",
        output,
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metadata = os.path.join(output, "backup", "state.json")
    deadline = time.time() + 300
    try:
        while not os.path.exists(metadata) and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    done = len(read_csv(os.path.join(output, "history.csv")))
    assert done >= 1
    subprocess.run(
        args + ["--resume"],
        check=True,
        timeout=600,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    history = read_csv(os.path.join(output, "history.csv"))
    assert [row["epoch"] for row in history] == ["0", "1", "2", "3"]
    assert json.load(open(os.path.join(output, "results.json")))["epochs_done"] == 4


def test_finished_run_is_not_overwritten(tmp_path):
    output = str(tmp_path / "run")
    os.makedirs(output)
    json.dump({"test_accuracy": 1.0}, open(os.path.join(output, "results.json"), "w"))
    with pytest.raises(ValueError, match="holds a finished run"):
        train.run(train.TrainConfig(output=output, verbose=0))


def test_config_file_round_trip(tmp_path):
    config = train.TrainConfig(
        method="sam", epochs=7, rho=0.1, step_milestones=(0.3, 0.6), train_fraction=0.5
    )
    for suffix, dump in ((".json", json.dump), (".yaml", yaml.safe_dump)):
        path = tmp_path / f"config{suffix}"
        with open(path, "w") as f:
            dump(config.to_dict(), f)
        assert train.TrainConfig.from_dict(config_lib.load_config_file(str(path))) == config
    # Dashes are accepted in file keys, as on the command line.
    path = tmp_path / "dashes.yaml"
    path.write_text("sensitive-fraction: 0.25\nlabel-smoothing: 0.1\n")
    loaded = train.TrainConfig.from_dict(config_lib.load_config_file(str(path)))
    assert (loaded.sensitive_fraction, loaded.label_smoothing) == (0.25, 0.1)


def test_config_file_and_flags_precedence(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "method: erm\nepochs: 1\nbatch-size: 16\ntrain_size: 32\nrho: 0.2\nverbose: 0\n"
    )
    output = str(tmp_path / "run")
    assert cli.train_main(["--config", str(path), "--method", "sam", "--output", output]) == 0
    saved = json.load(open(os.path.join(output, "config.json")))
    assert (saved["method"], saved["rho"], saved["epochs"], saved["batch_size"]) == (
        "sam",
        0.2,
        1,
        16,
    )
    assert saved["learning_rate"] == train.TrainConfig().learning_rate  # the default fills the rest


def test_unknown_config_key_names_the_closest_valid_key(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"'epoch' \(did you mean 'epochs'\?\)"):
        train.TrainConfig.from_dict({"epoch": 3})
    path = tmp_path / "bad.yaml"
    path.write_text("sensitivity_fraction: 0.3\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--config", str(path)])
    assert exit_info.value.code == 2
    assert "did you mean 'sensitive_fraction'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "values, match",
    [
        ({"method": "adam"}, "`method` must be one of"),
        ({"model": "resnet1000"}, "`model` must be one of"),
        ({"dataset": "imagenet"}, "`dataset` must be one of"),
        ({"augment": "heavy"}, "`augment` must be one of"),
        ({"epochs": 2, "warmup_epochs": 2}, "`warmup_epochs` must be below"),
        ({"resume": True}, "`resume` needs `output`"),
    ],
)
def test_bad_settings_are_named(values, match):
    with pytest.raises(ValueError, match=match):
        train.TrainConfig.from_dict(values).validate()


def _rates(schedule, steps):
    return [float(schedule(step)) if callable(schedule) else float(schedule) for step in steps]


def test_learning_rate_schedules():
    # 10 epochs x 10 steps; warm-up 2 epochs = 20 steps.
    base = dict(learning_rate=0.1, epochs=10, warmup_epochs=2.0)
    cosine = train.learning_rate_schedule(train.TrainConfig(schedule="cosine", **base), 10)
    assert _rates(cosine, [10, 20, 60]) == pytest.approx([0.05, 0.1, 0.05], rel=1e-5)
    # Step: milestones at 50% and 75% of the 80 post-warm-up steps.
    step = train.learning_rate_schedule(train.TrainConfig(schedule="step", **base), 10)
    assert _rates(step, [0, 9, 20, 59, 61, 81]) == pytest.approx(
        [0.005, 0.05, 0.1, 0.1, 0.01, 0.001]
    )
    constant = train.learning_rate_schedule(train.TrainConfig(schedule="constant", **base), 10)
    assert _rates(constant, [4, 19, 20, 99]) == pytest.approx([0.025, 0.1, 0.1, 0.1])
    # Without warm-up: plain Keras schedules.
    plain = train.learning_rate_schedule(
        train.TrainConfig(schedule="cosine", learning_rate=0.1, epochs=10), 10
    )
    assert _rates(plain, [0, 50, 100]) == pytest.approx([0.1, 0.05, 0.0], abs=1e-6)
    # The warm-up schedule survives serialization (it is saved in model.keras).
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(step))
    assert _rates(restored, [0, 61]) == pytest.approx([0.005, 0.01])


RECIPES = os.path.join(os.path.dirname(__file__), "..", "recipes")


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(RECIPES) if f.endswith(".yaml")))
def test_recipe_files_are_valid_configs(name):
    config = train.TrainConfig.from_dict(config_lib.load_config_file(os.path.join(RECIPES, name)))
    config.validate()
    assert (config.batch_size, config.learning_rate, config.momentum, config.weight_decay) == (
        128,
        0.1,
        0.9,
        5e-4,
    )
    assert config.schedule == "cosine" and config.augment == "standard"
    if name.startswith(("cifar10_", "cifar100_", "svhn", "stl10")) and "partial" not in name:
        assert config.epochs == 200
        assert config.rho == (0.1 if name.startswith("cifar100") else 0.05)


def test_gmix_train_takes_a_schedule(tmp_path):
    """--perturb-every / --reuse-scale reach the model, its config.json and the logs."""
    output = str(tmp_path / "run")
    flags = [
        "--train-size",
        "64",
        "--dataset",
        "digits",
        "--method",
        "dgmix",
        "--perturb-every",
        "2",
        "--reuse-scale",
        "0.3",
        "--output",
        output,
    ]
    assert cli.train_main(TINY + flags) == 0
    config = json.load(open(os.path.join(output, "config.json")))
    assert (config["perturb_every"], config["reuse_scale"], config["perturb_probability"]) == (
        2,
        0.3,
        1.0,
    )
    model = keras.saving.load_model(os.path.join(output, "model.keras"))
    assert (model.perturb_every, model.reuse_scale) == (2, 0.3)
    history = kg.callbacks.read_history(os.path.join(output, "history.csv"))
    assert history[0]["full_step"] == 0.5  # 4 steps: 0 and 2 are full
    with pytest.raises(SystemExit):
        cli.train_main(TINY + ["--perturb-every", "0", "--output", str(tmp_path / "bad")])


def test_gmix_train_takes_a_late_phase_as_a_fraction_and_saves_the_step(tmp_path, capsys):
    """--perturb-from 0.75 of 2 epochs x 4 steps is step 6: config.json says 6
    (a longer resumed run keeps it), the model has it, the log names the switch,
    and history.csv's full_step shows it (epoch 1: steps 6 and 7 of 4-7 full)."""
    output = str(tmp_path / "run")
    flags = ["--train-size", "64", "--dataset", "digits", "--method", "gmix"]
    flags += ["--epochs", "2", "--perturb-from", "0.75", "--output", output]
    assert cli.train_main(TINY + flags + ["--verbose", "2"]) == 0
    config = json.load(open(os.path.join(output, "config.json")))
    assert config["perturb_from"] == 6
    assert keras.saving.load_model(os.path.join(output, "model.keras")).perturb_from == 6
    assert "plain steps until step 6 (epoch 2, batch 3)" in capsys.readouterr().out
    history = kg.callbacks.read_history(os.path.join(output, "history.csv"))
    assert [row["full_step"] for row in history] == [0.0, 0.5]
    with pytest.raises(SystemExit):
        cli.train_main(TINY + ["--perturb-from", "1.5", "--output", str(tmp_path / "bad")])


def test_gmix_train_takes_no_keep_first_pass(tmp_path):
    """--no-keep-first-pass reaches the model and config.json; the run trains."""
    output = str(tmp_path / "run")
    flags = ["--train-size", "64", "--dataset", "digits", "--method", "bgmix"]
    assert cli.train_main(TINY + flags + ["--no-keep-first-pass", "--output", output]) == 0
    assert json.load(open(os.path.join(output, "config.json")))["keep_first_pass"] is False
    model = keras.saving.load_model(os.path.join(output, "model.keras"))
    assert model.keep_first_pass is False and model.method == "bgmix"
    history = kg.callbacks.read_history(os.path.join(output, "history.csv"))
    assert np.isfinite(history[0]["loss"]) and history[0]["sharpness"] != 0


@pytest.mark.parametrize("method", ["mixup", "dgmix"])
def test_gmix_train_learns_the_digits(method, tmp_path):
    """A short real run is far above chance (10 classes: 0.1), not only finite."""
    output = str(tmp_path / "run")
    flags = [
        "--epochs",
        "4",
        "--batch-size",
        "32",
        "--train-size",
        "600",
        "--verbose",
        "0",
        "--method",
        method,
        "--output",
        output,
    ]
    assert cli.train_main(flags) == 0
    results = json.load(open(os.path.join(output, "results.json")))
    assert results["test_accuracy"] > 0.6, results["test_accuracy"]
