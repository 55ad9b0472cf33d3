"""keras_gmix/flatness_plots.py: landscape figures, read back from the written PNG files."""

import numpy as np
import pytest

from keras_gmix import flatness, flatness_plots, plotting
from tests.png_checks import has_color, png_size

ALPHAS = np.linspace(-1.0, 1.0, 7)
ONE_PANEL = (plotting.PANEL[0] * plotting.DPI, plotting.PANEL[1] * plotting.DPI)


def line(scale):
    return flatness.LandscapeResult(ALPHAS, None, scale * ALPHAS**2, [], "filter")


def plane():
    losses = ALPHAS[:, None] ** 2 + 2.0 * ALPHAS[None, :] ** 2
    return flatness.LandscapeResult(ALPHAS, ALPHAS, losses, [], "filter")


def test_the_1d_and_2d_figures_are_one_panel(tmp_path):
    for path in (
        flatness_plots.plot_landscape_1d(line(1.0), str(tmp_path / "one.png")),
        flatness_plots.plot_landscape_1d(
            {"seed 0": line(1.0), "seed 1": line(2.0)}, str(tmp_path / "two.png"), title="two"
        ),
        flatness_plots.plot_landscape_2d(plane(), str(tmp_path / "plane.png"), title="plane"),
    ):
        assert png_size(path) == ONE_PANEL


def test_curves_named_after_methods_take_their_colours(tmp_path):
    path = flatness_plots.plot_landscape_1d(
        {"dgmix": line(1.0), "erm": line(3.0)}, str(tmp_path / "methods.png")
    )
    assert has_color(path, plotting.method_color("dgmix"))
    assert not has_color(path, plotting.method_color("sam"))


def test_a_landscape_of_the_wrong_dimension_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs 1-D landscapes; result is 2-D"):
        flatness_plots.plot_landscape_1d(plane(), str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match="needs a 2-D landscape"):
        flatness_plots.plot_landscape_2d(line(1.0), str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match="empty"):
        flatness_plots.plot_landscape_1d({}, str(tmp_path / "bad.png"))
