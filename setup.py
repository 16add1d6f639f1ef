"""DeepLabV3+ / MobileNetV2 semantic segmentation: VOC -> TFRecords -> training -> export."""

import os

import setuptools

# Exactly one TensorFlow distribution per machine: `tensorflow` (CPU, or GPUs with tensorflow[and-cuda]) unless
# SEGMENTATION_TENSORFLOW names another, e.g. "tensorflow-tpu~=2.21.0" on a TPU VM (launch/tpu_vm.py sets it),
# or "" where TensorFlow is already installed (a TPU VM image with TensorFlow). Both provide the same
# `tensorflow` module; pip, which knows nothing of that, would otherwise install the plain wheel beside them.
TENSORFLOW = os.environ.get("SEGMENTATION_TENSORFLOW", "tensorflow>=2.21,<2.22")
# Beam's DaskRunner (--runner=DaskRunner --dask_client_address=tcp://HOST:PORT); tested with 2026.8.
DASK = ["apache-beam[dask]>=2.77,<3", "dask>=2024.4.2,<2027", "distributed>=2024.4.2,<2027"]

setuptools.setup(
  name="segmentation-pipeline",
  version="0.1.0",
  description="DeepLabV3+ on MobileNetV2 for Pascal VOC: Beam conversion, tf.distribute training, export.",
  python_requires=">=3.10.12,<3.13",  # tarfile extraction filters
  packages=setuptools.find_packages(
    include=["contracts*", "deeplab*", "preprocessing*", "trainer*", "inference*", "configs*", "launch*"]
  ),
  install_requires=[
    # These ranges resolve together (TF 2.21 / Keras 3.15 / Beam 2.77 / protobuf 6 / numpy 2.4).
    *([TENSORFLOW] if TENSORFLOW else []),
    "apache-beam[gcp]>=2.77,<3",
    "numpy>=2.0,<2.5",
    "opencv-python-headless>=4.10",
    "absl-py>=2.1",
    "tensorboard>=2.21,<2.22",
    "gcsfs>=2025.1",
    "ml-collections>=1.0,<2",
    # Pillow reads palette PNG indices (OpenCV converts palettes to colour); SciPy reads SBD .mat labels.
    "pillow>=10",
    "scipy>=1.11",
    "pyyaml>=6",  # launch/ writes Vertex AI job specs and Kubernetes manifests.
  ],
  extras_require={
    # gcp-storage-emulator: a local Cloud Storage for the gs:// tests (tests/gcs_emulator.py).
    "test": [
      "pytest>=8",
      "pytest-timeout>=2.3",
      "pytest-xdist>=3.5",  # pytest.ini runs the suite in two processes.
      "gcp-storage-emulator>=2026.7",
      "cryptography>=42",
      *DASK,
      # The tools `make test` runs first (pyproject.toml): pinned, so that a new release cannot fail a landing.
      "ruff==0.17.6",
      "mypy==2.4.1",
    ],
    "dask": DASK,
  },
)
