"""`make demo-train`: the whole job end to end into ONE output folder, resumable phase by phase.

    python -m phrase_jax.demo --out outputs/demo_train
    python -m phrase_jax.demo --out outputs/demo_train --dataset pop909 \
        --pop909_dir ../shared/data/pop909
    python -m phrase_jax.demo --out /tmp/demo --settings runlocal,songs=12

Eight phases, each a banner `[demo k/8] ...` followed by the stage's own progress lines:
prepare the data → the three PhraseVAE stages (span infill, 4-query autoencoder, VAE) →
extract latents → train a length-conditioned PhraseLDM → generate songs (.mid + .png) →
evaluate (the SPEC 7 metrics table). Sizes and settings are experiments/demo.py's.

Dataset: `--dataset`, else `$DEMO_DATASET` (chorales | pop909), else POP909 when `$POP909_DIR`
names a POP909 folder, else the Bach chorales that ship inside music21 (no download).

Output folder:
    data/<dataset>/        prepared shards + manifest.json
    runs/vae_pretrain/ runs/vae_ae/ runs/vae/ runs/latents/ runs/ldm/ runs/eval/
    songs/song_NNN.mid, songs/song_NNN.png, songs/samples.json
    metrics.md, metrics.json, self_similarity.png
    demo.json              per-phase key, wall and CPU seconds, load average

Re-running resumes: a phase whose settings (and every earlier phase's) are unchanged and whose
output exists is skipped at once; an interrupted training stage resumes from its checkpoints;
prepare reuses its per-song cache; extraction reuses finished latents.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import resource
import shutil
import time
from collections.abc import Callable

import ml_collections
from absl import app, flags

from data_pipelines import datasets, prepare, sources
from phrase_jax import config_lib, logs
from phrase_jax.stages import evaluate, extract_latents, sample, train_ldm, train_vae

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
DEMO_EXPERIMENT = EXPERIMENTS / "demo.py"
DEMO_JSON = "demo.json"
REPORT_FILES = ("metrics.md", "metrics.json", "self_similarity.png")


# config.stage -> the stage's run(config, workdir), called directly (no entry point).
STAGE_RUNS = {
    "train_vae": train_vae.run,
    "extract_latents": extract_latents.run,
    "train_ldm": train_ldm.run,
    "sample": sample.run,
    "evaluate": evaluate.run,
}


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str  # the key in experiments/demo.py and demo.json
    title: str  # the banner text
    experiment: str  # experiments/<experiment>.py ("" for the data phase)
    workdir: str  # relative to the output folder
    done_file: str  # relative to the workdir: present once the phase finished


PHASES = (
    Phase("data", "preparing the data", "", "data", "manifest.json"),
    Phase("vae_pretrain", "training VAE stage 1 (span infill)", "vae_pretrain",
          "runs/vae_pretrain", "checkpoints"),
    Phase("vae_ae", "training VAE stage 2 (4-query autoencoder)", "vae_ae", "runs/vae_ae",
          "checkpoints"),
    Phase("vae", "training VAE stage 3 (VAE)", "vae", "runs/vae", "checkpoints"),
    Phase("extract", "extracting latents", "extract", "runs/latents", "manifest.json"),
    Phase("ldm", "training the PhraseLDM", "ldm", "runs/ldm", "checkpoints"),
    Phase("sample", "generating songs", "sample", "songs", "samples.json"),
    Phase("evaluate", "evaluating", "evaluate", "runs/eval", "metrics.json"),
)  # fmt: skip


def choose_dataset(flag_value: str, environ=os.environ) -> tuple[str, str]:
    """(dataset, why): the flag, else $DEMO_DATASET, else pop909 when $POP909_DIR holds POP909
    (a folder with 001/001.mid), else chorales."""
    choices = ((flag_value, "--dataset"), (environ.get("DEMO_DATASET", ""), "$DEMO_DATASET"))
    for value, source in choices:
        if value:
            if value not in datasets.DATASETS or value == "midi":
                raise ValueError(f"{source}={value!r}: choose chorales or pop909")
            return value, source
    pop909 = environ.get("POP909_DIR", "")
    if pop909 and (pathlib.Path(pop909) / "001" / "001.mid").exists():
        return "pop909", f"$POP909_DIR={pop909}"
    return "chorales", "default (set DEMO_DATASET=pop909 for POP909)"


def load_demo_config(dataset: str, settings: str = "") -> ml_collections.ConfigDict:
    """experiments/demo.py at `dataset` plus `settings` (variants and key=val, comma-joined)."""
    arg = ",".join(part for part in (dataset, settings) if part)
    return config_lib.load_experiment(f"{DEMO_EXPERIMENT}:{arg}")


def _set_values(config: ml_collections.ConfigDict, values: dict, source: str, prefix="") -> None:
    """Writes the nested `values` into `config`; every key must already exist there."""
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in config:
            raise KeyError(f"{source}: {dotted!r} is not a key of that stage's experiment file")
        if isinstance(value, dict):
            _set_values(config[key], value, source, f"{dotted}.")
        else:
            config[key] = tuple(value) if isinstance(value, list) else value


def stage_config(demo: ml_collections.ConfigDict, phase: Phase, paths: dict[str, str]):
    """The full, locked config of a stage phase: its experiment file at the demo's variants,
    then experiments/demo.py's values for it, then the paths of this output folder."""
    variants = demo.stage_variants
    if phase.name in ("ldm", "sample", "evaluate"):
        variants = f"{demo.condition},{variants}"
    config = config_lib.load_experiment(f"{EXPERIMENTS / phase.experiment}.py:{variants}",
                                        lock=False)  # fmt: skip
    _set_values(config, demo[phase.name].to_dict(), f"{DEMO_EXPERIMENT} {phase.name}")
    # Absolute workdirs of earlier phases; the LDM's width follows the prepared data's layout.
    if phase.name.startswith("vae"):
        config.data.dir = paths["data"]
        previous = {"vae_pretrain": "", "vae_ae": "vae_pretrain", "vae": "vae_ae"}[phase.name]
        config.init_from = paths[previous] if previous else ""
    elif phase.name == "extract":
        config.data.dir = paths["data"]
        config.vae_workdir = paths["vae"]
        config.max_slots = demo.max_bars * data_slots_per_bar(paths["data"])
    elif phase.name == "ldm":
        config.latents.dir = paths["extract"]
        config.model.n_slots = demo.max_bars * data_slots_per_bar(paths["data"])
    else:
        config.ldm_workdir = paths["ldm"]
    config.lock()
    return config


def run_stage(config: ml_collections.ConfigDict, workdir: str):
    """What `python -m phrase_jax.main` does for one stage: validate, create the workdir, run."""
    config_lib.validate(config)
    os.makedirs(workdir, exist_ok=True)
    return STAGE_RUNS[config.stage](config, os.path.abspath(workdir))


def data_slots_per_bar(data_dir: str) -> int:
    """Slots per bar of the prepared data (chorales 5, POP909 4): the LDM layout's width."""
    return int(sources.read_manifest(data_dir)["settings"]["slots_per_bar"])


def _key(previous: str, payload) -> str:
    """A phase's identity: its settings chained with every earlier phase's key."""
    text = previous + json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PhaseRecord:
    """demo.json: per phase {key, wall_s, cpu_s, load_avg}; written after every phase."""

    def __init__(self, out: pathlib.Path):
        self.path = out / DEMO_JSON
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.data.setdefault("phases", {})

    def finished(self, name: str, key: str) -> dict | None:
        entry = self.data["phases"].get(name)
        return entry if entry and entry.get("key") == key else None

    def save(self, name: str, entry: dict) -> None:
        self.data["phases"][name] = entry
        self.write()

    def write(self) -> None:
        tmp = self.path.with_name(f"{DEMO_JSON}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (prepare's workers)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _prepare_data(demo, data_dir: str, pop909_dir: str, log) -> None:
    spec = datasets.get_dataset(demo.dataset)
    prepare.prepare(
        demo.dataset,
        data_dir,
        input_dir=pop909_dir or None,
        settings=datasets.DatasetSettings(slots_per_bar=spec.default_slots_per_bar),
        workers=demo.workers,
        limit=demo.songs or None,
        log=log,
    )


def run_demo(demo: ml_collections.ConfigDict, out_dir: str, *, log: Callable = print) -> dict:
    """Runs (or resumes) every phase of `demo` into `out_dir`; returns demo.json's content."""
    out = pathlib.Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    pop909_dir = demo.pop909_dir or os.environ.get("POP909_DIR", "")
    pop909_dir = os.path.abspath(pop909_dir) if demo.dataset == "pop909" and pop909_dir else ""
    paths = {p.name: str(out / p.workdir) for p in PHASES}
    paths["data"] = str(out / "data" / demo.dataset)
    record = PhaseRecord(out)
    record.data.update(dataset=demo.dataset, settings=demo.to_dict())
    # Once a phase runs, every later one runs too: each resumes or reuses its own work, and an
    # earlier phase that ran again may have changed what they read.
    started, key, ran_before = time.monotonic(), "", False
    for number, phase in enumerate(PHASES, start=1):
        banner = f"[demo {number}/{len(PHASES)}] {phase.title}"
        if phase.name == "data":
            config = None
            payload = {k: demo[k] for k in ("dataset", "songs")} | {"input": pop909_dir}
        else:
            config = stage_config(demo, phase, paths)
            payload = config.to_dict()
        key = _key(key, payload)
        done = None if ran_before else record.finished(phase.name, key)
        if done and os.path.exists(os.path.join(paths[phase.name], phase.done_file)):
            log(f"{banner}: done already ({done['wall_s']:.0f} s when it ran), skipping")
            continue
        log(f"{banner} ... ({paths[phase.name]})")
        ran_before = True
        wall, cpu, load = time.monotonic(), _cpu_seconds(), os.getloadavg()[0]
        if config is None:
            _prepare_data(demo, paths["data"], pop909_dir, log)
        else:  # the sample stage itself replaces the songs of an earlier run
            run_stage(config, paths[phase.name])
        if phase.name == "evaluate":
            for name in REPORT_FILES:  # the results next to the songs, at the top level
                if os.path.exists(os.path.join(paths["evaluate"], name)):
                    shutil.copy2(os.path.join(paths["evaluate"], name), out / name)
        entry = {
            "key": key,
            "wall_s": round(time.monotonic() - wall, 2),
            "cpu_s": round(_cpu_seconds() - cpu, 2),
            "load_avg_start": round(load, 2),
            "load_avg_end": round(os.getloadavg()[0], 2),
        }
        record.save(phase.name, entry)
        log(f"{banner}: finished in {entry['wall_s']:.0f} s ({entry['cpu_s']:.0f} s CPU)")
    record.data["last_run_wall_s"] = round(time.monotonic() - started, 2)
    record.write()
    log(summary(out, record.data))
    return record.data


def summary(out: pathlib.Path, data: dict) -> str:
    """Where everything is, and how long each phase took."""
    songs = sorted(p.name for p in (out / "songs").glob("*.mid"))
    phases = data["phases"]
    total = sum(entry["wall_s"] for entry in phases.values())
    lines = [
        f"[demo] done: {len(songs)} songs from {data['dataset']} in {out}",
        f"  songs/            {', '.join(songs[:3])}{' ...' if len(songs) > 3 else ''} "
        "(+ .png piano rolls, samples.json)",
        "  metrics.md        generated vs real songs (metrics.json: the same as data)",
        "  self_similarity.png  bar self-similarity of real and generated songs",
        f"  data/{data['dataset']}/   prepared data;  runs/   every stage's workdir",
        "  demo.json         phase times: "
        + ", ".join(f"{name} {entry['wall_s']:.0f}s" for name, entry in phases.items())
        + f"; total {total:.0f} s",
    ]
    return "\n".join(lines)


_OUT = flags.DEFINE_string(
    "out", "outputs/demo_train", "The output folder (created; re-run resumes)."
)
_DATASET = flags.DEFINE_string(
    "dataset", "", "chorales | pop909; default: $DEMO_DATASET, else pop909 when $POP909_DIR "
    "holds POP909, else chorales.",
)  # fmt: skip
_POP909_DIR = flags.DEFINE_string("pop909_dir", "", "POP909 folder (default: $POP909_DIR).")
_SETTINGS = flags.DEFINE_string(
    "settings", "", "Variants and key=val overrides of experiments/demo.py, comma-joined, e.g. "
    "runlocal or ldm.total_steps=2000.",
)  # fmt: skip
# --verbose (also show the libraries' INFO logs) is main's flag too: defined here unless main,
# imported into the same process (the tests), already did.
if "verbose" not in flags.FLAGS:
    flags.DEFINE_boolean("verbose", False, "Also show the libraries' INFO logs and tracebacks.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        dataset, why = choose_dataset(_DATASET.value)
        demo = load_demo_config(dataset, _SETTINGS.value)
    except (ValueError, KeyError) as error:
        raise app.UsageError(str(error)) from None
    if _POP909_DIR.value:
        demo.pop909_dir = _POP909_DIR.value
    logs.show_project_info(verbose=flags.FLAGS.verbose)
    print(f"[demo] dataset {dataset} ({why}); output folder {os.path.abspath(_OUT.value)}")
    run_demo(demo, _OUT.value, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    app.run(main)
