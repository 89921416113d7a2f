# phrase_jax: every target installs what it needs into a local virtualenv (.venv).
# Settings can be overridden on the command line, e.g. `make data POP909_DIR=/data/pop909`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
POP909_DIR ?= ../shared/data/pop909
DATA_DIR ?= data
RUNS_DIR ?= runs
WORKERS ?= $(shell nproc)
# Tests and CI simulate 8 devices so every sharding path runs on a CPU-only machine.
TEST_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu
PYTEST_ARGS ?=
# Two pytest workers, one test file each at a time (module fixtures stay shared within a file):
# XLA compiles on one thread, and the suite is mostly compiles, so two workers use both cores.
TEST_WORKERS ?= 2

.PHONY: install install-parity test lint format data data-chorales bench clean train-vae

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,demo]'
	touch $@

# torch/transformers/diffusers only for the parity tests against the reference layouts.
$(VENV)/.installed-parity: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,demo,parity]'
	touch $@

install: $(VENV)/.installed

install-parity: $(VENV)/.installed-parity

test: $(VENV)/.installed-parity
	$(TEST_ENV) POP909_DIR=$(POP909_DIR) $(PY) -m pytest -q -rs -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS) tests

lint: $(VENV)/.installed
	$(BIN)/ruff check phrase_jax data_pipelines experiments tests benchmarks
	$(BIN)/ruff format --check phrase_jax data_pipelines experiments tests benchmarks

format: $(VENV)/.installed
	$(BIN)/ruff format phrase_jax data_pipelines experiments tests benchmarks

data: $(VENV)/.installed
	$(PY) -m phrase_jax.main --workdir $(DATA_DIR)/pop909 \
		--config experiments/prepare.py:pop909,input_dir=$(POP909_DIR),workers=$(WORKERS)

data-chorales: $(VENV)/.installed
	$(PY) -m phrase_jax.main --workdir $(DATA_DIR)/chorales \
		--config experiments/prepare.py:chorales,workers=$(WORKERS)

# The run-name convention (phrase_jax/run_names.py): the run of experiments/<x>.py
# at variant words W lives in $(RUNS_DIR)/<its RUN_KIND>[_<word of W>...], e.g. runs/vae_cpu,
# runs/latents_cpu, runs/ldm_lencond_cpu, runs/samples_lencond_cpu; the experiment files name
# their upstream runs by the same rule. `$(call run_dir,x)` asks the library; words x does not
# know are left out (`lencond` names an LDM run, not the latents it reads).
VARIANT ?=
, := ,
run_dir = $(shell $(PY) -m phrase_jax.run_names --runs_dir=$(RUNS_DIR) experiments/$(1).py:$(VARIANT))
DATA_ARG := data.dir=$(DATA_DIR)/pop909

# The three PhraseVAE stages in order on POP909 (SPEC 2), each from the previous workdir:
# `make train-vae` (paper scale), `make train-vae VARIANT=cpu` (~15 min on 2 CPU cores),
# `VARIANT=runlocal` (seconds). Rerunning resumes each stage from its workdir.
$(DATA_DIR)/pop909/manifest.json:
	$(MAKE) data

train-vae: $(VENV)/.installed $(DATA_DIR)/pop909/manifest.json
	$(PY) -m phrase_jax.main --workdir $(call run_dir,vae_pretrain) \
		--config experiments/vae_pretrain.py:$(VARIANT)$(,)$(DATA_ARG),init_from=
	$(PY) -m phrase_jax.main --workdir $(call run_dir,vae_ae) \
		--config experiments/vae_ae.py:$(VARIANT)$(,)$(DATA_ARG),init_from=$(call run_dir,vae_pretrain)
	$(PY) -m phrase_jax.main --workdir $(call run_dir,vae) \
		--config experiments/vae.py:$(VARIANT)$(,)$(DATA_ARG),init_from=$(call run_dir,vae_ae)

# Pipeline throughput (prepares the data first when it is missing), then PhraseVAE train-step
# and greedy-decode speed on this machine and an epoch's non-pad tokens/s padded to 128 vs in
# length buckets. When the parity extra is installed (`make install-parity`) both benchmarks
# also time the PyTorch reference in the same process (`--reference`: the VAE train step and
# decode, the DiT denoising step interleaved with ours).
# Then PhraseLDM train step, denoising step and one 128-bar song end to end (per sampler), the
# batch-32 remat train step alone in a subprocess with its peak memory, also on the trained
# $(RUNS_DIR)/ldm_lencond_cpu when it exists; the samplers' PhraseFID on that run with
# BENCH_LDM_ARGS=--fid_ldm_workdir=runs/ldm_lencond_cpu. Every table names the CPU's vector
# extensions (AVX2 / AVX-512 ...): the same code runs 2x apart between them.
BENCH_REFERENCE = $(shell $(PY) -c "import torch, transformers, diffusers" 2>/dev/null && echo --reference)
BENCH_VAE_ARGS ?=
BENCH_LDM_ARGS ?=
bench: $(VENV)/.installed
	test -f $(DATA_DIR)/pop909/manifest.json || $(MAKE) data
	$(PY) -m benchmarks.bench_pipelines --data_dir $(DATA_DIR)/pop909
	$(PY) -m benchmarks.bench_vae --json $(RUNS_DIR)/bench_vae.jsonl $(BENCH_REFERENCE) \
		--data_dir $(DATA_DIR)/pop909 $(BENCH_VAE_ARGS)
	$(PY) -m benchmarks.bench_ldm --json $(RUNS_DIR)/bench_ldm.jsonl $(BENCH_REFERENCE) \
		--memory_batches 32 --trained_ldm_workdir $(RUNS_DIR)/ldm_lencond_cpu $(BENCH_LDM_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

# Songs from a trained PhraseLDM (SPEC 6): a .mid and a piano-roll .png per song and samples.json
# in $(RUNS_DIR)/samples_<condition>[_bars][_<scale>]. VARIANT names the LDM run as
# experiments/sample.py explains (`make sample VARIANT=lencond,cpu` reads runs/ldm_lencond_cpu);
# LDM_WORKDIR=DIR reads another run; SAMPLE_ARGS adds options, e.g.
# SAMPLE_ARGS=num_songs=8,sampler=ddim,steps=100.
# MODEL=BUNDLE samples a bundle instead (make export, make import-official) into
# $(RUNS_DIR)/samples_<bundle folder name>, with DPM-Solver++ SDE-10 and a .wav per song
# (FluidSynth + a GM sound font when installed, else sine tones), e.g.
# `make sample MODEL=bundles/phrase-ldm-lencond SAMPLE_ARGS=num_songs=8,bars=32`.
.PHONY: sample
LDM_WORKDIR ?=
# The shipped POP909 model (issue 13): what `make demo` and, with no run named, `make sample`
# and `make eval` read.
SHIPPED_MODEL := models/pop909-cpu
MODEL ?= $(if $(or $(VARIANT),$(LDM_WORKDIR)),,$(SHIPPED_MODEL))
SAMPLE_ARGS ?=
_empty :=
_space := $(_empty) $(_empty)
BUNDLE_SAMPLING_OF = model=$(abspath $(1)) sampler=dpm_solver_pp_sde steps=10 num_songs=4 \
	batch_size=4 wav=True
BUNDLE_SAMPLING = $(call BUNDLE_SAMPLING_OF,$(MODEL))
SAMPLE_CONFIG_ARGS = $(subst $(_space),$(,),$(strip $(VARIANT) \
	$(if $(MODEL),$(BUNDLE_SAMPLING),ldm_workdir=$(or $(LDM_WORKDIR),$(call run_dir,ldm))) \
	$(SAMPLE_ARGS)))
SAMPLE_OUT = $(if $(MODEL),$(RUNS_DIR)/samples_$(notdir $(abspath $(MODEL))),$(call run_dir,sample))

sample: $(VENV)/.installed
	$(PY) -m phrase_jax.main --workdir $(SAMPLE_OUT) \
		--config experiments/sample.py:$(SAMPLE_CONFIG_ARGS)

# Edit a song (issue 14): continue it, refill bars or a section, accompany a melody, rewrite
# one instrument. INPUT=song.mid, a model as for `make sample` (MODEL=BUNDLE, or VARIANT names the
# LDM run) and the task in EDIT_ARGS, e.g.
#   make edit MODEL=bundles/phrase-ldm-lencond INPUT=song.mid EDIT_ARGS=task=continue,bars=64
#   make edit MODEL=... INPUT=song.mid EDIT_ARGS=task=infill,bars=9-16
#   make edit MODEL=... INPUT=song.mid EDIT_ARGS=task=accompany,tracks=MELODY
#   make edit MODEL=... INPUT=song.mid EDIT_ARGS=task=retrack,track=0
# Writes edited.mid, edited.png, edited.wav (FluidSynth) and edit.json into
# $(RUNS_DIR)/edit_<input name>, or OUT=DIR. A bundle samples with DPM-Solver++ SDE-20.
.PHONY: edit
INPUT ?=
EDIT_ARGS ?=
BUNDLE_EDITING := model=$(abspath $(MODEL)) sampler=dpm_solver_pp_sde steps=20
EDIT_CONFIG_ARGS = $(subst $(_space),$(,),$(strip $(VARIANT) input=$(abspath $(INPUT)) \
	$(if $(MODEL),$(BUNDLE_EDITING),ldm_workdir=$(or $(LDM_WORKDIR),$(call run_dir,ldm))) \
	$(EDIT_ARGS)))

edit: $(VENV)/.installed
	@test -n "$(INPUT)" || (echo "make edit: give INPUT=song.mid" && false)
	$(PY) -m phrase_jax.main --workdir $(or $(OUT),$(RUNS_DIR)/edit_$(basename $(notdir $(INPUT)))) \
		--config experiments/edit.py:$(EDIT_CONFIG_ARGS)

# Bundles (issue 12): one folder with the VAE + LDM weights and everything sampling needs.
# `make export VARIANT=lencond,cpu` writes the bundle of runs/ldm_lencond_cpu (its latents
# manifest and VAE) into $(RUNS_DIR)/bundle_lencond_cpu, or OUT=DIR; LDM_WORKDIR=DIR exports
# another run. `make import-official VAE=DIR|REPO LDM=DIR|REPO OUT=DIR` turns the released Hub
# models (huggingface-cli download folders, or repo ids when huggingface_hub is installed and
# online) into a bundle; no torch needed.
.PHONY: export import-official
OUT ?=
VAE ?=
LDM ?=
EXPORT_CONFIG_ARGS = $(subst $(_space),$(,),$(strip $(VARIANT) \
	ldm_workdir=$(or $(LDM_WORKDIR),$(call run_dir,ldm))))

export: $(VENV)/.installed
	$(PY) -m phrase_jax.main --workdir $(or $(OUT),$(call run_dir,export)) \
		--config experiments/export.py:$(EXPORT_CONFIG_ARGS)

import-official: $(VENV)/.installed
	@test -n "$(VAE)" -a -n "$(LDM)" -a -n "$(OUT)" || { echo "usage: make import-official \
VAE=phrase-vae-folder-or-repo LDM=phrase-ldm-folder-or-repo OUT=bundle-folder"; exit 2; }
	$(PY) -m phrase_jax.interop.official --vae $(VAE) --ldm $(LDM) --out $(OUT)

# Latents and PhraseLDM (SPEC 3-5). `make extract-latents VARIANT=cpu` encodes POP909 with
# runs/vae_cpu into runs/latents_cpu (rerunning skips a finished extraction);
# `make train-ldm VARIANT=lencond,cpu` trains runs/ldm_lencond_cpu on runs/latents_cpu (VARIANT:
# a condition uncond|lencond|seccond, optionally bars, and a scale cpu|runlocal; rerunning
# resumes). LDM_ARGS adds options, e.g. LDM_ARGS=total_steps=2000,diffusion.prediction=v.
.PHONY: extract-latents train-ldm
LDM_ARGS ?=
LDM_CONFIG_ARGS = $(subst $(_space),$(,),$(strip $(VARIANT) \
	latents.dir=$(call run_dir,extract) $(LDM_ARGS)))

extract-latents: $(VENV)/.installed $(DATA_DIR)/pop909/manifest.json
	$(PY) -m phrase_jax.main --workdir $(call run_dir,extract) \
		--config experiments/extract.py:$(VARIANT)$(,)$(DATA_ARG),vae_workdir=$(call run_dir,vae)

train-ldm: $(VENV)/.installed
	$(PY) -m phrase_jax.main --workdir $(call run_dir,ldm) \
		--config experiments/ldm.py:$(LDM_CONFIG_ARGS)

# Generation metrics (SPEC 7) of a trained PhraseLDM against real POP909 songs: metrics.json,
# metrics.md (with the reference's Table 5 rows) and self_similarity.png in
# $(RUNS_DIR)/eval_<condition>[_bars][_<scale>]. VARIANT names the LDM run as for `make sample`
# (`make eval VARIANT=lencond,cpu` reads runs/ldm_lencond_cpu); LDM_WORKDIR=DIR reads another run;
# EVAL_ARGS adds options, e.g. EVAL_ARGS=num_songs=50,compare.ldm_workdir=runs/ldm_uncond_cpu.
# MODEL=BUNDLE evaluates a bundle (DPM-Solver++ SDE-10, 20 songs; real songs from the data it was
# exported from, or EVAL_ARGS=data_dir=data/pop909) into $(RUNS_DIR)/eval_<bundle folder name>.
# metrics.md also holds the model-independent table (MIDI descriptors vs the held-out songs,
# the real-vs-real ceiling; EVAL_ARGS=extra_midi_dirs=a/:b/ adds other systems' MIDI folders)
# and the folder keeps its real_statistics.json; a bundle exported with its data is evaluated
# on that table even where the data are absent.
.PHONY: eval
EVAL_ARGS ?=
BUNDLE_EVAL := model=$(abspath $(MODEL)) sampler=dpm_solver_pp_sde steps=10 num_songs=20 \
	batch_size=10
EVAL_CONFIG_ARGS = $(subst $(_space),$(,),$(strip $(VARIANT) \
	$(if $(MODEL),$(BUNDLE_EVAL),ldm_workdir=$(or $(LDM_WORKDIR),$(call run_dir,ldm))) \
	$(EVAL_ARGS)))
EVAL_OUT = $(if $(MODEL),$(RUNS_DIR)/eval_$(notdir $(abspath $(MODEL))),$(call run_dir,evaluate))

eval: $(VENV)/.installed
	$(PY) -m phrase_jax.main --workdir $(EVAL_OUT) \
		--config experiments/evaluate.py:$(EVAL_CONFIG_ARGS)

# Folders of MIDI without a model (issue 13.3): per-bar and per-song MIDI descriptors against
# the held-out POP909 songs (or STATS=a real_statistics.json / a bundle storing one), with the
# real-vs-real ceiling, into $(RUNS_DIR)/eval_midi: midi_metrics.json, midi_metrics.md,
# real_statistics.json. `make eval-midi MIDI_DIRS=other_system/:outputs/demo/songs`.
.PHONY: eval-midi
MIDI_DIRS ?=
STATS ?=
EVAL_MIDI_ARGS = midi_dirs=$(MIDI_DIRS)$(if $(STATS),$(,)real_statistics=$(abspath $(STATS)),$(,)data_dir=$(DATA_DIR)/pop909)

eval-midi: $(VENV)/.installed
	$(PY) -m phrase_jax.main --workdir $(RUNS_DIR)/eval_midi \
		--config experiments/evaluate_midi.py:$(EVAL_MIDI_ARGS)

# `make demo`: songs from the shipped POP909 model ($(SHIPPED_MODEL), a bundle with its model
# card) into $(DEMO_OUT)/songs (.mid, piano-roll .png, .wav: FluidSynth when installed, else sine
# tones), then the model-independent evaluation of those songs against the real POP909
# statistics stored in the bundle ($(DEMO_OUT)/eval/midi_metrics.md); no dataset, no training.
# DEMO_SAMPLE_ARGS adds sample options, e.g. DEMO_SAMPLE_ARGS=num_songs=8,bars=32,seed=3.
#
# `make demo-train`: the whole job end to end on this machine (phrase_jax/demo.py; sizes:
# experiments/demo.py): prepare data, train the three VAE stages, extract latents, train a
# length-conditioned LDM, generate songs and evaluate them, all into $(DEMO_TRAIN_OUT); re-running
# skips finished phases and resumes an interrupted one. Data: the Bach chorales inside music21,
# or POP909 with DEMO_DATASET=pop909 (from $(POP909_DIR)) or when POP909_DIR is set in the
# environment. DEMO_ARGS adds settings, e.g. DEMO_ARGS=runlocal or DEMO_ARGS=ldm.total_steps=2000.
.PHONY: demo demo-train
DEMO_OUT ?= outputs/demo
DEMO_TRAIN_OUT ?= outputs/demo_train
DEMO_DATASET ?=
DEMO_ARGS ?=
DEMO_SAMPLE_ARGS ?=
DEMO_SAMPLE_CONFIG = $(subst $(_space),$(,),$(strip \
	$(call BUNDLE_SAMPLING_OF,$(SHIPPED_MODEL)) bars=32 $(DEMO_SAMPLE_ARGS)))
DEMO_EVAL_CONFIG = midi_dirs=$(abspath $(DEMO_OUT)/songs),real_statistics=$(abspath $(SHIPPED_MODEL))

demo: $(VENV)/.installed
	$(PY) -m phrase_jax.main --workdir $(DEMO_OUT)/songs \
		--config experiments/sample.py:$(DEMO_SAMPLE_CONFIG)
	$(PY) -m phrase_jax.main --workdir $(DEMO_OUT)/eval \
		--config experiments/evaluate_midi.py:$(DEMO_EVAL_CONFIG)
	@echo "songs: $(DEMO_OUT)/songs   evaluation: $(DEMO_OUT)/eval/midi_metrics.md"

demo-train: $(VENV)/.installed
	$(PY) -m phrase_jax.demo --out $(DEMO_TRAIN_OUT) $(if $(DEMO_DATASET),--dataset $(DEMO_DATASET) \
		--pop909_dir $(POP909_DIR)) $(if $(DEMO_ARGS),--settings $(DEMO_ARGS))

# The prepared GPU run (benchmarks/gpu_run.py, settings in experiments/gpu_run.py): the paper-size
# VAE (three stages) and `lencond` LDM trained on POP909 with short schedules in about 9 minutes of
# one H100/H200 (bf16 compute, fp32 master weights), then sampled and evaluated, plus paper-size
# step timings (bf16 vs fp32, attention implementations); everything in $(GPU_RUN_OUT) (a new
# folder, at most 60 MB; read gpu_run.json), on one GPU (the first, unless CUDA_VISIBLE_DEVICES
# names another). Installs JAX's CUDA 12 wheels (the `gpu` extra); prepares $(DATA_DIR)/pop909
# from $(POP909_DIR) inside the run when `make data` did not.
# GPU_RUN_ARGS adds settings, e.g. GPU_RUN_ARGS=total_budget_s=600 or timings.fp32=False.
.PHONY: gpu-run
GPU_RUN_OUT ?= outputs/gpu_run
GPU_RUN_ARGS ?=

$(VENV)/.installed-gpu: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,demo,gpu]'
	touch $@

gpu-run: $(VENV)/.installed-gpu
	CUDA_VISIBLE_DEVICES=$${CUDA_VISIBLE_DEVICES:-0} $(PY) -m benchmarks.gpu_run \
		--out $(GPU_RUN_OUT) --pop909_dir $(POP909_DIR) --settings data_dir=$(DATA_DIR)/pop909$(if $(GPU_RUN_ARGS),$(,)$(GPU_RUN_ARGS))
