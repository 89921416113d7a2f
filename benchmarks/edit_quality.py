"""Issue 14's quality measurements on held-out POP909 songs: seams of refilled bars and of a
continuation against the same boundaries in the real songs, with and without RePaint
resampling, and how well a written accompaniment fits the kept melody.

    python -m benchmarks.edit_quality --ldm_workdir runs/ldm_lencond_cpu \
        --data_dir /work/data/pop909 --pop909_dir /work/shared/data/pop909 [--songs 12]

Seams: for each boundary between a kept and a written bar (refill bars 17-24: 16|17 and 24|25;
continue 32 bars to 48: 32|33), three distances between the bar on the left and the bar on
the right: the total variation between their pitch-class histograms (duration-weighted, drums
left out; 0 same distribution, 1 disjoint), |mean pitch difference| in semitones, and |log of
the note-count ratio|; "real" is the same boundary of the original song. Accompany: per bar
with melody and accompaniment, the histogram intersection of the melody's and the
accompaniment's pitch-class distributions (1 = same pitch classes in the same proportions);
"real" is POP909's own PIANO + BRIDGE against its MELODY. These boundary distances are this
script's own: the model-independent evaluation (evaluation/midi_descriptors.py) compares the
distributions of whole sets of bars and songs, not one bar with its neighbour.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags

from data_pipelines import datasets
from phrase_jax.diffusion import samplers
from phrase_jax.generation import edit_input, edit_sampling, editing
from phrase_jax.inference import ldm_loading
from phrase_jax.music import vocab
from phrase_jax.training import sharding

_LDM = flags.DEFINE_string("ldm_workdir", "runs/ldm_lencond_cpu", "The LDM run to edit with.")
_MODEL = flags.DEFINE_string("model", "", "A bundle instead of the LDM run.")
_DATA = flags.DEFINE_string("data_dir", "/work/data/pop909", "Prepared POP909 (the splits).")
_POP909 = flags.DEFINE_string("pop909_dir", "/work/shared/data/pop909", "POP909 root.")
_SONGS = flags.DEFINE_integer("songs", 12, "Held-out songs (valid + test, >= 48 bars).")
_SAMPLER = flags.DEFINE_string("sampler", "dpm_solver_pp_sde:20", "sampler:steps")
_RESAMPLE = flags.DEFINE_string("resample", "2:2:2", "jump:repeats:every for the resampled rows")
_OUT = flags.DEFINE_string("out", "", "Write the per-song numbers here as JSON.")
_REAL_ONLY = flags.DEFINE_bool("real_only", False, "Only the real songs' numbers (no model).")
MELODY = datasets.POP909_PROGRAMS["MELODY"]
TRACK_CHOICE = "keep_drums"


def pitch_classes(bar, programs=None) -> np.ndarray:
    """[12] duration-weighted pitch-class distribution of `bar`, drums left out (0 if silent)."""
    hist = np.zeros(12)
    for program, notes in bar.tracks.items():
        if program == vocab.DRUM_PROGRAM or (programs is not None and program not in programs):
            continue
        for note in notes:
            hist[note.pitch % 12] += note.duration
    return hist / hist.sum() if hist.sum() else hist


def bar_stats(bar) -> tuple[np.ndarray, float, int]:
    pitches = [n.pitch for p, ns in bar.tracks.items() if p != vocab.DRUM_PROGRAM for n in ns]
    return pitch_classes(bar), float(np.mean(pitches)) if pitches else np.nan, len(pitches)


def seam(left, right) -> tuple[float, float, float]:
    """(pitch-class total variation, |mean pitch difference|, |log note-count ratio|)."""
    (h1, m1, n1), (h2, m2, n2) = bar_stats(left), bar_stats(right)
    tv = 0.5 * float(np.abs(h1 - h2).sum()) if h1.sum() and h2.sum() else 1.0
    return tv, abs(m1 - m2), abs(float(np.log((n1 + 1) / (n2 + 1))))


def melody_fit(song) -> list[float]:
    """Per bar with a melody and an accompaniment: histogram intersection of their pitch classes."""
    fits = []
    for bar in song.bars:
        melody = pitch_classes(bar, {MELODY})
        others = {p for p in bar.tracks if p not in (MELODY, vocab.DRUM_PROGRAM)}
        accompaniment = pitch_classes(bar, others)
        if melody.sum() and accompaniment.sum():
            fits.append(float(np.minimum(melody, accompaniment).sum()))
    return fits


def held_out_songs(count: int) -> list[str]:
    manifest = json.load(open(os.path.join(_DATA.value, "manifest.json")))
    names = sorted(manifest["ldm_splits"]["valid"] + manifest["ldm_splits"]["test"])
    return names[:count]


def main(argv):
    del argv
    name, steps = _SAMPLER.value.split(":")
    jump, repeats, every = (int(x) for x in _RESAMPLE.value.split(":"))
    variants = {
        "off": samplers.Resampling(),
        _RESAMPLE.value: samplers.Resampling(jump=jump, repeats=repeats, every=every),
    }
    if _REAL_ONLY.value:
        variants = {}
    else:
        mesh = sharding.make_mesh({"shape": (-1, 1)})
        if _MODEL.value:
            pipeline = ldm_loading.load_bundle_pipeline(_MODEL.value, mesh)
        else:
            pipeline = ldm_loading.load_pipeline(_LDM.value, mesh)
        spb = int(pipeline.manifest["slots_per_bar"])
        model_bars = pipeline.ldm.model.config.n_slots // spb
    tasks = {
        "refill 17-24": (editing.EditRequest(task="infill", bars="17-24"), [(15, 16), (23, 24)]),
        "continue 32 -> 48": (
            editing.EditRequest(task="continue", keep_bars=32, total_bars=48),
            [(31, 32)],
        ),
    }
    seams = {("real", t): [] for t in tasks} | {(v, t): [] for v in variants for t in tasks}
    fits = {"real": [], **{v: [] for v in variants}}
    settings = datasets.DatasetSettings()
    started, used = time.time(), 0
    for song_name in held_out_songs(4 * _SONGS.value):
        path = os.path.join(_POP909.value, song_name, f"{song_name}.mid")
        song = edit_input.read_input(path, settings)
        if song.n_bars < 48 or used == _SONGS.value:
            continue
        used += 1
        fits["real"] += melody_fit(song.original)
        for task, (_, boundaries) in tasks.items():
            for left, right in boundaries:
                seams[("real", task)].append(
                    seam(song.original.bars[left], song.original.bars[right])
                )
        for variant, resampling in variants.items():
            edit = edit_sampling.EditSettings(
                sampler=name, steps=int(steps), seed=used, resampling=resampling
            )
            for task, (request, boundaries) in tasks.items():
                plan = editing.plan_edit(
                    request, song, slots_per_bar=spb, model_bars=model_bars,
                    track_choice=TRACK_CHOICE, sections=song.original.sections
                    if request.task != "continue" else None,
                )  # fmt: skip
                result = edit_sampling.edit_song(
                    pipeline, song, plan, edit, track_choice=TRACK_CHOICE
                )
                for left, right in boundaries:
                    seams[(variant, task)].append(
                        seam(result.song.bars[left], result.song.bars[right])
                    )
            plan = editing.plan_edit(
                editing.EditRequest(task="accompany", tracks="MELODY"), song,
                slots_per_bar=spb, model_bars=model_bars, track_choice=TRACK_CHOICE,
                sections=song.original.sections,
            )  # fmt: skip
            result = edit_sampling.edit_song(pipeline, song, plan, edit, track_choice=TRACK_CHOICE)
            fits[variant] += melody_fit(result.song)
        print(
            f"song {song_name}: {used}/{_SONGS.value} ({time.time() - started:.0f} s)", flush=True
        )

    print(f"\n{used} held-out songs, {name}-{steps}, resampling jump:repeats:every")
    print(
        "| task | bars | resampling | seams | PC total variation | |Δ mean pitch| "
        "| |log note ratio| |"
    )
    print("|---|---|---|---|---|---|---|")
    for (variant, task), rows in seams.items():
        values = np.asarray(rows, float)
        means = np.nanmean(values, axis=0)
        kind = "real" if variant == "real" else "edited"
        print(
            f"| {task} | {kind} | {'-' if variant == 'real' else variant} | {len(rows)} "
            f"| {means[0]:.3f} | {means[1]:.2f} | {means[2]:.3f} |"
        )
    print("\n| accompany MELODY | bars | per-bar PC overlap melody vs accompaniment (mean) |")
    print("|---|---|---|")
    for variant, values in fits.items():
        label = "real POP909" if variant == "real" else f"written, resampling {variant}"
        print(f"| {label} | {len(values)} | {np.mean(values) if values else float('nan'):.3f} |")
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump({"seams": {f"{v}|{t}": r for (v, t), r in seams.items()}, "fits": fits}, f)


if __name__ == "__main__":
    app.run(main)
