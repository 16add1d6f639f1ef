"""Trains and evaluates DeepLabV3+ / MobileNetV2: `python -m trainer.main --config=configs/NAME.py ...`.

  python -m trainer.main --config=configs/smoke.py --data_dir=DATA --model_dir=runs/smoke
  python -m trainer.main --config=configs/deeplab_voc.py --config.batch_size=32 --strategy=mirrored \
      --mixed_precision=mixed_float16 --data_dir=gs://BUCKET/voc --model_dir=gs://BUCKET/runs/1

Any config field can be set with --config.FIELD=VALUE. A problem with the flags, the config or the data is
reported in one line with exit code 2.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
import keras
from ml_collections import config_flags

from contracts import console
from contracts import errors
from trainer import config_validation
from trainer import distribute
from trainer import train

try:  # ml_collections loads the config and applies --config.FIELD overrides here, at definition.
  _CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/smoke.py", "Config file (a get_config() module).", lock_config=True
  )
except (AttributeError, KeyError) as _error:
  console.exit_with(f"the config has no field {str(_error).strip(chr(34))} (configs/base.py lists them all)")
except (TypeError, ValueError, OSError) as _error:
  console.exit_with(f"bad --config or --config.FIELD override: {_error}")
_DATA_DIR = flags.DEFINE_string(
  "data_dir", None, "Folder (or gs:// path) with the {split}-*.tfrecord shards.", required=True
)
_MODEL_DIR = flags.DEFINE_string(
  "model_dir", None, "Where checkpoints, TensorBoard logs and metrics.json go; local or gs://.", required=True
)
_STRATEGY = flags.DEFINE_enum("strategy", "default", distribute.STRATEGIES, "tf.distribute strategy.")
_TPU = flags.DEFINE_string("tpu", "", "TPU name or 'local' (with --strategy=tpu).")
_MIXED_PRECISION = flags.DEFINE_enum(
  "mixed_precision",
  "float32",
  ["float32", "mixed_float16", "mixed_bfloat16"],
  "Keras dtype policy: mixed_float16 on GPUs, mixed_bfloat16 on TPUs.",
)
_CPU_BF16_MATH = flags.DEFINE_bool(
  "cpu_bf16_math",
  False,
  "Let oneDNN round the inputs of float32 convolutions and matmuls to bfloat16 (float32 "
  "sums), as TF32 does on GPUs. Takes effect where oneDNN has such kernels (its AMX ones, i.e. Intel CPUs with "
  "AMX; not AVX512-BF16 alone); the log says whether it did. No effect on GPUs and TPUs.",
)
_MODE = flags.DEFINE_enum(
  "mode",
  "train_and_eval",
  ["train", "eval", "train_and_eval"],
  "train_and_eval trains, then evaluates the best checkpoint; eval only evaluates.",
)
_NUM_CPU_DEVICES = flags.DEFINE_integer(
  "num_cpu_devices",
  0,
  "Split the CPU into N logical devices (so that --strategy=mirrored has N replicas without GPUs).",
  lower_bound=0,
)


def _parse_flags(argv):
  """The project's one-line parser (contracts/console.py), and the same for ml_collections's --config.FIELD errors."""
  try:
    return console.parse_flags(argv)
  except (AttributeError, KeyError) as error:  # ml_collections, for a --config.FIELD that does not exist.
    console.exit_with(f"the config has no field {str(error).strip(chr(34))} (configs/base.py lists them all)")
  except (TypeError, ValueError) as error:
    console.exit_with(f"bad --config override: {error}")


def main(argv):
  if len(argv) > 1:
    console.exit_with(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    config = _CONFIG.value
    config.keys()  # A --config file that failed to load only says so when first used.
    # Before any device or data is touched; train_and_evaluate checks again with the strategy's replicas.
    config_validation.validate(config)
  except OSError as error:
    console.exit_with(
      f"--config={config_flags.get_config_filename(flags.FLAGS['config'])}: {' '.join(str(error).split())}"
    )
  except errors.UserError as error:  # config_validation.ConfigError
    console.exit_with(str(error))
  # TF's checkpointing logs a timing line through absl at every save; it would interleave with the epoch lines.
  logging.get_absl_logger().addFilter(lambda record: "Sharding callback duration" not in record.getMessage())
  if _CPU_BF16_MATH.value:
    distribute.use_bf16_cpu_math()
  if _NUM_CPU_DEVICES.value > 1:
    distribute.split_cpu(_NUM_CPU_DEVICES.value)
  cpu_math = ""
  if _CPU_BF16_MATH.value:  # After split_cpu: the check runs an op, which initialises the devices.
    cpu_math = (
      ", bfloat16 CPU math"
      if distribute.bf16_cpu_math_in_effect()
      else ", --cpu_bf16_math has no effect on this CPU (oneDNN keeps float32 convolutions)"
    )
  keras.mixed_precision.set_global_policy(_MIXED_PRECISION.value)
  with console.exit_on_user_error(FloatingPointError):  # A loss that became NaN or infinite.
    strategy = distribute.create_strategy(_STRATEGY.value, tpu=_TPU.value)
    logging.info(
      "strategy %s with %d replicas, policy %s%s",
      _STRATEGY.value,
      strategy.num_replicas_in_sync,
      _MIXED_PRECISION.value,
      cpu_math,
    )
    if _MODE.value == "eval":
      report = train.evaluate_checkpoint(
        config, data_dir=_DATA_DIR.value, model_dir=_MODEL_DIR.value, strategy=strategy
      )
    else:
      report = train.train_and_evaluate(
        config,
        data_dir=_DATA_DIR.value,
        model_dir=_MODEL_DIR.value,
        strategy=strategy,
        evaluate_at_end=_MODE.value == "train_and_eval",
      )
  if report:
    print(json.dumps({k: report[k] for k in ("miou", "pixel_accuracy") if k in report}))
    print(f"TensorBoard: tensorboard --logdir={_MODEL_DIR.value}")


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  app.run(main, flags_parser=_parse_flags)
