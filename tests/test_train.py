"""gmix-train: end-to-end runs, the output folder, resume after a kill, config files."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import yaml

import keras_gmix as kg
from keras_gmix import cli, train
from keras_gmix import config as config_lib
from keras_gmix.gradients import METHODS, PERTURBED_METHODS
from keras_gmix.layers import BatchNormalization as FusedBatchNormalization
from tests.helpers.common import (
    HELPERS,
    TINY_RUN,
    Kill,
    copy_run,
    epochs_in_backup,
    gmix_train,
    resume_config,
)

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


def test_a_run_folder_moved_between_a_stop_and_resume_records_where_it_lives(tmp_path):
    first, moved = str(tmp_path / "first"), str(tmp_path / "moved")
    config = train.TrainConfig(epochs=2, train_size=32, batch_size=16, verbose=0, output=first)
    with pytest.raises(KeyboardInterrupt):
        train.run(config, callbacks=[Kill(after=0)])
    os.rename(first, moved)
    values = config_lib.resume_values({"output": moved, "resume": True, "verbose": 0})
    results = train.run(train.TrainConfig.from_dict(values))
    assert results["output"] == moved and results["epochs_done"] == 2
    assert json.load(open(os.path.join(moved, "config.json")))["output"] == moved
    assert [row["epoch"] for row in read_csv(os.path.join(moved, "history.csv"))] == ["0", "1"]


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
        train.run(config, callbacks=[Kill(after=0)])
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
        train.run(config, callbacks=[Kill(after=0)])
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
    backup = os.path.join(output, "backup")
    deadline = time.time() + 300
    try:
        while epochs_in_backup(backup) < 1 and process.poll() is None and time.time() < deadline:
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
    "name, text, expected",
    [
        ("empty.json", "", r"Config file {path} is empty\. Config files are JSON"),
        (
            "settings.txt",
            "epochs: 3\n",
            r"{path} is not valid JSON \(line 1, column 1: Expecting value\)",
        ),
        (
            "bad.yaml",
            "epochs: [3\nrho: 0.1\n",
            r"{path} is not valid YAML \(line 2, column 4: expected",
        ),
        ("keys.yaml", "1: 2\n", r"{path} has the key 1, which is not a setting name"),
        (
            "list.yaml",
            "- epochs\n",
            r"{path} must hold a mapping of settings \(key: value\), not a list",
        ),
        ("paths.yaml", "output: 5\n", r"In config file {path}: Argument `output` must be a string"),
        ("missing.yaml", None, r"Config file {path} does not exist: check the --config path"),
    ],
)
def test_a_bad_config_file_is_refused_in_one_sentence_naming_it(
    tmp_path, name, text, expected, capsys
):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--config", str(path), "--output", str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert error.startswith("gmix-train: error: ") and error.count("\n") == 1, error
    assert re.search(expected.format(path=re.escape(str(path))), error), error
    assert not os.path.exists(tmp_path / "run")


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
    cosine = train.schedule_of(train.TrainConfig(schedule="cosine", **base), 10)
    assert _rates(cosine, [10, 20, 60]) == pytest.approx([0.05, 0.1, 0.05], rel=1e-5)
    # Step: milestones at 50% and 75% of the 80 post-warm-up steps.
    step = train.schedule_of(train.TrainConfig(schedule="step", **base), 10)
    assert _rates(step, [0, 9, 20, 59, 61, 81]) == pytest.approx(
        [0.005, 0.05, 0.1, 0.1, 0.01, 0.001]
    )
    constant = train.schedule_of(train.TrainConfig(schedule="constant", **base), 10)
    assert _rates(constant, [4, 19, 20, 99]) == pytest.approx([0.025, 0.1, 0.1, 0.1])
    # Without warm-up: plain Keras schedules.
    plain = train.schedule_of(
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
    history = kg.records.read_history(os.path.join(output, "history.csv"))
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
    history = kg.records.read_history(os.path.join(output, "history.csv"))
    assert [row["full_step"] for row in history] == [0.0, 0.5]
    with pytest.raises(SystemExit):
        cli.train_main(TINY + ["--perturb-from", "1.5", "--output", str(tmp_path / "bad")])
    # A step beyond the run's last (2 x 4 = 8) is legal, and said, even quietly.
    capsys.readouterr()
    late = flags[:-4] + ["--perturb-from", "8", "--output", str(tmp_path / "late")]
    assert cli.train_main(TINY + late + ["--verbose", "0"]) == 0
    assert "perturb_from=8 lies beyond this run's last step (8: 2 epochs of 4)" in (
        capsys.readouterr().err
    )
    history = kg.records.read_history(os.path.join(tmp_path, "late", "history.csv"))
    assert [row["full_step"] for row in history] == [0.0, 0.0]


def test_gmix_train_takes_no_keep_first_pass(tmp_path):
    """--no-keep-first-pass reaches the model and config.json; the run trains."""
    output = str(tmp_path / "run")
    flags = ["--train-size", "64", "--dataset", "digits", "--method", "bgmix"]
    assert cli.train_main(TINY + flags + ["--no-keep-first-pass", "--output", output]) == 0
    assert json.load(open(os.path.join(output, "config.json")))["keep_first_pass"] is False
    model = keras.saving.load_model(os.path.join(output, "model.keras"))
    assert model.keep_first_pass is False and model.method == "bgmix"
    history = kg.records.read_history(os.path.join(output, "history.csv"))
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


@pytest.fixture(scope="module")
def killed_after_two_epochs(tmp_path_factory):
    """An erm run of 3 epochs on digits stopped after its second: history.csv
    holds epochs 0 and 1, the backup 2 finished epochs."""
    output = str(tmp_path_factory.mktemp("killed") / "run")
    config = train.TrainConfig(
        method="erm", epochs=3, train_size=32, batch_size=16, verbose=0, output=output
    )
    with pytest.raises(KeyboardInterrupt):
        train.run(config, callbacks=[Kill(after=1)])
    return output


@pytest.fixture
def killed_copy(killed_after_two_epochs, tmp_path):
    return copy_run(killed_after_two_epochs, tmp_path)


def _cut_history(text):
    return text[: text.index("\n1,") + 1]  # the header and epoch 0's row


@pytest.mark.parametrize(
    "damage, expected",
    [
        (None, "is missing, but the checkpoint holds 2 finished epochs"),
        (lambda text: "", r"lacks the rows of epochs \[0, 1\]"),
        (_cut_history, r"lacks the rows of epochs \[1\]"),
        (lambda text: text.replace("\n1,", "\n#garbled,"), r"lacks the rows of epochs \[1\]"),
        (lambda text: "\x00\x01 not,a csv\n", r"lacks the rows of epochs \[0, 1\]"),
    ],
    ids=["deleted", "emptied", "short", "garbled-row", "garbled-file"],
)
def test_resume_refuses_a_history_that_lost_rows_the_checkpoint_holds(
    killed_copy, damage, expected, capsys
):
    path = os.path.join(killed_copy, "history.csv")
    if damage is None:
        os.remove(path)
    else:
        text = open(path, encoding="utf-8").read()
        open(path, "w", encoding="utf-8").write(damage(text))
    before = open(path, "rb").read() if os.path.exists(path) else None
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--resume", "--output", killed_copy])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert re.search(expected, error), error
    assert f"restore {path} from a copy" in error and "delete the backup folder" in error
    # Refused before anything was written: the record is as it was.
    assert (open(path, "rb").read() if os.path.exists(path) else None) == before
    assert train.checkpoint_lib.saved_epoch(os.path.join(killed_copy, "backup")) == 2
    assert not os.path.exists(os.path.join(killed_copy, "results.json"))


def _edit_config(folder, edit):
    path = os.path.join(folder, "config.json")
    values = json.load(open(path))
    edit(values)
    json.dump(values, open(path, "w"))


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda v: v.update(method="gmix"), r"method: 'erm' -> 'gmix'"),
        (lambda v: v.update(epochs=6), r"epochs: 3 -> 6 \(the cosine learning-rate schedule"),
        (lambda v: v.pop("batch_size"), r"batch_size: 16 -> 64"),  # a key lost: its default
    ],
    ids=["method", "epochs-cosine", "key-removed"],
)
def test_resume_refuses_a_config_json_edited_since_the_kill(killed_copy, edit, expected, capsys):
    """config.json is what `--resume` reads: a hand edit since the kill no
    longer continues the checkpoint with other settings (the checkpoint's
    state.json carries the settings it was written with)."""
    _edit_config(killed_copy, edit)
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--resume", "--output", killed_copy])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"Cannot resume {killed_copy}: its checkpoint" in error
    assert re.search(expected, error) and "config.json was changed" in error, error
    assert not os.path.exists(os.path.join(killed_copy, "results.json"))
    assert train.checkpoint_lib.saved_epoch(os.path.join(killed_copy, "backup")) == 2


def test_resume_refuses_another_runs_backup(killed_copy, tmp_path, capsys):
    import shutil

    other = str(tmp_path / "other")
    config = train.TrainConfig(
        method="erm", epochs=3, train_size=32, batch_size=16, verbose=0, output=other, seed=5
    )
    with pytest.raises(KeyboardInterrupt):
        train.run(config, callbacks=[Kill(after=0)])
    shutil.rmtree(os.path.join(killed_copy, "backup"))
    shutil.copytree(os.path.join(other, "backup"), os.path.join(killed_copy, "backup"))
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--resume", "--output", killed_copy])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "seed: 5 -> 0" in error and "the backup comes from another run" in error, error


def test_resume_refuses_a_backup_whose_state_json_was_deleted(killed_copy, capsys):
    """The backup begins with a state of epoch 0 before any checkpoint file,
    so checkpoint files without state.json are a deleted state.json, not a
    first commit cut short: refused, not a silent start from epoch 0."""
    backup = os.path.join(killed_copy, "backup")
    os.remove(os.path.join(backup, "state.json"))
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--resume", "--output", killed_copy])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "state.json is missing, but" in error and "delete the backup folder" in error, error
    assert any(name.startswith("epoch-") for name in os.listdir(backup))


def test_a_finished_run_missing_its_model_or_results_is_refused_on_resume(tmp_path, capsys):
    output = str(tmp_path / "run")
    train.run(
        train.TrainConfig(
            method="erm", epochs=1, train_size=32, batch_size=16, verbose=0, output=output
        )
    )
    model_path, results_path = (os.path.join(output, n) for n in ("model.keras", "results.json"))
    model_bytes = open(model_path, "rb").read()
    for missing, expected in ((model_path, "its model.keras is missing"), (results_path, None)):
        os.rename(missing, missing + ".away")
        with pytest.raises(SystemExit) as exit_info:
            cli.train_main(["--resume", "--output", output])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert (expected or f"its results.json is missing: restore {results_path}") in error
        os.rename(missing + ".away", missing)
    # Not trained again over the finished run's model.
    assert open(model_path, "rb").read() == model_bytes


def test_resume_with_an_intact_history_finishes_with_every_epoch(killed_copy):
    results = train.run(
        train.TrainConfig.from_dict(
            config_lib.resume_values({"output": killed_copy, "resume": True})
        )
    )
    history = read_csv(os.path.join(killed_copy, "history.csv"))
    assert [row["epoch"] for row in history] == ["0", "1", "2"]
    assert results["epochs_done"] == 3 == results["epochs"]


def _write_tiny_npz(path, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8),
        y_train=np.arange(32) % classes,
        x_test=rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8),
        y_test=np.arange(8) % classes,
    )


def _killed_run_on(dataset, output, **settings):
    config = train.TrainConfig(
        dataset=dataset, method="erm", epochs=2, batch_size=16, verbose=0, output=output, **settings
    )
    with pytest.raises(KeyboardInterrupt):
        train.run(config, callbacks=[Kill(after=0)])


@pytest.mark.parametrize(
    "replace, expected",
    [
        ("pixel", r"train data \(.*tiny.npz\): the content differs\)"),
        ("classes", r"train data \(.*tiny.npz\): the content differs\)"),
    ],
)
def test_resume_on_a_replaced_npz_is_refused_saying_what_changed(
    tmp_path, replace, expected, capsys
):
    path, output = str(tmp_path / "tiny.npz"), str(tmp_path / "run")
    _write_tiny_npz(path)
    _killed_run_on(path, output)
    saved = json.load(open(os.path.join(output, "config.json")))["data_fingerprint"]["train"]
    import hashlib

    assert saved["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert saved["bytes"] == os.path.getsize(path)
    if replace == "pixel":
        with np.load(path) as f:
            arrays = dict(f)
        arrays["x_train"][5, 2, 2, 0] ^= 1
        np.savez(path, **arrays)
    else:
        _write_tiny_npz(path, classes=6, seed=1)  # more classes: once blamed on the checkpoint
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--resume", "--output", output])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"Cannot resume {output}: its data changed since the run began" in error
    assert re.search(expected, error) and "Put the run's data back" in error, error
    assert "checkpoint" not in error
    assert train.checkpoint_lib.saved_epoch(os.path.join(output, "backup")) == 1


def test_a_resume_from_another_directory_says_where_a_relative_dataset_is(
    tmp_path, monkeypatch, capsys
):
    began = tmp_path / "project"
    os.makedirs(began / "data")
    monkeypatch.chdir(began)
    _write_tiny_npz(os.path.join("data", "tiny.npz"))
    output = str(tmp_path / "run")
    _killed_run_on(os.path.join("data", "tiny.npz"), output)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--resume", "--output", output])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "names the train data by a relative path, 'data/tiny.npz'" in error, error
    assert f"from the directory it began in ({began})" in error
    monkeypatch.chdir(began)  # from there it resumes
    cli.train_main(["--resume", "--output", output, "--verbose", "0"])
    assert os.path.exists(os.path.join(output, "results.json"))


def test_resume_on_a_changed_image_folder_is_refused_and_the_same_folder_resumes(tmp_path, capsys):
    from tests.folder_data import write_digit_folder

    folder, output = str(tmp_path / "images"), str(tmp_path / "run")
    write_digit_folder(folder, per_class=8)
    _killed_run_on(folder, output)
    extra = str(tmp_path / "more")
    write_digit_folder(extra, per_class=1, offset=40)
    added = os.path.join(folder, "digit_1", "extra.png")
    import shutil

    shutil.copy(
        os.path.join(extra, "digit_1", os.listdir(os.path.join(extra, "digit_1"))[0]), added
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--resume", "--output", output])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert re.search(
        r"train data \(.*images\): files 24 -> 25, bytes \d+ -> \d+, file names", error
    )
    os.remove(added)
    assert cli.train_main(["--resume", "--output", output]) == 0
    assert json.load(open(os.path.join(output, "results.json")))["epochs_done"] == 2


def test_resume_with_more_epochs_is_refused_for_a_cosine_schedule(killed_copy, capsys):
    config_path = os.path.join(killed_copy, "config.json")
    before = open(config_path).read()
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--resume", "--output", killed_copy, "--epochs", "5"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "epochs: 3 -> 5 (the cosine learning-rate schedule is laid out over the run's 3" in error
    assert "only a run with schedule 'constant' may be given more epochs" in error
    assert open(config_path).read() == before


def test_resume_with_more_epochs_keeps_a_constant_schedule_smooth(tmp_path):
    """Killed after epoch 1 of 2, resumed for 4: the learning rate of every step
    is the warm-up-then-constant rate, computed here with NumPy."""
    output = str(tmp_path / "run")
    rate, steps_per_epoch, warmup_steps = 0.05, 2, 3
    _killed_run_on(
        "digits",
        output,
        train_size=32,
        schedule="constant",
        learning_rate=rate,
        warmup_epochs=1.5,
        tensorboard_update_freq=1,
    )
    assert cli.train_main(["--resume", "--output", output, "--epochs", "4", "--verbose", "0"]) == 0
    import tensorflow as tf

    folder = os.path.join(output, "tensorboard", "steps")
    logged = {}
    for name in sorted(event_files(folder)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
            for value in event.summary.value:
                if value.tag == "learning_rate":
                    logged[event.step] = float(tf.make_ndarray(value.tensor))
    steps = np.arange(1, 4 * steps_per_epoch + 1)  # the rate of the step after each
    expected = np.where(steps < warmup_steps, rate * (steps + 1) / warmup_steps, rate)
    assert sorted(logged) == list(steps)
    np.testing.assert_allclose([logged[s] for s in steps], expected, rtol=1e-6)
    saved = json.load(open(os.path.join(output, "config.json")))
    assert (saved["epochs"], saved["schedule"]) == (4, "constant")


def test_an_output_that_names_a_file_is_refused(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--output", str(path), "--epochs", "1", "--verbose", "0"])
    assert exit_info.value.code == 2
    assert f"--output {path} is a file, not a folder" in capsys.readouterr().err
    assert path.read_text() == "mine"
    # Under a file, at any depth: one sentence naming the file, no traceback.
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--output", str(path / "a" / "b"), "--epochs", "1", "--verbose", "0"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error
    assert f"lies under {path}, which is a file, not a folder" in error


@pytest.fixture
def disk(tmp_path):
    """A folder that `make_read_only()` turns read-only for real: a tmpfs
    remounted read-only when the tests run as root (root ignores file
    modes), the write permission bits removed otherwise."""
    folder = tmp_path / "disk"
    folder.mkdir()
    root = os.geteuid() == 0
    if root:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], check=True)

    def make_read_only():
        if root:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            for base, dirs, files in os.walk(folder):
                for name in dirs + files + [""]:
                    os.chmod(os.path.join(base, name), 0o555 if name in dirs + [""] else 0o444)

    try:
        yield folder, make_read_only
    finally:
        if root:
            subprocess.run(["umount", str(folder)], check=True)
        else:
            for base, _, _ in os.walk(folder):
                os.chmod(base, 0o755)


def test_runs_on_a_read_only_disk_are_refused_in_one_sentence(disk, capsys):
    disk, make_read_only = disk
    finished, unfinished = str(disk / "finished"), str(disk / "unfinished")
    small = ["--epochs", "1", "--train-size", "32", "--batch-size", "16", "--verbose", "0"]
    assert cli.train_main(small + ["--method", "erm", "--output", finished]) == 0
    results = json.load(open(os.path.join(finished, "results.json")))
    _killed_run_on("digits", unfinished, train_size=32)
    make_read_only()
    capsys.readouterr()

    # A finished run reads back: it needs to write nothing.
    assert cli.train_main(["--resume", "--output", finished]) == 0
    assert json.loads(capsys.readouterr().out.split("\n\n")[0]) == results
    for args, where in [
        (small + ["--output", str(disk / "new")], disk / "new"),
        (["--resume", "--output", unfinished], os.path.join(unfinished, "")),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli.train_main(args)
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in error, error
        assert re.search(
            rf"Cannot write the run's record at {re.escape(str(where))}.*: "
            r"(Read-only file system|Permission denied): choose an --output on a writable disk",
            error,
        ), error


# -- interruption: SIGKILL mid-epoch, then --resume -------------------------------------


# Augmented (pad-crop on 16x16 digits), shuffled, dgmix: every source of randomness.
RESUME_RUN = [
    "--epochs",
    "3",
    "--train-size",
    "192",
    "--batch-size",
    "32",
    "--image-size",
    "16",
    "--augment",
    "standard",
    "--method",
    "dgmix",
    "--seed",
    "3",
    "--deterministic",
    "--verbose",
    "0",
    "--tensorboard-update-freq",
    "1",
]


def _state_of(output):
    """Every variable of the saved GMixModel (weights, BN statistics, optimizer, counters)."""
    model = keras.saving.load_model(os.path.join(output, "model.keras"))
    values = [v.numpy() for v in model.variables] + [v.numpy() for v in model.optimizer.variables]
    history = [
        {k: v for k, v in row.items() if k != "seconds"}
        for row in kg.records.read_history(os.path.join(output, "history.csv"))
    ]
    return values, history


@pytest.mark.slow  # three gmix-train processes, ~70 s; run by .ci/run
# With a schedule (SPEC.md section 4b) too: full steps come from the restored
# step counter, and v is restored with the weights. 6 steps per epoch, k = 4:
# the kill falls between full steps 4 and 8.
# The late phase: 18 steps, --perturb-from 0.5 is step 9, which the resumed
# run (from step 6, the start of epoch 1) crosses.
@pytest.mark.parametrize(
    "schedule",
    [[], ["--perturb-every", "4", "--reuse-scale", "0.3"], ["--perturb-from", "0.5"]],
    ids=["plain", "schedule", "late_phase"],
)
def test_sigkill_mid_epoch_then_resume_gives_the_same_weights_bit_for_bit(tmp_path, schedule):
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    gmix_train([*RESUME_RUN, *schedule, "--output", reference], prefix=["-m", "keras_gmix.cli"])
    # Killed after batch 2 of epoch 1 (0-based): epoch 0's checkpoint exists.
    gmix_train(
        [*RESUME_RUN, *schedule, "--output", killed],
        prefix=[os.path.join(HELPERS, "sigkill_mid_epoch.py"), "1", "2"],
        expect=-signal.SIGKILL,
    )
    assert kg.checkpoint.saved_epoch(os.path.join(killed, "backup")) == 1
    assert not os.path.exists(os.path.join(killed, "model.keras"))
    gmix_train(["--resume", "--output", killed], prefix=["-m", "keras_gmix.cli"])

    (ref_values, ref_history), (values, history) = _state_of(reference), _state_of(killed)
    assert history == ref_history and [row["epoch"] for row in history] == [0, 1, 2]
    if "--perturb-from" in schedule:
        assert [row["full_step"] for row in history] == [0.0, 0.5, 1.0]
    assert len(values) == len(ref_values)
    for got, want in zip(values, ref_values):
        np.testing.assert_array_equal(got, want)
    assert not os.path.exists(os.path.join(killed, "backup"))


# -- --resume continues the run in the folder, or refuses ------------------------------


def test_resume_of_a_missing_folder_is_refused_and_creates_nothing(tmp_path, capsys):
    from keras_gmix import cli, train

    missing = str(tmp_path / "typo")
    with pytest.raises(
        FileNotFoundError, match=rf"Cannot resume: {missing} does not exist.*drop --resume"
    ):
        train.run(train.TrainConfig(output=missing, resume=True, **TINY_RUN))
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(
            [
                "--resume",
                "--output",
                missing,
                "--epochs",
                "1",
                "--train-size",
                "32",
                "--verbose",
                "0",
            ]
        )
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err
    assert not os.path.exists(missing)


@pytest.mark.parametrize(
    "damage, match",
    [("delete", "config.json is missing"), ("truncate", "config.json is unreadable")],
)
def test_resume_without_a_readable_config_json_is_refused(run_copy, damage, match):
    from keras_gmix import train

    path = os.path.join(run_copy, "config.json")
    if damage == "delete":
        os.remove(path)
    else:
        text = open(path).read()
        open(path, "w").write(text[: len(text) // 2])
    with pytest.raises(
        (FileNotFoundError, ValueError), match=rf"{match}.*settings are unknown.*delete {run_copy}"
    ):
        train.run(resume_config(run_copy))
    assert train.checkpoint_lib.saved_epoch(os.path.join(run_copy, "backup")) == 1, (
        "the backup is untouched"
    )


def test_resume_with_other_run_settings_is_refused_and_epochs_may_grow(run_copy):
    from keras_gmix import train

    config_path = os.path.join(run_copy, "config.json")
    before = open(config_path).read()
    with pytest.raises(ValueError, match=r"method: 'gmix' -> 'erm'; rho: 0.05 -> 0.1\."):
        train.run(resume_config(run_copy, method="erm", rho=0.1))
    with pytest.raises(ValueError, match=r"epochs: 2 -> 1 \(epochs may only grow\)"):
        train.run(resume_config(run_copy, epochs=1))
    assert open(config_path).read() == before, "a refused resume leaves config.json as it was"

    results = train.run(resume_config(run_copy, epochs=3, verbose=0))
    saved = json.load(open(config_path))
    assert (results["method"], results["epochs"], results["epochs_done"]) == ("gmix", 3, 3)
    assert (saved["method"], saved["epochs"], saved["resume"]) == ("gmix", 3, False)
    assert saved["output"] == run_copy  # a copy of the run: it lives here now
    relabelled = ("epochs", "output")
    assert {k: v for k, v in saved.items() if k not in relabelled} == {
        k: v for k, v in json.loads(before).items() if k not in relabelled
    }, "only epochs and output are relabelled"


def test_a_run_on_a_backend_keras_does_not_run_on_is_refused_before_writing(tmp_path):
    output = tmp_path / "run"
    other = "jax" if keras.backend.backend() == "tensorflow" else "tensorflow"
    with pytest.raises(ValueError, match=f"`backend` is '{other}', but Keras runs on"):
        train.run(train.TrainConfig(output=str(output), backend=other, **TINY_RUN))
    assert not output.exists()


def test_a_run_resumes_on_the_backend_it_started_on_or_is_refused(run_copy, capsys):
    """config.json records the backend; a resume on another is refused (the
    random streams and counters differ, so it could not continue the run),
    and a config.json from before `backend` existed resumes on TensorFlow."""
    config_path = os.path.join(run_copy, "config.json")
    saved = json.load(open(config_path))
    assert saved["backend"] == "tensorflow"
    with open(config_path, "w") as f:
        json.dump(dict(saved, backend="jax"), f)  # as if started on JAX
    before = open(config_path).read()
    for flags, message in (
        (
            [],
            "`backend` is 'jax' (the backend the run in --output was started on), but Keras "
            "runs on 'tensorflow'",
        ),
        (["--backend", "tensorflow"], "backend: 'jax' -> 'tensorflow'"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.train_main(["--resume", "--output", run_copy, "--verbose", "0", *flags])
        assert exit_info.value.code == 2
        assert message in " ".join(capsys.readouterr().err.split())
    assert open(config_path).read() == before
    assert kg.checkpoint.saved_epoch(os.path.join(run_copy, "backup")) == 1

    with open(config_path, "w") as f:
        json.dump({k: v for k, v in saved.items() if k != "backend"}, f)
    results = train.run(resume_config(run_copy, verbose=0))
    assert (results["backend"], results["epochs_done"]) == ("tensorflow", 2)


def test_a_finished_run_is_not_extended_silently(tmp_path):
    from keras_gmix import train

    output = str(tmp_path / "run")
    train.run(train.TrainConfig(output=output, **dict(TINY_RUN, epochs=1)))
    with pytest.raises(ValueError, match="finished its 1 epochs and kept no checkpoint"):
        train.run(resume_config(output, epochs=2))
    assert train.run(resume_config(output))["epochs_done"] == 1  # the same settings: read back


class _DiesMidWrite:
    """A file that takes half of what is written to it, then the process "dies"."""

    def __init__(self, file):
        self.file = file

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.file.close()

    def write(self, text):
        self.file.write(text[: len(text) // 2])
        self.file.flush()
        raise KeyboardInterrupt("killed while writing")


def test_a_kill_while_config_json_is_written_leaves_the_old_one(run_copy, monkeypatch):
    import builtins

    from keras_gmix import train

    config_path = os.path.join(run_copy, "config.json")
    before = open(config_path).read()
    real_open = builtins.open

    def dying_open(file, mode="r", *args, **kwargs):
        opened = real_open(file, mode, *args, **kwargs)
        if "w" in mode and os.fspath(file).endswith("config.json"):
            return _DiesMidWrite(opened)
        return opened

    monkeypatch.setattr(builtins, "open", dying_open)
    with pytest.raises(KeyboardInterrupt):
        train.run(resume_config(run_copy, epochs=3))  # more epochs: config.json is rewritten
    monkeypatch.undo()
    assert open(config_path).read() == before
    assert train.run(resume_config(run_copy))["epochs_done"] == 2  # and the run resumes from it


# -- a full disk: gmix-train ends with a sentence ---------------------------------------

DISK_LIMIT = (
    "import resource, runpy, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write then fails with EFBIG\n"
    "limit = int(sys.argv.pop(1))\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
    "runpy.run_module('keras_gmix.cli', run_name='__main__')\n"
)


@pytest.mark.slow  # two gmix-train processes, ~40 s
def test_a_full_disk_ends_gmix_train_with_a_sentence_and_the_run_resumes(tmp_path):
    """A real gmix-train whose files may not grow past 200 kB (RLIMIT_FSIZE):
    config.json, history.csv and TensorBoard fit, the checkpoint does not."""
    output = str(tmp_path / "run")
    args = ["--epochs", "2", "--train-size", "64", "--verbose", "0", "--output", output]
    limited = gmix_train(args, prefix=["-c", DISK_LIMIT, "200000"], expect=2)
    assert "Traceback" not in limited.stderr
    assert "Cannot write the checkpoint of epoch 1" in limited.stderr
    assert "the disk is full (File too large)" in limited.stderr
    assert "No epoch was saved yet: make room, then continue the run with --resume" in (
        limited.stderr
    )
    # No checkpoint file nor a half-written one: the backup's state of epoch 0 alone.
    assert os.listdir(os.path.join(output, "backup")) == ["state.json"]
    assert kg.checkpoint.saved_epoch(os.path.join(output, "backup")) == 0
    gmix_train(["--resume", "--output", output], prefix=["-m", "keras_gmix.cli"])
    results = json.load(open(os.path.join(output, "results.json")))
    assert results["epochs_done"] == 2
