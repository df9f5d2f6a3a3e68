"""Line plots drawn with PIL (no plotting library in the requirements): training curves, FID vs NFE, benchmarks."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

# distinct line colours, enough for every sampler of the registry and its option variants in one plot (the shipped
# model's sweep has 17); grey last
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (188, 189, 34), (23, 190, 207), (0, 0, 128), (128, 0, 0), (0, 100, 0), (255, 215, 0),
           (0, 128, 128), (0, 0, 0), (255, 0, 255), (0, 255, 127), (70, 130, 180), (210, 105, 30), (128, 128, 0),
           (255, 99, 71), (75, 0, 130), (0, 191, 255), (127, 127, 127)]


def axis_ticks(lo: float, hi: float, log: bool) -> list[float]:
    """Round tick values inside [lo, hi] (data units), so axes read 10, 20, 50 instead of 8.333, 22.52: on a log
    axis the 1-2-5 values of each decade (every mantissa 1-9 if that gives fewer than three), on a linear one
    multiples of a 1, 2, 2.5 or 5 step that give about five ticks."""
    if log:
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        for mantissas in ((1, 2, 5), range(1, 10)):
            ticks = [m * 10.0**k for k in decades for m in mantissas if lo <= m * 10.0**k <= hi]
            if len(ticks) >= 3:
                break
        return ticks
    raw = (hi - lo) / 5 or 1.0
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def tick_label(value: float) -> str:
    """Whole numbers in full with thousands separators (10,000, not 1e+04); others to four significant digits."""
    return f"{round(value):,}" if value == round(value) and abs(value) < 1e7 else f"{value:.4g}"


def draw_panel(draw, font, box, lines: dict, markers: dict, max_x: float, log_y: bool, y_label: str,
               zero_line: bool = False, min_x: float = 0.0, log_x: bool = False):
    """One plot panel in ``box`` = (left, top, right, bottom): lines {color: (xs, ys, width)}, markers
    {color: [(x, y)]}.

    x runs from ``min_x`` to ``max_x`` (log scale with ``log_x``, then ``min_x`` > 0); y fits the data (log with
    ``log_y``)."""
    left, top, right, bottom = box
    transform = math.log10 if log_y else (lambda v: v)
    x_transform = math.log10 if log_x else (lambda v: v)
    x_lo, x_hi = x_transform(min_x), x_transform(max_x)
    values = [transform(v) for xs, ys, _ in lines.values() for v in ys]
    values += [transform(v) for points in markers.values() for _, v in points]
    if zero_line:
        values.append(0.0)
    y_lo, y_hi = min(values), max(values)
    pad = 0.05 * ((y_hi - y_lo) or 1.0)
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def xy(x, value):
        return (left + (right - left) * (x_transform(x) - x_lo) / ((x_hi - x_lo) or 1.0),
                top + (bottom - top) * (1 - (transform(value) - y_lo) / (y_hi - y_lo)))

    draw.rectangle([left, top, right, bottom], outline="black")
    for value in axis_ticks(10**y_lo if log_y else y_lo, 10**y_hi if log_y else y_hi, log_y):
        y = xy(min_x, value)[1]
        draw.line([left - 5, y, right, y], fill=(225, 225, 225))
        draw.text((left - 70, y - 6), tick_label(value), fill="black", font=font)
    for value in axis_ticks(min_x, max_x, log_x):
        x = xy(value, 10**y_lo if log_y else y_lo)[0]
        draw.line([x, bottom, x, bottom + 5], fill="black")
        draw.text((x - 10, bottom + 8), tick_label(value), fill="black", font=font)
    draw.text((left, top - 16), y_label, fill="black", font=font)
    if zero_line:
        draw.line([xy(min_x, 0.0), xy(max_x, 0.0)], fill="black")
    for color, (xs, ys, width) in lines.items():
        if len(xs) > 1:
            draw.line([xy(x, y) for x, y in zip(xs, ys)], fill=color, width=width)
    for color, points in markers.items():
        for x, y in points:
            cx, cy = xy(x, y)
            draw.rectangle([cx - 3, cy - 3, cx + 3, cy + 3], outline=color, width=2)


def line_chart(path: str, title: str, x_label: str, panels: list[dict], legend: dict[str, tuple],
               min_x: float, max_x: float, log_x: bool = False, width: int = 900, panel_height: int = 340) -> None:
    """Panels stacked over one shared x axis, saved as PNG. Each panel: dict(lines=..., markers=..., y_label=...,
    log_y=False) as for ``draw_panel``; ``legend`` maps names to colors. The legend gets its own column right of
    the panels, as wide as its longest name, so no name is cut and no curve is hidden under it."""
    font = ImageFont.load_default()
    legend_width = 50 + max((math.ceil(font.getlength(name)) for name in legend), default=0)
    height = 50 + len(panels) * (panel_height + 60) + 20
    image = Image.new("RGB", (width + legend_width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((20, 10), title, fill="black", font=font)
    for index, panel in enumerate(panels):
        top = 60 + index * (panel_height + 60)
        draw_panel(draw, font, (90, top, width - 30, top + panel_height), panel.get("lines", {}),
                   panel.get("markers", {}), max_x, panel.get("log_y", False), panel["y_label"], min_x=min_x,
                   log_x=log_x)
    draw.text((width // 2 - 3 * len(x_label), height - 30), x_label, fill="black", font=font)
    for row, (name, color) in enumerate(legend.items()):
        y = 75 + 16 * row
        draw.line([width - 10, y, width + 20, y], fill=color, width=3)
        draw.text((width + 28, y - 6), name, fill="black", font=font)
    image.save(path)
