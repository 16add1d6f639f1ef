"""The CamVid recipes (configs/camvid_*.py): they train a few steps with class weights from the conversion's pixel
counts, on generated data converted from its own folders, and on the real CamVid sample from the published model."""

import json

import numpy as np
import pytest

from configs import camvid_from_imagenet
from configs import camvid_from_published
from contracts import shards
from inference import importing
from preprocessing import make_tfrecords
from preprocessing import synthetic_voc
from tests.conftest import CAMVID_CLASSES
from trainer import distribute
from trainer import losses
from trainer import train


def _names_file(folder, names=CAMVID_CLASSES) -> str:
  path = folder / "classes.txt"
  path.write_text("".join(f"{name}\n" for name in names))
  return str(path)


def _few_steps(config, *, crop, steps: int = 2):
  """The recipe as it is, but for its size: a small crop and batch, a few steps, a few validation images."""
  config.input.crop_size = crop
  config.batch_size = config.eval_batch_size = 2
  config.train.update(steps=steps, steps_per_loop=steps, eval_steps=2, num_triptychs=1)
  config.optimizer.warmup_steps = 0
  return config


def _check_run(report: dict, model_dir, data_dir: str) -> None:
  assert report["steps"] == 2 and np.isfinite(report["loss"])
  assert set(report["per_class_accuracy"]) == set(CAMVID_CLASSES) and 0 <= report["mean_class_accuracy"] <= 1
  written = json.loads((model_dir / "config.json").read_text())
  summary = shards.read_summary(data_dir, "train")
  expected = losses.class_weights_from_pixels(
    [summary["class_pixels"].get(n, 0) for n in CAMVID_CLASSES],
    [summary["class_image_pixels"].get(n, 0) for n in CAMVID_CLASSES],
    "median_frequency",
  )
  assert written["loss"]["class_weights"] == pytest.approx(expected, rel=1e-5)  # rounded to 6 digits in config.json
  assert written["model"]["class_names"] == list(CAMVID_CLASSES)


def test_the_imagenet_recipe_trains_on_generated_data_converted_from_its_folders(tmp_path):
  root = tmp_path / "generated"
  synthetic_voc.write_dataset(str(root), num_train=6, num_val=2, height=64, width=96, num_classes=11, seed=3)
  records = tmp_path / "records"
  make_tfrecords.run(
    [
      "make_tfrecords",
      f"--images={root}/JPEGImages/*.jpg",
      f"--masks={root}/SegmentationClass/{{stem}}.png",
      f"--class_names={_names_file(tmp_path)}",
      "--splits=all",
      f"--output_dir={records}",
    ]
  )
  for split in ("train", "val"):  # the same pairs as both splits: enough to train and score a few steps
    for path in records.glob("all-*"):
      (records / path.name.replace("all", split, 1)).write_bytes(path.read_bytes())
  config = _few_steps(camvid_from_imagenet.get_config(), crop=(48, 64))
  config.model.backbone_weights = ""  # random: no download in a test
  report = train.train_and_evaluate(
    config, data_dir=str(records), model_dir=str(tmp_path / "run"), strategy=distribute.create_strategy("default")
  )
  _check_run(report, tmp_path / "run", str(records))


def test_the_published_recipe_trains_on_real_camvid_from_its_shards(camvid, reference_tflite, tmp_path):
  records = tmp_path / "records"
  make_tfrecords.run(
    [
      "make_tfrecords",
      f"--images={camvid}/{{split}}/*.png",
      f"--masks={camvid}/{{split}}annot/{{stem}}.png",
      f"--class_names={_names_file(tmp_path)}",
      "--void_values=11",
      f"--output_dir={records}",
    ]
  )
  importing.import_model(str(reference_tflite), str(tmp_path / "import"))
  config = _few_steps(camvid_from_published.get_config(), crop=(97, 129))
  config.model.init_from = str(tmp_path / "import")
  report = train.train_and_evaluate(
    config, data_dir=str(records), model_dir=str(tmp_path / "run"), strategy=distribute.create_strategy("default")
  )
  _check_run(report, tmp_path / "run", str(records))
