"""Tiny stage workdirs for stage tests (sample, evaluate, colab), written directly: untrained
runlocal-size VAE and LDM checkpoints laid out exactly as the training stages write them
(training them would take minutes); and `Prepared`, a prepared data folder with the facts of
its dataset that stage configs need (conftest.py's `prepared` fixture)."""

import dataclasses
import functools
import json
import pathlib

import pretty_midi
import pytest

from data_pipelines import sources
from experiments import demo as demo_experiment
from phrase_jax import config_lib
from phrase_jax.artifacts import latents, run_dir
from phrase_jax.inference import vae_loading
from phrase_jax.music import layout, sections
from phrase_jax.stages import extract_latents, train_ldm, train_vae
from phrase_jax.training import checkpointing, sharding

REPO = pathlib.Path(__file__).resolve().parents[1]
VAE_STEP, LDM_STEP = 3, 2
# "cond": the length bucket and the section string together, so one run covers both paths.
LDM_RUNS = {"uncond": (), "cond": ("length", "sections")}
SECTION_TYPES = [[("A", 8), ("B", 8), ("i", 4), ("o", 4)]]
DATASETS = ("chorales", "pop909")  # chorales ship with music21; POP909 only where downloaded
# As fixture params: the POP909 instances carry the `pop909` mark, like every test needing it.
DATASET_PARAMS = [
    pytest.param(d, marks=pytest.mark.pop909) if d == "pop909" else d for d in DATASETS
]
# The LDM conditions each dataset can train: chorales carry no section labels.
LDM_CONDITIONS = {"chorales": "lencond,bars", "pop909": "seccond,bars"}
# For a test that needs a prepared chain but checks nothing of the data (mesh invariance): it
# runs once, on the chorales' instance of the module's chain, whatever else is present.
chorales_only = pytest.mark.parametrize("prepared", ["chorales"], indirect=True)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A prepared data folder (`dir`) of `dataset` and what stage configs need to know of it."""

    dataset: str
    dir: str

    @functools.cached_property
    def slots_per_bar(self) -> int:  # chorales 5 (four voices + bar), POP909 4
        return int(sources.read_manifest(self.dir)["settings"]["slots_per_bar"])

    @property
    def max_slots(self) -> int:
        """The demo's LDM slot budget for this dataset (chorales 32 bars, POP909 128 bars)."""
        return demo_experiment.DATASET_FACTS[self.dataset]["max_bars"] * self.slots_per_bar

    @property
    def melody_program(self) -> int:  # the memorisation metric's melody track
        return demo_experiment.DATASET_FACTS[self.dataset]["melody_program"]

    @property
    def ldm_conditions(self) -> str:
        return LDM_CONDITIONS[self.dataset]


def load_config(name: str, arg: str = ""):
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))  # experiment files import `experiments.*`
        return config_lib.load_experiment(f"{REPO}/experiments/{name}.py:{arg}")


def save_fresh_state(config, workdir: pathlib.Path, build_state_spec, step: int, json_items):
    run_dir.write_config(config, str(workdir))  # config.json, as the stages write it
    mesh = sharding.make_mesh({"shape": (-1, 1)})
    spec, create, _ = build_state_spec(config, mesh)
    checkpointer = checkpointing.Checkpointer(workdir, async_save=False)
    checkpointer.save(step, sharding.init_state(create, spec.shardings), json_items=json_items)
    checkpointer.close()


def save_tiny_vae(workdir: pathlib.Path, arg: str = "runlocal") -> None:
    """An untrained runlocal VAE run (8-d latents) at VAE_STEP."""
    save_fresh_state(load_config("vae", arg), workdir, train_vae.build_state_spec, VAE_STEP, None)


def save_tiny_ldm(workdir: pathlib.Path, latents_dir: pathlib.Path, model_conditions) -> None:
    """An untrained runlocal LDM run at LDM_STEP on `latents_dir` (its manifest's provenance
    recorded in the checkpoint, as train_ldm does), with `model_conditions`."""
    manifest = json.loads((latents_dir / "manifest.json").read_text())
    provenance = latents.training_data(manifest)
    section_vocab = sections.SectionVocab.build(SECTION_TYPES)
    config = load_config("ldm", f"runlocal,seccond,latents.dir={latents_dir}")
    config.model.conditions = tuple(model_conditions)
    config.model.n_slots = manifest["max_slots"]  # the width the latents were extracted at
    extra = {"latents": provenance, "section_vocab": section_vocab.types}
    json_items = {"config": config.to_dict(), "extra": extra}
    save_fresh_state(config, workdir, train_ldm.build_state_spec, LDM_STEP, json_items)
    section_vocab.save(workdir / train_ldm.SECTION_VOCAB)


def build_tiny_runs(root: pathlib.Path, ldm_runs=tuple(LDM_RUNS)) -> dict[str, str]:
    """Untrained runlocal VAE (8-d latents), a latents manifest with its special latents, and
    runlocal LDM workdirs (`ldm_runs`, names of LDM_RUNS), laid out exactly as the training
    stages write them. Returns {"vae", "latents", *ldm_runs} -> absolute paths."""
    paths = {"vae": root / "vae", "latents": root / "latents"}
    save_tiny_vae(paths["vae"])
    vae_config = load_config("vae", "runlocal")
    mesh = sharding.make_mesh({"shape": (-1, 1)})
    loaded = vae_loading.load_vae(str(paths["vae"]), mesh)
    special_phrases = [
        tuple(layout.INST_PHRASE),
        tuple(layout.BAR_PHRASE),
        tuple(layout.SEP_PHRASE),
    ]
    special = extract_latents.encode_phrases(
        loaded.model, mesh, special_phrases, batch_size=8, max_len=vae_config.data.max_len
    )
    manifest = {
        "vae_workdir": str(paths["vae"]), "vae_step": VAE_STEP,
        "vae_config_hash": loaded.config_hash, "vae_checkpoint": loaded.checkpoint.to_json(),
        "slots_per_bar": 4, "max_slots": 512, "latent_dim": 8, "scale": 0.5, "clip": 3.0,
        "special_latents": dict(zip(("inst", "bar", "sep"), special.tolist(), strict=True)),
        "songs": [], "shards": {}, "splits": {},
    }  # fmt: skip
    paths["latents"].mkdir()
    (paths["latents"] / "manifest.json").write_text(json.dumps(manifest))
    for name in ldm_runs:
        paths[name] = root / f"ldm_{name}"
        save_tiny_ldm(paths[name], paths["latents"], LDM_RUNS[name])
    return {k: str(v.resolve()) for k, v in paths.items()}


# The edit tests' input (tests/test_edit.py, tests/test_colab.py).
N_BARS = 12
TEMPO = 100.0
# D major (a key shift of -2 to C major): melody, piano chords, bass; every note on the 16th grid.
MELODY, PIANO, BASS = 73, 0, 33


def write_song(path: pathlib.Path, bars: int = N_BARS) -> str:
    """A 12-bar song in D major at 100 bpm for the edit tests: melody (73, "Melody"), piano
    chords (0, "Piano"), bass (33, "Bass"); every note on the 16th grid."""
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=TEMPO)
    beat = 60.0 / TEMPO
    scale = [62, 64, 66, 67, 69, 71, 73, 74]
    tracks = {
        "Melody": pretty_midi.Instrument(MELODY, name="Melody"),
        "Piano": pretty_midi.Instrument(PIANO, name="Piano"),
        "Bass": pretty_midi.Instrument(BASS, name="Bass"),
    }
    for bar in range(bars):
        start = 4 * bar * beat
        for q in range(4):
            pitch = scale[(bar + q) % len(scale)]
            tracks["Melody"].notes.append(
                pretty_midi.Note(90, pitch, start + q * beat, start + (q + 0.5) * beat)
            )
        for half in range(2):
            for pitch in (50, 54, 57) if bar % 2 == 0 else (55, 59, 62):
                tracks["Piano"].notes.append(
                    pretty_midi.Note(
                        70, pitch, start + 2 * half * beat, start + (2 * half + 2) * beat
                    )
                )
        tracks["Bass"].notes.append(pretty_midi.Note(80, 38, start, start + 4 * beat))
    pm.instruments = list(tracks.values())
    pm.write(str(path))
    return str(path)
