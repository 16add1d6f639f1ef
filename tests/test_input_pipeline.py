"""The tf.data pipelines on records made from the real VOC sample: exact decoding, each eval image once,
padding that never scores, augmentation that really scales/flips with nearest-neighbour labels, sharding."""

import functools
import io
import pathlib

import cv2
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from preprocessing import schema, voc
from trainer import input_pipeline, losses, metrics, model


def _ids(voc_dir: pathlib.Path, split: str) -> list[str]:
  return (voc_dir / voc.SPLIT_DIR / f"{split}.txt").read_text().split()


@functools.lru_cache(maxsize=None)
def _source_rgb(voc_dir: pathlib.Path, image_id: str) -> np.ndarray:
  return cv2.cvtColor(cv2.imread(str(voc_dir / voc.IMAGE_DIR / f"{image_id}.jpg")), cv2.COLOR_BGR2RGB)


@functools.lru_cache(maxsize=None)
def _source_mask(voc_dir: pathlib.Path, image_id: str) -> np.ndarray:
  return np.asarray(Image.open(voc_dir / voc.MASK_DIR / f"{image_id}.png"))


def _example(voc_dir: pathlib.Path, image_id: str, *, image_format: str = "jpeg", palette_mask: bool = False) -> bytes:
  """A record as the converter writes it: source JPEG bytes as they are, the mask as a PNG of class ids."""
  jpeg_path = voc_dir / voc.IMAGE_DIR / f"{image_id}.jpg"
  mask_path = voc_dir / voc.MASK_DIR / f"{image_id}.png"
  if image_format == "jpeg":
    image = jpeg_path.read_bytes()
  else:  # A lossless PNG of the decoded pixels, as for datasets that ship PNG images.
    image = cv2.imencode(".png", cv2.imread(str(jpeg_path)))[1].tobytes()
  if palette_mask:
    mask = mask_path.read_bytes()
  else:
    buffer = io.BytesIO()
    Image.fromarray(_source_mask(voc_dir, image_id)).save(buffer, format="PNG")
    mask = buffer.getvalue()
  width, height = Image.open(jpeg_path).size
  return schema.make_example(image=image, image_format=image_format, mask_png=mask, filename=image_id,
                             height=height, width=width).SerializeToString()


def _write_shards(directory: pathlib.Path, split: str, records: list[bytes], num_shards: int) -> str:
  for shard in range(num_shards):
    path = directory / f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
      for record in records[shard::num_shards]:
        writer.write(record)
  return str(directory / f"{split}-*.tfrecord")


@pytest.fixture(scope="session")
def shards(voc_sample, tmp_path_factory) -> dict[str, str]:
  """train (311 records, 2 shards) and val (201 records, 3 shards) of the whole sample."""
  directory = tmp_path_factory.mktemp("records")
  return {split: _write_shards(directory, split, [_example(voc_sample, i) for i in _ids(voc_sample, split)], shards)
          for split, shards in (("train", 2), ("val", 3))}


def _one_record_file(directory: pathlib.Path, voc_dir: pathlib.Path, image_id: str, **kwargs) -> str:
  path = directory / f"{image_id}-{kwargs.get('image_format', 'jpeg')}.tfrecord"
  with tf.io.TFRecordWriter(str(path)) as writer:
    writer.write(_example(voc_dir, image_id, **kwargs))
  return str(path)


def _first_batch(file_pattern: str, **kwargs) -> tuple[np.ndarray, np.ndarray]:
  image, label = next(iter(input_pipeline.train_dataset(file_pattern, **kwargs)))
  return image.numpy(), label.numpy()


# --- decoding --------------------------------------------------------------------------------------------------


def test_decode_record_equals_opencv_and_pillow_on_all_sample_images(voc_sample, shards):
  files = input_pipeline.list_files(f"{shards['train']},{shards['val']}")
  seen = []
  for example in tf.data.TFRecordDataset(files).map(input_pipeline.decode_record):
    image_id = example["id"].numpy().decode()
    image, label = example["image"].numpy(), example["label"].numpy()
    assert image.dtype == np.uint8 and label.dtype == np.uint8
    np.testing.assert_array_equal(image, _source_rgb(voc_sample, image_id), err_msg=image_id)
    np.testing.assert_array_equal(label, _source_mask(voc_sample, image_id), err_msg=image_id)
    assert (int(example["height"]), int(example["width"])) == label.shape
    seen.append(image_id)
  assert sorted(seen) == sorted(_ids(voc_sample, "trainval"))


def test_png_images_decode_like_jpeg_ones(voc_sample, tmp_path):
  image_id = _ids(voc_sample, "val")[0]
  path = _one_record_file(tmp_path, voc_sample, image_id, image_format="png")
  example = input_pipeline.decode_record(next(iter(tf.data.TFRecordDataset(path))))
  np.testing.assert_array_equal(example["image"].numpy(), _source_rgb(voc_sample, image_id))


def test_palette_masks_are_refused_not_read_as_grey(voc_sample, tmp_path):
  path = _one_record_file(tmp_path, voc_sample, _ids(voc_sample, "val")[0], palette_mask=True)
  with pytest.raises(tf.errors.InvalidArgumentError, match="single-channel"):
    input_pipeline.decode_record(next(iter(tf.data.TFRecordDataset(path))))


# --- file patterns ---------------------------------------------------------------------------------------------


def test_a_pattern_matching_nothing_is_an_error_naming_it(shards, tmp_path):
  missing = str(tmp_path / "nothing-*.tfrecord")
  with pytest.raises(ValueError, match="nothing-"):
    input_pipeline.train_dataset(missing, batch_size=1)
  with pytest.raises(ValueError, match="nothing-"):
    input_pipeline.eval_dataset(f"{shards['val']},{missing}")


# --- evaluation ------------------------------------------------------------------------------------------------


def test_eval_yields_every_val_image_once_at_native_size(voc_sample, shards):
  seen = []
  for image, label, meta in input_pipeline.eval_dataset(shards["val"], with_metadata=True):
    image_id = meta["id"].numpy()[0].decode()
    assert image.dtype == tf.float32 and label.dtype == tf.int32
    np.testing.assert_array_equal(image.numpy()[0], _source_rgb(voc_sample, image_id).astype(np.float32))
    np.testing.assert_array_equal(label.numpy()[0], _source_mask(voc_sample, image_id))
    assert (int(meta["height"][0]), int(meta["width"][0])) == label.shape[1:]
    seen.append(image_id)
  assert sorted(seen) == sorted(_ids(voc_sample, "val"))


def test_eval_pad_to_pads_image_with_mean_and_label_with_ignore(voc_sample, shards):
  count = 0
  for images, labels, meta in input_pipeline.eval_dataset(shards["val"], batch_size=8, pad_to=513,
                                                          with_metadata=True):
    assert images.shape[1:] == (513, 513, 3) and labels.shape[1:] == (513, 513)
    for image, label, image_id, height, width in zip(images.numpy(), labels.numpy(), meta["id"].numpy(),
                                                     meta["height"].numpy(), meta["width"].numpy()):
      image_id = image_id.decode()
      np.testing.assert_array_equal(image[:height, :width], _source_rgb(voc_sample, image_id))
      np.testing.assert_array_equal(label[:height, :width], _source_mask(voc_sample, image_id))
      valid = np.zeros((513, 513), bool)
      valid[:height, :width] = True
      assert np.all(image[~valid] == 127.5) and np.all(label[~valid] == 255)
      count += 1
  assert count == 201


def test_eval_image_larger_than_pad_to_fails_naming_it(shards):
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"larger than pad_to[\s\S]*20\d\d_\d{6}"):
    for _ in input_pipeline.eval_dataset(shards["val"], pad_to=300):
      pass


def test_eval_at_natural_size_needs_batch_size_1(shards):
  with pytest.raises(ValueError, match="batch_size must be 1"):
    input_pipeline.eval_dataset(shards["val"], batch_size=2)


# --- training --------------------------------------------------------------------------------------------------


def test_train_batches_have_fixed_shapes_uint8_and_pixel_range(shards):
  images, labels = _first_batch(shards["train"], batch_size=4, seed=1)
  assert images.shape == (4, 513, 513, 3) and images.dtype == np.uint8
  assert labels.shape == (4, 513, 513) and labels.dtype == np.uint8
  assert images.max() > 1  # Raw pixels, not normalised.
  assert set(np.unique(labels)) <= set(range(voc.NUM_CLASSES)) | {255}


def test_uint8_train_batches_feed_the_model_loss_and_metrics_like_float32_int32(shards):
  """The model casts its input, the loss and metrics their labels: uint8 batches need no cast in the pipeline."""
  images, labels = _first_batch(shards["train"], batch_size=2, crop_size=65, seed=4)
  net = model.build_deeplabv3plus(alpha=0.35, aspp_rates=())
  logits = net(images, training=False).numpy()
  np.testing.assert_array_equal(logits, net(images.astype(np.float32), training=False).numpy())
  loss = losses.SegmentationLoss(voc.NUM_CLASSES)
  assert float(loss(labels, logits)) == pytest.approx(float(loss(labels.astype(np.int32), logits)))
  for metric in (metrics.MeanIoU, metrics.PixelAccuracy):
    with_uint8, with_int32 = metric(), metric()
    with_uint8.update_state(labels, logits)
    with_int32.update_state(labels.astype(np.int32), logits)
    assert float(with_uint8.result()) == pytest.approx(float(with_int32.result()))


def test_train_labels_are_resized_nearest_neighbour_only(voc_sample, tmp_path):
  """Random scales (up and down) never create a class id that the source mask does not hold."""
  for n, image_id in enumerate(_ids(voc_sample, "train")[:5]):
    path = _one_record_file(tmp_path, voc_sample, image_id)
    dataset = input_pipeline.train_dataset(path, batch_size=4, crop_size=257, seed=n, shuffle_buffer=0)
    allowed = set(np.unique(_source_mask(voc_sample, image_id))) | {255}
    for _, labels in dataset.take(3):
      assert set(np.unique(labels.numpy())) <= allowed, image_id


def _offset_of(crop: np.ndarray, reference: np.ndarray, tops: range, lefts: range) -> tuple[int, int]:
  """(top, left) of the window of `reference` that matches the crop's middle row (edge pixels left out)."""
  middle = crop[256, 1:-1]
  errors = []
  for top in tops:
    windows = np.lib.stride_tricks.sliding_window_view(reference[top + 256], len(middle), axis=0)
    errors.append(np.abs(windows.transpose(0, 2, 1)[[left + 1 for left in lefts]] - middle).max(axis=(1, 2)))
  row, column = np.unravel_index(np.argmin(errors), (len(tops), len(lefts)))
  return tops[row], lefts[column]


def test_train_scale_2_without_flip_is_a_crop_of_the_2x_upscaled_image(voc_sample, tmp_path):
  image_id = _ids(voc_sample, "train")[0]
  path = _one_record_file(tmp_path, voc_sample, image_id)
  source, mask = _source_rgb(voc_sample, image_id), _source_mask(voc_sample, image_id)
  height, width = 2 * mask.shape[0], 2 * mask.shape[1]
  upscaled = tf.image.resize(source.astype(np.float32), (height, width), method="bilinear").numpy()
  upscaled_mask = tf.image.resize(mask[..., None], (height, width), method="nearest").numpy()[..., 0]
  images, labels = _first_batch(path, batch_size=3, crop_size=512, min_scale=2.0, max_scale=2.0, flip=False,
                                seed=5, shuffle_buffer=0)
  offsets = set()
  for image, label in zip(images, labels):
    top, left = _offset_of(image, upscaled, range(0, height - 511, 2), range(0, width - 511, 2))
    offsets.add((top, left))
    # Bilinear taps beyond the source window are clamped to its edge: compare all but the crop's edge pixels.
    # uint8 output: rounded to the nearest level (truncation would be off by up to 1).
    np.testing.assert_allclose(image[1:-1, 1:-1], upscaled[top + 1:top + 511, left + 1:left + 511],
                               atol=0.5 + 1e-3)
    np.testing.assert_array_equal(label, upscaled_mask[top:top + 512, left:left + 512])
  assert len(offsets) > 1  # The crop really moves.


@pytest.mark.parametrize("image_format", ["jpeg", "png"])
def test_train_scale_half_pads_with_mean_pixel_and_ignore_label(voc_sample, tmp_path, image_format):
  image_id = _ids(voc_sample, "train")[0]
  path = _one_record_file(tmp_path, voc_sample, image_id, image_format=image_format)
  source, mask = _source_rgb(voc_sample, image_id), _source_mask(voc_sample, image_id)
  height, width = mask.shape[0] // 2, mask.shape[1] // 2
  expected_image = np.full((513, 513, 3), input_pipeline.TRAIN_PAD_PIXEL, np.float32)
  expected_image[:height, :width] = tf.image.resize(source.astype(np.float32), (height, width)).numpy()
  expected_label = np.full((513, 513), 255, np.int32)
  expected_label[:height, :width] = tf.image.resize(mask[..., None], (height, width), method="nearest")[..., 0]
  images, labels = _first_batch(path, batch_size=2, min_scale=0.5, max_scale=0.5, flip=False, seed=0)
  for image, label in zip(images, labels):
    np.testing.assert_allclose(image, expected_image, atol=0.5 + 1e-3)
    np.testing.assert_array_equal(label, expected_label)


def test_train_flips_half_of_the_crops_padding_and_all(voc_sample, tmp_path):
  image_id = _ids(voc_sample, "train")[1]
  path = _one_record_file(tmp_path, voc_sample, image_id)
  unflipped_image, unflipped_label = _first_batch(path, batch_size=1, min_scale=0.5, max_scale=0.5, flip=False)
  images, labels = _first_batch(path, batch_size=16, min_scale=0.5, max_scale=0.5, flip=True, seed=2,
                                shuffle_buffer=0)
  flips = []
  for image, label in zip(images, labels):
    flipped = not np.array_equal(label, unflipped_label[0])
    np.testing.assert_array_equal(label, unflipped_label[0][:, ::-1] if flipped else unflipped_label[0])
    # Flipped crops are resized from the flipped window: equal before rounding, so within 1 level after.
    expected = unflipped_image[0][:, ::-1] if flipped else unflipped_image[0]
    np.testing.assert_allclose(image.astype(np.int16), expected, atol=1)
    flips.append(flipped)
  assert 0 < sum(flips) < len(flips)


def test_photometric_jitter_changes_colours_not_padding(voc_sample, tmp_path):
  image_id = _ids(voc_sample, "train")[2]
  path = _one_record_file(tmp_path, voc_sample, image_id)
  options = dict(batch_size=4, min_scale=0.5, max_scale=0.5, flip=False, seed=3, shuffle_buffer=0)
  plain, labels = _first_batch(path, **options)
  jittered, jittered_labels = _first_batch(path, photometric=True, **options)
  np.testing.assert_array_equal(labels, jittered_labels)
  height, width = (n // 2 for n in _source_mask(voc_sample, image_id).shape)
  padding = np.ones((4, 513, 513), bool)
  padding[:, :height, :width] = False
  assert np.all(jittered[padding] == input_pipeline.TRAIN_PAD_PIXEL)
  assert np.abs(jittered.astype(np.int16) - plain)[~padding].mean() > 1.0


def test_deterministic_with_seed_repeats_batches_exactly(shards):
  def batches(seed):
    dataset = input_pipeline.train_dataset(shards["train"], batch_size=4, crop_size=129, seed=seed,
                                           deterministic=True, shuffle_buffer=64)
    return [(i.numpy(), l.numpy()) for i, l in dataset.take(3)]

  first, second, other = batches(7), batches(7), batches(8)
  for (image_a, label_a), (image_b, label_b) in zip(first, second):
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(label_a, label_b)
  assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))


# --- sharding over input pipelines -----------------------------------------------------------------------------


def _context(pipeline_id: int, num_pipelines: int = 2) -> tf.distribute.InputContext:
  return tf.distribute.InputContext(num_input_pipelines=num_pipelines, input_pipeline_id=pipeline_id,
                                    num_replicas_in_sync=num_pipelines)


def _eval_ids(file_pattern: str, **kwargs) -> list[str]:
  dataset = input_pipeline.eval_dataset(file_pattern, pad_to=513, batch_size=16, with_metadata=True, **kwargs)
  return [i.decode() for _, _, meta in dataset for i in meta["id"].numpy()]


def _train_record_ids(file_pattern: str, **kwargs) -> list[str]:
  """Ids of the records the training pipeline reads (its augmented crops carry no id)."""
  records = input_pipeline._records(input_pipeline.list_files(file_pattern), shuffle=True, deterministic=False,
                                    **kwargs)
  return [input_pipeline.decode_record(r)["id"].numpy().decode() for r in records]


@pytest.mark.parametrize("layout", ["3 shards: by file", "1 shard: by record"])
def test_input_pipelines_read_disjoint_parts_that_cover_everything(voc_sample, shards, tmp_path, layout):
  if layout.startswith("3"):
    pattern, expected = shards["val"], _ids(voc_sample, "val")
  else:
    expected = _ids(voc_sample, "val")[:40]
    pattern = _write_shards(tmp_path, "small", [_example(voc_sample, i) for i in expected], 1)
  for read in (_eval_ids, functools.partial(_train_record_ids, seed=None)):
    parts = [read(pattern, input_context=_context(i)) for i in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(expected)
    assert min(len(p) for p in parts) > 0
