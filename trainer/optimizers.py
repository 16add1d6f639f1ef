"""Optimizer and learning-rate schedule from the config: SGD+momentum or Adam; poly or cosine with warmup."""

import keras
import ml_collections


@keras.saving.register_keras_serializable(package="trainer")
class WarmupThen(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup from 0 to the schedule's starting rate over `warmup_steps`, then the schedule itself."""

  def __init__(self, schedule, warmup_steps: int):
    self.schedule = schedule
    self.warmup_steps = int(warmup_steps)

  def __call__(self, step):
    step = keras.ops.cast(step, "float32")
    warmup = keras.ops.cast(self.warmup_steps, "float32")
    after = self.schedule(keras.ops.maximum(step - warmup, 0.0))
    ramp = self.schedule(0) * (step + 1.0) / keras.ops.maximum(warmup, 1.0)
    return keras.ops.where(step < warmup, ramp, after)

  def get_config(self):
    return {"schedule": keras.saving.serialize_keras_object(self.schedule), "warmup_steps": self.warmup_steps}

  @classmethod
  def from_config(cls, config):
    return cls(keras.saving.deserialize_keras_object(config["schedule"]), config["warmup_steps"])


def learning_rate(config: ml_collections.ConfigDict, total_steps: int):
  """The schedule over `total_steps` optimizer steps (warmup included)."""
  decay_steps = max(1, total_steps - config.warmup_steps)
  if config.schedule == "poly":
    schedule = keras.optimizers.schedules.PolynomialDecay(
      config.learning_rate, decay_steps, end_learning_rate=0.0, power=config.power
    )
  elif config.schedule == "cosine":
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps)
  elif config.schedule == "constant":
    if not config.warmup_steps:
      return config.learning_rate
    schedule = keras.optimizers.schedules.PolynomialDecay(config.learning_rate, decay_steps, config.learning_rate)
  else:
    raise ValueError(f"unknown optimizer.schedule {config.schedule!r}: use poly, cosine or constant")
  return WarmupThen(schedule, config.warmup_steps) if config.warmup_steps else schedule


def create_optimizer(config: ml_collections.ConfigDict, total_steps: int) -> keras.optimizers.Optimizer:
  lr = learning_rate(config, total_steps)
  weight_decay = config.weight_decay or None
  if config.name == "sgd":
    optimizer = keras.optimizers.SGD(lr, momentum=config.momentum, weight_decay=weight_decay)
  elif config.name == "adam":
    optimizer = keras.optimizers.Adam(lr, weight_decay=weight_decay)
  else:
    raise ValueError(f"unknown optimizer.name {config.name!r}: use sgd or adam")
  if weight_decay:
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
  return optimizer
