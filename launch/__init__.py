"""Where a run happens; `configs/` say what to run, and nothing in `preprocessing/` or `trainer/` changes for it.

  demo            the whole journey on this machine, offline
  local_workers   N multi-worker trainer processes on this machine (TF_CONFIG on 127.0.0.1), restarted on failure
  tpu_vm          a Cloud TPU VM (--strategy=tpu)
  vertex_ai       a Vertex AI custom job (image: launch/Dockerfile)
  gke             a multi-node GPU cluster: a Kubeflow TFJob on Kubernetes (TF_CONFIG set by the operator)
  dataflow        the TFRecord conversion on Dataflow

Each is `python -m launch.NAME [its flags] -- [trainer or conversion flags]`; --dry_run prints what it would
run or submit.
"""
