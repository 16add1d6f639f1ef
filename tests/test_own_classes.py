"""A user's own data set: 3 classes with their own names and colours, from conversion to training, evaluation,
pictures and exports, on generated data (so a clone without ../shared runs it)."""

import json
import subprocess
import sys

from absl import app
import cv2
import numpy as np
import pytest

from configs import smoke
from contracts import shards
from contracts import voc
from deeplab import visualize
from preprocessing import make_tfrecords
from preprocessing import synthetic_voc
from tests.conftest import REPO_ROOT
from trainer import config_validation
from trainer import distribute
from trainer import train

NAMES = ("background", "road", "tree")
COLOURS = ((10, 20, 30), (128, 64, 128), (0, 200, 0))  # not VOC's: the pictures must draw these


@pytest.fixture(scope="module")
def own_voc(tmp_path_factory):
  """A VOC-layout folder with 3 classes whose names are in its class_names.txt, and its conversion."""
  root = tmp_path_factory.mktemp("own_voc")
  synthetic_voc.write_dataset(str(root), num_train=8, num_val=4, height=72, width=96, num_classes=3, seed=4)
  shards.write_class_names(str(root), NAMES)
  records = tmp_path_factory.mktemp("own_records")
  make_tfrecords.run(["make_tfrecords", f"--voc_root={root}", f"--output_dir={records}"])  # No --num_classes.
  shards.write_class_colours(str(records), COLOURS)  # as a conversion with a colour table writes them
  return root, records


@pytest.fixture(scope="module")
def own_run(own_voc, tmp_path_factory):
  _, records = own_voc
  config = smoke.get_config()
  config.model.num_classes = 3
  config.input.crop_size = 64
  config.input.eval_pad_to = 96
  config.train.epochs = 1
  config.train.num_triptychs = 1
  model_dir = tmp_path_factory.mktemp("own_run")
  report = train.train_and_evaluate(
    config, data_dir=str(records), model_dir=str(model_dir), strategy=distribute.create_strategy("default")
  )
  return model_dir, report


def test_conversion_carries_the_names_beside_the_shards(own_voc):
  _, records = own_voc
  assert shards.read_class_names(shards.class_names_path(str(records))) == NAMES


def test_conversion_refuses_a_class_count_that_disagrees_with_the_names(own_voc, tmp_path):
  root, _ = own_voc
  with pytest.raises(app.UsageError, match=r"--num_classes=4, but .*class_names.txt names 3 classes"):
    make_tfrecords.run(["make_tfrecords", f"--voc_root={root}", f"--output_dir={tmp_path}", "--num_classes=4"])
  names_file = tmp_path / "names.txt"
  names_file.write_text("background\nroad\nroad\n")
  with pytest.raises(app.UsageError, match="distinct names"):
    make_tfrecords.run(
      ["make_tfrecords", f"--voc_root={root}", f"--output_dir={tmp_path}", f"--class_names={names_file}"]
    )


def test_training_names_the_classes_in_its_report_config_and_tensorboard(own_run):
  model_dir, report = own_run
  assert list(report["per_class_iou"]) == list(NAMES)
  assert list(json.loads((model_dir / "metrics.json").read_text())["per_class_iou"]) == list(NAMES)
  assert json.loads((model_dir / "config.json").read_text())["model"]["class_names"] == list(NAMES)
  assert json.loads((model_dir / "config.json").read_text())["model"]["class_colours"] == [list(c) for c in COLOURS]
  import tensorflow as tf

  tags = {
    value.tag
    for path in model_dir.glob("events.out.tfevents.*")
    for event in tf.compat.v1.train.summary_iterator(str(path))
    for value in event.summary.value
  }
  assert {f"validation/iou/{name}" for name in NAMES} & tags
  assert not {tag for tag in tags if tag.startswith("validation/iou/")} - {f"validation/iou/{n}" for n in NAMES}


def test_a_config_for_another_class_count_is_refused_naming_the_fix(own_voc, tmp_path):
  _, records = own_voc
  config = smoke.get_config()  # 21 classes
  with pytest.raises(
    config_validation.ConfigError,
    match=r"num_classes=21, but .*class_names.txt names 3 classes .*"
    r"--config.model.num_classes=3",
  ):
    train.train_and_evaluate(
      config, data_dir=str(records), model_dir=str(tmp_path), strategy=distribute.create_strategy("default")
    )


def _python(*args) -> subprocess.CompletedProcess:
  result = subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _legend_of(triptych_path, mask_path, truth, names) -> tuple[np.ndarray, np.ndarray]:
  """(the triptych's bottom strip, the legend of its classes drawn with `names`)."""
  picture = cv2.imread(str(triptych_path))[..., ::-1]
  predicted = np.asarray(voc_mask(mask_path))
  shown = np.unique(np.concatenate([predicted.ravel(), truth.ravel()]))
  expected = visualize.legend(shown, names, picture.shape[1], COLOURS)
  return picture[-expected.shape[0] :], expected


def voc_mask(path) -> np.ndarray:
  from PIL import Image

  return np.asarray(Image.open(path))


def test_evaluation_table_predict_legend_and_export_use_the_names(own_voc, own_run, tmp_path):
  root, records = own_voc
  model_dir, _ = own_run
  table = _python("inference.evaluate", f"--model_dir={model_dir}", f"--data_dir={records}").stdout
  for name in NAMES:
    assert any(line.split()[:1] == [name] for line in table.splitlines()), table
  assert list(json.loads((model_dir / "eval_val.json").read_text())["per_class_iou"]) == list(NAMES)

  image_id = (root / voc.SPLIT_DIR / "val.txt").read_text().split()[0]
  truth = voc_mask(root / voc.MASK_DIR / f"{image_id}.png")
  photos = tmp_path / "photos"
  photos.mkdir()
  (photos / f"{image_id}.jpg").write_bytes((root / voc.IMAGE_DIR / f"{image_id}.jpg").read_bytes())
  exports = tmp_path / "export"
  _python("inference.export", f"--model_dir={model_dir}", f"--output_dir={exports}")
  assert shards.read_class_names(shards.class_names_path(str(exports))) == NAMES
  assert shards.read_class_colours(shards.class_colours_path(str(exports))) == COLOURS
  assert json.loads((exports / "export_report.json").read_text())["class_names"] == list(NAMES)
  for source in (f"--model_dir={model_dir}", f"--saved_model={exports}/saved_model"):
    out = tmp_path / source.split("=")[0].strip("-")
    _python(
      "inference.predict",
      source,
      f"--input={photos}",
      f"--output_dir={out}",
      "--format=mask,triptych",
      f"--voc_root={root}",
    )
    strip, expected = _legend_of(out / f"{image_id}_triptych.png", out / f"{image_id}.png", truth, NAMES)
    np.testing.assert_array_equal(strip, expected)
    from PIL import Image

    with Image.open(out / f"{image_id}.png") as mask:  # the mask PNG's palette: the classes' own colours
      assert tuple(map(tuple, np.reshape(mask.getpalette()[:9], (3, 3)).tolist())) == COLOURS
