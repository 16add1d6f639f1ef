"""What every launcher shares: `launcher flags -- passed-through flags`, one-line errors, gs:// checks, and
printing (--dry_run) or running the exact commands it builds."""

from collections.abc import Sequence
import os
import shlex
import shutil
import subprocess
import tempfile

from absl import flags
import yaml  # PyYAML, which Apache Beam installs.

from contracts import console
from contracts import errors

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_USAGE = console.EXIT_USAGE  # As trainer.main and preprocessing.make_tfrecords: a bad flag, fixed by the user.
EXIT_FAILED = 1

# What Google Cloud and Kubernetes accept, checked when the flags are parsed (console.register_check).
MACHINE_TYPE = r"[a-z0-9]+(-[a-z0-9]+)+"
MACHINE_TYPE_ACCEPTS = "a Compute Engine machine type such as n1-standard-8"
IMAGE = r"\S+"
IMAGE_ACCEPTS = "a container image URI (no spaces)"
# Compute Engine names (TPU VMs) start with a letter; Kubernetes objects (RFC 1123 labels) may start with a digit.
RESOURCE_NAME = r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?"
RESOURCE_NAME_ACCEPTS = "lower-case letters, digits and '-' (a letter first, no '-' last, at most 63)"
KUBERNETES_NAME = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
KUBERNETES_NAME_ACCEPTS = "lower-case letters, digits and '-' (no '-' first or last, at most 63)"

# Every launcher's flag, defined once here: the tests import several launchers into one process.
DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print exactly what would be run or submitted, and stop.")


class LaunchError(errors.UserError):
  """A problem the user fixes with a flag; reported as one line on stderr."""

  def __init__(self, message: str, exit_code: int = EXIT_USAGE):
    super().__init__(message)
    self.exit_code = exit_code


def parse_flags(argv: list[str]) -> list[str]:
  """The project's one-line parser (absl's keeps what follows `--`), with a hint for the flags of the target."""
  return console.parse_flags(argv, unknown_flag_hint="flags for the trainer or the conversion go after `--`")


def flag_value(args: Sequence[str], name: str) -> str | None:
  """The value of --name in passed-through args (`--name=V` or `--name V`); the last one wins, as in absl."""
  value = None
  for index, arg in enumerate(args):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and index + 1 < len(args):
      value = args[index + 1]
  return value


def with_flag(args: Sequence[str], name: str, value: str) -> list[str]:
  """args with --name=value, which must not already say something else (e.g. a --strategy the target
  cannot run)."""
  given = flag_value(args, name)
  if given is not None and given != value:
    raise LaunchError(f"--{name}={given} cannot run here: this launcher runs --{name}={value}")
  return list(args) if given is not None else [*args, f"--{name}={value}"]


def require_gcs(args: Sequence[str], names: Sequence[str], where: str) -> None:
  """Cloud machines see neither this machine's disk nor each other's: data and outputs must be on GCS."""
  for name in names:
    value = flag_value(args, name)
    if value is None:
      raise LaunchError(f"--{name}=gs://... is required after `--` ({where} reads and writes Cloud Storage)")
    if not value.startswith("gs://"):
      raise LaunchError(f"--{name}={value} is not on Cloud Storage: {where} needs a gs:// path")


def printable(command: Sequence[str]) -> str:
  return " ".join(shlex.quote(str(part)) for part in command)


def run_commands(commands: Sequence[Sequence[str]], *, dry_run: bool, stdin: str | None = None) -> None:
  """Prints each command as a shell line, then (unless dry_run) runs them in order, stopping at a failure.

  `stdin` goes to the last command (e.g. a manifest for `kubectl apply -f -`).
  """
  for command in commands:
    print(f"$ {printable(command)}", flush=True)
  if dry_run:
    return
  for command in commands:
    if shutil.which(command[0]) is None:
      raise LaunchError(
        f"{command[0]} is not installed (or not on PATH); install it, or use --dry_run to see the commands", EXIT_FAILED
      )
  for index, command in enumerate(commands):
    last = index == len(commands) - 1
    result = subprocess.run(command, input=stdin if last else None, text=True)
    if result.returncode:
      raise LaunchError(f"`{printable(command)}` failed with exit code {result.returncode}", result.returncode)


def image_commands(image: str) -> list[list[str]]:
  """Builds the training image (launch/Dockerfile) from the repository root and pushes it."""
  return [
    ["docker", "build", "-f", os.path.join(REPO_ROOT, "launch", "Dockerfile"), "-t", image, REPO_ROOT],
    ["docker", "push", image],
  ]


def spec_path(given: str | None, name: str) -> str:
  """Where a job spec or manifest is written for the command that submits it."""
  return given or os.path.join(tempfile.gettempdir(), f"{name}.yaml")


def submit(spec: dict, path: str, commands: Sequence[Sequence[str]], *, dry_run: bool) -> None:
  """Prints the spec (YAML) and the commands; unless dry_run, writes the spec to `path` and runs them."""
  text = yaml.safe_dump(spec, sort_keys=False)
  print(f"# {path}\n{text}", end="", flush=True)
  if not dry_run:
    with open(path, "w") as f:
      f.write(text)
  run_commands(commands, dry_run=dry_run)
