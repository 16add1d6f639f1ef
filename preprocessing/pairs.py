"""One VOC image/mask pair -> a serialized DeepLab tf.train.Example, or a rejection with a stable reason.

This is the pure-Python part of the conversion: the Beam DoFn only calls `convert`, so every rule about bad
input lives (and is tested) here. The image bytes are stored as they are; they are validated with TF's own
decoder because the trainer decodes with it (OpenCV and Pillow accept some truncated files that TF rejects).
Mask class ids come from Pillow, which keeps palette indices (OpenCV and tf.io.decode_png expand palettes to
colour). Paths may be local or gs://: all I/O goes through tf.io.gfile.
"""

import dataclasses
import io
import re

import numpy as np
import tensorflow as tf
from PIL import Image

from contracts import console
from contracts import schema
from contracts import voc

# Stable reason codes of rejected pairs (they name the rejected.jsonl "reason" field and Beam counters).
MISSING_IMAGE = "missing_image"
MISSING_MASK = "missing_mask"
CORRUPT_IMAGE = "corrupt_image"
CORRUPT_MASK = "corrupt_mask"
UNSUPPORTED_IMAGE_FORMAT = "unsupported_image_format"
UNSUPPORTED_MASK_FORMAT = "unsupported_mask_format"
SIZE_MISMATCH = "size_mismatch"
LABEL_OUT_OF_RANGE = "label_out_of_range"
UNKNOWN_MASK_COLOUR = "unknown_mask_colour"
DUPLICATE_ID = "duplicate_id"
UNEXPECTED_ERROR = "unexpected_error"
REASONS = (MISSING_IMAGE, MISSING_MASK, CORRUPT_IMAGE, CORRUPT_MASK, UNSUPPORTED_IMAGE_FORMAT,
           UNSUPPORTED_MASK_FORMAT, SIZE_MISMATCH, LABEL_OUT_OF_RANGE, UNKNOWN_MASK_COLOUR, DUPLICATE_ID,
           UNEXPECTED_ERROR)

IMAGE_EXTENSION = ".jpg"
MASK_EXTENSION = ".png"
MASK_DIRS = (voc.MASK_DIR, voc.AUG_MASK_DIR)  # looked up in this order: official masks win over SBD's

_DIRECT_MASK_MODES = ("P", "L", "I", "I;16")  # pixel values are class ids
_COLOUR_MASK_MODES = ("RGB", "RGBA")  # VOC colours, mapped back to ids through the palette
# Packed 0xRRGGBB -> id for all 256 VOC colours (the colour map is one-to-one; 255 is the void colour).
_COLOUR_TO_ID = {(int(r) << 16) | (int(g) << 8) | int(b): index for index, (r, g, b) in enumerate(voc.palette())}


class PairError(Exception):
  """A pair that cannot be converted; `reason` is one of REASONS."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason, self.detail = reason, detail


@dataclasses.dataclass(frozen=True)
class Rejection:
  image_id: str
  reason: str
  detail: str

  def to_json_dict(self, split: str) -> dict[str, str]:
    return {"id": self.image_id, "split": split, "reason": self.reason, "detail": self.detail}


# ----------------------------------------------------------------------------------------------- split lists

def available_splits(voc_root: str) -> list[str]:
  """Names of the id lists under ImageSets/Segmentation (empty when the folder is missing)."""
  pattern = tf.io.gfile.join(voc_root, voc.SPLIT_DIR, "*.txt")
  try:
    return sorted(re.sub(r"\.txt$", "", path.rsplit("/", 1)[-1]) for path in tf.io.gfile.glob(pattern))
  except tf.errors.NotFoundError:
    return []


def partition_repeats(ids: list[str]) -> tuple[list[str], list[str]]:
  """(first occurrences in order, every later repeat): a listed-twice id is written once, then rejected."""
  seen, unique, repeats = set(), [], []
  for image_id in ids:
    (repeats if image_id in seen else unique).append(image_id)
    seen.add(image_id)
  return unique, repeats


def duplicate_rejection(image_id: str) -> Rejection:
  return Rejection(image_id, DUPLICATE_ID, "listed more than once in the split; the first occurrence is written")


# ------------------------------------------------------------------------------------------------ one pair

def convert(voc_root: str, image_id: str, num_classes: int = voc.NUM_CLASSES) -> bytes | Rejection:
  """The serialized tf.train.Example of one pair, or why not. Never raises for a bad pair."""
  try:
    return convert_or_raise(voc_root, image_id, num_classes)
  except PairError as e:
    return Rejection(image_id, e.reason, e.detail)
  except Exception as e:  # noqa: BLE001  (one odd pair must not stop the job; the detail keeps the cause)
    return Rejection(image_id, UNEXPECTED_ERROR, f"{type(e).__name__}: {console.one_line(e)}")


def convert_or_raise(voc_root: str, image_id: str, num_classes: int = voc.NUM_CLASSES) -> bytes:
  """Like `convert`, but raises PairError (or anything unexpected) instead of returning a Rejection."""
  image_path = tf.io.gfile.join(voc_root, voc.IMAGE_DIR, image_id + IMAGE_EXTENSION)
  image_bytes = _read_or_none(image_path)
  if image_bytes is None:
    raise PairError(MISSING_IMAGE, f"no {image_path}")
  mask_bytes, mask_path = None, None
  for mask_dir in MASK_DIRS:
    mask_path = tf.io.gfile.join(voc_root, mask_dir, image_id + MASK_EXTENSION)
    if (mask_bytes := _read_or_none(mask_path)) is not None:
      break
  if mask_bytes is None:
    raise PairError(MISSING_MASK, f"no {image_id}{MASK_EXTENSION} in {' or '.join(MASK_DIRS)}")

  image_format, (height, width) = validate_image(image_bytes)
  class_ids = mask_class_ids(mask_bytes, num_classes)
  if class_ids.shape != (height, width):
    raise PairError(SIZE_MISMATCH, f"image is {height}x{width}, mask {mask_path.rsplit('/', 1)[-1]} is "
                                   f"{class_ids.shape[0]}x{class_ids.shape[1]} (HxW)")
  example = schema.make_example(image=image_bytes, image_format=image_format, mask_png=voc.encode_label_png(class_ids),
                                filename=image_id, height=height, width=width, channels=3)
  return example.SerializeToString()


def validate_image(data: bytes) -> tuple[str, tuple[int, int]]:
  """(format, (height, width)) of an image the trainer can decode; PairError when it cannot."""
  image_format = schema.image_format(data)
  if image_format is None:
    other = schema.other_image_format(data)
    if other is not None:
      raise PairError(UNSUPPORTED_IMAGE_FORMAT, f"a {other} file; only JPEG and PNG images are stored")
    raise PairError(CORRUPT_IMAGE, f"not a JPEG or PNG file ({len(data)} bytes starting {data[:8]!r})")
  try:
    # The trainer's decode: raises on truncated JPEGs ("Premature end of JPEG data") and PNGs.
    pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
  except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
    raise PairError(CORRUPT_IMAGE,
                    f"TensorFlow cannot decode this {image_format}: {console.op_error_text(e)}") from None
  return image_format, (int(pixels.shape[0]), int(pixels.shape[1]))


def mask_class_ids(data: bytes, num_classes: int = voc.NUM_CLASSES) -> np.ndarray:
  """Class ids (uint8 [H, W]; 255 = void) of a palette, grayscale or VOC-coloured RGB(A) PNG mask."""
  if schema.image_format(data) != "png":
    raise PairError(CORRUPT_MASK, f"not a PNG file ({len(data)} bytes starting {data[:8]!r})")
  try:
    tf.io.decode_png(data)  # strict: Pillow accepts a PNG cut off near its end, libpng does not
  except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
    raise PairError(CORRUPT_MASK, f"TensorFlow cannot decode this PNG: {console.op_error_text(e)}") from None
  try:
    with Image.open(io.BytesIO(data)) as image:
      mode = image.mode
      if mode in ("LA", "PA"):
        values = np.array(image)[..., 0]
      elif mode in _DIRECT_MASK_MODES or mode in _COLOUR_MASK_MODES:
        values = np.array(image)
      else:
        raise PairError(UNSUPPORTED_MASK_FORMAT, f"a mode {mode} PNG; masks are palette (P), grayscale (L) or "
                                                 f"VOC-coloured RGB(A)")
  except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for damaged files
    raise PairError(CORRUPT_MASK, f"Pillow cannot read this PNG: {console.one_line(e)}") from None
  if mode in _COLOUR_MASK_MODES:
    values = colours_to_class_ids(values[..., :3])
  check_labels(values, num_classes)
  return values.astype(np.uint8)


def colours_to_class_ids(rgb: np.ndarray) -> np.ndarray:
  """[H, W, 3] VOC colours -> [H, W] ids (0..255); PairError naming any colour outside the VOC colour map."""
  packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
  colours, inverse = np.unique(packed.ravel(), return_inverse=True)
  unknown = [int(c) for c in colours if int(c) not in _COLOUR_TO_ID]
  if unknown:
    shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:5])
    raise PairError(UNKNOWN_MASK_COLOUR, f"{len(unknown)} RGB colour(s) not in the VOC colour map: {shown}")
  ids = np.array([_COLOUR_TO_ID[int(c)] for c in colours], dtype=np.uint8)
  return ids[inverse].reshape(packed.shape)


def check_labels(class_ids: np.ndarray, num_classes: int) -> None:
  """PairError unless every value is a class id (0..num_classes-1) or voc.IGNORE_LABEL."""
  if class_ids.dtype == np.uint8:  # the usual case: a histogram is ~10x faster than np.unique's sort
    values = np.flatnonzero(np.bincount(class_ids.ravel(), minlength=256))
  else:
    values = np.unique(class_ids)
  bad = values[(values < 0) | ((values >= num_classes) & (values != voc.IGNORE_LABEL))]
  if bad.size:
    raise PairError(LABEL_OUT_OF_RANGE, f"values {bad[:10].tolist()} outside 0..{num_classes - 1} and "
                                        f"{voc.IGNORE_LABEL} (void)")


def _read_or_none(path: str) -> bytes | None:
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      return f.read()
  except tf.errors.NotFoundError:
    return None
