"""A confusion matrix as a PNG, drawn with Pillow (no plotting library needed).

Rows are the true labels, columns the predicted ones; a cell's colour is the share of its
row (the recall of that true label), its number the count, so a good model shows a dark
diagonal whatever the label frequencies.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CELL = 72
PAD = 16
FONT_SIZE = 15
LOW = (247, 251, 255)  # an empty cell
HIGH = (8, 48, 107)  # a cell holding its whole row


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _colour(share: float) -> tuple[int, int, int]:
    return (
        round(LOW[0] + (HIGH[0] - LOW[0]) * share),
        round(LOW[1] + (HIGH[1] - LOW[1]) * share),
        round(LOW[2] + (HIGH[2] - LOW[2]) * share),
    )


def render_confusion(
    labels: Sequence[str], matrix: Sequence[Sequence[int]], title: str
) -> Image.Image:
    """The confusion matrix as an RGB image."""
    font = _font(FONT_SIZE)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def width(text: str) -> int:
        left, _, right, _ = probe.textbbox((0, 0), text, font=font)
        return int(right - left)

    shown = [label if len(label) <= 24 else label[:23] + "…" for label in labels]
    left = PAD * 2 + FONT_SIZE + max(width(label) for label in shown)
    top = PAD * 3 + FONT_SIZE * 3 + max(width(label) for label in shown)
    size = len(labels) * CELL
    full_width = max(left + size + PAD, PAD * 2 + width(title))
    image = Image.new("RGB", (full_width, top + size + PAD), "white")
    draw = ImageDraw.Draw(image)
    draw.text((PAD, PAD), title, fill="black", font=font)
    draw.text((left, PAD * 2 + FONT_SIZE), "predicted label", fill="black", font=font)
    # Column labels written vertically: render each on its own strip and rotate it.
    for j, label in enumerate(shown):
        strip = Image.new("RGB", (width(label) + 4, FONT_SIZE + 6), "white")
        ImageDraw.Draw(strip).text((2, 0), label, fill="black", font=font)
        rotated = strip.rotate(90, expand=True)
        x = left + j * CELL + (CELL - rotated.width) // 2
        image.paste(rotated, (x, top - PAD // 2 - rotated.height))
    side = Image.new("RGB", (width("true label") + 4, FONT_SIZE + 6), "white")
    ImageDraw.Draw(side).text((2, 0), "true label", fill="black", font=font)
    side = side.rotate(90, expand=True)
    image.paste(side, (PAD // 2, top + max(0, (size - side.height) // 2)))
    for i, label in enumerate(shown):
        y = top + i * CELL
        draw.text(
            (left - PAD // 2 - width(label), y + (CELL - FONT_SIZE) // 2),
            label,
            fill="black",
            font=font,
        )
        row_total = sum(matrix[i]) or 1
        for j, count in enumerate(matrix[i]):
            share = count / row_total
            x = left + j * CELL
            draw.rectangle([x, y, x + CELL - 1, y + CELL - 1], fill=_colour(share), outline="white")
            text = str(count)
            colour = "white" if share > 0.5 else "black"
            draw.text(
                (x + (CELL - width(text)) // 2, y + (CELL - FONT_SIZE) // 2),
                text,
                fill=colour,
                font=font,
            )
    return image


def write_confusion_png(
    path: Path, labels: Sequence[str], matrix: Sequence[Sequence[int]], title: str
) -> None:
    """Write the confusion matrix of ``labels`` to ``path`` as a PNG."""
    render_confusion(labels, matrix, title).save(path, format="PNG")
