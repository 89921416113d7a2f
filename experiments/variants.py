"""The variant words the experiment files share, grouped for `run_names.parse_variants` (one
word per group at most). The words also name the runs: `run_names.run_dir(kind, words)`."""

from __future__ import annotations

# Sizes: (none) the paper scale; `cpu` learns something on a 2-core CPU; `runlocal` seconds (CI).
SCALES = ("runlocal", "cpu")
# What the PhraseLDM is told: nothing, a 10-bar length bucket, or a section string.
CONDITIONS = ("uncond", "lencond", "seccond")
# An LDM run (and the samples and evaluations that read it): condition, exact bars, scale; the
# condition word is always part of the run name (`ldm_uncond`, never `ldm`).
LDM_GROUPS = (CONDITIONS, ("bars",), SCALES)
LDM_DEFAULTS = ("uncond",)
