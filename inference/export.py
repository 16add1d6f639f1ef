r"""Exports a trained run for serving (inference/exporting.py): a SavedModel that takes encoded images, and TFLite
float32 / int8 models.

  python -m inference.export --model_dir=runs/x --output_dir=exports/x [--tflite] \
      [--int8 --calibration_data='data/tfrecords/train-*.tfrecord'] [--data_dir=data/tfrecords | --check_data=GLOB]

Writes into output_dir:
  saved_model/          `serving_default(image_bytes: string [N])` (JPEG or PNG, any sizes) -> `masks` uint8
                        [N, H, W] (each image's class ids at its top-left, 255 beyond it), `heights`, `widths` int32
                        [N]. Each image runs at its own size, exactly as the Keras model would (TF Serving ready).
  model_float32.tflite  (--tflite) 1x513x513x3 float32 raw pixels [0, 255] -> 1x513x513 uint8 class ids.
  model_int8.tflite     (--int8) the same, full-integer (int8 inside), uint8 input quantized with the input's
                        scale/zero point (1.0/0, i.e. raw pixels, when calibration images span 0..255).
  class_names.txt       the run's class names, one per line, in class-id order (what inference.predict names the
                        classes of a --saved_model by).
  class_colours.txt     the run's class colours (a data set converted with a colour table), which predictions draw.
  export_report.json    with --check_data (or --data_dir: the run's eval split): mIoU of the Keras model and of
                        each export on the same images; a table is printed too.
TFLite has the fixed input of Google's reference model (513x513): an image is padded bottom/right with the mean
pixel and the output cropped back (`tflite_predict`); a larger image is scaled down to fit and its mask back up.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from contracts import console
from inference import exporting
from inference import int8_ranges

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "A training run's folder; local or gs://.", required=True)
_WEIGHTS = flags.DEFINE_string("weights", None, "A .weights.h5 file; default the run's best, else its final.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the exports and export_report.json go.", required=True)
_TFLITE = flags.DEFINE_bool("tflite", False, f"Also write {exporting.FLOAT32_TFLITE}.")
_INT8 = flags.DEFINE_bool("int8", False, f"Also write {exporting.INT8_TFLITE} (needs --calibration_data).")
_CALIBRATION_DATA = flags.DEFINE_string(
  "calibration_data", None, "TFRecord glob(s) of (training) images to calibrate int8 ranges on."
)
_NUM_CALIBRATION = flags.DEFINE_integer(
  "num_calibration", 200, "Calibration images (the first ones of the glob).", lower_bound=1
)
_INT8_RANGES = flags.DEFINE_enum(
  "int8_ranges",
  "mean",
  int8_ranges.METHODS,
  "Activation ranges: the mean of each "
  "calibration image's min and max (what quantization-aware training tracks), or "
  "TFLite's min and max over all of them.",
)
_DATA_DIR = flags.DEFINE_string(
  "data_dir", None, "Folder with the run's {split}-*.tfrecord shards: the check scores its eval split."
)
_CHECK_DATA = flags.DEFINE_string(
  "check_data",
  None,
  "TFRecord glob(s) to score every export on; default the "
  "run's eval split under --data_dir, if given; neither: no check.",
)
_NUM_CHECK_IMAGES = flags.DEFINE_integer("num_check_images", 100, "Images scored by the check (0: all).", lower_bound=0)
flags.register_multi_flags_validator(
  ["int8", "calibration_data"],
  lambda values: not values["int8"] or bool(values["calibration_data"]),
  "--int8 needs --calibration_data=TFRECORD_GLOB (training images to calibrate on)",
)


def main(argv):
  if len(argv) > 1:
    console.exit_with(f"unexpected arguments {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # The SavedModel writer's INFO lines, several per export.
  with console.exit_on_user_error(ValueError):
    report = exporting.export_run(
      _MODEL_DIR.value,
      _OUTPUT_DIR.value,
      weights=_WEIGHTS.value,
      tflite=_TFLITE.value,
      int8=_INT8.value,
      calibration_data=_CALIBRATION_DATA.value,
      num_calibration=_NUM_CALIBRATION.value,
      ranges=_INT8_RANGES.value,
      check_data=_CHECK_DATA.value,
      data_dir=_DATA_DIR.value,
      num_check_images=_NUM_CHECK_IMAGES.value,
    )
  if "exports" in report:
    print(exporting.check_table(report))
    drop = report["int8_drop_points"]
    if drop is not None and drop > 1.0:
      print(f"warning: int8 loses {drop:.2f} mIoU points against float (more than 1)", file=sys.stderr)
  print(
    f"wrote {_OUTPUT_DIR.value}: {exporting.SAVED_MODEL_DIR}/"
    + "".join(f", {t['file'].rsplit('/', 1)[-1]}" for t in report["tflite"].values())
    + f", {exporting.REPORT}"
  )


if __name__ == "__main__":
  app.run(main, flags_parser=console.parse_flags)
