"""inference.evaluate: native-size scoring of a finished run, multi-scale and mirrored inference, its files."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from configs import smoke
from deeplab import run_folder
from deeplab import tfrecords
from inference import evaluation
from preprocessing import make_tfrecords
from preprocessing import synthetic_voc
from tests.conftest import REPO_ROOT
from tests.conftest import SOFTMAX_RESOLUTION
from tests.conftest import TIE
from tests.conftest import clear_pixels
from trainer import distribute
from trainer import train


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("voc")
  records = tmp_path_factory.mktemp("records")
  model_dir = tmp_path_factory.mktemp("run")
  synthetic_voc.write_dataset(str(root), num_train=8, num_val=4, height=90, width=117)  # odd sizes on purpose
  make_tfrecords.run(["make_tfrecords", f"--voc_root={root}", f"--output_dir={records}"])
  config = smoke.get_config()
  config.input.crop_size = 64
  config.input.eval_pad_to = 128
  config.train.epochs = 1
  config.train.num_triptychs = 0
  train.train_and_evaluate(
    config, data_dir=str(records), model_dir=str(model_dir), strategy=distribute.create_strategy("default")
  )
  return str(records), str(model_dir)


def test_native_size_confusion_counts_every_valid_pixel_of_the_model_prediction(trained_run):
  records, model_dir = trained_run
  config, model, weights = run_folder.load_run(model_dir)
  assert weights.endswith("best.weights.h5")
  confusion = evaluation.confusion_of_split(model, records, "val", config.model.num_classes, scales=[1.0], flip=False)
  expected = np.zeros_like(confusion)
  tied = 0
  for image, label in tfrecords.eval_dataset(f"{records}/val-*.tfrecord", batch_size=1):
    assert image.shape[1:3] == (90, 117)  # scored at the native size, never padded
    logits = model.predict(image, verbose=0)[0]
    predicted = np.argmax(logits, axis=-1)
    truth = label[0].numpy()
    for t, p in zip(truth[truth != 255], predicted[truth != 255], strict=True):
      expected[t, p] += 1
    tied += int(((truth != 255) & ~clear_pixels(logits, resolution=SOFTMAX_RESOLUTION)).sum())
  # The scoring takes the argmax of softmax probabilities in its own graph: only pixels whose top two logits tie
  # within rounding (none on this run) may change class, each moving one count from one cell to another.
  assert confusion.sum() == expected.sum()
  assert np.abs(confusion - expected).sum() <= 2 * tied, (np.abs(confusion - expected).sum(), tied)


def test_multi_scale_and_flip_average_probabilities_at_the_native_size(trained_run):
  records, model_dir = trained_run
  _, model, _ = run_folder.load_run(model_dir)
  image = tf.random.uniform([90, 117, 3], 0, 255, seed=1)
  single = evaluation.make_predictor(model, [1.0], flip=False)(image).numpy()
  mirrored = evaluation.make_predictor(model, [1.0], flip=True)(image).numpy()
  flipped_alone = evaluation.make_predictor(model, [1.0], flip=False)(tf.reverse(image, [1])).numpy()[:, ::-1]
  # A batch of two against two single images: other kernel blockings, logits apart by rounding (< conftest.TIE of
  # their spread); a probability moves by at most half its logits' change, so the sum of two by less than TIE x
  # spread (5e-6 here; 2e-8 measured), where the mirror not flipped back moves it by 1.7e-4 on this smoke run.
  spread = float(np.std(model(image[tf.newaxis], training=False)))
  np.testing.assert_allclose(mirrored, single + flipped_alone, atol=TIE * spread)
  several = evaluation.make_predictor(model, [0.5, 1.0, 1.5], flip=True)(image).numpy()
  assert several.shape == (90, 117, 21)
  # 3 scales x 2 mirrors of probabilities, each summing to 1 within 21 float32 roundings and a bilinear resize
  # (1.4e-6 measured); a scale or mirror missing is off by 1.
  np.testing.assert_allclose(several.sum(-1), 6.0, atol=1e-3)


def test_command_prints_the_table_and_writes_json_and_picture(trained_run):
  records, model_dir = trained_run
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "inference.evaluate",
      f"--model_dir={model_dir}",
      f"--data_dir={records}",
      "--scales=0.75,1.0",
      "--flip",
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "mean IoU" in result.stdout and "aeroplane" in result.stdout
  report = json.loads(pathlib.Path(f"{model_dir}/eval_val.json").read_text())
  assert report["scales"] == [0.75, 1.0] and report["flip"] is True
  assert report["valid_pixels"] > 0 and 0.0 <= report["miou"] <= 1.0
  picture = tf.io.decode_png(pathlib.Path(f"{model_dir}/eval_val_confusion.png").read_bytes())
  assert picture.shape[0] > 300 and picture.shape[2] == 3


def test_a_folder_that_is_not_a_run_is_a_one_line_error(tmp_path):
  result = subprocess.run(
    [sys.executable, "-m", "inference.evaluate", f"--model_dir={tmp_path}", f"--data_dir={tmp_path}"],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2
  assert "has no config.json" in result.stderr.strip().splitlines()[-1]
