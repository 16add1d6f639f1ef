"""How every program of the project reports a bad command line: one line `error: ...` on stderr, exit code 2.

The trainer's, the conversion's and the launchers' programs all parse their flags here, and check their values
with absl's own means (bounds, enums, required flags, and the validators below), so that a bad value fails at
parse time, before any work. It lives in launch/ because that package imports nothing heavy: trainer/ and
preprocessing/ load TensorFlow and Beam on import, which the launchers must not wait for.
"""

import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import flags

EXIT_USAGE = 2  # A bad flag, config or data: fixed by the user, so not worth a retry.

SPLIT = r"[\w.-]+"  # Its shards are SPLIT-*.tfrecord, its list ImageSets/Segmentation/SPLIT.txt.
SPLIT_ACCEPTS = "a split name of letters, digits, '_', '.' or '-'"
MD5 = r"[0-9a-fA-F]{32}"
MD5_ACCEPTS = "an md5 checksum (32 hexadecimal digits)"


def exit_with(message: str, exit_code: int = EXIT_USAGE, *, program: str = "") -> NoReturn:
  """Ends the program with one line on stderr, after what it printed to stdout so far."""
  sys.stdout.flush()
  sys.stderr.write(f"{program}: error: {message}\n" if program else f"error: {message}\n")
  sys.exit(exit_code)


def parse_flags(argv: Sequence[str], *, known_only: bool = False, unknown_flag_hint: str = "",
                program: str = "") -> list[str]:
  """app.run's flags_parser: absl's, but a bad flag is one line and exit code 2 instead of the usage text and
  exit code 1. known_only: leave unknown flags in the result (for Beam's options)."""
  try:
    return flags.FLAGS(list(argv), known_only=known_only)
  except flags.Error as error:
    lines = str(error).strip().splitlines()
    message = lines[-1] if lines else type(error).__name__
    if unknown_flag_hint and isinstance(error, flags.UnrecognizedFlagError):
      message += f" ({unknown_flag_hint})"
    exit_with(message, program=program)


def register_check(name: str, check: Callable[[Any], bool], accepts: str, *,
                   flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Refuses a bad --name at parse time with `flag --name=VALUE: expected ACCEPTS`. An unset flag (None) passes:
  mark_flags_as_required is for that. A check that raises TypeError or ValueError refuses the value."""
  def valid(value) -> bool:
    try:
      return value is None or bool(check(value))
    except (TypeError, ValueError):
      return False

  flags.register_validator(name, valid, f"expected {accepts}", flag_values=flag_values)


def matching(pattern: str) -> Callable[[str], bool]:
  return lambda value: re.fullmatch(pattern, value) is not None


def each(check: Callable[[str], bool], *, at_least_one: bool = True) -> Callable[[Sequence[str]], bool]:
  """For a DEFINE_list flag: every item passes (and there is one, unless at_least_one=False)."""
  return lambda values: (bool(values) or not at_least_one) and all(check(value) for value in values)


def positive_number(text: str) -> bool:
  return math.isfinite(float(text)) and float(text) > 0


def positive_int(text: str) -> bool:
  return int(text) > 0
