"""Segmenting photos with a run's model (or its SavedModel) and writing what a person looks at: class-id masks,
overlays and triptychs (what python -m inference.predict runs; its docstring lists the files). Images are decoded
as the training pipeline decodes them.
"""

from collections.abc import Callable
from collections.abc import Sequence
import os
import sys

import cv2
import keras
import numpy as np
import tensorflow as tf

from contracts import console
from contracts import schema
from contracts import shards
from contracts import voc
from deeplab import tfrecords
from deeplab import visualize
from inference import evaluation

FORMATS = ("mask", "overlay", "triptych")
OVERLAY_JPEG_QUALITY = 90


# encoded image bytes, the same image decoded (uint8 [H, W, 3] RGB) -> class ids uint8 [H, W]
Segmenter = Callable[[bytes, np.ndarray], np.ndarray]


class UnreadableImageError(Exception):
  """An input that is skipped; the message says why."""


# ---------------------------------------------------------------------------------------------------- inputs


def list_inputs(pattern: str) -> list[str]:
  """The files an --input names: the file itself, a folder's files (hidden ones left out), or a glob's matches."""
  if tf.io.gfile.isdir(pattern):
    names = [name for name in tf.io.gfile.listdir(pattern) if not name.startswith(".")]
    paths = [tf.io.gfile.join(pattern, name) for name in names]
  elif any(c in pattern for c in "*?["):
    paths = tf.io.gfile.glob(pattern)
  else:
    paths = [pattern] if tf.io.gfile.exists(pattern) else []
  return sorted(path for path in paths if not _is_folder(path))


def _is_folder(path: str) -> bool:
  # Object stores list folders with a trailing "/"; asking each object would cost a request per file.
  return path.endswith("/") or ("://" not in path and tf.io.gfile.isdir(path))


def image_id(path: str) -> str:
  """'photos/2007_000032.jpg' -> '2007_000032': the name the outputs (and a VOC ground-truth mask) share."""
  return os.path.splitext(path.rstrip("/").rsplit("/", 1)[-1])[0]


def decode_image(data: bytes) -> np.ndarray:
  """uint8 [H, W, 3] RGB of JPEG or PNG bytes, decoded as the training pipeline does; UnreadableImageError if not."""
  if not data:
    raise UnreadableImageError("empty file")
  kind = (schema.image_format(data) or "").upper()
  if not kind:
    raise UnreadableImageError(f"not a JPEG or PNG image ({len(data)} bytes starting {data[:8]!r})")
  try:
    return tfrecords.decode_image(tf.constant(data)).numpy()
  except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as error:
    raise UnreadableImageError(f"corrupt {kind}: {console.op_error_text(error)}") from None


def read_image(path: str) -> tuple[bytes, np.ndarray]:
  """(the file's bytes, its decoded pixels); UnreadableImageError when it cannot be read or decoded."""
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read()
  except tf.errors.OpError as error:
    raise UnreadableImageError(f"cannot read: {console.op_error_text(error)}") from None
  return data, decode_image(data)


def read_truth(voc_root: str, name: str, size: tuple[int, int]) -> np.ndarray | None:
  """The VOC mask's class ids for an id (Pillow's palette indices), or None when there is none that fits."""
  path = next((path for path in voc.mask_paths(voc_root, name) if tf.io.gfile.exists(path)), None)
  if path is None:
    return None
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      truth = voc.decode_class_ids(f.read())
  except (ValueError, OSError, tf.errors.OpError) as error:
    _warn(f"{path}: ground truth left out ({error})")
    return None
  if truth.shape != size:
    _warn(f"{path}: ground truth left out (it is {truth.shape[0]}x{truth.shape[1]}, the image {size[0]}x{size[1]})")
    return None
  return truth


# ---------------------------------------------------------------------------------------------------- models


def keras_segmenter(model: keras.Model, scales: Sequence[float] = (1.0,), flip: bool = False) -> Segmenter:
  """Argmax of the run's class probabilities at the image's own size (averaged over scales and mirrors)."""
  predict = evaluation.make_predictor(model, list(scales), flip)

  def segment(data: bytes, image: np.ndarray) -> np.ndarray:
    del data
    return np.argmax(predict(tf.cast(image, tf.float32)).numpy(), axis=-1).astype(np.uint8)

  return segment


def saved_model_segmenter(export_dir: str) -> Segmenter:
  """The exported model's `serving_default`, one image per request (so no other image's padding is involved)."""
  serve = tf.saved_model.load(export_dir).signatures["serving_default"]

  def segment(data: bytes, image: np.ndarray) -> np.ndarray:
    result = serve(image_bytes=tf.constant([data]))
    height, width = int(result["heights"][0]), int(result["widths"][0])
    if (height, width) != image.shape[:2]:
      raise RuntimeError(f"the SavedModel saw a {height}x{width} image, we decoded {image.shape[0]}x{image.shape[1]}")
    return result["masks"][0, :height, :width].numpy()

  return segment


def _export_folder(export_dir: str) -> str:
  return export_dir.rstrip("/").rsplit("/", 1)[0] if "/" in export_dir.rstrip("/") else "."


def saved_model_class_names(export_dir: str) -> tuple[str, ...]:
  """The names inference.export wrote beside the SavedModel, else VOC's (an export made before it wrote them)."""
  return shards.read_class_names(shards.class_names_path(_export_folder(export_dir))) or voc.CLASS_NAMES


def saved_model_class_colours(export_dir: str) -> tuple:
  """The class colours inference.export wrote beside the SavedModel (a data set with a colour table), else ()."""
  return shards.read_class_colours(shards.class_colours_path(_export_folder(export_dir))) or ()


# ---------------------------------------------------------------------------------------------------- outputs


def _encode(rgb: np.ndarray, extension: str, params: Sequence[int] = ()) -> bytes:
  ok, encoded = cv2.imencode(extension, np.ascontiguousarray(rgb[..., ::-1]), list(params))
  if not ok:
    raise RuntimeError(f"OpenCV could not encode a {rgb.shape} picture as {extension}")
  return encoded.tobytes()


def outputs_of(
  name: str,
  image: np.ndarray,
  class_ids: np.ndarray,
  formats: Sequence[str],
  truth: np.ndarray | None = None,
  class_names: Sequence[str] = voc.CLASS_NAMES,
  class_colours=(),
) -> dict[str, bytes]:
  """{file name: encoded bytes} of the pictures asked for, in the classes' colours (VOC's by default)."""
  files = {}
  if "mask" in formats:
    files[f"{name}.png"] = voc.encode_palette_png(class_ids, class_colours)
  if "overlay" in formats:
    files[f"{name}_overlay.jpg"] = _encode(
      visualize.overlay(image, class_ids, class_names=class_names, class_colours=class_colours),
      ".jpg",
      [cv2.IMWRITE_JPEG_QUALITY, OVERLAY_JPEG_QUALITY],
    )
  if "triptych" in formats:
    files[f"{name}_triptych.png"] = _encode(
      visualize.triptych(
        image,
        truth,
        class_ids,
        titles=(name, "ground truth", "prediction"),
        class_names=class_names,
        class_colours=class_colours,
      ),
      ".png",
    )
  return files


def predict_files(
  paths: Sequence[str],
  segment: Segmenter,
  output_dir: str,
  formats: Sequence[str] = ("mask",),
  voc_root: str | None = None,
  class_names: Sequence[str] = voc.CLASS_NAMES,
  progress: bool = True,
  class_colours=(),
) -> tuple[list[str], list[tuple[str, str]]]:
  """Writes each readable image's pictures; returns (ids written, [(path, why skipped)]), naming skips on stderr."""
  tf.io.gfile.makedirs(output_dir)
  report = (
    console.Progress("predict", len(paths), unit="images", stream=sys.stdout) if progress and len(paths) > 1 else None
  )
  written: list[str] = []
  skipped: list[tuple[str, str]] = []
  seen: dict[str, str] = {}  # id -> the path it was first read from
  for count, path in enumerate(paths, start=1):
    name = image_id(path)
    try:
      if name in seen:
        raise UnreadableImageError(f"same id as {seen[name]}: its outputs would be overwritten")
      data, image = read_image(path)
      try:
        class_ids = segment(data, image)
      except tf.errors.OpError as error:  # e.g. out of memory on a huge image: the others may still fit
        raise UnreadableImageError(f"prediction failed: {console.op_error_text(error)}") from None
    except UnreadableImageError as reason:
      skipped.append((path, str(reason)))
      _warn(f"skipped {path}: {reason}")
    else:
      seen[name] = path
      truth = read_truth(voc_root, name, image.shape[:2]) if voc_root and "triptych" in formats else None
      for file_name, encoded in outputs_of(name, image, class_ids, formats, truth, class_names, class_colours).items():
        with tf.io.gfile.GFile(tf.io.gfile.join(output_dir, file_name), "wb") as f:
          f.write(encoded)
      written.append(name)
    if report is not None:
      report.update(count)
  if report is not None:
    report.close()
  return written, skipped


def _warn(message: str) -> None:
  sys.stdout.flush()  # the progress bar's line first, then ours on a line of its own
  sys.stderr.write(f"\n{message}\n")
  sys.stderr.flush()
