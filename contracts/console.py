"""How every program of the project talks to the person running it: one-line errors and progress lines.

Errors: a bad command line, config or data is one line `error: ...` on stderr with exit code 2 (EXIT_USAGE), not a
traceback: libraries raise a contracts/errors.UserError, programs end on it with `exit_on_user_error`. Every
program parses its flags with `parse_flags` and checks their values with absl's own means (bounds, enums, required
flags, and `register_check`), so that a bad value fails before any work.

Progress: `Progress` counts work done (pairs converted, images predicted, bytes downloaded) with its rate; `step`
times one long step ("writing X ..." then "writing X: done in 12 s").

Imports only absl and the standard library: the launchers load it without TensorFlow.
"""

from collections.abc import Callable
from collections.abc import Sequence
import contextlib
import math
import re
import sys
import threading
import time
from typing import Any
from typing import NoReturn

from absl import flags

from contracts import errors

EXIT_USAGE = errors.EXIT_USAGE  # A bad flag, config or data: fixed by the user, so not worth a retry.

SPLIT = r"[\w.-]+"  # Its shards are SPLIT-*.tfrecord, its list ImageSets/Segmentation/SPLIT.txt.
SPLIT_ACCEPTS = "a split name of letters, digits, '_', '.' or '-'"
MD5 = r"[0-9a-fA-F]{32}"
MD5_ACCEPTS = "an md5 checksum (32 hexadecimal digits)"


def exit_with(message: str, exit_code: int = EXIT_USAGE, *, program: str = "") -> NoReturn:
  """Ends the program with one line on stderr, after what it printed to stdout so far."""
  sys.stdout.flush()
  sys.stderr.write(f"{program}: error: {message}\n" if program else f"error: {message}\n")
  sys.exit(exit_code)


@contextlib.contextmanager
def exit_on_user_error(*also: type[Exception], first_line: bool = False, program: str = ""):
  """Ends the program with one line (`exit_with`) on a contracts.errors.UserError raised inside, or on one of the
  exception types `also` names (e.g. a library's ValueError for a bad argument), with the error's exit_code (2 by
  default). first_line: only the first line of the message. Every command line catches its errors so."""
  caught: tuple[type[Exception], ...] = (errors.UserError, *also)
  try:
    yield
  except caught as error:
    message = str(error).splitlines()[0] if first_line and str(error) else str(error) or type(error).__name__
    exit_with(message, getattr(error, "exit_code", EXIT_USAGE), program=program)


def parse_flags(
  argv: Sequence[str], *, known_only: bool = False, unknown_flag_hint: str = "", program: str = ""
) -> list[str]:
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


def register_check(
  name: str, check: Callable[[Any], bool], accepts: str, *, flag_values: flags.FlagValues = flags.FLAGS
) -> None:
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


# ------------------------------------------------------------------------------------------------- progress


class Progress:
  """`label: done/total unit (rate unit/s)` for a person watching. On a terminal, one line rewritten at most twice a
  second; elsewhere (a log, CI) a line every `every_seconds` and one at the end. `sizes`: done and total are bytes,
  shown as "2.0 MB / 2.0 MB (100%), 1.2 MB/s". `write` takes each finished line (default: stderr). Thread-safe:
  the threads of a Beam worker share one."""

  def __init__(
    self,
    label: str,
    total: int | None = None,
    *,
    unit: str = "",
    start: int = 0,
    every_seconds: float = 10.0,
    sizes: bool = False,
    stream=None,
    write=None,
  ):
    self.label, self.total, self.unit, self.sizes = label, total, unit, sizes
    self.stream = stream if stream is not None else sys.stderr
    self.write = write
    self.tty = write is None and getattr(self.stream, "isatty", lambda: False)()
    self.every_seconds = 0.5 if self.tty else every_seconds
    self.start_done, self.start_time = start, time.monotonic()
    self.done = self.printed = start
    self.last_time = self.start_time
    self._lock = threading.Lock()

  def add(self, count: int = 1) -> None:
    with self._lock:
      self._update(self.done + count)

  def update(self, done: int) -> None:
    with self._lock:
      self._update(done)

  def _update(self, done: int) -> None:
    self.done = done
    now = time.monotonic()
    if now - self.last_time >= self.every_seconds or (self.total and done == self.total):
      self._print(now)

  def close(self) -> None:
    """Prints where it ended (all done, or where it stopped), unless that is printed already."""
    with self._lock:
      if self.printed != self.done:
        self._print(time.monotonic())
      if self.tty:
        self.stream.write("\n")
        self.stream.flush()

  def line(self, now: float | None = None) -> str:
    elapsed = max((now or time.monotonic()) - self.start_time, 1e-6)
    rate = (self.done - self.start_done) / elapsed
    if self.sizes:
      of_total = f" / {size_text(self.total)} ({100 * self.done / self.total:.0f}%)" if self.total else ""
      return f"{self.label}: {size_text(self.done)}{of_total}, {size_text(rate)}/s"
    of_total = f"/{self.total}" if self.total is not None else ""
    unit = f" {self.unit}" if self.unit else ""
    return f"{self.label}: {self.done}{of_total}{unit} ({rate:.1f}{unit}/s)"

  def _print(self, now: float) -> None:
    if self.printed == self.done:  # Nothing new to say.
      return
    self.printed, self.last_time = self.done, now
    text = self.line(now)
    if self.write is not None:
      self.write(text)
      return
    self.stream.write(f"\r{text}\x1b[K" if self.tty else text + "\n")
    self.stream.flush()


def size_text(num_bytes: float) -> str:
  """1234567 -> "1.2 MB"."""
  for unit in ("B", "KB", "MB"):
    if num_bytes < 1000:
      return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
    num_bytes /= 1000
  return f"{num_bytes:.2f} GB"


@contextlib.contextmanager
def step(message: str, stream=None):
  """`message ...` on stderr, then `message: done in N s` when the block ends without an error."""
  stream = stream if stream is not None else sys.stderr
  print(message + " ...", file=stream, flush=True)
  start = time.perf_counter()
  yield
  print(f"{message}: done in {time.perf_counter() - start:.0f} s", file=stream, flush=True)


def op_error_text(error) -> str:
  """A TensorFlow OpError's message on one line, without TF's '{{function_node ...}}' prefix and trailing op name
  (takes any exception; only its message is read)."""
  text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", getattr(error, "message", str(error)))
  return one_line(re.sub(r"\s*\[Op:\w+\].*$", "", text, flags=re.S))


def one_line(error: BaseException | str, limit: int = 500) -> str:
  return " ".join(str(error).split())[:limit]
