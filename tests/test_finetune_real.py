"""A short fine-tune on real VOC images from the ImageNet weights: it must learn, not merely run."""

import pytest

from configs import voc_sample_finetune
from preprocessing import make_tfrecords
from trainer import distribute
from trainer import runs
from trainer import train


@pytest.fixture(scope="module")
def real_records(voc_sample, tmp_path_factory) -> str:
  out = tmp_path_factory.mktemp("voc_sample_records")
  make_tfrecords.run(["make_tfrecords", f"--voc_root={voc_sample}", f"--output_dir={out}"])
  return str(out)


def test_fine_tuning_from_imagenet_lowers_the_loss_and_raises_miou(real_records, imagenet_weights, tmp_path):
  config = voc_sample_finetune.get_config()
  config.model.backbone_weights = str(imagenet_weights)
  config.input.crop_size = 225
  config.optimizer.learning_rate = 5e-4
  config.train.steps = 60
  config.train.steps_per_loop = 60
  config.train.eval_steps = 6  # 48 val images at their native size (padded to 512, padding unscored).
  config.train.num_triptychs = 0
  strategy = distribute.create_strategy("default")

  with strategy.scope():
    untrained = runs.create_model(config)
    miou = train.compile_model(untrained, config, total_steps=1)
  before = train.evaluate(untrained, miou, config, strategy, real_records)

  after = train.train_and_evaluate(config, data_dir=real_records, model_dir=str(tmp_path), strategy=strategy)
  assert after["steps"] == 60
  assert after["loss"] < 0.6 * before["loss"]
  # An untrained head scores about 0.015 here; after these 60 steps 0.066-0.100 were seen over seeds 0-2 (0.28
  # after 5 epochs).
  assert after["miou"] > max(3 * before["miou"], 0.05), (before, after)
  assert after["pixel_accuracy"] > 0.6, (before, after)
