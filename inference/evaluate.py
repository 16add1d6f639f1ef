"""Scores a trained run at each image's native size, optionally over several scales and mirrored.

  python -m inference.evaluate --model_dir=runs/smoke --data_dir=data/tfrecords [--split=val] \
      [--scales=0.5,0.75,1.0,1.25,1.5,1.75] [--flip] [--pad_to=513]

Rebuilds the model from the run's config.json, loads its best (else final) weights, and averages the class
probabilities of every scale (and mirror) at the image's own size, so padding is never scored (inference/evaluation.py).
Prints the per-class IoU table and writes eval_<split>.json and eval_<split>_confusion.png into model_dir.
"""

from absl import app
from absl import flags

from contracts import console
from inference import evaluation

_MODEL_DIR = flags.DEFINE_string(
  "model_dir", None, "A training run's folder (config.json, checkpoints/); local or gs://.", required=True
)
_DATA_DIR = flags.DEFINE_string(
  "data_dir", None, "Folder with the {split}-*.tfrecord shards; local or gs://.", required=True
)
_SPLIT = flags.DEFINE_string("split", "val", "Split to score.")
console.register_check("split", console.matching(console.SPLIT), console.SPLIT_ACCEPTS)
_SCALES = flags.DEFINE_list("scales", ["1.0"], "Input scales whose probabilities are averaged.")
console.register_check(
  "scales", console.each(console.positive_number), "comma-separated numbers > 0, e.g. 0.75,1.0,1.25"
)
_FLIP = flags.DEFINE_bool("flip", False, "Also average the mirrored image's probabilities.")
_PAD_TO = flags.DEFINE_integer(
  "pad_to",
  0,
  "Pad each (scaled) image bottom/right to at least this square with the "
  "mean pixel before inference, as DeepLab evaluated (513); the padding is never "
  "scored. 0: each image at its own size.",
  lower_bound=0,
)
_WEIGHTS = flags.DEFINE_string("weights", None, "A .weights.h5 file; default the run's best, else its final.")


def main(argv):
  del argv
  with console.exit_on_user_error(ValueError):
    report, stem = evaluation.evaluate_run(
      _MODEL_DIR.value,
      _DATA_DIR.value,
      split=_SPLIT.value,
      scales=_SCALES.value,
      flip=_FLIP.value,
      pad_to=_PAD_TO.value,
      weights=_WEIGHTS.value,
    )
  print(evaluation.iou_table(report))
  print(f"wrote {stem}.json and {stem}_confusion.png")


if __name__ == "__main__":
  app.run(main, flags_parser=console.parse_flags)
