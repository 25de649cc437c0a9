# Everything installs itself into .venv on first use.
# GPU users: make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
GPUS ?= cpu
WORKERS ?= 2
WORKERS_PER_GPU ?=
STUDY ?= studies/quick.yaml
MODEL ?= studies/models/yolov5-cpu-af.yaml  # make train / make prune (the anchor head: studies/models/yolov5-cpu.yaml)
EPOCHS ?= 30
IMGSZ ?= 160
DEVICE ?= cpu
TRIALS ?=
NAME ?= quick
SAMPLER ?=
STORAGE ?=
# ARTIFACTS: a folder (or s3://bucket/prefix) every machine of a study reaches; its base run is shared through it
ARTIFACTS ?=
PORT ?= 8080
USE_ARGS ?=

.PHONY: install test train val bench bench-pictures bench-search bench-planted bench-peer bench-fidelity bench-tp bench-use deploy heldout evolve prune report study dashboard clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev,export,postgres]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest tests

train: install
	$(PY) -m core.train --model $(MODEL) --epochs $(EPOCHS) --imgsz $(IMGSZ) --device $(DEVICE)

val: install
	$(PY) -m core.val --weights $(WEIGHTS) --imgsz $(IMGSZ) --device $(DEVICE)

bench: install
	$(PY) -m bench.engine  # train images/s against what the kernels allow
	$(PY) -m bench.train_profile  # time per phase of one step and one epoch (data wait ... checkpoints)
	$(PY) -m bench.speed_ab  # speed levers as interleaved A/B ratios (channels_last, SPPF pools, threads)
	$(PY) -m bench.evolve_speed --trials 8 --search-trials 16  # trials/hour, 1 vs 2 workers

# Peer benchmark (issues 11, 15): Ultralytics in its own venv (it needs torchvision, which must never enter
# .venv). torch and torchvision are pinned together so that installing ultralytics cannot replace them.
PEER_VENV := .venv-peer
PEER_TORCH ?= torch==2.14.1 torchvision==0.29.1
PEER_ARGS ?=

$(PEER_VENV)/.installed:
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEER_VENV)/bin/python -m pip install --quiet $(PEER_TORCH)
	$(PEER_VENV)/bin/python -m pip install --quiet ultralytics psutil $(PEER_TORCH)
	touch $@

# YOLOv5 v7.0 itself (issue 31), added to the peer venv: the package without its dependencies (they would pull
# roboflow, sahi, boto3, ... and another torch), plus what its model, loss, trainer and plots import; what no
# longer runs on numpy 2, torch >= 2.6 and setuptools >= 81 is wrapped by bench/peer_yolov5.py, not patched.
YOLOV5_SPEC ?= yolov5==7.0.14
FIDELITY_ARGS ?=

$(PEER_VENV)/.yolov5: | $(PEER_VENV)/.installed
	$(PEER_VENV)/bin/python -m pip install --quiet --no-deps $(YOLOV5_SPEC)
	$(PEER_VENV)/bin/python -m pip install --quiet pandas seaborn "huggingface-hub<0.25" $(PEER_TORCH)
	$(PEER_VENV)/bin/python bench/peer_yolov5.py --check
	touch $@

bench-fidelity: install $(PEER_VENV)/.yolov5  # ours vs YOLOv5 v7.0, same weights and batch: loss, assignment, gradients, steps, schedules
	$(PY) -m bench.fidelity $(FIDELITY_ARGS)

heldout: install  # the held-out dataset suite (datasets/heldout-v1), seeded, used by bench-peer
	$(PY) -m bench.heldout --root datasets/heldout-v1

bench-peer: install $(PEER_VENV)/.installed  # ours vs Ultralytics yolov5n/yolov8n on the held-out suite
	$(PY) -m bench.peers --peer-python $(PEER_VENV)/bin/python $(PEER_ARGS)

# Torch-Pruning side by side: torch-pruning in its own venv so it never enters .venv. The venv reads torch,
# numpy, thop, ... from .venv's site-packages through a .pth file (same interpreter: .venv's base python),
# and torch-pruning is installed without dependencies, so it cannot bring another torch.
TP_VENV := .venv-tp
TP_SPEC ?= torch-pruning==1.6.1
TP_ARGS ?=

$(TP_VENV)/.installed: | $(VENV)/.installed
	$(PY) -m venv --clear $(TP_VENV)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
	  > "$$($(TP_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/our-venv.pth"
	$(TP_VENV)/bin/python -m pip install --quiet --no-deps $(TP_SPEC)
	$(TP_VENV)/bin/python -c "import torch, torch_pruning; v = torch.__version__.split('+')[0]; \
	  assert v == '$(subst torch==,,$(firstword $(TORCH_SPEC)))', f'.venv-tp sees torch {v}, not .venv\'s'; \
	  print('torch-pruning', torch_pruning.__version__, 'on torch', torch.__version__, 'from', torch.__file__)"
	touch $@

DEPLOY_ARGS ?=

deploy: install $(TP_VENV)/.installed  # a trained model + a latency budget -> pruned, distilled, INT8, Torch-Pruning beside (bench/results/deploy.md)
	$(TP_VENV)/bin/python -m bench.deploy $(DEPLOY_ARGS)

bench-pictures: install  # what the run folder's pictures cost in a 30-epoch training (bench/results/pictures.md)
	$(PY) -m bench.picture_cost $(PICTURES_ARGS)

bench-tp: install $(TP_VENV)/.installed  # ours vs Torch-Pruning (BN-scale, L1) at equal GFLOPs, same finetune
	$(TP_VENV)/bin/python -m bench.torch_pruning $(TP_ARGS)

bench-use: install  # export, ONNX validation and latency, TTA, ensembles, transfer, detect: the README's figures
	$(PY) -m bench.use $(USE_ARGS)

bench-search: install  # GA vs TPE vs random at equal budget, winners retrained with 3 seeds beside the base hyp
	$(PY) -m bench.search --trials 16 --seeds 3

bench-planted: install  # does the search recover a known (planted) gain? 3 tasks x ga/tpe/random, the quick study's 12 trials, 3 seeds
	$(PY) -m bench.planted --trials 12 --seeds 3

# Every bench command appends its table to bench/results/<bench>.md (--no-record: not). Runs of make prune,
# make study and core.train are recorded after the fact: their run folder's table goes to prune.md, study.md,
# train.md; make prune's and the quick study's figures also to the README's headline table (bench.headline).
PRUNE_NAME ?= shapes
RUN ?= runs/train/exp
.PHONY: record-prune record-study record-train headline

record-prune: install  # after make prune: runs/prune/$(PRUNE_NAME)'s stages table -> bench/results/prune.md
	$(PY) -m bench.prune_table runs/prune/$(PRUNE_NAME) $(if $(filter shapes,$(PRUNE_NAME)),--headline)

record-study: install  # after make study: runs/study/$(NAME)/summary.json -> bench/results/study.md
	$(PY) -m bench.study_table runs/study/$(NAME) $(if $(filter quick,$(NAME)),--headline)

record-train: install  # after a core.train run: $(RUN)'s per-epoch table -> bench/results/train.md
	$(PY) -m bench.train_table $(RUN)

headline: install  # README.md's headline table, rendered from bench/results/headline.json
	$(PY) -m bench.headline

evolve: install
	$(PY) -m evolve --study $(STUDY) --gpus $(GPUS) --workers $(WORKERS) $(if $(WORKERS_PER_GPU),--workers-per-gpu $(WORKERS_PER_GPU)) $(if $(TRIALS),--trials $(TRIALS)) $(if $(SAMPLER),--sampler $(SAMPLER)) $(if $(STORAGE),--storage $(STORAGE)) $(if $(ARTIFACTS),--artifacts $(ARTIFACTS))

prune: install
	$(PY) -m prune.pipeline --name shapes --model $(MODEL) --imgsz $(IMGSZ) --device $(DEVICE) --threads 1 \
	  --epochs 30 --sr --penalty polar --s 2e-3 --s-schedule step --sparse-epochs 30 \
	  --finetune-epochs 20 --global-percent 0.65 --round-to auto --shortcuts 5 --unstructured 0.3 --latency-imgsz 640

study: install  # DATA=D.yaml: the quick study's settings on your data (runs/study/<its name>)
	$(PY) -m evolve.study --study $(STUDY) $(if $(DATA),--data $(DATA)) --gpus $(GPUS) --workers $(WORKERS) $(if $(WORKERS_PER_GPU),--workers-per-gpu $(WORKERS_PER_GPU)) $(if $(TRIALS),--trials $(TRIALS)) $(if $(STORAGE),--storage $(STORAGE)) $(if $(ARTIFACTS),--artifacts $(ARTIFACTS))

dashboard: install  # optuna-dashboard on STORAGE (a database URL) or on NAME's journal file
	$(PY) -m pip install --quiet -e ".[dashboard]"
	$(VENV)/bin/optuna-dashboard $(or $(STORAGE),runs/evolve/$(NAME)/journal.log) --host 127.0.0.1 --port $(PORT)

report: install
	$(PY) -m evolve.study --report-only runs/study/$(NAME)

clean:
	rm -rf runs
