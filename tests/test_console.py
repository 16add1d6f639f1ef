"""contracts/console.py: what every program prints while it works and when it fails."""

import io
import re

from absl import flags
import pytest

from contracts import console


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_counts_with_a_rate_and_prints_the_end_once():
  stream = io.StringIO()
  progress = console.Progress("val", 3, unit="images", every_seconds=3600, stream=stream)
  for _ in range(3):
    progress.add()
  progress.close()
  lines = stream.getvalue().splitlines()
  assert len(lines) == 1 and re.fullmatch(r"val: 3/3 images \([\d.]+ images/s\)", lines[0])


def test_progress_in_bytes_with_a_line_per_interval_outside_a_terminal():
  stream = io.StringIO()
  progress = console.Progress("x.tar", 2_000_000, sizes=True, every_seconds=0, stream=stream)
  for done in range(0, 2_000_001, 500_000):
    progress.update(done)
  progress.close()
  lines = stream.getvalue().splitlines()
  assert len(lines) == 4  # 0 bytes is no progress to report
  assert re.fullmatch(r"x\.tar: 2\.0 MB / 2\.0 MB \(100%\), [\d.]+ [KMG]?B/s", lines[-1])
  assert "\r" not in stream.getvalue()


def test_progress_rewrites_one_line_on_a_terminal_and_can_log_instead():
  terminal = _Terminal()
  progress = console.Progress("train", 2, unit="pairs", stream=terminal)
  progress.add(2)
  progress.close()
  assert terminal.getvalue().startswith("\rtrain: 2/2 pairs") and terminal.getvalue().endswith("\n")
  logged = []
  progress = console.Progress("train", None, unit="pairs", every_seconds=0, write=logged.append)
  progress.add()
  progress.close()
  assert len(logged) == 1 and logged[0].startswith("train: 1 pairs (")


def test_step_times_a_block(capsys):
  with console.step("writing x"):
    pass
  assert capsys.readouterr().err.splitlines() == ["writing x ...", "writing x: done in 0 s"]


def test_errors_are_one_line_with_exit_code_2(capsys):
  with pytest.raises(SystemExit) as exited:
    console.exit_with("config.batch_size=-3: expected an int >= 1")
  assert exited.value.code == console.EXIT_USAGE == 2
  assert capsys.readouterr().err == "error: config.batch_size=-3: expected an int >= 1\n"


def test_op_error_text_drops_tensorflow_decorations():
  class OpError(Exception):
    message = "{{function_node __wrapped__DecodeJpeg}} Invalid JPEG data\n or crop window. [Op:DecodeJpeg] name: x"

  assert console.op_error_text(OpError()) == "Invalid JPEG data or crop window."


def test_flag_checks_refuse_at_parse_time():
  values = flags.FlagValues()
  flags.DEFINE_list("scales", ["1.0"], "", flag_values=values)
  console.register_check("scales", console.each(console.positive_number), "numbers > 0", flag_values=values)
  values(["prog", "--scales=0.5,1.5"])
  with pytest.raises(flags.IllegalFlagValueError, match="expected numbers > 0"):
    values(["prog", "--scales=0.5,0"])
