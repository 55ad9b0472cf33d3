"""keras_gmix/plotting.py: one colour per method in every figure, one figure size.

The checks read the written PNG files (tests/png_checks.py): they hold for
what a reader sees.
"""

import math
import os
import sys

import numpy as np
import pytest

from keras_gmix import compare, flatness, flatness_plots, plotting
from keras_gmix.gradients import METHODS
from tests.png_checks import has_color, png_size

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
)
import generalization_plan  # noqa: E402


def landscape(scale):
    alphas = np.linspace(-1.0, 1.0, 9)
    return flatness.LandscapeResult(alphas, None, scale * alphas**2, [], "filter")


def test_every_method_has_one_colour_of_its_own():
    assert set(plotting.METHOD_COLORS) == set(METHODS)
    colors = list(plotting.METHOD_COLORS.values())
    assert len(set(colors)) == len(colors)
    # Curves of other names never look like a method.
    assert not set(plotting.OTHER_COLORS) & set(colors)
    assert plotting.NEUTRAL_COLOR not in colors


def test_schedule_variants_take_their_methods_colour_and_an_open_marker_of_their_own():
    markers = set()
    for name in generalization_plan.SCHEDULE_VARIANTS:
        method, _ = generalization_plan.parse_variant(name)
        assert plotting.split_method(name)[0] == method
        assert plotting.method_color(name) == plotting.METHOD_COLORS[method]
        marker, filled = plotting.method_marker(name)
        assert not filled and marker != "o", name
        markers.add((name.split("-", 1)[1], marker))
    assert len({m for _, m in markers}) == len(markers)  # one marker per schedule
    assert plotting.method_marker("gmix") == ("o", True)
    # A model folder named after its method and seed is not a schedule.
    assert plotting.split_method("erm-seed0") is None
    assert plotting.colors_for(["alpha", "sam", "beta", None]) == {
        "alpha": plotting.OTHER_COLORS[0],
        "sam": "tab:orange",
        "beta": plotting.OTHER_COLORS[1],
        None: plotting.NEUTRAL_COLOR,
    }
    # A schedule's curve: its method's colour, dashed with its open marker.
    styles = plotting.line_styles(["gmix", "gmix-k10"])
    assert styles["gmix"] == dict(color="tab:green", linestyle="-")
    assert styles["gmix-k10"] == dict(
        color="tab:green", linestyle="--", marker="D", markerfacecolor="white"
    )
    with pytest.raises(ValueError, match="Unknown method 'adam'"):
        plotting.method_color("adam")


def test_a_method_has_the_same_colour_in_the_bar_chart_and_the_landscape(tmp_path):
    rows = [
        dict(label=m, method=m, accuracy_mean=a, accuracy_std=math.nan)
        for m, a in (("erm", 0.8), ("sam", 0.9))
    ]
    bars = compare.plot_results(rows, str(tmp_path / "bars.png"))
    curves = flatness_plots.plot_landscape_1d(
        {"sam": landscape(1.0), "erm": landscape(2.0)}, str(tmp_path / "curves.png")
    )
    for path in (bars, curves):
        for method in ("erm", "sam"):
            assert has_color(path, plotting.method_color(method)), (path, method)
        # No mixup here: matplotlib's first default colour (tab:blue) is mixup's.
        assert not has_color(path, plotting.method_color("mixup")), path
    # One unnamed landscape could be any method's: drawn in none of their colours.
    single = flatness_plots.plot_landscape_1d(landscape(1.0), str(tmp_path / "single.png"))
    assert has_color(single, plotting.NEUTRAL_COLOR)
    # (erm's grey is left out: the antialiased edges of black lines pass through it.)
    colored = [c for m, c in plotting.METHOD_COLORS.items() if m != "erm"]
    assert not any(has_color(single, c) for c in colored)


def test_a_figure_is_its_panels_at_the_shared_dpi(tmp_path):
    figure, axes = plotting.new_figure(2, 3, panel=(2.0, 1.5))
    assert axes.shape == (2, 3)
    assert png_size(plotting.save(figure, str(tmp_path / "grid.png"))) == (
        3 * 2.0 * plotting.DPI,
        2 * 1.5 * plotting.DPI,
    )
    figure, [[ax]] = plotting.new_figure()
    ax.set_title("t")
    plotting.save(figure, str(tmp_path / "one.png"))
    assert ax.title.get_fontsize() == plotting.TITLE_SIZE  # not set_title's default
