"""flatness_report.py: a damaged file read back names itself and the fix."""

import pytest

from tests.helpers.common import (
    GUARDED,
    compiled,
    small_model,
    truncate,
)


def test_a_damaged_model_keras_names_itself_in_gmix_flatness(tmp_path):
    from keras_gmix import flatness_report

    path = str(tmp_path / "model.keras")
    compiled("erm", small_model(), **GUARDED).save(path)
    truncate(path)
    with pytest.raises(
        ValueError, match=rf"{path} is unreadable as a Keras model.*restore the file"
    ):
        flatness_report.load_model(path)


def test_a_damaged_config_json_beside_a_model_names_itself(tmp_path):
    from keras_gmix import flatness_report

    (tmp_path / "config.json").write_text('{"dataset": "dig')
    with pytest.raises(ValueError, match=r"config.json is unreadable \(truncated\?"):
        flatness_report.run_files(str(tmp_path / "model.keras"))
