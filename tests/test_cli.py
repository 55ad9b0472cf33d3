"""The console entry points: flags, installation, and gmix-flatness on saved models."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import keras_gmix as kg
from keras_gmix import cli, flatness, train
from keras_gmix import config as config_lib
from keras_gmix import flatness_report as fr
from tests.helpers.common import ROOT, epochs_in_backup

ENTRY_POINTS = {
    "gmix-train": "train_main",
    "gmix-compare": "compare_main",
    "gmix-flatness": "flatness_main",
}


def test_entry_points_go_through_the_backend_launcher():
    """setup.py's console scripts are `gmix_launch`'s, which set KERAS_BACKEND
    and then call `keras_gmix.cli` (installed scripts follow setup.py on the
    next `pip install -e .`)."""
    import ast

    import gmix_launch

    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        text = f.read()
    scripts = next(
        node.value.values[0]
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.keyword) and node.arg == "entry_points"
    )
    declared = dict(entry.value.split("=") for entry in scripts.elts)
    assert set(declared) == set(ENTRY_POINTS)
    assert 'py_modules=["gmix_launch"]' in text
    for name, function in ENTRY_POINTS.items():
        module, launcher = declared[name].split(":")
        assert module == "gmix_launch" and gmix_launch.COMMANDS[name] is getattr(
            gmix_launch, launcher
        )
        with pytest.raises(SystemExit) as exit_info:  # reaches the command's own parser
            getattr(gmix_launch, launcher)(["--help"])
        assert exit_info.value.code == 0
        assert callable(getattr(cli, function))


def test_the_launcher_reads_the_backend_flag_config_file_resumed_run_then_environment(tmp_path):
    from gmix_launch import requested_backend

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"backend": "jax", "epochs": 2}))
    settings = tmp_path / "settings.yaml"
    settings.write_text("backend: tensorflow\nepochs: 3\n")
    env = {"KERAS_BACKEND": "jax"}
    resume = ["--resume", "--output", str(run)]
    assert requested_backend(["--backend", "jax"], {}) == "jax"
    assert requested_backend(["--backend=tensorflow"], env) == "tensorflow"
    assert requested_backend(["--config", str(settings)], env) == "tensorflow"
    assert requested_backend(["--config", str(settings), "--backend", "jax"], {}) == "jax"
    assert requested_backend(resume, {"KERAS_BACKEND": "tensorflow"}) == "jax"
    assert requested_backend(["--output", str(run)], {}) is None  # not resumed: not its run
    assert requested_backend(["--backend", "auto", "--epochs", "1"], env) == "jax"
    assert requested_backend([], {}) is None  # Keras' own choice
    # A broken file is the command's to report, not the launcher's.
    (tmp_path / "bad.json").write_text("{")
    assert requested_backend(["--config", str(tmp_path / "bad.json")], {}) is None


def test_the_launcher_refuses_a_backend_other_than_an_imported_keras_one():
    import gmix_launch

    other = "jax" if keras.backend.backend() == "tensorflow" else "tensorflow"
    before = os.environ.get("KERAS_BACKEND")
    with pytest.raises(SystemExit) as exit_info:
        gmix_launch.train(["--backend", other, "--epochs", "1"])
    assert f"--backend {other} was asked, but Keras is imported already" in str(
        exit_info.value.code
    )
    assert os.environ.get("KERAS_BACKEND") == before


def help_text(function, capsys):
    with pytest.raises(SystemExit) as exit_info:
        function(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_gmix_train_has_a_flag_for_every_setting(capsys):
    text = help_text(cli.train_main, capsys)
    for field in dataclasses.fields(train.TrainConfig):
        assert "--" + field.name.replace("_", "-") in text, field.name
    for flag in (
        "--config",
        "--stock-batchnorm",
        "--no-stock-batchnorm",
        "--resume",
        "--distribute",
    ):
        assert flag in text


def test_gmix_compare_flags(capsys):
    text = help_text(cli.compare_main, capsys)
    for flag in (
        "--methods",
        "--seeds",
        "--collect",
        "--output",
        "--dataset",
        "--epochs",
        "--config",
    ):
        assert flag in text
    assert "--method " not in text and "--seed " not in text  # replaced by --methods / --seeds


def test_gmix_flatness_flags(capsys):
    text = help_text(cli.flatness_main, capsys)
    for flag in (
        "--dataset",
        "--rho",
        "--eigenvalue-iters",
        "--trace-samples",
        "--points",
        "--span",
        "--output",
    ):
        assert flag in text


@pytest.mark.parametrize("make_parser", [cli.train_parser, cli.compare_parser, cli.flatness_parser])
def test_every_option_has_a_help_sentence_with_its_default(make_parser):
    parser = make_parser()
    options = [a for a in parser._actions if a.dest != "help"]
    assert len(options) > 10
    for action in options:
        text = (action.help or "").strip()
        assert len(text) > 20 and text.endswith("."), (action.dest, text)
        if action.option_strings:  # the positional MODEL.keras has no default
            assert "Default: " in text, (action.dest, text)


def test_every_train_config_field_has_a_help_text():
    fields = {field.name for field in dataclasses.fields(train.TrainConfig)}
    assert set(config_lib.FIELD_HELP) == fields
    assert all(text.strip() for text in config_lib.FIELD_HELP.values())


def test_a_field_added_in_one_edit_is_a_flag_with_its_help_choices_and_checks():
    # Adding a setting is one edit: the field, with its metadata beside it.
    @dataclasses.dataclass
    class Extended(config_lib.TrainConfig):
        colour: str = config_lib.setting(
            "red", "The colour of the run's plots, red or blue.", choices=("red", "blue")
        )
        passes: int = config_lib.setting(
            2, "Passes over each batch (1 to 4).", number_range=dict(low=1, high=4)
        )

    parser = cli._parser_from_config(Extended, "An extended gmix-train.")
    flags = {action.dest: action for action in parser._actions}
    assert flags["colour"].help == "The colour of the run's plots, red or blue. Default: red."
    assert flags["colour"].choices == ("red", "blue")
    assert flags["passes"].help == "Passes over each batch (1 to 4). Default: 2."
    with pytest.raises(ValueError, match="passes"):
        Extended(passes=5)
    with pytest.raises(ValueError, match="colour"):
        Extended(colour="green").validate()


def test_help_shows_the_sentence_and_the_default(capsys):
    text = " ".join(help_text(cli.train_main, capsys).split())
    assert (
        "Radius of the SAM neighbourhood (>= 0; 0 turns the perturbation off). Default: 0.05."
        in text
    )


def saved_model(folder, seed, softmax=False, config=None):
    """A small untrained CNN on digits' 8x8x1 images, wrapped and saved as <folder>/model.keras."""
    keras.utils.set_random_seed(seed)
    inner = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax" if softmax else None),
        ]
    )
    model = kg.GMixModel(inner, method="sam" if softmax else "dgmix", seed=seed)
    if not softmax:
        model.compile(
            optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.keras")
    model.save(path)
    if config is not None:
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f)
    return path


SETTINGS = [
    "--examples",
    "64",
    "--eigenvalue-iters",
    "3",
    "--sharpness-steps",
    "2",
    "--points",
    "5",
    "--trace-samples",
    "2",
]


def test_gmix_flatness_on_two_models_writes_the_ranked_table_and_figures(tmp_path, capsys):
    a = saved_model(str(tmp_path / "alpha"), seed=1)
    b = saved_model(str(tmp_path / "beta"), seed=2, softmax=True)
    output = str(tmp_path / "report")
    assert cli.flatness_main([a, b, "--dataset", "digits", "--output", output] + SETTINGS) == 0
    assert sorted(os.listdir(output)) == [
        "flatness.json",
        "flatness.md",
        "landscape_1d.png",
        "landscape_alpha.png",
        "landscape_beta.png",
    ]
    for name in ("landscape_1d.png", "landscape_alpha.png"):
        with open(os.path.join(output, name), "rb") as f:
            assert f.read(4) == b"\x89PNG"
    report = json.load(open(os.path.join(output, "flatness.json")))
    rows = report["rows"]
    assert [row["rank"] for row in rows] == [1, 2]
    assert rows[0]["top_eigenvalue"] <= rows[1]["top_eigenvalue"]
    assert {row["model"] for row in rows} == {"alpha", "beta"}
    assert {row["method"] for row in rows} == {"dgmix", "sam"}
    assert all(len(report["landscapes"][name]["losses"]) == 5 for name in ("alpha", "beta"))
    table = open(os.path.join(output, "flatness.md")).read()
    assert "Hessian trace" in table and "| 1 | " + rows[0]["model"] in table
    assert "| 1 | " + rows[0]["model"] in capsys.readouterr().out

    # The numbers are flatness.py's on the same examples (logits for alpha,
    # probabilities for beta: the loss follows the model's output).
    x, y = fr.load_examples("digits", examples=64)
    for row, from_logits in ((r, r["model"] == "alpha") for r in rows):
        model = keras.saving.load_model(a if from_logits else b)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
        expected = flatness.hessian_top_eigenvalue(
            model, (x, y), loss, iters=3, seed=0, batch_size=256
        )
        assert row["top_eigenvalue"] == pytest.approx(expected.value, rel=1e-5)
        assert row["loss"] == pytest.approx(
            flatness.rho_sharpness(model, (x, y), loss, rho=0.05, steps=0).loss, rel=1e-6
        )
        predictions = model.predict(x, verbose=0)
        assert row["accuracy"] == pytest.approx(np.mean(predictions.argmax(-1) == y))


def test_gmix_flatness_reads_the_data_set_from_the_run_folder(tmp_path, capsys):
    a = saved_model(str(tmp_path / "run"), seed=1, config={"dataset": "digits", "seed": 0})
    output = str(tmp_path / "report")
    assert cli.flatness_main([a, "--output", output] + SETTINGS) == 0
    report = json.load(open(os.path.join(output, "flatness.json")))
    assert report["data"]["dataset"] == "digits" and report["data"]["examples"] == 64

    bare = saved_model(str(tmp_path / "bare"), seed=1)
    with pytest.raises(SystemExit) as exit_info:
        cli.flatness_main([bare, "--output", output])
    assert exit_info.value.code == 2
    assert "No --dataset given" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.flatness_main([str(tmp_path / "missing.keras"), "--dataset", "digits"])
    assert "No such model file" in capsys.readouterr().err


def test_gmix_flatness_names_a_model_of_fewer_classes_and_models_without_a_run(tmp_path, capsys):
    keras.utils.set_random_seed(0)
    three = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    path = str(tmp_path / "plain.keras")
    three.save(path)
    with pytest.raises(SystemExit) as exit_info:
        cli.flatness_main([path, "--dataset", "digits", "--output", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"{path} outputs 3 classes, but the test examples of digits hold class 9" in error
    ten = saved_model(str(tmp_path / "bare"), seed=1)  # no config.json beside it
    assert (
        cli.flatness_main([ten, "--dataset", "digits", "--output", str(tmp_path / "s")] + SETTINGS)
        == 0
    )
    assert "has no gmix-train config.json beside it" in capsys.readouterr().err


def test_gmix_flatness_finds_a_runs_relative_dataset_from_another_directory(
    tmp_path, capsys, monkeypatch
):
    began = tmp_path / "project"
    os.makedirs(began)
    rng = np.random.default_rng(0)
    arrays = dict(
        x_train=rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8),
        y_train=np.arange(32) % 10,
        x_test=rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8),
        y_test=np.arange(16) % 10,
    )
    np.savez(began / "d.npz", **arrays)
    fingerprint = {"train": {"path": str(began / "d.npz")}}
    model = saved_model(
        str(tmp_path / "run"), seed=1, config={"dataset": "d.npz", "data_fingerprint": fingerprint}
    )
    monkeypatch.chdir(tmp_path)  # not where the run began: d.npz is not here
    settings = [*SETTINGS[:1], "16", *SETTINGS[2:]]
    assert cli.flatness_main([model, "--output", str(tmp_path / "r")] + settings) == 0
    report = json.load(open(tmp_path / "r" / "flatness.json"))
    assert report["data"]["dataset"] == str(began / "d.npz")


@pytest.mark.slow  # a real gmix-train process per signal, ~20 s each
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "Ctrl-C", "SIGHUP"]
)
def test_a_stopped_gmix_train_says_in_one_line_how_to_resume(tmp_path, signum):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    output = str(tmp_path / "run")
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_gmix.cli", "--epochs", "500", "--train-size", "64"]
        + ["--verbose", "0", "--output", output],
        stderr=subprocess.PIPE,
        text=True,
        cwd=root,
        env=dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="3"),
        # A shell without job control starts background commands with SIGINT
        # ignored, and children inherit that: give gmix-train Ctrl-C as a
        # terminal would, however the tests were started.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 300
        while epochs_in_backup(os.path.join(output, "backup")) < 1:
            assert process.poll() is None and time.time() < deadline, "no epoch finished"
            time.sleep(0.2)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 128 + signum, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-2000:]
    what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    saved = kg.checkpoint.saved_epoch(os.path.join(output, "backup"))
    assert saved >= 1
    assert stderr.strip().splitlines()[-1] == (
        f"gmix-train: stopped by {what}. The run's last finished epoch ({saved}) is saved: "
        f"continue it with `gmix-train --resume --output {output}`."
    )


def test_resume_without_an_output_asks_for_it(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--resume"])
    assert exit_info.value.code == 2
    assert "--resume needs --output DIR" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # no timestamp folder named or made


def test_a_stop_before_the_first_epoch_says_nothing_is_saved(tmp_path, capsys, monkeypatch):
    """The line a stopped run ends with says whether an epoch is saved."""
    from keras_gmix import train

    def stopped(config, callbacks=None):
        os.makedirs(config.output)
        open(os.path.join(config.output, "config.json"), "w").write("{}")
        raise cli.Terminated(signal.SIGTERM)

    monkeypatch.setattr(train, "run", stopped)
    output = str(tmp_path / "run")
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--output", output])
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip() == (
        "gmix-train: stopped by SIGTERM. No epoch finished yet: start it again with "
        f"`gmix-train --resume --output {output}`."
    )


class _LosesASignal:
    """Sends SIGTERM from a `__del__`: the handler's exception is raised
    there, printed as "Exception ignored" and lost, as it can be when a
    signal arrives while Python collects an object."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_stop_signal_whose_exception_was_lost_stops_fit_at_the_next_batch():
    before = signal.getsignal(signal.SIGTERM)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = np.zeros((32, 4), np.float32), np.zeros(32, np.int64)

    class LoseOne(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 1:
                _LosesASignal()  # collected at once

    with cli._stops_as_interrupts():
        with pytest.raises(cli.Terminated):
            model.fit(
                x, y, batch_size=4, verbose=0, callbacks=[LoseOne(), cli._stop_when_signalled()]
            )
    assert int(model.optimizer.iterations.numpy()) == 2  # stopped after batch 1, of 8
    assert signal.getsignal(signal.SIGTERM) is before
