import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A gmix run of 2 epochs stopped after its first: config.json, history.csv, backup/."""
    from keras_gmix import train
    from tests.helpers.common import TINY_RUN, Kill

    output = str(tmp_path_factory.mktemp("interrupted") / "run")
    with pytest.raises(KeyboardInterrupt):
        train.run(train.TrainConfig(output=output, **TINY_RUN), callbacks=[Kill(after=0)])
    return output


@pytest.fixture
def run_copy(interrupted_run, tmp_path):
    from tests.helpers.common import copy_run

    return copy_run(interrupted_run, tmp_path)
