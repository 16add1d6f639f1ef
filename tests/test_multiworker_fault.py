"""A multi-worker job survives losing a worker: launch.local_workers restarts it and training resumes from the
last loop checkpoint, as a cluster manager would restart a failed job."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import test_trainer
from test_trainer import REPO_ROOT
from test_trainer import trainer_command

STEPS, STEPS_PER_LOOP = 20, 5


def _latest_loop(model_dir, task: str) -> int:
  """The loop number of a worker's last committed resume checkpoint (0 before the first)."""
  index = model_dir / "resume" / task / "checkpoint"
  found = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', index.read_text(), re.M) if index.exists() else None
  return int(found.group(1)) if found else 0


def _wait_for(condition, timeout: float, process: subprocess.Popen, output, what: str) -> None:
  deadline = time.time() + timeout
  while not condition():
    assert process.poll() is None, f"the launcher ended before {what}:\n{output.read_text()[-3000:]}"
    assert time.time() < deadline, f"no {what} within {timeout} s"
    time.sleep(0.05)


records = test_trainer.records  # The fixture: tiny records made by the real Beam job.


@pytest.mark.timeout(600)
def test_a_killed_worker_is_restarted_and_training_resumes_from_the_last_checkpoint(records, tmp_path):
  model_dir, log_dir = tmp_path / "model", tmp_path / "logs"
  trainer_flags = trainer_command(
    records,
    model_dir,
    f"--config.train.steps={STEPS}",
    f"--config.train.steps_per_loop={STEPS_PER_LOOP}",
    "--config.train.eval_every_loops=100",
    "--config.train.eval_steps=1",
  )[3:]
  launcher_output = tmp_path / "launcher.log"
  with open(launcher_output, "w") as out:  # A file, not a pipe: nobody reads it while the job runs.
    launcher = subprocess.Popen(
      [
        sys.executable,
        "-m",
        "launch.local_workers",
        "--num_workers=2",
        "--max_restarts=2",
        f"--log_dir={log_dir}",
        "--",
        *trainer_flags,
      ],
      cwd=REPO_ROOT,
      stdout=out,
      stderr=subprocess.STDOUT,
    )
  try:
    # Kill when both workers have committed the same loop: each keeps its own resume checkpoint.
    _wait_for(
      lambda: (
        _latest_loop(model_dir, "worker_0") >= 1
        and _latest_loop(model_dir, "worker_1") == _latest_loop(model_dir, "worker_0")
      ),
      300,
      launcher,
      launcher_output,
      "the first checkpoint",
    )
    pid = int(re.search(r"started worker 1 \(pid (\d+)\)", launcher_output.read_text()).group(1))
    os.kill(pid, signal.SIGKILL)
    loop_at_kill = _latest_loop(model_dir, "worker_0")
    assert loop_at_kill < STEPS // STEPS_PER_LOOP, "training ended before a worker could be killed"
    launcher.wait(timeout=400)
  finally:
    if launcher.poll() is None:
      launcher.terminate()  # It stops its workers on the way out.
      launcher.wait(timeout=60)
  output = launcher_output.read_text()
  assert launcher.returncode == 0, output[-3000:]
  assert "worker 1 failed (signal SIGKILL)" in output and "restarting all workers (1/2)" in output
  assert "all 2 workers finished (attempt 2)" in output

  for task in ("worker_0", "worker_1"):
    second_attempt = (log_dir / f"{task}.log").read_text().split("=== attempt 2")[1]
    resumed = re.search(r"resuming after loop (\d+) of \d+ \(step (\d+)\)", second_attempt)
    assert resumed, second_attempt[-3000:]
    loop, step = int(resumed.group(1)), int(resumed.group(2))
    assert loop >= loop_at_kill >= 1 and step == loop * STEPS_PER_LOOP  # not from step 0
  assert json.loads((model_dir / "metrics.json").read_text())["steps"] == STEPS
