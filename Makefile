# cikgrec: `make interests && make train DATASET=ml1m`. See README.md.
PYTHON   ?= python3
DATASET  ?= ml1m
DATA_DIR ?= data
SEED     ?= 2024
K        ?=
ARGS     ?=
TOP      ?= 20
INTERESTS = interests/$(DATASET)/user_interest_clustered.txt

.PHONY: data demo demo-data train bench interests bench-interests test table1 ablation lightgcn-variants plots \
        prepare stats recommend gpu-window

demo:  ## the first run (about a minute): CIKGRec, LightGCN and popularity on data/demo/, table in runs/demo/compare.md
	$(PYTHON) demo.py $(ARGS)

demo-data:  ## rebuild data/demo/ (synthetic, seeded: the same files every time)
	$(PYTHON) make_demo.py

prepare:  ## your own data: make prepare RAW=ratings.csv NAME=mine [ITEMS=books.csv] [KG=kg.csv] [ARGS=--min-rating 4]
	$(PYTHON) cikgrec_cli.py prepare --interactions "$(RAW)" --name "$(NAME)" --data-dir "$(DATA_DIR)" \
	  $(if $(ITEMS),--items "$(ITEMS)") $(if $(KG),--kg "$(KG)") $(ARGS)

stats:  ## the paper's Table 2 for DATASET
	$(PYTHON) cikgrec_cli.py stats --dataset $(DATASET) --data-dir $(DATA_DIR)

recommend:  ## make recommend RUN=runs/X.json TOP=20 [USERS=ids.txt] [OUT=recs.tsv]: top-TOP items per user
	@$(PYTHON) cikgrec_cli.py recommend --run $(RUN) --k $(TOP) $(if $(USERS),--users $(USERS)) $(if $(OUT),--out $(OUT)) $(ARGS)

data:  ## download the three datasets (verified against upstream git blob ids)
	$(PYTHON) cikgrec_cli.py download --data-dir $(DATA_DIR)

$(DATA_DIR)/$(DATASET)/train.txt:
	$(PYTHON) cikgrec_cli.py download --dataset $(DATASET) --data-dir $(DATA_DIR)

train: $(DATA_DIR)/$(DATASET)/train.txt  ## train, select on validation, test once
	$(PYTHON) cikgrec_cli.py train --dataset $(DATASET) --data-dir $(DATA_DIR) --seed $(SEED) \
	  $(if $(wildcard $(INTERESTS)),--interests $(INTERESTS)) $(ARGS)

bench: $(DATA_DIR)/$(DATASET)/train.txt  ## seconds per epoch / evaluation, peak memory
	$(PYTHON) cikgrec_cli.py bench --dataset $(DATASET) --data-dir $(DATA_DIR) $(ARGS)

interests: $(DATA_DIR)/$(DATASET)/train.txt  ## LLM interests -> interests/<dataset>/
	$(PYTHON) llm_interests.py infer --dataset $(DATASET) --data-dir $(DATA_DIR) $(ARGS)
	$(PYTHON) llm_interests.py cluster --dataset $(DATASET) --data-dir $(DATA_DIR) $(if $(K),--k $(K))

bench-interests:  ## time TF-IDF and k-means at the size of the largest dataset
	$(PYTHON) llm_interests.py bench

table1: $(DATA_DIR)/$(DATASET)/train.txt  ## Table 1 (CIKGRec, LightGCN, SimGCL) over SEEDS seeds (default 5); JOBS=N runs at once
	$(PYTHON) experiments.py tables --table table1 --seeds $(or $(SEEDS),5) $(if $(ONLY),--only $(ONLY)) $(if $(JOBS),--jobs $(JOBS)) --dataset $(DATASET) \
	  --data-dir $(DATA_DIR) $(if $(wildcard $(INTERESTS)),--interests $(INTERESTS)) $(ARGS)

ablation: $(DATA_DIR)/$(DATASET)/train.txt  ## Table 3 (ablations) over SEEDS seeds (default 1)
	$(PYTHON) experiments.py tables --table ablation --seeds $(or $(SEEDS),1) $(if $(ONLY),--only $(ONLY)) $(if $(JOBS),--jobs $(JOBS)) --dataset $(DATASET) \
	  --data-dir $(DATA_DIR) $(if $(wildcard $(INTERESTS)),--interests $(INTERESTS)) $(ARGS)

lightgcn-variants: $(DATA_DIR)/$(DATASET)/train.txt  ## Table 4 (LightGCN on CG/CIG/CKG/CIKG), SEEDS default 1
	$(PYTHON) experiments.py tables --table lightgcn-variants --seeds $(or $(SEEDS),1) $(if $(ONLY),--only $(ONLY)) $(if $(JOBS),--jobs $(JOBS)) --dataset $(DATASET) \
	  --data-dir $(DATA_DIR) $(if $(wildcard $(INTERESTS)),--interests $(INTERESTS)) $(ARGS)

gpu-window: $(DATA_DIR)/$(DATASET)/train.txt  ## a short GPU window: Table 1's 3 rows x SEEDS (1) at once, each cut after MINUTES (8); again continues them
	$(PYTHON) experiments.py tables --table table1 --seeds $(or $(SEEDS),1) --dataset $(DATASET) --data-dir $(DATA_DIR) \
	  --runs-dir $(or $(RUNS_DIR),results/runs) --device $(or $(DEVICE),cuda) --max-minutes $(or $(MINUTES),8) \
	  --jobs $(or $(JOBS),$(shell echo $$((3 * $(or $(SEEDS),1))))) $(if $(wildcard $(INTERESTS)),--interests $(INTERESTS)) $(ARGS)

plots:  ## optional (needs matplotlib): Fig. 3 bars from results/<dataset>/groups.json, Eq. 3 curves
	$(PYTHON) experiments.py plots --results-dir results

test:  ## the test suite (reads the datasets from $$CIKGREC_DATA, default ../shared/data)
	$(PYTHON) -m pytest -q -rs test_cikgrec.py test_cikgrec_cli.py test_cikgrec_prepare.py test_export.py test_llm_interests.py test_new_interests.py test_experiments.py test_demo.py
