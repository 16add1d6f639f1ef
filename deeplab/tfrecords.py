"""Reading DeepLab-schema TFRecords (contracts/schema.py): the file lists, the decoding, and the evaluation
dataset; what training (trainer/input_pipeline.py builds its batches on them) and inference share.

Images are RGB [B, h, w, 3] with raw pixel values in [0, 255] (the model normalises), labels [B, h, w] class ids
with 255 = ignore, which never counts in a loss or a metric. Batches are `Batch(images, labels)`, for training
(trainer/input_pipeline.py, whose images are canvases to crop: trainer/augment.Canvases) as for evaluation
(float32 images and int32 labels, padded with the mean pixel, which the model normalises to 0, and 255).

`batch_size` is the PER-REPLICA batch whenever an `input_context` is given: the caller divides the global batch
(`input_context.get_per_replica_batch_size`), as `tf.distribute` expects of `distribute_datasets_from_function`.

Sharding over input pipelines (workers): by FILE when there are at least as many files as pipelines (each
worker reads only its own shards: no wasted I/O), else by RECORD (every worker reads every file and keeps every
n-th record, in a fixed order so that the workers' parts are disjoint and cover everything).

JPEGs are decoded with libjpeg's accurate integer IDCT ("INTEGER_ACCURATE", libjpeg's JDCT_ISLOW), the method
OpenCV and Pillow use: TF's default ("" = INTEGER_FAST, JDCT_IFAST) differs by up to 24 levels on VOC images,
ISLOW is pixel-identical to `cv2.imread` on all 512 images of our sample (tested).
"""

from collections.abc import Sequence
import numbers
from typing import NamedTuple

import tensorflow as tf

from contracts import schema
from contracts import voc
from deeplab import pixels

JPEG_DCT_METHOD = "INTEGER_ACCURATE"
AUTOTUNE = tf.data.AUTOTUNE


class Batch(NamedTuple):
  """A batch as training and evaluation take it, Keras's (x, y): images (or, for training, the canvases and
  geometry to crop them by: trainer/augment.Canvases) and their labels."""

  images: tf.Tensor
  labels: tf.Tensor


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


def pipeline_position(input_context: tf.distribute.InputContext | None) -> tuple[int, int]:
  if input_context is None:
    return 1, 0
  return input_context.num_input_pipelines, input_context.input_pipeline_id


def serialized_records(
  files: list[str], *, input_context, shuffle: bool, seed: int | None, deterministic: bool
) -> tf.data.Dataset:
  """Serialized records of this input pipeline's share of `files` (see the module docstring on sharding)."""
  num_pipelines, pipeline_id = pipeline_position(input_context)
  shard_files = num_pipelines > 1 and len(files) >= num_pipelines
  shard_records = num_pipelines > 1 and not shard_files
  dataset = tf.data.Dataset.from_tensor_slices(files)
  if shard_files:
    dataset = dataset.shard(num_pipelines, pipeline_id)
  if shuffle and not shard_records:  # Record sharding needs the same file order on every worker.
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.interleave(
    tf.data.TFRecordDataset,
    cycle_length=min(len(files), 16),
    block_length=1,
    num_parallel_calls=AUTOTUNE,
    deterministic=True if shard_records else deterministic,
  )
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
    tf.shape(mask)[2],
    1,
    message="the segmentation mask PNG must be single-channel class ids, not a palette "
    "or colour image (convert VOC masks with Pillow: np.asarray(Image.open(p)))",
  )
  with tf.control_dependencies([check]):
    return mask[:, :, 0]


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] RGB from JPEG (as OpenCV decodes it) or PNG bytes; grey images come out as 3 equal channels."""
  return tf.cond(
    tf.io.is_jpeg(encoded),
    lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method=JPEG_DCT_METHOD),
    lambda: tf.io.decode_png(encoded, channels=3),
  )


def decode_record(serialized) -> dict:
  """One serialized record -> {"image": uint8 [H,W,3], "label": uint8 [H,W], "id": string, "height", "width"}.

  height/width (int32) come from the decoded image, not from the record's (optional) fields.
  """
  features = schema.parse_example(serialized)
  image = decode_image(features[schema.IMAGE_ENCODED])
  label = _decode_mask(features[schema.MASK_ENCODED])
  shape = tf.shape(image)
  return {
    "image": image,
    "label": label,
    "id": _record_id(features[schema.IMAGE_FILENAME]),
    "height": shape[0],
    "width": shape[1],
  }


def size_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
  """An int or (height, width) as (height, width), both positive."""
  pair = (value, value) if isinstance(value, (int, numbers.Integral)) else tuple(value)
  if len(pair) != 2 or min(pair) < 1:
    raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")
  return int(pair[0]), int(pair[1])


# ---------------------------------------------------------------------------------------------------------------
# Evaluation: full images, in file order, each once.
# ---------------------------------------------------------------------------------------------------------------


def _to_model_dtypes(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  return tf.cast(image, tf.float32), tf.cast(label, tf.int32)


def _pad_eval(image: tf.Tensor, label: tf.Tensor, example: dict, size: tuple[int, int]):
  height, width = example["height"], example["width"]
  check = tf.debugging.Assert(
    tf.logical_and(height <= size[0], width <= size[1]),
    ["eval image larger than pad_to", size[0], size[1], "id", example["id"], "height", height, "width", width],
  )
  with tf.control_dependencies([check]):
    paddings = [[0, size[0] - height], [0, size[1] - width]]
    image = tf.pad(image, paddings + [[0, 0]], constant_values=pixels.MEAN_PIXEL)
    label = tf.pad(label, paddings, constant_values=voc.IGNORE_LABEL)
  image.set_shape([size[0], size[1], 3])
  label.set_shape([size[0], size[1]])
  return image, label


def eval_dataset(
  file_pattern: str,
  *,
  batch_size: int = 1,
  pad_to: int | tuple[int, int] | None = None,
  input_context: tf.distribute.InputContext | None = None,
  with_metadata: bool = False,
  fixed_shape_replicas: int = 0,
) -> tf.data.Dataset:
  """Unaugmented Batch(images, labels) (with_metadata: (images, labels, meta)), every record exactly once, in a
  fixed order.

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
    raise ValueError(
      f"eval_dataset without pad_to yields images of different sizes: batch_size must be 1, "
      f"got {batch_size} (or give pad_to)"
    )
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  size = None if pad_to is None else size_pair(pad_to, "pad_to")
  num_pipelines, pipeline_id = pipeline_position(input_context)
  # Fixed shapes over several pipelines: every pipeline reads all records, and takes its share of them after the
  # filling, so that all run the same number of batches.
  share_after_filling = bool(fixed_shape_replicas) and num_pipelines > 1
  dataset = serialized_records(
    list_files(file_pattern),
    input_context=None if share_after_filling else input_context,
    shuffle=False,
    seed=None,
    deterministic=True,
  )

  def prepare(serialized):
    example = decode_record(serialized)
    image, label = _to_model_dtypes(example["image"], example["label"])
    if size is not None:
      image, label = _pad_eval(image, label, example, size)
    if with_metadata:
      return image, label, {"id": example["id"], "height": example["height"], "width": example["width"]}
    return Batch(image, label)

  dataset = dataset.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
  if fixed_shape_replicas:
    if size is None or with_metadata:
      raise ValueError("fixed_shape_replicas needs pad_to and no metadata")
    group = batch_size * fixed_shape_replicas * (num_pipelines if share_after_filling else 1)
    void = Batch(
      tf.fill([size[0], size[1], 3], tf.constant(pixels.MEAN_PIXEL, tf.float32)),
      tf.fill([size[0], size[1]], tf.constant(voc.IGNORE_LABEL, tf.int32)),
    )
    # Up to group - 1 void images complete the last group; whole groups of void images are dropped.
    dataset = dataset.concatenate(tf.data.Dataset.from_tensors(void).repeat(group - 1))
    dataset = dataset.batch(group, drop_remainder=True).unbatch()
    if share_after_filling:
      dataset = dataset.shard(num_pipelines, pipeline_id)
    dataset = dataset.batch(batch_size, drop_remainder=True)
  else:
    dataset = dataset.batch(batch_size)
  return dataset.prefetch(AUTOTUNE)
