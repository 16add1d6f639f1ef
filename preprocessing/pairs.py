"""One image/mask pair -> a serialized DeepLab tf.train.Example and its class pixel counts, or a rejection with a
stable reason.

This is the pure-Python part of the conversion: the Beam DoFn only calls `convert_pair`, so every rule about bad
input lives (and is tested) here. JPEG and PNG photos are stored as they are, validated with TF's own decoder
because the trainer decodes with it (OpenCV and Pillow accept some truncated files that TF rejects); TIFF, BMP,
WebP and GIF photos are stored as lossless PNG. Masks are decoded by `mask_encoding` (Pillow, which keeps palette
indices). Paths may be local or gs://: all I/O goes through tf.io.gfile.
"""

import dataclasses
import io

import numpy as np
from PIL import Image
import tensorflow as tf

from contracts import console
from contracts import schema
from contracts import voc
from preprocessing import mask_encoding
from preprocessing import sources

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
DUPLICATE_ID = sources.DUPLICATE_ID
SHARED_MASK = sources.SHARED_MASK
BAD_LIST_LINE = sources.BAD_LIST_LINE
UNEXPECTED_ERROR = "unexpected_error"
REASONS = (
  MISSING_IMAGE,
  MISSING_MASK,
  CORRUPT_IMAGE,
  CORRUPT_MASK,
  UNSUPPORTED_IMAGE_FORMAT,
  UNSUPPORTED_MASK_FORMAT,
  SIZE_MISMATCH,
  LABEL_OUT_OF_RANGE,
  UNKNOWN_MASK_COLOUR,
  DUPLICATE_ID,
  SHARED_MASK,
  BAD_LIST_LINE,
  UNEXPECTED_ERROR,
)

# A converted pair's pixel counts: one per value 0..255 of its class-id mask (255 = void); then the pixels of
# unknown values made void (--unknown_to_void), which are among the void ones; then, per class id 0..255, the
# labelled pixels of the pair if the class is in it, else 0 (summed over pairs: what median frequency balancing
# divides a class's pixels by).
UNKNOWN_TO_VOID = 256
IMAGE_PIXELS = 257
COUNTS_LENGTH = IMAGE_PIXELS + 256


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


@dataclasses.dataclass(frozen=True)
class Converted:
  record: bytes  # a serialized tf.train.Example
  pixel_counts: np.ndarray  # int64 [COUNTS_LENGTH]


# ------------------------------------------------------------------------------------------------ one pair


def convert(voc_root: str, image_id: str, num_classes: int = voc.NUM_CLASSES) -> bytes | Rejection:
  """The serialized tf.train.Example of one pair of a VOC root, or why not. Never raises for a bad pair."""
  result = convert_pair(sources.voc_pair(voc_root, image_id), mask_encoding.MaskEncoding(num_classes))
  return result if isinstance(result, Rejection) else result.record


def convert_or_raise(voc_root: str, image_id: str, num_classes: int = voc.NUM_CLASSES) -> bytes:
  """Like `convert`, but raises PairError (or anything unexpected) instead of returning a Rejection."""
  return convert_pair_or_raise(sources.voc_pair(voc_root, image_id), mask_encoding.MaskEncoding(num_classes)).record


def convert_pair(pair: sources.PairFiles, encoding: mask_encoding.MaskEncoding) -> Converted | Rejection:
  """The record and pixel counts of one pair, or why not. Never raises for a bad pair."""
  try:
    return convert_pair_or_raise(pair, encoding)
  except PairError as e:
    return Rejection(pair.id, e.reason, e.detail)
  except Exception as e:  # One odd pair must not stop the job; the detail keeps the cause.
    return Rejection(pair.id, UNEXPECTED_ERROR, f"{type(e).__name__}: {console.one_line(e)}")


def convert_pair_or_raise(pair: sources.PairFiles, encoding: mask_encoding.MaskEncoding) -> Converted:
  image_bytes = _read_or_none(pair.image)
  if image_bytes is None:
    raise PairError(MISSING_IMAGE, f"no {pair.image}")
  mask_bytes, mask_path = None, ""  # mask_path: the one read, once mask_bytes is not None.
  for mask_path in pair.masks:
    if (mask_bytes := _read_or_none(mask_path)) is not None:
      break
  if mask_bytes is None:
    raise PairError(MISSING_MASK, f"no {' or '.join(pair.masks)}")

  image_format, image_bytes, (height, width) = stored_image(image_bytes)
  decoded = decode_mask(mask_bytes, encoding)
  class_ids = decoded.class_ids
  if class_ids.shape != (height, width):
    raise PairError(
      SIZE_MISMATCH,
      f"image is {height}x{width}, mask {mask_path.rsplit('/', 1)[-1]} is "
      f"{class_ids.shape[0]}x{class_ids.shape[1]} (HxW)",
    )
  example = schema.make_example(
    image=image_bytes,
    image_format=image_format,
    mask_png=voc.encode_label_png(class_ids),
    filename=pair.id,
    height=height,
    width=width,
    channels=3,
  )
  counts = np.zeros(COUNTS_LENGTH, np.int64)
  counts[:256] = np.bincount(class_ids.ravel(), minlength=256)
  counts[UNKNOWN_TO_VOID] = decoded.unknown_pixels
  present = counts[: voc.IGNORE_LABEL] > 0
  counts[IMAGE_PIXELS : IMAGE_PIXELS + voc.IGNORE_LABEL][present] = counts[: voc.IGNORE_LABEL].sum()
  return Converted(example.SerializeToString(), counts)


def stored_image(data: bytes) -> tuple[str, bytes, tuple[int, int]]:
  """(format, the bytes a record stores, (height, width)): JPEG and PNG as they are, other formats Pillow reads
  (TIFF, BMP, WebP, GIF) as a lossless RGB PNG; PairError when the trainer could not decode it."""
  other_format = schema.other_image_format(data)
  if schema.image_format(data) is None and other_format is not None:
    data = _as_png(data, other_format)
  image_format, size = validate_image(data)
  return image_format, data, size


def _as_png(data: bytes, name: str) -> bytes:
  try:
    with Image.open(io.BytesIO(data)) as image:
      frames = getattr(image, "n_frames", 1)  # Only multi-frame formats have it.
      if frames > 1:
        raise PairError(UNSUPPORTED_IMAGE_FORMAT, f"an animated {name} of {frames} frames")
      if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "YCbCr", "1"):
        raise PairError(
          UNSUPPORTED_IMAGE_FORMAT,
          f"a mode {image.mode} {name} (high bit depth or float); photos are stored as 8-bit RGB",
        )
      rgb = image.convert("RGB")
      buffer = io.BytesIO()
      rgb.save(buffer, format="PNG")
  except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for damaged files
    raise PairError(CORRUPT_IMAGE, f"Pillow cannot read this {name}: {console.one_line(e)}") from None
  return buffer.getvalue()


def validate_image(data: bytes) -> tuple[str, tuple[int, int]]:
  """(format, (height, width)) of an image the trainer can decode; PairError when it cannot."""
  image_format = schema.image_format(data)
  if image_format is None:
    other = schema.other_image_format(data)
    if other is not None:
      raise PairError(UNSUPPORTED_IMAGE_FORMAT, f"a {other} file; records store JPEG and PNG images")
    raise PairError(CORRUPT_IMAGE, f"not a JPEG or PNG file ({len(data)} bytes starting {data[:8]!r})")
  try:
    # The trainer's decode: raises on truncated JPEGs ("Premature end of JPEG data") and PNGs.
    pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
  except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
    raise PairError(
      CORRUPT_IMAGE, f"TensorFlow cannot decode this {image_format}: {console.op_error_text(e)}"
    ) from None
  return image_format, (int(pixels.shape[0]), int(pixels.shape[1]))


def mask_class_ids(data: bytes, num_classes: int = voc.NUM_CLASSES) -> np.ndarray:
  """Class ids (uint8 [H, W]; 255 = void) of a palette, grayscale or VOC-coloured RGB(A) PNG mask."""
  return decode_mask(data, mask_encoding.MaskEncoding(num_classes)).class_ids


def decode_mask(data: bytes, encoding: mask_encoding.MaskEncoding) -> mask_encoding.DecodedMask:
  """A mask file (PNG, or any image Pillow reads) decoded by `encoding`; PairError with the reason otherwise."""
  if schema.image_format(data) == "png":
    try:
      tf.io.decode_png(data)  # strict: Pillow accepts a PNG cut off near its end, libpng does not
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
      raise PairError(CORRUPT_MASK, f"TensorFlow cannot decode this PNG: {console.op_error_text(e)}") from None
  elif schema.other_image_format(data) is None:
    raise PairError(CORRUPT_MASK, f"not a PNG file ({len(data)} bytes starting {data[:8]!r})")
  try:
    return mask_encoding.decode(data, encoding)
  except mask_encoding.MaskValueError as e:
    raise PairError(UNKNOWN_MASK_COLOUR if e.colours else LABEL_OUT_OF_RANGE, str(e)) from None
  except ValueError as e:
    raise PairError(UNSUPPORTED_MASK_FORMAT, str(e)) from None
  except (OSError, SyntaxError) as e:  # Pillow's errors for damaged files
    raise PairError(CORRUPT_MASK, f"Pillow cannot read this mask: {console.one_line(e)}") from None


def _read_or_none(path: str) -> bytes | None:
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      return f.read()
  except tf.errors.NotFoundError:
    return None
