"""What a written figure shows, read back from the PNG file: its pixel size
and whether a colour occurs in it (the plotting tests check figures with these)."""

import struct

import numpy as np


def png_size(png):
    """`(width, height)` in pixels of PNG bytes or a PNG file (its IHDR chunk)."""
    if not isinstance(png, bytes):
        with open(png, "rb") as f:
            png = f.read(24)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


def has_color(path, color):
    """Whether some pixel of the PNG file is `color` (a matplotlib colour), up to rounding."""
    from matplotlib import image
    from matplotlib.colors import to_rgb

    pixels = image.imread(path)[..., :3]
    return bool((np.abs(pixels - np.array(to_rgb(color))).max(axis=-1) < 2.5 / 255).any())
