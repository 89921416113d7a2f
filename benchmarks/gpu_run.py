"""`make gpu-run`: the paper-size models trained on POP909 within a fixed time on one GPU, then
sampled and evaluated, with paper-size step timings, all into ONE folder of at most 60 MB.

    python -m benchmarks.gpu_run --out outputs/gpu_run [--settings key=val,...]
    python -m benchmarks.gpu_run --out /tmp/gpu_run --settings chorales,runlocal,data_dir=D

Settings: experiments/gpu_run.py. Phases, each a banner `[gpu-run k/10] ...`:
data (reused when prepared) → timings (benchmarks/gpu_timings.py: bf16/fp32 train steps,
attention implementations) → the three VAE stages → latents → the `lencond` LDM → songs →
evaluation → a bundle (when it fits). The stage phases are phrase_jax/demo.py's (same stage
configs, same paths); this module adds the time plan: a training phase gets a wall-clock
limit (`time_limit_s`: the trainer stops and checkpoints when it is up) and a schedule length
calibrated on the timed step, so the later phases always run. A phase that fails is recorded
and the phases that need it are skipped; the summary is always written.

Output folder (must be new or empty):
    gpu_run.json     device, per-phase wall time / budget / limit / steps, timings, metrics,
                     output size (the one file to read; docs/results.md's "GPU run" table)
    gpu_run.md       the same as tables for docs/results.md
    gpu_run.log      everything printed
    timings.jsonl    the timing rows (benchmarks' JSON-lines format)
    songs/ metrics.md metrics.json self_similarity.png   as in the demo
    runs/<phase>/    each stage's config.json, metrics.jsonl (weights deleted unless kept)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging as std_logging
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable

import jax
import ml_collections
from absl import app, flags

from benchmarks import common, gpu_timings
from benchmarks import gpu_run_record as run_record
from benchmarks import gpu_time_plan as time_plan
from data_pipelines import datasets, prepare
from phrase_jax import config_lib, demo, errors, logs
from phrase_jax.models import dit, vae
from phrase_jax.stages import export

REPO = pathlib.Path(__file__).resolve().parents[1]
SETTINGS_FILE = REPO / "experiments" / "gpu_run.py"
SUMMARY_JSON = "gpu_run.json"
LOG_FILE = "gpu_run.log"
REPORT_MD = "gpu_run.md"  # gpu_run.json as docs/results.md's tables
TIMINGS_JSONL = "timings.jsonl"
PHASES = ("data", "timings", *(p.name for p in demo.PHASES[1:]), "export")
TITLES = {p.name: p.title for p in demo.PHASES} | {
    "timings": "timing train steps (bf16, fp32) and attention",
    "export": "exporting a bundle",
}
TRAINING = run_record.TRAINING
# What each phase reads: it runs only when these finished in this run.
NEEDS = {
    "timings": ("data",),
    "vae_pretrain": ("data",),
    "vae_ae": ("vae_pretrain",),
    "vae": ("vae_ae",),
    "extract": ("vae",),
    "ldm": ("extract",),
    "sample": ("ldm",),
    "evaluate": ("ldm",),
    "export": ("ldm",),
}


def load_settings(settings: str = "") -> ml_collections.ConfigDict:
    """experiments/gpu_run.py at `settings` (variants and key=val, comma-joined), unlocked."""
    return config_lib.load_experiment(f"{SETTINGS_FILE}:{settings}", lock=False)


@contextlib.contextmanager
def compilation_cache(directory: str):
    """JAX's persistent compilation cache in `directory` for the run (the evaluation compiles
    the programs that sampling already compiled); the previous settings come back after."""
    from jax.experimental.compilation_cache import compilation_cache as cache

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    previous = {key: getattr(jax.config, key) for key in keys}
    for key, value in zip(keys, (directory, 1.0), strict=True):
        jax.config.update(key, value)
    cache.reset_cache()
    try:
        yield
    finally:
        for key, value in previous.items():
            jax.config.update(key, value)
        cache.reset_cache()


@contextlib.contextmanager
def log_file(path: pathlib.Path):
    """Also writes the project's log lines (the stages' progress, warnings) to `path`."""
    handler = std_logging.FileHandler(path)
    handler.addFilter(logs.ProjectInfoOnly())
    handler.setFormatter(std_logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = std_logging.getLogger("absl")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


class GpuRun:
    """One run of every phase into `out` (see the module docstring)."""

    def __init__(self, settings: ml_collections.ConfigDict, out: pathlib.Path, log: Callable):
        self.settings, self.out, self.log = settings, out, log
        shares = {phase: settings.budget_s[phase] for phase in PHASES}  # in run order
        self.budget = time_plan.Budget(settings.total_budget_s, shares)
        self.paths = {p.name: str(out / p.workdir) for p in demo.PHASES}
        data_dir = settings.data_dir or str(out / "data" / settings.dataset)
        self.paths["data"] = os.path.abspath(data_dir)
        self.phase_objects = {p.name: p for p in demo.PHASES}
        self.calibration: dict[str, common.Timing] = {}
        self.stage_configs: dict[str, ml_collections.ConfigDict] = {}
        device = jax.devices()[0]
        self.record = {
            "device": {
                "platform": device.platform,
                "kind": device.device_kind,
                "count": jax.device_count(),
                "jax": jax.__version__,
            },
            "settings": settings.to_dict(),
            "total_budget_s": settings.total_budget_s,
            "phases": {},
        }

    def write(self) -> None:
        """gpu_run.json, atomically; written after every phase, so a killed run leaves one."""
        path = self.out / SUMMARY_JSON
        tmp = path.with_name(f"{SUMMARY_JSON}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.record, indent=1, default=str))
        os.replace(tmp, path)

    def stage_config(self, phase: str, **values) -> ml_collections.ConfigDict:
        """The stage config of `phase` (phrase_jax.demo's rules), with `values` (dotted keys of
        the stage's experiment) set on top of the settings."""
        staged = ml_collections.ConfigDict(self.settings.to_dict())
        for dotted, value in values.items():
            group = staged[phase]
            *parents, key = dotted.split(".")
            for parent in parents:
                if parent not in group:
                    group[parent] = ml_collections.ConfigDict()
                group = group[parent]
            group[key] = value
        return demo.stage_config(staged, self.phase_objects[phase], self.paths)

    # The phases; each returns what gpu_run.json records for it.

    def data(self) -> dict:
        data_dir = self.paths["data"]
        reused = os.path.exists(os.path.join(data_dir, "manifest.json"))
        if not reused:
            pop909_dir = self.settings.pop909_dir or os.environ.get("POP909_DIR", "")
            if self.settings.dataset == "pop909" and not pop909_dir:
                raise errors.UserError(
                    f"{data_dir} holds no prepared data and no POP909 folder was given: run "
                    "`make data`, or set POP909_DIR (or the setting pop909_dir)"
                )
            spec = datasets.get_dataset(self.settings.dataset)
            prepare.prepare(
                self.settings.dataset,
                data_dir,
                input_dir=os.path.abspath(pop909_dir) if pop909_dir else None,
                settings=datasets.DatasetSettings(slots_per_bar=spec.default_slots_per_bar),
                workers=self.settings.workers,
                limit=self.settings.songs or None,
                log=self.log,
            )
        manifest = json.loads(pathlib.Path(data_dir, "manifest.json").read_text())
        return {
            "dir": data_dir,
            "reused": reused,
            "slots_per_bar": manifest["settings"]["slots_per_bar"],
            "songs_by_split": {k: len(v) for k, v in manifest.get("splits", {}).items()},
        }

    def timings(self) -> dict:
        vae_config = self.stage_config("vae_ae")
        ldm_config = self.stage_config("ldm")
        seconds = self.budget.limit("timings", stretch=1.0, floor=self.settings.min_time_limit_s)
        self.timed_vae_length = int(vae_config.data.max_len)
        result = gpu_timings.run_timings(
            vae.VAEConfig.from_mapping(vae_config.model),
            vae_batch=int(vae_config.batch_size),
            vae_length=self.timed_vae_length,
            ldm_config=dit.PhraseLDMConfig.from_mapping(ldm_config.model),
            ldm_batch=int(ldm_config.batch_size),
            runs=int(self.settings.timings.runs),
            fp32=bool(self.settings.timings.fp32),
            attention_impls=bool(self.settings.timings.attention),
            seconds=seconds,
            log=self.log,
        )
        common.write_json_lines(str(self.out / TIMINGS_JSONL), result["records"])
        self.calibration = result["calibration"]
        rows = {
            r["benchmark"]: {k: v for k, v in r.items() if k not in run_record.TIMING_CONTEXT}
            for r in result["records"]
        }
        return {
            "seconds_allowed": round(seconds, 1),
            "rows": rows,
            "skipped": result["skipped"],
            "failed": result["failed"],
        }

    def train(self, phase: str) -> dict:
        settings = self.settings
        limit = self.budget.limit(
            phase, stretch=settings.max_stretch, floor=settings.min_time_limit_s
        )
        planned = int(settings[phase].total_steps)
        config = self.stage_config(phase, time_limit_s=limit)
        steps, basis = planned, "planned"
        timing = self.calibration.get("ldm" if phase == "ldm" else "vae")
        if settings.calibrate.enabled and timing is not None:
            # A VAE stage's step costs about its tokens: span infill reads longer bars.
            length_ratio = 1.0 if phase == "ldm" else config.data.max_len / self.timed_vae_length
            c = settings.calibrate
            steps = time_plan.plan_steps(
                limit,
                timing.median_s * length_ratio,
                timing.first_s - timing.median_s,
                planned=planned,
                setup_s=c.setup_s,
                efficiency=c.efficiency,
                min_steps=c.min_steps,
                max_scale=c.max_scale,
            )
            basis = f"calibrated on {timing.median_s * length_ratio * 1e3:.1f} ms a step"
        values = {"time_limit_s": limit, "total_steps": steps}
        if config.optim.warmup_steps >= steps:  # a short schedule keeps a fifth for warm-up
            values["optim.warmup_steps"] = steps // 5
        config = self.stage_config(phase, **values)
        self.stage_configs[phase] = config
        self.log(
            f"  time limit {limit:.0f} s, {steps} steps ({basis}), batch "
            f"{config.batch_size}, {config.model.get('dtype')} compute"
        )
        demo.run_stage(config, self.paths[phase])
        summary = run_record.training_summary(self.paths[phase])
        return {
            "time_limit_s": round(limit, 1),
            "planned_steps": planned,
            "total_steps": steps,
            "steps_basis": basis,
            **summary,
            "stopped_by_time": summary.get("steps_done", 0) < steps,
        }

    def extract(self) -> dict:
        demo.run_stage(self.stage_config("extract"), self.paths["extract"])
        manifest = json.loads(pathlib.Path(self.paths["extract"], "manifest.json").read_text())
        return {"splits": manifest["splits"], "scale": manifest["scale"], "clip": manifest["clip"]}

    def sample(self) -> dict:
        demo.run_stage(self.stage_config("sample"), self.paths["sample"])
        return {}

    def evaluate(self) -> dict:
        demo.run_stage(self.stage_config("evaluate"), self.paths["evaluate"])
        for name in demo.REPORT_FILES:  # the results at the top level, as the demo does
            source = os.path.join(self.paths["evaluate"], name)
            if os.path.exists(source):
                shutil.copy2(source, self.out / name)
        return {}

    def export(self) -> dict:
        if not self.settings.export:
            return {"written": False, "why": "export=False"}
        if "vae" not in self.stage_configs:
            self.stage_configs["vae"] = self.stage_config("vae")
        self.stage_configs.setdefault("ldm", self.stage_config("ldm"))
        bundle_size = run_record.bundle_mb(self.stage_configs)
        kept_mb = run_record.folder_mb(self.out) - run_record.weights_mb(self.paths)
        if kept_mb + bundle_size > self.settings.max_output_mb:
            return {
                "written": False,
                "why": f"the models' fp32 weights ({bundle_size:.0f} MB) do "
                f"not fit the {self.settings.max_output_mb:.0f} MB folder",
            }
        variants = ",".join(filter(None, (self.settings.condition, self.settings.stage_variants)))
        config = config_lib.load_experiment(
            f"{demo.EXPERIMENTS / 'export.py'}:{variants}", lock=False
        )
        config.ldm_workdir = self.paths["ldm"]
        config.lock()
        config_lib.validate(config)
        export.run(config, str(self.out / "bundle"))
        return {"written": True, "dir": str(self.out / "bundle"), "mb": round(bundle_size, 1)}

    def run(self) -> dict:
        status: dict[str, str] = {}
        for number, phase in enumerate(PHASES, start=1):
            banner = f"[gpu-run {number}/{len(PHASES)}] {TITLES[phase]}"
            missing = [need for need in NEEDS.get(phase, ()) if status.get(need) != "ok"]
            entry = {
                "share_s": self.settings.budget_s[phase],
                "started_at_s": round(self.budget.elapsed(), 1),
            }
            if missing:
                status[phase] = entry["status"] = f"skipped: needs {', '.join(missing)}"
                self.log(f"{banner}: {entry['status']}")
                self.record["phases"][phase] = entry
                continue
            self.log(f"{banner} ... ({entry['started_at_s']:.0f} s into the run)")
            started = time.monotonic()
            try:
                entry.update(self.train(phase) if phase in TRAINING else getattr(self, phase)())
                status[phase] = entry["status"] = "ok"
            except errors.Interrupted:
                entry["status"] = "interrupted"
                raise
            except Exception as error:  # noqa: BLE001 - recorded; the phases after go on
                status[phase] = entry["status"] = f"failed: {gpu_timings.first_line(error)}"
                std_logging.getLogger("absl").exception("phase %s failed", phase)
            finally:
                entry["wall_s"] = round(time.monotonic() - started, 2)
                self.record["phases"][phase] = entry
                self.record["elapsed_s"] = round(self.budget.elapsed(), 1)
                self.write()
            self.log(f"{banner}: {entry['status']} in {entry['wall_s']:.0f} s")
        return status

    def finish(self) -> dict:
        """The generation results, pruning, the folder's size, the totals; gpu_run.json."""
        self.record.update(run_record.generation_summary(self.out))
        self.record["elapsed_before_pruning_s"] = round(self.budget.elapsed(), 1)
        if not self.settings.keep_weights:
            self.record["pruned_mb"] = run_record.prune_weights(self.out, self.paths)
        self.record["total_wall_s"] = round(self.budget.elapsed(), 1)
        self.record["within_budget"] = self.record["total_wall_s"] <= self.settings.total_budget_s
        self.write()
        (self.out / REPORT_MD).write_text(run_record.markdown_report(self.record))
        size = run_record.folder_mb(self.out)  # gpu_run.json and gpu_run.md included
        self.record["output_mb"] = round(size, 2)
        self.record["size_ok"] = size <= self.settings.max_output_mb
        self.write()
        (self.out / REPORT_MD).write_text(run_record.markdown_report(self.record))
        return self.record


def run_gpu(settings: ml_collections.ConfigDict, out_dir: str, *, log: Callable = print) -> dict:
    """Runs every phase of `settings` into `out_dir` (new or empty); returns gpu_run.json."""
    out = pathlib.Path(out_dir).resolve()
    if out.exists() and any(out.iterdir()):
        raise errors.UserError(
            f"{out} is not empty: a GPU run writes into a new folder; remove "
            "it or pass another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    run = GpuRun(settings, out, log)
    with open(out / LOG_FILE, "a") as log_lines, log_file(out / LOG_FILE):

        def both(line: str) -> None:
            log(line)
            log_lines.write(line + "\n")
            log_lines.flush()

        run.log = both
        device = run.record["device"]
        both(
            f"[gpu-run] {device['kind']} ({device['platform']}, {device['count']} device(s), "
            f"JAX {device['jax']}); budget {settings.total_budget_s:.0f} s; folder {out}"
        )
        try:
            with tempfile.TemporaryDirectory() as cache_dir, compilation_cache(cache_dir):
                run.run()
        finally:
            record = run.finish()
        both(run_record.summary_line(record))
    return record


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/gpu_run", help="output folder (new or empty)")
    parser.add_argument(
        "--settings",
        default="",
        help="variants and key=val overrides of "
        "experiments/gpu_run.py, comma-joined, e.g. total_budget_s=600 or "
        "chorales,runlocal,data_dir=data/chorales",
    )
    parser.add_argument("--pop909_dir", default="", help="POP909 folder (default: $POP909_DIR)")
    parser.add_argument("--verbose", action="store_true", help="also the libraries' INFO logs")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    """Runs the GPU run; exits non-zero (after writing gpu_run.json) when a phase did not
    finish or the folder is over its size limit."""
    try:
        settings = load_settings(args.settings)
        if args.pop909_dir:
            settings.pop909_dir = args.pop909_dir
        logs.show_project_info(verbose=args.verbose)
        record = run_gpu(settings, args.out, log=lambda line: print(line, flush=True))
    except errors.UserError as error:
        raise SystemExit(f"error: {error}") from None
    failed = [name for name, entry in record["phases"].items() if entry["status"] != "ok"]
    if failed or not record["size_ok"]:
        raise SystemExit(
            f"[gpu-run] not everything ran: {', '.join(failed) or 'size'}; see "
            f"{os.path.join(args.out, SUMMARY_JSON)}"
        )


def _parse(argv: list[str]) -> argparse.Namespace:
    """absl's own flags stay at their defaults (app.run still sets up its log handler, which
    replaces the plain handler that importing Grain installs); ours are argparse's."""
    flags.FLAGS(argv[:1])
    return parse_args(argv[1:])


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
