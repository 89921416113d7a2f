"""Issue 14's timings: rewrite 8 bars of a POP909 song, and continue its first 32 bars to 64,
through the edit stage at paper size on this CPU, per sampler (with and without RePaint
resampling). The models are paper-size PhraseVAE (vae mode) + length-conditioned PhraseLDM
with random weights, written as a bundle: the timing is the real models' work; an untrained VAE
decodes every written phrase to max_len, the decoder's worst case.

    python -m benchmarks.bench_edit [--out /tmp/bench_edit] [--song 001] \
        [--samplers ddim:50,dpm_solver_pp:20,dpm_solver_pp_sde:20,ddpm:1000] [--resample 2:2:2]

Per sampler, in one process: the 8-bar rewrite twice (the first run compiles, the second is
what a user editing several songs pays per edit), then the continuation once (the sampler is
compiled by then: every edit samples the same [1, 512, 64] slots; its decoder may compile a
new chunk size). DDPM-1000 runs once per task (its diffusion time includes the compile).
"""

from __future__ import annotations

import os
import time

import numpy as np
from absl import app, flags
from flax import nnx

from experiments import ldm as ldm_experiment
from experiments import vae as vae_experiment
from phrase_jax import config_lib
from phrase_jax.artifacts import bundle
from phrase_jax.models import decoding, dit, vae
from phrase_jax.music import layout
from phrase_jax.stages import edit

_OUT = flags.DEFINE_string("out", "/tmp/bench_edit", "Scratch folder (bundle, edits).")
_SONG = flags.DEFINE_string("song", "001", "The POP909 song to edit.")
_POP909 = flags.DEFINE_string("pop909_dir", os.environ.get("POP909_DIR", ""), "POP909 root.")
_SAMPLERS = flags.DEFINE_string(
    "samplers", "ddim:50,dpm_solver_pp:20,dpm_solver_pp_sde:20,ddpm:1000", "sampler:steps, ..."
)
_RESAMPLE = flags.DEFINE_string(
    "resample", "2:2:2", "jump:repeats:every of the resampled rows ('' = none)"
)
_RESAMPLED = flags.DEFINE_string(
    "resampled_samplers", "dpm_solver_pp_sde:20", "sampler:steps also run with resampling"
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = {
    "rewrite 8 bars": "task=infill,bars=17-24",
    "continue 32 -> 64": "task=continue,keep_bars=32,bars=64",
}


def paper_bundle(path: str) -> str:
    """A paper-size vae-mode PhraseVAE and lencond PhraseLDM, random weights, as a bundle."""
    vae_config = vae.VAEConfig.from_mapping(vae_experiment.get_config().model)
    ldm_config = dit.PhraseLDMConfig.from_mapping(ldm_experiment.get_config("lencond").model)
    vae_model = vae.PhraseVAE(vae_config, rngs=nnx.Rngs(0))
    ldm_model = dit.PhraseLDM(ldm_config, rngs=nnx.Rngs(1))
    from data_pipelines import transforms

    phrases = [layout.INST_PHRASE, layout.BAR_PHRASE, layout.SEP_PHRASE]
    examples = [transforms.phrase_example(np.asarray(p), 128) for p in phrases]
    batch = {k: np.stack([e[k] for e in examples]) for k in ("encoder_ids", "encoder_mask")}
    special = np.asarray(decoding.encode_latents(vae_model, batch))
    return bundle.write_bundle(
        path, vae_model=vae_model, ldm_model=ldm_model, scale=1.0, clip=3.0,
        special_latents=dict(zip(bundle.SPECIAL_NAMES, special, strict=True)), slots_per_bar=4,
        provenance={"source": "bench_edit random weights", "vae_step": 0, "ldm_step": 0,
                    "data": "none"},
        section_vocab=None, overwrite=True,
    )  # fmt: skip


def main(argv):
    del argv
    out = os.path.abspath(_OUT.value)
    song = os.path.join(_POP909.value, _SONG.value, f"{_SONG.value}.mid")
    started = time.perf_counter()
    model = paper_bundle(os.path.join(out, "bundle"))
    print(f"paper-size bundle: {time.perf_counter() - started:.1f} s", flush=True)
    rows = [(item, "") for item in _SAMPLERS.value.split(",")]
    if _RESAMPLE.value:
        rows += [(item, _RESAMPLE.value) for item in _RESAMPLED.value.split(",")]
    print("| task | sampler | resampling | model calls | run | diffusion s | decode s | edit s |")
    print("|---|---|---|---|---|---|---|---|")
    for item, resample in rows:
        name, steps = item.split(":")
        jump, repeats, every = (int(x) for x in (resample or "1:0:1").split(":"))
        for task, args in TASKS.items():
            config = config_lib.load_experiment(
                os.path.join(REPO, "experiments", "edit.py")
                + f":lencond,model={model},input={song},{args},sampler={name},steps={steps},"
                f"resample_jump={jump},resample_repeats={repeats},resample_every={every},"
                "piano_roll=False,wav=no",
                lock=False,
            )
            runs = ("first (compiles)", "second") if task == "rewrite 8 bars" else ("compiled",)
            for run in runs[: 1 if name == "ddpm" else 2]:
                result = edit.run(config, os.path.join(out, f"edit_{name}_{steps}_{repeats}"))
                t = result["timings"]
                edit_s = t["encode_s"] + t["diffusion_s"] + t["decode_s"]
                print(
                    f"| {task} | {name}-{steps} | {resample or 'off'} | {result['model_calls']} "
                    f"| {run} | {t['diffusion_s']:.2f} | {t['decode_s']:.2f} | {edit_s:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    app.run(main)
