"""config.py: TrainConfig's value checks, config files, and which settings define a run."""

import json
import os

import numpy as np
import pytest

from keras_gmix import config as config_lib


def test_multiworker_without_tf_config(monkeypatch):
    from keras_gmix import train

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        train.TrainConfig(distribute="multiworker").validate()


@pytest.mark.parametrize(
    "values, match",
    [
        ({"adaptive": "no"}, "`adaptive` must be True or False. Received: adaptive='no'"),
        ({"deterministic": 1}, "`deterministic` must be True or False"),
        ({"epochs": "ten"}, "`epochs` must be an integer >= 1. Received: epochs='ten'"),
        ({"batch_size": 16.5}, "`batch_size` must be an integer >= 1"),
        ({"rho": float("inf")}, "`rho` must be a finite number >= 0"),
        ({"alpha": float("nan")}, "`alpha` must be a finite number > 0"),
        ({"seed": "abc"}, "`seed` must be an integer"),
        ({"train_fraction": 0.0}, r"`train_fraction` must be a finite number in \(0, 1\]"),
        ({"learning_rate": True}, "`learning_rate` must be a finite number > 0"),
        (
            {"step_milestones": [0.75, 0.5]},
            "`step_milestones` must be .*strictly increasing in \\(0, 1\\)",
        ),
        ({"step_milestones": [0.5, 1.0]}, "`step_milestones` must be"),
        ({"step_milestones": [0.5, 0.5]}, "`step_milestones` must be"),
        ({"step_milestones": "0.5"}, "`step_milestones` must be"),
    ],
)
def test_config_values_are_checked_for_type_and_range(values, match):
    from keras_gmix import train

    with pytest.raises(ValueError, match=match):
        train.TrainConfig.from_dict(values).validate()


def test_a_config_file_with_a_string_for_a_flag_is_refused(tmp_path, capsys):
    from keras_gmix import cli

    path = tmp_path / "recipe.yaml"
    path.write_text('adaptive: "no"\nepochs: 1\n')
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--config", str(path), "--output", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "`adaptive` must be True or False" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run")


def test_config_accepts_numpy_scalars_as_plain_numbers():
    from keras_gmix import train

    config = train.TrainConfig(
        rho=np.float32(0.5), epochs=np.int64(3), step_milestones=[np.float32(0.5)]
    )
    assert (config.rho, config.epochs, config.step_milestones) == (0.5, 3, (0.5,))
    assert type(config.rho) is float and type(config.epochs) is int
    json.dumps(config.to_dict())  # config.json stays writable


def test_a_tilde_in_a_path_setting_is_the_home_folder(tmp_path, monkeypatch):
    """As the shell would expand it: it does not in a config file, nor in
    `--output=~/x`, where a folder named "~" was made in the working one."""
    monkeypatch.setenv("HOME", str(tmp_path))
    config = config_lib.TrainConfig(
        output="~/runs/a", dataset="~/data.npz", data_dir="~/tfds", method="erm"
    )
    assert config.output == str(tmp_path / "runs" / "a")
    assert config.dataset == str(tmp_path / "data.npz")
    assert config.data_dir == str(tmp_path / "tfds")
    assert config_lib.TrainConfig(dataset="cifar10").dataset == "cifar10"  # names stay names
    assert set(config_lib.PATH_FIELDS) <= {f.name for f in config_lib.dataclasses.fields(config)}


def test_run_defining_settings_are_every_field_but_the_resumable_ones():
    """A field added to TrainConfig defines the run unless it is listed as resumable."""
    import dataclasses

    from keras_gmix import train

    fields = [f.name for f in dataclasses.fields(train.TrainConfig)]
    assert set(config_lib.RESUMABLE_FIELDS) <= set(fields)
    # config.json holds the resolved augmentation, backend and XLA choice.
    asked = config_lib.resolved(train.TrainConfig())
    for name in fields:
        saved = dict(asked.to_dict(), **{name: "another value"})
        if name == "epochs":
            continue  # compared by size: the test above
        expected = [] if name in config_lib.RESUMABLE_FIELDS else [name]
        assert [d.split(":")[0] for d in config_lib.resume_differences(saved, asked)] == expected, (
            name
        )
    # A config.json written before a field existed holds its default.
    saved = asked.to_dict()
    del saved["rho"]
    assert config_lib.resume_differences(saved, asked) == []


def test_a_config_json_without_backend_was_a_tensorflow_run():
    """`backend` became a setting when the applications ran on JAX; a
    config.json from before holds no such key and was trained on TensorFlow
    (tests/test_jax_train.py: such a run is refused on JAX)."""
    from keras_gmix import train

    asked = train.TrainConfig(augment="none")
    saved = config_lib.resolved(asked).to_dict()
    del saved["backend"]
    assert config_lib.resume_differences(saved, asked) == []
    saved["backend"] = "jax"
    assert config_lib.resume_differences(saved, asked) == ["backend: 'jax' -> 'tensorflow'"]


def test_xla_is_on_for_jax_and_off_for_tensorflow_unless_asked():
    """JAX's `fit` without jit dispatches every op from Python (the default
    job 5x slower); TensorFlow's graph mode needs no XLA. An explicit
    choice wins, and config.json saves the resolved one, so a resumed run
    keeps it."""
    from keras_gmix import train

    assert config_lib.resolve_jit(train.TrainConfig(), "jax") is True
    assert config_lib.resolve_jit(train.TrainConfig(), "tensorflow") is False
    for asked in (True, False):
        for backend in config_lib.BACKENDS:
            assert config_lib.resolve_jit(train.TrainConfig(jit=asked), backend) is asked
    running = config_lib.check_backend("auto")
    saved = config_lib.resolved(train.TrainConfig()).to_dict()
    assert saved["jit"] is (running == "jax")
    assert config_lib.resume_differences(saved, train.TrainConfig()) == []
    flipped = dict(saved, jit=not saved["jit"])
    assert config_lib.resume_differences(flipped, train.TrainConfig()) == [
        f"jit: {flipped['jit']!r} -> {saved['jit']!r}"
    ]
    # A config.json without the key was trained without XLA (the old default).
    del saved["jit"]
    assert config_lib.resume_differences(saved, train.TrainConfig(jit=False)) == []


def test_a_backend_keras_does_not_run_on_is_refused_saying_how_to_choose_it():
    running = config_lib.check_backend("auto")
    assert running in config_lib.BACKENDS
    assert config_lib.check_backend(running) == running
    other = next(name for name in config_lib.BACKENDS if name != running)
    with pytest.raises(ValueError, match=f"`backend` is '{other}', but Keras runs on") as info:
        config_lib.check_backend(other)
    assert f"--backend {other}" in str(info.value)
    assert f"KERAS_BACKEND={other}" in str(info.value)
