"""Pascal VOC 2012 segmentation conventions: class names, the colour palette, label PNGs, the folder layout and
its split lists."""

import io

import numpy as np
from PIL import Image

CLASS_NAMES = (
  "background",
  "aeroplane",
  "bicycle",
  "bird",
  "boat",
  "bottle",
  "bus",
  "car",
  "cat",
  "chair",
  "cow",
  "diningtable",
  "dog",
  "horse",
  "motorbike",
  "person",
  "pottedplant",
  "sheep",
  "sofa",
  "train",
  "tvmonitor",
)
NUM_CLASSES = len(CLASS_NAMES)
IGNORE_LABEL = 255  # "void": object boundaries and difficult regions, never scored.


def default_class_names(num_classes: int) -> tuple[str, ...]:
  """VOC's names for 21 classes; else "background", "class_1", ... (a data set that came without names)."""
  if num_classes == NUM_CLASSES:
    return CLASS_NAMES
  return ("background", *(f"class_{index}" for index in range(1, num_classes)))


# Folder layout of a VOCdevkit/VOC2012-style root.
IMAGE_DIR = "JPEGImages"
MASK_DIR = "SegmentationClass"
AUG_MASK_DIR = "SegmentationClassAug"  # SBD-derived masks for the train_aug split.
SPLIT_DIR = "ImageSets/Segmentation"


def palette(num_colors: int = 256) -> np.ndarray:
  """The VOC colour map (uint8, [num_colors, 3] RGB): bit-interleaved class ids; 255 is (224, 224, 192)."""
  colors = np.zeros((num_colors, 3), dtype=np.uint8)
  for index in range(num_colors):
    c, r, g, b = index, 0, 0, 0
    for shift in range(7, -1, -1):
      r |= ((c >> 0) & 1) << shift
      g |= ((c >> 1) & 1) << shift
      b |= ((c >> 2) & 1) << shift
      c >>= 3
    colors[index] = (r, g, b)
  return colors


def class_palette(class_colours=()) -> np.ndarray:
  """The colour of each class id (uint8 [256, 3]): a data set's own class colours (its colour table's, as the
  conversion's class_colours.txt holds them) where it has them, VOC's colour map for the rest and for void."""
  colours = palette()
  if len(class_colours):
    colours[: len(class_colours)] = np.asarray(class_colours, np.uint8).reshape(-1, 3)
  return colours


def colorize(class_ids: np.ndarray, class_colours=()) -> np.ndarray:
  """Class-id mask [H, W] -> RGB picture [H, W, 3] in the classes' colours (VOC's by default)."""
  return class_palette(class_colours)[np.asarray(class_ids, dtype=np.uint8)]


def encode_label_png(class_ids: np.ndarray) -> bytes:
  """Single-channel 8-bit PNG of class ids: what records hold (DeepLab's readers decode it with
  tf.io.decode_png), and what SBD's converted masks are."""
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(class_ids, np.uint8)).save(buffer, format="PNG")  # 2-D uint8 -> mode L
  return buffer.getvalue()


def encode_palette_png(class_ids: np.ndarray, class_colours=()) -> bytes:
  """Mode-P PNG whose pixel values are the class ids, in the VOC palette (or the classes' own colours), as the
  official SegmentationClass masks are stored."""
  image = Image.fromarray(np.ascontiguousarray(class_ids, np.uint8))  # mode L; putpalette makes it P, same indices
  image.putpalette(class_palette(class_colours).ravel().tolist())
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


def mask_paths(voc_root: str, image_id: str) -> tuple[str, str]:
  """Where an id's mask may be, in the order to look: SegmentationClass/ (official, with void edges), then SBD's
  SegmentationClassAug/."""
  root = voc_root.rstrip("/")
  return f"{root}/{MASK_DIR}/{image_id}.png", f"{root}/{AUG_MASK_DIR}/{image_id}.png"


def decode_class_ids(data: bytes) -> np.ndarray:
  """The class ids of a mask as VOC stores them: a palette PNG's indices, grey values, or VOC's colours (uint8
  [H, W]). Raises ValueError for colours outside VOC's map or another mode, OSError for a damaged file."""
  with Image.open(io.BytesIO(data)) as image:
    values = np.asarray(image)
    mode = image.mode
  if mode in ("P", "L"):
    return values.astype(np.uint8)
  if mode in ("LA", "PA"):
    return values[..., 0].astype(np.uint8)
  if mode not in ("RGB", "RGBA"):
    raise ValueError(f"a mode {mode} mask; VOC's are palette (P), grayscale (L) or VOC-coloured RGB")
  class_ids, unknown = colours_to_ids(values[..., :3])
  if class_ids is None:  # Exactly when there are unknown colours.
    raise ValueError(f"an RGB mask with {len(unknown)} colour(s) outside VOC's colour map")
  return class_ids


def colours_to_ids(rgb: np.ndarray) -> tuple[np.ndarray | None, list[tuple[int, int, int]]]:
  """[H, W, 3] VOC colours -> ([H, W] uint8 palette indices, []), or (None, the colours outside VOC's map)."""
  packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
  lookup = {(int(r) << 16) | (int(g) << 8) | int(b): index for index, (r, g, b) in enumerate(palette())}
  unique, inverse = np.unique(packed.ravel(), return_inverse=True)
  unknown = [(int(c) >> 16, (int(c) >> 8) & 255, int(c) & 255) for c in unique if int(c) not in lookup]
  if unknown:
    return None, unknown
  return np.array([lookup[int(c)] for c in unique], np.uint8)[inverse].reshape(packed.shape), []


def split_list_path(voc_root: str, split: str) -> str:
  return f"{voc_root.rstrip('/')}/{SPLIT_DIR}/{split}.txt"


def read_split_ids(voc_root: str, split: str) -> list[str]:
  return read_id_list(split_list_path(voc_root, split))


def read_id_list(path: str) -> list[str]:
  """The ids of a split list (ImageSets/Segmentation/<split>.txt, or SBD's train/val.txt): the first token of each
  non-blank line, in file order, repeats kept. Local, or gs:// through TensorFlow's file system."""
  if "://" in path:
    import tensorflow as tf  # Local lists need no TensorFlow.

    with tf.io.gfile.GFile(path) as f:
      text = f.read()
  else:
    with open(path) as f:
      text = f.read()
  return [line.split()[0] for line in text.splitlines() if line.strip()]
