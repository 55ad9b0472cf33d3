"""records.py: one process per run folder (the lock), also across real gmix-train processes."""

import json
import os
import signal
import subprocess
import sys

import pytest

import keras_gmix as kg
from tests.helpers.common import (
    HELPERS,
    ROOT,
    gmix_train,
    resume_config,
)

# -- one process per run folder: the lock -----------------------------------------------


HOLDER = (
    "import sys, time\n"
    "from keras_gmix import records\n"
    "with records.hold_run_folder(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(600)\n"
)


def _start_holder(folder):
    """A process that holds `folder` until it is killed; returns once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, folder],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT),
    )
    assert holder.stdout.readline().strip() == "held", (
        "the holder process died before holding the folder"
    )
    return holder


def _kill(process):
    process.kill()  # SIGKILL: no Python cleanup, the kernel alone releases the lock
    process.wait(timeout=60)
    process.stdout.close()


def test_a_run_folder_held_by_another_process_is_refused_naming_it(run_copy, capsys):
    from keras_gmix import cli, records, train

    holder = _start_holder(run_copy)
    try:
        history = open(os.path.join(run_copy, "history.csv")).read()
        with pytest.raises(
            records.RunFolderInUseError,
            match=rf"{run_copy} is in use by process {holder.pid} on host",
        ):
            train.run(resume_config(run_copy))
        # The same through gmix-train: a sentence, exit code 2, nothing written.
        with pytest.raises(SystemExit) as exit_info:
            cli.train_main(["--resume", "--output", run_copy])
        assert exit_info.value.code == 2
        assert f"in use by process {holder.pid}" in capsys.readouterr().err
        assert open(os.path.join(run_copy, "history.csv")).read() == history
    finally:
        _kill(holder)


def test_a_folder_in_place_of_the_lock_file_is_named_with_the_fix(tmp_path):
    os.makedirs(tmp_path / ".lock")
    with pytest.raises(ValueError, match=r"\.lock is a folder, where a run keeps its lock"):
        with kg.records.hold_run_folder(str(tmp_path)):
            pass


def test_a_killed_holder_releases_the_run_folder(tmp_path):
    from keras_gmix import records

    folder = str(tmp_path)
    holder = _start_holder(folder)
    with pytest.raises(records.RunFolderInUseError):
        with records.hold_run_folder(folder):
            pass
    _kill(holder)
    with records.hold_run_folder(folder):
        assert (
            open(os.path.join(folder, records.LOCK_FILE))
            .read()
            .startswith(f"process {os.getpid()} ")
        )


@pytest.mark.slow  # four gmix-train processes
def test_two_resumes_of_one_killed_run_one_is_refused(tmp_path):
    """The issue's case: two --resume of one killed run at once wrote every epoch twice."""
    output = str(tmp_path / "run")
    flags = [
        "--epochs",
        "3",
        "--train-size",
        "64",
        "--batch-size",
        "32",
        "--method",
        "dgmix",
        "--verbose",
        "0",
    ]
    gmix_train(
        [*flags, "--output", output],
        prefix=[os.path.join(HELPERS, "sigkill_mid_epoch.py"), "1", "0"],
        expect=-signal.SIGKILL,
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    first = subprocess.Popen(
        [
            sys.executable,
            os.path.join(HELPERS, "pause_mid_epoch.py"),
            "1",
            "0",
            "--resume",
            "--output",
            output,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        assert first.stdout.readline().strip() == "paused", (
            "the first resume died before it trained"
        )
        second = subprocess.run(
            [sys.executable, "-m", "keras_gmix.cli", "--resume", "--output", output],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
            env=env,
        )
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"{output} is in use by process {first.pid} on host" in second.stderr
    finally:
        _kill(first)
    gmix_train(["--resume", "--output", output], prefix=["-m", "keras_gmix.cli"])
    history = kg.records.read_history(os.path.join(output, "history.csv"))
    assert [row["epoch"] for row in history] == [0, 1, 2]
    results = json.load(open(os.path.join(output, "results.json")))
    assert results["epochs_done"] == 3
    assert results["seconds"] == pytest.approx(sum(row["seconds"] for row in history), abs=0.01)
