"""Speed and agreement measured, never asserted in a test: `python -m benchmarks.NAME`; their figures go in the
README's results, each with the CPU it was measured on."""

from contracts import quiet_imports as _quiet_imports

_quiet_imports.import_quietly()  # Before any benchmark imports TensorFlow: `python -m` imports this first.
