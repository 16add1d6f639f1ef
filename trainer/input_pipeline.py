"""tf.data input pipelines over DeepLab-schema TFRecords (see `preprocessing/schema.py`).

Elements are `(image, label)`: image RGB [B, h, w, 3] with raw pixel values in [0, 255] (the model normalises),
label [B, h, w] of class ids with 255 = ignore. Evaluation yields float32 images and int32 labels, padded with
127.5 (the mean pixel, which the model normalises to 0). Training yields uint8 for both, a quarter of the bytes
to batch and to copy to the accelerator: the Keras model casts its input to float32 itself, the loss and the
metrics cast the labels (trainer/losses.py, trainer/metrics.py). Its images are the bilinear resize rounded to
the nearest level and padded with 128 (the mean rounded half up: 0.004 after normalisation). Label padding is
always 255, so it never counts in a loss or a metric.

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

from preprocessing import schema

MEAN_PIXEL = 127.5
TRAIN_PAD_PIXEL = 128  # MEAN_PIXEL in uint8 (rounded half up).
IGNORE_LABEL = 255
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


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
  pair = (value, value) if isinstance(value, numbers.Integral) else tuple(value)
  if len(pair) != 2 or min(pair) < 1:
    raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")
  return int(pair[0]), int(pair[1])


# ---------------------------------------------------------------------------------------------------------------
# Training: random scale, pad, crop, flip (research/deeplab's order), computed crop-first.
#
# Reference semantics (research/deeplab input_preprocess, official/vision): scale the whole image by s ~ U[min,
# max] (to floor(H*s) x floor(W*s); image bilinear, label nearest), pad bottom/right to at least the crop (image
# 127.5, label 255), crop crop_h x crop_w at a uniform random offset, flip left-right with p = 0.5.
# Here, per axis independently:
#   * floor(H*s) >= crop: the crop covers a source window of round(crop/s) pixels at a uniform integer offset;
#     only that window is decoded (decode_and_crop_jpeg; it saves the rows below the window, little else, as
#     libjpeg still entropy-decodes the rest) and resized to the crop. Approximations: the realised
#     scale is crop/round(crop/s) (within 0.2% of s at crop 513), crop offsets sit on the source pixel grid, and
#     bilinear taps that would fall just outside the window are clamped to its edge (first/last row/column).
#     At s = 2 with an even crop the window's interior is exactly the 2x upscaled image.
#   * floor(H*s) < crop: the whole axis is resized to floor(H*s) and padded at the end, exactly as the reference.
# The flip is applied to the decoded source window (cheaper than to the float crop; it commutes with the resize)
# and the padding goes to the left when flipped, as if the padded crop had been flipped. Photometric jitter, when
# on, touches only the picture, before padding. The output is uint8 (see the module docstring): at crop 513 it
# cuts the CPU time per image by ~10% against float32 crops and int32 labels (3.0 -> 2.7 ms), and the bytes sent
# to the accelerator by 4x. Speed, and where the rest goes: benchmarks/input_throughput.py.
# ---------------------------------------------------------------------------------------------------------------


def _windows(size: tf.Tensor, crop: tuple[int, int], scale: tf.Tensor, u: tf.Tensor):
  """Per axis ([2] vectors, rows then columns): source offset and length of the crop window, its output length
  and the padding after it."""
  crop = tf.constant(crop, tf.int32)
  scaled = tf.maximum(tf.cast(tf.cast(size, tf.float32) * scale, tf.int32), 1)
  fits = scaled >= crop
  window = tf.clip_by_value(tf.cast(tf.round(tf.cast(crop, tf.float32) / scale), tf.int32), 1, size)
  room = size - window
  offset = tf.minimum(tf.cast(u * tf.cast(room + 1, tf.float32), tf.int32), room)
  zero = tf.zeros_like(size)
  return (tf.where(fits, offset, zero), tf.where(fits, window, size), tf.where(fits, crop, scaled),
          tf.where(fits, zero, crop - scaled))


def _nearest_indices(window: tf.Tensor, out: tf.Tensor) -> tf.Tensor:
  """Indices into `window` pixels of a nearest-neighbour resize to `out` (TF's half-pixel convention)."""
  ratio = tf.cast(window, tf.float32) / tf.cast(out, tf.float32)
  index = tf.cast((tf.cast(tf.range(out), tf.float32) + 0.5) * ratio, tf.int32)
  return tf.minimum(index, window - 1)


def _decode_window(encoded: tf.Tensor, y: tf.Tensor, x: tf.Tensor, h: tf.Tensor, w: tf.Tensor,
                   width: tf.Tensor) -> tf.Tensor:
  """uint8 [h, w, 3] window of the image, pixel-identical to the same window of the full decode.

  For JPEG only the window is decoded. libjpeg's cropped decode upsamples chroma differently in the window's
  first/last column (edge replication instead of the neighbour), so one extra column is decoded each side.
  """
  def jpeg():
    left = tf.minimum(x, 1)
    right = tf.minimum(width - x - w, 1)
    decoded = tf.io.decode_and_crop_jpeg(encoded, tf.stack([y, x - left, h, w + left + right]), channels=3,
                                         dct_method=JPEG_DCT_METHOD)
    return decoded[:, left:left + w]

  def other():
    return tf.io.decode_png(encoded, channels=3)[y:y + h, x:x + w]

  return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def _photometric(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Mild colour jitter on the unpadded float crop (so that the padding stays at the mean pixel)."""
  seeds = tf.random.experimental.stateless_split(seed, 4)
  image = tf.image.stateless_random_brightness(image, BRIGHTNESS_DELTA, seeds[0])
  image = tf.image.stateless_random_contrast(image, *CONTRAST_RANGE, seeds[1])
  image = tf.image.stateless_random_saturation(image, *SATURATION_RANGE, seeds[2])
  image = tf.image.stateless_random_hue(image, HUE_DELTA, seeds[3])
  return tf.clip_by_value(image, 0.0, 255.0)


def _augment_record(serialized: tf.Tensor, seed: tf.Tensor, *, crop: tuple[int, int], min_scale: float,
                    max_scale: float, flip: bool, photometric: bool) -> tuple[tf.Tensor, tf.Tensor]:
  """serialized record -> (uint8 [crop_h, crop_w, 3], uint8 [crop_h, crop_w]), randomness from `seed` only."""
  features = schema.parse_example(serialized)
  mask = _decode_mask(features[schema.MASK_ENCODED])
  size = tf.shape(mask)
  u = tf.random.stateless_uniform([4], seed=seed)
  scale = min_scale + u[0] * (max_scale - min_scale)
  offset, window, out, pad = _windows(size, crop, scale, u[1:3])
  flipped = tf.logical_and(flip, u[3] < 0.5)

  image = _decode_window(features[schema.IMAGE_ENCODED], offset[0], offset[1], window[0], window[1], size[1])
  image = tf.cond(flipped, lambda: tf.reverse(image, [1]), lambda: image)
  # Bilinear weights sum to 1: +0.5 on the (smaller) source window, then truncation, rounds the output to the
  # nearest level, a pass cheaper than tf.round on the output.
  image = tf.raw_ops.ResizeBilinear(images=(tf.cast(image, tf.float32) + 0.5)[tf.newaxis], size=out,
                                    half_pixel_centers=True)[0]
  rows = _nearest_indices(window[0], out[0])
  cols = _nearest_indices(window[1], out[1])
  cols = tf.cond(flipped, lambda: tf.reverse(cols, [0]), lambda: cols)
  # A gather along axis 0 copies whole rows; along axis 1 it goes byte by byte and is 3-4x slower than the two
  # transposes (cheap on uint8) that let both gathers run along axis 0.
  label = tf.transpose(mask[offset[0]:offset[0] + window[0]])
  label = tf.gather(tf.transpose(tf.gather(label, offset[1] + cols)), rows)
  if photometric:
    image = _photometric(image - 0.5, tf.random.experimental.stateless_fold_in(seed, 1)) + 0.5
  image = tf.cast(image, tf.uint8)  # In [0.5, 255.5]: truncation is rounding.

  pad_left = tf.where(flipped, pad[1], 0)
  paddings = tf.stack([[0, pad[0]], [pad_left, pad[1] - pad_left]])
  image = tf.pad(image, tf.concat([paddings, [[0, 0]]], 0), constant_values=tf.constant(TRAIN_PAD_PIXEL, tf.uint8))
  label = tf.pad(label, paddings, constant_values=IGNORE_LABEL)
  image.set_shape([crop[0], crop[1], 3])
  label.set_shape([crop[0], crop[1]])
  return image, label


def _to_model_dtypes(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  return tf.cast(image, tf.float32), tf.cast(label, tf.int32)


def train_dataset(file_pattern: str, *, batch_size: int, crop_size: int | tuple[int, int] = 513,
                  min_scale: float = 0.5, max_scale: float = 2.0, flip: bool = True, photometric: bool = False,
                  shuffle_buffer: int = 512, seed: int | None = None, deterministic: bool = False,
                  input_context: tf.distribute.InputContext | None = None, repeat: bool = True) -> tf.data.Dataset:
  """Augmented (image, label) batches, uint8, of fixed shape [batch_size, crop_h, crop_w(, 3)], forever unless
  repeat=False.

  `batch_size` is per replica when `input_context` is given (sharding: see the module docstring). Partial
  batches are dropped (static shapes).
  `deterministic=True` with a `seed` yields identical batches run after run (at some cost in speed); otherwise the
  order of elements may vary with thread timing. Every random draw is a stateless function of (seed, input
  pipeline, element index), so the augmentation of the n-th element never depends on timing.
  """
  crop = _pair(crop_size, "crop_size")
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
  base_seed = tf.constant([seed, pipeline_id], tf.int64)

  def augment(index, serialized):
    element_seed = tf.random.experimental.stateless_fold_in(base_seed, index)
    return _augment_record(serialized, element_seed, crop=crop, min_scale=min_scale, max_scale=max_scale,
                           flip=flip, photometric=photometric)

  dataset = dataset.enumerate().map(augment, num_parallel_calls=AUTOTUNE)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = deterministic
  return dataset.with_options(options).prefetch(AUTOTUNE)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation: full images, in file order, each once.
# ---------------------------------------------------------------------------------------------------------------


def _pad_eval(image: tf.Tensor, label: tf.Tensor, example: dict, size: tuple[int, int]):
  height, width = example["height"], example["width"]
  check = tf.debugging.Assert(
      tf.logical_and(height <= size[0], width <= size[1]),
      ["eval image larger than pad_to", size[0], size[1], "id", example["id"], "height", height, "width", width])
  with tf.control_dependencies([check]):
    paddings = [[0, size[0] - height], [0, size[1] - width]]
    image = tf.pad(image, paddings + [[0, 0]], constant_values=MEAN_PIXEL)
    label = tf.pad(label, paddings, constant_values=IGNORE_LABEL)
  image.set_shape([size[0], size[1], 3])
  label.set_shape([size[0], size[1]])
  return image, label


def eval_dataset(file_pattern: str, *, batch_size: int = 1, pad_to: int | tuple[int, int] | None = None,
                 input_context: tf.distribute.InputContext | None = None,
                 with_metadata: bool = False) -> tf.data.Dataset:
  """Unaugmented (image, label[, meta]) batches, every record exactly once, in a fixed order.

  pad_to=None: images at their natural size, so batch_size must be 1. pad_to=N (or (h, w)): padded at the
  bottom/right to NxN (image 127.5, label 255, never scored); an image larger than that fails the iteration with
  an error naming its id and size (the DeepLab VOC eval size 513 holds every VOC image, which are <= 500x500).
  `batch_size` is per replica when `input_context` is given. meta = {"id", "height", "width"} of the images.
  """
  if pad_to is None and batch_size != 1:
    raise ValueError(f"eval_dataset without pad_to yields images of different sizes: batch_size must be 1, "
                     f"got {batch_size} (or give pad_to)")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  size = None if pad_to is None else _pair(pad_to, "pad_to")
  dataset = _records(list_files(file_pattern), input_context=input_context, shuffle=False, seed=None,
                     deterministic=True)

  def prepare(serialized):
    example = decode_record(serialized)
    image, label = _to_model_dtypes(example["image"], example["label"])
    if size is not None:
      image, label = _pad_eval(image, label, example, size)
    if with_metadata:
      return image, label, {"id": example["id"], "height": example["height"], "width": example["width"]}
    return image, label

  dataset = dataset.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True).batch(batch_size)
  return dataset.prefetch(AUTOTUNE)
