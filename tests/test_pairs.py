"""One image/mask pair -> record or rejection (preprocessing.pairs), on VOC files and injected faults.

The tests on VOC files run on generated pairs (conftest's voc_data), so that a clone without ../shared covers
them, and again on the real VOC sample where ../shared is."""

import io
import pathlib

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from contracts import schema
from contracts import voc
from preprocessing import pairs
from preprocessing import sources
from preprocessing import synthetic_voc
from tests.conftest import is_voc_sample


def _indices(png_path: pathlib.Path) -> np.ndarray:
  with Image.open(png_path) as image:
    return np.array(image)


def _parse(record: bytes) -> dict:
  features = schema.parse_example(tf.constant(record))
  return {key: value.numpy() for key, value in features.items()}


def _png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def _pillow_bytes(array: np.ndarray, fmt: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt)
  return buffer.getvalue()


def _animated_gif(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  frames = [Image.fromarray(array), Image.fromarray(255 - array)]
  frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
  return buffer.getvalue()


@pytest.fixture(scope="module")
def scene():
  """A generated (RGB image, class ids) pair with several classes and a 255 edge band."""
  image, class_ids = synthetic_voc.make_pair(np.random.default_rng(3), 48, 64)
  assert len(np.unique(class_ids)) >= 3
  return image, class_ids


def _write_pair(
  root: pathlib.Path, image_id: str, image: bytes | None, mask: bytes | None, mask_dir: str = voc.MASK_DIR
) -> None:
  if image is not None:
    (root / voc.IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (root / voc.IMAGE_DIR / f"{image_id}.jpg").write_bytes(image)
  if mask is not None:
    (root / mask_dir).mkdir(parents=True, exist_ok=True)
    (root / mask_dir / f"{image_id}.png").write_bytes(mask)


def _reason(root: pathlib.Path, image_id: str, num_classes: int = voc.NUM_CLASSES) -> str:
  result = pairs.convert(str(root), image_id, num_classes)
  assert isinstance(result, pairs.Rejection), f"{image_id} was converted, expected a rejection"
  assert result.image_id == image_id and result.detail
  return result.reason


def test_real_pairs_keep_the_jpeg_bytes_and_the_palette_indices(voc_data):
  image_ids = voc.read_split_ids(str(voc_data), "val")[:4]
  for image_id in image_ids:
    record = pairs.convert(str(voc_data), image_id)
    assert isinstance(record, bytes), record
    features = _parse(record)
    jpeg = (voc_data / voc.IMAGE_DIR / f"{image_id}.jpg").read_bytes()
    indices = _indices(voc_data / voc.MASK_DIR / f"{image_id}.png")
    assert features[schema.IMAGE_ENCODED] == jpeg
    assert features[schema.IMAGE_FILENAME] == image_id.encode()
    assert features[schema.IMAGE_FORMAT] == b"jpeg"
    assert (features[schema.IMAGE_HEIGHT], features[schema.IMAGE_WIDTH]) == indices.shape
    mask = tf.io.decode_png(features[schema.MASK_ENCODED]).numpy()
    assert mask.shape == indices.shape + (1,)
    np.testing.assert_array_equal(mask[..., 0], indices)
  assert {255} < set(np.unique(indices).tolist())  # VOC masks (and generated ones) have void edges; they stay 255


def test_split_lists_of_the_real_sample(voc_data):
  assert sources.available_splits(str(voc_data)) == ["train", "trainval", "val"]
  train = voc.read_split_ids(str(voc_data), "train")
  if is_voc_sample(voc_data):
    assert len(train) == 311 and len(set(train)) == 311 and train[0] == "2007_000032"
  else:
    assert train == [f"synthetic_{index:06d}" for index in range(16)]  # write_dataset's ids, in order
  assert sources.available_splits(str(voc_data / "nowhere")) == []


def test_repeated_ids_keep_their_first_occurrence(tmp_path):
  (tmp_path / voc.SPLIT_DIR).mkdir(parents=True)
  synthetic_voc.write_split_list(str(tmp_path), "train", ["a", "b", "a", "c", "b", "a"])
  listed = sources.voc_pairs(str(tmp_path), "train")
  assert [pair.id for pair in listed.pairs] == ["a", "b", "c"]
  assert [(image_id, reason) for image_id, reason, _ in listed.refused] == [
    ("a", pairs.DUPLICATE_ID),
    ("b", pairs.DUPLICATE_ID),
    ("a", pairs.DUPLICATE_ID),
  ]


def test_rgb_and_rgba_masks_map_voc_colours_to_class_ids(scene):
  _, class_ids = scene
  coloured = voc.colorize(class_ids)
  np.testing.assert_array_equal(pairs.mask_class_ids(_png(coloured)), class_ids)
  rgba = np.concatenate([coloured, np.full(class_ids.shape + (1,), 255, np.uint8)], axis=-1)
  np.testing.assert_array_equal(pairs.mask_class_ids(_png(rgba)), class_ids)
  assert tuple(voc.colorize(np.array([255]))[0]) == (224, 224, 192)  # the void colour maps back to 255


def test_palette_and_grayscale_masks_are_class_ids(scene):
  _, class_ids = scene
  np.testing.assert_array_equal(pairs.mask_class_ids(voc.encode_palette_png(class_ids)), class_ids)
  np.testing.assert_array_equal(pairs.mask_class_ids(voc.encode_label_png(class_ids)), class_ids)


def test_mask_colours_and_labels_outside_the_classes_are_rejected(scene):
  _, class_ids = scene
  coloured = voc.colorize(class_ids)
  coloured[0, 0] = (1, 2, 3)
  with pytest.raises(pairs.PairError) as error:
    pairs.mask_class_ids(_png(coloured))
  assert error.value.reason == pairs.UNKNOWN_MASK_COLOUR and "(1, 2, 3)" in error.value.detail

  out_of_range = class_ids.copy()
  out_of_range[0, :3] = 30
  with pytest.raises(pairs.PairError) as error:
    pairs.mask_class_ids(voc.encode_palette_png(out_of_range))
  assert error.value.reason == pairs.LABEL_OUT_OF_RANGE and "30" in error.value.detail
  # The same ids are fine with more classes; fewer classes reject the scene's own ids (255 is always allowed).
  pairs.mask_class_ids(voc.encode_palette_png(out_of_range), num_classes=31)
  with pytest.raises(pairs.PairError):
    pairs.mask_class_ids(voc.encode_palette_png(class_ids), num_classes=int(class_ids[class_ids < 255].max()))


def test_bad_pairs_are_rejected_with_their_reason(tmp_path, voc_data, scene):
  image, class_ids = scene
  jpeg, mask = synthetic_voc.encode_jpeg(image), voc.encode_palette_png(class_ids)
  real_id = voc.read_split_ids(str(voc_data), "train")[0]  # Files as the root holds them.
  real_jpeg = (voc_data / voc.IMAGE_DIR / f"{real_id}.jpg").read_bytes()
  real_mask = (voc_data / voc.MASK_DIR / f"{real_id}.png").read_bytes()
  png_image = _png(image)
  cases = {
    "no_image": (None, mask, pairs.MISSING_IMAGE),
    "no_mask": (jpeg, None, pairs.MISSING_MASK),
    "garbage_image": (b"this is not an image at all", mask, pairs.CORRUPT_IMAGE),
    "empty_image": (b"", mask, pairs.CORRUPT_IMAGE),
    "truncated_jpeg_half": (real_jpeg[: len(real_jpeg) // 2], real_mask, pairs.CORRUPT_IMAGE),
    "truncated_jpeg_90": (real_jpeg[: len(real_jpeg) * 9 // 10], real_mask, pairs.CORRUPT_IMAGE),
    "truncated_png_image": (png_image[: len(png_image) // 2], mask, pairs.CORRUPT_IMAGE),
    "truncated_png_mask": (real_jpeg, real_mask[: len(real_mask) // 2], pairs.CORRUPT_MASK),
    "png_mask_without_end": (real_jpeg, real_mask[:-12], pairs.CORRUPT_MASK),  # Pillow alone accepts this one
    "garbage_mask": (jpeg, b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, pairs.CORRUPT_MASK),
    "jpeg_as_mask": (jpeg, jpeg, pairs.CORRUPT_MASK),
    "animated_gif": (_animated_gif(image), mask, pairs.UNSUPPORTED_IMAGE_FORMAT),
    "float_tiff": (_pillow_bytes(image[..., 0].astype(np.float32), "TIFF"), mask, pairs.UNSUPPORTED_IMAGE_FORMAT),
    "mask_too_small": (jpeg, voc.encode_palette_png(class_ids[:-1]), pairs.SIZE_MISMATCH),
    "mask_16bit_values": (jpeg, _png(class_ids.astype(np.uint16) * 300), pairs.LABEL_OUT_OF_RANGE),
  }
  for image_id, (image_bytes, mask_bytes, _) in cases.items():
    _write_pair(tmp_path, image_id, image_bytes, mask_bytes)
  found = {image_id: _reason(tmp_path, image_id) for image_id in cases}
  assert found == {image_id: reason for image_id, (_, _, reason) in cases.items()}


def test_masks_fall_back_to_segmentation_class_aug(tmp_path, scene):
  image, class_ids = scene
  jpeg = synthetic_voc.encode_jpeg(image)
  _write_pair(tmp_path, "aug_only", jpeg, voc.encode_label_png(class_ids), voc.AUG_MASK_DIR)
  features = _parse(pairs.convert(str(tmp_path), "aug_only"))
  np.testing.assert_array_equal(tf.io.decode_png(features[schema.MASK_ENCODED]).numpy()[..., 0], class_ids)
  assert features[schema.IMAGE_ENCODED] == jpeg

  # With both, the official mask wins (SBD's have no void edges).
  official = np.zeros_like(class_ids)
  _write_pair(tmp_path, "both", jpeg, voc.encode_palette_png(official))
  _write_pair(tmp_path, "both", None, voc.encode_label_png(class_ids), voc.AUG_MASK_DIR)
  features = _parse(pairs.convert(str(tmp_path), "both"))
  assert not tf.io.decode_png(features[schema.MASK_ENCODED]).numpy().any()


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "WEBP", "GIF"])
def test_other_photo_formats_are_stored_as_lossless_png(tmp_path, scene, fmt):
  image, class_ids = scene
  if fmt == "GIF":  # a GIF holds at most 256 colours: the photo as its palette keeps it
    image = np.asarray(Image.fromarray(image).quantize(64).convert("RGB"))
  data = _pillow_bytes(image, fmt) if fmt != "WEBP" else _webp_lossless(image)
  _write_pair(tmp_path, "photo", data, voc.encode_palette_png(class_ids))
  features = _parse(pairs.convert(str(tmp_path), "photo"))
  assert features[schema.IMAGE_FORMAT] == b"png"
  np.testing.assert_array_equal(tf.io.decode_png(features[schema.IMAGE_ENCODED]).numpy(), image)


def _webp_lossless(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="WEBP", lossless=True)
  return buffer.getvalue()


def test_png_images_are_stored_as_png(tmp_path, scene):
  image, class_ids = scene
  png_image = _png(image)
  _write_pair(tmp_path, "png_image", png_image, voc.encode_palette_png(class_ids))
  features = _parse(pairs.convert(str(tmp_path), "png_image"))
  assert features[schema.IMAGE_FORMAT] == b"png" and features[schema.IMAGE_ENCODED] == png_image


def test_an_unexpected_exception_becomes_a_rejection(tmp_path, scene, monkeypatch):
  image, class_ids = scene
  _write_pair(tmp_path, "odd", synthetic_voc.encode_jpeg(image), voc.encode_palette_png(class_ids))

  def broken_encoder(_):
    raise MemoryError("no room for this mask")

  monkeypatch.setattr(pairs.voc, "encode_label_png", broken_encoder)
  result = pairs.convert(str(tmp_path), "odd")
  assert result == pairs.Rejection("odd", pairs.UNEXPECTED_ERROR, "MemoryError: no room for this mask")
