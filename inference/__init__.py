"""Stage 3: a training run -> scores, pictures and exports; and published models -> runs."""

from contracts import quiet_imports as _quiet_imports

_quiet_imports.import_quietly()
