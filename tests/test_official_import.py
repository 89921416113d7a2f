"""The released checkpoints' import (`phrase_jax.interop.official`), offline: stand-in Hub folders
(`official_standins.py`) -> bundle -> `load_pretrained` -> the same numbers as torch (fp32 CPU)."""

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("diffusers")
pytest.importorskip("huggingface_hub")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from diffusers.models.embeddings import get_1d_rotary_pos_embed  # noqa: E402
from safetensors import numpy as safetensors_numpy  # noqa: E402

import phrase_jax  # noqa: E402
from benchmarks import official_standins  # noqa: E402
from data_pipelines import transforms  # noqa: E402
from phrase_jax import errors  # noqa: E402
from phrase_jax.diffusion import samplers  # noqa: E402
from phrase_jax.generation import audio  # noqa: E402
from phrase_jax.interop import official  # noqa: E402
from phrase_jax.models import decoding  # noqa: E402
from phrase_jax.music import layout, midi_io, vocab  # noqa: E402

pytestmark = pytest.mark.parity
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Hub folders and their torch modules: phrase-vae, a paper-size uncond LDM with the bare
    wrapper config.json, a tiny lencond and a tiny seccond with the full one."""
    root = tmp_path_factory.mktemp("hub")
    folders, modules = {}, {}
    folders["vae"], modules["vae"] = official_standins.save_vae(root / "vae")
    folders["uncond"], modules["uncond"] = official_standins.save_ldm(
        root / "uncond", seed=1, minimal_config=True
    )
    folders["lencond"], modules["lencond"] = official_standins.save_ldm(
        root / "lencond", seed=2, length_control=True, scale_factor=0.5,
        model_config=official_standins.TINY_DIT,
    )  # fmt: skip
    folders["seccond"], modules["seccond"] = official_standins.save_ldm(
        root / "seccond", seed=3, sec_control=True, model_config=official_standins.TINY_DIT
    )
    return folders, modules


@pytest.fixture(scope="module")
def bundles(hub, tmp_path_factory):
    folders, _ = hub
    root = tmp_path_factory.mktemp("bundles")
    paths = {}
    for name in ("uncond", "lencond", "seccond"):
        started = time.monotonic()
        paths[name] = official.import_official(folders["vae"], folders[name], str(root / name))
        imported = time.monotonic()
        phrase_jax.load_pretrained(paths[name], allow_unsupported=True)
        print(
            f"{name}: import {imported - started:.2f} s, "
            f"load_pretrained {time.monotonic() - imported:.2f} s"
        )
    return paths


def _phrase_batch():
    rng = np.random.default_rng(0)
    phrases = [rng.integers(23, 1000, n) for n in (40, 9, 122)]
    examples = [transforms.phrase_example(p, 128) for p in phrases]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def test_the_hub_file_stores_the_tied_embedding_once(hub):
    folders, _ = hub
    keys = safetensors_numpy.load_file(f"{folders['vae']}/model.safetensors").keys()
    aliases = [f"model.t5.{k}.weight" for k in official._TIED]
    assert sum(alias in keys for alias in aliases) == 1
    assert all(k.startswith("model.") for k in keys)


@torch.no_grad()
def test_vae_means_logits_and_special_latents_match_torch(hub, bundles):
    _, modules = hub
    reference = modules["vae"].model
    model = phrase_jax.load_pretrained(bundles["uncond"]).vae
    assert model.config == official.vae_config_from_tensors(
        safetensors_numpy.load_file(f"{hub[0]['vae']}/model.safetensors"), {}
    )

    def torch_means(encoder_ids, encoder_mask):
        states = reference.t5.encoder(
            input_ids=torch.tensor(encoder_ids).long(),
            attention_mask=torch.tensor(encoder_mask).long(),
        ).last_hidden_state
        joined = states[:, :4].reshape(states.shape[0], -1)
        return reference.proj(reference.layer_norm(joined))[:, :64]

    batch = _phrase_batch()
    mean_t = torch_means(batch["encoder_ids"], batch["encoder_mask"])
    memory = reference.post_proj(mean_t).reshape(-1, 4, 512)
    logits_t = reference.t5(
        encoder_outputs=(memory,),
        decoder_input_ids=torch.tensor(batch["decoder_inputs"]).long(),
    ).logits.numpy()
    mean, _ = model.latent_moments(batch["encoder_ids"], batch["encoder_mask"])
    logits, _ = model(batch)
    valid = batch["decoder_mask"]
    error_mean = float(np.max(np.abs(np.asarray(mean) - mean_t.numpy())))
    error_logits = float(np.max(np.abs(np.asarray(logits)[valid] - logits_t[valid])))

    special = phrase_jax.load_pretrained(bundles["uncond"]).special_latents
    phrases = [layout.INST_PHRASE, layout.BAR_PHRASE, layout.SEP_PHRASE]
    ids = np.stack([transforms.phrase_example(np.asarray(p), 128)["encoder_ids"] for p in phrases])
    special_t = torch_means(ids, ids != vocab.PAD).numpy()
    ours = np.stack([special[k] for k in ("inst", "bar", "sep")])
    error_special = float(np.max(np.abs(ours - special_t)))
    print(
        f"official VAE parity: means {error_mean:.2e} logits {error_logits:.2e} "
        f"special latents {error_special:.2e}"
    )
    assert max(error_mean, error_logits, error_special) < TOLERANCE
    assert float(mean_t.abs().mean()) > 0.1  # a real signal, not zeros on both sides


def _torch_denoise(reference, x, steps, global_states, memory):
    rotary = get_1d_rotary_pos_embed(
        reference.ldm.config.attention_head_dim // 2,
        x.shape[1] + 1,
        use_real=True,
        repeat_interleave_real=False,
    )
    with torch.no_grad():
        out = reference.ldm(
            torch.from_numpy(x).transpose(1, 2),
            torch.from_numpy(steps),
            encoder_hidden_states=memory,
            global_hidden_states=global_states,
            rotary_embedding=rotary,
            return_dict=False,
        )[0]
    return out.transpose(1, 2).numpy()


def _inputs(n_slots, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, n_slots, 64)).astype(np.float32)
    return x, np.array([3, 987])


def test_uncond_denoising_matches_torch(hub, bundles):
    _, modules = hub
    loaded = phrase_jax.load_pretrained(bundles["uncond"])
    assert loaded.ldm.config.n_slots == 512 and loaded.ldm.config.time_scale == 1.0
    assert (loaded.scale, loaded.clip) == (0.7590118646621704, 3.064450740814209)
    x, steps = _inputs(512, 0)
    # The reference's generate passes zeros for the missing conditions: [B, 1, 128] global,
    # [B, 7, 128] memory (which cross-attention turns into exactly zero).
    expected = _torch_denoise(
        modules["uncond"], x, steps, torch.zeros(2, 1, 128), torch.zeros(2, 7, 128)
    )
    got = np.asarray(loaded.ldm(jnp.asarray(x), jnp.asarray(steps)))
    error = float(np.max(np.abs(got - expected)))
    print(f"official uncond parity: max|diff| {error:.2e} (mean |y| {np.abs(expected).mean():.2f})")
    assert error < TOLERANCE


def test_lencond_denoising_matches_torch_and_refuses_guidance(hub, bundles):
    _, modules = hub
    reference = modules["lencond"]
    loaded = phrase_jax.load_pretrained(bundles["lencond"])
    assert loaded.ldm.config.conditions == ("length",) and loaded.scale == 0.5
    assert loaded.meta["conditions"]["condition_dropout"] == 0.0
    x, steps = _inputs(12, 1)
    n_bars = np.array([7, 64])
    global_states = reference.length_encoder(torch.from_numpy(n_bars))
    expected = _torch_denoise(reference, x, steps, global_states, torch.zeros(2, 7, 24))
    got = np.asarray(loaded.ldm(jnp.asarray(x), jnp.asarray(steps), {"n_bars": n_bars}))
    error = float(np.max(np.abs(got - expected)))
    print(f"official lencond parity: max|diff| {error:.2e}")
    assert error < TOLERANCE
    loaded.check_sampling(guidance_scale=1.0)
    with pytest.raises(errors.UserError, match="without condition dropout"):
        loaded.check_sampling(guidance_scale=3.0)


def test_seccond_imports_but_refuses_to_sample(hub, bundles):
    _, modules = hub
    with pytest.raises(errors.UserError, match="section ids came from Python set order"):
        phrase_jax.load_pretrained(bundles["seccond"])
    loaded = phrase_jax.load_pretrained(bundles["seccond"], allow_unsupported=True)
    assert loaded.section_vocab is None and loaded.ldm.config.max_bars == 32
    # With every position real, our section encoder is the reference's: the weights map.
    sec = modules["seccond"].sec_encoder
    rng = np.random.default_rng(0)
    types, lengths = rng.integers(1, 12, (2, 30)), rng.integers(1, 33, (2, 30))
    with torch.no_grad():
        embedded = torch.cat(
            [sec.type_embed(torch.from_numpy(types)), sec.len_embed(torch.from_numpy(lengths))], -1
        )
        expected = sec.sec_encoder(embedded).numpy()
    got = loaded.ldm.conditioner.section_encoder(
        jnp.asarray(types), jnp.asarray(lengths), jnp.ones((2, 30), bool), None
    )
    assert float(np.max(np.abs(np.asarray(got) - expected))) < TOLERANCE


def test_cli_writes_a_bundle_and_reports_errors_in_one_line(hub, tmp_path, capsys):
    folders, _ = hub
    out = tmp_path / "bundle"
    args = ["--vae", folders["vae"], "--ldm", folders["lencond"], "--out", str(out)]
    assert official.main(args) == 0 and (out / "bundle.json").exists()
    assert "wrote" in capsys.readouterr().out
    code = official.main(args)
    err = capsys.readouterr().err
    assert code == 2 and "exists" in err and err.count("\n") == 1
    code = official.main(["--vae", str(tmp_path / "nope"), "--ldm", "x", "--out", str(out)])
    assert code == 2 and "no such folder" in capsys.readouterr().err


def test_repo_ids_download_with_huggingface_hub(hub, tmp_path, monkeypatch):
    import huggingface_hub

    folders, _ = hub
    asked = []

    def fake_download(repo_id, allow_patterns):
        asked.append((repo_id, tuple(allow_patterns)))
        return folders["vae"] if repo_id.endswith("vae") else folders["lencond"]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    path = official.import_official(
        "LongshenOu/phrase-vae", "LongshenOu/phrase-ldm-lencond", str(tmp_path / "b")
    )
    assert asked == [
        ("LongshenOu/phrase-vae", ("model.safetensors", "config.json")),
        ("LongshenOu/phrase-ldm-lencond", ("model.safetensors", "config.json")),
    ]
    provenance = phrase_jax.load_pretrained(path).meta["provenance"]
    assert provenance["ldm_source"] == "LongshenOu/phrase-ldm-lencond"


def test_an_imported_bundle_samples_songs_to_midi_and_wav(bundles, tmp_path):
    """Everything sampling needs comes from the bundle: sampler, scale, decoder, slot layout."""
    loaded = phrase_jax.load_pretrained(bundles["lencond"])
    noise = jax.random.normal(jax.random.key(0), (2, 12, 64))
    x0 = samplers.sample(
        loaded.ldm, loaded.schedule, noise, jax.random.key(1), method="dpm_solver_pp_sde",
        num_steps=3, conditions={"n_bars": jnp.array([3, 3])}, clip=loaded.clip,
    )  # fmt: skip
    latents = np.asarray(x0).reshape(-1, 64) * loaded.scale
    ids = decoding.decode_latents(loaded.vae, latents, max_len=16).reshape(2, 12, 16)
    for index, song_ids in enumerate(ids):
        song, _ = layout.assemble_song([row.tolist() for row in song_ids], loaded.slots_per_bar)
        pm = midi_io.song_to_midi(song)
        pm.write(str(tmp_path / f"song_{index}.mid"))
        assert audio.render_wav(pm, str(tmp_path / f"song_{index}.wav"), synthesizer="sine")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "song_0.mid", "song_0.wav", "song_1.mid", "song_1.wav",
    ]  # fmt: skip


def test_the_sample_stage_reads_an_imported_bundle(bundles, tmp_path):
    """`make sample MODEL=...` on imported bundles: the tiny lencond one writes .mid/.png/.wav;
    guidance and the seccond bundle are one-line refusals before any sampling."""
    from stage_fixtures import load_config

    from phrase_jax import main

    model = bundles["lencond"]
    arg = f"runlocal,model={model},sampler=dpm_solver_pp_sde,steps=2,bars=3,wav=True"
    main.run(load_config("sample", arg), str(tmp_path / "songs"))
    names = sorted(p.name for p in (tmp_path / "songs").iterdir())
    assert names == ["config.json", "samples.json", "song_000.mid", "song_000.png",
                     "song_000.wav", "song_001.mid", "song_001.png", "song_001.wav"]  # fmt: skip
    with pytest.raises(errors.UserError, match="guidance_scale=2.0"):
        main.run(load_config("sample", f"{arg},guidance_scale=2.0"), str(tmp_path / "no"))
    with pytest.raises(errors.UserError, match="section") as refused:
        main.run(load_config("sample", f"runlocal,model={bundles['seccond']}"), str(tmp_path / "n"))
    assert "\n" not in str(refused.value)
