import os
import shutil

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def copy_run(folder, tmp_path):
    """A copy of the run folder `folder` in `tmp_path` (a test may damage it)."""
    output = str(tmp_path / "run")
    shutil.copytree(folder, output)
    return output
