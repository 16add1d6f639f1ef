r"""N multi-worker training processes on this machine, supervised like a cluster manager would.

  python -m launch.local_workers --num_workers=2 -- \
      --config=configs/smoke.py --data_dir=data/tfrecords --model_dir=runs/mw

Starts N `python -m trainer.main --strategy=multi_worker_mirrored ...` processes, each with its TF_CONFIG
(a cluster of 127.0.0.1 ports), prints their output prefixed with `[worker i]` and appends it to
--log_dir/worker_i.log (default MODEL_DIR/logs). When a worker dies, the others are stopped and, up to
--max_restarts times, all are started again: training resumes from the last loop checkpoint (a collective
cannot continue with a peer missing, so the whole job restarts, as on Vertex AI or with a TFJob).
A worker exiting with code 2 (a bad flag, config or data) ends the run: a restart would fail the same way.

It is the same program a real cluster runs, so it is how multi-worker training is tested here; it
is not faster than one process on one machine.
"""

from collections.abc import Sequence
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TextIO

from absl import app
from absl import flags

from contracts import console
from launch import common

_NUM_WORKERS = flags.DEFINE_integer("num_workers", 2, "Worker processes.", lower_bound=1)
_MAX_RESTARTS = flags.DEFINE_integer(
  "max_restarts", 3, "Times the whole job is restarted after a worker died.", lower_bound=0
)
_STOP_GRACE = flags.DEFINE_float(
  "stop_grace_seconds", 3.0, "After SIGTERM, how long the other workers get to exit before SIGKILL.", lower_bound=0.0
)


def free_ports(count: int) -> list[int]:
  """Ports free now, all held until every one is chosen, so that no two are the same. (A worker binds its port
  seconds later, after importing TensorFlow; a failure to bind then is restarted like any other.)"""
  sockets = [socket.socket() for _ in range(count)]
  try:
    for s in sockets:
      s.bind(("127.0.0.1", 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def tf_config(workers: Sequence[str], index: int) -> str:
  """The TF_CONFIG of worker `index` in a cluster of `workers` (host:port); worker 0 is the chief."""
  return json.dumps({"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": index}})


def trainer_command(trainer_args: Sequence[str]) -> list[str]:
  return [sys.executable, "-m", "trainer.main", *common.with_flag(trainer_args, "strategy", "multi_worker_mirrored")]


class Worker:
  """One trainer process whose output is prefixed onto ours and appended to its log file."""

  def __init__(self, index: int, command: Sequence[str], config: str, log_path: str, attempt: int):
    self.index = index
    self.log: TextIO = open(log_path, "a", buffering=1)  # noqa: SIM115  (open while the worker lives; close() ends it)
    self.log.write(f"=== attempt {attempt}: TF_CONFIG={config}\n")
    # Relative paths in the flags mean what they mean here; unbuffered, so that lines show as they come.
    self.process = subprocess.Popen(
      command,
      env=dict(os.environ, TF_CONFIG=config, PYTHONUNBUFFERED="1"),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      bufsize=1,
      start_new_session=True,
    )  # Our Ctrl-C is not theirs: we stop them in order.
    self._copier = threading.Thread(target=self._copy_output, daemon=True)
    self._copier.start()
    print(f"started worker {self.index} (pid {self.process.pid}), log {log_path}", flush=True)

  def _copy_output(self) -> None:
    assert self.process.stdout is not None  # Popen(stdout=PIPE) in __init__.
    for line in self.process.stdout:  # Read continuously: a full pipe would stall the worker.
      self.log.write(line)
      sys.stdout.write(f"[worker {self.index}] {line}")
    sys.stdout.flush()

  def close(self) -> None:
    self._copier.join(timeout=10)
    self.log.close()


def stop_all(workers: Sequence[Worker], grace_seconds: float) -> None:
  """SIGTERM, then SIGKILL for those still running after the grace period. TensorFlow's coordination service
  takes SIGTERM as a preemption notice and keeps running, so an MWMS worker mostly needs the SIGKILL."""
  running = [w.process for w in workers if w.process.poll() is None]
  for process in running:
    process.terminate()
  deadline = time.monotonic() + grace_seconds
  for process in running:
    try:
      process.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()


def _describe(returncode: int) -> str:
  return f"signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"


def run_attempt(trainer_args: Sequence[str], num_workers: int, log_dir: str, attempt: int, grace_seconds: float) -> int:
  """Runs the job once: 0 when every worker finished, else the return code of the first that failed."""
  workers_addresses = [f"127.0.0.1:{port}" for port in free_ports(num_workers)]
  command = trainer_command(trainer_args)
  workers = [
    Worker(i, command, tf_config(workers_addresses, i), os.path.join(log_dir, f"worker_{i}.log"), attempt)
    for i in range(num_workers)
  ]
  try:
    while True:
      codes = [w.process.poll() for w in workers]
      failed = next((w for w, code in zip(workers, codes, strict=True) if code not in (None, 0)), None)
      if failed is not None:
        code = failed.process.returncode
        print(f"worker {failed.index} failed ({_describe(code)}); stopping the others", flush=True)
        stop_all(workers, grace_seconds)
        return code
      if all(code == 0 for code in codes):
        return 0
      time.sleep(0.2)
  finally:
    stop_all(workers, grace_seconds)
    for worker in workers:
      worker.close()


def main(argv):
  trainer_args = argv[1:]
  with console.exit_on_user_error():  # common.LaunchError
    model_dir = common.flag_value(trainer_args, "model_dir")
    if not model_dir:
      raise common.LaunchError("--model_dir is required after `--` (the workers checkpoint there to resume)")
    command = trainer_command(trainer_args)
  log_dir = flags.FLAGS.log_dir or os.path.join(model_dir, "logs")  # absl's own --log_dir flag.
  if "://" in log_dir:
    console.exit_with(f"the worker logs go to a local folder, not {log_dir}: give --log_dir")
  if common.DRY_RUN.value:
    example = [f"127.0.0.1:{port}" for port in range(12345, 12345 + _NUM_WORKERS.value)]
    print(
      f"# {_NUM_WORKERS.value} workers; free ports are picked at each start, output is appended to the logs; "
      f"restarted up to {_MAX_RESTARTS.value} times"
    )
    for index in range(_NUM_WORKERS.value):
      print(
        f"TF_CONFIG={common.printable([tf_config(example, index)])} {common.printable(command)} "
        f">> {os.path.join(log_dir, f'worker_{index}.log')}"
      )
    return
  os.makedirs(log_dir, exist_ok=True)
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # Runs the `finally`s: stops workers.
  for attempt in range(1, _MAX_RESTARTS.value + 2):
    code = run_attempt(trainer_args, _NUM_WORKERS.value, log_dir, attempt, _STOP_GRACE.value)
    if code == 0:
      print(f"all {_NUM_WORKERS.value} workers finished (attempt {attempt})", flush=True)
      return
    if code == common.EXIT_USAGE:
      console.exit_with(
        f"a worker stopped on a bad flag, config or data (exit code 2): see {log_dir}", common.EXIT_USAGE
      )
    if attempt > _MAX_RESTARTS.value:
      console.exit_with(
        f"a worker failed and --max_restarts={_MAX_RESTARTS.value} restarts are used up: see {log_dir}",
        common.EXIT_FAILED,
      )
    print(
      f"restarting all workers ({attempt}/{_MAX_RESTARTS.value}); training resumes from the last checkpoint", flush=True
    )


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
