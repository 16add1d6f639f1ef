"""SBD (Hariharan et al., 2011) labels -> `SegmentationClassAug/` masks and the `train_aug` split of VOC 2012.

DeepLab trains on train_aug = (SBD train ∪ SBD val ∪ VOC train) − VOC val: 10,582 images instead of VOC's
1,464. SBD's masks (`cls/<id>.mat`) have no 255 boundary band; where VOC has its own mask we use that one,
as DeepLab did, so the boundaries stay ignored. Masks are written as single-channel PNGs of class ids.
"""

import logging
import os
import shutil

import numpy as np
from PIL import Image
import scipy.io

from contracts import voc

TRAIN_AUG_FILE = "train_aug.txt"

_log = logging.getLogger(__name__)


def read_sbd_mask(mat_path: str) -> np.ndarray:
  """Class ids (uint8 [H, W], 0..20) of one SBD `cls/<id>.mat`."""
  gt = scipy.io.loadmat(mat_path, struct_as_record=False, squeeze_me=True).get("GTcls")
  mask = getattr(gt, "Segmentation", None)
  if mask is None or np.ndim(mask) != 2:
    raise ValueError(f"{mat_path} has no GTcls.Segmentation matrix: not an SBD cls/ file")
  mask = np.asarray(mask)
  if mask.size and (mask.min() < 0 or mask.max() >= voc.NUM_CLASSES):
    raise ValueError(f"{mat_path} has class ids {mask.min()}..{mask.max()}, outside 0..{voc.NUM_CLASSES - 1}")
  return mask.astype(np.uint8)


def read_voc_mask(png_path: str) -> np.ndarray:
  """Class ids (uint8 [H, W], 255 = void) of an official palette mask; Pillow keeps the palette indices."""
  with Image.open(png_path) as image:
    if image.mode not in ("P", "L"):
      raise ValueError(f"{png_path} is a {image.mode} image, not a palette mask of class ids")
    return np.array(image)


def write_mask(path: str, class_ids: np.ndarray) -> None:
  Image.fromarray(np.asarray(class_ids, dtype=np.uint8)).save(path)  # 2-D uint8 -> mode "L"


def build_train_aug(voc_root: str, sbd_dataset_dir: str, *, log_every: int = 1000) -> list[str]:
  """Writes `SegmentationClassAug/` and `ImageSets/Segmentation/train_aug.txt`; returns the train_aug ids.

  `sbd_dataset_dir` is SBD's `benchmark_RELEASE/dataset` (cls/*.mat, train.txt, val.txt). Masks are written
  for every SBD id and every official VOC mask (12,031 on the real data), so val has aug masks too. The masks
  go to a temporary folder renamed into place, and train_aug.txt is written last: it marks a finished job.
  """
  split_dir = os.path.join(voc_root, voc.SPLIT_DIR)
  voc_train = set(voc.read_id_list(os.path.join(split_dir, "train.txt")))
  voc_val = set(voc.read_id_list(os.path.join(split_dir, "val.txt")))
  sbd_ids = set(voc.read_id_list(os.path.join(sbd_dataset_dir, "train.txt")))
  sbd_ids |= set(voc.read_id_list(os.path.join(sbd_dataset_dir, "val.txt")))
  mask_dir = os.path.join(voc_root, voc.MASK_DIR)
  official = {name[:-4] for name in os.listdir(mask_dir) if name.endswith(".png")}
  train_aug = sorted((sbd_ids | voc_train) - voc_val)

  def source(image_id: str) -> str:
    if image_id in official:
      return os.path.join(mask_dir, f"{image_id}.png")
    return os.path.join(sbd_dataset_dir, "cls", f"{image_id}.mat")

  to_write = sorted(sbd_ids | official)
  missing = [i for i in to_write if not os.path.isfile(source(i))]
  if missing:
    raise ValueError(f"{len(missing)} ids have neither an SBD cls/<id>.mat nor a VOC mask, e.g. {missing[:3]}")
  no_image = [i for i in train_aug if not os.path.isfile(os.path.join(voc_root, voc.IMAGE_DIR, f"{i}.jpg"))]
  if no_image:
    _log.warning(
      "%d train_aug ids have no %s/<id>.jpg in %s, e.g. %s", len(no_image), voc.IMAGE_DIR, voc_root, no_image[:3]
    )

  list_path = os.path.join(split_dir, TRAIN_AUG_FILE)
  if os.path.exists(list_path):
    os.remove(list_path)  # a rebuild cut short must not look finished
  aug_dir = os.path.join(voc_root, voc.AUG_MASK_DIR)
  partial = aug_dir + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  _log.info(
    "writing %d masks to %s (%d from VOC, the rest from SBD)", len(to_write), aug_dir, len(official & set(to_write))
  )
  for count, image_id in enumerate(to_write, 1):
    path = source(image_id)
    mask = read_voc_mask(path) if image_id in official else read_sbd_mask(path)
    write_mask(os.path.join(partial, f"{image_id}.png"), mask)
    if count % log_every == 0 or count == len(to_write):
      _log.info("%s: %d / %d masks", voc.AUG_MASK_DIR, count, len(to_write))
  shutil.rmtree(aug_dir, ignore_errors=True)
  os.rename(partial, aug_dir)

  with open(list_path + ".partial", "w") as f:
    f.write("".join(f"{i}\n" for i in train_aug))
  os.replace(list_path + ".partial", list_path)
  _log.info("%s: %d ids", list_path, len(train_aug))
  return train_aug
