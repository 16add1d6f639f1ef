"""What TensorBoard shows, piece by piece: training-loss means, the confusion matrix, triptych legends."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from configs import smoke
from contracts import voc
from deeplab import metrics as metrics_lib
from deeplab import visualize
from trainer import summaries

NAMES = ("background", "road", "tree")


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
  series = {}
  for path in sorted(log_dir.glob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "scalars":
          series.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
  return series


def test_training_loss_is_the_mean_of_the_steps_since_the_last_point(tmp_path):
  """Keras hands callbacks a running mean over the loop; each point must be the mean of its own steps only."""
  config = smoke.get_config()
  config.train.log_every_steps = 2
  model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
  model.compile(optimizer=keras.optimizers.Adam(0.5), loss="mse")
  log = summaries.TensorBoardLog(str(tmp_path), config=config, class_names=NAMES, miou=None, samples=[], write=True)
  log.set_model(model)
  step_losses = [4.0, 2.0, 6.0, 0.0, 1.0, 3.0]
  log.on_epoch_begin(0)
  for batch, _ in enumerate(step_losses):
    log.on_train_batch_end(batch, {"loss": np.mean(step_losses[: batch + 1])})
  log.writer.flush()
  series = _scalars(tmp_path)
  assert series["train/loss"] == [(2, pytest.approx(3.0)), (4, pytest.approx(3.0)), (6, pytest.approx(2.0))]
  assert series["train/learning_rate"] == [(2, pytest.approx(0.5)), (4, pytest.approx(0.5)), (6, pytest.approx(0.5))]
  assert [step for step, _ in series["train/images_per_second"]] == [2, 4, 6]


def test_flat_hyperparameters_take_every_config_leaf_as_hparams_accepts():
  config = smoke.get_config()
  flat = summaries.flat_hyperparameters(config)
  assert flat["model.alpha"] == 0.35 and flat["optimizer.name"] == "adam" and flat["input.flip"] is True
  assert flat["model.aspp_rates"] == "[]" and flat["train.jit_compile"] == "auto"
  assert all(isinstance(value, (bool, int, float, str)) for value in flat.values())
  table = summaries.config_table(config)
  assert '| `model.backbone_weights` | `""` |' in table and "| `model.alpha` | `0.35` |" in table


def test_confusion_matrix_table_marks_absent_classes_and_gives_row_percentages():
  confusion = np.array([[90, 10, 0], [0, 0, 0], [5, 0, 15]])
  table = visualize.confusion_matrix_table(confusion, NAMES).splitlines()
  assert table[0] == "| truth \\ prediction | background | road | tree | pixels |"
  assert table[2] == "| **background** | **90%** | 10% | · | 100 |"
  assert table[3].startswith("| **road** | absent |") and table[3].endswith("| 0 |")
  assert table[4] == "| **tree** | 25% | · | **75%** | 20 |"


def test_confusion_matrix_picture_hatches_absent_rows_and_has_a_colour_scale():
  confusion = np.array([[90, 10, 0], [0, 0, 0], [5, 0, 15]])
  picture = visualize.confusion_matrix_picture(confusion, NAMES)
  present_row, absent_row = picture[40 + 15, :], picture[40 + 30 + 15, :]  # 40: header; 30: a row (3 classes)
  assert np.ptp(present_row[:, 1]) > 100  # Viridis cells from dark to bright.
  grey = absent_row[(absent_row[:, 0] == absent_row[:, 1]) & (absent_row[:, 1] == absent_row[:, 2])]
  assert len(grey) > 0.8 * len(absent_row)  # The absent row is greys only (hatching, its label, white).
  scale = picture[40 : 40 + 90, -62 + 8 + 8]  # The colour scale's column: bright at 100% (top), dark at 0%.
  assert scale[0].sum() > 2 * scale[-1].sum()


def test_triptych_legend_names_the_classes_of_truth_and_prediction():
  image = np.full((40, 50, 3), 128, np.uint8)
  truth = np.zeros((40, 50), np.uint8)
  truth[5:20, 5:20] = 1
  truth[0] = voc.IGNORE_LABEL
  prediction = np.zeros((40, 50), np.uint8)
  prediction[20:30, 20:40] = 2
  picture = visualize.triptych(image, truth, prediction, class_names=NAMES)
  width = picture.shape[1]
  expected = visualize.legend([0, 1, 2, voc.IGNORE_LABEL], NAMES, width)
  np.testing.assert_array_equal(picture[-expected.shape[0] :], expected)
  assert not np.array_equal(expected, visualize.legend([0, 1, 2, voc.IGNORE_LABEL], voc.CLASS_NAMES, width))
  assert not np.array_equal(expected, visualize.legend([0, 2, voc.IGNORE_LABEL], NAMES, width))


def test_summaries_name_each_class_by_its_name():
  """MeanIoU's report, keyed as the validation/iou/<class> tags are."""
  confusion = np.array([[9, 1, 0], [0, 0, 0], [0, 0, 5]])
  report = metrics_lib.summarize_confusion(confusion, NAMES)
  assert list(report["per_class_iou"]) == list(NAMES) and report["per_class_iou"]["road"] == 0.0
