"""experiments/sample_colab.ipynb runs top to bottom (nbclient, a fresh kernel) on a bundle
exported from a tiny runlocal LDM run: it loads it with `phrase_jax.load_pretrained`, shows a
piano roll and an audio player per song and writes the MIDI files, then edits a song with each
of the four tasks (one call each)."""

import pathlib

import nbformat
from nbclient import NotebookClient
from stage_fixtures import build_tiny_runs, load_config, write_song

from phrase_jax import main

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "experiments" / "sample_colab.ipynb"


def test_notebook_generates_shows_and_plays_songs(tmp_path, monkeypatch):
    runs = build_tiny_runs(tmp_path / "runs", ldm_runs=("cond",))
    model = tmp_path / "bundle"
    main.run(load_config("export", f"runlocal,ldm_workdir={runs['cond']}"), str(model))
    out_dir = tmp_path / "samples"
    # The kernel inherits this environment, the 8 simulated CPU devices of conftest included.
    for key, value in {"MODEL": str(model), "SAMPLES_DIR": str(out_dir),
                       "NUM_SONGS": "2", "BARS": "3", "SAMPLER": "ddpm", "STEPS": "2",
                       "GUIDANCE": "1.5",
                       "EDIT_INPUT": write_song(tmp_path / "input.mid")}.items():  # fmt: skip
        monkeypatch.setenv(f"PHRASE_JAX_{key}", value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "commit the notebook without outputs"
    )
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}})  # fmt: skip
    client.execute()  # raises CellExecutionError with the cell's traceback on any error

    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    data = [out.get("data", {}) for out in outputs]
    assert sum("image/png" in d for d in data) == 2 + 4  # one piano roll per song and edit
    assert sum("<audio" in d.get("text/html", "") for d in data) == 2
    text = "".join(out.get("text", "") for out in outputs)
    assert "sine synthesis" in text or "fluidsynth synthesis" in text
    names = sorted(p.name for p in out_dir.iterdir() if p.is_file())
    assert names == ["song_000.mid", "song_000.png", "song_001.mid", "song_001.png"]
    for task in ("continue", "infill", "accompany", "retrack"):
        assert (out_dir / f"edit_{task}" / "edited.mid").is_file(), task
