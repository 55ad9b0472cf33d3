"""gmix-compare: runs, read-back, collection, the table's numbers and the chart."""

import json
import math
import os

import numpy as np
import pytest

from keras_gmix import cli, compare, plotting
from tests.png_checks import has_color, png_size

TINY = ["--epochs", "1", "--batch-size", "16", "--train-size", "32", "--verbose", "0"]


def fake(method, seed, accuracy, seconds=10.0, **extra):
    return {
        "method": method,
        "seed": seed,
        "test_accuracy": accuracy,
        "seconds": seconds,
        "dataset": "digits",
        "model": "small_cnn",
        "train_size": 100,
        "epochs": 3,
        "output": f"/r/{method}-{seed}",
        **extra,
    }


def test_summary_numbers_and_row_order():
    rows = compare.summarize(
        [
            fake("dgmix", 0, 0.9),
            fake("erm", 0, 0.8, 4.0),
            fake("dgmix", 1, 0.7),
            fake("erm", 1, 0.6, 6.0),
            fake("dgmix", 2, 0.8),
        ]
    )
    assert [row["label"] for row in rows] == ["erm", "dgmix"]  # the METHODS order
    erm, dgmix = rows
    assert erm["runs"] == 2 and erm["accuracy_mean"] == pytest.approx(0.7)
    assert erm["accuracy_std"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
    assert erm["seconds_mean"] == pytest.approx(5.0)
    assert dgmix["accuracy_std"] == pytest.approx(0.1)  # sample std of 0.9, 0.7, 0.8
    single = compare.summarize([fake("sam", 0, 0.5)])[0]
    assert math.isnan(single["accuracy_std"])
    assert "| sam | 1 | 0.5000 | – | 10.0 |" in compare.format_table([single])


def test_rows_are_split_by_what_differs_between_runs():
    rows = compare.summarize(
        [fake("erm", 0, 0.5, train_size=10), fake("erm", 0, 0.7, train_size=20)]
    )
    assert [row["label"] for row in rows] == ["erm (train_size=10)", "erm (train_size=20)"]


def test_runs_of_other_settings_are_not_averaged_as_seeds():
    """Two dgmix runs of other learning rates and rho are two rows, not a
    mean over "seeds"; seeds of the same settings are one row, and a setting
    that differs only between methods names no row."""
    lr = dict(learning_rate=0.5, rho=0.2)
    rows = compare.summarize(
        [
            fake("dgmix", 0, 0.9, settings=dict(learning_rate=0.1, rho=0.05)),
            fake("dgmix", 1, 0.7, settings=dict(learning_rate=0.1, rho=0.05)),
            fake("dgmix", 0, 0.4, settings=lr),
            fake("erm", 0, 0.6, settings=dict(learning_rate=0.1, rho=0.0)),
        ]
    )
    assert [(row["label"], row["runs"]) for row in rows] == [
        ("erm", 1),
        ("dgmix (learning_rate=0.1, rho=0.05)", 2),
        ("dgmix (learning_rate=0.5, rho=0.2)", 1),
    ]
    assert rows[1]["accuracy_mean"] == pytest.approx(0.8)


def test_collect_splits_runs_by_their_config_json(tmp_path, capsys):
    """Through gmix-compare --collect: two finished runs of other learning
    rates (and one seed) are two rows, read from their config.json."""
    base = ["--method", "erm", "--dataset", "digits", *TINY]
    for name, rate in (("a", "0.05"), ("b", "0.2")):
        cli.train_main([*base, "--learning-rate", rate, "--output", str(tmp_path / name)])
    cli.compare_main(
        ["--collect", str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(tmp_path / "c")]
    )
    table = open(tmp_path / "c" / "results.md").read()
    assert "| erm (learning_rate=0.05) | 1 |" in table
    assert "| erm (learning_rate=0.2) | 1 |" in table


def test_gmix_compare_runs_reads_back_and_collects(tmp_path, capsys):
    output = str(tmp_path / "cmp")
    assert (
        cli.compare_main(TINY + ["--methods", "erm", "mixup", "--seeds", "0", "--output", output])
        == 0
    )
    assert sorted(os.listdir(output)) == [
        ".lock",
        "compare.json",
        "erm-seed0",
        "mixup-seed0",
        "results.md",
        "results.png",
    ]
    text = open(os.path.join(output, "results.md")).read()
    results = {
        m: json.load(open(os.path.join(output, f"{m}-seed0", "results.json")))
        for m in ("erm", "mixup")
    }
    for method, r in results.items():
        assert f"| {method} | 1 | {r['test_accuracy']:.4f} | – | {r['seconds']:.1f} |" in text
    # Two bars: the narrowest chart, 4 x 4 inches; each bar in its method's colour.
    png = os.path.join(output, "results.png")
    assert png_size(png) == (4 * plotting.DPI, 4 * plotting.DPI)
    assert has_color(png, plotting.method_color("erm")) and has_color(
        png, plotting.method_color("mixup")
    )
    assert "| erm |" in capsys.readouterr().out

    # Started again, the finished runs are read back, not trained again.
    model = os.path.join(output, "erm-seed0", "model.keras")
    before = os.path.getmtime(model)
    cli.compare_main(TINY + ["--methods", "erm", "--seeds", "0", "--output", output])
    assert os.path.getmtime(model) == before
    # ... but not when the settings differ.
    with pytest.raises(SystemExit):
        cli.compare_main(TINY + ["--methods", "erm", "--rho", "0.3", "--output", output])
    assert "other settings" in capsys.readouterr().err

    # --collect reads results.json files below the folder: the same table.
    os.remove(os.path.join(output, "results.md"))
    assert cli.compare_main(["--collect", output]) == 0
    collected = open(os.path.join(output, "results.md")).read()
    for method, r in results.items():
        assert f"| {method} | 1 | {r['test_accuracy']:.4f} |" in collected


def test_collect_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.compare_main(["--collect", str(tmp_path)])
    assert "No results.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.compare_main(["--collect", str(tmp_path), str(tmp_path), "--epochs", "3"])
    assert "trains nothing" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs --output"):
        compare.collect_and_report([str(tmp_path), str(tmp_path)])
    with pytest.raises(ValueError, match="`methods` must be taken from"):
        compare.compare(compare_config(), methods=["adam"])


def compare_config():
    from keras_gmix import train

    return train.TrainConfig(epochs=1)


def test_a_second_compare_into_a_running_ones_output_is_refused_before_writing(tmp_path, capsys):
    """A real first gmix-compare is training; a second one into the same
    --output, with other methods, is refused and leaves the first one's
    compare.json as it was."""
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    output = str(tmp_path / "cmp")
    compare_json = os.path.join(output, "compare.json")
    first = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from keras_gmix import cli; sys.exit(cli.compare_main(sys.argv[1:]))",
            *["--methods", "erm", "--epochs", "200", "--train-size", "32", "--verbose", "0"],
            *["--output", output],
        ],
        cwd=root,
        env=dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    try:
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(output, "erm-seed0", "config.json")):
            assert first.poll() is None and time.time() < deadline, (
                "the first compare did not start"
            )
            time.sleep(0.2)
        before = open(compare_json).read()
        with pytest.raises(SystemExit) as exit_info:
            cli.compare_main(
                TINY + ["--methods", "mixup", "sam", "--train-size", "48", "--output", output]
            )
        assert exit_info.value.code == 2
        assert f"{output} is in use by process {first.pid}" in capsys.readouterr().err
        assert open(compare_json).read() == before
        assert json.loads(before)["methods"] == ["erm"]
        assert not os.path.exists(os.path.join(output, "mixup-seed0"))
    finally:
        first.kill()
        first.wait(timeout=60)


def test_compare_checks_every_run_folder_before_writing(tmp_path, capsys):
    """A run folder of other settings, found at the second method, refuses the
    comparison before compare.json or any run is written."""
    output = tmp_path / "cmp"
    (output / "mixup-seed0" / "backup").mkdir(parents=True)
    (output / "mixup-seed0" / "config.json").write_text(
        json.dumps(dict(compare_config().to_dict(), method="mixup", rho=0.3, augment="none"))
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.compare_main(TINY + ["--methods", "erm", "mixup", "--output", str(output)])
    assert exit_info.value.code == 2
    assert "mixup-seed0 holds a run with other settings" in capsys.readouterr().err
    assert sorted(os.listdir(output)) == [".lock", "mixup-seed0"]


def test_a_damaged_results_json_names_itself_in_gmix_compare(tmp_path):
    from keras_gmix import compare

    run = tmp_path / "erm-seed0"
    run.mkdir()
    (run / "results.json").write_text('{"method": "erm", "test_acc')
    with pytest.raises(
        ValueError, match=rf"{run / 'results.json'} is unreadable.*out of --collect"
    ):
        compare.find_results([str(tmp_path)])
