"""A bundle's MODEL_CARD.md: what trained it (data, each run's steps and wall time, the VAE's
validation metrics) and how its songs compare with real ones, gathered from the run folders and
evaluation folders, never typed in by hand.

    python -m phrase_jax.artifacts.model_card models/pop909-cpu \
        --eval runs/eval_pop909-cpu --midi_eval outputs/demo/eval

The runs are found from the bundle's provenance: the LDM workdir, and the VAE workdir followed
back through each run's `init_from` (VAE stage 3 -> 2 -> 1). A run's wall time is the time
from its config.json to its last metrics row (a resumed run's pause is counted too; the card
says so).
"""

from __future__ import annotations

import argparse
import json
import os

from phrase_jax.artifacts import bundle, run_dir

CARD = "MODEL_CARD.md"
VAE_METRICS = ("f1_op", "f1_opd", "f1_iopd", "exact_match", "loss")


def _rows(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_facts(workdir: str) -> dict:
    """Stage, steps, wall seconds, model sizes and the last validation row of one run."""
    with open(os.path.join(workdir, run_dir.CONFIG_JSON)) as f:
        config = json.load(f)
    rows = _rows(workdir)
    started = os.path.getmtime(os.path.join(workdir, run_dir.CONFIG_JSON))
    ended = os.path.getmtime(os.path.join(workdir, "metrics.jsonl")) if rows else started
    valid = [r for r in rows if r.get("split") == "valid"]
    return {
        "workdir": workdir,
        "stage": config.get("stage", ""),
        "mode": config.get("model", {}).get("mode", ""),
        "steps": max((int(r["step"]) for r in rows), default=0),
        "batch_size": config.get("batch_size"),
        "wall_s": round(ended - started),
        "init_from": config.get("init_from", ""),
        "model": config.get("model", {}),
        "valid": valid[-1] if valid else {},
        "curve": [{k: r[k] for k in ("step", *VAE_METRICS) if k in r} for r in valid],
    }


def vae_chain(vae_workdir: str) -> list[dict]:
    """The VAE runs from stage 1 to the bundle's, following init_from."""
    chain, workdir = [], vae_workdir
    while workdir and os.path.isfile(os.path.join(workdir, run_dir.CONFIG_JSON)):
        chain.append(run_facts(workdir))
        workdir = chain[-1]["init_from"]
    return chain[::-1]


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]


def render(meta: dict, vae_runs: list[dict], ldm: dict, evals: list[tuple[str, str]]) -> str:
    prov = meta["provenance"]
    ldm_config = meta["ldm"]["config"]
    lines = [
        f"# Model card: {os.path.basename(prov.get('bundle_dir', '')) or 'bundle'}",
        "",
        f"- Data: `{prov.get('data', '')}` (the prepared dataset's train split; valid for the "
        "metrics).",
        f"- LDM: conditions {ldm_config['conditions']}, width {ldm_config['width']}, "
        f"{ldm_config['num_layers']} layers, {meta['latents']['max_slots']} slots "
        f"({meta['latents']['slots_per_bar']} a bar); diffusion {meta['diffusion']}.",
        f"- VAE: width {meta['vae']['config']['d_model']}, "
        f"latent {meta['vae']['config']['latent_dim']}-d, "
        f"phrases up to {meta['decoding']['max_len']} tokens.",
        f"- Weights: LDM step {prov.get('ldm_step')} "
        f"({'EMA' if meta['ldm']['ema_weights'] else 'raw'}), VAE step {prov.get('vae_step')} "
        f"({prov.get('vae_checkpoint', '')} checkpoint); a run "
        "below may have trained past the step it handed on (each stage starts from the previous "
        "stage's best checkpoint).",
        f"- Created {prov.get('created', '')}.",
        "",
        "## Training runs (this machine: 2 CPU cores, shared with other work while they ran)",
        "",
    ]
    runs = [*vae_runs, ldm]
    lines += _table(
        ["run", "stage", "steps", "batch", "wall s"],
        [[os.path.basename(r["workdir"]), r["mode"] or r["stage"], r["steps"], r["batch_size"],
          r["wall_s"]] for r in runs],
    )  # fmt: skip
    total = sum(r["wall_s"] for r in runs)
    lines += ["", f"Total wall time {total} s ({total / 3600:.2f} h), from each run's config.json "
              "to its last metrics row.", "", "## VAE validation (greedy decode of valid phrases)",
              ""]  # fmt: skip
    curve_rows = [
        [os.path.basename(r["workdir"]), c["step"], *(c.get(k, "") for k in VAE_METRICS)]
        for r in vae_runs
        for c in r["curve"]
    ]
    lines += _table(["run", "step", *VAE_METRICS], curve_rows)
    if ldm["valid"]:
        lines += ["", f"LDM valid loss at step {ldm['valid']['step']}: "
                  f"{ldm['valid'].get('loss', float('nan')):.4f}"]  # fmt: skip
    for title, path in evals:
        with open(path) as f:
            lines += ["", f"## {title}", "", f"From `{os.path.dirname(path)}`:", "", f.read()]
    return "\n".join(lines) + "\n"


def write_card(bundle_dir: str, eval_markdowns: list[tuple[str, str]]) -> str:
    meta = bundle.read_meta(bundle_dir)
    meta["provenance"]["bundle_dir"] = os.path.abspath(bundle_dir)
    prov = meta["provenance"]
    text = render(meta, vae_chain(prov["vae_workdir"]), run_facts(prov["ldm_workdir"]),
                  eval_markdowns)  # fmt: skip
    path = os.path.join(bundle_dir, CARD)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # atomic: a card is never half written
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--eval", default="", help="an evaluate stage folder (its metrics.md)")
    parser.add_argument("--midi_eval", default="", help="an evaluate_midi folder")
    args = parser.parse_args()
    evals = []
    if args.eval:
        evals.append(("Evaluation (make eval)", os.path.join(args.eval, "metrics.md")))
    if args.midi_eval:
        evals.append(("Model-independent evaluation of the demo's songs",
                      os.path.join(args.midi_eval, "midi_metrics.md")))  # fmt: skip
    for _, path in evals:
        if not os.path.isfile(path):
            raise SystemExit(f"{path} is missing: run the evaluation first")
    print(write_card(args.bundle, evals))


if __name__ == "__main__":
    main()
