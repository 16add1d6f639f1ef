"""tf.data input pipelines over DeepLab-schema TFRecords (see `contracts/schema.py`).

Images are RGB [B, h, w, 3] with raw pixel values in [0, 255] (the model normalises), labels [B, h, w] class ids
with 255 = ignore, which never counts in a loss or a metric.
- Evaluation yields (image, label), float32 images and int32 labels padded with 127.5 (the mean pixel, which the
  model normalises to 0).
- Training yields ({"image": images, "geometry": geometry}, labels): uint8 canvases, each holding one decoded
  picture, and each picture's random scale, crop and flip, which the train step applies on the accelerator
  (trainer/augment.py).
  uint8 is a quarter of the bytes to batch and to send; the model, the loss and the metrics cast.

`batch_size` is the PER-REPLICA batch whenever an `input_context` is given: the caller divides the global batch
(`input_context.get_per_replica_batch_size`), as `tf.distribute` expects of `distribute_datasets_from_function`.

Sharding over input pipelines (workers): by FILE when there are at least as many files as pipelines (each
worker reads only its own shards: no wasted I/O), else by RECORD (every worker reads every file and keeps every
n-th record, in a fixed order so that the workers' parts are disjoint and cover everything).

JPEGs are decoded with libjpeg's accurate integer IDCT ("INTEGER_ACCURATE", libjpeg's JDCT_ISLOW), the method
OpenCV and Pillow use: TF's default ("" = INTEGER_FAST, JDCT_IFAST) differs by up to 24 levels on VOC images,
ISLOW is pixel-identical to `cv2.imread` on all 512 images of our sample (tested).
"""

import numbers
import random
from collections.abc import Sequence

import tensorflow as tf

from contracts import schema
from contracts import voc
from trainer import augment

TRAIN_PAD_PIXEL = 128  # MEAN_PIXEL in uint8 (rounded half up); augment.scale_crop_flip pads crops with MEAN_PIXEL.
JPEG_DCT_METHOD = "INTEGER_ACCURATE"

# Photometric jitter, mild (and clipped to [0, 255]): brightness in pixel units, hue as a fraction of the circle.
BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.8, 1.25)
SATURATION_RANGE = (0.8, 1.25)
HUE_DELTA = 0.04

AUTOTUNE = tf.data.AUTOTUNE


def list_files(file_pattern: str) -> list[str]:
  """Files matching a glob or comma-separated globs (local or gs://), sorted; every glob must match something."""
  patterns = [p.strip() for p in file_pattern.split(",") if p.strip()]
  if not patterns:
    raise ValueError(f"empty file pattern {file_pattern!r}")
  files = set()
  for pattern in patterns:
    matched = tf.io.gfile.glob(pattern)
    if not matched:
      raise ValueError(f"no file matches {pattern!r}" + (f" (in {file_pattern!r})" if pattern != file_pattern else ""))
    files.update(matched)
  return sorted(files)


def _pipeline_position(input_context: tf.distribute.InputContext | None) -> tuple[int, int]:
  if input_context is None:
    return 1, 0
  return input_context.num_input_pipelines, input_context.input_pipeline_id


def _records(files: list[str], *, input_context, shuffle: bool, seed: int | None,
             deterministic: bool) -> tf.data.Dataset:
  """Serialized records of this input pipeline's share of `files` (see the module docstring on sharding)."""
  num_pipelines, pipeline_id = _pipeline_position(input_context)
  shard_files = num_pipelines > 1 and len(files) >= num_pipelines
  shard_records = num_pipelines > 1 and not shard_files
  dataset = tf.data.Dataset.from_tensor_slices(files)
  if shard_files:
    dataset = dataset.shard(num_pipelines, pipeline_id)
  if shuffle and not shard_records:  # Record sharding needs the same file order on every worker.
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.interleave(
      tf.data.TFRecordDataset, cycle_length=min(len(files), 16), block_length=1, num_parallel_calls=AUTOTUNE,
      deterministic=True if shard_records else deterministic)
  if shard_records:
    dataset = dataset.shard(num_pipelines, pipeline_id)
  return dataset


def _record_id(filename: tf.Tensor) -> tf.Tensor:
  """'JPEGImages/2007_000032.jpg' -> '2007_000032' (DeepLab's own converter stores the bare id already)."""
  return tf.strings.regex_replace(filename, r"^.*/|\.(jpe?g|JPE?G|png|PNG)$", "")


def _decode_mask(encoded: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W] class ids from a single-channel PNG (DeepLab's format).

  A palette PNG (VOC's SegmentationClass as distributed) decodes to colours, whose grey values are not class ids:
  it fails here instead of training on garbage.
  """
  mask = tf.io.decode_png(encoded, channels=0)
  check = tf.debugging.assert_equal(
      tf.shape(mask)[2], 1, message="the segmentation mask PNG must be single-channel class ids, not a palette "
                                    "or colour image (convert VOC masks with Pillow: np.asarray(Image.open(p)))")
  with tf.control_dependencies([check]):
    return mask[:, :, 0]


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] RGB from JPEG (as OpenCV decodes it) or PNG bytes; grey images come out as 3 equal channels."""
  return tf.cond(tf.io.is_jpeg(encoded),
                 lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method=JPEG_DCT_METHOD),
                 lambda: tf.io.decode_png(encoded, channels=3))


def decode_record(serialized) -> dict:
  """One serialized record -> {"image": uint8 [H,W,3], "label": uint8 [H,W], "id": string, "height", "width"}.

  height/width (int32) come from the decoded image, not from the record's (optional) fields.
  """
  features = schema.parse_example(serialized)
  image = decode_image(features[schema.IMAGE_ENCODED])
  label = _decode_mask(features[schema.MASK_ENCODED])
  shape = tf.shape(image)
  return {"image": image, "label": label, "id": _record_id(features[schema.IMAGE_FILENAME]),
          "height": shape[0], "width": shape[1]}


def size_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
  """An int or (height, width) as (height, width), both positive."""
  pair = (value, value) if isinstance(value, numbers.Integral) else tuple(value)
  if len(pair) != 2 or min(pair) < 1:
    raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")
  return int(pair[0]), int(pair[1])


# ---------------------------------------------------------------------------------------------------------------
# Training: decode into a canvas and draw the geometry here; scale, pad, crop and flip in the train step
# (trainer/augment.py, on the accelerator), where the resampling costs next to nothing. Per image, this side
# costs the decoding plus the copy into the batch; see benchmarks/input_throughput.py.
# ---------------------------------------------------------------------------------------------------------------


def _fit_canvas(image: tf.Tensor, label: tf.Tensor, canvas: tuple[int, int]):
  """Images larger than the canvas are shrunk to fit it (image area-averaged, label nearest neighbour): a cost
  paid on the host, only for them. The geometry's scale stays relative to the source size."""
  size = tf.shape(label)
  fits = tf.reduce_all(size <= canvas)

  def shrink():
    factor = tf.reduce_min(tf.constant(canvas, tf.float32) / tf.cast(size, tf.float32))
    new_size = tf.minimum(tf.maximum(tf.cast(tf.cast(size, tf.float32) * factor, tf.int32), 1), canvas)
    small = tf.image.resize(image, new_size, method="area")
    small_label = tf.image.resize(label[..., tf.newaxis], new_size, method="nearest")[..., 0]
    return tf.cast(tf.round(small), tf.uint8), small_label

  return tf.cond(fits, lambda: (image, label), shrink)


def _photometric(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Mild colour jitter of the uint8 picture (before padding, so that the padding stays at the mean pixel)."""
  seeds = tf.random.experimental.stateless_split(seed, 4)
  image = tf.cast(image, tf.float32)
  image = tf.image.stateless_random_brightness(image, BRIGHTNESS_DELTA, seeds[0])
  image = tf.image.stateless_random_contrast(image, *CONTRAST_RANGE, seeds[1])
  image = tf.image.stateless_random_saturation(image, *SATURATION_RANGE, seeds[2])
  image = tf.image.stateless_random_hue(image, HUE_DELTA, seeds[3])
  return tf.cast(tf.clip_by_value(image, 0.0, 255.0) + 0.5, tf.uint8)


def _prepare_record(serialized: tf.Tensor, photometric_seed: tf.Tensor | None, *, canvas: tuple[int, int]):
  """serialized record -> (uint8 image [h, w, 3], uint8 label [h, w], int32 sizes [4]), h, w <= canvas.

  sizes: the source (height, width), then the (height, width) on the canvas, for `augment.draw_geometry`.
  """
  example = decode_record(serialized)  # Its unused outputs (id) are pruned from the traced map function.
  image, label = _fit_canvas(example["image"], example["label"], canvas)
  if photometric_seed is not None:
    image = _photometric(image, photometric_seed)
  return image, label, tf.concat([tf.stack([example["height"], example["width"]]), tf.shape(label)], 0)


def train_dataset(file_pattern: str, *, batch_size: int, crop_size: int | tuple[int, int] = 513,
                  canvas_size: int | tuple[int, int] = 512, min_scale: float = 0.5, max_scale: float = 2.0,
                  flip: bool = True, photometric: bool = False, shuffle_buffer: int = 512, seed: int | None = None,
                  deterministic: bool = False, input_context: tf.distribute.InputContext | None = None,
                  repeat: bool = True) -> tf.data.Dataset:
  """Training batches ({"image": images, "geometry": geometry}, labels) to be scaled, cropped and flipped in the
  train step, forever unless repeat=False.

  images uint8 [batch_size, canvas_h, canvas_w, 3] and labels uint8 [batch_size, canvas_h, canvas_w]: each
  picture at the top-left of its canvas (padding TRAIN_PAD_PIXEL and 255), shrunk on the host only if larger
  than the canvas (set canvas_size to your largest image side to avoid that); geometry float32
  [batch_size, augment.GEOMETRY_SIZE]: each element's random scale, crop offset and flip for crop_size.
  `augment.scale_crop_flip(images, labels, geometry, crop)` turns a batch into crops; `model.SegmentationModel`
  does so in its train step, and `.map(augment.crops_of(crop))` of it here gives crops on the host.

  `batch_size` is per replica when `input_context` is given (sharding: see the module docstring). Partial
  batches are dropped (static shapes).
  `deterministic=True` with a `seed` yields identical batches run after run (at some cost in speed); otherwise the
  order of elements may vary with thread timing. Every random draw is a stateless function of (seed, input
  pipeline, batch index, place in the batch), so the augmentation never depends on timing.
  """
  crop = size_pair(crop_size, "crop_size")
  canvas = size_pair(canvas_size, "canvas_size")
  if not 0 < min_scale <= max_scale:
    raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  files = list_files(file_pattern)
  if seed is None:
    seed = random.SystemRandom().randrange(2**31)
  _, pipeline_id = _pipeline_position(input_context)

  dataset = _records(files, input_context=input_context, shuffle=True, seed=seed, deterministic=deterministic)
  if shuffle_buffer > 1:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    dataset = dataset.repeat()
  photometric_seeds, geometry_seeds = tf.unstack(
      tf.random.experimental.stateless_split(tf.constant([seed, pipeline_id], tf.int64), 2))

  if photometric:  # Per image, before padding, so that the padding stays at the mean pixel.
    dataset = dataset.enumerate().map(
        lambda index, serialized: _prepare_record(
            serialized, tf.random.experimental.stateless_fold_in(photometric_seeds, index), canvas=canvas),
        num_parallel_calls=AUTOTUNE)
  else:
    dataset = dataset.map(lambda serialized: _prepare_record(serialized, None, canvas=canvas),
                          num_parallel_calls=AUTOTUNE)
  # One copy per picture, straight into the padded batch.
  dataset = dataset.padded_batch(
      batch_size, padded_shapes=([canvas[0], canvas[1], 3], [canvas[0], canvas[1]], [4]),
      padding_values=(tf.constant(TRAIN_PAD_PIXEL, tf.uint8), tf.constant(voc.IGNORE_LABEL, tf.uint8), 0),
      drop_remainder=True)

  def draw_geometry(index, batch):
    images, labels, sizes = batch
    geometry = augment.draw_geometry(sizes[:, :2], sizes[:, 2:], tf.random.experimental.stateless_fold_in(
        geometry_seeds, index), crop=crop, min_scale=min_scale, max_scale=max_scale, flip=flip)
    return {"image": images, "geometry": geometry}, labels

  dataset = dataset.enumerate().map(draw_geometry)
  options = tf.data.Options()
  options.deterministic = deterministic
  return dataset.with_options(options).prefetch(AUTOTUNE)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation: full images, in file order, each once.
# ---------------------------------------------------------------------------------------------------------------


def _to_model_dtypes(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  return tf.cast(image, tf.float32), tf.cast(label, tf.int32)


def _pad_eval(image: tf.Tensor, label: tf.Tensor, example: dict, size: tuple[int, int]):
  height, width = example["height"], example["width"]
  check = tf.debugging.Assert(
      tf.logical_and(height <= size[0], width <= size[1]),
      ["eval image larger than pad_to", size[0], size[1], "id", example["id"], "height", height, "width", width])
  with tf.control_dependencies([check]):
    paddings = [[0, size[0] - height], [0, size[1] - width]]
    image = tf.pad(image, paddings + [[0, 0]], constant_values=augment.MEAN_PIXEL)
    label = tf.pad(label, paddings, constant_values=voc.IGNORE_LABEL)
  image.set_shape([size[0], size[1], 3])
  label.set_shape([size[0], size[1]])
  return image, label


def eval_dataset(file_pattern: str, *, batch_size: int = 1, pad_to: int | tuple[int, int] | None = None,
                 input_context: tf.distribute.InputContext | None = None,
                 with_metadata: bool = False, fixed_shape_replicas: int = 0) -> tf.data.Dataset:
  """Unaugmented (image, label[, meta]) batches, every record exactly once, in a fixed order.

  pad_to=None: images at their natural size, so batch_size must be 1. pad_to=N (or (h, w)): padded at the
  bottom/right to NxN (image 127.5, label 255, never scored); an image larger than that fails the iteration with
  an error naming its id and size (the DeepLab VOC eval size 513 holds every VOC image, which are <= 500x500).
  `batch_size` is per replica when `input_context` is given. meta = {"id", "height", "width"} of the images.
  fixed_shape_replicas=R (TPUs; needs pad_to): every batch full and a multiple of R batches, the end filled
  with void images (label 255 everywhere, never scored), so that each of the pipeline's R replicas runs the
  same number of steps on batches of one shape; with several input pipelines, each of them the same number of
  batches. The void images count in the loss's batch average (as zeros), not in any metric.
  """
  if pad_to is None and batch_size != 1:
    raise ValueError(f"eval_dataset without pad_to yields images of different sizes: batch_size must be 1, "
                     f"got {batch_size} (or give pad_to)")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  size = None if pad_to is None else size_pair(pad_to, "pad_to")
  num_pipelines, pipeline_id = _pipeline_position(input_context)
  # Fixed shapes over several pipelines: every pipeline reads all records, and takes its share of them after the
  # filling, so that all run the same number of batches.
  share_after_filling = bool(fixed_shape_replicas) and num_pipelines > 1
  dataset = _records(list_files(file_pattern), input_context=None if share_after_filling else input_context,
                     shuffle=False, seed=None, deterministic=True)

  def prepare(serialized):
    example = decode_record(serialized)
    image, label = _to_model_dtypes(example["image"], example["label"])
    if size is not None:
      image, label = _pad_eval(image, label, example, size)
    if with_metadata:
      return image, label, {"id": example["id"], "height": example["height"], "width": example["width"]}
    return image, label

  dataset = dataset.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
  if fixed_shape_replicas:
    if size is None or with_metadata:
      raise ValueError("fixed_shape_replicas needs pad_to and no metadata")
    group = batch_size * fixed_shape_replicas * (num_pipelines if share_after_filling else 1)
    void = (tf.fill([size[0], size[1], 3], tf.constant(augment.MEAN_PIXEL, tf.float32)),
            tf.fill([size[0], size[1]], tf.constant(voc.IGNORE_LABEL, tf.int32)))
    # Up to group - 1 void images complete the last group; whole groups of void images are dropped.
    dataset = dataset.concatenate(tf.data.Dataset.from_tensors(void).repeat(group - 1))
    dataset = dataset.batch(group, drop_remainder=True).unbatch()
    if share_after_filling:
      dataset = dataset.shard(num_pipelines, pipeline_id)
    dataset = dataset.batch(batch_size, drop_remainder=True)
  else:
    dataset = dataset.batch(batch_size)
  return dataset.prefetch(AUTOTUNE)
