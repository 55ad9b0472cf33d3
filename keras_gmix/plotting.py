"""The one way the package draws figures: Agg canvas, shared look, method colours.

Every figure of the package and its benchmark reports is made by
`new_figure` and written by `save`:

- a `matplotlib.figure.Figure` with its own Agg canvas, never pyplot: no
  global backend switch (`matplotlib.use`), no figure registry that a long
  run fills up, and figures can be drawn from several threads;
- one look: `DPI`, a panel size per subplot, the font sizes below, a light
  grid behind the data, no top and right spines, legends by `legend`;
- one colour per training method (`METHOD_COLORS`), so that a method has
  the same colour in every figure. A schedule variant (`"gmix-k5"`,
  `"dgmix-k5-r0.3"`: the method, then `kK`, `rA` or `pP` parts for
  `perturb_every`, `reuse_scale` or `perturb_probability`) takes its
  method's colour and a marker of its own, drawn open
  (`method_marker`).

matplotlib is imported by the functions that draw, never by
`import keras_gmix`.

Example:

>>> figure, axes = new_figure(1, 2)  # doctest: +SKIP
>>> axes[0, 0].plot(x, y, color=method_color("dgmix-k5"), label="dgmix-k5")  # doctest: +SKIP
>>> legend(axes[0, 0])  # doctest: +SKIP
>>> save(figure, "figure.png")  # doctest: +SKIP
"""

import itertools
import re

DPI = 120
PANEL = (5.0, 4.0)  # inches per subplot, (width, height)
TITLE_SIZE = 10
LABEL_SIZE = 9
TICK_SIZE = 8
LEGEND_SIZE = 8
NOTE_SIZE = 7  # text drawn into the axes: values on bars, point labels, contour labels

# Fixed colours of the six methods of SPEC.md (tests check they cover
# keras_gmix.gradients.METHODS): ERM grey, the two baselines and the
# G-Mix family in matplotlib's tab10 colours.
METHOD_COLORS = {
    "erm": "0.5",
    "mixup": "tab:blue",
    "sam": "tab:orange",
    "gmix": "tab:green",
    "bgmix": "tab:red",
    "dgmix": "tab:purple",
}
# Marker of each schedule of the benchmarks (the name after the method); a
# full method is a filled circle, a schedule not listed here an open circle.
SCHEDULE_MARKERS = {
    "k5": "s",
    "k10": "D",
    "k5-r0.1": "^",
    "k5-r0.3": "v",
    "p0.2": "X",
    "f0.875": "P",
    "f0.875-k5": "*",
}
# Curves whose name is no method (model folders, seeds): the tab10 colours
# no method uses, repeated after the fourth.
OTHER_COLORS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan")
# Lines that are no method's (frontier, a single unnamed curve): black.
NEUTRAL_COLOR = "k"

# The parts of benchmarks/generalization_plan.py's variant names: kK, rA,
# pP, fF (perturb_from) and "lean" (keep_first_pass=False).
_SCHEDULE_PART = re.compile(r"[krpf][0-9.]+|lean")


def split_method(name):
    """`"dgmix-k5-r0.3"` -> `("dgmix", "k5-r0.3")`, `"gmix"` -> `("gmix", "")`.

    Returns `None` when `name` is neither a method nor a method followed by
    schedule parts (`kK`, `rA`, `pP`, `fF`, `lean`), e.g. a model folder
    `"erm-seed0"`.
    """
    method, *parts = str(name).split("-")
    if method not in METHOD_COLORS or not all(_SCHEDULE_PART.fullmatch(p) for p in parts):
        return None
    return method, "-".join(parts)


def _known(name):
    split = split_method(name)
    if split is None:
        raise ValueError(
            f"Unknown method {name!r}: one of {tuple(METHOD_COLORS)}, or a schedule like 'gmix-k5'."
        )
    return split


def method_color(name):
    """The colour of a method, or of a schedule variant: its method's colour."""
    return METHOD_COLORS[_known(name)[0]]


def method_marker(name):
    """`(marker, filled)`: `("o", True)` for a method, a schedule's own marker, open."""
    schedule = _known(name)[1]
    if not schedule:
        return "o", True
    return SCHEDULE_MARKERS.get(schedule, "o"), False


def colors_for(names):
    """`{name: colour}`: a method or schedule its method's colour, `None` (one
    unnamed curve, which could be any method's) `NEUTRAL_COLOR`, other names
    `OTHER_COLORS` in turn."""
    others = itertools.cycle(OTHER_COLORS)
    colors = {}
    for name in names:
        if name is None:
            colors[name] = NEUTRAL_COLOR
        elif split_method(name):
            colors[name] = method_color(name)
        else:
            colors[name] = next(others)
    return colors


def line_styles(names):
    """`{name: Line2D keyword arguments}` for curves of `names`, coloured by `colors_for`.

    Curves are solid, except a schedule variant's: dashed, with its open
    marker, so that it stands apart from its method's curve of the same colour.
    """
    styles = {}
    for name, color in colors_for(names).items():
        styles[name] = dict(color=color, linestyle="-")
        split = None if name is None else split_method(name)
        if split and split[1]:
            marker, _ = method_marker(name)
            styles[name].update(linestyle="--", marker=marker, markerfacecolor="white")
    return styles


def new_figure(rows=1, cols=1, panel=PANEL, grid=True):
    """A Figure on its own Agg canvas with a `rows` x `cols` array of styled axes.

    Args:
        rows: number of subplot rows. Defaults to `1`.
        cols: number of subplot columns. Defaults to `1`.
        panel: `(width, height)` of one subplot in inches; the figure is
            `cols` x `rows` panels. Defaults to `PANEL`.
        grid: draw the light grid behind the data (off for contour maps).
            Defaults to `True`.

    Returns:
        `(figure, axes)`, `axes` a 2-D NumPy array of `Axes` (always 2-D).
    """
    # Not pyplot: no global backend switch and no figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(panel[0] * cols, panel[1] * rows), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.spines["top"].set_visible(False)
        ax.spines["right"].set_visible(False)
        if grid:
            ax.set_axisbelow(True)
            ax.grid(alpha=0.3)
    return figure, axes


def legend(ax, **kwargs):
    """The legend of `ax` in the shared place and size; `kwargs` go to `Axes.legend`."""
    return ax.legend(loc="best", fontsize=LEGEND_SIZE, title_fontsize=LEGEND_SIZE, **kwargs)


def save(figure, path):
    """Gives the figure's axes the shared type sizes, lays it out and writes a PNG.

    The sizes are set here rather than when the axes are made because
    `Axes.set_title` resets its font size to matplotlib's default.

    Args:
        figure: a Figure from `new_figure`.
        path: a file name or a binary file object.

    Returns:
        `path`.
    """
    for ax in figure.axes:
        ax.title.set_fontsize(TITLE_SIZE)
        ax.xaxis.label.set_fontsize(LABEL_SIZE)
        ax.yaxis.label.set_fontsize(LABEL_SIZE)
        ax.tick_params(which="both", labelsize=TICK_SIZE)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=DPI)
    return path
