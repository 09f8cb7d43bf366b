# cikgrec: `make interests && make train DATASET=ml1m`. See README.md.
PYTHON   ?= python3
DATASET  ?= ml1m
DATA_DIR ?= data
SEED     ?= 2024
K        ?=
ARGS     ?=
INTERESTS = interests/$(DATASET)/user_interest_clustered.txt

.PHONY: data train bench interests bench-interests test table1 ablation lightgcn-variants plots

data:  ## download the three datasets (verified against upstream git blob ids)
	$(PYTHON) cikgrec.py download --data-dir $(DATA_DIR)

$(DATA_DIR)/$(DATASET)/train.txt:
	$(PYTHON) cikgrec.py download --dataset $(DATASET) --data-dir $(DATA_DIR)

train: $(DATA_DIR)/$(DATASET)/train.txt  ## train, select on validation, test once
	$(PYTHON) cikgrec.py train --dataset $(DATASET) --data-dir $(DATA_DIR) --seed $(SEED) \
	  $(if $(wildcard $(INTERESTS)),--interests $(INTERESTS)) $(ARGS)

bench: $(DATA_DIR)/$(DATASET)/train.txt  ## seconds per epoch / evaluation, peak memory
	$(PYTHON) cikgrec.py bench --dataset $(DATASET) --data-dir $(DATA_DIR) $(ARGS)

interests: $(DATA_DIR)/$(DATASET)/train.txt  ## LLM interests -> interests/<dataset>/
	$(PYTHON) llm_interests.py infer --dataset $(DATASET) --data-dir $(DATA_DIR) $(ARGS)
	$(PYTHON) llm_interests.py cluster --dataset $(DATASET) --data-dir $(DATA_DIR) $(if $(K),--k $(K))

bench-interests:  ## time TF-IDF and k-means at the size of the largest dataset
	$(PYTHON) llm_interests.py bench

table1: $(DATA_DIR)/$(DATASET)/train.txt  ## Table 1 (CIKGRec, LightGCN, SimGCL) over SEEDS seeds (default 5)
	$(PYTHON) experiments.py tables --table table1 --seeds $(or $(SEEDS),5) $(if $(ONLY),--only $(ONLY)) --dataset $(DATASET) \
	  --data-dir $(DATA_DIR) $(if $(wildcard $(INTERESTS)),--interests $(INTERESTS)) $(ARGS)

ablation: $(DATA_DIR)/$(DATASET)/train.txt  ## Table 3 (ablations) over SEEDS seeds (default 1)
	$(PYTHON) experiments.py tables --table ablation --seeds $(or $(SEEDS),1) $(if $(ONLY),--only $(ONLY)) --dataset $(DATASET) \
	  --data-dir $(DATA_DIR) $(if $(wildcard $(INTERESTS)),--interests $(INTERESTS)) $(ARGS)

lightgcn-variants: $(DATA_DIR)/$(DATASET)/train.txt  ## Table 4 (LightGCN on CG/CIG/CKG/CIKG), SEEDS default 1
	$(PYTHON) experiments.py tables --table lightgcn-variants --seeds $(or $(SEEDS),1) $(if $(ONLY),--only $(ONLY)) --dataset $(DATASET) \
	  --data-dir $(DATA_DIR) $(if $(wildcard $(INTERESTS)),--interests $(INTERESTS)) $(ARGS)

plots:  ## optional (needs matplotlib): Fig. 3 bars from results/<dataset>/groups.json, Eq. 3 curves
	$(PYTHON) experiments.py plots --results-dir results

test:  ## the test suite (reads the datasets from $$CIKGREC_DATA, default ../shared/data)
	$(PYTHON) -m pytest -q test_cikgrec.py test_llm_interests.py test_experiments.py
