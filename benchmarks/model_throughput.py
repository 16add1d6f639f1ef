"""Training / inference images/s, parameters and FLOPs of our DeepLabV3+ beside tensorflow/models' official one.

  .venv/bin/python -m benchmarks.model_throughput        # from the repo root
  .venv/bin/python -m benchmarks.model_throughput --heads=lean --rounds=2

Contenders, per head setting (lean: image pooling + 1x1, DeepLab's mobile head; aspp: rates 6/12/18,
separable convs): ours and official/vision's `mnv2_deeplabv3plus_cityscapes` at 21 classes, each once with
the backbone's BN frozen (our trainer's default) and once with every BN layer training (the experiment's).
Each runs in its own process that times steps on request (harness.serve); official needs TensorFlow 2.20
(tf-models-official 2.20), so its process (benchmarks/peers/official_deeplabv3plus.py) runs in its own venv,
created at .venv-peers/ when missing. All: random init, synthetic data, the same train step and loss
(benchmarks/peers/harness.py). The four processes together need a machine with plenty of RAM at 512x512 batch 4.

Each setting is warmed up, then timed in --rounds rounds of --steps_per_round steps that take turns between
the contenders, so that a busy machine slows all alike; figures are the median step over the rounds. Beside
images/s the table gives process CPU seconds per image: the work done, which other processes on the
machine barely disturb (images/s they do), so its ratio is the steadier one on a shared machine.

With every BN training the two models run the same graph on the same oneDNN kernels, so parity is what to
expect; the frozen-backbone gain is ours alone (a frozen BN's input gradient is dy * scale, not
FusedBatchNormGradV3: see mobilenet_v2.FusedBatchNormalization). The figures, where a step's time goes, and what
was ruled out are in the README's results.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
from typing import IO

from benchmarks.peers import harness

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PEER_VENV = REPO_ROOT / ".venv-peers"
PEER_SCRIPT = REPO_ROOT / "benchmarks" / "peers" / "official_deeplabv3plus.py"
PEER_REQUIREMENTS = ("tf-models-official==2.20.*", "tensorflow==2.20.*")
HEADS = {"lean": (), "aspp": (6, 12, 18)}
# (ours, official) pairs at equal settings: backbone BN frozen (our trainer's default), every BN training
# (the official experiment's).
PAIRS = {
  "backbone BN frozen": ("ours, backbone BN frozen", "official, backbone BN frozen"),
  "all BN training": ("ours, all BN training", "official, all BN training"),
}


def peer_python() -> pathlib.Path:
  """The peer venv's interpreter, creating the venv first when it is missing."""
  python = PEER_VENV / "bin" / "python"
  if not python.exists():
    print(f"creating {PEER_VENV} with {' '.join(PEER_REQUIREMENTS)} (a few minutes)...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEER_REQUIREMENTS], check=True)
  return python


class Served:
  """One contender in its own process, driven over stdin/stdout (harness.serve).

  Separate processes also keep each model's oneDNN primitive caches to itself: two models timed in turn in one
  process evict each other's and both run slower.
  """

  def __init__(self, command: list[str]):
    self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  (open while the contender lives)
    self._process = subprocess.Popen(
      command, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True
    )
    self._command = command
    assert self._process.stdin is not None and self._process.stdout is not None  # Both are PIPEs.
    self._stdin: IO[str] = self._process.stdin
    self._stdout: IO[str] = self._process.stdout
    self.info = self._receive()

  def _receive(self) -> dict:
    for line in self._stdout:
      if line.startswith(harness.PROTOCOL_PREFIX):
        return json.loads(line[len(harness.PROTOCOL_PREFIX) :])
    self._stderr.seek(0)
    raise RuntimeError(f"{self._command} exited ({self._process.wait()}):\n{self._stderr.read()[-4000:]}")

  def step_times(self, setting: str, count: int) -> dict[str, list[float]]:
    self._stdin.write(json.dumps({"setting": setting, "count": count}) + "\n")
    self._stdin.flush()
    return self._receive()

  def close(self) -> None:
    self._stdin.close()
    self._process.wait()
    self._stderr.close()


def serve_ours(rates: tuple[int, ...], freeze_backbone_bn: bool) -> None:
  import keras

  from deeplab import flops
  from deeplab import network

  keras.utils.set_random_seed(0)
  model = network.build_deeplabv3plus(
    num_classes=harness.NUM_CLASSES, aspp_rates=rates, freeze_backbone_bn=freeze_backbone_bn
  )
  info = {"params": model.count_params(), "flops_512": flops.count_flops(model, 512, 512)}
  timer = harness.StepTimer(model, lambda: model.trainable_variables, keras.optimizers.SGD(0.01, momentum=0.9))
  harness.serve(timer, info)


def contenders_for(rates: tuple[int, ...], with_official: bool) -> dict[str, Served]:
  rates_flag = f"--aspp_rates={','.join(map(str, rates))}"
  ours = [sys.executable, "-m", "benchmarks.model_throughput", "--serve", rates_flag]
  official = [str(peer_python()), str(PEER_SCRIPT), rates_flag] if with_official else None
  contenders = {}
  for (ours_name, official_name), freeze in zip(PAIRS.values(), (True, False), strict=True):
    flags = ["--freeze_backbone_bn"] if freeze else []
    contenders[ours_name] = Served(ours + flags)
    if official:
      contenders[official_name] = Served(official + flags)
  return contenders


def measure(contenders: dict, warmup: int, rounds: int, steps_per_round: int) -> dict[str, dict]:
  """{contender: info + {setting: images/s (median wall step), setting + "_cpu": median CPU s per image}}."""
  results = {name: dict(contender.info) for name, contender in contenders.items()}
  for setting, (_, batch, _) in harness.SETTINGS.items():
    for contender in contenders.values():
      contender.step_times(setting, warmup)
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in contenders}
    for _ in range(rounds):
      for name, contender in contenders.items():
        for kind, values in contender.step_times(setting, steps_per_round).items():
          times[name][kind] += values
    for name in contenders:
      results[name][setting] = batch / statistics.median(times[name]["wall"])
      results[name][setting + "_cpu"] = statistics.median(times[name]["cpu"]) / batch
  return results


def print_table(rows: list[tuple[str, str, dict]]) -> None:
  settings = list(harness.SETTINGS)
  print(
    f"\n{'head':5} {'model':29} {'params':>7} {'GFLOPs/512²':>11} "
    + " ".join(f"{s:>13}" for s in settings)
    + "   CPU s/image: "
    + " ".join(f"{s:>13}" for s in settings)
  )
  for head, name, r in rows:
    print(
      f"{head:5} {name:29} {r['params'] / 1e6:6.2f}M {r['flops_512'] / 1e9:11.2f} "
      + " ".join(f"{r[s]:13.2f}" for s in settings)
      + " " * 15
      + " ".join(f"{r[s + '_cpu']:13.3f}" for s in settings)
    )
  print("(images/s from the median wall-clock step; CPU s/image from the median step's process CPU time)")
  results = {(head, name): r for head, name, r in rows}
  for head in dict.fromkeys(head for head, _, _ in rows):
    for setting_name, (ours_name, official_name) in PAIRS.items():
      if (head, official_name) not in results:
        continue
      ours, official = results[head, ours_name], results[head, official_name]
      speed = ", ".join(f"{s} {ours[s] / official[s]:.2f}x" for s in settings)
      work = ", ".join(f"{s} {official[s + '_cpu'] / ours[s + '_cpu']:.2f}x" for s in settings)
      print(f"{head}, {setting_name}: ours/official images/s {speed}; official/ours CPU s {work}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--heads", default="lean,aspp", help=f"comma-separated, of {sorted(HEADS)}")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps_per_round", type=int, default=2)
  parser.add_argument("--skip_official", action="store_true")
  parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # One of ours, as a contender.
  parser.add_argument("--aspp_rates", default="", help=argparse.SUPPRESS)
  parser.add_argument("--freeze_backbone_bn", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.serve:
    serve_ours(tuple(int(rate) for rate in args.aspp_rates.split(",") if rate), args.freeze_backbone_bn)
    return
  rows = []
  for head in args.heads.split(","):
    contenders = contenders_for(HEADS[head], not args.skip_official)
    try:
      results = measure(contenders, args.warmup, args.rounds, args.steps_per_round)
    finally:
      for contender in contenders.values():
        contender.close()
    rows += [(head, name, result) for name, result in results.items()]
    print_table(rows)  # After each head: a full run takes minutes.
  official = [result for _, _, result in rows if "tensorflow" in result]
  if official:
    print(
      f"official: TensorFlow {official[0]['tensorflow']}; its parameter count includes MobileNetV2's "
      f"Conv_1 (0.41 M), built but not used by the segmentation model."
    )


if __name__ == "__main__":
  main()
