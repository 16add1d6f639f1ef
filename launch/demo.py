"""The whole journey on this machine, offline, in a few minutes: `make demo` (or python -m launch.demo).

Generates a small VOC-format data set of the your-own-classes kind (shapes whose class is their texture: 5 classes
and background, named in its class_names.txt), converts it with the Beam job, trains configs/demo.py on it (a
tiny model that learns them in a couple of CPU minutes), evaluates it at native size and draws triptychs (photo /
ground truth / prediction, with a legend) of a few validation photos, printing each command as a user would type
it.
With --voc_root=PATH (a VOC2012 folder, or an empty one to download into) it runs on real VOC instead:

  python -m launch.demo --voc_root=data/VOC2012 --workdir=voc_demo --config=configs/voc_sample_finetune.py \
      --epochs=2

Flags after `--` go to trainer.main as they are, e.g. `-- --config.model.backbone_weights=FILE.weights.h5`
for ImageNet weights already on disk instead of Keras's download.
"""

import os
import shlex
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags

from contracts import console
from contracts import voc

DEMO_CLASSES = 6  # configs/demo.py's config.model.num_classes.

_WORKDIR = flags.DEFINE_string("workdir", "demo_output", "Where everything goes (data, records, runs).")
_VOC_ROOT = flags.DEFINE_string(
  "voc_root", None, "A real VOC2012 folder (downloaded when empty) instead of the generated sample."
)
_CONFIG = flags.DEFINE_string(
  "config", None, "Training config; default configs/demo.py for the generated data, configs/smoke.py with --voc_root."
)
_EPOCHS = flags.DEFINE_integer("epochs", None, "Training epochs for the demo run; default the config's.", lower_bound=1)
_NUM_PHOTOS = flags.DEFINE_integer("num_photos", 8, "Validation photos to draw predictions for.", lower_bound=1)
console.register_check("workdir", bool, "a folder (not empty)")


def _run(*command: str) -> None:
  printable = " ".join(shlex.quote(part) for part in command).replace(sys.executable, "python")
  print(f"\n$ {printable}", flush=True)
  start = time.perf_counter()
  subprocess.run(command, check=True)
  print(f"({time.perf_counter() - start:.0f} s)", flush=True)


def _copy_val_photos(voc_root: str, folder: str, count: int) -> str:
  """The first `count` validation photos, in a folder of their own (what inference.predict takes)."""
  ids = voc.read_split_ids(voc_root, "val")[:count]
  os.makedirs(folder, exist_ok=True)
  for image_id in ids:
    shutil.copy(os.path.join(voc_root, voc.IMAGE_DIR, f"{image_id}.jpg"), folder)
  return folder


def main(argv):
  trainer_flags = argv[1:]  # What follows `--`: more trainer.main flags (e.g. --config.batch_size=4).
  workdir = os.path.abspath(_WORKDIR.value)
  voc_root = _VOC_ROOT.value or os.path.join(workdir, "voc_sample")
  records = os.path.join(workdir, "tfrecords")
  model_dir = os.path.join(workdir, "runs", "demo")
  python = sys.executable
  if not _VOC_ROOT.value and not os.path.isdir(os.path.join(voc_root, "JPEGImages")):
    _run(
      python,
      "-m",
      "preprocessing.synthetic_voc",
      f"--root={voc_root}",
      f"--num_classes={DEMO_CLASSES}",
      "--num_train=96",
      "--num_val=24",
      "--height=160",
      "--width=200",
    )
  _run(python, "-m", "preprocessing.make_tfrecords", f"--voc_root={voc_root}", f"--output_dir={records}")
  config = _CONFIG.value or ("configs/smoke.py" if _VOC_ROOT.value else "configs/demo.py")
  _run(
    python,
    "-m",
    "trainer.main",
    f"--config={config}",
    f"--data_dir={records}",
    f"--model_dir={model_dir}",
    *([f"--config.train.epochs={_EPOCHS.value}"] if _EPOCHS.value else []),
    *trainer_flags,
  )
  _run(python, "-m", "inference.evaluate", f"--model_dir={model_dir}", f"--data_dir={records}", "--flip")
  photos = _copy_val_photos(voc_root, os.path.join(workdir, "photos"), _NUM_PHOTOS.value)
  predictions = os.path.join(workdir, "predictions")
  _run(
    python,
    "-m",
    "inference.predict",
    f"--model_dir={model_dir}",
    f"--input={photos}",
    f"--output_dir={predictions}",
    "--format=mask,overlay,triptych",
    f"--voc_root={voc_root}",
  )
  where = [
    (f"{records}/*-summary.json", "what the conversion wrote and rejected"),
    (f"{model_dir}/metrics.json", "validation mIoU, pixel accuracy, per-class IoU (best weights)"),
    (f"{model_dir}/eval_val.json", "the same at native size with mirrored inference; eval_val_confusion.png"),
    (f"{predictions}/*_triptych.png", "photo | ground truth | prediction; *_overlay.jpg; *.png class-id masks"),
    (
      f"tensorboard --logdir={os.path.dirname(model_dir)}",
      "train/ and validation/ curves, per-class IoU, "
      "triptychs, confusion matrix, config, HParams "
      "(then open http://localhost:6006)",
    ),
  ]
  width = max(len(path) for path, _ in where)
  print("\nDone. Look at:\n" + "\n".join(f"  {path:<{width}}  {what}" for path, what in where))


if __name__ == "__main__":
  app.run(main, flags_parser=console.parse_flags)
