"""Figures of loss landscapes (`keras_gmix.flatness.loss_landscape`) as PNG files.

The measures stay in `keras_gmix.flatness`; this module draws their
landscapes in the package's shared look (`keras_gmix.plotting`).
matplotlib is imported when a figure is drawn, never by `import keras_gmix`.
"""

from keras_gmix import plotting
from keras_gmix.flatness import LandscapeResult


def plot_landscape_1d(results, path, title=None):
    """Plots one or several 1-D loss landscapes into a PNG file.

    Args:
        results: a 1-D `LandscapeResult`, or a dict of name to 1-D
            `LandscapeResult`, drawn as overlaid curves with a legend; a
            name that is a method (or a schedule such as `"gmix-k5"`) is
            drawn in that method's colour (`keras_gmix.plotting`), a
            schedule dashed.
        path: the PNG file to write.
        title: the figure title. Defaults to `None`, no title.

    Returns:
        `path`.

    Example:

    >>> flat = loss_landscape(model, (x, y), "mse")  # doctest: +SKIP
    >>> plot_landscape_1d({"sam": flat, "erm": sharp}, "landscape.png")  # doctest: +SKIP
    """
    named = results if isinstance(results, dict) else {None: results}
    if not named:
        raise ValueError("`results` is empty.")
    styles = plotting.line_styles(named)  # a method in its colour of every figure
    figure, [[axes]] = plotting.new_figure()
    for name, result in named.items():
        if result.betas is not None:
            raise ValueError(
                f"plot_landscape_1d needs 1-D landscapes; {name or 'result'} is 2-D "
                "(use plot_landscape_2d)."
            )
        axes.plot(result.alphas, result.losses, label=name, **styles[name])
    axes.set_xlabel("alpha")
    axes.set_ylabel("loss")
    if title:
        axes.set_title(title)
    if not isinstance(results, LandscapeResult):
        plotting.legend(axes)
    return plotting.save(figure, path)


def plot_landscape_2d(result, path, levels=30, title=None):
    """Plots a 2-D loss landscape as a contour map into a PNG file.

    Args:
        result: a 2-D `LandscapeResult`.
        path: the PNG file to write.
        levels: number of contour levels. Defaults to `30`.
        title: the figure title. Defaults to `None`, no title.

    Returns:
        `path`.

    Example:

    >>> plane = loss_landscape(model, (x, y), "mse", directions=2)  # doctest: +SKIP
    >>> plot_landscape_2d(plane, "plane.png")  # doctest: +SKIP
    """
    if result.betas is None:
        raise ValueError("plot_landscape_2d needs a 2-D landscape (directions=2).")
    figure, [[axes]] = plotting.new_figure(grid=False)  # the contours are the grid
    # losses[i, j] sits at (alphas[i], betas[j]): contour wants [row=y, col=x].
    contour = axes.contour(result.alphas, result.betas, result.losses.T, levels=levels)
    axes.clabel(contour, inline=True, fontsize=plotting.NOTE_SIZE)
    axes.plot([0.0], [0.0], "+", color=plotting.NEUTRAL_COLOR)
    axes.set_xlabel("alpha")
    axes.set_ylabel("beta")
    if title:
        axes.set_title(title)
    return plotting.save(figure, path)
