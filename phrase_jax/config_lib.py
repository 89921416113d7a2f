"""Experiment configs: `path/to/x.py[:arg]` files with `get_config(arg=None)`, typed overrides,
per-stage validation, JSON and a stable hash.

`arg` is a comma-separated list (big_vision style), e.g. `experiments/vae.py:runlocal,steps=10`:
- bare words (`runlocal`) are variants: passed to `get_config` as a comma-joined string, and
  checked against the file's `VARIANTS` tuple when it has one;
- `key=val` (dotted for nested keys) overrides an existing key after `get_config`, parsed to the
  type of the value it replaces; tuples are written in brackets: `mesh.shape=(-1,2)`.
Absl `--config.x=y` overrides also work through `define_config_flag`.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

TRAIN_STAGES = ("train_vae", "train_ldm")
STAGES = ("prepare", "train_vae", "extract_latents", "train_ldm", "sample", "evaluate")
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
}


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
        return ValueError(f"config override {key}={raw!r}: expected {kind}")

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


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, str], source: str):
    """Sets each dotted key to its typed value; unknown keys raise naming the closest ones."""
    known = flat_keys(config)
    for key, raw in overrides.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
            hint = f"closest: {', '.join(close)}" if close else "see get_config() for the keys"
            raise KeyError(f"unknown config key {key!r} in {source}; {hint}")
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = parse_value(raw, node[leaf], key)


def load_experiment(spec: str, *, lock: bool = True) -> ml_collections.ConfigDict:
    """Loads `path/to/x.py[:arg]` (see the module docstring) and returns its locked config."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"experiment file {path} not found; pass path/to/x.py[:args]")
    name = "experiment_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"experiment file {path} has no get_config(arg=None)")
    variants, overrides = split_arg(arg)
    known_variants = getattr(module, "VARIANTS", None)
    for variant in variants:
        if known_variants is not None and variant not in known_variants:
            close = difflib.get_close_matches(variant, known_variants, n=3)
            raise ValueError(
                f"unknown variant {variant!r} for {path}; known: {', '.join(known_variants)}"
                + (f" (closest: {', '.join(close)})" if close else "")
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

    def __init__(self, name: str, lock_config: bool = True):
        self.name = name
        self._lock_config = lock_config

    def parse(self, argument):
        return load_experiment(argument, lock=self._lock_config)

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
    flag_values[name].parser = ExperimentFileParser(name=name, lock_config=True)
    return holder


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the keys `config.stage` needs and their ranges; raises one-line ValueErrors."""
    stage = config.get("stage")
    if stage not in STAGES:
        raise ValueError(f"config stage={stage!r}: choose one of {STAGES}")
    missing = []
    for key in REQUIRED_KEYS[stage]:
        try:
            _get(config, key)
        except (KeyError, AttributeError):
            missing.append(key)
    if missing:
        raise ValueError(f"config for stage {stage!r} is missing keys: {', '.join(missing)}")
    if stage == "train_vae" and config.model.mode not in VAE_MODES:
        raise ValueError(f"config model.mode={config.model.mode!r}: choose one of {VAE_MODES}")
    if stage not in TRAIN_STAGES:
        return

    def check(key, ok, what):
        value = _get(config, key)
        if not ok(value):
            raise ValueError(f"config {key}={value!r}: {what}")

    positive = lambda v: v > 0  # noqa: E731
    for key in ("total_steps", "batch_size", "log_every_steps", "checkpoint.every_steps"):
        check(key, positive, "must be > 0")
    check("checkpoint.max_to_keep", lambda v: v >= 1, "keep at least 1")
    check("optim.learning_rate", positive, "must be > 0")
    check("optim.name", lambda v: v in ("adam", "adamw"), "choose adam or adamw")
    check("compute_dtype", lambda v: v in ("float32", "bfloat16"), "float32 or bfloat16")
    check("ema_decay", lambda v: 0.0 <= v < 1.0, "must be in [0, 1); 0 disables EMA")
    check("sharding.preset", lambda v: isinstance(v, str), "a preset name")
    check("mesh.shape", lambda v: len(v) == 2 and list(v).count(-1) <= 1, "(data, model), one -1")
    optim = config.optim
    if optim.get("warmup_steps", 0) >= config.total_steps or optim.get("warmup_steps", 0) < 0:
        raise ValueError(f"config optim.warmup_steps={optim.warmup_steps}: in [0, total_steps)")
    for key in ("weight_decay", "grad_clip_norm"):
        if optim.get(key, 0.0) < 0:
            raise ValueError(f"config optim.{key}={optim[key]}: must be >= 0")
    for key in ("b1", "b2"):
        if not 0.0 <= optim.get(key, 0.9) < 1.0:
            raise ValueError(f"config optim.{key}={optim[key]}: must be in [0, 1)")


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
