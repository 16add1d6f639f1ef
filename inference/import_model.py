"""Imports a published DeepLab model into a run directory that evaluate, predict, export and init_from read.

  python -m inference.import_model --source=../shared/models/deeplabv3_mnv2_pascal_quant.tflite \
      --model_dir=runs/deeplabv3_mnv2_pascal --check_images='../shared/data/voc_sample/JPEGImages/2007_00*.jpg'
  python -m inference.import_model --source=https://.../deeplabv3_mnv2_pascal_train_aug_2018_01_29.tar.gz \
      --model_dir=runs/deeplabv3_mnv2_pascal_ckpt

--source: a TFLite file (uint8/int8 or float), a research/deeplab TF1 checkpoint (prefix, .index or its folder),
a .tar/.tar.gz of either, or an http(s) URL of any of these. For a TFLite source, --check_images compares our
model's classes with the TFLite interpreter's on those photos (both on the 513 canvas) and prints the agreement.
"""

from absl import app
from absl import flags
import cv2
import numpy as np

from contracts import console
from deeplab import pixels
from deeplab import tfrecords
from inference import importing

_SOURCE = flags.DEFINE_string(
  "source", None, "Published model: .tflite, checkpoint, .tar(.gz) or http(s) URL.", required=True
)
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Run directory to write (local or gs://).", required=True)
_CHECK_IMAGES = flags.DEFINE_string(
  "check_images",
  None,
  "Glob of photos (at most 513x513) on which to compare with the TFLite interpreter (TFLite sources).",
)
_NUM_CHECK_IMAGES = flags.DEFINE_integer("num_check_images", 20, "At most this many of --check_images.", lower_bound=1)
_ASPP_RATES = flags.DEFINE_list(
  "aspp_rates",
  ["6", "12", "18"],
  "Atrous rates, for sources with atrous ASPP branches (the file does not record them).",
)
console.register_check(
  "aspp_rates",
  console.each(console.positive_int, at_least_one=False),
  "comma-separated ints > 0, e.g. 6,12,18 (none for a source without atrous branches)",
)
_OUTPUT_STRIDE = flags.DEFINE_enum("output_stride", "16", ["8", "16"], "The source's output stride.")
_SOURCE_MD5 = flags.DEFINE_string("source_md5", None, "Expected md5 of a downloaded --source.")
console.register_check("source_md5", console.matching(console.MD5), console.MD5_ACCEPTS)
_DOWNLOAD_DIR = flags.DEFINE_string(
  "download_dir",
  None,
  "Where a URL --source is downloaded (default: a folder under the system's temp dir; a cut download resumes there).",
)


def _read_images(pattern: str, count: int) -> list[np.ndarray]:
  images = []
  for path in tfrecords.list_files(pattern)[:count]:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
      raise ValueError(f"cannot read image {path}")
    if max(image.shape[:2]) > pixels.DEEPLAB_CANVAS:
      raise ValueError(f"{path} is {image.shape[0]}x{image.shape[1]}: check images must fit 513x513")
    images.append(image[..., ::-1].copy())
  return images


def main(argv):
  del argv
  with console.exit_on_user_error(ValueError):  # ValueError: photos that cannot be check images.
    images = _read_images(_CHECK_IMAGES.value, _NUM_CHECK_IMAGES.value) if _CHECK_IMAGES.value else []
    report = importing.import_model(
      _SOURCE.value,
      _MODEL_DIR.value,
      check_images=images,
      aspp_rates=tuple(int(r) for r in _ASPP_RATES.value),
      output_stride=int(_OUTPUT_STRIDE.value),
      download_dir=_DOWNLOAD_DIR.value,
      md5=_SOURCE_MD5.value,
    )
  print(
    f"imported {report['kind']} {report['source']}: {report['scopes']} DeepLab scopes into {report['layers_set']} "
    f"layers ({report['num_classes']} classes, depth {report['alpha']}, "
    f"{'DeepLabV3+' if report['decoder'] else 'DeepLabV3'})"
  )
  agreement = report.get("tflite_pixel_agreement")
  if agreement:
    print(
      f"same class as the TFLite interpreter on {100 * agreement['mean']:.2f}% of the pixels of "
      f"{agreement['images']} images (worst image {100 * agreement['min']:.2f}%)"
    )
  elif report["kind"] == "tflite":
    print("not compared with the TFLite interpreter: give --check_images to do so")
  print(
    f"wrote {_MODEL_DIR.value} (config.json, {report['weights']}, import.json); score it with\n"
    f"  python -m inference.evaluate --model_dir={_MODEL_DIR.value} --data_dir=DATA --pad_to=513"
  )


if __name__ == "__main__":
  app.run(main, flags_parser=console.parse_flags)
