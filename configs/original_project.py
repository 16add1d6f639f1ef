"""The original project's recipe (the project this one grew from): Adam, batch 4, 5 epochs, early stopping and
best-model checkpoints.

  python -m trainer.main --config=configs/original_project.py --data_dir=DATA --model_dir=runs/original_project
"""

from configs import base


def get_config():
  config = base.get_config()
  config.batch_size = 4
  config.eval_batch_size = 4
  config.input.crop_size = 512
  # Adam at 1e-4: 1e-3 wrecks the pretrained backbone in short fine-tunes.
  config.optimizer.update(name="adam", learning_rate=1e-4, weight_decay=0.0, schedule="constant")
  config.train.epochs = 5
  config.train.early_stopping_patience = 3
  return config
