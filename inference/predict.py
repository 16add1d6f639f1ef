r"""Segments photos with a trained run (or its exported SavedModel) and writes masks, overlays and triptychs
(inference/prediction.py).

  python -m inference.predict --model_dir=runs/smoke --input='photos/*.jpg' --output_dir=predictions \
      [--format=mask,overlay,triptych] [--voc_root=data/VOC2012] [--scales=0.75,1.0,1.25] [--flip] [--weights=F]
  python -m inference.predict --saved_model=exports/smoke/saved_model --input=photos/ --output_dir=predictions

--input is one image, a folder (its files, not recursive) or a glob; paths may be gs://. Per image id (the
file name without its extension) it writes:
  mask      <id>.png           palette PNG in the VOC colours whose pixel values are the class ids, image-sized
  overlay   <id>_overlay.jpg   the prediction blended over the photo, with a legend of the classes present
  triptych  <id>_triptych.png  photo | ground truth (when --voc_root has a mask for the id) | prediction
Images are decoded as the training pipeline decodes them (JPEG with the accurate integer IDCT, as OpenCV does;
PNG). Files that cannot be read are named on stderr with the reason and skipped. Exit code 0 when anything was
written, 1 when no input could be, 2 for a bad command line, run or model.
"""

from absl import app
from absl import flags
import tensorflow as tf

from contracts import console
from deeplab import run_folder
from inference import prediction

_MODEL_DIR = flags.DEFINE_string(
  "model_dir", None, "A training run's folder (config.json, checkpoints/); local or gs://."
)
_SAVED_MODEL = flags.DEFINE_string(
  "saved_model",
  None,
  "A SavedModel written by inference.export, instead of --model_dir (then no --scales, --flip or --weights).",
)
_WEIGHTS = flags.DEFINE_string("weights", None, "A .weights.h5 file; default the run's best, else its final.")
_SCALES = flags.DEFINE_list("scales", ["1.0"], "Input scales whose probabilities are averaged.")
console.register_check(
  "scales", console.each(console.positive_number), "comma-separated numbers > 0, e.g. 0.75,1.0,1.25"
)
_FLIP = flags.DEFINE_bool("flip", False, "Also average the mirrored image's probabilities.")
_INPUT = flags.DEFINE_string("input", None, "An image, a folder of images or a glob (local or gs://).", required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the pictures go (created).", required=True)
_FORMAT = flags.DEFINE_list("format", ["mask"], f"What to write per image, any of {','.join(prediction.FORMATS)}.")
flags.register_validator(
  "format",
  lambda formats: bool(formats) and set(formats) <= set(prediction.FORMATS),
  f"--format takes a comma-separated subset of {','.join(prediction.FORMATS)}",
)
_VOC_ROOT = flags.DEFINE_string(
  "voc_root", None, "A VOC folder whose SegmentationClass/<id>.png masks give the triptychs their ground-truth panel."
)
flags.mark_flags_as_mutual_exclusive(["model_dir", "saved_model"], required=True)


def main(argv):
  del argv
  paths = prediction.list_inputs(_INPUT.value)
  if not paths:
    console.exit_with(f"no file matches --input={_INPUT.value}")
  with console.exit_on_user_error(ValueError, OSError, tf.errors.OpError, first_line=True):
    if _SAVED_MODEL.value:
      if any(flags.FLAGS[name].present for name in ("scales", "flip", "weights")):
        raise ValueError("--scales, --flip and --weights need --model_dir (a SavedModel predicts at one scale)")
      segment = prediction.saved_model_segmenter(_SAVED_MODEL.value)
      class_names = prediction.saved_model_class_names(_SAVED_MODEL.value)
      class_colours = prediction.saved_model_class_colours(_SAVED_MODEL.value)
    else:
      if _MODEL_DIR.value is None:  # An empty --saved_model= passes the one-of check but is not a folder.
        raise ValueError("--saved_model is empty: give a SavedModel folder, or --model_dir")
      config, model, _ = run_folder.load_run(_MODEL_DIR.value, _WEIGHTS.value)
      segment = prediction.keras_segmenter(model, [float(s) for s in _SCALES.value], _FLIP.value)
      class_names, class_colours = run_folder.class_names_of(config), run_folder.class_colours_of(config)
  written, skipped = prediction.predict_files(
    paths, segment, _OUTPUT_DIR.value, _FORMAT.value, _VOC_ROOT.value, class_names, class_colours=class_colours
  )
  if not written:
    console.exit_with(f"none of the {len(paths)} input file(s) could be read (reasons above); nothing written", 1)
  names = [path.rsplit("/", 1)[-1] for path, _ in skipped]
  print(
    f"wrote {len(written)} image(s) ({','.join(_FORMAT.value)}) to {_OUTPUT_DIR.value}; skipped {len(skipped)}"
    + (f": {', '.join(names[:10])}" + (", ..." if len(names) > 10 else "") if names else "")
  )


if __name__ == "__main__":
  app.run(main, flags_parser=console.parse_flags)
