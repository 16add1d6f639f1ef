"""The model of a run folder rebuilt from its config.json and weights (contracts/run_dir.py lays the folder out),
and the run's class names and colours. Fine-tuning (config.model.init_from) and inference/ load runs through
here."""

import json

import keras
import ml_collections
import tensorflow as tf

from configs import base as base_config
from contracts import run_dir
from contracts import voc
from deeplab import building


def class_colours_of(config: ml_collections.ConfigDict) -> tuple:
  """The run's class colours (config.model.class_colours, from the data set's colour table), else () for VOC's."""
  return tuple(tuple(colour) for colour in config.model.get("class_colours", ()))


def class_names_of(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The run's class names (config.model.class_names, else the default names of its number of classes)."""
  return tuple(config.model.class_names) or voc.default_class_names(config.model.num_classes)


def read_run_config(model_dir: str) -> ml_collections.ConfigDict:
  """The config.json of a run directory, as the run's model is rebuilt from it (its weights replace any init)."""
  config_path = run_dir.path(model_dir, run_dir.CONFIG)
  if not tf.io.gfile.exists(config_path):
    raise run_dir.RunFolderError(f"{model_dir} has no {run_dir.CONFIG}: is it a training run's --model_dir?")
  with tf.io.gfile.GFile(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  for field, default in base_config.get_config().model.items():  # Runs written before a field existed.
    if field not in config.model:
      config.model[field] = default
  config.model.backbone_weights = ""
  config.model.init_from = ""
  return config


def load_run(model_dir: str, weights: str | None = None) -> tuple[ml_collections.ConfigDict, keras.Model, str]:
  """(config, model with the run's weights, weights path) of a run directory: weights, else its best, else final."""
  config = read_run_config(model_dir)
  found = (weights if tf.io.gfile.exists(weights) else None) if weights else run_dir.trained_weights(model_dir)
  if found is None:
    wanted = weights or f"{model_dir}/{run_dir.BEST_WEIGHTS} or {run_dir.FINAL_WEIGHTS}"
    raise run_dir.RunFolderError(f"no weights found (looked for {wanted})")
  model = building.create_model(config)
  model.load_weights(found)
  return config, model, found
