"""Pictures a person looks at: triptychs (image / ground truth / prediction), overlays, confusion matrices.

All take and return RGB uint8 arrays; drawing uses OpenCV so that no plotting library is needed.
"""

from collections.abc import Sequence

import cv2
import numpy as np

from preprocessing import voc

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _titled(picture: np.ndarray, title: str) -> np.ndarray:
  bar = np.full((24, picture.shape[1], 3), 255, np.uint8)
  cv2.putText(bar, title, (4, 17), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
  return np.concatenate([bar, picture], axis=0)


def triptych(image: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray,
             titles: Sequence[str] = ("image", "ground truth", "prediction")) -> np.ndarray:
  """Side by side, titled; `truth` None (no mask known) leaves that panel out. 255 shows as VOC's cream."""
  panels = [np.asarray(image, np.uint8)]
  names = [titles[0]]
  if truth is not None:
    panels.append(voc.colorize(truth))
    names.append(titles[1])
  panels.append(voc.colorize(prediction))
  names.append(titles[2])
  row = []
  for panel, name in zip(panels, names):
    row += [_titled(panel, name), np.full((panel.shape[0] + 24, 4, 3), 255, np.uint8)]
  return np.concatenate(row[:-1], axis=1)


def overlay(image: np.ndarray, prediction: np.ndarray, alpha: float = 0.5,
            class_names: Sequence[str] = voc.CLASS_NAMES) -> np.ndarray:
  """The prediction blended over the photo, background left clear, with a legend of the classes present.

  The legend sits on a darkened box (readable over any photo) and wraps into more columns when the classes do
  not fit in the image's height.
  """
  image = np.asarray(image, np.uint8)
  colours = voc.colorize(prediction)
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
    colour = tuple(int(v) for v in voc.palette()[class_id])
    cv2.rectangle(blended, (x, y + 2), (x + 14, y + 16), colour, -1)
    cv2.rectangle(blended, (x, y + 2), (x + 14, y + 16), (255, 255, 255), 1)
    cv2.putText(blended, class_names[class_id], (x + 19, y + 14), _FONT, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
  return blended


def confusion_matrix_picture(confusion: np.ndarray, class_names: Sequence[str] = voc.CLASS_NAMES,
                             cell: int = 26) -> np.ndarray:
  """Row-normalised confusion matrix (rows: truth, columns: prediction) as a labelled heat map."""
  confusion = np.asarray(confusion, np.float64)
  n = len(confusion)
  names = list(class_names) if len(class_names) == n else [str(i) for i in range(n)]
  rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  margin = 100
  picture = np.full((margin + n * cell + 10, margin + n * cell + 10, 3), 255, np.uint8)
  heat = cv2.applyColorMap((rates * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
  picture[margin:margin + n * cell, margin:margin + n * cell] = cv2.resize(
      heat, (n * cell, n * cell), interpolation=cv2.INTER_NEAREST)
  for i in range(n):
    for j in range(n):
      if rates[i, j] >= 0.005:
        text = f"{int(round(rates[i, j] * 100))}"
        colour = (0, 0, 0) if rates[i, j] > 0.5 else (255, 255, 255)
        cv2.putText(picture, text, (margin + j * cell + 3, margin + i * cell + 17), _FONT, 0.35, colour, 1,
                    cv2.LINE_AA)
    cv2.putText(picture, names[i][:12], (2, margin + i * cell + 17), _FONT, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
  column_labels = np.full((margin, n * cell, 3), 255, np.uint8)
  rotated = np.ascontiguousarray(np.rot90(column_labels))
  for j in range(n):
    cv2.putText(rotated, names[j][:12], (4, n * cell - j * cell - 9), _FONT, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
  picture[:margin, margin:margin + n * cell] = np.rot90(rotated, k=-1)
  cv2.putText(picture, "truth \\ prediction (%)", (2, 14), _FONT, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
  return picture
