"""Checks every field of a run config before any work starts: a bad value is one ConfigError that names the
field and says what it accepts, not a traceback minutes into a run, nor a run that silently does something else.

`validate` applies FIELD_RULES (one per field of configs/base.py, in its order), then CROSS_FIELD_RULES, which
may rely on every field having the right type. What needs the data or the devices (steps per loop, image sizes
against eval_pad_to) is checked where those are known, in trainer/train.py.
"""

from collections.abc import Callable
import dataclasses
import functools
import math
import numbers
from typing import Any

import ml_collections

from contracts import console
from contracts import errors
from deeplab import mobilenet_v2
from trainer import losses

IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)  # The widths of keras.applications' ImageNet MobileNetV2s.
MAX_CLASSES = 255  # Labels are uint8 and 255 is the void label.
OPTIMIZERS = ("sgd", "adam")  # trainer/optimizers.py
SCHEDULES = ("poly", "cosine", "constant")
TRAINABLE_LAYERS = ("all", "new", "head")  # trainer/train.py's set_trainable_layers


class ConfigError(errors.UserError, ValueError):
  """A config value that cannot work (reported to the user in one line)."""


@dataclasses.dataclass(frozen=True)
class Rule:
  """`field` (a path below config) is valid when `check(value, config)` holds; else the error says `accepts`,
  formatted with the config as `c` (e.g. "{c.model.num_classes} weights")."""

  field: str
  # The value is whatever the config holds there: a field rule tests its kind first (is_int, ...) and the
  # cross-field rules run only once every field rule has passed, so they may use the values as those accept.
  check: Callable[[Any, ml_collections.ConfigDict], bool]
  accepts: str


# ------------------------------------------------------------------------------------------------- value kinds


def is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # True is an int to Python.


def is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_size(value) -> bool:
  """An int > 0, or (height, width) of them: what deeplab/tfrecords.size_pair takes."""
  pair = value if isinstance(value, (tuple, list)) else (value, value)
  return len(pair) == 2 and all(is_int(side) and side > 0 for side in pair)


def _colours(value) -> bool:
  return isinstance(value, (tuple, list)) and all(
    isinstance(colour, (tuple, list)) and len(colour) == 3 and all(is_int(v) and 0 <= v <= 255 for v in colour)
    for colour in value
  )


def _names(value) -> bool:
  return (
    isinstance(value, (tuple, list))
    and all(isinstance(name, str) and name.strip() for name in value)
    and len(set(value)) == len(value)
  )


def _weights(value) -> bool:
  return isinstance(value, (tuple, list)) and all(is_number(w) and w >= 0 for w in value) and (not value or any(value))


def _backbone_weights(value) -> bool:
  return isinstance(value, str) and (value in ("imagenet", "") or value.endswith((".h5", ".hdf5")))


# --------------------------------------------------------------------------------------------- rule builders


def _int(field: str, low: int, high: int | None = None) -> Rule:
  accepts = f"an int >= {low}" if high is None else f"an int from {low} to {high}"
  return Rule(field, lambda v, c: is_int(v) and v >= low and (high is None or v <= high), accepts)


def _number(field: str, accepts: str, within: Callable[[float], bool]) -> Rule:
  return Rule(field, lambda v, c: is_number(v) and within(v), accepts)


def _positive(field: str) -> Rule:
  return _number(field, "a number > 0", lambda v: v > 0)


def _bool(field: str) -> Rule:
  return Rule(field, lambda v, c: isinstance(v, bool), "True or False")


def _one_of(field: str, allowed: tuple) -> Rule:
  # Not `v in allowed`: 1 == True and 16.0 == 16 would pass.
  return Rule(
    field, lambda v, c: any(type(v) is type(a) and v == a for a in allowed), f"one of {', '.join(map(str, allowed))}"
  )


def _split(field: str) -> Rule:
  return Rule(field, lambda v, c: isinstance(v, str) and console.matching(console.SPLIT)(v), console.SPLIT_ACCEPTS)


def _size(field: str, what: str) -> Rule:
  return Rule(field, lambda v, c: is_size(v), f"{what}: an int > 0 or (height, width)")


FIELD_RULES = (
  _int("seed", 0, 2**32 - 1),
  _split("train_split"),
  _split("eval_split"),
  _int("model.num_classes", 2, MAX_CLASSES),
  Rule("model.class_names", lambda v, c: _names(v), "() or a tuple of distinct, non-empty class names"),
  Rule("model.class_colours", lambda v, c: _colours(v), "() or a tuple of (r, g, b) colours of 0..255"),
  _one_of("model.output_stride", mobilenet_v2.OUTPUT_STRIDES),
  _positive("model.alpha"),
  Rule(
    "model.aspp_rates",
    lambda v, c: isinstance(v, (tuple, list)) and all(is_int(r) and r > 0 for r in v),
    "a tuple of atrous rates, ints > 0 (() for the lean mobile head)",
  ),
  _bool("model.separable"),
  Rule(
    "model.backbone_weights",
    lambda v, c: _backbone_weights(v),
    "'imagenet', '' (random init) or the path of a no-top MobileNetV2 .weights.h5 file",
  ),
  _bool("model.freeze_backbone_bn"),
  _number("model.bn_momentum", "a number in (0, 1)", lambda v: 0 < v < 1),
  _bool("model.decoder"),
  _bool("model.residual_decoder"),
  _bool("model.align_corners"),
  _int("model.depth_divisor", 1),
  Rule("model.init_from", lambda v, c: isinstance(v, str), "a run directory, a .weights.h5 in one, or ''"),
  _one_of("model.trainable_layers", TRAINABLE_LAYERS),
  _size("input.crop_size", "the training crop"),
  _size("input.canvas_size", "the training canvas"),
  _positive("input.min_scale"),
  _positive("input.max_scale"),
  _bool("input.flip"),
  _bool("input.photometric"),
  _int("input.shuffle_buffer", 0),
  # 0 would mean unpadded images, which the evaluation's batches (of eval_batch_size) cannot hold.
  _size("input.eval_pad_to", "the evaluation canvas, at least the largest image"),
  _int("batch_size", 1),
  _int("eval_batch_size", 1),
  _one_of("optimizer.name", OPTIMIZERS),
  _positive("optimizer.learning_rate"),
  _number("optimizer.momentum", "a number in [0, 1)", lambda v: 0 <= v < 1),
  _number("optimizer.weight_decay", "a number >= 0", lambda v: v >= 0),
  _one_of("optimizer.schedule", SCHEDULES),
  _positive("optimizer.power"),
  _int("optimizer.warmup_steps", 0),
  Rule("loss.class_weights", lambda v, c: _weights(v), "() for all 1, or numbers >= 0 (not all 0)"),
  Rule(
    "loss.class_weighting",
    lambda v, c: v in losses.CLASS_WEIGHTINGS,
    f"one of {', '.join(repr(w) for w in losses.CLASS_WEIGHTINGS)}",
  ),
  _number("loss.top_k_percent_pixels", "a number in (0, 1]", lambda v: 0 < v <= 1),
  _int("train.epochs", 0),
  _int("train.steps", 0),
  _int("train.steps_per_loop", 0),
  _int("train.eval_every_loops", 1),
  _int("train.early_stopping_patience", 0),
  _int("train.log_every_steps", 1),
  _int("train.num_triptychs", 0),
  _int("train.eval_steps", 0),
  Rule("train.jit_compile", lambda v, c: isinstance(v, bool) or v == "auto", "auto, True or False"),
  _int("train.steps_per_execution", 0),
)

CROSS_FIELD_RULES = (
  Rule(
    "model.class_colours",
    lambda v, c: not v or len(v) == c.model.num_classes,
    "{c.model.num_classes} colours, one per class (config.model.num_classes), or ()",
  ),
  Rule(
    "model.class_names",
    lambda v, c: not v or len(v) == c.model.num_classes,
    "{c.model.num_classes} names, one per class (config.model.num_classes), or ()",
  ),
  Rule(
    "model.alpha",
    lambda v, c: c.model.backbone_weights != "imagenet" or v in IMAGENET_ALPHAS,
    f"one of {', '.join(map(str, IMAGENET_ALPHAS))} with config.model.backbone_weights='imagenet' "
    f"(Keras's ImageNet MobileNetV2 widths)",
  ),
  Rule(
    "model.residual_decoder",
    lambda v, c: not v or c.model.decoder,
    "False with config.model.decoder=False (it corrects the decoder's input)",
  ),
  Rule(
    "model.trainable_layers",
    lambda v, c: v != "new" or c.model.init_from,
    "all or head without config.model.init_from ('new' trains the layers init_from did not set)",
  ),
  Rule(
    "input.max_scale", lambda v, c: v >= c.input.min_scale, "a number >= config.input.min_scale={c.input.min_scale}"
  ),
  Rule(
    "optimizer.warmup_steps",
    lambda v, c: not c.train.steps or v < c.train.steps,
    "fewer than the config.train.steps={c.train.steps} of the whole run",
  ),
  Rule(
    "loss.class_weighting",
    lambda v, c: not v or not c.loss.class_weights,
    "'' when config.loss.class_weights gives the weights (one or the other)",
  ),
  Rule(
    "loss.class_weights",
    lambda v, c: not v or len(v) == c.model.num_classes,
    "{c.model.num_classes} weights, one per class (config.model.num_classes), or () for all 1",
  ),
  Rule(
    "train.epochs",
    lambda v, c: v >= 1 or c.train.steps > 0,
    "an int >= 1, unless config.train.steps > 0 sets the length of the run",
  ),
)


def field_value(config: ml_collections.ConfigDict, field: str):
  try:
    return functools.reduce(getattr, field.split("."), config)
  except AttributeError:
    raise ConfigError(f"config.{field} is missing (configs/base.py has every field)") from None


def validate(config: ml_collections.ConfigDict, num_replicas: int | None = None) -> None:
  """Raises ConfigError("config.FIELD=VALUE: what it accepts") for the first bad field. num_replicas (the
  strategy's): the global batch must split evenly over them."""
  for rule in (*FIELD_RULES, *CROSS_FIELD_RULES):
    value = field_value(config, rule.field)
    if not rule.check(value, config):
      raise ConfigError(f"config.{rule.field}={value!r}: expected {rule.accepts.format(c=config)}")
  if num_replicas and config.batch_size % num_replicas:
    raise ConfigError(
      f"config.batch_size={config.batch_size}: does not split evenly over {num_replicas} "
      f"replicas; expected a multiple of {num_replicas} (the batch is global)"
    )
