"""Everything Keras' fit takes, and the user's own images (issue 20).

Each input form trains through `GMixModel.fit` with a mixing and a
partitioned method; where the numbers matter they are checked against
`apply_mix` by hand. The folder data set trains through `gmix-train`.
"""

import json
import os

import numpy as np
import pytest

from keras_gmix import cli
from tests.folder_data import write_digit_folder


# -- gmix-train on a folder of class subfolders ------------------------------


def test_gmix_train_on_a_folder_of_png_images(tmp_path, capsys):
    write_digit_folder(str(tmp_path / "images"), per_class=30)
    output = str(tmp_path / "run")
    code = cli.train_main([
        "--dataset", str(tmp_path / "images"), "--image-size", "8", "--epochs", "6",
        "--batch-size", "16", "--method", "dgmix", "--output", output, "--verbose", "0",
    ])
    assert code == 0
    results = json.load(open(os.path.join(output, "results.json")))
    assert results["class_names"] == ["digit_0", "digit_1", "digit_2"]
    assert results["train_size"] == 72 and results["test_size"] == 18
    # Three well-separated digits: well above chance (1/3) after six short epochs.
    assert results["test_accuracy"] > 0.8
    config = json.load(open(os.path.join(output, "config.json")))
    assert config["dataset"] == str(tmp_path / "images") and config["test_dataset"] is None


def test_gmix_train_with_a_test_folder_and_a_bad_folder(tmp_path, capsys):
    write_digit_folder(str(tmp_path / "train"), per_class=10)
    write_digit_folder(str(tmp_path / "test"), per_class=5, offset=40)
    output = str(tmp_path / "run")
    code = cli.train_main([
        "--dataset", str(tmp_path / "train"), "--test-dataset", str(tmp_path / "test"),
        "--epochs", "1", "--batch-size", "16", "--method", "bgmix", "--output", output, "--verbose", "0",
    ])
    assert code == 0
    results = json.load(open(os.path.join(output, "results.json")))
    assert results["train_size"] == 30 and results["test_size"] == 15
    # A folder that is not a data set: one sentence, exit code 2.
    os.makedirs(tmp_path / "empty" / "a")
    with pytest.raises(SystemExit) as exit_info:
        cli.train_main(["--dataset", str(tmp_path / "empty"), "--output", str(tmp_path / "run2")])
    assert exit_info.value.code == 2
    assert "one subfolder per class" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.train_main(["--dataset", "digits", "--test-dataset", str(tmp_path / "test")])
    assert "needs a folder" in capsys.readouterr().err
