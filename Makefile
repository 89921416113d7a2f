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
	$(TEST_ENV) POP909_DIR=$(POP909_DIR) $(PY) -m pytest -q -rs $(PYTEST_ARGS) tests

lint: $(VENV)/.installed
	$(BIN)/ruff check phrase_jax data_pipelines experiments tests benchmarks
	$(BIN)/ruff format --check phrase_jax data_pipelines experiments tests benchmarks

format: $(VENV)/.installed
	$(BIN)/ruff format phrase_jax data_pipelines experiments tests benchmarks

data: $(VENV)/.installed
	$(PY) -m data_pipelines.prepare --dataset pop909 --pop909_dir $(POP909_DIR) \
		--out_dir $(DATA_DIR)/pop909 --workers $(WORKERS)

data-chorales: $(VENV)/.installed
	$(PY) -m data_pipelines.prepare --dataset chorales --out_dir $(DATA_DIR)/chorales \
		--workers $(WORKERS)

# The three PhraseVAE stages in order on POP909 (SPEC 2), each from the previous workdir:
# `make train-vae` (paper scale), `make train-vae VARIANT=cpu` (~15 min on 2 CPU cores),
# `VARIANT=runlocal` (seconds). Rerunning resumes each stage from its workdir.
VARIANT ?=
VAE_SUFFIX := $(if $(VARIANT),_$(VARIANT))
, := ,
VAE_ARGS := $(if $(VARIANT),$(VARIANT)$(,))data.dir=$(DATA_DIR)/pop909

$(DATA_DIR)/pop909/manifest.json:
	$(MAKE) data

train-vae: $(VENV)/.installed $(DATA_DIR)/pop909/manifest.json
	$(PY) -m phrase_jax.main --workdir $(RUNS_DIR)/vae_pretrain$(VAE_SUFFIX) \
		--config experiments/vae_pretrain.py:$(VAE_ARGS),init_from=
	$(PY) -m phrase_jax.main --workdir $(RUNS_DIR)/vae_ae$(VAE_SUFFIX) \
		--config experiments/vae_ae.py:$(VAE_ARGS),init_from=$(RUNS_DIR)/vae_pretrain$(VAE_SUFFIX)
	$(PY) -m phrase_jax.main --workdir $(RUNS_DIR)/vae$(VAE_SUFFIX) \
		--config experiments/vae.py:$(VAE_ARGS),init_from=$(RUNS_DIR)/vae_ae$(VAE_SUFFIX)

# Pipeline throughput (prepares the data first when it is missing), then PhraseVAE train-step
# and greedy-decode speed on this machine; `make bench BENCH_VAE_ARGS=--reference` also times
# the PyTorch reference in the same process (needs `make install-parity`). Then PhraseLDM train
# step, denoising step and one 128-bar song end to end (per sampler), also on the trained
# $(RUNS_DIR)/ldm_lencond_cpu when it exists; the samplers' PhraseFID on that run with
# BENCH_LDM_ARGS=--fid_ldm_workdir=runs/ldm_lencond_cpu.
BENCH_VAE_ARGS ?=
BENCH_LDM_ARGS ?=
bench: $(VENV)/.installed
	test -f $(DATA_DIR)/pop909/manifest.json || $(MAKE) data
	$(PY) -m benchmarks.bench_pipelines --data_dir $(DATA_DIR)/pop909
	$(PY) -m benchmarks.bench_vae --json $(RUNS_DIR)/bench_vae.jsonl $(BENCH_VAE_ARGS)
	$(PY) -m benchmarks.bench_ldm --json $(RUNS_DIR)/bench_ldm.jsonl \
		--trained_ldm_workdir $(RUNS_DIR)/ldm_lencond_cpu $(BENCH_LDM_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

# Songs from a trained PhraseLDM (SPEC 6): a .mid and a piano-roll .png per song and samples.json
# in $(RUNS_DIR)/samples_<variant>. VARIANT names the LDM run as experiments/sample.py explains
# (`make sample VARIANT=lencond,cpu` reads runs/ldm_lencond_cpu); LDM_WORKDIR=DIR reads another
# run; SAMPLE_ARGS adds options, e.g. SAMPLE_ARGS=num_songs=8,sampler=ddim,steps=100.
.PHONY: sample
LDM_WORKDIR ?=
SAMPLE_ARGS ?=
_empty :=
_space := $(_empty) $(_empty)
SAMPLE_CONFIG_ARGS = $(subst $(_space),$(,),$(strip $(VARIANT) \
	$(if $(LDM_WORKDIR),ldm_workdir=$(LDM_WORKDIR)) $(SAMPLE_ARGS)))

sample: $(VENV)/.installed
	$(PY) -m phrase_jax.main --workdir $(RUNS_DIR)/samples$(subst $(,),_,$(VAE_SUFFIX)) \
		--config experiments/sample.py:$(SAMPLE_CONFIG_ARGS)

# Latents and PhraseLDM (SPEC 3-5). `make extract-latents VARIANT=cpu` encodes POP909 with
# runs/vae_cpu into runs/latents_cpu (rerunning skips a finished extraction);
# `make train-ldm VARIANT=lencond,cpu` trains runs/ldm_lencond_cpu on those latents (VARIANT:
# a condition uncond|lencond|seccond, optionally bars, and a scale cpu|runlocal; rerunning
# resumes). LDM_ARGS adds options, e.g. LDM_ARGS=total_steps=2000,diffusion.prediction=v.
.PHONY: extract-latents train-ldm
LDM_ARGS ?=
LDM_WORDS = $(subst $(,), ,$(VARIANT))
LDM_SCALE = $(filter cpu runlocal,$(LDM_WORDS))
LDM_RUN = $(subst $(_space),_,$(strip ldm $(or $(filter uncond lencond seccond,$(LDM_WORDS)),uncond) \
	$(filter bars,$(LDM_WORDS)) $(LDM_SCALE)))
LATENTS_DIR = $(RUNS_DIR)/latents$(if $(LDM_SCALE),_$(LDM_SCALE))
LDM_CONFIG_ARGS = $(subst $(_space),$(,),$(strip $(VARIANT) latents.dir=$(LATENTS_DIR) $(LDM_ARGS)))

extract-latents: $(VENV)/.installed $(DATA_DIR)/pop909/manifest.json
	$(PY) -m phrase_jax.main --workdir $(RUNS_DIR)/latents$(VAE_SUFFIX) \
		--config experiments/extract.py:$(VAE_ARGS),vae_workdir=$(RUNS_DIR)/vae$(VAE_SUFFIX)

train-ldm: $(VENV)/.installed
	$(PY) -m phrase_jax.main --workdir $(RUNS_DIR)/$(LDM_RUN) \
		--config experiments/ldm.py:$(LDM_CONFIG_ARGS)

# Generation metrics (SPEC 7) of a trained PhraseLDM against real POP909 songs: metrics.json,
# metrics.md (with the reference's Table 5 rows) and self_similarity.png in
# $(RUNS_DIR)/eval_<variant>. VARIANT names the LDM run as for `make sample`
# (`make eval VARIANT=lencond,cpu` reads runs/ldm_lencond_cpu); LDM_WORKDIR=DIR reads another run;
# EVAL_ARGS adds options, e.g. EVAL_ARGS=num_songs=50,compare.ldm_workdir=runs/ldm_uncond_cpu.
.PHONY: eval
LDM_WORKDIR ?=
EVAL_ARGS ?=
EVAL_CONFIG_ARGS = $(subst $(_space),$(,),$(strip $(VARIANT) \
	$(if $(LDM_WORKDIR),ldm_workdir=$(LDM_WORKDIR)) $(EVAL_ARGS)))

eval: $(VENV)/.installed
	$(PY) -m phrase_jax.main --workdir $(RUNS_DIR)/eval$(subst $(,),_,$(VAE_SUFFIX)) \
		--config experiments/evaluate.py:$(EVAL_CONFIG_ARGS)

# The whole job end to end on this machine (phrase_jax/demo.py; sizes: experiments/demo.py):
# prepare data, train the three VAE stages, extract latents, train a length-conditioned LDM,
# generate songs and evaluate them, all into $(DEMO_OUT); re-running skips finished phases and
# resumes an interrupted one. Data: the Bach chorales inside music21, or POP909 with
# DEMO_DATASET=pop909 (from $(POP909_DIR)) or when POP909_DIR is set in the environment.
# DEMO_ARGS adds settings, e.g. DEMO_ARGS=runlocal or DEMO_ARGS=ldm.total_steps=2000.
.PHONY: demo
DEMO_OUT ?= outputs/demo
DEMO_DATASET ?=
DEMO_ARGS ?=

demo: $(VENV)/.installed
	$(PY) -m phrase_jax.demo --out $(DEMO_OUT) $(if $(DEMO_DATASET),--dataset $(DEMO_DATASET) \
		--pop909_dir $(POP909_DIR)) $(if $(DEMO_ARGS),--settings $(DEMO_ARGS))
