"""pipeline.evaluation.plots: the legend sits in its own column, sized to its longest name; axes get round ticks."""

import numpy as np
import pytest
from PIL import Image

from pipeline.evaluation.plots import axis_ticks, line_chart, tick_label

BLUE, RED = (31, 119, 180), (214, 39, 40)


def test_legend_column_fits_long_names_and_leaves_the_panels_alone(tmp_path):
    long_name = "ode-rk45+mc,atol=0.001,rtol=0.001"
    lines = {BLUE: ([1, 100], [3.0, 1.0], 2), RED: ([1, 1000], [2.0, 0.5], 2)}
    width = 600
    short, long = tmp_path / "short.png", tmp_path / "long.png"
    line_chart(str(short), "t", "NFE", [{"lines": {RED: lines[RED]}, "y_label": "FID"}], {"ddpm": RED},
               min_x=1, max_x=1000, log_x=True, width=width)
    line_chart(str(long), "t", "NFE", [{"lines": lines, "y_label": "FID"}], {long_name: BLUE, "ddpm": RED},
               min_x=1, max_x=1000, log_x=True, width=width)
    short_image, long_image = np.asarray(Image.open(short)), np.asarray(Image.open(long))
    # the longer name widens the image instead of being cut at its edge
    assert long_image.shape[1] > short_image.shape[1] > width
    assert (long_image[:, -1] == 255).all()
    # the first swatch (30 px long) lies in the legend column, right of the panels (which end at width - 30)
    blue = np.nonzero((long_image[75] == BLUE).all(axis=-1))[0]
    assert (blue > width - 30).sum() == 31 and blue.max() == width + 20


def test_axis_ticks_are_round_values_inside_the_range():
    assert axis_ticks(8.33, 1200, log=True) == [10, 20, 50, 100, 200, 500, 1000]
    assert axis_ticks(0.015, 0.05, log=True) == pytest.approx([0.02, 0.03, 0.04, 0.05])  # too few 1-2-5 values
    assert axis_ticks(0.0093, 0.163, log=False) == pytest.approx([0.05, 0.1, 0.15])
    assert axis_ticks(-1.0, 1.0, log=False) == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0])
    assert axis_ticks(0, 12200, log=False) == [0, 2500, 5000, 7500, 10000]


def test_tick_labels_write_whole_numbers_in_full():
    assert [tick_label(v) for v in (10000.0, 1000, 2500, 0.05, 5e-05, 0.1 + 0.2)] == [
        "10,000", "1,000", "2,500", "0.05", "5e-05", "0.3"]
