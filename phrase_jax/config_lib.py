"""Experiment configs: `path/to/x.py[:arg]` files with `get_config(arg=None)`, typed overrides,
per-stage validation helpers, JSON and a stable hash.

`arg` is a comma-separated list (big_vision style), e.g. `experiments/vae.py:runlocal,steps=10`:
- bare words (`runlocal`) are variants: passed to `get_config` as a comma-joined string, and
  checked against the file's `VARIANTS` tuple when it has one;
- `key=val` (dotted for nested keys) overrides an existing key after `get_config`, parsed to the
  type of the value it replaces; tuples are written in brackets: `mesh.shape=(-1,2)`.
Absl `--config.x=y` overrides also work through `define_config_flag`.

Experiment files parse their variant words and name their runs with `phrase_jax.run_names`.

Mistakes a user can fix raise `ConfigError` (a bad key, value or variant) or `MissingInput` (a
file or folder a config names is absent): both are `errors.UserError`, so `phrase_jax.main`
prints them as one line, and a `ValueError` / `FileNotFoundError` for callers that catch those.
"""

from __future__ import annotations

import ast
import difflib
import functools
import hashlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from phrase_jax import errors

TRAIN_STAGES = ("train_vae", "train_ldm")
STAGES = (
    "prepare", "train_vae", "extract_latents", "train_ldm", "sample", "evaluate", "export",
    "evaluate_midi",
    "edit",
)  # fmt: skip
VAE_MODES = ("span_infill", "autoencoder", "vae")
# Keys the training infrastructure reads (training/*.py); stage code may require more.
TRAIN_KEYS = (
    "seed", "total_steps", "batch_size", "log_every_steps", "compute_dtype", "ema_decay",
    "mesh.shape", "sharding.preset", "optim.name", "optim.learning_rate",
    "checkpoint.every_steps", "checkpoint.max_to_keep",
)  # fmt: skip
REQUIRED_KEYS = {
    "prepare": ("dataset", "input_dir"),
    "train_vae": TRAIN_KEYS + ("model.mode",),
    "train_ldm": TRAIN_KEYS,
    "extract_latents": ("seed",),
    "sample": ("seed",),
    "evaluate": ("seed",),
    "export": ("ldm_workdir",),
    "evaluate_midi": ("midi_dirs",),
    "edit": ("seed", "input", "task"),
}


class ConfigError(errors.UserError, ValueError):
    """A config key, value or variant word that the user can correct (one-line message)."""


class MissingInput(errors.UserError, FileNotFoundError):
    """A file or folder that a config names does not exist (one-line message)."""


class UnknownKeyError(ConfigError, KeyError):
    """A config key that the experiment does not have (also a KeyError, as it used to be)."""

    __str__ = Exception.__str__  # KeyError would quote the message


def closest_hint(word: str, choices: Iterable[str]) -> str:
    """ " (closest: a, b)" naming the choices nearest to a mistyped `word`, else ""."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return f" (closest: {', '.join(close)})" if close else ""


def split_arg(arg: str | None) -> tuple[tuple[str, ...], dict[str, str]]:
    """'runlocal,a.b=3,shape=(1,2)' -> (('runlocal',), {'a.b': '3', 'shape': '(1,2)'}).

    Commas inside brackets or quotes do not split.
    """
    parts, depth, quote, current = [], 0, "", ""
    for char in arg or "":
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    variants, overrides = [], {}
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if "=" in part:
            key, value = part.split("=", 1)
            overrides[key.strip()] = value.strip()
        else:
            variants.append(part)
    return tuple(variants), overrides


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """All dotted leaf keys of a config, e.g. ['optim.learning_rate', 'seed']."""
    keys = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(flat_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


def parse_value(raw: str, current: Any, key: str) -> Any:
    """`raw` parsed to the type of `current` (the value it replaces)."""

    def fail(kind):
        return ConfigError(f"config override {key}={raw!r}: expected {kind}")

    if isinstance(current, bool):
        lowered = raw.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise fail("a bool (true/false)")
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            raise fail("an int") from None
    if isinstance(current, float):
        try:
            return float(raw)
        except ValueError:
            raise fail("a float") from None
    if isinstance(current, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if current is None:  # a None default takes a bare string
            return raw
        raise fail(f"a Python literal like the current {current!r}") from None
    if isinstance(current, tuple | list):
        if not isinstance(value, tuple | list):
            value = (value,)
        return tuple(value)
    return value


def check_known_key(key: str, known: Sequence[str], source: str) -> None:
    """Raises `ConfigError` naming the closest keys when `key` is not one of `known`."""
    if key not in known:
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else "see get_config() for the keys"
        raise UnknownKeyError(f"unknown config key {key!r} in {source}; {hint}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, str], source: str):
    """Sets each dotted key to its typed value; unknown keys raise naming the closest ones."""
    known = flat_keys(config)
    for key, raw in overrides.items():
        check_known_key(key, known, source)
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = parse_value(raw, node[leaf], key)


def load_module(path: str):
    """The experiment file at `path` as a module (it may import `experiments.*`)."""
    if not os.path.isfile(path):
        raise ConfigError(f"experiment file {path} not found; pass path/to/x.py[:args]")
    name = "experiment_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"experiment file {path} has no get_config(arg=None)")
    return module


def load_experiment(spec: str, *, lock: bool = True) -> ml_collections.ConfigDict:
    """Loads `path/to/x.py[:arg]` (see the module docstring) and returns its locked config."""
    path, _, arg = spec.partition(":")
    module = load_module(path)
    variants, overrides = split_arg(arg)
    known_variants = getattr(module, "VARIANTS", None)
    for variant in variants:
        if known_variants is not None and variant not in known_variants:
            raise ConfigError(
                f"unknown variant {variant!r} for {path}; known: {', '.join(known_variants)}"
                + closest_hint(variant, known_variants)
            )
    config = module.get_config(",".join(variants)) if variants else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(config)
    apply_overrides(config, overrides, path)
    if lock:
        config.lock()
    return config


class ExperimentFileParser(flags.ArgumentParser):
    """absl parser for `--config=x.py:args` that applies `load_experiment`'s arg rules."""

    def __init__(self, name: str, lock_config: bool = True, sys_argv: list[str] | None = None):
        self.name = name
        self._lock_config = lock_config
        self._sys_argv = sys_argv  # None: sys.argv, read at parse time like config_flags does

    def parse(self, argument):
        config = load_experiment(argument, lock=self._lock_config)
        # ml_collections reports an unknown `--config.key` as a multi-line AttributeError; we
        # check those keys here, where a ValueError becomes absl's one-line flag error.
        known = flat_keys(config)
        prefix = re.compile(rf"^--?(?:no)?{re.escape(self.name)}\.([^=]+)")
        for arg in self._sys_argv if self._sys_argv is not None else sys.argv:
            match = prefix.match(arg)
            if match and not any(k.startswith(match.group(1) + ".") for k in known):
                check_known_key(match.group(1), known, f"--{self.name}.{match.group(1)}")
        return config

    def flag_type(self):
        return "config object"


def define_config_flag(
    name: str = "config", flag_values: flags.FlagValues = flags.FLAGS, **kwargs
) -> flags.FlagHolder:
    """An ml_collections config-file flag whose value takes `:variant,key=val` args and whose
    `--<name>.key=val` flags override further."""
    holder = config_flags.DEFINE_config_file(name, None, flag_values=flag_values, **kwargs)
    # DEFINE_config_file passes the whole arg to get_config; our parser splits variants from
    # typed overrides first. The flag has no default, so nothing was parsed before this swap.
    flag_values[name].parser = ExperimentFileParser(
        name=name, lock_config=True, sys_argv=kwargs.get("sys_argv")
    )
    return holder


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the keys `config.stage` needs and the training keys' ranges; raises one-line
    `ConfigError`s. Each stage checks its own keys too (its `validate_config`)."""
    stage = config.get("stage")
    if stage not in STAGES:
        raise ConfigError(f"config stage={stage!r}: choose one of {STAGES}")
    missing = []
    for key in REQUIRED_KEYS[stage]:
        try:
            _get(config, key)
        except (KeyError, AttributeError):
            missing.append(key)
    if missing:
        raise ConfigError(f"config for stage {stage!r} is missing keys: {', '.join(missing)}")
    if stage == "train_vae":
        require(config, "model.mode", lambda v: v in VAE_MODES, f"choose one of {VAE_MODES}")
    if stage not in TRAIN_STAGES:
        return
    check = functools.partial(require, config)

    positive = lambda v: v > 0  # noqa: E731
    for key in ("total_steps", "batch_size", "log_every_steps", "checkpoint.every_steps"):
        check(key, positive, "must be > 0")
    check("checkpoint.max_to_keep", lambda v: v >= 1, "keep at least 1")
    check("optim.learning_rate", positive, "must be > 0")
    check("optim.name", lambda v: v in ("adam", "adamw"), "choose adam or adamw")
    check("compute_dtype", lambda v: v in ("float32", "bfloat16"), "float32 or bfloat16")
    check("ema_decay", lambda v: 0.0 <= v < 1.0, "must be in [0, 1); 0 disables EMA")
    if "time_limit_s" in config:
        check("time_limit_s", lambda v: v >= 0, "must be >= 0 (0 = no limit)")
    check("sharding.preset", lambda v: isinstance(v, str), "a preset name")
    check("mesh.shape", lambda v: len(v) == 2 and list(v).count(-1) <= 1, "(data, model), one -1")
    optim = config.optim
    if optim.get("warmup_steps", 0) >= config.total_steps or optim.get("warmup_steps", 0) < 0:
        raise ConfigError(f"config optim.warmup_steps={optim.warmup_steps}: in [0, total_steps)")
    for key in ("weight_decay", "grad_clip_norm"):
        if optim.get(key, 0.0) < 0:
            raise ConfigError(f"config optim.{key}={optim[key]}: must be >= 0")
    for key in ("b1", "b2"):
        if not 0.0 <= optim.get(key, 0.9) < 1.0:
            raise ConfigError(f"config optim.{key}={optim[key]}: must be in [0, 1)")


def require(config: ml_collections.ConfigDict, key: str, ok: Callable[[Any], bool], what: str):
    """Raises `ConfigError("config key=value: what")` unless `ok(value)`; for stage validators."""
    value = _get(config, key)
    if not ok(value):
        raise ConfigError(f"config {key}={value!r}: {what}")


def require_file(config: ml_collections.ConfigDict, key: str, name: str, what_to_do: str):
    """Raises `MissingInput` unless the folder that `key` names holds `name` ("" = the folder
    itself); `what_to_do` completes the message, e.g. "run `make data` first"."""
    folder = str(_get(config, key))
    path = os.path.join(folder, name) if name else folder
    if not folder or not os.path.exists(path):
        raise MissingInput(f"{path or repr(folder)} not found: {key}={folder!r}; {what_to_do}")


def _lists_to_tuples(value):
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    return value


def to_json(config: ml_collections.ConfigDict) -> str:
    """Canonical JSON (sorted keys, tuples as lists)."""
    return json.dumps(config.to_dict(), sort_keys=True, indent=2)


def from_json(text: str) -> ml_collections.ConfigDict:
    """Inverse of `to_json` (lists come back as tuples, as configs write them)."""
    return ml_collections.ConfigDict(_lists_to_tuples(json.loads(text)))


def config_hash(config: ml_collections.ConfigDict) -> str:
    """First 16 hex digits of the sha256 of the canonical JSON: same settings, same hash."""
    canonical = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
