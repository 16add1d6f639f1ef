"""Every bad value is caught before work starts: config fields (trainer/config_validation.py) and the flags of
every program (contracts/console.py), each refused in one line with exit code 2.

The subprocess checks are few on purpose: each program that imports TensorFlow takes seconds to start.
"""

import functools
import importlib
import pathlib
import re
import subprocess
import sys
from typing import NamedTuple

from absl import flags
import ml_collections
import pytest

from configs import base
from contracts import console
from contracts import errors
from trainer import config_validation

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHIPPED_CONFIGS = sorted(path.stem for path in (REPO_ROOT / "configs").glob("*.py") if path.stem != "__init__")


def leaf_fields(config: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
  fields = set()
  for name, value in config.items():
    path = f"{prefix}{name}"
    fields |= leaf_fields(value, f"{path}.") if isinstance(value, ml_collections.ConfigDict) else {path}
  return fields


def config_with(fields: dict) -> ml_collections.ConfigDict:
  """configs/base.py with `fields` (paths) set to any value, of any type: ConfigDict's own type checks would
  refuse some, but config.json files and library callers can still bring them."""
  values = base.get_config().to_dict()
  for field, value in fields.items():
    *parents, leaf = field.split(".")
    functools.reduce(dict.__getitem__, parents, values)[leaf] = value
  return ml_collections.ConfigDict(values)


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_every_shipped_config_validates(name):
  """base.py too: it is not meant to be trained by itself, but every recipe starts from it."""
  module = importlib.import_module(f"configs.{name}")
  if not hasattr(module, "get_config"):
    pytest.skip(f"configs/{name}.py has no get_config()")
  config_validation.validate(module.get_config())


class Bad(NamedTuple):
  field: str
  value: object
  phrase: str  # What the message says the field accepts.
  given: dict = {}  # Other fields, set first: the context of a cross-field rule.


BAD_VALUES = [
  Bad("seed", -1, "an int from 0 to 4294967295"),
  Bad("seed", "1", "an int from 0 to"),
  Bad("train_split", "", "a split name"),
  Bad("eval_split", "val/2012", "a split name"),
  Bad("model.num_classes", 1, "an int from 2 to 255"),
  Bad("model.num_classes", 256, "an int from 2 to 255"),
  Bad("model.num_classes", True, "an int from 2 to 255"),  # bool is an int subclass.
  Bad("model.class_names", ("background", "background"), "distinct, non-empty class names"),
  Bad("model.class_names", ("background", ""), "distinct, non-empty class names"),
  Bad("model.class_names", ("background", "cat"), "21 names, one per class"),
  Bad("model.class_colours", ((0, 0, 256),), "colours of 0..255"),
  Bad("loss.class_weighting", "median", "one of '', 'median_frequency', 'inverse_log'"),
  Bad(
    "loss.class_weighting",
    "inverse_log",
    "'' when config.loss.class_weights gives the weights",
    {"loss.class_weights": (1.0,) * 21},
  ),
  Bad("model.class_colours", ((0, 0, 0), (1, 2, 3)), "21 colours, one per class"),
  Bad("model.output_stride", 4, "one of 8, 16, 32"),
  Bad("model.output_stride", 16.0, "one of 8, 16, 32"),
  Bad("model.alpha", 0, "a number > 0"),
  Bad("model.alpha", 0.6, "one of 0.35, 0.5, 0.75, 1.0, 1.3, 1.4 with config.model.backbone_weights='imagenet'"),
  Bad("model.aspp_rates", (6, 0), "a tuple of atrous rates, ints > 0"),
  Bad("model.aspp_rates", 6, "a tuple of atrous rates"),
  Bad("model.separable", "yes", "True or False"),
  Bad("model.backbone_weights", "mobilenet.ckpt", "'imagenet', '' (random init) or the path of"),
  Bad("model.freeze_backbone_bn", 0, "True or False"),
  Bad("model.bn_momentum", 1.0, "a number in (0, 1)"),
  Bad("model.decoder", "False", "True or False"),
  Bad("model.residual_decoder", None, "True or False"),
  Bad("model.residual_decoder", True, "False with config.model.decoder=False", {"model.decoder": False}),
  Bad("model.align_corners", 1, "True or False"),
  Bad("model.depth_divisor", 0, "an int >= 1"),
  Bad("model.init_from", None, "a run directory"),
  Bad("model.trainable_layers", "decoder", "one of all, new, head"),
  Bad("model.trainable_layers", "new", "all or head without config.model.init_from"),
  Bad("input.crop_size", 0, "the training crop: an int > 0 or (height, width)"),
  Bad("input.crop_size", (321,), "an int > 0 or (height, width)"),
  Bad("input.crop_size", (321, 0.5), "an int > 0 or (height, width)"),
  Bad("input.canvas_size", -1, "the training canvas"),
  Bad("input.min_scale", 0, "a number > 0"),
  Bad("input.max_scale", "2", "a number > 0"),
  Bad("input.max_scale", 0.4, "a number >= config.input.min_scale=0.5"),
  Bad("input.flip", "True", "True or False"),
  Bad("input.photometric", 1, "True or False"),
  Bad("input.shuffle_buffer", -1, "an int >= 0"),
  Bad("input.eval_pad_to", 0, "the evaluation canvas"),
  Bad("batch_size", -3, "an int >= 1"),
  Bad("batch_size", 8.0, "an int >= 1"),
  Bad("eval_batch_size", 0, "an int >= 1"),
  Bad("optimizer.name", "rmsprop", "one of sgd, adam"),
  Bad("optimizer.learning_rate", 0, "a number > 0"),
  Bad("optimizer.learning_rate", float("nan"), "a number > 0"),
  Bad("optimizer.momentum", 1.0, "a number in [0, 1)"),
  Bad("optimizer.weight_decay", -1e-4, "a number >= 0"),
  Bad("optimizer.schedule", "step", "one of poly, cosine, constant"),
  Bad("optimizer.power", 0, "a number > 0"),
  Bad("optimizer.warmup_steps", -1, "an int >= 0"),
  Bad("optimizer.warmup_steps", 100, "fewer than the config.train.steps=100", {"train.steps": 100}),
  Bad("loss.class_weights", (1.0, -1.0) + (1.0,) * 19, "numbers >= 0"),
  Bad("loss.class_weights", (0,) * 21, "not all 0"),
  Bad("loss.class_weights", (1, 2), "21 weights, one per class"),
  Bad("loss.top_k_percent_pixels", 0, "a number in (0, 1]"),
  Bad("loss.top_k_percent_pixels", 1.5, "a number in (0, 1]"),
  Bad("train.epochs", -1, "an int >= 0"),
  Bad("train.epochs", 0, "unless config.train.steps > 0"),
  Bad("train.steps", -5, "an int >= 0"),
  Bad("train.steps_per_loop", -1, "an int >= 0"),
  Bad("train.eval_every_loops", 0, "an int >= 1"),
  Bad("train.early_stopping_patience", -1, "an int >= 0"),
  Bad("train.log_every_steps", 0, "an int >= 1"),
  Bad("train.num_triptychs", -1, "an int >= 0"),
  Bad("train.eval_steps", 1.5, "an int >= 0"),
  Bad("train.jit_compile", "yes", "auto, True or False"),
  Bad("train.jit_compile", 1, "auto, True or False"),
  Bad("train.steps_per_execution", -1, "an int >= 0"),
]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=[f"{bad.field}={bad.value!r}" for bad in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_the_field_and_what_it_accepts(bad):
  config = config_with({**bad.given, bad.field: bad.value})
  with pytest.raises(config_validation.ConfigError) as error:
    config_validation.validate(config)
  message = str(error.value)
  assert message.startswith(f"config.{bad.field}={bad.value!r}: expected ") and bad.phrase in message, message
  assert "\n" not in message


def test_the_table_tries_every_field_and_every_field_has_a_rule():
  """A field added to configs/base.py without a rule (and a bad value here) fails this test."""
  fields = leaf_fields(base.get_config())
  assert {bad.field for bad in BAD_VALUES} == fields
  assert {rule.field for rule in config_validation.FIELD_RULES} == fields


@pytest.mark.parametrize(
  "fields",
  [
    {"model.alpha": 0.6, "model.backbone_weights": ""},  # Any width without Keras's ImageNet weights.
    {"model.backbone_weights": "weights/mobilenet_v2_0.35.weights.h5", "model.alpha": 0.35},
    {"input.crop_size": (321, 481), "input.canvas_size": (500, 500)},
    {"input.crop_size": 640},  # Larger than the canvas: the crop is padded with void.
    {"train.epochs": 0, "train.steps": 10},
    {"model.class_names": tuple(f"class_{i}" for i in range(21))},
    {"model.trainable_layers": "new", "model.init_from": "runs/imported"},
    {"loss.class_weights": (0.5,) + (1,) * 20},
    {"train.jit_compile": True},
  ],
)
def test_good_values_pass(fields):
  config_validation.validate(config_with(fields))


@pytest.mark.parametrize("replicas", [None, 1, 2, 4, 8, 16])
def test_the_global_batch_splits_over_the_replicas(replicas):
  config_validation.validate(base.get_config(), num_replicas=replicas)


def test_a_batch_that_does_not_split_over_the_replicas_is_refused():
  with pytest.raises(
    config_validation.ConfigError,
    match=r"config.batch_size=16: does not split evenly over 3 "
    r"replicas; expected a multiple of 3",
  ):
    config_validation.validate(base.get_config(), num_replicas=3)


def test_the_first_bad_field_is_named_and_a_missing_field_is_said():
  with pytest.raises(config_validation.ConfigError, match=r"^config.seed="):
    config_validation.validate(config_with({"seed": -1, "batch_size": 0}))
  values = base.get_config().to_dict()
  del values["train"]["log_every_steps"]
  with pytest.raises(config_validation.ConfigError, match=r"config.train.log_every_steps is missing"):
    config_validation.validate(ml_collections.ConfigDict(values))


def test_train_raises_the_same_config_error_as_the_validation():
  """The rules the trainer checks itself (against the strategy and the loop) raise the validation's error, which
  every command line reports in one line (a contracts.errors.UserError)."""
  from trainer import train  # TensorFlow: only this test needs it.

  assert train.ConfigError is config_validation.ConfigError
  with pytest.raises(config_validation.ConfigError, match=r"config.train.jit_compile='sometimes': use auto"):
    train.plan_execution(config_with({"train.jit_compile": "sometimes"}), strategy=None, steps_per_loop=1, tpu=False)


def test_every_error_a_user_fixes_is_one_user_error():
  """One base that every command line catches (console.exit_on_user_error), whatever stage raised it."""
  from contracts import download
  from contracts import run_dir
  from contracts import shards
  from launch import common
  from preprocessing import conversion
  from trainer import distribute

  for error in (
    shards.DataError,
    run_dir.RunFolderError,
    download.DownloadError,
    config_validation.ConfigError,
    distribute.StrategyError,
    common.LaunchError,
    conversion.JobFailed,
  ):
    assert issubclass(error, errors.UserError), error
  assert conversion.JobFailed("x", 4).exit_code == 4 and shards.DataError("x").exit_code == console.EXIT_USAGE


def test_a_user_error_ends_a_program_in_one_line_with_its_exit_code(capsys):
  class Failed(errors.UserError):
    exit_code = 3

  with pytest.raises(SystemExit) as exit_info, console.exit_on_user_error():
    raise Failed("the data is bad: convert it again")
  assert exit_info.value.code == 3
  assert capsys.readouterr().err == "error: the data is bad: convert it again\n"
  with pytest.raises(KeyError), console.exit_on_user_error(ValueError):
    raise KeyError("not the user's")


# ------------------------------------------------------------------------------------------------------- flags


def test_flag_checks_refuse_bad_values_at_parse_time():
  flag_values = flags.FlagValues()
  flags.DEFINE_list("scales", ["1.0"], "", flag_values=flag_values)
  flags.DEFINE_string("md5", None, "", flag_values=flag_values)
  console.register_check("scales", console.each(console.positive_number), "numbers > 0", flag_values=flag_values)
  console.register_check("md5", console.matching(console.MD5), console.MD5_ACCEPTS, flag_values=flag_values)
  flag_values(["program", "--scales=0.5,1.25", f"--md5={'a' * 32}"])
  assert flag_values.scales == ["0.5", "1.25"]
  for argv, message in [
    (["--scales=0.5,0"], "flag --scales=['0.5', '0']: expected numbers > 0"),
    (["--scales=abc"], "expected numbers > 0"),
    (["--scales="], "expected numbers > 0"),
    (["--scales=inf"], "expected numbers > 0"),
    (["--md5=abc"], "expected an md5 checksum"),
  ]:
    flag_values.unparse_flags()
    with pytest.raises(flags.IllegalFlagValueError, match=re.escape(message)):
      flag_values(["program", *argv])


def run_program(module: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", module, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
  )


def the_one_line(result: subprocess.CompletedProcess) -> str:
  """The whole stderr of a program that stopped on a bad value: one line, exit code 2, no traceback."""
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr[-3000:])
  return lines[0]


@pytest.mark.parametrize(
  "override, message",
  [
    ("--config.batch_size=-3", "error: config.batch_size=-3: expected an int >= 1"),
    ("--config.loss.class_weights=(1,2)", "error: config.loss.class_weights=(1, 2): expected 21 weights"),
  ],
)
def test_the_trainer_refuses_a_bad_config_before_touching_devices_or_data(tmp_path, override, message):
  result = run_program(
    "trainer.main", "--config=configs/smoke.py", "--data_dir=/nonexistent", f"--model_dir={tmp_path}/run", override
  )
  assert the_one_line(result).startswith(message)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
  "module, args, message",
  [
    (
      "inference.evaluate",
      ["--model_dir=run", "--data_dir=data", "--scales=0.75,0"],
      "error: flag --scales=['0.75', '0']: expected comma-separated numbers > 0",
    ),
    (
      "inference.predict",
      ["--model_dir=run", "--input=photos", "--output_dir=out", "--scales=abc"],
      "error: flag --scales=['abc']: expected comma-separated numbers > 0",
    ),
    (
      "inference.export",
      ["--model_dir=run", "--output_dir=out", "--num_check_images=-1"],
      "error: flag --num_check_images=-1: -1 is not a non-negative integer",
    ),
    (
      "inference.import_model",
      ["--source=model.tflite", "--model_dir=run", "--aspp_rates=6,x"],
      "error: flag --aspp_rates=['6', 'x']: expected comma-separated ints > 0",
    ),
    (
      "preprocessing.make_tfrecords",
      ["--voc_root=voc", "--output_dir=out", "--splits=train,val/2012"],
      "make_tfrecords: error: flag --splits=['train', 'val/2012']: expected comma-separated split names",
    ),
  ],
)
def test_a_bad_flag_of_a_tensorflow_program_is_one_line(module, args, message):
  assert the_one_line(run_program(module, *args)).startswith(message)


@pytest.mark.parametrize(
  "module, args, message",
  [
    ("launch.gke", ["--image=img", "--name=Bad_Name", "--dry_run"], "error: flag --name=Bad_Name: expected a TFJob"),
    ("launch.gke", ["--image=img", "--namespace=-ml", "--dry_run"], "error: flag --namespace=-ml: expected"),
    ("launch.tpu_vm", ["--tpu_name=9seg", "--zone=z", "--dry_run"], "error: flag --tpu_name=9seg: expected a TPU"),
    (
      "launch.tpu_vm",
      ["--tpu_name=seg", "--zone=z", "--accelerator_type=v4", "--dry_run"],
      "error: flag --accelerator_type=v4: expected a TPU type such as v4-8",
    ),
    ("launch.tpu_vm", ["--tpu_name=seg", "--zone=z", "--remote_dir=a b", "--dry_run"], "error: flag --remote_dir="),
    (
      "launch.vertex_ai",
      ["--project=p", "--region=r", "--image=img", "--accelerator_type=t4", "--dry_run"],
      "error: flag --accelerator_type=t4: expected a Vertex AI accelerator type",
    ),
    (
      "launch.vertex_ai",
      ["--project=p", "--region=r", "--image=img", "--display_name=", "--dry_run"],
      "error: flag --display_name=: expected a job name",
    ),
    (
      "launch.dataflow",
      ["--project=p", "--region=r", "--temp_location=gs://b/t", "--job_name=Voc", "--dry_run"],
      "error: flag --job_name=Voc: expected a Dataflow job name",
    ),
    ("launch.local_workers", ["--stop_grace_seconds=-1", "--dry_run"], "error: flag --stop_grace_seconds=-1"),
  ],
)
def test_a_bad_launcher_flag_is_one_line(module, args, message):
  assert the_one_line(run_program(module, *args)).startswith(message)
