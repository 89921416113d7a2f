"""Variant words and the run names they give: the one variant parser of the experiment files
and the one run-name convention of the configs, the Makefile and the demo.

A run of experiments/<x>.py at variant words W lives in `runs/<RUN_KIND>[_<word>...]`, the words
in the order the file's `VARIANT_GROUPS` list them, a group's default included (`runs/vae_cpu`,
`runs/latents_cpu`, `runs/ldm_uncond`, `runs/ldm_lencond_bars_cpu`, `runs/samples_lencond_cpu`).
Each experiment file names its upstream runs with `run_dir` (`init_from`, `vae_workdir`,
`latents.dir`, `ldm_workdir`); the Makefile asks

    python -m phrase_jax.run_names [--runs_dir=DIR] experiments/x.py[:words] ...

which prints each run's directory (words the file does not know are left out).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Sequence

from phrase_jax import config_lib

RUNS_DIR = "runs"


@dataclasses.dataclass(frozen=True)
class Variants:
    """The variant words of an experiment arg, one per group at most, in the groups' order
    (a group's default filled in when the arg names none of its words)."""

    words: tuple[str, ...]

    def __contains__(self, word: str) -> bool:
        return word in self.words

    def pick(self, group: Sequence[str]) -> str | None:
        """The word of `group` that was chosen (or defaulted), else None."""
        return next((w for w in self.words if w in group), None)

    def only(self, *groups: Sequence[str]) -> tuple[str, ...]:
        """The chosen words that belong to `groups`: the words naming an upstream run."""
        return tuple(w for w in self.words if any(w in g for g in groups))


def parse_variants(
    arg: str | None,
    groups: Sequence[Sequence[str]],
    *,
    defaults: Sequence[str] = (),
    source: str = "",
) -> Variants:
    """The variant words of `arg` ("lencond,cpu"), checked against `groups`: each group is a
    tuple of exclusive words (a one-word group is an on/off switch); a word of `defaults` is
    chosen for its group when the arg names none of that group's words. Unknown words and two
    words of one group raise `ConfigError`. The one variant parser of every experiment file."""
    where = f" for {source}" if source else ""
    known = variant_words(groups)
    words = [w.strip() for w in (arg or "").split(",") if w.strip()]
    for word in words:
        if word not in known:
            hint = config_lib.closest_hint(word, known)
            raise config_lib.ConfigError(
                f"unknown variant {word!r}{where}; known: {', '.join(known)}{hint}"
            )
    chosen = []
    for group in groups:
        picked = list(dict.fromkeys(w for w in words if w in group))
        if len(picked) > 1:
            raise config_lib.ConfigError(
                f"variants {picked}{where}: pick at most one of {tuple(group)}"
            )
        chosen.extend(picked or [w for w in defaults if w in group][:1])
    return Variants(tuple(chosen))


def variant_words(groups: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """Every word of `groups`, in order: an experiment file's VARIANTS."""
    return tuple(word for group in groups for word in group)


def run_name(kind: str, words: Iterable[str] = ()) -> str:
    """The run-name convention: `kind` then each variant word, joined by `_`:
    run_name("ldm", ("lencond", "cpu")) == "ldm_lencond_cpu"; run_name("vae") == "vae"."""
    return "_".join((kind, *(w for w in words if w)))


def run_dir(kind: str, words: Iterable[str] = (), runs_dir: str = RUNS_DIR) -> str:
    """`runs_dir/run_name(kind, words)`: where the Makefile and the configs put that run."""
    return os.path.join(runs_dir, run_name(kind, words))


def experiment_run_dir(spec: str, runs_dir: str = RUNS_DIR) -> str:
    """The directory the run-name convention gives the run of `spec` ("experiments/ldm.py:
    lencond,cpu" -> runs/ldm_lencond_cpu): `runs_dir/<file's RUN_KIND>[_<word>...]` with the
    words its VARIANT_GROUPS choose (VARIANT_DEFAULTS filled in). Key=val parts and words the
    file does not know (an LDM condition given to extract.py) are ignored, so one VARIANT names
    a run and the runs it reads."""
    path, _, arg = spec.partition(":")
    module = config_lib.load_module(path)
    groups = module.VARIANT_GROUPS
    words = [w for w in config_lib.split_arg(arg)[0] if w in variant_words(groups)]
    variants = parse_variants(
        ",".join(words), groups, defaults=getattr(module, "VARIANT_DEFAULTS", ()), source=path
    )
    return run_dir(module.RUN_KIND, variants.words, runs_dir)


if __name__ == "__main__":
    # The run directory of each spec, one a line (the Makefile's workdirs and upstream runs).
    args = sys.argv[1:]
    runs = next((a.split("=", 1)[1] for a in args if a.startswith("--runs_dir=")), RUNS_DIR)
    for experiment_spec in (a for a in args if not a.startswith("--runs_dir=")):
        print(experiment_run_dir(experiment_spec, runs))
