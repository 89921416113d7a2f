"""What the evaluation stage writes besides metrics.json: metrics.md and self_similarity.png.

metrics.md holds two tables with the same rows: the Table 5 metrics (PhraseFID and its n-gram
variants, SRS, MR, length accuracy, diversity) and the mean note statistics; then the
model-independent table (`descriptor_rows`): each set's MIDI descriptors against the held-out
real songs' statistics, with the real-vs-real ceiling and any other MIDI folders. The rows are the
stage's measured sets followed by the numbers Ou & Wang (2025) report in their Table 5, labelled
as such; those were measured in their 64-d VAE space with their reference set, so only the
measured rows of one table are comparable with each other. The plot draws each set's first
songs' bar self-similarity (the matrix SRS binarises) on a bare Agg `Figure`, never through
pyplot, so a notebook's matplotlib backend is untouched.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from phrase_jax.evaluation import descriptor_comparison, note_stats, structure

MARKDOWN = "metrics.md"
PLOT = "self_similarity.png"
REPORTED_SOURCE = "reported by Ou & Wang (2025), Table 5"
# Ou & Wang 2025, Table 5 (20 songs per model; MR and length accuracy as fractions).
REPORTED_TABLE5 = (
    ("real songs", {"phrase_fid": 4.24, "srs": 0.444, "memorisation_rate": 0.05}),
    ("unconditional", {"phrase_fid": 3.89, "srs": 0.161, "memorisation_rate": 0.0,
                       "length_bucket_accuracy": 0.15}),
    ("length-conditioned", {"phrase_fid": 3.81, "srs": 0.165, "memorisation_rate": 0.0,
                            "length_bucket_accuracy": 0.95}),
)  # fmt: skip
# (metrics key, column title, format): "pct" prints a fraction as a percentage.
MAIN_COLUMNS = (
    ("songs", "songs", "d"),
    ("mean_n_bars", "bars", ".1f"),
    ("phrase_fid", "PhraseFID", ".3f"),
    ("fid_2gram", "FID-2", ".3f"),
    ("fid_4gram", "FID-4", ".3f"),
    ("fid_8gram", "FID-8", ".3f"),
    ("srs", "SRS", ".3f"),
    ("memorisation_rate", "MR", "pct"),
    ("length_bucket_accuracy", "len acc (bucket)", "pct"),
    ("length_exact_accuracy", "len acc (exact)", "pct"),
    ("song_diversity", "song diversity", ".3f"),
    ("phrase_spread", "phrase spread", ".3f"),
)
NOTE_COLUMNS = tuple((name, name.replace("_", " "), ".3f") for name in note_stats.STATISTICS)
MIDI_COLUMNS = (
    ("songs", "songs", "d"),
    ("bars", "bars", "d"),
    ("mean_overlap", "mean overlap", ".3f"),
    ("descriptor_fd", "descriptor FD", ".3f"),
) + tuple(
    (f"overlap_{name}", name.replace("_", " "), ".2f") for name in descriptor_comparison.FEATURES
)


def json_ready(value):
    """NaN/inf -> None (strict JSON), numpy scalars -> Python numbers, recursively."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def reported_rows() -> list[dict]:
    """Table 5 of the reference as rows shaped like the measured ones (kind "reported")."""
    return [
        {"name": f"{REPORTED_SOURCE}: {name}", "kind": "reported", "metrics": dict(metrics)}
        for name, metrics in REPORTED_TABLE5
    ]


def format_value(value, spec: str) -> str:
    """One table cell: "—" for a missing or undefined (None/NaN) value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if spec == "pct":
        return f"{100 * value:.0f}%"
    if spec == "d":
        return str(int(value))
    return format(value, spec)


def markdown_table(rows: Sequence[dict], columns) -> str:
    """A markdown table: one line per row dict ({"name", "metrics"}), one column per entry."""
    lines = [
        "| row | " + " | ".join(title for _, title, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = [format_value(row["metrics"].get(key), spec) for key, _, spec in columns]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _row_notes(rows: Sequence[dict]) -> list[str]:
    notes = []
    for row in rows:
        info = row.get("info", {})
        if row["kind"] in ("generated", "comparison"):
            told = "told" if info.get("told_length") else "not told (unconditional)"
            notes.append(
                f"- **{row['name']}**: conditions {list(info.get('conditions', []))}, target "
                f"{info.get('bars')} bars ({told}), end rule {info.get('end')}, x0 clip "
                f"{format_value(info.get('clip'), '.3g')}, decoded slots disagreeing with their "
                f"position {100 * info.get('disagreement_rate', 0.0):.1f}%."
            )
    return notes


def midi_section(midi_rows: Sequence[dict], source: dict) -> list[str]:
    """The model-independent table and what it compares with, as markdown lines."""
    splits = "+".join(source.get("splits", [])) or "?"
    return [
        "## Model-independent evaluation (MIDI descriptors)",
        "",
        f"Against {source.get('songs')} held-out real songs ({splits}, {source.get('bars')} bars) "
        f"of `{source.get('data_dir', '')}`. Overlap: the shared area of a feature's histogram "
        "with the real songs' (1 = the same distribution; per bar over all bars, per song over "
        "songs), mean overlap their mean; descriptor FD: the Fréchet distance of the per-song "
        "descriptors, standardised by the real songs (0 = the same Gaussian). The ceiling row "
        "is other real songs at the size of a table row.",
        "",
        markdown_table(midi_rows, MIDI_COLUMNS),
    ]


def write_markdown(result: dict, out_dir: str) -> str:
    """metrics.md from the stage's result dict; returns its path."""
    rows = list(result["rows"]) + list(result["reported"])
    reference = result["reference"]
    settings = result["settings"]
    text = [
        "# Generation metrics (SPEC 7)",
        "",
        f"Reference set: all slots of {reference['songs']} training songs "
        f"({reference['slots']} phrase latents, SRS {format_value(reference['srs'], '.3f')}) from "
        f"`{settings['latents_dir']}`; MR against {reference['training_melodies']} training "
        f"melodies (program {settings['melody_program']}). VAE `{settings['vae_workdir']}` "
        f"step {settings['vae_step']}. Length accuracy: share of songs in the target's 10-bar "
        "bucket / of exactly the target length (generated rows).",
        "",
        markdown_table(rows, MAIN_COLUMNS),
        "Rows marked *" + REPORTED_SOURCE + "* are the reference's numbers, measured with "
        "their VAE and reference set; they are shown for comparison, not measured here.",
        "",
        *_row_notes(result["rows"]),
        "",
        "## Note statistics (means over songs)",
        "",
        markdown_table(result["rows"], NOTE_COLUMNS),
        *midi_section(result.get("midi_rows", []), result.get("real_statistics", {})),
    ]
    path = os.path.join(out_dir, MARKDOWN)
    with open(path, "w") as f:
        f.write("\n".join(text))
    return path


def write_self_similarity_plot(sets, out_dir: str, settings, songs_per_set: int) -> str:
    """self_similarity.png: one row of panels per set (`SongSet`s), its first `songs_per_set`
    songs with at least one bar; each panel the [B, B] cosine similarity of bar latents (SRS
    binarises it at the threshold). Returns the file name."""
    spb = settings.slots_per_bar
    columns = max(1, songs_per_set)
    figure = Figure(figsize=(3.2 * columns, 3.2 * len(sets)), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(sets), columns, squeeze=False)
    image = None
    for axes_row, song_set in zip(grid, sets, strict=True):
        shown = [(i, x) for i, x in enumerate(song_set.latents) if len(x)][:columns]
        for column, axes in enumerate(axes_row):
            if column >= len(shown):
                axes.set_axis_off()
                continue
            index, latents = shown[column]
            similarity = structure.bar_similarity(latents, spb)
            bars = similarity.shape[0]
            image = axes.imshow(
                similarity, vmin=-1.0, vmax=1.0, cmap="magma", extent=(0, bars, bars, 0)
            )
            srs = structure.section_recurrence_score(
                latents, spb, settings.srs_threshold, settings.srs_min_run
            )
            name = song_set.songs[index].name or f"song {index}"
            axes.set_title(f"{song_set.kind}: {name}\n{bars} bars, SRS {srs:.2f}",
                           fontsize=8)  # fmt: skip
            axes.set_xlabel("bar", fontsize=7)
            axes.tick_params(labelsize=6)
    if image is not None:
        figure.colorbar(image, ax=grid, shrink=0.6, label="cosine similarity of bar latents")
    figure.savefig(os.path.join(out_dir, PLOT), dpi=100)
    return PLOT
