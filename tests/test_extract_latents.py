"""Latent extraction (SPEC 3) on a tiny saved VAE and 5 prepared songs (Bach chorales, and POP909
when present), and the LDM data pipeline over its output: manifest, shapes, padding, scale and
clip recomputed independently, re-run skipping, mesh invariance of the encoder, batch layout,
determinism and restore."""

import json
import pathlib

import jax
import numpy as np
import pytest
from jax.sharding import AxisType
from stage_fixtures import chorales_only

from data_pipelines import ldm_pipeline, sources, transforms
from phrase_jax import config_lib, main
from phrase_jax.inference import vae_loading
from phrase_jax.music import layout, sections
from phrase_jax.stages import extract_latents, train_vae
from phrase_jax.training import checkpointing, sharding, train_state

REPO = pathlib.Path(__file__).resolve().parents[1]
# The second dataset's chain reuses the first one's compiled programs (same shapes).
pytestmark = pytest.mark.usefixtures("persistent_compilation_cache")


def load_config(name: str, arg: str = ""):
    """An experiment config by file name, e.g. load_config('extract', 'runlocal')."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))  # experiment files import `experiments.*`
        return config_lib.load_experiment(f"{REPO}/experiments/{name}.py:{arg}")


def _mesh(shape):
    devices = jax.devices()[: shape[0] * shape[1]]
    return jax.make_mesh(shape, ("data", "model"), axis_types=(AxisType.Auto,) * 2, devices=devices)


@pytest.fixture(scope="module")
def data_dir(prepared) -> str:
    return prepared.dir


def save_tiny_vae(workdir: pathlib.Path, data_dir: str, step: int, seed: int = 0) -> None:
    """A runlocal mode-vae run's workdir (config.json + one checkpoint) without training."""
    config = load_config("vae", f"runlocal,data.dir={data_dir},init_from=,seed={seed}")
    mesh = sharding.make_mesh(config.mesh)
    spec, create, _ = train_vae.build_state_spec(config, mesh)
    checkpointer = checkpointing.Checkpointer(workdir, async_save=False)
    checkpointer.save(step, sharding.init_state(create, spec.shardings))
    checkpointer.close()
    (workdir / "config.json").write_text(config_lib.to_json(config))


@pytest.fixture(scope="module")
def vae_workdir(data_dir, tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("tiny_vae")
    save_tiny_vae(workdir, data_dir, step=3)
    return workdir


def extract_config(prepared, vae_workdir, extra=""):
    """The runlocal extraction of `prepared` at its dataset's slot budget."""
    return load_config(
        "extract",
        f"runlocal,data.dir={prepared.dir},vae_workdir={vae_workdir},"
        f"max_slots={prepared.max_slots}{extra}",
    )


@pytest.fixture(scope="module")
def latents_dir(prepared, vae_workdir, tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("latents")
    main.run(extract_config(prepared, vae_workdir, ",songs_per_shard=1"), str(workdir))
    return workdir


def read_shards(latents_dir, split):
    manifest = json.loads((latents_dir / "manifest.json").read_text())
    parts = [np.load(latents_dir / name) for name in manifest["shards"][split]]
    return {k: np.concatenate([p[k] for p in parts]) for k in ("latents", "n_bars", "names")}


def test_manifest_and_shards_follow_the_design(latents_dir, prepared, vae_workdir):
    data_dir, max_slots = prepared.dir, prepared.max_slots
    manifest = json.loads((latents_dir / "manifest.json").read_text())
    vae_config = json.loads((vae_workdir / "config.json").read_text())
    assert manifest["vae_step"] == 3 and manifest["vae_workdir"] == str(vae_workdir)
    assert manifest["vae_config_hash"] == config_lib.config_hash(
        config_lib.from_json(json.dumps(vae_config))
    )
    assert manifest["vae_checkpoint"] == {"step": 3, "kind": "latest"}
    assert (manifest["slots_per_bar"], manifest["max_slots"], manifest["latent_dim"]) == (
        prepared.slots_per_bar,
        max_slots,
        8,
    )
    assert manifest["data_dir"] == data_dir and manifest["encoder_max_len"] == 32
    assert set(manifest["special_latents"]) == {"inst", "bar", "sep"}
    assert all(len(v) == 8 for v in manifest["special_latents"].values())
    for split in ("train", "valid", "test"):
        songs = sources.read_songs(data_dir, split)
        assert manifest["splits"][split] == len(songs)
        # songs_per_shard=1: one file per song, named as design.md says.
        assert manifest["shards"][split] == [
            f"latents-{split}-{i:05d}-of-{len(songs):05d}.npz" for i in range(len(songs))
        ]
        shards = read_shards(latents_dir, split)
        assert shards["latents"].dtype == np.float32 and shards["n_bars"].dtype == np.int32
        assert shards["latents"].shape == (len(songs), max_slots, 8)
        assert list(shards["names"]) == [s["name"] for s in songs]
        assert list(shards["n_bars"]) == [s["n_bars"] for s in songs]
        listed = [s for s in manifest["songs"] if s["split"] == split]
        assert [(s["name"], s["sections"], s["index"]) for s in listed] == [
            (s["name"], s["sections"], 0) for s in songs
        ]


def test_padding_specials_and_means_match_an_independent_encoding(
    latents_dir, prepared, vae_workdir
):
    spb, max_slots = prepared.slots_per_bar, prepared.max_slots
    manifest = json.loads((latents_dir / "manifest.json").read_text())
    special = {k: np.asarray(v, np.float32) for k, v in manifest["special_latents"].items()}
    config = load_config("vae", f"runlocal,data.dir={prepared.dir}")
    mesh = sharding.make_mesh(config.mesh)
    spec, _, _ = train_vae.build_state_spec(config, mesh)
    restored = checkpointing.Checkpointer(vae_workdir, async_save=False).restore(3, spec)
    model = train_state.unpack(spec, restored.state)[0]
    # The first training song with a silent track's [INST] slot (chorales: a resting voice).
    index, song = next(
        (i, s) for i, s in enumerate(sources.read_songs(prepared.dir, "train"))
        if layout.INST_PHRASE in s["slots"]
    )  # fmt: skip
    latents = read_shards(latents_dir, "train")["latents"][index]
    n_slots = spb * song["n_bars"]
    np.testing.assert_array_equal(
        latents[n_slots:], np.broadcast_to(special["sep"], (max_slots - n_slots, 8))
    )
    np.testing.assert_array_equal(
        latents[spb - 1 : n_slots : spb], np.broadcast_to(special["bar"], (song["n_bars"], 8))
    )
    is_inst = [slot == layout.INST_PHRASE for slot in song["slots"]]
    np.testing.assert_array_equal(
        latents[:n_slots][is_inst], np.broadcast_to(special["inst"], (sum(is_inst), 8))
    )
    # The model restored here, not by the stage, encodes the song's phrases in one batch.
    phrases = song["slots"] + [layout.SEP_PHRASE]
    batch = [transforms.phrase_example(np.asarray(p), 32) for p in phrases]
    ids = np.stack([b["encoder_ids"] for b in batch])
    means = jax.device_get(model.latent_moments(ids, ids != 5)[0])  # 5 = [PAD]
    np.testing.assert_allclose(latents[:n_slots], means[:-1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(special["sep"], means[-1], rtol=1e-4, atol=1e-5)


def test_scale_and_clip_are_recomputed_from_the_train_shards(latents_dir, prepared):
    manifest = json.loads((latents_dir / "manifest.json").read_text())
    train = read_shards(latents_dir, "train")
    spb = prepared.slots_per_bar
    real = np.concatenate(
        [s[: spb * n] for s, n in zip(train["latents"], train["n_bars"], strict=True)]
    )
    scale = np.std(real.astype(np.float64), axis=0).mean()
    assert manifest["scale"] == pytest.approx(scale, rel=1e-6)
    # Padding counts towards the clip (the LDM sees it), so the value differs from real-only.
    clip = np.percentile(np.abs(train["latents"] / scale), 99.9)
    assert manifest["clip"] == pytest.approx(clip, rel=1e-6)


@chorales_only
def test_rerun_skips_and_a_new_vae_step_re_extracts(prepared, vae_workdir, tmp_path):
    workdir = tmp_path / "latents"
    config = extract_config(prepared, vae_workdir)
    first = main.run(config, str(workdir)) or json.loads((workdir / "manifest.json").read_text())
    stamps = {p.name: p.stat().st_mtime_ns for p in workdir.glob("*.npz")}
    stamps["manifest.json"] = (workdir / "manifest.json").stat().st_mtime_ns
    assert extract_latents.run(config, str(workdir)) == first
    assert {p.name: p.stat().st_mtime_ns for p in workdir.glob("*.npz")} | {
        "manifest.json": (workdir / "manifest.json").stat().st_mtime_ns
    } == stamps
    # A later checkpoint of the same VAE run is new provenance: everything is rewritten.
    new_vae = tmp_path / "vae"
    save_tiny_vae(new_vae, prepared.dir, step=5, seed=1)
    manifest = extract_latents.run(extract_config(prepared, new_vae), str(workdir))
    assert manifest["vae_step"] == 5 and manifest["scale"] != first["scale"]
    assert sorted(p.name for p in workdir.glob("*.npz")) == sorted(
        n for names in manifest["shards"].values() for n in names
    )


@chorales_only
def test_encoding_is_the_same_on_every_mesh(vae_workdir):
    phrases = [(9,), (23,), (4,), (152, 281 + 60, 537 + 12), (152 + 13, 24 + 6, 281 + 72, 537 + 3)]
    results = []
    for shape in ((1, 1), (4, 2), (8, 1)):
        mesh = _mesh(shape)
        loaded = vae_loading.load_vae(str(vae_workdir), mesh)
        # batch_size 3 is rounded up to the data axis; the last batch is padded and cut.
        results.append(
            extract_latents.encode_phrases(loaded.model, mesh, phrases, batch_size=3, max_len=32)
        )
    assert results[0].shape == (5, 8)
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=1e-5, atol=1e-6)


@chorales_only
def test_missing_or_wrong_vae_fails_clearly(prepared, vae_workdir, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json not found: vae_workdir"):
        main.run(extract_config(prepared, tmp_path / "none"), str(tmp_path / "out"))
    stage2 = tmp_path / "ae"
    stage2.mkdir()
    (stage2 / "config.json").write_text(config_lib.to_json(load_config("vae_ae", "runlocal")))
    with pytest.raises(ValueError, match="model.mode 'autoencoder'; latents need"):
        main.run(extract_config(prepared, stage2), str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="checkpoints/99: no such VAE checkpoint"):
        vae_loading.load_vae(str(vae_workdir), _mesh((8, 1)), step=99)
    with pytest.raises(FileNotFoundError, match="no VAE checkpoint there"):
        vae_loading.load_vae(str(vae_workdir), _mesh((8, 1)), checkpoint="best")


def _section_vocab(latents_dir):
    manifest = ldm_pipeline.read_manifest(latents_dir)
    return sections.SectionVocab.build(s["sections"] or [] for s in manifest["songs"])


def test_ldm_batches_are_scaled_latents_with_sections(latents_dir, prepared):
    vocab = _section_vocab(latents_dir)
    manifest = ldm_pipeline.read_manifest(latents_dir)
    train = read_shards(latents_dir, "train")
    n_songs = len(train["names"])
    it = ldm_pipeline.make_ldm_loader(
        latents_dir,
        "train",
        2 * n_songs,
        0,
        section_vocab=vocab,
        shuffle=False,
        shard_index=0,
        shard_count=1,
    )
    batch = next(it)
    assert set(batch) == {"latents", "n_bars", "section_types", "section_lengths", "section_mask"}
    assert (
        batch["latents"].shape == (2 * n_songs, prepared.max_slots, 8)
        and batch["latents"].dtype == np.float32
    )
    assert batch["section_types"].shape == (2 * n_songs, 30)
    assert batch["section_types"].dtype == np.int32 and batch["section_mask"].dtype == bool
    # Unshuffled and repeated: songs in shard order, twice; padding is scaled too.
    expected = np.concatenate([train["latents"]] * 2) / np.float32(manifest["scale"])
    np.testing.assert_allclose(batch["latents"], expected, rtol=1e-6)
    np.testing.assert_array_equal(batch["n_bars"], np.concatenate([train["n_bars"]] * 2))
    song = next(s for s in manifest["songs"] if s["split"] == "train")
    types, lengths, mask = vocab.encode(song["sections"] or [], 30, 128)
    np.testing.assert_array_equal(batch["section_types"][0], types)
    np.testing.assert_array_equal(batch["section_lengths"][0], lengths)
    np.testing.assert_array_equal(batch["section_mask"][0], mask)
    assert mask.sum() == len(song["sections"] or []) and (types[mask] >= 2).all()
    without = next(
        ldm_pipeline.make_ldm_loader(latents_dir, "valid", 2, 0, shard_index=0, shard_count=1)
    )
    assert set(without) == {"latents", "n_bars"}  # no vocabulary: no section arrays


@chorales_only
def test_ldm_pipeline_is_deterministic_and_restores(latents_dir):
    def loader(seed):
        return ldm_pipeline.make_ldm_loader(
            latents_dir, "train", 3, seed, shard_index=0, shard_count=1
        )

    def take(it, n):
        return [next(it)["latents"] for _ in range(n)]

    first, again = take(loader(1), 4), take(loader(1), 4)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = take(loader(2), 4)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    it = loader(1)
    take(it, 2)
    state = it.get_state()
    later = take(it, 2)
    resumed = loader(1)
    resumed.set_state(state)
    for a, b in zip(later, take(resumed, 2), strict=True):
        np.testing.assert_array_equal(a, b)


@chorales_only
def test_ldm_pipeline_rejects_bad_input(latents_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="extract the latents first"):
        ldm_pipeline.make_ldm_dataset(tmp_path, "train", batch_size=2, seed=0)
    with pytest.raises(ValueError, match="too few for one global batch"):
        ldm_pipeline.make_ldm_dataset(latents_dir, "valid", batch_size=64, seed=0, num_epochs=1)
    with pytest.raises(ValueError, match="shard_index"):
        ldm_pipeline.make_ldm_dataset(
            latents_dir, "train", batch_size=1, seed=0, shard_index=2, shard_count=2
        )
