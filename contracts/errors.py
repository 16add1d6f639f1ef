"""The one base of the errors a user can act on: every command line catches it and prints its message as one line
(contracts/console.py), with exit code 2, instead of a traceback.

Subclasses name what went wrong: the data (contracts/shards.DataError), a config
(trainer/config_validation.ConfigError), a download (contracts/download.DownloadError), a run folder
(contracts/run_dir.RunFolderError), a published model that cannot be imported (inference/importing.SourceModelError), a
strategy (trainer/distribute.StrategyError).
"""

EXIT_USAGE = 2  # contracts/console.EXIT_USAGE: a bad flag, config or data, fixed by the user, not by a retry.


class UserError(Exception):
  """A failure the user can act on; its message says what happened and what to do, in one line. `exit_code`: the
  program's exit code when it ends on it (subclasses or instances may set another)."""

  exit_code = EXIT_USAGE
