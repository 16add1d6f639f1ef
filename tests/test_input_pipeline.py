"""The tf.data pipelines on records made from VOC-layout pairs: exact decoding, each eval image once, padding that
never scores, augmentation that really scales/flips with nearest-neighbour labels, sharding.

Every test runs on generated pairs (conftest's voc_data), so that a clone without ../shared covers the pipeline,
and again on the real VOC sample where ../shared is."""

import functools
import io
import math
import pathlib
import re

import cv2
import keras
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from contracts import schema
from contracts import voc
from deeplab import metrics
from deeplab import network
from deeplab import pixels
from deeplab import tfrecords
from tests.conftest import FLOAT32_STEP_NOISE
from tests.conftest import direction_and_size
from tests.conftest import is_voc_sample
from tests.conftest import same_step
from trainer import augment
from trainer import input_pipeline
from trainer import losses


def _ids(voc_dir: pathlib.Path, split: str) -> list[str]:
  return (voc_dir / voc.SPLIT_DIR / f"{split}.txt").read_text().split()


@functools.cache
def _source_rgb(voc_dir: pathlib.Path, image_id: str) -> np.ndarray:
  return cv2.cvtColor(cv2.imread(str(voc_dir / voc.IMAGE_DIR / f"{image_id}.jpg")), cv2.COLOR_BGR2RGB)


@functools.cache
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
  return schema.make_example(
    image=image, image_format=image_format, mask_png=mask, filename=image_id, height=height, width=width
  ).SerializeToString()


def _write_shards(directory: pathlib.Path, split: str, records: list[bytes], num_shards: int) -> str:
  for shard in range(num_shards):
    path = directory / f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
      for record in records[shard::num_shards]:
        writer.write(record)
  return str(directory / f"{split}-*.tfrecord")


@pytest.fixture(scope="module")
def shards(voc_data, tmp_path_factory) -> dict[str, str]:
  """train (2 shards) and val (3 shards) of the whole root: 311 and 201 records of the real sample, 16 and 8
  generated."""
  directory = tmp_path_factory.mktemp("records")
  return {
    split: _write_shards(directory, split, [_example(voc_data, i) for i in _ids(voc_data, split)], shards)
    for split, shards in (("train", 2), ("val", 3))
  }


def _one_record_file(directory: pathlib.Path, voc_dir: pathlib.Path, image_id: str, **kwargs) -> str:
  path = directory / f"{image_id}-{kwargs.get('image_format', 'jpeg')}.tfrecord"
  with tf.io.TFRecordWriter(str(path)) as writer:
    writer.write(_example(voc_dir, image_id, **kwargs))
  return str(path)


# --- decoding --------------------------------------------------------------------------------------------------


def test_decode_record_equals_opencv_and_pillow_on_all_sample_images(voc_data, shards):
  files = tfrecords.list_files(f"{shards['train']},{shards['val']}")
  seen = []
  for example in tf.data.TFRecordDataset(files).map(tfrecords.decode_record):
    image_id = example["id"].numpy().decode()
    image, label = example["image"].numpy(), example["label"].numpy()
    assert image.dtype == np.uint8 and label.dtype == np.uint8
    np.testing.assert_array_equal(image, _source_rgb(voc_data, image_id), err_msg=image_id)
    np.testing.assert_array_equal(label, _source_mask(voc_data, image_id), err_msg=image_id)
    assert (int(example["height"]), int(example["width"])) == label.shape
    seen.append(image_id)
  assert sorted(seen) == sorted(_ids(voc_data, "trainval"))


def test_png_images_decode_like_jpeg_ones(voc_data, tmp_path):
  image_id = _ids(voc_data, "val")[0]
  path = _one_record_file(tmp_path, voc_data, image_id, image_format="png")
  example = tfrecords.decode_record(next(iter(tf.data.TFRecordDataset(path))))
  np.testing.assert_array_equal(example["image"].numpy(), _source_rgb(voc_data, image_id))


def test_palette_masks_are_refused_not_read_as_grey(voc_data, tmp_path):
  path = _one_record_file(tmp_path, voc_data, _ids(voc_data, "val")[0], palette_mask=True)
  with pytest.raises(tf.errors.InvalidArgumentError, match="single-channel"):
    tfrecords.decode_record(next(iter(tf.data.TFRecordDataset(path))))


# --- file patterns ---------------------------------------------------------------------------------------------


def test_a_pattern_matching_nothing_is_an_error_naming_it(shards, tmp_path):
  missing = str(tmp_path / "nothing-*.tfrecord")
  with pytest.raises(ValueError, match="nothing-"):
    input_pipeline.train_dataset(missing, batch_size=1)
  with pytest.raises(ValueError, match="nothing-"):
    tfrecords.eval_dataset(f"{shards['val']},{missing}")


# --- evaluation ------------------------------------------------------------------------------------------------


def test_eval_yields_every_val_image_once_at_native_size(voc_data, shards):
  seen = []
  for image, label, meta in tfrecords.eval_dataset(shards["val"], with_metadata=True):
    image_id = meta["id"].numpy()[0].decode()
    assert image.dtype == tf.float32 and label.dtype == tf.int32
    np.testing.assert_array_equal(image.numpy()[0], _source_rgb(voc_data, image_id).astype(np.float32))
    np.testing.assert_array_equal(label.numpy()[0], _source_mask(voc_data, image_id))
    assert (int(meta["height"][0]), int(meta["width"][0])) == label.shape[1:]
    seen.append(image_id)
  assert sorted(seen) == sorted(_ids(voc_data, "val"))


def test_eval_pad_to_pads_image_with_mean_and_label_with_ignore(voc_data, shards):
  count = 0
  for images, labels, meta in tfrecords.eval_dataset(shards["val"], batch_size=8, pad_to=513, with_metadata=True):
    assert images.shape[1:] == (513, 513, 3) and labels.shape[1:] == (513, 513)
    for image, label, image_id, height, width in zip(
      images.numpy(), labels.numpy(), meta["id"].numpy(), meta["height"].numpy(), meta["width"].numpy(), strict=True
    ):
      image_id = image_id.decode()
      np.testing.assert_array_equal(image[:height, :width], _source_rgb(voc_data, image_id))
      np.testing.assert_array_equal(label[:height, :width], _source_mask(voc_data, image_id))
      valid = np.zeros((513, 513), bool)
      valid[:height, :width] = True
      assert np.all(image[~valid] == 127.5) and np.all(label[~valid] == 255)
      count += 1
  assert count == len(_ids(voc_data, "val"))
  if is_voc_sample(voc_data):
    assert count == 201


def test_eval_image_larger_than_pad_to_fails_naming_it(voc_data, shards):
  """300 for the real photos (500 pixels at most), less than the first image's longer side for generated ones; the
  error names one of the val images that do not fit."""
  ids = _ids(voc_data, "val")
  pad_to = min(300, max(_source_mask(voc_data, ids[0]).shape) - 1)
  too_large = [i for i in ids if max(_source_mask(voc_data, i).shape) > pad_to]
  with pytest.raises(
    tf.errors.InvalidArgumentError, match=rf"larger than pad_to[\s\S]*({'|'.join(map(re.escape, too_large))})"
  ):
    for _ in tfrecords.eval_dataset(shards["val"], pad_to=pad_to):
      pass


def test_eval_at_natural_size_needs_batch_size_1(shards):
  with pytest.raises(ValueError, match="batch_size must be 1"):
    tfrecords.eval_dataset(shards["val"], batch_size=2)


# --- training ---------------------------------------------------------------------------------------------------


def _draws(geometry: augment.Geometry) -> list[augment.Geometry]:
  """A batch's Geometry as one Geometry of numpy values per element."""
  fields = [np.asarray(field) for field in geometry]
  return [augment.Geometry(*(field[i] for field in fields)) for i in range(len(fields[0]))]


def _reference_crop(source: np.ndarray, mask: np.ndarray, draw: augment.Geometry, crop: int):
  """research/deeplab's order, written plainly: resize the whole image (bilinear) and mask (nearest) to the scaled
  size, pad bottom/right to the crop (mean pixel, 255), crop at the offset, flip."""
  (scaled_h, scaled_w), (top, left), flipped = (int(v) for v in draw.scaled_size), draw.offset, bool(draw.flip)
  image = tf.image.resize(source.astype(np.float32), (scaled_h, scaled_w)).numpy()
  label = tf.image.resize(mask[..., None], (scaled_h, scaled_w), method="nearest").numpy()[..., 0]
  height, width = max(scaled_h, crop), max(scaled_w, crop)
  padded_image = np.full((height, width, 3), 127.5, np.float32)
  padded_label = np.full((height, width), 255, np.uint8)
  padded_image[:scaled_h, :scaled_w], padded_label[:scaled_h, :scaled_w] = image, label
  image, label = padded_image[top : top + crop, left : left + crop], padded_label[top : top + crop, left : left + crop]
  return (image[:, ::-1], label[:, ::-1]) if flipped else (image, label)


def _crops(batch, crop: int):
  canvases, labels = batch
  images, labels = augment.crops_of((crop, crop))(canvases, labels)
  return images.numpy(), labels.numpy(), _draws(canvases.geometry)


def test_train_batches_are_uint8_canvases_with_geometry(voc_data, shards):
  """What crosses to the accelerator: each decoded picture, exact, at the top-left of a padded canvas."""
  dataset = input_pipeline.train_dataset(shards["train"], batch_size=4, seed=1, canvas_size=512, repeat=False)
  batch = next(iter(dataset))
  assert isinstance(batch, tfrecords.Batch) and isinstance(batch.images, augment.Canvases)
  images, labels, geometry = batch.images.images.numpy(), batch.labels.numpy(), batch.images.geometry
  assert images.shape == (4, 512, 512, 3) and images.dtype == np.uint8
  assert labels.shape == (4, 512, 512) and labels.dtype == np.uint8
  assert [tuple(field.shape) for field in geometry] == [(4, 2), (4, 2), (4, 2), (4,)]
  assert [field.dtype for field in geometry] == [tf.int32, tf.int32, tf.int32, tf.bool]
  sources = {_source_mask(voc_data, i).tobytes(): i for i in _ids(voc_data, "train")}
  for image, label, (height, width) in zip(images, labels, geometry.canvas_size.numpy(), strict=True):
    image_id = sources[label[:height, :width].tobytes()]  # The mask identifies the picture.
    np.testing.assert_array_equal(image[:height, :width], _source_rgb(voc_data, image_id))
    assert np.all(image[height:] == pixels.MEAN_PIXEL_UINT8) and np.all(label[:, width:] == 255)


def test_train_crops_are_the_reference_resize_pad_crop_flip(voc_data, shards):
  """Every random draw over 48 images: the same pixels as scaling the whole image and mask, padding,
  cropping and flipping them (float rounding apart), and the draws cover scales, offsets and flips.

  VOC's 513 crop for the real photos, 65 for the ~100-pixel generated ones: either way some scaled pictures are
  larger than the crop (random offsets) and some smaller (padding)."""
  crop = 513 if is_voc_sample(voc_data) else 65
  dataset = input_pipeline.train_dataset(shards["train"], batch_size=8, crop_size=crop, seed=3, canvas_size=512)
  sources = {_source_mask(voc_data, i).tobytes(): i for i in _ids(voc_data, "train")}
  draws = []
  for batch in dataset.take(6):
    canvases = batch[1].numpy()
    images, labels, geometry = _crops(batch, crop)
    for canvas, image, label, draw in zip(canvases, images, labels, geometry, strict=True):
      height, width = draw.canvas_size
      image_id = sources[canvas[:height, :width].tobytes()]
      expected_image, expected_label = _reference_crop(
        _source_rgb(voc_data, image_id), _source_mask(voc_data, image_id), draw, crop
      )
      # tf.image.resize's kernel and our gathers blend the same taps of values <= 255 in another order: a few float32
      # ulps of 255 (~1e-4) apart; a tap or offset off by one moves pixels by whole levels.
      np.testing.assert_allclose(image, expected_image, atol=1e-3, err_msg=image_id)
      # Exact: both take the label at floor((y + 0.5) x size / scaled size), the same IEEE float32 operations.
      np.testing.assert_array_equal(label, expected_label, err_msg=image_id)
      draws.append(draw)
  scales = np.array([draw.scaled_size[0] / draw.canvas_size[0] for draw in draws])
  assert scales.min() < 0.8 and scales.max() > 1.6
  assert len(np.unique(scales.round(2))) > len(draws) // 2  # Drawn per batch, but each image its own.
  assert 0 < sum(bool(draw.flip) for draw in draws) < len(draws)
  assert len({tuple(draw.offset) for draw in draws}) > len(draws) // 2


def test_the_train_step_crops_on_the_device_as_on_the_host(shards):
  """SegmentationModel.train_step on Batch(Canvases(canvases, geometry), labels) makes the same update as a step on
  crops made beforehand: the geometry is applied, to the crop size the trainer gives the model (crop_on_device), which
  its config does not carry. A step on crops one pixel to the side does not."""
  batch = next(iter(input_pipeline.train_dataset(shards["train"], batch_size=2, crop_size=65, seed=4)))
  images, labels = augment.crops_of((65, 65))(*batch)
  canvases, canvas_labels = batch
  geometry = canvases.geometry._replace(offset=canvases.geometry.offset + [0, 1])
  one_pixel_off = (augment.Canvases(canvases.images, geometry), canvas_labels)
  steps = []
  for data in (batch, (images, labels), one_pixel_off):
    keras.utils.set_random_seed(0)
    net = network.build_deeplabv3plus(alpha=0.35, aspp_rates=(), freeze_backbone_bn=False)
    assert "train_crop_size" not in net.get_config()
    miou = metrics.MeanIoU(voc.NUM_CLASSES)
    net.compile(optimizer=keras.optimizers.SGD(0.1), loss=losses.SegmentationLoss(voc.NUM_CLASSES), metrics=[miou])
    if isinstance(data[0], augment.Canvases):
      augment.crop_on_device(net, (65, 65))
    before = [w.numpy().copy() for w in net.trainable_weights]
    loss = net.train_on_batch(*data, return_dict=True)["loss"]
    update = np.concatenate([np.ravel(w.numpy() - old) for w, old in zip(net.trainable_weights, before, strict=True)])
    steps.append((loss, miou.confusion_matrix(), update))
  (loss, confusion, update), (host_loss, host_confusion, host_update), (_, _, off_update) = steps
  # The crop is the same float32 ops (gathers, a multiply and an add per tap) in both graphs: bit-identical on this
  # CPU. Were some pixel to round otherwise on another, the forward pass would carry it to ~1e-7 of the loss (1e-5
  # is 100x that); only pixels whose top two logits tie within rounding (< 0.1%, conftest.TIE) could change class in
  # the metric, each moving one count; and the update would move by no more than rounding noise
  # (conftest.FLOAT32_STEP_NOISE), where crops one pixel off give an unrelated update (cosine ~0).
  assert loss == pytest.approx(host_loss, rel=1e-5)
  assert confusion.sum() == host_confusion.sum() == int((labels.numpy() != voc.IGNORE_LABEL).sum())
  assert np.abs(confusion - host_confusion).sum() <= 2 * math.ceil(1e-3 * confusion.sum())
  assert same_step(update, host_update, FLOAT32_STEP_NOISE), direction_and_size(update, host_update)
  assert not same_step(off_update, host_update, FLOAT32_STEP_NOISE), direction_and_size(off_update, host_update)


def test_scale_crop_flip_compiles_with_xla_for_tpus(shards):
  batch = next(iter(input_pipeline.train_dataset(shards["train"], batch_size=2, crop_size=97, seed=5)))
  compiled = tf.function(augment.crops_of((97, 97)), jit_compile=True)(*batch)
  eager = augment.crops_of((97, 97))(*batch)
  # Pixel values <= 255 blended by float32 weights: XLA may fuse a multiply-add or round a tap's weight otherwise,
  # a few ulps of 255 (~1e-4); 1e-2 is slack for that, where a wrong tap or offset moves pixels by whole levels.
  np.testing.assert_allclose(compiled[0], eager[0], atol=1e-2)
  # Exact: labels are gathered (no arithmetic on them) at floor(position x ratio), one IEEE-rounded product that
  # both compilations round alike.
  np.testing.assert_array_equal(compiled[1], eager[1])


def test_uint8_canvases_feed_the_model_loss_and_metrics_like_float32_int32(shards):
  """The model casts its input, the loss and metrics their labels: uint8 batches need no cast in the pipeline."""
  canvases, labels = next(iter(input_pipeline.train_dataset(shards["train"], batch_size=2, canvas_size=64, seed=4)))
  images, labels = canvases.images.numpy(), labels.numpy()
  net = network.build_deeplabv3plus(alpha=0.35, aspp_rates=())
  logits = net(images, training=False).numpy()
  # Exact: the model's first op casts to float32 (exact for uint8), then the same kernels run on the same numbers.
  np.testing.assert_array_equal(logits, net(images.astype(np.float32), training=False).numpy())
  loss = losses.SegmentationLoss(voc.NUM_CLASSES)
  assert float(loss(labels, logits)) == pytest.approx(float(loss(labels.astype(np.int32), logits)))
  for metric in (metrics.MeanIoU, metrics.PixelAccuracy):
    with_uint8, with_int32 = metric(), metric()
    with_uint8.update_state(labels, logits)
    with_int32.update_state(labels.astype(np.int32), logits)
    assert float(with_uint8.result()) == pytest.approx(float(with_int32.result()))


def test_train_labels_are_resized_nearest_neighbour_only(voc_data, tmp_path):
  """Random scales (up and down) never create a class id that the source mask does not hold."""
  for n, image_id in enumerate(_ids(voc_data, "train")[:5]):
    path = _one_record_file(tmp_path, voc_data, image_id)
    dataset = input_pipeline.train_dataset(path, batch_size=4, crop_size=257, seed=n, shuffle_buffer=0)
    allowed = set(np.unique(_source_mask(voc_data, image_id))) | {255}
    for batch in dataset.take(3):
      assert set(np.unique(_crops(batch, 257)[1])) <= allowed, image_id


@pytest.mark.parametrize("image_format", ["jpeg", "png"])
def test_train_scale_half_pads_with_mean_pixel_and_ignore_label(voc_data, tmp_path, image_format):
  image_id = _ids(voc_data, "train")[0]
  path = _one_record_file(tmp_path, voc_data, image_id, image_format=image_format)
  source, mask = _source_rgb(voc_data, image_id), _source_mask(voc_data, image_id)
  height, width = mask.shape[0] // 2, mask.shape[1] // 2
  expected_image = np.full((513, 513, 3), pixels.MEAN_PIXEL, np.float32)
  expected_image[:height, :width] = tf.image.resize(source.astype(np.float32), (height, width)).numpy()
  expected_label = np.full((513, 513), 255, np.int32)
  expected_label[:height, :width] = tf.image.resize(mask[..., None], (height, width), method="nearest")[..., 0]
  dataset = input_pipeline.train_dataset(path, batch_size=2, min_scale=0.5, max_scale=0.5, flip=False, seed=0)
  images, labels, _ = _crops(next(iter(dataset)), 513)
  for image, label in zip(images, labels, strict=True):
    np.testing.assert_allclose(image, expected_image, atol=1e-3)  # As in the random crops' test: float32 ulps of 255.
    np.testing.assert_array_equal(label, expected_label)


def test_images_larger_than_the_canvas_are_shrunk_to_fit_it(voc_data, tmp_path):
  """A photo on a canvas half its longer side (a 500-pixel photo on 250, cropped to 321): the picture is halved on
  the host, its scale still counts from its own size."""
  image_id = _ids(voc_data, "train")[0]
  path = _one_record_file(tmp_path, voc_data, image_id)
  mask = _source_mask(voc_data, image_id)
  canvas, crop = max(mask.shape) // 2, max(mask.shape) * 321 // 500
  dataset = input_pipeline.train_dataset(
    path, batch_size=2, crop_size=crop, canvas_size=canvas, min_scale=0.5, max_scale=0.5, flip=False, seed=0
  )
  batch = next(iter(dataset))
  canvases, geometry = batch.images.images.numpy(), _draws(batch.images.geometry)
  factor = min(canvas / n for n in mask.shape)
  shrunk = [int(n * factor) for n in mask.shape]
  np.testing.assert_array_equal(
    np.concatenate([geometry[0].canvas_size, geometry[0].scaled_size]), shrunk + [n // 2 for n in mask.shape]
  )
  assert canvases.shape[1:3] == (canvas, canvas)
  images, labels, _ = _crops(batch, crop)
  expected_image, expected_label = _reference_crop(_source_rgb(voc_data, image_id), mask, geometry[0], crop)
  assert np.abs(images[0] - expected_image).mean() < 4.0  # Shrunk then scaled: close to scaled once.
  assert set(np.unique(labels)) <= set(np.unique(mask)) | {255}
  assert (labels[0] == expected_label).mean() > 0.95


def test_photometric_jitter_changes_colours_not_padding_or_labels(voc_data, tmp_path):
  image_id = _ids(voc_data, "train")[2]
  path = _one_record_file(tmp_path, voc_data, image_id)
  options = dict(batch_size=4, min_scale=0.5, max_scale=0.5, flip=False, seed=3, shuffle_buffer=0)
  plain, labels, _ = _crops(next(iter(input_pipeline.train_dataset(path, **options))), 513)
  jittered, jittered_labels, _ = _crops(
    next(iter(input_pipeline.train_dataset(path, photometric=True, **options))), 513
  )
  np.testing.assert_array_equal(labels, jittered_labels)
  height, width = (n // 2 for n in _source_mask(voc_data, image_id).shape)
  padding = np.ones((4, 513, 513), bool)
  padding[:, :height, :width] = False
  assert np.all(jittered[padding] == pixels.MEAN_PIXEL)
  assert np.abs(jittered - plain)[~padding].mean() > 1.0


def test_deterministic_with_seed_repeats_batches_exactly(shards):
  def batches(seed):
    dataset = input_pipeline.train_dataset(
      shards["train"], batch_size=4, crop_size=129, seed=seed, deterministic=True, shuffle_buffer=64
    )
    return [
      (
        canvases.images.numpy(),
        labels.numpy(),
        np.concatenate([np.reshape(field, [4, -1]) for field in canvases.geometry], 1),
      )
      for canvases, labels in dataset.take(3)
    ]

  first, second, other = batches(7), batches(7), batches(8)
  for batch_a, batch_b in zip(first, second, strict=True):
    for a, b in zip(batch_a, batch_b, strict=True):
      np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a[2], b[2]) for a, b in zip(first, other, strict=True))


# --- sharding over input pipelines -----------------------------------------------------------------------------


def _context(pipeline_id: int, num_pipelines: int = 2) -> tf.distribute.InputContext:
  return tf.distribute.InputContext(
    num_input_pipelines=num_pipelines, input_pipeline_id=pipeline_id, num_replicas_in_sync=num_pipelines
  )


def _eval_ids(file_pattern: str, **kwargs) -> list[str]:
  dataset = tfrecords.eval_dataset(file_pattern, pad_to=513, batch_size=16, with_metadata=True, **kwargs)
  return [i.decode() for _, _, meta in dataset for i in meta["id"].numpy()]


def _train_record_ids(file_pattern: str, **kwargs) -> list[str]:
  """Ids of the records the training pipeline reads (its augmented crops carry no id)."""
  serialized = tfrecords.serialized_records(
    tfrecords.list_files(file_pattern), shuffle=True, deterministic=False, **kwargs
  )
  return [tfrecords.decode_record(r)["id"].numpy().decode() for r in serialized]


@pytest.mark.parametrize("layout", ["3 shards: by file", "1 shard: by record"])
def test_input_pipelines_read_disjoint_parts_that_cover_everything(voc_data, shards, tmp_path, layout):
  if layout.startswith("3"):
    pattern, expected = shards["val"], _ids(voc_data, "val")
  else:
    expected = _ids(voc_data, "val")[:40]
    pattern = _write_shards(tmp_path, "small", [_example(voc_data, i) for i in expected], 1)
  for read in (_eval_ids, functools.partial(_train_record_ids, seed=None)):
    parts = [read(pattern, input_context=_context(i)) for i in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(expected)
    assert min(len(p) for p in parts) > 0
