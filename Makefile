# cikgrec: `make interests && make train DATASET=ml1m`. See README.md.
PYTHON   ?= python3
DATASET  ?= ml1m
DATA_DIR ?= data
SEED     ?= 2024
K        ?=
ARGS     ?=
INTERESTS = interests/$(DATASET)/user_interest_clustered.txt

.PHONY: data train bench interests bench-interests test

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

test:  ## the test suite (reads the datasets from $$CIKGREC_DATA, default ../shared/data)
	$(PYTHON) -m pytest -q test_cikgrec.py test_llm_interests.py
