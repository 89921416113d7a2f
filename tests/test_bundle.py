"""Bundles: write_bundle -> load_pretrained round trip, atomic writes, checks on read, refusals."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import phrase_jax
from phrase_jax import errors
from phrase_jax.artifacts import bundle
from phrase_jax.diffusion import samplers
from phrase_jax.models import dit, vae
from phrase_jax.music import sections

TINY_VAE = dict(
    d_model=32, num_heads=2, head_dim=16, d_ff=64, num_encoder_layers=1, num_decoder_layers=1,
    latent_dim=8,
)  # fmt: skip
TINY_LDM = dict(
    n_slots=8, latent_dim=8, width=32, num_layers=1, num_heads=4, head_dim=8, num_kv_heads=2,
    ff_dim=64, rope_dim=4, time_features=16, cond_dim=12, memory_dim=24,
)  # fmt: skip


def tiny_models(conditions=("length",), condition_dropout=0.1, seed=0):
    vae_model = vae.PhraseVAE(vae.VAEConfig(**TINY_VAE), rngs=nnx.Rngs(seed))
    ldm_config = dit.PhraseLDMConfig(
        **TINY_LDM, conditions=conditions, condition_dropout=condition_dropout
    )
    return vae_model, dit.PhraseLDM(ldm_config, rngs=nnx.Rngs(seed))


def write_tiny(path, *, conditions=("length",), condition_dropout=0.1, **kwargs):
    vae_model, ldm_model = tiny_models(conditions, condition_dropout)
    rng = np.random.default_rng(0)
    special = {k: rng.standard_normal(8).astype(np.float32) for k in bundle.SPECIAL_NAMES}
    kwargs.setdefault("section_vocab", sections.SectionVocab.build([[("A", 8), ("B", 4)]]))
    written = bundle.write_bundle(
        str(path),
        vae_model=vae_model,
        ldm_model=ldm_model,
        scale=0.75,
        clip=3.5,
        special_latents=special,
        slots_per_bar=4,
        provenance={"source": "test", "vae_step": 10, "ldm_step": 20, "data": "none"},
        **kwargs,
    )
    return written, vae_model, ldm_model, special


def _same_arrays(a: nnx.Module, b: nnx.Module) -> None:
    ours, theirs = bundle.model_arrays(a), bundle.model_arrays(b)
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_round_trip_gives_the_same_models_and_outputs(tmp_path):
    path, vae_model, ldm_model, special = write_tiny(tmp_path / "b")
    assert sorted(os.listdir(tmp_path)) == ["b"]  # no staging folder left behind
    assert sorted(os.listdir(path)) == ["bundle.json", "ldm.safetensors", "vae.safetensors"]
    loaded = phrase_jax.load_pretrained(path)
    _same_arrays(loaded.vae, vae_model)
    _same_arrays(loaded.ldm, ldm_model)
    assert "time_proj.W" in bundle.model_arrays(loaded.ldm)  # fixed buffers travel too
    x = jax.random.normal(jax.random.key(1), (2, 8, 8))
    t, conds = jnp.array([3, 700]), {"n_bars": jnp.array([5, 64])}
    np.testing.assert_array_equal(loaded.ldm(x, t, conds), ldm_model(x, t, conds))
    assert loaded.ldm.config == ldm_model.config and loaded.vae.config == vae_model.config
    assert (loaded.scale, loaded.clip, loaded.slots_per_bar, loaded.max_len) == (0.75, 3.5, 4, 128)
    np.testing.assert_array_equal(loaded.special_latents["sep"], special["sep"])
    manifest = loaded.manifest()
    assert manifest["max_slots"] == 8 and manifest["vae_step"] == 10
    assert loaded.section_vocab.types == ["<pad>", "<unk>", "A", "B"]
    assert loaded.schedule.num_steps == 1000 and loaded.used_ema == {"vae": False, "ldm": False}
    meta = loaded.meta
    assert meta["conditions"] == {
        "names": ["length"], "condition_dropout": 0.1, "length_bucket_bars": 10,
    }  # fmt: skip
    assert meta["provenance"]["source"] == "test" and "created" in meta["provenance"]


def test_ema_weights_are_preferred_when_present(tmp_path):
    _, ema_ldm = tiny_models(seed=5)
    path, _, ldm_model, _ = write_tiny(tmp_path / "b", ldm_ema=ema_ldm)
    loaded = phrase_jax.load_pretrained(path)
    assert loaded.used_ema == {"vae": False, "ldm": True}
    _same_arrays(loaded.ldm, ema_ldm)
    _same_arrays(phrase_jax.load_pretrained(path, use_ema=False).ldm, ldm_model)


def test_existing_bundle_is_kept_unless_overwrite(tmp_path):
    path, *_ = write_tiny(tmp_path / "b")
    with pytest.raises(errors.UserError, match="exists"):
        write_tiny(tmp_path / "b")
    _, _, ldm_model, _ = write_tiny(tmp_path / "b", overwrite=True)
    _same_arrays(phrase_jax.load_pretrained(path).ldm, ldm_model)
    assert sorted(os.listdir(tmp_path)) == ["b"]


def test_a_failed_write_leaves_the_old_bundle_and_no_staging_folder(tmp_path, monkeypatch):
    path, _, ldm_model, _ = write_tiny(tmp_path / "b")
    save_file = bundle.safetensors_numpy.save_file

    def fail_on_the_ldm(arrays, file, metadata=None):
        if file.endswith("ldm.safetensors"):
            raise OSError("disk full")
        save_file(arrays, file, metadata=metadata)

    monkeypatch.setattr(bundle.safetensors_numpy, "save_file", fail_on_the_ldm)
    with pytest.raises(OSError, match="disk full"):
        write_tiny(tmp_path / "b", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["b"]
    monkeypatch.undo()
    _same_arrays(phrase_jax.load_pretrained(path).ldm, ldm_model)
    with pytest.raises(ValueError, match="special_latents"):
        bundle.make_meta(
            vae_config=vae.VAEConfig(**TINY_VAE),
            ldm_config=ldm_model.config,
            scale=1.0,
            clip=3.0,
            special_latents={"inst": np.zeros(8)},
            slots_per_bar=4,
            provenance={},
            section_vocab=None,
        )


def _edit_meta(path, edit):
    file = os.path.join(path, bundle.BUNDLE_JSON)
    with open(file) as f:
        meta = json.load(f)
    edit(meta)
    with open(file, "w") as f:
        json.dump(meta, f)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(format_version=99), "format_version 99"),
        (lambda m: m.update(vocab_sha256="0" * 64), "another token vocabulary"),
        (lambda m: m.pop("latents"), "lacks \\['latents'\\]"),
        (lambda m: m["ldm"]["config"].update(num_layers=2), "missing"),
        (lambda m: m["vae"]["config"].update(colour="red"), "bad model config"),
    ],
)
def test_bad_bundles_are_one_line_user_errors(tmp_path, edit, message):
    path, *_ = write_tiny(tmp_path / "b")
    _edit_meta(path, edit)
    with pytest.raises(errors.UserError, match=message) as caught:
        phrase_jax.load_pretrained(path)
    assert "\n" not in str(caught.value)


def test_missing_weights_and_missing_bundle(tmp_path):
    with pytest.raises(errors.UserError, match="not a bundle"):
        phrase_jax.load_pretrained(str(tmp_path))
    path, *_ = write_tiny(tmp_path / "b")
    os.remove(os.path.join(path, "vae.safetensors"))
    with pytest.raises(errors.UserError, match="incomplete"):
        phrase_jax.load_pretrained(path)


def test_unsupported_bundle_is_refused_unless_allowed(tmp_path):
    path, *_ = write_tiny(tmp_path / "b", unsupported="its section ids are unknown")
    with pytest.raises(errors.UserError, match="its section ids are unknown"):
        phrase_jax.load_pretrained(path)
    assert phrase_jax.load_pretrained(path, allow_unsupported=True).meta["unsupported"]


def test_guidance_is_refused_without_condition_dropout(tmp_path):
    path, *_ = write_tiny(tmp_path / "b", condition_dropout=0.0)
    loaded = phrase_jax.load_pretrained(path)
    loaded.check_sampling(guidance_scale=1.0)
    with pytest.raises(errors.UserError, match="without condition dropout"):
        loaded.check_sampling(guidance_scale=2.0)
    noise = jnp.zeros((1, 8, 8))
    run = lambda scale: samplers.sample(
        loaded.ldm, loaded.schedule, noise, jax.random.key(0), method="ddim", num_steps=2,
        conditions={"n_bars": jnp.array([8])}, guidance_scale=scale,
    )  # fmt: skip
    with pytest.raises(errors.UserError, match="guidance_scale=3.0"):
        run(3.0)
    assert run(1.0).shape == noise.shape


def test_sections_are_refused_when_the_model_cannot_take_them(tmp_path):
    path, *_ = write_tiny(tmp_path / "b")
    with pytest.raises(errors.UserError, match="not conditioned on sections"):
        phrase_jax.load_pretrained(path).check_sampling(sections="A8B8")
    path, *_ = write_tiny(tmp_path / "s", conditions=("sections",), section_vocab=None)
    loaded = phrase_jax.load_pretrained(path)
    loaded.check_sampling()
    with pytest.raises(errors.UserError, match="section ids"):
        loaded.check_sampling(sections="A8B8")


def test_load_pretrained_places_on_a_mesh(tmp_path):
    path, *_ = write_tiny(tmp_path / "b")
    mesh = jax.make_mesh((len(jax.devices()),), ("data",), (jax.sharding.AxisType.Auto,))
    loaded = phrase_jax.load_pretrained(path, mesh=mesh)
    kernel = loaded.ldm.proj_in.kernel[...]
    assert kernel.sharding.is_fully_replicated and len(kernel.sharding.device_set) == len(
        jax.devices()
    )


def test_strided_numpy_values_are_written_in_their_logical_order(tmp_path):
    _, _, ldm_model, _ = write_tiny(tmp_path / "a")
    kernel = np.arange(32 * 8, dtype=np.float32).reshape(8, 32).T  # a transposed view
    assert not kernel.flags.c_contiguous
    ldm_model.proj_out.kernel.set_value(kernel)
    arrays = bundle.model_arrays(ldm_model)
    path = str(tmp_path / "w.safetensors")
    bundle.safetensors_numpy.save_file(arrays, path)
    np.testing.assert_array_equal(
        bundle.safetensors_numpy.load_file(path)["proj_out.kernel"], kernel
    )
