"""One 128-bar song from an imported paper-size bundle, end to end through the sample stage, per
sampler (issue 12's figure). The Hub folders are stand-ins (`official_standins`: the public
classes with the reference's module names, every tensor perturbed), so the timing is the real
models' work; their untrained VAE decodes every phrase to max_len, the decoder's worst case.

    python -m benchmarks.bench_bundle [--out /tmp/bench_bundle] [--samplers dpmpp_sde:10,...]

Needs the parity extra (torch, diffusers, huggingface_hub) to write the stand-ins.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

from benchmarks import official_standins
from phrase_jax import config_lib
from phrase_jax.interop import official
from phrase_jax.stages import sample

_OUT = flags.DEFINE_string("out", "/tmp/bench_bundle", "Scratch folder (hub folders, bundle).")
_SAMPLERS = flags.DEFINE_string(
    "samplers", "dpm_solver_pp_sde:10,dpm_solver_pp:10,ddim:50", "sampler:steps, comma-joined."
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
    del argv
    out = os.path.abspath(_OUT.value)
    os.makedirs(out, exist_ok=True)
    vae_dir, _ = official_standins.save_vae(os.path.join(out, "hub_vae"))
    ldm_dir, _ = official_standins.save_ldm(
        os.path.join(out, "hub_lencond"), length_control=True, minimal_config=True
    )
    started = time.perf_counter()
    bundle = official.import_official(vae_dir, ldm_dir, os.path.join(out, "bundle"), overwrite=True)
    print(f"import (paper-size VAE + lencond LDM): {time.perf_counter() - started:.1f} s")
    print("| sampler | run | diffusion s | decode s | per song s |\n|---|---|---|---|---|")
    for item in _SAMPLERS.value.split(","):
        name, steps = item.split(":")
        config = config_lib.load_experiment(
            os.path.join(REPO, "experiments", "sample.py")
            + f":lencond,model={bundle},num_songs=1,batch_size=1,bars=128,sampler={name},"
            f"steps={steps},end=condition,piano_roll=False,wav=False",
            lock=False,
        )
        # The first run compiles; the second, same shapes in the same process, is what a user
        # generating several songs pays per song.
        for run in ("first (compiles)", "second"):
            stats = sample.run(config, os.path.join(out, f"samples_{name}_{steps}"))
            timings = stats["timings"]
            per_song = timings["diffusion_s"] + timings["decode_s"]
            print(
                f"| {name}-{steps} | {run} | {timings['diffusion_s']:.2f} "
                f"| {timings['decode_s']:.2f} | {per_song:.2f} |",
                flush=True,
            )
            with open(os.path.join(out, "bench_bundle.jsonl"), "a") as f:
                record = {"sampler": name, "steps": int(steps), "run": run, **timings}
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    app.run(main)
