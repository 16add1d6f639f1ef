r"""A small generated dataset in VOC2012 layout, for the demo and tests when real VOC is not at hand.

  python -m preprocessing.synthetic_voc --root=/tmp/synthetic_voc [--num_train=24 --num_val=8 --seed=0] \
      [--num_classes=6]

Each image is a smooth background of random colours with 1-3 filled shapes (rectangles, ellipses, triangles). A
shape's class is its texture (stripes of one orientation, a checker board, dots; see TEXTURES), drawn in two
random colours of the same palette as the background: no pixel's colour tells its class or whether it is
background, so a model must look at a neighbourhood, as it must on photos. Masks are palette PNGs in the VOC
palette, with a 255 (void) band along object edges as in the real masks. Writes JPEGImages/*.jpg,
SegmentationClass/*.png and ImageSets/Segmentation/{train,val,trainval}.txt, and for other than 21 classes a
class_names.txt (background first) that the conversion carries to training; optionally train_aug.txt whose
extra ids have masks only in SegmentationClassAug/ (grayscale, as SBD's converted masks).
"""

import cv2
import numpy as np
import tensorflow as tf

from contracts import shards
from contracts import voc

JPEG_QUALITY = 90
# A class's texture: (pattern, period in pixels). Classes 1.. take them in order; past the first five, the
# patterns repeat at other periods.
PATTERNS = ("hstripes", "vstripes", "diagonal", "checker", "dots")
PERIODS = (8, 14, 5, 20)
TEXTURES = tuple((pattern, period) for period in PERIODS for pattern in PATTERNS)


def class_names(num_classes: int) -> tuple[str, ...]:
  """The generated classes' names: VOC's for 21 classes (the generator's stand-in for VOC), else the textures'."""
  if num_classes == voc.NUM_CLASSES:
    return voc.CLASS_NAMES
  names = [
    f"{pattern}{period}" if index >= len(PATTERNS) else pattern
    for index, (pattern, period) in enumerate(TEXTURES[: num_classes - 1])
  ]
  return ("background", *names)


def make_pair(
  rng: np.random.Generator, height: int, width: int, num_classes: int = voc.NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
  """(RGB image uint8 [H, W, 3], class ids uint8 [H, W] with 255 edges) of one generated scene."""
  if not 2 <= num_classes <= len(TEXTURES) + 1:
    raise ValueError(f"num_classes={num_classes}: the generator draws 2..{len(TEXTURES) + 1} classes")
  image = _smooth_colours(rng, height, width, cell=16)
  class_ids = np.zeros((height, width), np.uint8)
  for _ in range(int(rng.integers(1, 4))):
    class_id = int(rng.integers(1, num_classes))
    shape = _random_shape(rng, height, width)
    ink = _texture(TEXTURES[class_id - 1], height, width, phase=rng.uniform(0, 1000, size=2))
    light = _smooth_colours(rng, height, width, cell=64)
    dark = light * float(rng.uniform(0.25, 0.55))  # The same hue, darker: contrast without a class colour.
    painted = np.where(ink[..., None], dark, light)
    image[shape] = painted[shape]
    class_ids[shape] = class_id
    edge = cv2.morphologyEx(shape.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).astype(bool)
    class_ids[edge] = voc.IGNORE_LABEL
  image += rng.normal(0.0, 6.0, size=image.shape).astype(np.float32)
  return np.clip(image, 0, 255).astype(np.uint8), class_ids


def _smooth_colours(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
  """float32 [H, W, 3]: random colours (any hue, mid to high brightness) blended smoothly over `cell` pixels."""
  coarse = rng.uniform(60.0, 240.0, size=(max(2, height // cell), max(2, width // cell), 3)).astype(np.float32)
  return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _texture(texture: tuple[str, int], height: int, width: int, phase: np.ndarray) -> np.ndarray:
  """bool [H, W]: where a texture's darker colour goes."""
  pattern, period = texture
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  y, x = y + phase[0], x + phase[1]
  half = lambda t: (t % period) < period / 2  # noqa: E731
  if pattern == "hstripes":
    return half(y)
  if pattern == "vstripes":
    return half(x)
  if pattern == "diagonal":
    return half(x + y)
  if pattern == "checker":
    return half(x) ^ half(y)
  dy, dx = y % period - period / 2, x % period - period / 2  # "dots"
  return dy * dy + dx * dx < (period * 0.3) ** 2


def _random_shape(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  canvas = np.zeros((height, width), np.uint8)
  cy, cx = int(rng.integers(height // 5, height - height // 5)), int(rng.integers(width // 5, width - width // 5))
  ry, rx = int(rng.integers(height // 8, height // 3)), int(rng.integers(width // 8, width // 3))
  kind = int(rng.integers(3))
  if kind == 0:
    cv2.rectangle(canvas, (cx - rx, cy - ry), (cx + rx, cy + ry), 1, thickness=-1)
  elif kind == 1:
    cv2.ellipse(canvas, (cx, cy), (rx, ry), float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
  else:
    points = np.array([(cx, cy - ry), (cx - rx, cy + ry), (cx + rx, cy + ry)], np.int32)
    cv2.fillPoly(canvas, [points], 1)
  return canvas.astype(bool)


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
  ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
  if not ok:
    raise RuntimeError("OpenCV could not JPEG-encode an image")
  return data.tobytes()


def write_dataset(
  root: str,
  *,
  num_train: int = 24,
  num_val: int = 8,
  num_aug_only: int = 0,
  height: int = 96,
  width: int = 128,
  seed: int = 0,
  num_classes: int = voc.NUM_CLASSES,
) -> dict[str, list[str]]:
  """Writes the dataset under root (local or gs://); returns {split: ids} of the lists written.

  num_classes: masks use labels 0..num_classes-1 (and 255), e.g. 3 for a data set of the user's own classes.

  num_aug_only > 0 also writes train_aug.txt = train + that many ids whose masks are only in
  SegmentationClassAug/ (with no official mask, as most of SBD's).
  """
  rng = np.random.default_rng(seed)
  for folder in (voc.IMAGE_DIR, voc.MASK_DIR, voc.SPLIT_DIR) + ((voc.AUG_MASK_DIR,) if num_aug_only else ()):
    tf.io.gfile.makedirs(tf.io.gfile.join(root, folder))
  ids = [f"synthetic_{index:06d}" for index in range(num_train + num_val + num_aug_only)]
  for index, image_id in enumerate(ids):
    image, class_ids = make_pair(rng, height, width, num_classes)
    _write(tf.io.gfile.join(root, voc.IMAGE_DIR, f"{image_id}.jpg"), encode_jpeg(image))
    if index < num_train + num_val:
      _write(tf.io.gfile.join(root, voc.MASK_DIR, f"{image_id}.png"), voc.encode_palette_png(class_ids))
    else:
      _write(tf.io.gfile.join(root, voc.AUG_MASK_DIR, f"{image_id}.png"), voc.encode_label_png(class_ids))
  splits = {"train": ids[:num_train], "val": ids[num_train : num_train + num_val]}
  splits["trainval"] = splits["train"] + splits["val"]
  if num_aug_only:
    splits["train_aug"] = splits["train"] + ids[num_train + num_val :]
  for split, split_ids in splits.items():
    write_split_list(root, split, split_ids)
  if num_classes != voc.NUM_CLASSES:
    shards.write_class_names(root, class_names(num_classes))
  return splits


def write_split_list(root: str, split: str, ids: list[str]) -> None:
  _write(tf.io.gfile.join(root, voc.SPLIT_DIR, f"{split}.txt"), "".join(f"{i}\n" for i in ids).encode())


def _write(path: str, data: bytes) -> None:
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(data)


def main(argv: list[str]) -> None:
  del argv
  splits = write_dataset(
    FLAGS.root,
    num_train=FLAGS.num_train,
    num_val=FLAGS.num_val,
    num_aug_only=FLAGS.num_aug_only,
    height=FLAGS.height,
    width=FLAGS.width,
    seed=FLAGS.seed,
    num_classes=FLAGS.num_classes,
  )
  print(f"{FLAGS.root}: " + ", ".join(f"{split} {len(ids)}" for split, ids in splits.items()))


if __name__ == "__main__":
  from absl import app
  from absl import flags

  FLAGS = flags.FLAGS
  flags.DEFINE_string("root", None, "Folder to write (VOC2012 layout).", required=True)
  flags.DEFINE_integer("num_train", 24, "Ids in train.txt.")
  flags.DEFINE_integer("num_val", 8, "Ids in val.txt.")
  flags.DEFINE_integer("num_aug_only", 0, "Extra train_aug ids with SegmentationClassAug masks only.")
  flags.DEFINE_integer("height", 96, "Image height.")
  flags.DEFINE_integer("width", 128, "Image width.")
  flags.DEFINE_integer("seed", 0, "Random seed.")
  flags.DEFINE_integer(
    "num_classes",
    voc.NUM_CLASSES,
    "Classes, background included (textures, see TEXTURES).",
    lower_bound=2,
    upper_bound=len(TEXTURES) + 1,
  )
  app.run(main)
