"""Pictures a person looks at: triptychs (image / ground truth / prediction), overlays, confusion matrices.

All take and return RGB uint8 arrays; drawing uses OpenCV so that no plotting library is needed.
"""

from collections.abc import Sequence

import cv2
import numpy as np

from contracts import voc

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _titled(picture: np.ndarray, title: str) -> np.ndarray:
  bar = np.full((24, picture.shape[1], 3), 255, np.uint8)
  cv2.putText(bar, title, (4, 17), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
  return np.concatenate([bar, picture], axis=0)


def triptych(
  image: np.ndarray,
  truth: np.ndarray | None,
  prediction: np.ndarray,
  titles: Sequence[str] = ("image", "ground truth", "prediction"),
  class_names: Sequence[str] = voc.CLASS_NAMES,
  class_colours=(),
) -> np.ndarray:
  """Side by side, titled, over a legend of the classes in the truth or the prediction; `truth` None (no mask
  known) leaves that panel out. Classes in their own colours where the data set has them (voc.class_palette);
  255 (void, not scored) shows as VOC's cream."""
  panels = [np.asarray(image, np.uint8)]
  names = [titles[0]]
  if truth is not None:
    panels.append(voc.colorize(truth, class_colours))
    names.append(titles[1])
  panels.append(voc.colorize(prediction, class_colours))
  names.append(titles[2])
  pieces = []  # Each titled panel, then a white gap.
  for panel, name in zip(panels, names, strict=True):
    pieces += [_titled(panel, name), np.full((panel.shape[0] + 24, 4, 3), 255, np.uint8)]
  row = np.concatenate(pieces[:-1], axis=1)
  shown = np.unique(np.concatenate([np.ravel(prediction)] + ([np.ravel(truth)] if truth is not None else [])))
  return np.concatenate([row, legend(shown, class_names, row.shape[1], class_colours)], axis=0)


def legend(
  class_ids: Sequence[int] | np.ndarray, class_names: Sequence[str], width: int, class_colours=()
) -> np.ndarray:
  """A white strip `width` wide: a swatch and the name of each class id (and void), wrapped into rows."""
  colours = voc.class_palette(class_colours)
  entries = [
    (colours[c], class_names[c] if c < len(class_names) else f"class {c}")
    for c in sorted(int(c) for c in class_ids)
    if c != voc.IGNORE_LABEL
  ]
  if voc.IGNORE_LABEL in set(int(c) for c in class_ids):
    entries.append((colours[voc.IGNORE_LABEL], "void (not scored)"))
  row_height, x, y = 20, 4, 0
  lines: list[list[tuple[int, np.ndarray, str]]] = [[]]  # Per row of the strip: (x, colour, name) of its entries.
  for colour, name in entries:
    entry_width = 24 + cv2.getTextSize(name, _FONT, 0.45, 1)[0][0] + 12
    if x + entry_width > width and lines[-1]:
      lines.append([])
      x = 4
    lines[-1].append((x, colour, name))
    x += entry_width
  strip = np.full((row_height * len(lines) + 6, width, 3), 255, np.uint8)
  for line_index, line in enumerate(lines):
    y = 4 + row_height * line_index
    for x, colour, name in line:
      cv2.rectangle(strip, (x, y + 2), (x + 16, y + 16), tuple(int(v) for v in colour), -1)
      cv2.rectangle(strip, (x, y + 2), (x + 16, y + 16), (0, 0, 0), 1)
      cv2.putText(strip, name, (x + 22, y + 14), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
  return strip


def overlay(
  image: np.ndarray,
  prediction: np.ndarray,
  alpha: float = 0.5,
  class_names: Sequence[str] = voc.CLASS_NAMES,
  class_colours=(),
) -> np.ndarray:
  """The prediction blended over the photo, background left clear, with a legend of the classes present.

  The legend sits on a darkened box (readable over any photo) and wraps into more columns when the classes do
  not fit in the image's height.
  """
  image = np.asarray(image, np.uint8)
  palette = voc.class_palette(class_colours)
  colours = palette[np.asarray(prediction, np.uint8)]
  foreground = (prediction != 0)[..., None]
  blended = np.where(foreground, (image * (1 - alpha) + colours * alpha).astype(np.uint8), image)
  present = [int(c) for c in np.unique(prediction) if c != 0 and c < len(class_names)]
  if not present:
    return blended
  row_height, margin = 18, 4
  rows = max(1, min(len(present), (blended.shape[0] - 2 * margin) // row_height))
  column_width = 26 + max(cv2.getTextSize(class_names[c], _FONT, 0.45, 1)[0][0] for c in present)
  columns = -(-len(present) // rows)
  bottom = min(blended.shape[0], margin * 2 + row_height * min(rows, len(present)))
  right = min(blended.shape[1], margin * 2 + column_width * columns)
  blended[:bottom, :right] = (blended[:bottom, :right] * 0.45).astype(np.uint8)
  for index, class_id in enumerate(present):
    x, y = margin + 2 + column_width * (index // rows), margin + row_height * (index % rows)
    colour = tuple(int(v) for v in palette[class_id])
    cv2.rectangle(blended, (x, y + 2), (x + 14, y + 16), colour, -1)
    cv2.rectangle(blended, (x, y + 2), (x + 14, y + 16), (255, 255, 255), 1)
    cv2.putText(blended, class_names[class_id], (x + 19, y + 14), _FONT, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
  return blended


def _names(class_names: Sequence[str], n: int) -> list[str]:
  return list(class_names) if len(class_names) == n else [str(i) for i in range(n)]


def confusion_matrix_picture(confusion: np.ndarray, class_names: Sequence[str] = voc.CLASS_NAMES) -> np.ndarray:
  """Row-normalised confusion matrix (rows: truth, columns: prediction, both by class id) as a heat map with its
  colour scale; rows of classes with no pixel in the truth are hatched and marked "absent".

  Compact (short column labels, no rotated text) so that TensorBoard's image card, which fits a picture into a few
  hundred pixels, keeps its numbers legible for up to about 8 classes; confusion_matrix_table is the legible
  form for more."""
  confusion = np.asarray(confusion, np.float64)
  n = len(confusion)
  names = _names(class_names, n)
  totals = confusion.sum(axis=1)
  rates = confusion / np.maximum(totals[:, None], 1)
  cell, text_scale = (30, 0.5) if n <= 8 else (22, 0.38)
  labels = [f"{i} {name}" for i, name in enumerate(names)]
  left = 10 + max(cv2.getTextSize(label, _FONT, text_scale, 1)[0][0] for label in labels)
  top, grid, scale_width = 40, n * cell, 62
  picture = np.full((top + grid + 6, left + grid + scale_width, 3), 255, np.uint8)
  heat = cv2.applyColorMap((rates * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
  picture[top : top + grid, left : left + grid] = cv2.resize(heat, (grid, grid), interpolation=cv2.INTER_NEAREST)
  for i in range(n):
    y = top + i * cell
    baseline = y + cell // 2 + 5
    cv2.putText(picture, labels[i], (4, baseline), _FONT, text_scale, (0, 0, 0), 1, cv2.LINE_AA)
    if totals[i] == 0:
      band = picture[y : y + cell, left : left + grid]
      band[:] = 230
      for offset in range(-cell, grid, 8):
        cv2.line(band, (offset, cell), (offset + cell, 0), (200, 200, 200), 1)
      cv2.putText(picture, "absent", (left + 4, baseline), _FONT, text_scale, (90, 90, 90), 1, cv2.LINE_AA)
      continue
    for j in range(n):
      if rates[i, j] >= 0.005:
        colour = (0, 0, 0) if rates[i, j] > 0.6 else (255, 255, 255)
        cv2.putText(
          picture,
          f"{rates[i, j] * 100:.0f}",
          (left + j * cell + 3, baseline),
          _FONT,
          text_scale * 0.9,
          colour,
          1,
          cv2.LINE_AA,
        )
  for j in range(n):
    cv2.putText(picture, str(j), (left + j * cell + 4, top - 6), _FONT, text_scale, (0, 0, 0), 1, cv2.LINE_AA)
  cv2.putText(
    picture, "truth (rows) -> prediction (columns), % of row", (4, 15), _FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA
  )
  _colour_scale(picture, x=left + grid + 8, y=top, height=grid)
  return picture


def _colour_scale(picture: np.ndarray, x: int, y: int, height: int) -> None:
  """A vertical viridis bar from 100% (top) to 0%, labelled every 25% (every 50% when short)."""
  values = np.linspace(255, 0, height).astype(np.uint8)[:, None]
  bar = cv2.applyColorMap(values, cv2.COLORMAP_VIRIDIS)[..., ::-1]
  picture[y : y + height, x : x + 16] = np.repeat(bar, 16, axis=1)
  for percent in (0, 25, 50, 75, 100) if height >= 120 else (0, 50, 100):
    ty = y + int(round((100 - percent) / 100 * (height - 1)))
    cv2.line(picture, (x + 16, ty), (x + 20, ty), (0, 0, 0), 1)
    cv2.putText(
      picture, f"{percent}%", (x + 23, min(ty + 5, picture.shape[0] - 2)), _FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA
    )


def confusion_matrix_table(confusion: np.ndarray, class_names: Sequence[str] = voc.CLASS_NAMES) -> str:
  """The row-normalised confusion matrix as a Markdown table (TensorBoard's Text dashboard renders it): % of
  each true class's pixels per predicted class, the row's pixel count, and "absent" for classes with none."""
  confusion = np.asarray(confusion, np.float64)
  names = _names(class_names, len(confusion))
  totals = confusion.sum(axis=1)
  lines = ["| truth \\ prediction | " + " | ".join(names) + " | pixels |", "|---|" + "---:|" * (len(names) + 1)]
  for i, name in enumerate(names):
    if totals[i] == 0:
      cells = ["absent"] + [""] * (len(names) - 1)
    else:
      cells = [
        f"**{v:.0%}**" if j == i else (f"{v:.0%}" if v >= 0.005 else "·")
        for j, v in enumerate(confusion[i] / totals[i])
      ]
    lines.append(f"| **{name}** | " + " | ".join(cells) + f" | {int(totals[i])} |")
  return "\n".join(lines)
