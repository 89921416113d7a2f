"""Load a bundle (`artifacts/bundle.py`) ready to sample: parameters only, no torch, no orbax,
no optimizer, no training code.

    model = phrase_jax.load_pretrained("bundles/phrase-ldm-lencond")
    model.check_sampling(guidance_scale=1.0, sections="")       # one-line UserError if refused
    x0 = samplers.sample(model.ldm, model.schedule, noise, key, method="dpm_solver_pp_sde",
                         num_steps=10, conditions={"n_bars": n_bars_b}, clip=model.clip)
    ids = decoding.decode_latents(model.vae, x0[0] * model.scale, max_len=model.max_len)

`Pretrained.manifest()` holds the latents-manifest fields that decoding a sampled song reads
(scale, clip, special latents, slots per bar), so the generate path takes a bundle or a trained
workdir alike.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from phrase_jax import errors
from phrase_jax.artifacts import bundle
from phrase_jax.diffusion import samplers, schedules
from phrase_jax.models import dit, vae
from phrase_jax.music import sections


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A loaded bundle. `vae` / `ldm`: the models (EMA weights when the bundle has them and
    they were wanted: `used_ema` per model); `meta`: bundle.json; `schedule`: the diffusion
    schedule; `section_vocab`: None when the LDM's section ids are unknown."""

    path: str
    vae: vae.PhraseVAE
    ldm: dit.PhraseLDM
    meta: dict
    schedule: schedules.Schedule
    section_vocab: sections.SectionVocab | None
    used_ema: dict[str, bool]

    @property
    def scale(self) -> float:
        return float(self.meta["latents"]["scale"])

    @property
    def clip(self) -> float:
        """x0 clip in the scaled latent space (0: none)."""
        return float(self.meta["latents"]["clip"])

    @property
    def slots_per_bar(self) -> int:
        return int(self.meta["latents"]["slots_per_bar"])

    @property
    def max_len(self) -> int:
        return int(self.meta["decoding"]["max_len"])

    @property
    def prediction(self) -> str:
        return self.meta["diffusion"]["prediction"]

    @property
    def special_latents(self) -> dict[str, np.ndarray]:
        """Unscaled float32 [latent_dim] latents of the `[INST]`, `b-1` and `[SEP]` phrases."""
        special = self.meta["latents"]["special_latents"]
        return {k: np.asarray(v, np.float32) for k, v in special.items()}

    def manifest(self) -> dict:
        """The latents-manifest fields the generate path reads (`artifacts/latents.py` names),
        plus where they came from."""
        latents = self.meta["latents"]
        provenance = self.meta["provenance"]
        return {
            "scale": self.scale,
            "clip": self.clip,
            "special_latents": latents["special_latents"],
            "slots_per_bar": self.slots_per_bar,
            "latent_dim": int(latents["latent_dim"]),
            "max_slots": int(latents["max_slots"]),
            "vae_step": provenance.get("vae_step"),
            "bundle": self.path,
        }

    def check_sampling(self, *, guidance_scale: float = 1.0, sections: object = "") -> None:
        """One-line UserError when this bundle cannot honour the request: guidance for a model
        trained without condition dropout, or a section string for an LDM that is not
        conditioned on sections or whose section ids are unknown."""
        samplers.check_guidance(self.ldm.config, guidance_scale)
        if not sections:
            return
        if "sections" not in self.ldm.config.conditions:
            raise errors.UserError(
                f"sections={sections!r}: the LDM of {self.path} is not conditioned on sections "
                f"(conditions: {list(self.ldm.config.conditions) or 'none'}); drop sections"
            )
        if self.section_vocab is None:
            raise errors.UserError(
                f"sections={sections!r}: {self.path} does not record which section ids its LDM "
                "was trained with; it cannot be conditioned on sections"
            )


def _build(create, arrays, *, what: str, mesh: Mesh | None):
    """The model `create()` builds, shape-only, with every variable set from `arrays`."""
    model = nnx.eval_shape(create)
    bundle.set_model_arrays(model, arrays, what=what)
    if mesh is not None:  # replicated: inference models are small next to their activations
        state = nnx.state(model)
        replicated = NamedSharding(mesh, PartitionSpec())
        nnx.update(model, jax.device_put(state, replicated))
    return model


def load_pretrained(
    path: str,
    *,
    use_ema: bool = True,
    mesh: Mesh | None = None,
    allow_unsupported: bool = False,
) -> Pretrained:
    """The bundle at `path`, ready to sample.

    `use_ema`: the EMA weights where the bundle has them. `mesh`: place the parameters
    replicated on it (default: the default device). A bundle whose `unsupported` field is set
    (e.g. the reference's section-conditioned LDM, whose section ids were never saved) is a
    one-line UserError unless `allow_unsupported` (to inspect it or use its VAE).
    """
    path = os.path.abspath(path)
    meta = bundle.read_meta(path)
    if meta["unsupported"] and not allow_unsupported:
        raise errors.UserError(f"{path}: {meta['unsupported']}")
    try:
        vae_config = vae.VAEConfig.from_mapping(meta["vae"]["config"])
        ldm_config = dit.PhraseLDMConfig.from_mapping(meta["ldm"]["config"])
    except (TypeError, ValueError) as error:
        raise errors.UserError(f"{path}/{bundle.BUNDLE_JSON}: bad model config ({error})") from None
    used_ema = {m: use_ema and meta[m]["ema_weights"] is not None for m in bundle.MODELS}
    models = {}
    for name, create in (
        ("vae", lambda: vae.PhraseVAE(vae_config, rngs=nnx.Rngs(0))),
        ("ldm", lambda: dit.PhraseLDM(ldm_config, rngs=nnx.Rngs(0))),
    ):
        ema = used_ema[name]
        arrays = bundle.read_weights(path, meta, name, ema=ema)
        what = os.path.join(path, meta[name]["ema_weights" if ema else "weights"])
        models[name] = _build(create, arrays, what=what, mesh=mesh)
    vocab = meta["section_vocab"]
    return Pretrained(
        path=path,
        vae=models["vae"],
        ldm=models["ldm"],
        meta=meta,
        schedule=schedules.cosine_schedule(int(meta["diffusion"]["num_steps"])),
        section_vocab=None if vocab is None else sections.SectionVocab(vocab),
        used_ema=used_ema,
    )
