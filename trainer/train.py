"""Training and evaluation of one config under one tf.distribute strategy, with Keras's fit loop.

A Keras "epoch" here is a *loop* of `steps_per_loop` optimizer steps (one pass over the data by default):
validation, checkpoints and epoch-level summaries happen at loop ends, and a restarted run resumes there.
"""

import copy
import dataclasses
import json
import math
import os
import warnings

from absl import logging
import keras
import ml_collections
import numpy as np
import tensorflow as tf

from contracts import run_dir
from contracts import shards
from contracts import voc
from deeplab import building
from deeplab import metrics as metrics_lib
from deeplab import run_folder
from deeplab import tfrecords
from trainer import augment
from trainer import callbacks as callbacks_lib
from trainer import config_validation
from trainer import distribute
from trainer import input_pipeline
from trainer import keras_internals
from trainer import losses
from trainer import optimizers
from trainer import summaries
from trainer.config_validation import ConfigError

# Keras says this at the end of every pass over a finite, distributed validation set, where it is expected.
warnings.filterwarnings("ignore", message="Your input ran out of data")


@dataclasses.dataclass(frozen=True)
class Plan:
  """How many steps, loops and images a run makes; derived once from the config and the data."""

  num_train_examples: int
  global_batch_size: int
  steps_per_loop: int
  num_loops: int

  @property
  def total_steps(self) -> int:
    return self.steps_per_loop * self.num_loops


def make_plan(config: ml_collections.ConfigDict, num_train_examples: int) -> Plan:
  steps_per_epoch = max(1, math.ceil(num_train_examples / config.batch_size))
  total = config.train.steps or config.train.epochs * steps_per_epoch
  steps_per_loop = min(config.train.steps_per_loop or steps_per_epoch, total)
  return Plan(num_train_examples, config.batch_size, steps_per_loop, math.ceil(total / steps_per_loop))


@dataclasses.dataclass(frozen=True)
class Execution:
  """How the steps run on the devices; derived once from the config and the strategy (`plan_execution`)."""

  jit_compile: bool | str  # compile()'s argument: True, False or "auto" (Keras decides).
  steps_per_execution: int
  # Every batch of the same shape, the last evaluation batches padded with void images: what TPUs need.
  fixed_batch_shapes: bool


MAX_TPU_STEPS_PER_EXECUTION = 100
DEFAULT_EXECUTION = Execution(jit_compile="auto", steps_per_execution=1, fixed_batch_shapes=False)


def plan_execution(
  config: ml_collections.ConfigDict, strategy, steps_per_loop: int, *, tpu: bool | None = None
) -> Execution:
  """`tpu` (default: whether `strategy` is a TPUStrategy) chooses the TPU settings: XLA always, several steps
  per execution, fixed batch shapes. Tests set it to run the TPU path under the default strategy."""
  tpu = distribute.is_tpu(strategy) if tpu is None else tpu
  jit_compile = config.train.jit_compile
  if not (isinstance(jit_compile, bool) or jit_compile == "auto"):
    raise ConfigError(f"config.train.jit_compile={jit_compile!r}: use auto, True or False")
  steps = config.train.steps_per_execution
  if steps < 0 or (steps and steps_per_loop % steps):
    raise ConfigError(
      f"config.train.steps_per_execution={steps}: must divide the {steps_per_loop} steps of a loop "
      f"(config.train.steps_per_loop), or 0 for automatic"
    )
  if config.train.eval_steps and steps and config.train.eval_steps % steps:
    raise ConfigError(
      f"config.train.eval_steps={config.train.eval_steps}: must be a multiple of "
      f"config.train.steps_per_execution={steps} (Keras runs whole executions)"
    )
  if not steps:
    steps = (
      max(d for d in range(1, min(steps_per_loop, MAX_TPU_STEPS_PER_EXECUTION) + 1) if steps_per_loop % d == 0)
      if tpu
      else 1
    )
  if tpu:
    if jit_compile is False:
      raise ConfigError("config.train.jit_compile=False: TPUs run only XLA-compiled steps")
    if not config.input.eval_pad_to:
      raise ConfigError(
        "config.input.eval_pad_to=0: TPUs need fixed evaluation shapes; set it to your largest image side"
      )
  return Execution(jit_compile=True if tpu else jit_compile, steps_per_execution=steps, fixed_batch_shapes=tpu)


def with_class_names(config: ml_collections.ConfigDict, data_dir: str) -> ml_collections.ConfigDict:
  """A copy of `config` with model.class_names (and class_colours) filled in: the config's own, else those the
  conversion wrote beside the shards, else the default names (and VOC's colours). Raises ConfigError when the data
  names another number of classes."""
  names, source = tuple(config.model.class_names), "config.model.class_names"
  if not names:
    source = shards.class_names_path(data_dir)
    names = shards.read_class_names(source) or voc.default_class_names(config.model.num_classes)
  if len(names) != config.model.num_classes:
    raise ConfigError(
      f"config.model.num_classes={config.model.num_classes}, but {source} names {len(names)} "
      f"classes ({', '.join(names)}): set --config.model.num_classes={len(names)}"
    )
  colours = tuple(config.model.class_colours) or shards.read_class_colours(shards.class_colours_path(data_dir)) or ()
  config = copy.deepcopy(config)
  config.model.class_names = names
  config.model.class_colours = tuple(tuple(colour) for colour in colours) if len(colours) == len(names) else ()
  return config


def with_class_weights(config: ml_collections.ConfigDict, data_dir: str) -> ml_collections.ConfigDict:
  """With config.loss.class_weighting, a copy of `config` whose loss.class_weights are computed from the training
  split's pixel counts (its conversion summary) and logged; else `config`."""
  method = config.loss.class_weighting
  if not method:
    return config
  summary = shards.read_summary(data_dir, config.train_split)
  names = run_folder.class_names_of(config)
  if not summary or "class_image_pixels" not in summary:
    raise ConfigError(
      f"config.loss.class_weighting={method!r} needs the pixel counts of "
      f"{shards.summary_path(data_dir, config.train_split)}, which a conversion by this version "
      f"writes: convert the data again, or give config.loss.class_weights"
    )
  weights = losses.class_weights_from_pixels(
    [summary["class_pixels"].get(name, 0) for name in names],
    [summary["class_image_pixels"].get(name, 0) for name in names],
    method,
  )
  logging.info(
    "class weights (%s, from %s's pixel counts): %s",
    method,
    config.train_split,
    ", ".join(f"{name} {weight:.3f}" for name, weight in zip(names, weights, strict=True)),
  )
  config = copy.deepcopy(config)
  config.loss.class_weights = tuple(round(weight, 6) for weight in weights)
  return config


def _source_run(init_from: str) -> tuple[str, str]:
  """(run directory, weights file) named by config.model.init_from: a run directory or a weights file in one."""
  if tf.io.gfile.isdir(init_from):
    weights = run_dir.trained_weights(init_from)
    if weights is None:
      raise ConfigError(
        f"config.model.init_from={init_from}: no {run_dir.BEST_WEIGHTS} or {run_dir.FINAL_WEIGHTS} in it"
      )
    return init_from, weights
  if not tf.io.gfile.exists(init_from):
    raise ConfigError(f"config.model.init_from={init_from}: no such run directory or weights file")
  return run_dir.run_folder_of(init_from), init_from


def initialize_from(model: keras.Model, init_from: str) -> set[str]:
  """Copies every layer of `init_from`'s model whose name and weight shapes match into `model`; returns the names
  of the layers it set. Keras weight files match layers by order, so the source model is rebuilt from its run's
  config.json first."""
  source_dir, weights = _source_run(init_from)
  try:
    _, source, _ = run_folder.load_run(source_dir, weights)
  except run_dir.RunFolderError as error:
    raise ConfigError(f"config.model.init_from={init_from}: {error}") from None
  source_layers = {layer.name: layer for layer in source.layers if layer.weights}
  copied, fresh = set(), []
  for layer in model.layers:
    if not layer.weights:
      continue
    match = source_layers.get(layer.name)
    shapes = [tuple(w.shape) for w in layer.weights]
    if match is None:
      fresh.append(f"{layer.name} (not in the source)")
    elif [tuple(w.shape) for w in match.weights] != shapes:
      fresh.append(f"{layer.name} (shape {shapes[0]} here, {tuple(match.weights[0].shape)} in the source)")
    else:
      layer.set_weights(match.get_weights())
      copied.add(layer.name)
  logging.info("init_from %s: %d layers copied; fresh: %s", weights, len(copied), ", ".join(fresh) or "none")
  return copied


HEAD_PREFIXES = ("aspp", "decoder", "logits")


def set_trainable_layers(model: keras.Model, which: str, initialized: set[str]) -> None:
  """config.model.trainable_layers: "all" leaves the model as built; "new" freezes the layers init_from set;
  "head" freezes the encoder. Frozen batch norm runs in inference mode."""
  if which == "all":
    return
  if which not in ("new", "head"):
    raise ConfigError(f"config.model.trainable_layers={which!r}: use all, new or head")
  if which == "new" and not initialized:
    raise ConfigError("config.model.trainable_layers='new' needs config.model.init_from")
  for layer in model.layers:
    if layer.weights and (layer.name in initialized if which == "new" else not layer.name.startswith(HEAD_PREFIXES)):
      layer.trainable = False
  logging.info(
    "trainable layers (%s): %s",
    which,
    ", ".join(layer.name for layer in model.layers if layer.trainable_weights) or "none",
  )


def compile_model(
  model: keras.Model, config: ml_collections.ConfigDict, total_steps: int, execution: Execution = DEFAULT_EXECUTION
) -> metrics_lib.MeanIoU:
  """Compiles in place, with the train step cropping the input pipeline's canvases to config.input.crop_size
  (trainer/augment.py); returns the mIoU metric, whose confusion matrix the reports read."""
  try:
    optimizer = optimizers.create_optimizer(config.optimizer, total_steps)
    loss = losses.SegmentationLoss(
      config.model.num_classes,
      class_weights=tuple(config.loss.class_weights),
      top_k_percent_pixels=config.loss.top_k_percent_pixels,
    )
  except ValueError as error:
    raise ConfigError(str(error)) from None
  miou = metrics_lib.MeanIoU(config.model.num_classes)
  model.compile(
    optimizer=optimizer,
    loss=loss,
    metrics=[miou, metrics_lib.PixelAccuracy()],
    jit_compile=execution.jit_compile,
    steps_per_execution=execution.steps_per_execution,
  )
  miou.xla_compatible = bool(model.jit_compile)  # Keras has resolved "auto" by now.
  augment.crop_on_device(model, building.crop_size(config))
  return miou


def _wait_for_all_workers(strategy) -> None:
  """A barrier: a one-number all-reduce that returns only when every worker has reached it."""
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)


def _eval_dataset(strategy, config, files, execution: Execution):
  per_replica = _per_replica_eval_batch(config, strategy)
  return strategy.distribute_datasets_from_function(
    lambda context: tfrecords.eval_dataset(
      files,
      batch_size=per_replica,
      pad_to=config.input.eval_pad_to,
      input_context=context,
      fixed_shape_replicas=(
        context.num_replicas_in_sync // context.num_input_pipelines if execution.fixed_batch_shapes else 0
      ),
    )
  )


def _per_replica_eval_batch(config, strategy) -> int:
  return max(1, config.eval_batch_size // strategy.num_replicas_in_sync)


def _validation_samples(files: str, count: int) -> list:
  samples = []
  for image, label, _ in tfrecords.eval_dataset(files, batch_size=1, with_metadata=True).take(count):
    samples.append((image[0].numpy().astype(np.uint8), label[0].numpy().astype(np.uint8)))
  return samples


def evaluate(
  model: keras.Model,
  miou: metrics_lib.MeanIoU,
  config: ml_collections.ConfigDict,
  strategy,
  data_dir: str,
  execution: Execution = DEFAULT_EXECUTION,
) -> dict:
  """Validation figures over the whole eval split (padding never scored)."""
  dataset = _eval_dataset(strategy, config, shards.split_files(data_dir, config.eval_split), execution)
  results = model.evaluate(dataset, steps=config.train.eval_steps or None, verbose=0, return_dict=True)
  return {
    "loss": float(results["loss"]),
    **metrics_lib.summarize_confusion(miou.confusion_matrix(), run_folder.class_names_of(config)),
  }


def evaluate_checkpoint(
  config: ml_collections.ConfigDict,
  *,
  data_dir: str,
  model_dir: str,
  strategy: tf.distribute.Strategy,
  tpu: bool | None = None,
) -> dict:
  """Evaluates the best (else the final) weights of a finished run and rewrites its metrics.json."""
  config_validation.validate(config)  # Not the batch against the replicas: only training splits it.
  weights = run_dir.trained_weights(model_dir)
  if weights is None:
    raise run_dir.RunFolderError(
      f"no trained weights in {model_dir} (looked for {run_dir.BEST_WEIGHTS} and {run_dir.FINAL_WEIGHTS})"
    )
  config = with_class_names(config, data_dir)
  execution = plan_execution(config, strategy, steps_per_loop=config.train.steps_per_execution or 1, tpu=tpu)
  with strategy.scope():
    model = building.create_model(config)
    miou = compile_model(model, config, total_steps=1, execution=execution)
  model.load_weights(weights)
  report = evaluate(model, miou, config, strategy, data_dir, execution)
  report.update(weights=weights, split=config.eval_split)
  if distribute.is_chief(strategy):
    _write_json(run_dir.path(model_dir, run_dir.METRICS), report)
  return report


def _write_json(path: str, value) -> None:
  with tf.io.gfile.GFile(path, "w") as f:
    json.dump(value, f, indent=2)


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  *,
  data_dir: str,
  model_dir: str,
  strategy: tf.distribute.Strategy,
  evaluate_at_end: bool = True,
  tpu: bool | None = None,
) -> dict:
  """`tpu`: see plan_execution."""
  config_validation.validate(config, strategy.num_replicas_in_sync)
  chief = distribute.is_chief(strategy)
  keras.utils.set_random_seed(config.seed)  # Same initial weights on every worker, and run to run.
  train_files = shards.split_files(data_dir, config.train_split)
  eval_files = shards.split_files(data_dir, config.eval_split)
  plan = make_plan(config, shards.count_examples(data_dir, config.train_split))
  logging.info(
    "plan: %d training examples, global batch %d over %d replicas, %d loops x %d steps = %d steps",
    plan.num_train_examples,
    plan.global_batch_size,
    strategy.num_replicas_in_sync,
    plan.num_loops,
    plan.steps_per_loop,
    plan.total_steps,
  )
  config = with_class_weights(with_class_names(config, data_dir), data_dir)
  execution = plan_execution(config, strategy, plan.steps_per_loop, tpu=tpu)
  logging.info(
    "execution: jit_compile=%s, %d steps per execution%s",
    execution.jit_compile,
    execution.steps_per_execution,
    ", fixed batch shapes" if execution.fixed_batch_shapes else "",
  )
  if chief:
    tf.io.gfile.makedirs(run_dir.path(model_dir, run_dir.CHECKPOINTS))
    with tf.io.gfile.GFile(run_dir.path(model_dir, run_dir.CONFIG), "w") as f:
      f.write(config.to_json_best_effort(indent=2))  # What predict/export rebuild the model from.

  per_replica_batch = config.batch_size // strategy.num_replicas_in_sync
  with strategy.scope():
    model = building.create_model(config)
    initialized = initialize_from(model, config.model.init_from) if config.model.init_from else set()
    set_trainable_layers(model, config.model.trainable_layers, initialized)
    miou = compile_model(model, config, plan.total_steps, execution)
  train_data = strategy.distribute_datasets_from_function(
    lambda context: input_pipeline.train_dataset(
      train_files,
      batch_size=per_replica_batch,
      crop_size=building.crop_size(config),
      canvas_size=config.input.canvas_size,
      min_scale=config.input.min_scale,
      max_scale=config.input.max_scale,
      flip=config.input.flip,
      photometric=config.input.photometric,
      shuffle_buffer=config.input.shuffle_buffer,
      seed=config.seed,
      input_context=context,
    )
  )

  keras_internals.build_for_fit(
    model, strategy, config.batch_size // strategy.num_replicas_in_sync, building.crop_size(config)
  )

  # Every worker keeps its own resume checkpoint (identical weights); only the chief writes what users read. All
  # restore the chief's, so that they resume at the same loop even when a failure struck between two saves.
  resume_dir = run_dir.path(model_dir, run_dir.RESUME)
  resume = callbacks_lib.ResumeFromCheckpoint(os.path.join(resume_dir, distribute.task_name(strategy)))
  resume.set_model(model)
  completed_loops = resume.restore(from_directory=os.path.join(resume_dir, distribute.chief_task_name(strategy)))
  if completed_loops:
    logging.info(
      "resuming after loop %d of %d (step %d)", completed_loops, plan.num_loops, int(model.optimizer.iterations.numpy())
    )
  tensorboard = summaries.TensorBoardLog(
    model_dir,
    config=config,
    class_names=run_folder.class_names_of(config),
    class_colours=run_folder.class_colours_of(config),
    miou=miou,
    samples=_validation_samples(eval_files, config.train.num_triptychs) if chief else [],
    write=chief,
  )
  callbacks = [tensorboard, keras.callbacks.TerminateOnNaN()]
  if chief:
    callbacks.append(callbacks_lib.BestCheckpoint(run_dir.path(model_dir, run_dir.BEST_WEIGHTS)))
  if config.train.early_stopping_patience:
    callbacks.append(
      keras.callbacks.EarlyStopping(monitor="val_miou", mode="max", patience=config.train.early_stopping_patience)
    )
  callbacks.append(resume)  # Last: a loop is committed only after everything else has seen it.

  history = model.fit(
    train_data,
    epochs=plan.num_loops,
    initial_epoch=completed_loops,
    steps_per_epoch=plan.steps_per_loop,
    validation_data=_eval_dataset(strategy, config, eval_files, execution),
    validation_steps=config.train.eval_steps or None,
    validation_freq=config.train.eval_every_loops,
    callbacks=callbacks,
    shuffle=False,
    verbose=2 if chief else 0,
  )
  losses_seen = history.history.get("loss", [])
  if losses_seen and not np.isfinite(losses_seen[-1]):
    raise FloatingPointError(
      f"training stopped: the loss became {losses_seen[-1]} at step {int(model.optimizer.iterations.numpy())}"
    )

  steps = int(model.optimizer.iterations.numpy())
  if chief:
    model.save_weights(run_dir.path(model_dir, run_dir.FINAL_WEIGHTS))
  _wait_for_all_workers(strategy)  # The others read the checkpoints the chief has just written.
  if not evaluate_at_end:
    return {"steps": steps}
  weights = run_dir.trained_weights(model_dir)
  model.load_weights(weights)
  report = evaluate(model, miou, config, strategy, data_dir, execution)
  report.update(steps=steps, weights=weights, split=config.eval_split)
  if chief:
    _write_json(run_dir.path(model_dir, run_dir.METRICS), report)
    tensorboard.write_final(report)
  return report
