"""CIKGRec: knowledge-aware recommendation with LLM-inferred user interests (Hu et al., AAAI 2025).

The method and what runs it, in the order the data flows. Equation, table and figure numbers are
the paper's; `../shared/REFERENCE.md` has the facts about the authors' code.

    1. Settings       Settings, DATASET_DEFAULTS (the authors' configs), MODELS (the baselines),
                      VARIANTS (every difference between the paper and the authors' code)
    2. Data           load_dataset: the published format, errors naming file, line and value;
                      prepare (your own raw files -> that format), dataset_stats (Table 2)
    3. Split          split_validation: the validation carve-out from train.txt
    4. The CIKG       cikg_edges, Graph (D^-1/2 (A+I) D^-1/2), build_graphs (CIKG, views, GMAE graph)
    5. Fast kernels   SymmetricSpMM, MeanLogSumExp: autograd functions, each equal to a plain expression
    6. The model      class CIKGRec: encode (f_G), bpr_loss (Eq. 10), contrastive_loss (Eqs. 8-9),
                      simgcl_loss, reconstruction_loss (Eqs. 3-7), transe_loss (Eq. 12), loss (Eq. 11)
    7. Sampling       negatives (Eq. 10's i'), TransE triples and corrupted tails
    8. Evaluation     ranking_metrics, evaluate_ranking: full-ranking Recall@K, NDCG@K; top_items
    9. Training       Trainer (batches, optimisers), fit (early stopping on validation, checkpoints,
                      the output lock), a saved run: load_trained, load_run(...).recommend
   10. Commands       bench, download, the command line

    python cikgrec.py train --dataset book-crossing --data-dir ../shared/data
    python cikgrec.py recommend --run runs/book-crossing-seed2024.json --k 20 --out recs.tsv
    python cikgrec.py prepare --interactions ratings.csv --items books.csv --kg kg.csv --name mine
    python cikgrec.py stats --dataset mine
    python cikgrec.py bench --dataset book-crossing --data-dir ../shared/data

The paper's tables, sweeps, Fig. 3-4 and plots are in experiments.py, which imports this file.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

# ----------------------------------------------------------------------------------------------
# 1. Settings
# ----------------------------------------------------------------------------------------------
DATASETS = ("ml1m", "dbbook2014", "book-crossing")
DATA_URL = "https://raw.githubusercontent.com/laowangzi/CIKGRec/{commit}/data/{dataset}/{file}"
DATA_COMMIT = "4cd310f605e8857883a508170e6753dcb05c4e98"
DATA_FILES = ("train.txt", "test.txt", "kg_final.txt", "user_interest_clustered.txt", "item_list.txt",
              "entity_list.txt", "relation_list.txt", "user_list.txt")


@dataclass
class Settings:
    """Every setting of a run. Each field is a command-line option (`--layers 3`)."""
    dataset: str = "ml1m"
    data_dir: str = "data"  # one folder per dataset
    interests: str = ""  # user_interest_clustered.txt to use instead of the dataset's
    interest_nodes: bool = True  # --no-interest-nodes: no interest nodes even where the file exists (Table 3 "w/o UIK")
    out: str = ""  # results JSON; default runs/<dataset>-seed<seed>.json
    seed: int = 2024  # model seed (initialisation, sampling)
    split_seed: int = 0  # validation split seed, separate from the model seed
    select_on: str = "valid"  # valid | test (test = the authors' protocol, no validation split)
    variant: str = "paper"  # paper | authors (VARIANTS: where the paper and their code differ)
    model: str = "cikgrec"  # cikgrec | lightgcn | simgcl: a preset of the settings below (MODELS)
    graph: str = "cikg"  # cikg | cg | cig | ckg: which parts the main graph holds
    device: str = "auto"  # auto | cpu | cuda
    epochs: int = 2000  # maximum epochs
    patience: int = 10  # evaluations without improvement before stopping
    min_epochs: int = 0  # no early stop before this many epochs (0: the authors' protocol)
    max_minutes: float = 0.0  # stop after the epoch in which this many minutes passed (0: no limit)
    resume: bool = False  # continue from the checkpoint beside --out
    refit: bool = False  # after validation selection of epoch E, train E + 1 epochs on all of train.txt, test once
    ks: str = "20,50,100"  # cut-offs K of Recall@K, NDCG@K, Precision@K, HitRatio@K
    # encoder and BPR (Eq. 10)
    dim: int = 64  # embedding dimension D
    layers: int = 3  # LightGCN layers l
    layer0: bool = True  # the final embedding is the mean of layers 0..l (off: 1..l, as SimGCL)
    lr: float = 5e-4  # Adam learning rate
    batch_size: int = 1024  # BPR triples per batch
    lambda1: float = 1.8  # lambda1, weight of BPR, Eq. 11
    l2: float = 5e-5  # L2 on the batch's layer-0 embeddings
    self_loops: bool = True  # D^-1/2 (A+I) D^-1/2 instead of D^-1/2 A D^-1/2
    edge_drop: float = 0.1  # share of undirected CIKG edges dropped in the BPR pass
    node_drop: float = 0.0  # dropout on the layer-0 embedding table, once, before the BPR pass
    # cross-domain contrastive learning (Eqs. 8-9)
    contrast: str = "cross-domain"  # cross-domain (Eqs. 8-9) | simgcl (SimGCL's in-batch rule)
    lambda3: float = 0.03  # lambda3, weight of the contrastive loss, Eq. 11
    tau: float = 0.2  # tau, InfoNCE temperature, Eq. 9
    eps: float = 0.1  # gamma's magnitude: SimGCL noise on view 1, Eq. 8
    # user interest reconstruction, GMAE (Eqs. 3-7)
    lambda2: float = 0.15  # lambda2, weight of the reconstruction loss, Eq. 11
    eta: float = 3.0  # eta, exponent of the cosine loss, Eq. 7
    alpha: float = 0.1  # alpha, initial mask rate, Eq. 3
    omega: float = 0.95  # omega, maximum mask rate, Eq. 3
    mask_epochs: int = 80  # Lambda, epochs to reach omega, Eq. 3
    schedule: str = "exp"  # exp | lin | fixed (fixed: the rate is omega throughout)
    enc_layers: int = 2  # GMAE encoder layers (l-1), Eq. 6
    dec_layers: int = 1  # GMAE decoder layers, Eq. 6
    replace_rate: float = 0.0  # share of masked nodes given another interest node's embedding
    recon_edge_drop: float = 0.0  # edge dropout inside the reconstruction pass
    # TransE (Eq. 12)
    transe: bool = False  # alternate a TransE step on the KG triples after each epoch
    transe_lr: float = 2e-3
    transe_l2: float = 1e-3
    transe_batch: int = 4096
    # output
    eval_batch: int = 1024  # users scored at once in evaluation
    threads: int = 0  # torch threads; 0 keeps torch's default


# The authors' per-dataset configurations (../shared/REFERENCE.md); the rest are Settings defaults.
DATASET_DEFAULTS = {
    "ml1m": dict(layers=3, lr=5e-4, lambda1=1.8, l2=5e-5, edge_drop=0.1, node_drop=0.1, lambda3=0.03,
                 tau=0.2, eps=0.1, lambda2=0.15, eta=3.0, alpha=0.10, omega=0.95, mask_epochs=80,
                 enc_layers=2, replace_rate=0.0, recon_edge_drop=0.0, transe=False),
    "dbbook2014": dict(layers=3, lr=8e-4, lambda1=1.5, l2=1e-5, edge_drop=0.0, node_drop=0.0,
                       lambda3=0.01, tau=0.2, eps=0.1, lambda2=0.03, eta=2.0, alpha=0.05, omega=0.75,
                       mask_epochs=150, enc_layers=2, replace_rate=0.15, recon_edge_drop=0.2,
                       transe=True),
    "book-crossing": dict(layers=4, lr=8e-4, lambda1=1.5, l2=5e-5, edge_drop=0.1, node_drop=0.0,
                          lambda3=0.01, tau=0.15, eps=0.1, lambda2=0.03, eta=2.0, alpha=0.05,
                          omega=0.65, mask_epochs=120, enc_layers=3, replace_rate=0.0,
                          recon_edge_drop=0.0, transe=False),
}

# The baselines of Table 1 are settings of the same model, each at its own paper's definition, on
# top of the dataset's dimension, layers, batch size, learning rate and L2.
BASELINE = dict(graph="cg", lambda1=1.0, lambda2=0.0, self_loops=False, edge_drop=0.0, node_drop=0.0,
                transe=False)
MODELS = {
    "cikgrec": {},
    # LightGCN (He et al. 2020): BPR alone on D^-1/2 A D^-1/2 of the user-item graph, no dropout
    "lightgcn": dict(BASELINE, lambda3=0.0),
    # SimGCL (Yu et al. 2022): LightGCN plus InfoNCE between two noisy views of the same graph, in
    # batch; the final embedding is the mean of layers 1..l (layer 0 left out)
    "simgcl": dict(BASELINE, contrast="simgcl", layer0=False),
}

# Where the paper and the authors' code differ (../shared/REFERENCE.md): each switch once, as
# (paper, authors' code). --variant paper (the default) takes the first, --variant authors the
# second. The graph builders, the model and the training loop read switches(); nothing else
# looks at the variant.
VARIANTS = {
    # Eq. 8's views. Paper: G_R (noised), G_R + G_J, G_R + KG. Authors' code (list aliasing and a
    # src/src typo in its edge construction): the whole CIKG (noised), G_J alone, the KG alone.
    "views": ((("ui",), ("ui", "uj"), ("ui", "kg")), (("ui", "kg", "uj"), ("uj",), ("kg",))),
    # Self-loops of the views. Paper: silent, so as on the CIKG (--self-loops). Authors' code: none
    # on view 1, one on every user and item node of views 2 and 3.
    "view_loops": (("main",) * 3, ("none", "ui", "ui")),
    # Eq. 9's item candidates. Paper: the items of view 3. Authors' code: every entity row of view
    # 3, interest nodes included.
    "item_candidates": ("items", "entities"),
    # The GMAE's graph (Eq. 6). Paper: G, as in the BPR pass. Authors' code: G without self-loops.
    "recon_loops": ("main", "none"),
    # Edge dropout. Paper: silent; we drop whole edges and keep the self-loops. Authors' code: a
    # self-loop is dropped like an edge, then one is added to every node (a kept one counts twice).
    "dropout_readds_loops": (False, True),
    # Eq. 12's distances. Paper: ||h + r - t||. Authors' code: squared.
    "transe_squared": (False, True),
    # TransE triples. Paper: the KG's, with inverse relations. Authors' code: also user->item and
    # item->user "interact" triples.
    "transe_interactions": (False, True),
    # TransE batches. Paper: silent; we shuffle all triples into max(1, n // batch) batches.
    # Authors' code (KGAT's sampler): heads first, then one triple of each head; n_kg // batch
    # batches, n_kg counting KG triples and inverses only (we add: at least 1, cases.md T10).
    "transe_head_first": (False, True),
}


def switches(variant: str) -> SimpleNamespace:
    """The VARIANTS column of `variant` ("paper" or "authors"): switches("authors").views, ..."""
    col = ("paper", "authors").index(variant)
    return SimpleNamespace(**{name: pair[col] for name, pair in VARIANTS.items()})


# Changes to the computation since results files were first written, as (version, what, runs it
# changes). fit records definition(s) in every results file; experiments.py refuses a file made
# under another definition. Runs that no change touches (e.g. CIKGRec on book-crossing) stay at 1.
DEFINITION_CHANGES = (
    (2, "baselines at their own papers' definitions (no self-loops, no dropout, BPR weight 1; SimGCL "
        "without layer 0)", lambda s: s.model != "cikgrec"),
    (2, "GMAE replacement donors drawn from the interest rows",
     lambda s: s.replace_rate > 0 and s.lambda2 > 0 and s.interest_nodes),
    (2, "node dropout once on the layer-0 table", lambda s: s.node_drop > 0),
    (2, "--variant authors: self-loops under edge dropout, KGAT's head-first TransE batches",
     lambda s: s.variant == "authors" and (s.edge_drop > 0 or s.recon_edge_drop > 0 or s.transe)),
)


def definition(s: Settings) -> int:
    """The version of the computation a run with settings s performs (DEFINITION_CHANGES)."""
    return max([v for v, _, changes in DEFINITION_CHANGES if changes(s)], default=1)


CHOICES = {"select_on": ("valid", "test"), "variant": ("paper", "authors"), "model": tuple(MODELS),
           "graph": ("cikg", "cg", "cig", "ckg"), "device": ("auto", "cpu", "cuda"),
           "schedule": ("exp", "lin", "fixed"), "contrast": ("cross-domain", "simgcl")}


MAX_THREADS = 4 * (os.cpu_count() or 16)  # torch crashes on absurd thread counts
MAX_K = 100_000  # largest cut-off of --ks


class SettingsError(ValueError):
    """A setting that cannot work (the command line reports it and exits with code 2)."""


def option(name: str) -> str:
    """The command-line flag of a Settings field: min_epochs -> --min-epochs."""
    return "--" + name.replace("_", "-")


def check_settings(s: Settings) -> Settings:
    """Reject settings that cannot work, before anything is read or written.

    Raises SettingsError naming the setting and its value.
    """
    for name, allowed in CHOICES.items():
        if getattr(s, name) not in allowed:
            raise SettingsError(f"{option(name)} must be one of {', '.join(allowed)}, "
                                f"got {getattr(s, name)!r}")
    for f in dataclasses.fields(Settings):
        if f.type in ("float", float) and not math.isfinite(getattr(s, f.name)):
            raise SettingsError(f"{option(f.name)} must be a finite number, got {getattr(s, f.name)}")
    rules = ((lambda v: v >= 1, "must be at least 1", ("dim", "layers", "dec_layers", "batch_size", "eval_batch",
                                                        "transe_batch", "mask_epochs", "epochs", "patience")),
             (lambda v: v >= 0, "must be >= 0", ("enc_layers", "min_epochs", "max_minutes", "threads", "seed",
                                                 "split_seed", "l2", "transe_l2", "lambda1", "lambda2", "lambda3",
                                                 "eps")),
             (lambda v: v < 2**32, "must be < 2**32", ("seed", "split_seed")),  # numpy's and torch's generators
             (lambda v: v > 0, "must be > 0", ("lr", "transe_lr", "tau")),
             (lambda v: 0 <= v < 1, "must be in [0, 1)", ("edge_drop", "node_drop", "replace_rate", "recon_edge_drop")),
             (lambda v: 0 <= v <= 1, "is a rate in [0, 1]", ("alpha", "omega")),
             (lambda v: v >= 1, "must be >= 1 (Eq. 7)", ("eta",)),
             (lambda v: v <= MAX_THREADS, f"must be at most {MAX_THREADS} (4 per CPU of this machine)", ("threads",)))
    for ok, message, names in rules:
        for name in names:
            if not ok(getattr(s, name)):
                raise SettingsError(f"{option(name)} {message}, got {getattr(s, name)}")
    if s.schedule == "exp" and s.alpha <= 0.0:
        raise SettingsError(f"--schedule exp needs --alpha > 0 (Eq. 3 divides by it), got {s.alpha}")
    try:
        ks = parse_ks(s.ks)
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise SettingsError(f"--ks must be comma-separated positive integers, got {s.ks!r}")
    if max(ks) > MAX_K:  # a cut-off is a length of a ranked list; the metrics hold K columns per user
        raise SettingsError(f"--ks {max(ks)}: a cut-off must be at most {MAX_K:,}")
    return s


def parse_ks(text: str) -> list[int]:
    """'20,50,100' -> [20, 50, 100]. Raises ValueError on anything else."""
    return sorted({int(k) for k in text.split(",") if k.strip()})


# ----------------------------------------------------------------------------------------------
# 2. Data
# ----------------------------------------------------------------------------------------------
class DataError(Exception):
    """Bad input data: carries the file, the line number (0 = the whole file) and the problem."""

    def __init__(self, path, line: int, message: str):
        self.path, self.line, self.message = str(path), line, message
        where = f"{self.path}, line {line}" if line else self.path
        super().__init__(f"{where}: {message}")


MAX_ID = 2**31 - 2  # the sparse adjacency indexes nodes with int32


def _open_text(path: Path):
    """open() for reading, with DataError (not a traceback) on a folder, a missing or an
    unreadable file."""
    if path.is_dir():
        raise DataError(path, 0, "is a folder, not a file")
    try:
        return open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise DataError(path, 0, "file not found") from None
    except OSError as e:
        raise DataError(path, 0, f"cannot read it ({e.strerror})") from None


def _int_rows(path: Path, width: int | None = None):
    """Yield (line number, list of ints) for each non-blank line of a whitespace-separated file.

    width: the exact number of fields required (None: at least one). Raises DataError naming the
    file, line and offending value on a field that is not a plain id (ASCII digits, 0..MAX_ID), a
    wrong field count, an unreadable file or one with no data lines.
    """
    seen_data = False
    with _open_text(path) as f:
        for no, line in enumerate(f, 1):
            if no == 1 and line.startswith("\ufeff"):
                raise DataError(path, 1, "the file starts with a byte-order mark (BOM, as some editors save UTF-8):"
                                         " save it as plain UTF-8 without a BOM")
            fields = line.split()
            if not fields:
                continue
            if width is not None and len(fields) != width:
                raise DataError(path, no, f"expected {width} fields, got {len(fields)}: {line.strip()[:80]!r}")
            for x in fields:
                if not (x.isascii() and x.isdigit()):  # int() would also take '+5', '1_0', '٣'
                    negative = x[:1] == "-" and x[1:].isascii() and x[1:].isdigit()
                    raise DataError(path, no, f"ids must be >= 0, got {x}" if negative
                                    else f"expected integer ids, got {x!r}")
            values = [int(x) for x in fields]
            if max(values) > MAX_ID:
                raise DataError(path, no, f"id {max(values)} is too large (at most {MAX_ID})")
            seen_data = True
            yield no, values
    if not seen_data:
        raise DataError(path, 0, "the file is empty")


def read_user_items(path, n_items: int | None = None, n_users: int | None = None,
                    notes: list | None = None) -> dict[int, list[int]]:
    """Read a train.txt/test.txt file: one line `user item item ...` per user.

    Blank lines are skipped, repeated items of a user are kept once (first occurrence order), and
    a user on several lines gets the union (one note in `notes` counts such lines, with three
    examples; identical repeated lines are no news). A
    line with only a user id gives that user no items. Returns {user id: [item ids]}. Raises
    DataError (file, line, value) on a malformed line, an item id >= n_items or a user id >=
    n_users (when given).
    """
    path = Path(path)
    out: dict[int, list[int]] = {}
    first_line: dict[int, tuple] = {}
    merged = []  # (line, user, first line): counted in one note, with three examples
    for no, values in _int_rows(path):
        user, items = values[0], values[1:]
        if n_items is not None and items and max(items) >= n_items:
            raise DataError(path, no, f"item id {max(items)} out of range: there are {n_items} items "
                                      f"(ids 0..{n_items - 1}, item_list.txt)")
        if n_users is not None and user >= n_users:
            raise DataError(path, no, f"user id {user} out of range: user_list.txt has {n_users} users")
        if user in first_line and first_line[user][1] != values:
            merged.append((no, user, first_line[user][0]))
        first_line.setdefault(user, (no, values))
        known = out.setdefault(user, [])
        seen = set(known)
        for i in items:
            if i not in seen:
                seen.add(i)
                known.append(i)
    if merged and notes is not None:
        examples = "; ".join(f"line {no}: user {u} also on line {first}" for no, u, first in merged[:3])
        notes.append(f"{path}: {len(merged)} lines repeat the user of an earlier line; items merged "
                     f"(e.g. {examples})")
    return out


def id_list_rows(path, fields: str = "org_id remap_id"):
    """Yield the rows of an id list (user_list.txt, entity_list.txt, relation_list.txt,
    item_list.txt: `org_id remap_id [name...]`, header first, remap ids 0, 1, 2... in order), each
    split into at most 3 fields (a name may hold spaces). Blank lines are skipped. A first line
    whose second field is an id is a row (the file has no header) and is read as one. Raises
    DataError naming the line of a row without a remap id (`fields` names the expected form), with
    one out of order, or a file starting with a byte-order mark."""
    with _open_text(path) as f:
        rows = 0
        for no, line in enumerate(f, 1):
            if no == 1 and line.startswith("\ufeff"):
                raise DataError(path, 1, "the file starts with a byte-order mark (BOM, as some editors save UTF-8):"
                                         " save it as plain UTF-8 without a BOM")
            if no == 1 and not (len(line.split()) >= 2 and line.split()[1].isdigit()) or not line.strip():
                continue  # the header (`org_id remap_id ...`), or a blank line
            parts = line.rstrip("\n").split(None, 2)
            if len(parts) < 2 or not parts[1].isdigit():
                raise DataError(path, no, f"expected `{fields}`, got {line.strip()[:80]!r}")
            if int(parts[1]) != rows:
                raise DataError(path, no, f"remap id {parts[1]} out of order: expected {rows}")
            rows += 1
            yield parts


def list_size(path) -> int | None:
    """Rows of an id list (id_list_rows; user_list.txt, entity_list.txt, relation_list.txt).
    None when the file does not exist. Raises DataError as id_list_rows."""
    path = Path(path)
    return sum(1 for _ in id_list_rows(path)) if path.exists() else None


def read_item_names(path) -> list[str]:
    """Read item_list.txt (`org_id remap_id name...`, header first): names indexed by remap id.

    The name is everything after the second field (book-crossing titles contain spaces);
    'None' marks an item without a name and is returned as ''. Raises DataError on a line
    without a remap id or with remap ids out of order (id_list_rows), or an empty file.
    """
    path = Path(path)
    names = [parts[2].strip() if len(parts) > 2 else "" for parts in id_list_rows(path, "org_id remap_id name")]
    if not names:
        raise DataError(path, 0, "the file is empty")
    return ["" if name == "None" else name for name in names]


def item_title(name: str) -> str:
    """A readable title of an item name: a DBpedia URI becomes its last path segment, URL-decoded,
    with '_' as spaces (`http://dbpedia.org/resource/Where's_My_Cow%3F` -> "Where's My Cow?");
    any other name (book-crossing titles) is returned stripped. '' stays ''."""
    name = name.strip()
    if name.startswith(("http://", "https://")):
        return urllib.parse.unquote(name.rstrip("/").rsplit("/", 1)[-1]).replace("_", " ").strip()
    return name


@dataclass
class Dataset:
    """A dataset in the published format, ids as in the files except interests (remapped 0..J-1).

    train/test: one int64 array of item ids per user (index = user id), possibly empty.
    kg: int64 [n_triples, 3] (head entity, relation, tail entity); items are entities 0..n_items-1.
    interest_edges: int64 [n_edges, 2] (user, interest index), unique.
    interest_ids: the interest id of the file for each interest index (for reading results back).
    """
    name: str
    n_users: int
    n_items: int
    n_entities: int
    n_relations: int
    n_interests: int
    train: list
    test: list
    kg: np.ndarray
    interest_edges: np.ndarray
    interest_ids: np.ndarray
    item_names: list = field(default_factory=list)
    interest_file: str = ""
    warnings: list = field(default_factory=list)


def check_dense(path: Path, what: str, ids: set) -> None:
    """Ids are numbered 0, 1, 2, ...: one far above the number of distinct ids is a DataError
    naming the first line of `path` that holds it."""
    if ids and max(ids) + 1 > 2 * len(ids) + 1000:
        with _open_text(path) as f:
            line = next((no for no, text in enumerate(f, 1) if str(max(ids)) in text.split()), 0)
        raise DataError(path, line, f"{what} id {max(ids)} but only {len(ids)} distinct {what} ids: ids must be "
                                    f"numbered 0, 1, 2, ... without large gaps (or list them in {what}_list.txt)")


def dataset_folder(folder) -> Path:
    """The dataset folder as a Path; DataError when it does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, 0, "dataset folder not found (run `make data`, or set --data-dir)")
    return folder


def load_dataset(folder, interests_file=None, name: str = "", with_interests: bool = True) -> Dataset:
    """Read a dataset folder: train.txt, test.txt (required), item_list.txt, kg_final.txt,
    user_interest_clustered.txt (optional: each missing one is noted in `warnings`).

    Items are counted by item_list.txt where it exists (else by the largest item id seen); users
    and entities by the largest id seen, which must lie inside user_list.txt, entity_list.txt and
    relation_list.txt where those exist. The entities are the items plus the KG's entities;
    interest ids must lie above every entity id and are remapped to 0..J-1 in sorted order
    (with_interests=False: the interest file is not read). Raises DataError naming file, line
    and value.
    """
    folder = dataset_folder(folder)
    notes = []
    names = read_item_names(folder / "item_list.txt") if (folder / "item_list.txt").exists() else []
    n_items = len(names) or None
    listed_users, listed_entities, listed_relations = (
        list_size(folder / f) for f in ("user_list.txt", "entity_list.txt", "relation_list.txt"))
    train = read_user_items(folder / "train.txt", n_items, listed_users, notes)
    test = read_user_items(folder / "test.txt", n_items, listed_users, notes)
    if n_items is None:
        n_items = 1 + max(max((max(v) for v in d.values() if v), default=-1) for d in (train, test))
    n_users = 1 + max(max(train), max(test))
    for what, listed in (("user", listed_users), ("item", names)):
        if listed:
            continue
        ids = {f: set(d) if what == "user" else {i for v in d.values() for i in v}
               for f, d in (("train.txt", train), ("test.txt", test))}
        worst = max(ids, key=lambda f: max(ids[f], default=-1))  # the file with the largest id
        check_dense(folder / worst, what, ids["train.txt"] | ids["test.txt"])
    overlap = sum(len(set(test[u]) & set(train.get(u, ()))) for u in test)
    if overlap:
        notes.append(f"{overlap} test items are also training items of the same user: they are "
                     "excluded from ranking and can never be hit")

    kg_path = folder / "kg_final.txt"
    if kg_path.exists():
        rows = []
        for no, (h, r, t) in _int_rows(kg_path, 3):
            if listed_entities is not None and max(h, t) >= listed_entities:
                raise DataError(kg_path, no, f"entity id {max(h, t)} out of range: entity_list.txt has "
                                             f"{listed_entities} entities")
            if listed_relations is not None and r >= listed_relations:
                raise DataError(kg_path, no, f"relation id {r} out of range: relation_list.txt has "
                                             f"{listed_relations} relations")
            rows.append((h, r, t))
        kg = np.array(rows, dtype=np.int64)
    else:
        notes.append(f"{kg_path} not found: running without item-side knowledge (no KG edges)")
        kg = np.zeros((0, 3), dtype=np.int64)
    if listed_entities is None and len(kg):
        check_dense(kg_path, "entity", set(kg[:, [0, 2]].ravel().tolist()) | set(range(n_items)))
    n_entities = max(n_items, int(kg[:, [0, 2]].max()) + 1 if len(kg) else 0)
    n_relations = int(kg[:, 1].max()) + 1 if len(kg) else 0

    int_path = Path(interests_file) if interests_file else folder / "user_interest_clustered.txt"
    edges = np.zeros((0, 2), dtype=np.int64)
    raw_ids = np.zeros(0, dtype=np.int64)
    if not with_interests:
        pass
    elif int_path.exists() or interests_file:
        rows = []
        for no, (u, j) in _int_rows(int_path, 2):
            if u >= n_users:
                raise DataError(int_path, no, f"user id {u} out of range: train/test have {n_users} users")
            if j < n_entities:
                raise DataError(int_path, no, f"interest id {j} collides with the entity ids 0..{n_entities - 1}"
                                              " (interest ids are numbered after the largest entity id)")
            rows.append((u, j))
        pairs = np.unique(np.array(rows, dtype=np.int64), axis=0)  # duplicate lines count once
        raw_ids, idx = np.unique(pairs[:, 1], return_inverse=True)
        edges = np.stack([pairs[:, 0], idx.reshape(-1)], axis=1)
    else:
        notes.append(f"{int_path} not found: running without interest nodes")

    as_arrays = lambda d: [np.array(d.get(u, []), dtype=np.int64) for u in range(n_users)]
    return Dataset(name or folder.name, n_users, n_items, n_entities, n_relations, len(raw_ids),
                   as_arrays(train), as_arrays(test), kg, edges, raw_ids, names,
                   str(int_path) if len(raw_ids) else "", notes)


# -- your own data: prepare (raw files -> this format) and stats (the paper's Table 2) ------------
PREPARED_FILES = ("train.txt", "test.txt", "item_list.txt", "user_list.txt", "kg_final.txt", "entity_list.txt",
                  "relation_list.txt", "stats.md")
SEPARATORS = {"tab": "\t", "comma": ",", "semicolon": ";", "space": None}


def _raw_rows(path, sep: str = "auto", rest_after: int = 0):
    """Yield (line number, fields) of a raw CSV, TSV or whitespace-separated file (blank lines
    skipped, fields stripped, a UTF-8 byte-order mark accepted, undecodable bytes replaced).

    sep: "auto" (tab if the first line has one, else comma, else semicolon, else whitespace) or a
    key of SEPARATORS. CSV quoting is honoured. rest_after (whitespace files): split at most that
    many times, so the last field keeps its spaces (an item's name). Raises DataError on a missing
    or unreadable file and on one with no data line."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, 0, "is a folder, not a file")
    try:
        f = open(path, encoding="utf-8-sig", errors="replace", newline="")
    except FileNotFoundError:
        raise DataError(path, 0, "file not found") from None
    except OSError as e:
        raise DataError(path, 0, f"cannot read it ({e.strerror})") from None
    import csv
    with f:
        first = next((line for line in f if line.strip()), "")
        f.seek(0)
        if first and first[0] == "\ufeff":
            first = first[1:]
        delimiter = (SEPARATORS[sep] if sep != "auto" else
                     next((d for d in ("\t", ",", ";") if d in first), None))
        seen = False
        if delimiter is None:
            for no, line in enumerate(f, 1):
                fields = line.lstrip("\ufeff").split(None, rest_after) if rest_after else line.split()
                if fields:
                    seen = True
                    yield no, [x.strip() for x in fields]
        else:
            reader = csv.reader(f, delimiter=delimiter)
            for fields in reader:
                fields = [x.strip() for x in fields]
                if any(fields):
                    seen = True
                    yield reader.line_num, fields
    if not seen:
        raise DataError(path, 0, "the file is empty")


def _columns(path, first: list, spec: dict, required: tuple, header: str = "auto") -> tuple[dict, bool]:
    """Where each column of a raw file is: ({role: 0-based index or None}, whether line 1 is a
    header). spec: {role: a header name, or a 1-based position as digits}; roles not in
    `required` may be absent (index None). header "auto": line 1 is a header when it names a
    required column. Without a header, columns given by name fall back to the order of `spec`
    where that name is the role's own (user, item, rating, timestamp: positions 1, 2, 3, 4).
    Raises DataError naming the file and the missing column."""
    lowered = [x.lower() for x in first]
    names = {role: str(v).lower() for role, v in spec.items() if not str(v).isdigit()}
    has_header = (header == "yes" or header == "auto" and any(names.get(r) in lowered for r in required))
    where = {}
    for pos, (role, v) in enumerate(spec.items()):
        v = str(v)
        if v.isdigit():
            if int(v) < 1:
                raise DataError(path, 0, f"column positions count from 1, got {role} column {v}")
            where[role] = int(v) - 1
        elif has_header and v.lower() in lowered:
            where[role] = lowered.index(v.lower())
        elif has_header:
            if role in required:
                raise DataError(path, 1, f"no column {v!r} in the header (columns: {', '.join(first)[:200]}); "
                                         f"name the {role} column with --{role}-col NAME or a position")
            where[role] = None
        elif v.lower() == role:  # the default name, no header: the column order
            where[role] = pos if role in required or pos < len(first) else None
        else:
            raise DataError(path, 1, f"the {role} column is named {v!r}, but the first line is not a header "
                                     f"naming it ({', '.join(first)[:120]!r}); give its position instead")
    return where, has_header


def _number(path, no: int, what: str, text: str) -> float:
    """A rating or timestamp as a finite float; DataError naming file, line and value otherwise."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise DataError(path, no, f"{what} must be a number, got {text[:40]!r}")
    return v


def _plain_id(path, no: int, what: str, text: str) -> str:
    """An original id as the id lists keep it: not empty, no whitespace inside."""
    if not text:
        raise DataError(path, no, f"empty {what} id")
    if any(c.isspace() for c in text):
        raise DataError(path, no, f"{what} id {text[:40]!r} holds whitespace, which the id lists cannot keep")
    return text


def n_test_items(n: int) -> int:
    """How many of a user's n interactions go to test in prepare's 8:2 split: round-half-up(n/5),
    at most n-1 (n=1 -> 0, n=5 -> 1, n=12 -> 2, n=13 -> 3)."""
    return max(0, min(int(math.floor(n / 5 + 0.5)), n - 1))


def prepare(interactions, name: str, data_dir="data", items=None, kg=None, user_col="user", item_col="item",
            rating_col="rating", time_col="timestamp", name_col="name", header: str = "auto", sep: str = "auto",
            min_rating: float | None = None, min_user_interactions: int = 5, split_seed: int = 0,
            force: bool = False) -> dict:
    """Raw files -> a dataset folder `data_dir/name/` in the published format, the paper's way.

    interactions: CSV/TSV/whitespace file with columns user, item and optionally rating and
    timestamp (by header name, or by position: *_col "3" is the third column). items: optional
    file (item, name). kg: optional triples file (head, relation, tail); a head or tail equal to
    an item's original id is that item, any other value an entity (numbered after the items).
    Processing: duplicate (user, item) pairs merged (highest rating, earliest time); with
    min_rating, only pairs rated >= min_rating kept; users with fewer than min_user_interactions
    pairs dropped; each user's pairs split 8:2 (n_test_items), the latest to test where
    timestamps exist, else at random (split_seed). Items are written in time order where
    timestamps exist (else file order); users and items are numbered in order of first
    appearance. Writes train.txt, test.txt, item_list.txt, user_list.txt, entity_list.txt,
    relation_list.txt, kg_final.txt (with a KG) and stats.md. Returns the stats (dataset_stats)
    plus "processing" (what each rule removed). Raises DataError (file, line, value) on bad input,
    an empty result or a KG that touches no item, and SettingsError for an existing folder
    without force; nothing is written then.
    """
    if min_user_interactions < 1:
        raise SettingsError(f"--min-user-interactions must be at least 1, got {min_user_interactions}")
    if sep not in ("auto", *SEPARATORS):
        raise SettingsError(f"--sep must be one of auto, {', '.join(SEPARATORS)}, got {sep!r}")
    if header not in ("auto", "yes", "no"):
        raise SettingsError(f"--header must be auto, yes or no, got {header!r}")
    if not name or any(c in name for c in "/\\") or name in (".", ".."):
        raise SettingsError(f"--name must be a folder name, got {name!r}")
    folder = Path(data_dir) / name
    present = [f for f in PREPARED_FILES + ("user_interest_clustered.txt",) if (folder / f).exists()]
    if present and not force:
        raise SettingsError(f"{folder} already holds a dataset ({', '.join(present[:3])}): give --force to replace "
                            "it, or another --name")
    path = Path(interactions)
    rows = _raw_rows(path, sep)
    no, first = next(rows)
    spec = {"user": user_col, "item": item_col, "rating": rating_col, "timestamp": time_col}
    where, has_header = _columns(path, first, spec, ("user", "item"), header)
    if min_rating is not None and where["rating"] is None:
        raise DataError(path, 0, f"--min-rating {min_rating:g} needs a rating column, and there is none "
                                 f"(columns: {', '.join(first)[:120]})")
    width = 1 + max(v for v in where.values() if v is not None)
    pairs: dict[tuple, list] = {}  # (user, item) -> [rating, time, first order]
    lines = 0
    for no, fields in (rows if has_header else _chain_first(no, first, rows)):
        if len(fields) < width:
            raise DataError(path, no, f"expected at least {width} fields, got {len(fields)}: {','.join(fields)[:80]!r}")
        u = _plain_id(path, no, "user", fields[where["user"]])
        i = _plain_id(path, no, "item", fields[where["item"]])
        r = _number(path, no, "the rating", fields[where["rating"]]) if where["rating"] is not None else None
        t = _number(path, no, "the timestamp", fields[where["timestamp"]]) if where["timestamp"] is not None else None
        lines += 1
        known = pairs.get((u, i))
        if known is None:
            pairs[(u, i)] = [r, t, lines]
        else:
            if r is not None:
                known[0] = max(known[0], r)
            if t is not None:
                known[1] = min(known[1], t)
    all_items = {i for _, i in pairs}
    users_read = len({u for u, _ in pairs})
    kept = pairs if min_rating is None else {k: v for k, v in pairs.items() if v[0] >= min_rating}
    per_user: dict[str, list] = {}
    for (u, i), (r, t, order) in kept.items():
        per_user.setdefault(u, []).append((t if t is not None else 0.0, order, i))
    by_rating = users_read - len(per_user)
    short = [u for u, v in per_user.items() if len(v) < min_user_interactions]
    for u in short:
        del per_user[u]
    processing = {"lines": lines, "pairs": len(pairs), "duplicates_merged": lines - len(pairs),
                  "pairs_below_min_rating": len(pairs) - len(kept), "users_read": users_read,
                  "users_removed_by_min_rating": by_rating, "users_removed_by_min_interactions": len(short),
                  "min_rating": min_rating, "min_user_interactions": min_user_interactions,
                  "split": "by time" if where["timestamp"] is not None else f"random (split seed {split_seed})"}
    if not per_user:
        rules = ([f"{by_rating} had no rating >= {min_rating:g} (--min-rating)"] if min_rating is not None else []) + \
                [f"{len(short)} had fewer than {min_user_interactions} interactions (--min-user-interactions)"]
        raise DataError(path, 0, f"no user is left after filtering: of {users_read} users, " + "; ".join(rules))
    # dense ids in order of first appearance; each user's items in time order (else file order)
    user_ids = sorted(per_user, key=lambda u: min(o for _, o, _ in per_user[u]))
    rng = np.random.default_rng(split_seed)
    train, test = [], []
    for u in user_ids:
        events = sorted(per_user[u])  # (time, file order, item): time order, ties in file order
        k = n_test_items(len(events))
        if where["timestamp"] is not None:
            chosen = set(range(len(events) - k, len(events)))
        else:
            chosen = set(rng.choice(len(events), size=k, replace=False).tolist()) if k else set()
        train.append([i for n_, (_, _, i) in enumerate(events) if n_ not in chosen])
        test.append([i for n_, (_, _, i) in enumerate(events) if n_ in chosen])
    first_seen = {}
    for (u, i), (_, _, order) in pairs.items():
        if u in per_user and (u, i) in kept and (i not in first_seen or order < first_seen[i]):
            first_seen[i] = order
    item_ids = sorted(first_seen, key=first_seen.get)
    item_index = {i: n_ for n_, i in enumerate(item_ids)}
    names = _read_item_names_raw(items, item_col, name_col, header, sep) if items else {}
    kg_rows, entity_ids, relation_ids, kg_info = (_read_kg_raw(kg, item_index, all_items | set(names), header, sep)
                                                  if kg else ([], [], [], {}))
    processing.update(kg_info)

    # everything is read and checked: write
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("user_interest_clustered.txt", "kg_final.txt"):  # with --force: the old data's
        if (folder / stale).exists():
            (folder / stale).unlink()
    clean = lambda text: " ".join(text.split()) or "None"
    _write_lines(folder / "train.txt", [" ".join(map(str, [n_] + [item_index[i] for i in v])) for n_, v in enumerate(train)])
    _write_lines(folder / "test.txt", [" ".join(map(str, [n_] + [item_index[i] for i in v])) for n_, v in enumerate(test)])
    _write_lines(folder / "user_list.txt", ["org_id remap_id"] + [f"{u} {n_}" for n_, u in enumerate(user_ids)])
    _write_lines(folder / "item_list.txt", ["org_id remap_id item_name"]
                 + [f"{i} {n_} {clean(names.get(i, ''))}" for n_, i in enumerate(item_ids)])
    _write_lines(folder / "entity_list.txt", ["org_id remap_id entity_name"]
                 + [f"{i} {n_} {clean(names.get(i, ''))}" for n_, i in enumerate(item_ids)]
                 + [f"{'_'.join(e.split())} {len(item_ids) + n_} {clean(e)}" for n_, e in enumerate(entity_ids)])
    _write_lines(folder / "relation_list.txt", ["org_id remap_id"]
                 + [f"{'_'.join(r.split())} {n_}" for n_, r in enumerate(relation_ids)])
    if kg_rows:
        _write_lines(folder / "kg_final.txt", [f"{h} {r} {t}" for h, r, t in kg_rows])
    st = dataset_stats(folder)
    st["processing"] = processing
    (folder / "stats.md").write_text(stats_markdown(name, st))
    return st


def _chain_first(no, first, rows):
    yield no, first
    yield from rows


def _write_lines(path: Path, lines: list) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def _read_item_names_raw(path, item_col, name_col, header, sep) -> dict:
    """{original item id: name} from a raw items file (item, name)."""
    path = Path(path)
    rows = _raw_rows(path, sep, rest_after=1)
    no, first = next(rows)
    spec = {"item": item_col if not str(item_col).isdigit() else "item", "name": name_col}
    where, has_header = _columns(path, first, spec, ("item", "name"), header)
    names = {}
    for no, fields in (rows if has_header else _chain_first(no, first, rows)):
        if len(fields) <= max(where.values()):
            raise DataError(path, no, f"expected at least {max(where.values()) + 1} fields (item, name), "
                                      f"got {len(fields)}: {','.join(fields)[:80]!r}")
        names.setdefault(_plain_id(path, no, "item", fields[where["item"]]), fields[where["name"]])
    return names


def _read_kg_raw(path, item_index: dict, item_like: set, header, sep) -> tuple:
    """(triples as dense (head, relation, tail), entity original ids, relation names, counts) from
    a raw KG file. A head or tail in item_index is that item; one that is an item id dropped by
    the filtering (in item_like) drops its triple; any other value is an entity."""
    path = Path(path)
    rows = _raw_rows(path, sep)
    no, first = next(rows)
    where, has_header = _columns(path, first, {"head": "head", "relation": "relation", "tail": "tail"},
                                 ("head", "relation", "tail"), header)
    entities, relations, triples, dropped, example, read = {}, {}, set(), 0, None, 0
    node = lambda x: item_index[x] if x in item_index else len(item_index) + entities.setdefault(x, len(entities))
    touching = 0
    for no, fields in (rows if has_header else _chain_first(no, first, rows)):
        if len(fields) < 3:
            raise DataError(path, no, f"expected 3 fields (head, relation, tail), got {len(fields)}: "
                                      f"{','.join(fields)[:80]!r}")
        h, r, t = (fields[where[k]] for k in ("head", "relation", "tail"))
        read += 1
        for what, x in (("head", h), ("relation", r), ("tail", t)):
            if not x:
                raise DataError(path, no, f"empty {what}")
        if (h in item_like and h not in item_index) or (t in item_like and t not in item_index):
            dropped += 1
            continue
        example = example or (no, h, t)
        touching += h in item_index or t in item_index
        triples.add((node(h), relations.setdefault(r, len(relations)), node(t)))
    if not touching:
        where_ = f" (e.g. line {example[0]}: head {example[1][:40]!r}, tail {example[2][:40]!r})" if example else ""
        raise DataError(path, 0, f"no head or tail is one of the items' ids{where_}: the KG would connect to nothing "
                                 "(heads and tails that are items must be written as the interactions file's item ids)")
    info = {"kg_lines": read, "kg_triples": len(triples), "kg_triples_of_removed_items": dropped}
    return sorted(triples), list(entities), list(relations), info


def dataset_stats(folder) -> dict:
    """The paper's Table 2 for a dataset folder: users, items, interactions (train + test pairs),
    density (interactions / (users x items)), entities (the distinct heads and tails of the KG
    triples, items among them, as the paper counts), relations and triples. Raises DataError as
    load_dataset."""
    ds = load_dataset(folder, with_interests=True)
    interactions = sum(len(x) for x in ds.train) + sum(len(x) for x in ds.test)
    kg_nodes = np.unique(ds.kg[:, [0, 2]]) if len(ds.kg) else np.zeros(0, dtype=np.int64)
    return {"dataset": ds.name, "users": ds.n_users, "items": ds.n_items, "interactions": interactions,
            "density": interactions / max(ds.n_users * ds.n_items, 1), "entities": len(kg_nodes),
            "entities_that_are_items": int((kg_nodes < ds.n_items).sum()),
            "relations": len(np.unique(ds.kg[:, 1])) if len(ds.kg) else 0, "triples": len(ds.kg),
            "interest_nodes": ds.n_interests,
            "users_with_interests": len(np.unique(ds.interest_edges[:, 0])) if len(ds.interest_edges) else 0,
            "warnings": ds.warnings}


def stats_markdown(name: str, st: dict) -> str:
    """dataset_stats (and prepare's processing, where present) as the rows of the paper's Table 2."""
    lines = [f"# {name}", "", "| dataset | users | items | interactions | density | entities | relations | triples |",
             "|---|---|---|---|---|---|---|---|",
             f"| {name} | {st['users']:,} | {st['items']:,} | {st['interactions']:,} | {100 * st['density']:.2f}% | "
             f"{st['entities']:,} | {st['relations']:,} | {st['triples']:,} |", "",
             f"Entities: the distinct heads and tails of the KG triples ({st['entities_that_are_items']:,} of them items),"
             " as the paper's Table 2 counts them. Interest nodes: "
             f"{st['interest_nodes']:,} ({st['users_with_interests']:,} users have one)."]
    p = st.get("processing")
    if p:
        rating = (f"{p['pairs_below_min_rating']:,} pairs rated below {p['min_rating']:g} dropped "
                  f"(users left without one: {p['users_removed_by_min_rating']:,})" if p["min_rating"] is not None
                  else "no rating filter")
        lines += ["", f"Made by `cikgrec.py prepare` from {p['lines']:,} lines: {p['duplicates_merged']:,} duplicate "
                      f"pairs merged; {rating}; {p['users_removed_by_min_interactions']:,} of {p['users_read']:,} users "
                      f"with fewer than {p['min_user_interactions']} interactions dropped; split 8:2 {p['split']}."]
        if "kg_lines" in p:
            lines.append(f"KG: {p['kg_lines']:,} lines, {p['kg_triples_of_removed_items']:,} of them dropped with their "
                         f"filtered-out items; {p['kg_triples']:,} distinct triples kept.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# 3. Validation split
# ----------------------------------------------------------------------------------------------
def n_valid_items(n: int) -> int:
    """How many of a user's n training items go to validation: round-half-up(n/8), at most n-1.

    So train:valid:test is about 7:1:2 when train.txt holds 80%. n=1 -> 0, n=4 -> 1, n=12 -> 2.
    """
    return max(0, min(int(math.floor(n / 8 + 0.5)), n - 1))


def split_validation(train: list, seed: int = 0) -> tuple[list, list]:
    """Carve a validation split out of each user's training items (paper: 7:1:2).

    train: one int array of item ids per user. Returns (train_part, valid_part), the same length;
    train_part keeps the file's order of the items left (prompts take "the last 30"), valid_part
    is sorted. Deterministic for a seed, and independent of the model seed so that every seed of
    an experiment sees the same split.
    """
    rng = np.random.default_rng(seed)
    kept, valid = [], []
    for items in train:
        items = np.asarray(items, dtype=np.int64)
        k = n_valid_items(len(items))
        chosen = np.zeros(len(items), dtype=bool)
        if k:
            chosen[rng.choice(len(items), size=k, replace=False)] = True
        kept.append(items[~chosen])
        valid.append(np.sort(items[chosen]))
    return kept, valid


# ----------------------------------------------------------------------------------------------
# 4. The CIKG: node layout, edges, normalised adjacency
# ----------------------------------------------------------------------------------------------
# Node layout: [users | entities (items first) | interests]. User u -> node u, entity e -> node
# n_users + e, interest j -> node n_users + n_entities + j.
def node_counts(ds: Dataset) -> tuple[int, int, int]:
    """(first entity node, first interest node, number of nodes) of the CIKG layout."""
    e0 = ds.n_users
    j0 = e0 + ds.n_entities
    return e0, j0, j0 + ds.n_interests


def cikg_edges(ds: Dataset, train: list, parts=("ui", "kg", "uj")) -> np.ndarray:
    """Undirected CIKG edges, as node-id pairs int64 [m, 2] with a < b, deduplicated.

    parts: "ui" (Interact: user-item, from `train`), "kg" (item/entity knowledge, the KG triples
    with relations dropped: an undirected edge covers a relation and its inverse), "uj"
    (Has-Interest: user-interest). KG triples whose head equals their tail are left out (self-loops
    are a setting of the adjacency, not an edge). Section "LLM-based CIKG Construction".
    """
    e0, j0, _ = node_counts(ds)
    chunks = []
    if "ui" in parts:
        users = np.repeat(np.arange(len(train)), [len(x) for x in train])
        items = np.concatenate([np.asarray(x, dtype=np.int64) for x in train]) if train else users
        chunks.append(np.stack([users, e0 + items], axis=1))
    if "kg" in parts and len(ds.kg):
        chunks.append(e0 + ds.kg[:, [0, 2]])
    if "uj" in parts and len(ds.interest_edges):
        chunks.append(np.stack([ds.interest_edges[:, 0], j0 + ds.interest_edges[:, 1]], axis=1))
    if not chunks:
        return np.zeros((0, 2), dtype=np.int64)
    edges = np.concatenate(chunks).astype(np.int64)
    edges = np.sort(edges, axis=1)
    edges = edges[edges[:, 0] != edges[:, 1]]
    return np.unique(edges, axis=0)


class Graph:
    """An undirected graph that builds its normalised adjacency D^-1/2 (A [+ I]) D^-1/2 fast.

    edges: int64 [m, 2] unique undirected pairs; n_nodes: matrix size (never the largest index:
    isolated nodes keep an all-zero row and column); loops: bool [n_nodes] of the nodes given a
    self-loop (None: none). The directed entries and a diagonal entry per node are sorted once by
    (row, col), so a dropout mask only has to weigh entries and recount row pointers.
    """

    def __init__(self, edges: np.ndarray, n_nodes: int, loops=None, device="cpu"):
        m, nodes = len(edges), np.arange(n_nodes)
        row = np.concatenate([edges[:, 0], edges[:, 1], nodes])
        col = np.concatenate([edges[:, 1], edges[:, 0], nodes])
        eid = np.concatenate([np.arange(m), np.arange(m), np.full(n_nodes, m)])  # m: the diagonal
        order = np.lexsort((col, row))
        self.n_nodes, self.n_edges = n_nodes, m
        self.row = torch.as_tensor(row[order], device=device)
        self.col = torch.as_tensor(col[order], device=device)
        self.eid = torch.as_tensor(eid[order], device=device)
        self.loops = torch.as_tensor(np.zeros(n_nodes, bool) if loops is None else np.asarray(loops, bool),
                                     device=device).float()  # [n_nodes]: 1 where the node has a self-loop
        self._full = None

    def adjacency(self, drop: float = 0.0, readd_loops: bool = False) -> torch.Tensor:
        """Sparse CSR [n_nodes, n_nodes] float32: D^-1/2 (A+I) D^-1/2 (or without I).

        drop: share of undirected edges removed (both directions at once, self-loops kept), drawn
        from torch's global generator; the matrix is renormalised after the drop. readd_loops (the
        authors' dropout, VARIANTS): self-loops are dropped like edges, then one is added to every
        node, so a kept one weighs 2. Rows of nodes of degree 0 stay zero (no NaN).
        """
        if drop == 0.0 and self._full is not None:
            return self._full
        dev, diagonal = self.row.device, self.eid == self.n_edges
        kept = torch.ones(self.n_edges + 1, device=dev)  # per undirected edge, and 0 for the diagonal
        loop = self.loops
        if drop > 0.0:
            kept[:self.n_edges] = (torch.rand(self.n_edges, device=dev) >= drop).float()
            if readd_loops:
                loop = loop * (torch.rand(self.n_nodes, device=dev) >= drop).float() + 1.0
        kept[self.n_edges] = 0.0
        w = torch.where(diagonal, loop[self.row], kept[self.eid])
        nz = w > 0
        row, col, w = self.row[nz], self.col[nz], w[nz]
        deg = torch.bincount(row, weights=w, minlength=self.n_nodes).float()
        dinv = deg.pow(-0.5)
        dinv[deg == 0] = 0.0
        crow = torch.zeros(self.n_nodes + 1, dtype=torch.int32, device=dev)
        crow[1:] = torch.cumsum(torch.bincount(row, minlength=self.n_nodes), 0)
        # int32 indices: the sparse kernels would otherwise convert them on every product
        adj = torch.sparse_csr_tensor(crow, col.int(), w * dinv[row] * dinv[col], (self.n_nodes, self.n_nodes),
                                      check_invariants=False)
        if drop == 0.0:
            self._full = adj
        return adj


def build_graph(ds: Dataset, train: list, parts, loops: str = "all", device="cpu") -> Graph:
    """The Graph of the chosen CIKG parts; loops: "all" nodes, "ui" (users and items) or "none"."""
    e0, _, n = node_counts(ds)
    mask = None
    if loops == "all":
        mask = np.ones(n, dtype=bool)
    elif loops == "ui":
        mask = np.zeros(n, dtype=bool)
        mask[: e0 + ds.n_items] = True
    return Graph(cikg_edges(ds, train, parts), n, mask, device)


GRAPHS = {"cikg": ("ui", "kg", "uj"), "cg": ("ui",), "cig": ("ui", "uj"), "ckg": ("ui", "kg")}  # --graph


@dataclass
class Graphs:
    """The graphs a CIKGRec model propagates on (built from the training interactions only)."""
    main: Graph  # G: the CIKG (or the part --graph names), for the BPR pass (Eq. 10) and scoring
    views: list  # Eq. 8's graphs of views 1, 2, 3 (SimGCL: G_R twice); [] without contrastive loss
    recon: Graph | None  # the GMAE's graph (Eq. 6); None without reconstruction loss


def build_graphs(ds: Dataset, train: list, hp, device="cpu") -> Graphs:
    """The Graphs of a model with settings hp (its graph, self_loops, contrast, lambda2, lambda3
    and variant, read through VARIANTS). train: the training items per user (never test items:
    case T3). Reconstruction needs interest nodes in the graph."""
    sw, parts = switches(hp.variant), GRAPHS[hp.graph]
    loops = "all" if hp.self_loops else "none"
    main = build_graph(ds, train, parts, loops, device)
    views = []
    if hp.lambda3 > 0 and hp.contrast == "simgcl":
        views = [build_graph(ds, train, ("ui",), loops, device)] * 2
    elif hp.lambda3 > 0:
        views = [build_graph(ds, train, p, loops if lp == "main" else lp, device)
                 for p, lp in zip(sw.views, sw.view_loops)]
    recon = None
    if hp.lambda2 > 0 and "uj" in parts and ds.n_interests > 0:
        recon = main if sw.recon_loops == "main" else build_graph(ds, train, parts, sw.recon_loops, device)
    return Graphs(main, views, recon)


# ----------------------------------------------------------------------------------------------
# 5. Fast kernels: the same mathematics as a plain expression, with fewer passes over memory
# ----------------------------------------------------------------------------------------------
# Why they exist: a CIKGRec step is ~20 full-graph sparse products and two dense [N, B] InfoNCE
# matrices. test_cikgrec.py holds each to its plain expression (values and gradcheck in float64).
class SymmetricSpMM(torch.autograd.Function):
    """y = A x for a symmetric sparse A. Equals torch.sparse.mm(adj, x); the backward is A grad,
    reusing A (A^T = A) instead of building its transpose."""

    @staticmethod
    def forward(ctx, adj, x):
        ctx.adj = adj
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx, grad):
        return None, torch.sparse.mm(ctx.adj, grad.contiguous())


class MeanLogSumExp(torch.autograd.Function):
    """The denominator of InfoNCE for unit rows a [B, D], c [N, D]: equals
    torch.logsumexp(a @ c.T / tau, dim=1).mean().

    The exponentials of the dense [N, B] matrix are computed once, in place, and reused by the
    backward: d/da_b = sum_n softmax_bn c_n / (B tau), d/dc_n = sum_b softmax_bn a_b / (B tau).
    Cosines are <= 1, so no logit exceeds 1/tau and exp cannot overflow unless 1/tau > 80; then
    every logit is shifted by 1/tau first (the result is the same).
    """

    @staticmethod
    def forward(ctx, a, c, tau):
        shift = 1.0 / tau if tau < 1.0 / 80 else 0.0
        e = torch.mm(c, a.t() / tau)  # [N, B] logits: this layout multiplies fastest on CPU
        if shift:
            e.sub_(shift)
        e.exp_()
        total = e.sum(dim=0)  # [B]
        ctx.save_for_backward(a, c, e, total)
        ctx.tau = tau
        return (total.log() + shift).mean()

    @staticmethod
    def backward(ctx, g):
        a, c, e, total = ctx.saved_tensors
        w = (g / (a.shape[0] * ctx.tau)) / total  # [B]: softmax = e / total, per column
        grad_a = torch.mm(e.t(), c).mul_(w[:, None])
        grad_c = torch.mm(e, a * w[:, None])
        return grad_a, grad_c, None


# ----------------------------------------------------------------------------------------------
# 6. The model (Fig. 2, right half)
# ----------------------------------------------------------------------------------------------
def mask_rate(q: int, schedule: str, alpha: float, omega: float, big_lambda: int) -> float:
    """Eq. 3: the mask rate p^q at epoch q (from 0), capped at omega.

    lin: alpha + q (omega - alpha) / Lambda; exp: alpha (omega / alpha)^(q / Lambda);
    fixed: omega throughout (the ablation "w/o DMR"). Eq. 4: exp < lin for 0 < q < Lambda.
    """
    if schedule == "fixed":
        return omega
    if schedule == "lin":
        delta = alpha + q * (omega - alpha) / big_lambda
    elif schedule == "exp":
        delta = alpha * (omega / alpha) ** (q / big_lambda)
    else:
        raise ValueError(f"unknown mask schedule {schedule!r}")
    return min(delta, omega)


def mask_interests(x: torch.Tensor, first: int, count: int, rate: float, replace_rate: float,
                   token: torch.Tensor):
    """Eq. 5: give a share `rate` of the interest nodes the mask token [M].

    x: [n_nodes, D]; interest nodes are rows first..first+count-1; token: [1, D]. At least one
    node is masked (int(rate * count), at least 1). Of the m masked nodes, int(replace_rate * m)
    get instead the embedding of another interest node (GraphMAE's replacement): the donors are
    the first rows of a fresh permutation of the interest rows, as in the authors' code. Returns
    (x' [n_nodes, D], masked node ids int64 [m]). Raises ValueError when count is 0.
    """
    if count <= 0:
        raise ValueError("no interest nodes to mask")
    m = max(1, int(rate * count))
    masked = first + torch.randperm(count, device=x.device)[:m]
    n_replace = int(replace_rate * m)
    x_masked = x.clone()
    x_masked[masked[n_replace:]] = token.expand(m - n_replace, -1)
    if n_replace:
        donors = first + torch.randperm(count, device=x.device)[:n_replace]
        x_masked[masked[:n_replace]] = x[donors]
    return x_masked, masked


def simgcl_noise(h: torch.Tensor, eps: float, r: torch.Tensor | None = None) -> torch.Tensor:
    """SimGCL's perturbation gamma (Yu et al. 2022): sign(h) * normalize(r) * eps, r ~ U(0, 1) per
    row. h: [n, D]. Returns the noise [n, D] to add to h (view 1 of Eq. 8)."""
    if r is None:
        r = torch.rand_like(h)
    return torch.sign(h) * F.normalize(r, dim=1) * eps


def bpr(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Eq. 10: mean of -ln sigma(pos - neg), computed as softplus(neg - pos) (finite for any
    margin; -log(sigmoid(x)) overflows to inf at x = -100 in float32). pos, neg: [B]."""
    return F.softplus(neg - pos).mean()


def l2(*rows: torch.Tensor) -> torch.Tensor:
    """1/2 * sum of squared L2 norms of the given layer-0 rows, divided by the batch size B.
    rows: tensors [B, D] (e.g. e_u, e_i, e_j of the batch): only the batch's rows count."""
    return sum(r.pow(2).sum() for r in rows) / 2.0 / rows[0].shape[0]


def info_nce(anchor: torch.Tensor, candidates: torch.Tensor, positive: torch.Tensor,
             tau: float) -> torch.Tensor:
    """Eq. 9, one term: InfoNCE with cosine similarity s, averaged over the anchors.

    anchor: [B, D] (view 1 rows of the batch, duplicates kept); candidates: [N, D]; positive:
    int64 [B], the row of candidates that is each anchor's positive. Returns
    mean_b -log(exp(s(a_b, c_pos)/tau) / sum_n exp(s(a_b, c_n)/tau)).
    """
    a = F.normalize(anchor, dim=1)
    c = F.normalize(candidates, dim=1)
    pos = (a * c[positive]).sum(dim=1) / tau
    return MeanLogSumExp.apply(a, c, tau) - pos.mean()


def sce(target: torch.Tensor, recon: torch.Tensor, eta: float) -> torch.Tensor:
    """Eq. 7: mean over masked nodes of (1 - cos(z_j, z'''_j))^eta. target, recon: [m, D]."""
    return (1.0 - F.cosine_similarity(target, recon, dim=1)).pow(eta).mean()


def translation(h, r, t, t_neg, squared: bool = False) -> torch.Tensor:
    """Eq. 12: mean of -ln sigma(||h + r - t'|| - ||h + r - t||), each argument [B, D].
    squared=True uses squared distances (the authors' code); the paper writes norms."""
    d_pos = (h + r - t).norm(dim=1)
    d_neg = (h + r - t_neg).norm(dim=1)
    if squared:
        d_pos, d_neg = d_pos.pow(2), d_neg.pow(2)
    return F.softplus(d_pos - d_neg).mean()


class CIKGRec(torch.nn.Module):
    """CIKGRec: LightGCN on the CIKG trained with BPR, interest reconstruction and cross-domain
    contrastive learning (Eq. 11), and optionally TransE (Eq. 12).

    n_users, n_items, n_entities (items included), n_interests, n_relations: the node counts of
    the layout [users | entities, items first | interests]. graphs: build_graphs(...). hp: the
    settings it reads (a Settings, or any object with the same attributes): dim, layers, layer0,
    lambda1-3, l2, edge_drop, node_drop, contrast, tau, eps, eta, enc_layers, dec_layers,
    replace_rate, recon_edge_drop, transe_l2, variant. LightGCN is this model with lambda2 =
    lambda3 = 0; SimGCL with lambda2 = 0 and contrast = "simgcl" (MODELS).
    """

    def __init__(self, n_users: int, n_items: int, n_entities: int, n_interests: int, n_relations: int,
                 graphs: Graphs, hp):
        super().__init__()
        n_nodes, dim = n_users + n_entities + n_interests, hp.dim
        self.emb = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(n_nodes, dim)))  # Z
        # TransE's relations: the KG's, their inverses, and user->item / item->user
        self.rel = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(2 * n_relations + 2, dim)))
        self.mask_token = torch.nn.Parameter(torch.zeros(1, dim))  # [M], Eq. 5
        self.chi = torch.nn.Linear(dim, dim)  # chi, Eq. 6
        self.graphs, self.hp, self.sw = graphs, hp, switches(hp.variant)
        self.e0, self.j0 = n_users, n_users + n_entities  # first entity (item) node, first interest node
        self.n_items, self.n_interests = n_items, n_interests
        self.noise_rng = None  # a numpy Generator for SimGCL's draws (twice as fast as torch's on a CPU)

    def encode(self, adj: torch.Tensor, x: torch.Tensor | None = None, layers: int | None = None,
               eps: float = 0.0) -> torch.Tensor:
        """f_G (LightGCN, He et al. 2020): the mean of x, Ax, ..., A^l x (without x when hp.layer0
        is off). adj: normalised sparse [n_nodes, n_nodes]; x: [n_nodes, D] (default Z); layers:
        default hp.layers. eps > 0 adds SimGCL noise after every layer (view 1 of Eq. 8)."""
        x = self.emb if x is None else x
        layers = self.hp.layers if layers is None else layers
        h, total = x, (x if self.hp.layer0 else 0.0)
        for _ in range(layers):
            h = SymmetricSpMM.apply(adj, h)
            if eps > 0.0:
                r = None if self.noise_rng is None else torch.from_numpy(
                    self.noise_rng.random(h.shape, dtype=np.float32))
                h = h + simgcl_noise(h, eps, r)
            total = total + h
        return total / (layers + 1 if self.hp.layer0 else layers)

    def bpr_loss(self, z: torch.Tensor, u, i, j) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 10 and its L2 term for a batch: z = f_G(Z, G) [n_nodes, D]; u, i, j: int64 [B] user,
        positive and negative item ids. Returns (mean -ln sigma(z_u.z_i - z_u.z_j), l2 of the
        batch's layer-0 rows)."""
        e0, x = self.e0, self.emb
        zu, zi, zj = z[u], z[e0 + i], z[e0 + j]
        return bpr((zu * zi).sum(1), (zu * zj).sum(1)), l2(x[u], x[e0 + i], x[e0 + j])

    def contrastive_loss(self, u, i) -> torch.Tensor:
        """Eqs. 8-9: view 1 (noised) against view 2 for the batch's users, and against view 3 for
        its positive items, every user (item) of the other view a candidate. u, i: int64 [B]."""
        hp, e0, views = self.hp, self.e0, self.graphs.views
        v1 = self.encode(views[0].adjacency(), eps=hp.eps)  # Z^v1 = f_G(Z, G_R, gamma)
        v2 = self.encode(views[1].adjacency())  # Z^v2 = f_G(Z, G_v2), G_R + G_J
        v3 = self.encode(views[2].adjacency())  # Z^v3 = f_G(Z, G_v3), G_R + KG
        items = v3[e0:e0 + self.n_items] if self.sw.item_candidates == "items" else v3[e0:]
        return info_nce(v1[u], v2[:e0], u, hp.tau) + info_nce(v1[e0 + i], items, i, hp.tau)  # Eq. 9

    def simgcl_loss(self, u, i) -> torch.Tensor:
        """SimGCL's own rule (Yu et al. 2022): InfoNCE between two noisy views of G_R, in batch:
        over the batch's distinct users, and over its distinct positive items."""
        adj, hp, tau = self.graphs.views[0].adjacency(), self.hp, self.hp.tau
        v1, v2 = self.encode(adj, eps=hp.eps), self.encode(adj, eps=hp.eps)
        uu, ii = torch.unique(u), self.e0 + torch.unique(i)
        same = lambda rows: torch.arange(len(rows), device=rows.device)
        return info_nce(v1[uu], v2[uu], same(uu), tau) + info_nce(v1[ii], v2[ii], same(ii), tau)

    def reconstruction_loss(self, rate: float) -> torch.Tensor:
        """Eqs. 5-7 at mask rate p^q (Eq. 3): mask interest nodes, encode with l-1 layers,
        project with chi, re-mask (GraphMAE), decode with 1 layer, and score the masked nodes."""
        hp = self.hp
        adj = self.graphs.recon.adjacency(hp.recon_edge_drop, self.sw.dropout_readds_loops)
        x_masked, masked = mask_interests(self.emb, self.j0, self.n_interests, rate, hp.replace_rate,
                                          self.mask_token)  # Eq. 5: Z'
        h = self.chi(self.encode(adj, x_masked, hp.enc_layers))  # Eq. 6: chi(Z''), Z'' = f_G^{l-1}(Z', G)
        h = h.index_fill(0, masked, 0.0)  # GraphMAE's re-mask before the decoder
        z3 = self.encode(adj, h, hp.dec_layers)  # Eq. 6: Z''' = f_G^1(chi(Z''), G)
        return sce(self.emb[masked], z3[masked], hp.eta)  # Eq. 7

    def transe_loss(self, h, r, t, t_neg) -> torch.Tensor:
        """Eq. 12 and its L2 term for a batch of triples: node ids h, t, t_neg and relation ids r,
        each int64 [B]."""
        e, rel = self.emb, self.rel
        loss = translation(e[h], rel[r], e[t], e[t_neg], squared=self.sw.transe_squared)
        return loss + self.hp.transe_l2 * l2(e[h], rel[r], e[t], e[t_neg])

    def loss(self, batch, mask_rate: float) -> tuple[torch.Tensor, dict]:
        """Eq. 11 for one batch: lambda1 L_r + L2 + lambda3 L_c + lambda2 L_u.

        batch: (u, i, j) int64 [B] user, positive and negative item ids; mask_rate: p^q of
        Eq. 3. Returns (the total, {"bpr", "cl", "rec": the parts before their weights}).
        """
        hp, u = self.hp, batch[0]
        x = F.dropout(self.emb, hp.node_drop) if hp.node_drop else self.emb  # the authors' node dropout
        z = self.encode(self.graphs.main.adjacency(hp.edge_drop, self.sw.dropout_readds_loops), x)  # f_G(Z, G)
        rec_loss, reg = self.bpr_loss(z, *batch)  # Eq. 10
        total, parts = hp.lambda1 * rec_loss + hp.l2 * reg, {"bpr": rec_loss}
        if self.graphs.views:  # Eqs. 8-9 (SimGCL: its own rule)
            cl = self.simgcl_loss(u, batch[1]) if hp.contrast == "simgcl" else self.contrastive_loss(u, batch[1])
            total, parts["cl"] = total + hp.lambda3 * cl, cl
        if self.graphs.recon is not None:  # Eqs. 5-7
            rec = self.reconstruction_loss(mask_rate)
            total, parts["rec"] = total + hp.lambda2 * rec, rec
        return total, parts

    @torch.no_grad()
    def user_item_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user [n_users, D] and item [n_items, D] embeddings: f_G(Z, G), no dropout or
        noise. Scores are their dot products."""
        z = self.encode(self.graphs.main.adjacency())
        return z[:self.e0], z[self.e0:self.e0 + self.n_items]


# ----------------------------------------------------------------------------------------------
# 7. Sampling
# ----------------------------------------------------------------------------------------------
def pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Sorted unique int64 keys user * n_items + item of the given (user, item) pairs."""
    return np.unique(users.astype(np.int64) * n_items + items)


def sample_negatives(users: np.ndarray, positive_keys: np.ndarray, n_items: int,
                     rng: np.random.Generator, max_rounds: int = 1000) -> np.ndarray:
    """One negative item per entry of `users`, uniform over the items the user has not interacted
    with in training (Eq. 10's i'). Vectorised rejection sampling: draw all, redraw the clashes.

    users: int64 [B]; positive_keys: pair_keys of the training pairs. Returns item ids int64 [B]
    (item ids, not node ids). Users with every item have no negative: leave them out beforehand
    (RuntimeError after max_rounds otherwise, never an endless loop).
    """
    neg = rng.integers(0, n_items, size=len(users))
    todo = np.arange(len(users))
    for _ in range(max_rounds):
        keys = users[todo] * n_items + neg[todo]
        pos = np.searchsorted(positive_keys, keys).clip(max=len(positive_keys) - 1)
        clash = positive_keys[pos] == keys if len(positive_keys) else np.zeros(len(todo), bool)
        todo = todo[clash]
        if not len(todo):
            return neg
        neg[todo] = rng.integers(0, n_items, size=len(todo))
    raise RuntimeError(f"no negative item found for {len(todo)} draws (users with every item?)")


def kg_triples(ds: Dataset, train: list, with_interactions: bool = False) -> np.ndarray:
    """TransE triples (head node, relation, tail node) int64 [n, 3] for Eq. 12.

    The KG triples and their inverses (relation r + R). with_interactions adds user->item and
    item->user "interact" triples (relations 2R and 2R+1), as the authors' code does.
    """
    e0 = ds.n_users
    R = ds.n_relations
    h, r, t = e0 + ds.kg[:, 0], ds.kg[:, 1], e0 + ds.kg[:, 2]
    parts = [np.stack([h, r, t], 1), np.stack([t, r + R, h], 1)]
    if with_interactions:
        users = np.repeat(np.arange(len(train)), [len(x) for x in train])
        items = e0 + np.concatenate([np.asarray(x, dtype=np.int64) for x in train])
        parts += [np.stack([users, np.full_like(users, 2 * R), items], 1),
                  np.stack([items, np.full_like(users, 2 * R + 1), users], 1)]
    return np.unique(np.concatenate(parts).astype(np.int64), axis=0)


def corrupt_tails(triples: np.ndarray, first: int, count: int, rng: np.random.Generator,
                  max_rounds: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 12's t': for each triple a tail drawn uniformly from the entity nodes
    first..first+count-1 (never a user or interest node) that is not a true tail of (h, r).

    triples: int64 [n, 3] node ids. Returns (kept row indices, negative tails) where rows whose
    (h, r) has every entity as a tail (no negative exists) are left out.
    """
    n_rel = int(triples[:, 1].max()) + 1
    n_nodes = int(max(triples[:, [0, 2]].max(), first + count - 1)) + 1
    key = lambda h, r, t: (h * n_rel + r) * n_nodes + t
    true_keys = np.unique(key(triples[:, 0], triples[:, 1], triples[:, 2]))
    neg = first + rng.integers(0, count, size=len(triples))
    todo = np.arange(len(triples))
    for _ in range(max_rounds):
        k = key(triples[todo, 0], triples[todo, 1], neg[todo])
        clash = true_keys[np.searchsorted(true_keys, k).clip(max=len(true_keys) - 1)] == k
        todo = todo[clash]
        if not len(todo):
            break
        neg[todo] = first + rng.integers(0, count, size=len(todo))
    keep = np.setdiff1d(np.arange(len(triples)), todo)
    return keep, neg[keep]

def head_first(heads: np.ndarray, batch: int, rng: np.random.Generator) -> np.ndarray:
    """KGAT's TransE sampler (the authors' code): `batch` heads, without replacement where there
    are enough, then one triple of each uniformly. heads: int64 [n], the head of each triple,
    sorted. Returns row indices int64 [batch] into those triples."""
    distinct, starts, counts = np.unique(heads, return_index=True, return_counts=True)
    pick = rng.choice(len(distinct), size=batch, replace=batch > len(distinct))
    return starts[pick] + (rng.random(batch) * counts[pick]).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# 8. Evaluation: full ranking, Recall@K, NDCG@K, Precision@K, HitRatio@K
# ----------------------------------------------------------------------------------------------
def _flatten(lists) -> tuple[np.ndarray, np.ndarray]:
    """List of id lists -> (row index per entry, id per entry), both int64."""
    lens = [len(x) for x in lists]
    rows = np.repeat(np.arange(len(lists)), lens)
    cols = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]) if sum(lens) else rows
    return rows, cols


def id_pairs(lists, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """List of item-id lists (one per row) -> the unique (row, item) pairs as two int64 arrays,
    sorted by row: `5 7 7 9` on row 0 -> (0, 7), (0, 9). Done once per evaluation set."""
    rows, cols = _flatten(lists)
    keys = np.unique(rows * n_items + cols)
    return keys // n_items, keys % n_items


def _metric_sums(scores: torch.Tensor, exclude: tuple, truth: tuple, ks) -> tuple[dict, int]:
    """Sums over users (not means) of each metric, and the number of users with a truth item.

    scores: float [n, n_items] (modified in place: excluded items get -inf); exclude and truth:
    id_pairs (rows 0..n-1). An excluded item is never a hit, even when K reaches past the items
    left to rank. Sums let chunked evaluation average over users (T1).
    """
    n, n_items = scores.shape
    dev = scores.device
    as_t = lambda a: torch.as_tensor(a, device=dev)
    scores[as_t(exclude[0]), as_t(exclude[1])] = float("-inf")
    n_truth = as_t(np.bincount(truth[0], minlength=n)).float()
    relevant = torch.zeros(n, n_items, dtype=torch.bool, device=dev)
    relevant[as_t(truth[0]), as_t(truth[1])] = True
    k_max = max(ks)
    top_scores, top = torch.topk(scores, min(k_max, n_items), dim=1)
    hit = (relevant.gather(1, top) & (top_scores > float("-inf"))).float()
    if hit.shape[1] < k_max:  # fewer items than K: the missing ranks are misses
        hit = F.pad(hit, (0, k_max - hit.shape[1]))
    discount = 1.0 / torch.log2(torch.arange(2, k_max + 2, dtype=torch.float32, device=dev))
    ideal = torch.cumsum(discount, 0)  # ideal DCG with 1..k_max hits
    valid = n_truth > 0
    sums = {}
    for k in ks:
        hits = hit[:, :k].sum(1)
        dcg = (hit[:, :k] * discount[:k]).sum(1)
        idcg = ideal[(n_truth.clamp(min=1, max=k) - 1).long()]  # min(|truth|, K) hits
        sums[f"recall@{k}"] = (hits / n_truth.clamp(min=1))[valid].sum().item()
        sums[f"ndcg@{k}"] = (dcg / idcg)[valid].sum().item()
        sums[f"precision@{k}"] = (hits / k)[valid].sum().item()
        sums[f"hit@{k}"] = (hits > 0).float()[valid].sum().item()
    return sums, int(valid.sum().item())


def ranking_metrics(scores: torch.Tensor, exclude, truth, ks=(20, 50, 100)) -> dict:
    """Full-ranking metrics of a score matrix, averaged over the users whose truth is not empty.

    scores: float tensor [n_users, n_items] (not modified); exclude, truth: one list of item ids
    per row (exclude: items never ranked, e.g. training items; truth: the held-out items).
    Returns {"recall@K", "ndcg@K", "precision@K", "hit@K"} for each K. Recall@K = hits in the
    top K / |truth|; NDCG@K = DCG@K / ideal DCG with min(|truth|, K) hits; Precision@K = hits / K;
    HitRatio@K = 1 if any hit. Duplicate truth ids count once.
    """
    n_items = scores.shape[1]
    sums, count = _metric_sums(scores.clone(), id_pairs(exclude, n_items), id_pairs(truth, n_items), list(ks))
    return {k: v / max(count, 1) for k, v in sums.items()}


def evaluate_ranking(user_emb: torch.Tensor, item_emb: torch.Tensor, users: np.ndarray, exclude,
                     truth, ks, chunk: int = 1024) -> dict:
    """ranking_metrics over many users, scored in chunks of `chunk` users (scores = u . i).

    user_emb [n_users, D], item_emb [n_items, D]; users: the rows to evaluate; exclude, truth:
    lists aligned with `users`, or their id_pairs (what Trainer keeps, so that no evaluation
    loops over users in Python). Averages over users, never over chunks (case T1).
    """
    n_items = item_emb.shape[0]
    paired = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], np.ndarray)
    ex = exclude if paired(exclude) else id_pairs(exclude, n_items)
    tr = truth if paired(truth) else id_pairs(truth, n_items)
    totals = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "precision", "hit")}
    count = 0
    item_t = item_emb.t().contiguous()  # [D, n_items]: a third faster to multiply than a view
    for start in range(0, len(users), chunk):
        sel = torch.as_tensor(users[start:start + chunk], device=user_emb.device)
        scores = user_emb[sel] @ item_t
        (e0, e1), (t0, t1) = (np.searchsorted(p[0], [start, start + chunk]) for p in (ex, tr))
        sums, c = _metric_sums(scores, (ex[0][e0:e1] - start, ex[1][e0:e1]),
                               (tr[0][t0:t1] - start, tr[1][t0:t1]), ks)
        count += c
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + v
    return {k: v / max(count, 1) for k, v in totals.items()}


def top_items(user_emb: torch.Tensor, item_emb: torch.Tensor, users: np.ndarray, exclude, k: int,
              chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The k best items of each user by score u . i, scored in chunks of `chunk` users as in
    evaluate_ranking. users: int [n] rows of user_emb; exclude: one list of item ids per user
    (never ranked; None: nothing excluded). Returns (items int64 [n, k'], scores float32 [n, k'])
    with k' = min(k, n_items), best first; a rank past the items left has item -1, score -inf."""
    n_items = item_emb.shape[0]
    k = min(k, n_items)
    ex = id_pairs(exclude, n_items) if exclude is not None else None
    item_t = item_emb.t().contiguous()
    out_items, out_scores = np.zeros((len(users), k), np.int64), np.zeros((len(users), k), np.float32)
    for start in range(0, len(users), chunk):
        sel = torch.as_tensor(np.asarray(users[start:start + chunk], dtype=np.int64), device=user_emb.device)
        scores = user_emb[sel] @ item_t
        if ex is not None:
            e0, e1 = np.searchsorted(ex[0], [start, start + chunk])
            scores[torch.as_tensor(ex[0][e0:e1] - start, device=scores.device),
                   torch.as_tensor(ex[1][e0:e1], device=scores.device)] = float("-inf")
        top_scores, top = torch.topk(scores, k, dim=1)
        top[top_scores == float("-inf")] = -1
        out_items[start:start + len(sel)] = top.cpu().numpy()
        out_scores[start:start + len(sel)] = top_scores.cpu().numpy()
    return out_items, out_scores


def selection_score(metrics: dict) -> float:
    """What early stopping and model selection maximise: Recall@50 + NDCG@50."""
    return metrics["recall@50"] + metrics["ndcg@50"]


class EarlyStopping:
    """Keeps the best evaluation so far; stops after `patience` evaluations without improvement."""

    def __init__(self, patience: int):
        self.patience, self.best, self.best_epoch, self.bad = patience, -math.inf, -1, 0

    def update(self, epoch: int, score: float) -> bool:
        """Record an evaluation; True when it is the best so far."""
        if score > self.best:
            self.best, self.best_epoch, self.bad = score, epoch, 0
            return True
        self.bad += 1
        return False

    @property
    def stop(self) -> bool:
        return self.bad >= self.patience


# ----------------------------------------------------------------------------------------------
# 9. Training: the loop around the model (batches, optimisers, early stopping, checkpoints)
# ----------------------------------------------------------------------------------------------
class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss): the last good checkpoint is kept."""


def log(msg: str) -> None:
    """Progress goes to stderr, results to stdout."""
    print(msg, file=sys.stderr, flush=True)


class Trainer:
    """One run's training loop around a CIKGRec model: the training pairs, negative sampling and
    batches, the optimisers, the random generators and the evaluation sets.

    train_part: the training items per user (train.txt less validation); valid: the validation
    items per user, or None when selecting on test (the authors' protocol).
    """

    def __init__(self, s: Settings, ds: Dataset, train_part: list, valid: list | None, device):
        self.s, self.ds, self.train, self.valid, self.device = s, ds, train_part, valid, device
        self.sw = switches(s.variant)
        graphs = build_graphs(ds, train_part, s, device)
        self.model = CIKGRec(ds.n_users, ds.n_items, ds.n_entities, ds.n_interests, ds.n_relations,
                             graphs, s).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=s.lr)
        self.transe = s.transe and len(ds.kg) > 0
        if self.transe:
            self.triples = kg_triples(ds, train_part, with_interactions=self.sw.transe_interactions)
            self.n_kg_triples = len(kg_triples(ds, train_part))  # the authors' count of batches
            self.opt_transe = torch.optim.Adam([self.model.emb, self.model.rel], lr=s.transe_lr)
        self.progress = None  # progress(batches done, batches, seconds): called once, early in the next epoch
        self.rng = np.random.default_rng(s.seed)
        self.model.noise_rng = self.rng if device.type == "cpu" else None
        # BPR pairs; users with every item have no negative and are left out (case T5)
        users = np.repeat(np.arange(ds.n_users), [len(x) for x in train_part])
        items = np.concatenate(train_part).astype(np.int64)
        full = np.array([len(x) >= ds.n_items for x in train_part])
        self.notes = []
        if s.lambda2 > 0 and graphs.recon is None:  # a weight that cannot act is said, not ignored silently
            why = "no interest nodes" if not ds.n_interests else f"the {s.graph.upper()} graph holds no interest edges"
            self.notes.append(f"--lambda2 {s.lambda2:g} has no effect: {why}, so there is no reconstruction loss")
        if full.any():
            self.notes.append(f"{int(full.sum())} users have every item: left out of BPR (no negative)")
        keep = ~full[users]
        self.pair_u, self.pair_i = users[keep], items[keep]
        if not len(self.pair_u):
            raise DataError(Path(s.data_dir) / s.dataset / "train.txt", 0, "no (user, item) pair to train on")
        self.pos_keys = pair_keys(users, items, ds.n_items)
        # evaluation sets: users with held-out items and at least one training item (case T4)
        no_train = np.array([len(x) == 0 for x in ds.train])
        if no_train.any():
            self.notes.append(f"{int(no_train.sum())} users have no training items: left out of BPR "
                              "and evaluation")
        self.eval_sets, self.eval_pairs = {}, {}
        for name, truth, exclude in (("valid", valid, train_part), ("test", ds.test, ds.train)):
            if truth is None:
                continue
            users = np.array([u for u in range(ds.n_users) if len(truth[u]) and not no_train[u]],
                             dtype=np.int64)
            self.eval_sets[name] = (users, [exclude[u] for u in users], [truth[u] for u in users])
            self.eval_pairs[name] = tuple(id_pairs(x, ds.n_items) for x in self.eval_sets[name][1:])
        if valid is not None and not len(self.eval_sets["valid"][0]):
            raise DataError(Path(s.data_dir) / s.dataset / "train.txt", 0,
                            "no user has enough training items for a validation split (4 or more);"
                            " use --select-on test")

    def train_epoch(self, epoch: int, max_batches: int | None = None) -> dict:
        """One pass over the shuffled training pairs, one negative each (max_batches: stop
        early, for bench). Returns the mean loss parts, the mask rate and the TransE loss."""
        s = self.s
        order = self.rng.permutation(len(self.pair_u))
        users, items = self.pair_u[order], self.pair_i[order]
        negs = sample_negatives(users, self.pos_keys, self.ds.n_items, self.rng)
        rate = mask_rate(epoch, s.schedule, s.alpha, s.omega, s.mask_epochs)
        totals, n_batches = {}, math.ceil(len(users) / s.batch_size)
        last_report = epoch_start = time.perf_counter()
        self.model.train()
        for b in range(min(n_batches, max_batches or n_batches)):
            sl = slice(b * s.batch_size, (b + 1) * s.batch_size)
            batch = tuple(torch.from_numpy(a[sl]).to(self.device) for a in (users, items, negs))
            loss, parts = self.model.loss(batch, rate)
            parts = {k: v.item() for k, v in parts.items()}
            if not math.isfinite(loss.item()):
                raise TrainingError(f"non-finite loss ({loss.item()}) at epoch {epoch}, batch {b + 1}/{n_batches}; "
                                    "its parts before the lambdas: " + ", ".join(f"{k} {v:.4g}" for k, v in parts.items()))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v
            if self.progress is not None and (b + 1 >= min(5, n_batches) or time.perf_counter() - epoch_start > 10):
                self.progress(b + 1, n_batches, time.perf_counter() - epoch_start)
                self.progress = None
            if time.perf_counter() - last_report > 30:
                log(f"  epoch {epoch}: batch {b + 1}/{n_batches}")
                last_report = time.perf_counter()
        out = {k: v / n_batches for k, v in totals.items()}
        out["mask_rate"] = rate if self.model.graphs.recon is not None else None
        if self.transe and max_batches is None:
            out["transe"] = self.transe_epoch()
        return out

    def transe_epoch(self) -> float:
        """The alternating TransE step (Eq. 12) with its own Adam optimiser: batches of triples,
        a corrupted entity tail each (VARIANTS: shuffled, or head-first). Returns the mean loss."""
        s, sw = self.s, self.sw
        keep, neg = corrupt_tails(self.triples, self.ds.n_users, self.ds.n_entities, self.rng)
        trip, neg = self.triples[keep], neg[keep]
        n_batches = max(1, (self.n_kg_triples if sw.transe_head_first else len(trip)) // s.transe_batch)
        order = None if sw.transe_head_first else self.rng.permutation(len(trip))
        total = 0.0
        for b in range(n_batches):
            sel = (head_first(trip[:, 0], s.transe_batch, self.rng) if order is None
                   else order[b * s.transe_batch:(b + 1) * s.transe_batch])
            h, r, t, tn = (torch.from_numpy(a).to(self.device) for a in (trip[sel, 0], trip[sel, 1], trip[sel, 2], neg[sel]))
            loss = self.model.transe_loss(h, r, t, tn)
            self.opt_transe.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_transe.step()
            total += loss.item()
        return total / n_batches

    @torch.no_grad()
    def evaluate(self, split: str) -> dict:
        """Metrics on "valid" (training items excluded) or "test" (train.txt items excluded)."""
        users = self.eval_sets[split][0]
        self.model.eval()
        ue, ie = self.model.user_item_embeddings()
        ks = sorted(set(parse_ks(self.s.ks)) | {50, 100})  # @50 selects the model; @50, @100: the tables
        return evaluate_ranking(ue, ie, users, *self.eval_pairs[split], ks, self.s.eval_batch)

    def state(self) -> dict:
        """Everything a checkpoint needs to continue exactly: model, optimisers, random states."""
        st = {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
              "torch_rng": torch.get_rng_state(), "numpy_rng": self.rng.bit_generator.state}
        if self.transe:
            st["opt_transe"] = self.opt_transe.state_dict()
        if torch.cuda.is_available():
            st["cuda_rng"] = torch.cuda.get_rng_state_all()
        return st

    def load_state(self, st: dict) -> None:
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])
        if self.transe:
            self.opt_transe.load_state_dict(st["opt_transe"])
        torch.set_rng_state(st["torch_rng"].cpu())
        self.rng.bit_generator.state = st["numpy_rng"]
        if "cuda_rng" in st and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in st["cuda_rng"]])


# Settings that never change a run's numbers (a resumed or refit run may differ in them).
RUN_FREE = ("max_minutes", "resume", "device", "threads", "out", "data_dir", "interests", "eval_batch")


def settings_differ(results: dict, s: Settings) -> list:
    """The settings (names) in which the run of `results` (read_results; its "settings") differs
    from s, leaving out RUN_FREE and refit, which never change a run's numbers, and min_epochs where
    the run's early stop came after s's min_epochs anyway. A setting newer than
    the file counts as its default, which keeps the old behaviour; a file without settings differs
    in all."""
    saved = results.get("settings", {})
    if saved:
        saved = {**{f.name: f.default for f in dataclasses.fields(Settings)}, **saved}
    differ = [k for k, v in dataclasses.asdict(s).items() if k not in RUN_FREE + ("refit",) and saved.get(k) != v]
    # --min-epochs M only holds off early stopping before epoch M: a run whose patience ran out
    # after M epochs, under a smaller M of its own, ran exactly the epochs it would have run with M
    ran, best = results.get("epochs_run"), results.get("best_epoch")
    if ("min_epochs" in differ and saved and saved["min_epochs"] <= s.min_epochs and not results.get("stopped_by")
            and isinstance(ran, int) and isinstance(best, int) and ran - 1 - best >= saved["patience"]
            and ran >= s.min_epochs):
        differ.remove("min_epochs")
    return differ


def fit(s: Settings, force: bool = False) -> dict:
    """Train with early stopping on validation Recall@50 + NDCG@50, evaluate the selected model
    on test once, write the results JSON and the best model's state. With select_on="test"
    (the authors' protocol) there is no validation split and epochs are selected on test.

    A checkpoint after every epoch lets resume=True continue exactly. With max_minutes, training
    stops after the epoch in which that many minutes (wall clock, this call) have passed; the
    results of the best epoch so far are written with stopped_by "time limit: ..." (a sweep counts
    such a run as unfinished and resumes it).

    The run holds a lock on its --out while it trains (output_lock: a second run on it is
    refused, naming the holder's PID). Results already at --out are never replaced unless
    force=True (--force); --resume continues their checkpoint and --refit adds a refit to them.
    The best model is kept in memory and in the checkpoint, never read back from a file that
    another run could have replaced. Raises DataError, SettingsError, TrainingError, and
    Interrupted (Ctrl-C) saying what the checkpoint holds.
    """
    check_settings(s)
    deadline = time.perf_counter() + 60 * s.max_minutes if s.max_minutes else None  # both phases
    if s.refit and s.select_on == "test":
        raise SettingsError("--refit needs validation selection: with --select-on test the model was chosen "
                            "on test and there is nothing to refit")
    device = pick_device(s.device)
    if s.threads:
        torch.set_num_threads(s.threads)
    ds, train_part, valid = read_data(s)  # bad input stops here, before anything is written
    check_memory(s, ds, device)
    out, best_path, ckpt_path = output_paths(s)
    check_writable(out, best_path, ckpt_path)
    with output_lock(out):
        done = finished_results(out, s) if s.refit and not force else None
        if done is not None:  # a finished validation-selected run: only its refit is left to do
            return add_refit(s, done, out, device, deadline)
        done = finished_run(out, s) if s.resume and not force else None
        if done is not None:  # its checkpoint would only be rewritten, and its refit lost
            log(f"{out} is finished: --resume has nothing to continue (--refit adds a refit, --force trains it again)")
            return done
        if out.exists() and not (s.resume and ckpt_path.is_file()):
            if not force:
                raise SettingsError(existing_results(out, s))
            log(f"note: --force: the results in {out} will be replaced")
        return _train(s, ds, train_part, valid, device, out, best_path, ckpt_path, deadline)


def _train(s: Settings, ds: Dataset, train_part: list, valid: list | None, device, out: Path, best_path: Path,
           ckpt_path: Path, deadline: float | None) -> dict:
    """fit's training, under its output lock: early stopping, checkpoints, the test evaluation
    and the results file."""
    torch.manual_seed(s.seed)
    trainer = Trainer(s, ds, train_part, valid, device)
    for note in trainer.notes:
        log(f"note: {note}")
    sel = "valid" if s.select_on == "valid" else "test"
    stopper, history, start, best_state = EarlyStopping(s.patience), [], 0, None
    data_sha256 = {p.name: _sha256(str(p)) for p in data_files(s)}
    if s.dataset not in DATASET_DEFAULTS:
        log(f"note: no per-dataset defaults for {s.dataset!r}: the Settings defaults apply")
    if s.resume and ckpt_path.is_file():
        try:
            ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        except Exception as e:  # a truncated or foreign file: say which, not a traceback
            raise SettingsError(f"--resume: cannot read {ckpt_path} ({e}); delete it to start afresh") from None
        changed = {k for k, v in ck["settings"].items() if k not in RUN_FREE + ("epochs", "patience", "min_epochs", "refit")
                   and getattr(s, k, v) != v}
        changed |= {name for name, sha in ck.get("data_sha256", {}).items() if data_sha256.get(name) != sha}
        if changed:
            raise SettingsError(f"--resume: {ckpt_path} was made with other settings or data "
                                f"({', '.join(sorted(changed))})")
        try:  # a checkpoint from older code may lack data hashes or keys: check before training
            trainer.load_state(ck["trainer"])
            missing = {k for h in ck["history"] for k in ("seconds", "eval_seconds") if k not in h}
            if missing:
                raise KeyError(f"history without {', '.join(sorted(missing))}")
        except (RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().strip("'").splitlines()[-1].strip()
            raise SettingsError(f"--resume: {ckpt_path} does not fit this code, graph or model ({first}); "
                                "was it made by older code, with other data or another interest file?") from None
        best_state = ck.get("best_model")
        if best_state is None:  # a checkpoint written before the best model was kept in it
            try:
                best_state = torch.load(best_path, map_location=device, weights_only=True)
            except Exception as e:
                raise SettingsError(f"--resume: {ckpt_path} was written by older code, which kept the best model "
                                    f"only in {best_path}, and that cannot be read ({type(e).__name__}); "
                                    "delete the checkpoint to start afresh") from None
        stopper.__dict__.update(ck["stopper"], patience=s.patience)
        history, start = ck["history"], ck["epoch"] + 1
        log(f"resuming {ckpt_path} after epoch {ck['epoch']}")
    elif s.resume:
        log(f"note: --resume: no checkpoint at {ckpt_path}, starting afresh")
    elif ckpt_path.is_file():
        log(f"note: starting afresh: the checkpoint {ckpt_path} will be replaced (--resume continues it)")
    for line in interest_lines(ds, s, data_sha256):
        log(line)
    unused = "" if "uj" in GRAPHS[s.graph] else f" (not in the {s.graph.upper()} graph)"
    log(f"{s.dataset}: {ds.n_users} users, {ds.n_items} items, {ds.n_entities} entities, "
        f"{ds.n_interests} interest nodes{unused}, {trainer.model.graphs.main.n_edges} undirected {s.graph.upper()} edges, "
        f"{len(trainer.pair_u)} training pairs; model {s.model}, variant {s.variant}, "
        f"selection on {sel}, device {device}")
    epoch, failure, limit = start - 1, None, None
    started = time.perf_counter()
    before = sum(h["seconds"] + h["eval_seconds"] for h in history)  # of the calls before a --resume
    going_on = lambda e: e + 1 < s.epochs and not (stopper.stop and e + 1 >= s.min_epochs)
    trainer.progress = lambda done, n, sec: log(epoch_estimate(s, done, n, sec, device))
    while going_on(epoch):
        epoch += 1
        t0 = time.perf_counter()
        try:
            losses = trainer.train_epoch(epoch)
        except KeyboardInterrupt:
            raise Interrupted(interrupted_message(epoch, start, history, ckpt_path)) from None
        except TrainingError as e:
            if not history:
                raise TrainingError(f"{e}; no epoch finished, so there is no checkpoint and no result") from None
            failure = f"{e}; the checkpoint of epoch {epoch - 1} is kept ({ckpt_path})"
            epoch -= 1
            break
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        try:
            metrics = trainer.evaluate(sel)
        except KeyboardInterrupt:
            raise Interrupted(interrupted_message(epoch, start, history, ckpt_path)) from None
        eval_seconds = time.perf_counter() - t1
        if stopper.update(epoch, selection_score(metrics)):
            best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
            _save(best_state, best_path)
        history.append({"epoch": epoch, **losses, sel: metrics, "seconds": round(seconds, 3),
                        "eval_seconds": round(eval_seconds, 3)})
        _save({"trainer": trainer.state(), "stopper": {k: v for k, v in stopper.__dict__.items()
                                                      if k != "patience"},
               "history": history, "epoch": epoch, "best_model": best_state,
               "data_sha256": data_sha256,
               "settings": dataclasses.asdict(s)}, ckpt_path)
        parts = " ".join(f"{k} {v:.4f}" for k, v in losses.items() if k != "mask_rate" and v is not None)
        mask = f" | mask {losses['mask_rate']:.3f}" if losses.get("mask_rate") is not None else ""
        log(f"epoch {epoch:4d} | {parts}{mask} | {sel} R@50 {metrics['recall@50']:.4f} "
            f"N@50 {metrics['ndcg@50']:.4f}{' *' if stopper.best_epoch == epoch else ''} | "
            f"{seconds:.1f}s + eval {eval_seconds:.2f}s | {duration(before + time.perf_counter() - started)} elapsed")
        if deadline and time.perf_counter() >= deadline and going_on(epoch):
            limit = (f"time limit: --max-minutes {s.max_minutes:g} reached after epoch {epoch}, before early "
                     f"stopping; --resume (in a sweep: the same tables command) continues from {ckpt_path}")
            log(limit)
            break
    trainer.model.load_state_dict(best_state)  # this run's own best, never a file another run wrote
    _save(best_state, best_path)
    t1 = time.perf_counter()
    test = trainer.evaluate("test")  # the one and only look at test (valid selection)
    eval_seconds = time.perf_counter() - t1
    groups = group_ndcg(trainer)  # Fig. 3, kept in the results so tables need no model file
    best = next(h for h in history if h["epoch"] == stopper.best_epoch)
    results = {
        "dataset": s.dataset, "settings": dataclasses.asdict(s), "definition": definition(s), "seed": s.seed,
        "split_seed": s.split_seed if sel == "valid" else None, "selected_on": sel,
        "best_epoch": stopper.best_epoch, "epochs_run": epoch + 1,
        "valid": best["valid"] if sel == "valid" else None, "test": test, "groups": groups,
        "epoch_seconds": [h["seconds"] for h in history], "eval_seconds": round(eval_seconds, 4),
        "minutes": round(sum(h["seconds"] + h["eval_seconds"] for h in history) / 60, 2),
        "history": history, "notes": ds.warnings + trainer.notes, "stopped_by": failure or limit,
        "provenance": {"data_sha256": data_sha256, "interest_file": ds.interest_file or None,
                       "interest_sha256": data_sha256.get(Path(ds.interest_file).name) if ds.interest_file
                       else None, "model_sha256": _sha256(str(best_path)), "git_commit": _git_commit(),
                       "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "device": str(device), "python": platform.python_version()},
    }
    _write_json(results, out)
    log(f"selected epoch {stopper.best_epoch} on {sel}; results in {out}, model in {best_path}")
    if failure:  # the results of the epochs before the failure are written; the run still failed
        raise TrainingError(f"{failure}; the results of the best epoch before it ({stopper.best_epoch}) are in {out}")
    if s.refit and not limit:
        return add_refit(s, results, out, device, deadline)
    return results


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training, with a message saying what the checkpoint holds."""


def interrupted_message(epoch: int, start: int, history: list, ckpt_path: Path) -> str:
    """What a Ctrl-C in epoch `epoch` of a call that began at epoch `start` leaves behind."""
    saved = history[-1]["epoch"] if history else -1
    if saved >= start:
        return (f"interrupted in epoch {epoch}: every finished epoch (up to {saved}) is in the checkpoint {ckpt_path}; "
                "the same command with --resume continues from it")
    if start > 0:
        return (f"interrupted in epoch {epoch}: the checkpoint {ckpt_path} is as it was (after epoch {start - 1}); "
                "the same command with --resume continues from it")
    return (f"interrupted in epoch {epoch}, before the first epoch ended: no checkpoint was written, "
            "so run the command again (without --resume)")


# Epochs that full runs (early stopping on validation, patience 10) took here, by dataset:
# results/runs*/ (CIKGRec, its ablations, LightGCN, SimGCL). ml1m: never run to the end here.
TYPICAL_EPOCHS = {"book-crossing": (60, 240), "dbbook2014": (80, 300), "ml1m": (60, None)}


def duration(seconds: float) -> str:
    """4.26 -> "4.3s", 12.3 -> "12s", 754 -> "12m34s", 7380 -> "2h03m"."""
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def epoch_estimate(s: Settings, done: int, n_batches: int, seconds: float, device) -> str:
    """The line train prints after the first batches of its first epoch: the seconds per epoch
    they imply and what that means for a full run (TYPICAL_EPOCHS; other datasets: the range of
    the published ones)."""
    per_epoch = seconds / max(done, 1) * n_batches
    low, high = TYPICAL_EPOCHS.get(s.dataset, (60, 300))
    where = f"full runs of {s.dataset} here take" if s.dataset in TYPICAL_EPOCHS else "full runs of the published datasets take"
    span = (f"{low}-{high} epochs: about {duration(low * per_epoch)} to {duration(high * per_epoch)}" if high
            else f"more than {low} epochs: over {duration(low * per_epoch)}")
    if s.epochs < (high or low):
        span += f"; this one stops by --epochs {s.epochs}: at most {duration(s.epochs * per_epoch)}"
    return (f"  {done} of {n_batches} batches in {seconds:.1f}s: about {duration(per_epoch)} per epoch on {device} "
            f"(training, without evaluation); {where} {span}")


def finished_results(out: Path, s: Settings) -> dict | None:
    """The results at `out` of a finished validation-selected run with settings s (all but those
    that do not change its numbers), or None when there is none to add a refit to. Raises
    SettingsError when the file holds a run with other settings: it is not overwritten."""
    if not out.is_file():
        return None
    results = read_results(out)
    if results.get("selected_on") != "valid" or results.get("best_epoch") is None or results.get("stopped_by"):
        return None
    differ = settings_differ(results, s)
    if differ:
        raise SettingsError(f"{out} holds a run with other settings ({', '.join(differ[:4])}): give another --out")
    changed = data_changed(results.get("provenance", {}).get("data_sha256", {}), s)
    if changed:
        raise SettingsError(f"{out} was trained on other data ({', '.join(changed)}): give another --out")
    return results


def finished_run(out: Path, s: Settings) -> dict | None:
    """finished_results, with None instead of an error for a torn or foreign file, or a run with
    other settings or data (for --resume, which then goes on as before)."""
    try:
        return finished_results(out, s)
    except (DataError, SettingsError):
        return None


def add_refit(s: Settings, results: dict, out: Path, device, deadline: float | None = None) -> dict:
    """The refit: train again from the same seed on all of train.txt (validation items back in)
    for exactly best_epoch + 1 epochs, with no selection, then evaluate on test once. Adds
    "refit" {"epochs", "test", "groups", "seconds", "model", "model_sha256"} to the results and
    rewrites them; the model goes to <out>.refit.pt. A checkpoint after every epoch
    (<out>.refit.ckpt.pt, which names the run it refits) lets --resume continue it. With a
    deadline (time.perf_counter(); fit's --max-minutes) it stops after the epoch in which that time
    passes and returns the results without a refit. The refit model never saw the test set."""
    if isinstance(results.get("refit"), dict) and "test" in results["refit"]:
        log(f"{out} already has its refit")
        return results
    log(f"{out}: selected epoch {results['best_epoch']} on validation; refitting on all of train.txt")
    epochs = results["best_epoch"] + 1
    run = {"settings": {k: v for k, v in results.get("settings", {}).items() if k not in RUN_FREE + ("refit",)},
           "data_sha256": results.get("provenance", {}).get("data_sha256"), "best_epoch": results["best_epoch"]}
    everything = dataclasses.replace(s, select_on="test")  # no validation split: all of train.txt
    ds, train_all, _ = read_data(everything)
    model_path, ckpt_path = out.with_suffix(".refit.pt"), out.with_suffix(".refit.ckpt.pt")
    torch.manual_seed(s.seed)
    trainer, start, seconds = Trainer(everything, ds, train_all, None, device), 0, 0.0
    if s.resume and ckpt_path.is_file():
        try:
            ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        except Exception as e:  # a truncated or foreign file: say which, not a traceback
            raise SettingsError(f"--resume: cannot read {ckpt_path} ({e}); delete it to start the refit afresh") from None
        if ck.get("run") != run or ck.get("epochs") != epochs:  # e.g. left by a run that --force replaced
            log(f"note: {ckpt_path} is the refit of another run (other settings, data or selected epoch): "
                "starting the refit afresh")
        else:
            trainer.load_state(ck["trainer"])
            start, seconds = ck["epoch"] + 1, ck["seconds"]
            log(f"resuming the refit {ckpt_path} after epoch {ck['epoch']}")
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        try:
            losses = trainer.train_epoch(epoch)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted in refit epoch {epoch}: " + (
                f"refit epochs up to {epoch - 1} are in {ckpt_path}; the same command with --resume continues it"
                if epoch > 0 else "no refit epoch finished; the selected run's results are kept, and the same "
                                  "command adds the refit")) from None
        seconds += time.perf_counter() - t0
        _save({"trainer": trainer.state(), "epoch": epoch, "epochs": epochs, "seconds": seconds, "run": run},
              ckpt_path)
        log(f"refit epoch {epoch:4d} of {epochs} | " + " ".join(f"{k} {v:.4f}" for k, v in losses.items()
                                                             if v is not None and k != "mask_rate")
            + f" | {seconds / 60:.1f} min")
        if deadline and time.perf_counter() >= deadline and epoch + 1 < epochs:
            log(f"time limit: --max-minutes {s.max_minutes:g} reached after refit epoch {epoch} of {epochs}; "
                f"--resume (in a sweep: the same tables command) continues the refit from {ckpt_path}")
            return results
    _save(trainer.model.state_dict(), model_path)
    test = trainer.evaluate("test")  # the refit's one look at test
    results["refit"] = {"epochs": epochs, "test": test, "groups": group_ndcg(trainer),
                        "seconds": round(seconds, 1), "model": str(model_path),
                        "model_sha256": _sha256(str(model_path))}
    _write_json(results, out)
    log(f"refit of {epochs} epochs on all of train.txt: test R@50 {test['recall@50']:.4f} N@50 "
        f"{test['ndcg@50']:.4f}; results in {out}, model in {model_path}")
    return results


# -- at the edges: memory, files, provenance ----------------------------------------------------
def memory_needed(s: Settings, ds: Dataset) -> int:
    """A rough estimate in bytes of a run's largest tensors: the embeddings, the propagated layers
    kept for the backward and Adam's moments, the batch's rows, the InfoNCE [N, B] matrices, and a
    chunk of evaluation scores."""
    n_nodes = node_counts(ds)[2]
    passes = 1 + 3 * (s.lambda3 > 0) + 2 * (s.lambda2 > 0)  # full-graph encodes per batch
    candidates = max(ds.n_users, ds.n_items) if s.contrast == "cross-domain" else s.batch_size
    return (4 * s.dim * (n_nodes * (2 * (s.layers + 1) * passes + 4) + 12 * s.batch_size)
            + 16 * s.batch_size * candidates * (s.lambda3 > 0)
            + 9 * min(s.eval_batch, ds.n_users) * ds.n_items)  # scores, relevance, hits


MEMORY_KNOBS = ("dim", "layers", "batch_size", "eval_batch")  # the settings check_memory can blame


def free_memory(device) -> int | None:
    """Bytes free on the device (CUDA: torch's count; CPU: MemAvailable of /proc/meminfo), or None
    where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def check_memory(s: Settings, ds: Dataset, device, free: int | None = None) -> None:
    """SettingsError when the run would not fit in `free` bytes (default: free_memory(device)),
    before anything is trained. It names the setting of MEMORY_KNOBS whose return to its default
    (the dataset's, else Settings') saves the most memory."""
    need = memory_needed(s, ds)
    free = free_memory(device) if free is None else free
    if free is None or need <= free:
        return
    default = lambda k: DATASET_DEFAULTS.get(s.dataset, {}).get(k, getattr(Settings, k))
    saved = {k: need - memory_needed(dataclasses.replace(s, **{k: default(k)}), ds) for k in MEMORY_KNOBS}
    name = max(saved, key=saved.get)
    gb = lambda b: f"{b / 2**30:.1f} GB"
    raise SettingsError(f"{option(name)} {getattr(s, name)}: this run needs about {gb(need)} of memory, but "
                        f"{device} has {gb(free)} free; lower {option(name)} (at {default(name)} it would need "
                        f"{gb(need - saved[name])})")


def _save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: an interrupted save never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def pick_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu. Raises SettingsError for cuda without a GPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SettingsError("--device cuda: no CUDA GPU is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available())
                        else "cpu")


# Settings a default --out name leaves out: those that never change a run's numbers, those
# --resume lets change (epochs, patience, min_epochs, refit), and those the name spells already.
NAME_FREE = ("epochs", "patience", "min_epochs", "refit", "dataset", "seed", "model", "graph", "variant",
             "select_on", "interest_nodes")


def settings_tag(s: Settings) -> str:
    """A short hash (8 hex digits) of the settings that differ from the defaults of the dataset and
    model (make_settings) and that --resume compares; "" at the defaults. `--lambda2 0.1` and
    `--lambda2 0.2` get different tags."""
    base = make_settings(dataset=s.dataset, model=s.model)
    differ = {f.name: getattr(s, f.name) for f in dataclasses.fields(Settings)
              if f.name not in RUN_FREE + NAME_FREE and getattr(s, f.name) != getattr(base, f.name)}
    return hashlib.sha256(json.dumps(differ, sort_keys=True).encode()).hexdigest()[:8] if differ else ""


def output_paths(s: Settings) -> tuple[Path, Path, Path]:
    """(results JSON, best model state, checkpoint). Default runs/<dataset>-seed<seed>.json; a
    baseline, graph, variant or test selection adds its name, and any other non-default setting
    that --resume compares a short hash of them (settings_tag), so runs never share a name."""
    if s.out:
        out = Path(s.out)
    else:
        tags = [t for t in (s.model if s.model != "cikgrec" else "",
                            s.graph if s.graph != "cikg" else "",
                            s.variant if s.variant != "paper" else "",
                            "testsel" if s.select_on == "test" else "",
                            "nointerests" if not s.interest_nodes else "", settings_tag(s)) if t]
        out = Path("runs") / f"{'-'.join([s.dataset] + tags)}-seed{s.seed}.json"
    return out, out.with_suffix(".pt"), out.with_suffix(".ckpt.pt")


class output_lock:
    """Holds <out>.lock (fcntl.flock, the holder's PID inside) while a run writes to --out.

    A second run on the same --out raises SettingsError at once, naming the holder's PID. The
    kernel drops the lock when its holder dies, so a lock file left by a killed run is taken over
    (with a note). Released, and the file removed, on exit."""

    def __init__(self, out: Path):
        self.path = Path(str(out) + ".lock")
        self.fd = None

    def __enter__(self):
        import fcntl
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise SettingsError(f"another run (PID {holder}) is training to {self.path.with_suffix('')} "
                                    f"and holds {self.path}; wait for it to end, or give another --out") from None
            try:  # the file may have been removed by a holder that ended in between: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = os.read(fd, 64).decode(errors="replace").strip()
        if stale:
            log(f"note: took over the lock {self.path} of PID {stale}, which no longer holds it (killed?)")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc):
        try:
            os.unlink(self.path)  # while still holding it, so no one locks a removed file
        except OSError:
            pass
        os.close(self.fd)
        return False


def existing_results(out: Path, s: Settings) -> str:
    """Why a new run does not replace the results at `out`: which run they hold and the options
    in which it differs from `s` (--force replaces it)."""
    try:
        r = read_results(out)
    except DataError as e:
        return f"{out} exists and is not a run's results ({e.message}): give --force to replace it, or another --out"
    saved = {**{f.name: f.default for f in dataclasses.fields(Settings)}, **r.get("settings", {})}
    differ = [f"{option(k)} {saved.get(k)} there, {getattr(s, k)} here" for k in settings_differ(r, s)]
    what = ("the results of a finished run" if not r.get("stopped_by") else
            f"the results of a run that stopped early ({str(r['stopped_by']).split(';')[0]})")
    options = f"; the options that differ: {', '.join(differ[:6])}" if differ else "; the same options as this run"
    return (f"{out} holds {what} (best epoch {r.get('best_epoch')} of {r.get('epochs_run')}){options}. A new run "
            "would replace them: give --force to do so, or another --out"
            + (", or --resume to continue it" if r.get("stopped_by") else ""))


def check_writable(out: Path, *beside: Path) -> None:
    """Before anything is written: --out names a file (not a folder, not a .pt, which is where a model
    goes) in a folder that exists or can be made and that takes a new file. Raises SettingsError."""
    if out.suffix == ".pt":
        raise SettingsError(f"--out {out}: give the results file (e.g. .json); the model is saved beside "
                            "it as .pt")
    for path in (out, *beside):
        if path.is_dir():
            raise SettingsError(f"--out {out}: {path} is a folder")
        if path.exists() and not path.is_file():  # e.g. /dev/null: a rename over it would replace it
            raise SettingsError(f"--out {out}: {path} exists and is not a regular file")
    for parent in reversed(out.parents):
        if parent.exists() and not parent.is_dir():
            raise SettingsError(f"--out {out}: {parent} is a file, not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as e:
        raise SettingsError(f"--out {out}: cannot write in {out.parent} ({e.strerror})") from None


def _sha256(path: str) -> str | None:
    if not path:
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _git_commit() -> str | None:
    """HEAD of the code's repository, with "+changes" when its tracked files differ from it."""
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, timeout=5,
                                    cwd=Path(__file__).parent).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")
        return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "") if head else None
    except (OSError, subprocess.SubprocessError):
        return None


def data_files(s: Settings) -> list:
    """The files a run with settings s reads (train, test, KG and interest files that exist), for
    provenance: fit records their SHA-256 by file name."""
    folder = Path(s.data_dir) / s.dataset
    files = [folder / f for f in ("train.txt", "test.txt", "kg_final.txt") if (folder / f).is_file()]
    interests = Path(s.interests) if s.interests else folder / "user_interest_clustered.txt"
    return files + ([interests] if s.interest_nodes and interests.is_file() else [])


def data_changed(saved_sha256: dict, s: Settings) -> list:
    """The files (data_files) that differ from the SHA-256 a run or checkpoint recorded
    (`saved_sha256`, file name -> hex digest): their paths, or "<name> (not found)" for those that
    no longer exist. Empty when the data is the same."""
    now = {p.name: p for p in data_files(s)}
    return [str(now[name]) if name in now else f"{name} (not found)"
            for name, sha in sorted(saved_sha256.items()) if name not in now or _sha256(str(now[name])) != sha]


def interest_lines(ds: Dataset, s: Settings, data_sha256: dict) -> list:
    """What train says of its interest file: which file, how many users have interests, and a
    warning when llm_interests.py cluster made it from answers of under half of the users with a
    prompt (its <file>.coverage.json, as after an `infer --limit` trial). Published files have no
    coverage file and are not judged. data_sha256: the digests fit has computed (data_files)."""
    if not s.interest_nodes:
        return ["interests: none (--no-interest-nodes)"]
    if not ds.interest_file:
        return ["interests: none (no user_interest_clustered.txt)"]
    path = Path(ds.interest_file)
    users = len(np.unique(ds.interest_edges[:, 0]))
    lines = [f"interests: {path} ({users} of {ds.n_users} users have interests, {ds.n_interests} interest nodes)"]
    try:
        cov = json.loads(path.with_name(path.stem + ".coverage.json").read_text())
        share, asked = cov["users_answered"] / cov["users_with_prompt"], cov["users_with_prompt"]
        fits = cov["interest_file_sha256"] == data_sha256.get(path.name)
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return lines
    if fits and share < 0.5:
        lines.append(f"warning: {path} was made by llm_interests.py cluster from LLM answers of "
                     f"{cov['users_answered']} of the {asked} users with a prompt ({share:.0%}), as after an "
                     "`infer --limit` trial; run infer for all users, then cluster, for a full one (make train "
                     "uses interests/<dataset>/user_interest_clustered.txt whenever it exists)")
    return lines


def read_data(s: Settings) -> tuple[Dataset, list, list | None]:
    """Read the dataset and carve the validation split: (dataset, training items per user,
    validation items per user or None with --select-on test). Raises DataError on bad files."""
    # --no-interest-nodes (Table 3 "w/o UIK"): the interest file is not even read
    ds = load_dataset(Path(s.data_dir) / s.dataset, s.interests or None, s.dataset, s.interest_nodes)
    for note in ds.warnings:
        log(f"warning: {note}")
    if s.select_on == "test":
        return ds, ds.train, None
    train_part, valid = split_validation(ds.train, s.split_seed)
    return ds, train_part, valid


# -- a saved run: its results, its model, its Fig. 3 groups -------------------------------------
HEADLINE_METRICS = ("recall@50", "recall@100", "ndcg@50", "ndcg@100")  # what every results file has


def _finite(v) -> bool:
    """A finite int or float (not a bool, a string or None), as read from a JSON file."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_results(path) -> dict:
    """A run's results JSON, checked: an object with a "test" dict of numbers in [0, 1] and, where
    present, whole-number epochs (best_epoch below epochs_run), a finished refit of best_epoch + 1
    epochs, and a "settings" dict whose values have the types of Settings'. Raises DataError naming
    the file (a torn, foreign or hand-edited file must not become a traceback or a wrong number)."""
    path = Path(path)
    try:
        with _open_text(path) as f:
            r = json.loads(f.read())
    except (UnicodeDecodeError, ValueError) as e:
        raise DataError(path, 0, f"not a results JSON ({type(e).__name__}: {e})") from None
    if not isinstance(r, dict) or not isinstance(r.get("test"), dict):
        raise DataError(path, 0, "not the results JSON of a run (no \"test\" metrics)")
    missing = [m for m in HEADLINE_METRICS if m not in r["test"]]
    if missing:
        raise DataError(path, 0, f"no test {missing[0]} in it")
    epoch = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0
    for key in ("best_epoch", "epochs_run"):
        if r.get(key) is not None and not epoch(r[key]):
            raise DataError(path, 0, f"{key} = {r[key]!r} is not an epoch (a whole number from 0)")
    if r.get("best_epoch") is not None and r.get("epochs_run") is not None and r["best_epoch"] >= r["epochs_run"]:
        raise DataError(path, 0, f"best_epoch {r['best_epoch']} is not below epochs_run {r['epochs_run']}")
    refit = r.get("refit")
    if refit is not None and not (isinstance(refit, dict) and isinstance(refit.get("test"), dict)
                                  and all(m in refit["test"] for m in HEADLINE_METRICS) and _finite(refit.get("seconds"))
                                  and epoch(refit.get("epochs"))):
        raise DataError(path, 0, "refit is not a finished refit ({\"epochs\", \"test\", \"seconds\", ...})")
    if refit is not None and r.get("best_epoch") is not None and refit["epochs"] != r["best_epoch"] + 1:
        raise DataError(path, 0, f"refit epochs = {refit['epochs']!r}, not best_epoch + 1 = {r['best_epoch'] + 1}")
    for name, test in (("test", r["test"]), ("refit test", (refit or {}).get("test", {}))):
        bad = [k for k, v in test.items() if not _finite(v)]
        if bad:
            raise DataError(path, 0, f"{name} {bad[0]} = {test[bad[0]]!r} is not a finite number")
        bad = [k for k, v in test.items() if not 0 <= v <= 1]  # Recall, NDCG, precision, hit rate
        if bad:
            raise DataError(path, 0, f"{name} {bad[0]} = {test[bad[0]]!r} is not between 0 and 1")
    if r.get("minutes") is not None and not _finite(r["minutes"]):
        raise DataError(path, 0, f"minutes = {r['minutes']!r} is not a finite number")
    for key in ("settings", "provenance"):
        if not isinstance(r.get(key, {}), dict):
            raise DataError(path, 0, f"{key} is not an object")
    kinds = {bool: ("True or False", lambda v: isinstance(v, bool)),
             int: ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
             float: ("a finite number", _finite), str: ("a string", lambda v: isinstance(v, str))}
    for f in dataclasses.fields(Settings):
        v = r.get("settings", {}).get(f.name)
        what, ok = kinds[type(f.default)]
        if v is not None and not ok(v):
            raise DataError(path, 0, f"settings {f.name} = {v!r} is not {what}")
    if not isinstance(r.get("provenance", {}).get("data_sha256", {}), dict):
        raise DataError(path, 0, "provenance data_sha256 is not an object")
    return r

def definition_changes(results: dict, s: Settings) -> list:
    """What changed in the computation of a run with settings s since its results (read_results)
    were made: the DEFINITION_CHANGES newer than their "definition" (1 when absent) that apply to
    s. [] when the results are still what this code computes."""
    made = results.get("definition", 1)
    return [what for version, what, changes in DEFINITION_CHANGES if version > made and changes(s)]


def load_trained(results_path, data_dir: str | None = None, device: str = "cpu",
                 refit: bool = True) -> tuple[Trainer, dict]:
    """The Trainer of a finished run with its model: the refit model (<results>.refit.pt, trained
    on all of train.txt) where the run has one and refit is True, else the selected model
    (<results>.pt); settings from the results JSON (fields this version does not know are
    ignored). data_dir overrides the saved data folder. Raises DataError on a missing or foreign
    file, a model of an older definition, a model file other than the one the run saved (SHA-256),
    and when the data files differ from those the run was trained on."""
    results_path = Path(results_path)
    if results_path.suffix == ".pt":
        raise DataError(results_path, 0, "give the run's results JSON; its model .pt is found beside it")
    if results_path.is_dir():
        raise DataError(results_path, 0, "is a folder: give the run's results JSON")
    if not results_path.is_file():
        raise DataError(results_path, 0, "not found (a finished run writes <out>.json and <out>.pt)")
    results = read_results(results_path)
    if "settings" not in results:
        raise DataError(results_path, 0, "not the results JSON of a run (no \"settings\")")
    use_refit = refit and isinstance(results.get("refit"), dict)
    model_path = results_path.with_suffix(".refit.pt" if use_refit else ".pt")
    model_sha256 = (results["refit"] if use_refit else results.get("provenance", {})).get("model_sha256")
    if use_refit and not isinstance(model_sha256, str):  # which .refit.pt is the run's cannot be told
        raise DataError(results_path, 0, "its refit has no model_sha256: which model file is its refit cannot be told")
    if not model_path.is_file():
        raise DataError(model_path, 0, "not found (a finished run writes <out>.json and <out>.pt"
                                       + (", its refit <out>.refit.pt)" if use_refit else ")"))
    known = {f.name for f in dataclasses.fields(Settings)}
    s = Settings(**{k: v for k, v in results["settings"].items() if k in known})
    s = dataclasses.replace(s, resume=False, device=device, **({"data_dir": data_dir} if data_dir else {}))
    if use_refit:
        s = dataclasses.replace(s, select_on="test")  # the refit's graph holds all of train.txt
    ds, train_part, valid = read_data(s)  # a missing folder or file is named here
    newer = definition_changes(results, s)
    if newer:
        raise DataError(results_path, 0, f"made under an older definition of the model; since then: {'; '.join(newer)}. "
                                         "Train it again")
    changed = data_changed(results.get("provenance", {}).get("data_sha256", {}), s)
    if changed:
        raise DataError(results_path, 0, f"the run was trained on other data (the SHA-256 of {', '.join(changed)} "
                                         "differs from the run's); give its --data-dir or --interests")
    if model_sha256 and _sha256(str(model_path)) != model_sha256:
        raise DataError(model_path, 0, "not the model this run saved (SHA-256; replaced by a later run to the "
                                       "same --out?)")
    trainer = Trainer(s, ds, train_part, valid, pick_device(device))
    try:
        trainer.model.load_state_dict(torch.load(model_path, map_location=trainer.device, weights_only=True))
    except Exception as e:  # truncated, foreign, or made for another graph (e.g. other interests)
        first = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
        raise DataError(model_path, 0, f"cannot load the model for this data ({first})") from None
    return trainer, results


class Recommendations(list):
    """recommend's rows (dicts with user, rank, item, title, score), best first per user, plus
    `unknown`: the requested users that are not in the dataset (left out, not an error)."""
    unknown: list = []


@dataclass
class Run:
    """A finished run loaded for use (load_run): its trainer (model, dataset, settings), its
    results, and the original ids of users and items (user_list.txt, item_list.txt; the dense
    ids as strings where a list is missing) with the items' titles ("" where unnamed)."""
    trainer: Trainer
    results: dict
    model_file: str
    user_ids: list
    item_ids: list
    titles: list

    def recommend(self, users=None, k: int = 10, original: bool = False, include_seen: bool = False,
                  chunk: int = 1024) -> Recommendations:
        """The top-k items of each user, with rank (1 = best) and score (the model's u . i).

        users: dense ids 0..n_users-1, or original ids (user_list.txt) with original=True; None:
        every user. A user's train.txt items are never recommended unless include_seen. Rows use
        the same kind of ids as the request (item ids too: dense ints, or original strings).
        Unknown users are left out and listed in `.unknown`; a user asked twice counts once.
        Raises SettingsError unless k is a whole number from 1."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise SettingsError(f"k must be a whole number from 1, got {k!r}")
        ds = self.trainer.ds
        users = None if users is None else list(dict.fromkeys(users))
        if users is None:
            dense, unknown = list(range(ds.n_users)), []
        elif original:
            index = {u: n for n, u in enumerate(self.user_ids)}
            dense = [index[str(u)] for u in users if str(u) in index]
            unknown = [u for u in users if str(u) not in index]
        else:
            ok = lambda u: isinstance(u, (int, np.integer)) and not isinstance(u, bool) and 0 <= u < ds.n_users
            dense, unknown = [int(u) for u in users if ok(u)], [u for u in users if not ok(u)]
        model = self.trainer.model
        model.eval()
        with torch.no_grad():
            ue, ie = model.user_item_embeddings()
            items, scores = top_items(ue, ie, np.array(dense, dtype=np.int64),
                                      None if include_seen else [ds.train[u] for u in dense], k, chunk)
        rows = Recommendations()
        rows.unknown = unknown
        for row, u in enumerate(dense):
            for rank, (i, sc) in enumerate(zip(items[row].tolist(), scores[row].tolist()), 1):
                if i < 0:
                    break
                rows.append({"user": self.user_ids[u] if original else u, "rank": rank,
                             "item": self.item_ids[i] if original else i, "title": self.titles[i], "score": sc})
        return rows


def load_run(results_path, data_dir: str | None = None, device: str = "cpu") -> Run:
    """A finished run ready to recommend: the refit model where the run has one, else the
    selected model (load_trained, which refuses a model or data that is not the run's). Raises
    DataError as load_trained."""
    trainer, results = load_trained(results_path, data_dir, device)
    folder = Path(trainer.s.data_dir) / trainer.s.dataset
    ds = trainer.ds

    def original(name, n, fields):
        path = folder / name
        ids = [parts[0] for parts in id_list_rows(path, fields)] if path.is_file() else []
        return ids if len(ids) >= n else [str(x) for x in range(n)]
    user_ids = original("user_list.txt", ds.n_users, "org_id remap_id")
    item_ids = original("item_list.txt", ds.n_items, "org_id remap_id name")
    titles = [item_title(n) for n in ds.item_names] + [""] * (ds.n_items - len(ds.item_names))
    use_refit = isinstance(results.get("refit"), dict)
    return Run(trainer, results, str(Path(results_path).with_suffix(".refit.pt" if use_refit else ".pt")),
               user_ids, item_ids, titles)


def write_recommendations(rows: list, out, fmt: str = "tsv") -> None:
    """rows (Run.recommend) as TSV with a header (user, rank, item, title, score) or JSONL, to
    the file `out` (written whole, then renamed) or to stdout (out None or "-")."""
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    else:
        flat = lambda v: " ".join(str(v).split())  # a tab or line break inside a title
        text = "user\trank\titem\ttitle\tscore\n" + "".join(
            f"{flat(r['user'])}\t{r['rank']}\t{flat(r['item'])}\t{flat(r['title'])}\t{r['score']:.6g}\n" for r in rows)
    if out in (None, "", "-"):
        sys.stdout.write(text)
        return
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)


def read_user_ids(path) -> list:
    """Original user ids for recommend --users: the first field of each non-blank line (a header
    line `user` is skipped). Raises DataError on a missing or empty file."""
    path = Path(path)
    ids = [fields[0] for _, fields in _raw_rows(path)]
    return ids[1:] if ids and ids[0].lower() in ("user", "user_id", "org_id") else ids


def sparsity_groups(counts: np.ndarray, n_groups: int = 4) -> tuple[np.ndarray, list]:
    """Fig. 3's user groups (KGAT protocol, Wang et al. 2019): users sorted by their number of
    training interactions are cut into groups holding about the same total number of
    interactions; users with the same count stay in one group, so there can be fewer groups.

    counts: int [n] training interactions per user. Returns (group index int [n], bounds: one
    (lowest count, highest count, users, interactions) per group, sparse to dense)."""
    counts = np.asarray(counts, dtype=np.int64)
    levels, per_level = np.unique(counts, return_counts=True)
    share = counts.sum() / n_groups
    level_group, g, acc = np.zeros(len(levels), dtype=np.int64), 0, 0
    for i, (c, k) in enumerate(zip(levels, per_level)):
        level_group[i] = g
        acc += c * k
        if acc >= share * (g + 1) and g < n_groups - 1:
            g += 1
    group = level_group[np.searchsorted(levels, counts)]
    bounds = [(int(counts[group == b].min()), int(counts[group == b].max()), int((group == b).sum()),
               int(counts[group == b].sum())) for b in np.unique(group)]
    return group, bounds


@torch.no_grad()
def group_ndcg(trainer: Trainer, k: int = 50, n_groups: int = 4) -> dict:
    """Test NDCG@k of each sparsity group (Fig. 3) for a trained model. Groups split the test
    users by their number of train.txt interactions. Returns {"bounds": [...], "ndcg": [...]}."""
    users, exclude, truth = trainer.eval_sets["test"]
    group, bounds = sparsity_groups([len(trainer.ds.train[u]) for u in users], n_groups)
    trainer.model.eval()
    ue, ie = trainer.model.user_item_embeddings()
    ndcg = []
    for g in range(len(bounds)):
        sel = np.flatnonzero(group == g)
        m = evaluate_ranking(ue, ie, users[sel], [exclude[i] for i in sel], [truth[i] for i in sel],
                             [k], trainer.s.eval_batch)
        ndcg.append(m[f"ndcg@{k}"])
    return {"bounds": bounds, "ndcg": ndcg}


# ----------------------------------------------------------------------------------------------
# 10. Commands: benchmark, download, command line
# ----------------------------------------------------------------------------------------------
# bench's breakdown: torch.profiler's names of the kernels (forward and backward) and of the
# model's methods (bench wraps them in record_function from outside; their forward only).
PROFILED = {"propagation": ("SymmetricSpMM", "SymmetricSpMMBackward"),
            "infonce": ("MeanLogSumExp", "MeanLogSumExpBackward")}
WRAPPED = ("contrastive_loss", "simgcl_loss", "reconstruction_loss")


def profile_batches(trainer: Trainer, batches: int = 8) -> dict:
    """Shares of the CPU time of `batches` training batches, by part: "propagation" (every sparse
    product, forward and backward), "infonce" (the InfoNCE denominators, forward and backward),
    the forward of each method of WRAPPED that ran, and "rest"; measured with torch.profiler."""
    from torch.profiler import ProfilerActivity, profile, record_function
    model = trainer.model
    for name in WRAPPED:  # wrapped on the instance: the model's code holds no timing
        method = getattr(model, name)
        setattr(model, name, lambda *a, _m=method, _n=name: _run_recorded(record_function, _n, _m, *a))
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            trainer.train_epoch(0, max_batches=batches)
            wall = time.perf_counter() - t0
    finally:
        for name in WRAPPED:
            delattr(model, name)
    totals = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages()}
    share = {part: sum(totals.get(k, 0.0) for k in keys) / wall for part, keys in PROFILED.items()}
    share.update({f"{n} forward": totals[n] / wall for n in WRAPPED if n in totals})
    return share


def _run_recorded(record_function, name, method, *args):
    with record_function(name):
        return method(*args)


def bench(s: Settings, epochs: int = 3, evals: int = 5) -> dict:
    """Seconds per training epoch (median of `epochs`), per full evaluation (median of `evals`),
    peak memory, and a breakdown of an epoch by part (profile_batches, scaled to the median
    epoch). The timed epochs run unprofiled. Prints the figures and writes them to
    runs/<dataset>-bench.json. Raises SettingsError, DataError."""
    import resource
    check_settings(s)
    if epochs < 1:
        raise SettingsError(f"--bench-epochs must be at least 1, got {epochs}")
    device = pick_device(s.device)
    if s.threads:
        torch.set_num_threads(s.threads)
    ds, train_part, valid = read_data(s)
    check_memory(s, ds, device)
    out = Path("runs") / f"{s.dataset}-bench.json"
    check_writable(out)
    torch.manual_seed(s.seed)
    trainer = Trainer(s, ds, train_part, valid, device)
    seconds = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        trainer.train_epoch(epoch)
        seconds.append(time.perf_counter() - t0)
        log(f"epoch {epoch}: {seconds[-1]:.1f}s")
    eval_times = []
    for _ in range(evals):
        t0 = time.perf_counter()
        trainer.evaluate("valid" if valid is not None else "test")
        eval_times.append(time.perf_counter() - t0)
    median = lambda v: float(np.median(v))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the profiler's own memory
    breakdown = {k: v * median(seconds) for k, v in profile_batches(trainer).items()}
    result = {"dataset": s.dataset, "device": str(device), "threads": torch.get_num_threads(),
              "epochs": epochs, "batches_per_epoch": math.ceil(len(trainer.pair_u) / s.batch_size),
              "epoch_seconds": median(seconds), "breakdown_seconds": breakdown,
              "eval_seconds": median(eval_times),
              "peak_rss_mb": peak_mb}
    print(f"{s.dataset}: {result['epoch_seconds']:.1f} s per training epoch (median of {epochs}; "
          f"{result['batches_per_epoch']} batches); of it, by torch.profiler over 8 batches: "
          + ", ".join(f"{k} {v:.1f}" for k, v in breakdown.items())
          + f"\n{s.dataset}: {result['eval_seconds']:.3f} s per full evaluation (median of {evals})"
          + f"\n{s.dataset}: peak resident memory {result['peak_rss_mb']:.0f} MB"
          + f" ({result['threads']} threads, {device})")
    out.write_text(json.dumps({**result, "per_epoch_seconds": seconds, "settings": dataclasses.asdict(s)}, indent=1))
    log(f"wrote {out}")
    return result


def git_blob_id(data: bytes) -> str:
    """The id git gives a file's content: SHA-1 of b"blob <size>\\0" + content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def download(datasets, data_dir, blobs_file=Path(__file__).parent / "data" / "GIT_BLOBS") -> None:
    """Fetch the datasets from the authors' repository at the pinned commit, checking every file
    against its upstream git blob id; files already present and verified are skipped.

    Raises DataError with one clear line when a file cannot be fetched or does not verify.
    """
    expected = {}
    for no, line in enumerate(Path(blobs_file).read_text().splitlines(), 1):
        if line.strip():
            blob, name = line.split()
            expected[name] = blob
    for ds in datasets:
        for name, blob in sorted(expected.items()):
            if not name.startswith(ds + "/"):
                continue
            path = Path(data_dir) / name
            if path.is_file() and git_blob_id(path.read_bytes()) == blob:
                continue
            url = DATA_URL.format(commit=DATA_COMMIT, dataset=ds, file=name.split("/", 1)[1])
            log(f"downloading {url}")
            try:
                with urllib.request.urlopen(url, timeout=60) as r:
                    data = r.read()
            except OSError as e:
                present = (f"present but not the upstream file (git blob {blob}), and " if path.is_file() else "")
                example = Path(__file__).resolve().parent.parent / "shared" / "data"
                hint = (f", e.g. make train DATA_DIR={example}" if example.is_dir()
                        and example.resolve() != Path(data_dir).resolve() else "")
                raise DataError(path, 0, f"{present}cannot download {url} ({getattr(e, 'reason', e)}); "
                                         f"without network, set DATA_DIR to a folder that has the files "
                                         f"({data_dir} has no verified {name}){hint}") from None
            if git_blob_id(data) != blob:
                raise DataError(path, 0, f"downloaded file does not match its upstream git blob {blob}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


# -- command line -----------------------------------------------------------------------------
HELP = {"interests": "default: <data-dir>/<dataset>/user_interest_clustered.txt",
        "out": "results JSON; default runs/<dataset>[-model-graph-...]-seed<seed>.json (model and "
               "checkpoint beside it)",
        "model": "a preset of the settings (MODELS): the baselines at their own papers' definitions"}


def add_settings_arguments(p: argparse.ArgumentParser, skip=()) -> None:
    """One option per Settings field but those in `skip` (default None: the dataset's defaults
    then apply)."""
    for f in dataclasses.fields(Settings):
        if f.name in skip:
            continue
        flag = option(f.name)
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f"default {'on' if f.default else 'off'}" if f.name not in DATASET_DEFAULTS["ml1m"]
                           else "default: the dataset's")
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            p.add_argument(flag, type=kind, default=None, choices=CHOICES.get(f.name),
                           help=HELP.get(f.name) or (f"default {f.default}" if f.name not in DATASET_DEFAULTS["ml1m"]
                                                     else "default: the dataset's"))


def make_settings(**given) -> Settings:
    """Settings as the command line builds them: the Settings defaults < the dataset's defaults
    (the authors' configs) < the model's preset (MODELS: a baseline's own definition) < `given`,
    e.g. make_settings(dataset="book-crossing", model="lightgcn", lr=1e-3)."""
    dataset, model = given.get("dataset", Settings.dataset), given.get("model", Settings.model)
    return dataclasses.replace(Settings(), **{**DATASET_DEFAULTS.get(dataset, {}), **MODELS.get(model, {}), **given})


def resolve_settings(args: argparse.Namespace) -> Settings:
    """make_settings from the options given on the command line (those not None)."""
    return make_settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
                            if getattr(args, f.name, None) is not None})


MOVED = {"tables": "python experiments.py tables", "explain": "python experiments.py explain"}


def build_parser() -> argparse.ArgumentParser:
    """The command line: train, bench, recommend, prepare, stats, download."""
    p = argparse.ArgumentParser(prog="cikgrec.py", description=__doc__.split("\n")[0], allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("train", "train, select on validation, evaluate on test"),
                       ("bench", "time a few training epochs and evaluations")):
        sp = sub.add_parser(name, allow_abbrev=False, help=text)
        add_settings_arguments(sp, skip=("out", "resume", "refit", "epochs", "patience") if name == "bench" else ())
        if name == "bench":
            sp.add_argument("--bench-epochs", type=int, default=3)
        else:
            sp.add_argument("--force", action="store_true", help="replace the results of an earlier run at --out")
    rp = sub.add_parser("recommend", allow_abbrev=False, help="top-K items per user from a trained run")
    rp.add_argument("--run", required=True, help="the run's results JSON (its model .pt beside it)")
    rp.add_argument("--k", type=int, default=20, help="items per user (default 20)")
    rp.add_argument("--users", help="file of original user ids, one a line (default: every user)")
    rp.add_argument("--out", help="output file (default: stdout)")
    rp.add_argument("--format", choices=("tsv", "jsonl"), default="tsv")
    rp.add_argument("--include-seen", action="store_true", help="do not exclude the user's train.txt items")
    rp.add_argument("--data-dir", help="the data folder, where it moved since the run")
    rp.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    pp = sub.add_parser("prepare", allow_abbrev=False, help="your own data: raw files -> a dataset folder")
    pp.add_argument("--interactions", required=True, help="CSV/TSV: user, item[, rating[, timestamp]]")
    pp.add_argument("--name", required=True, help="the dataset's name: it goes to <data-dir>/<name>/")
    pp.add_argument("--data-dir", default="data")
    pp.add_argument("--items", help="optional CSV/TSV: item, name")
    pp.add_argument("--kg", help="optional CSV/TSV of triples: head, relation, tail")
    for role, default in (("user", "user"), ("item", "item"), ("rating", "rating"), ("time", "timestamp"),
                          ("name", "name")):
        pp.add_argument(f"--{role}-col", default=default, help=f"header name or 1-based position (default {default})")
    pp.add_argument("--header", choices=("auto", "yes", "no"), default="auto",
                    help="auto: line 1 is a header when it names the user or item column")
    pp.add_argument("--sep", choices=("auto", *SEPARATORS), default="auto")
    pp.add_argument("--min-rating", type=float, help="keep only pairs rated at least this (positive feedback)")
    pp.add_argument("--min-user-interactions", type=int, default=5, help="drop users with fewer (paper: 10 for "
                                                                          "MovieLens, 5 otherwise; default 5)")
    pp.add_argument("--split-seed", type=int, default=0, help="the random 8:2 split without timestamps")
    pp.add_argument("--force", action="store_true", help="replace a dataset folder of that name")
    tp = sub.add_parser("stats", allow_abbrev=False, help="the paper's Table 2 for a dataset folder")
    tp.add_argument("--dataset", required=True)
    tp.add_argument("--data-dir", default="data")
    dp = sub.add_parser("download", allow_abbrev=False, help="fetch datasets from the authors' repository (verified)")
    dp.add_argument("--dataset", nargs="+", default=list(DATASETS), choices=DATASETS)
    dp.add_argument("--data-dir", default="data")
    return p


def keep_freed_memory() -> None:
    """Ask glibc to reuse freed memory instead of returning it to the system (the command line
    only: a library import leaves the process's allocator alone).

    Every training step allocates and frees tens of MB (InfoNCE logits, propagated layers). With
    glibc's defaults each such block is a fresh mmap whose pages the kernel must zero again, which
    doubles the run time on small CPUs. Raising the mmap and trim thresholds keeps those pages.
    """
    if platform.system() == "Linux":
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: 1 GiB
            libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD: never trim
        except (OSError, AttributeError):  # not glibc: keep the allocator's defaults
            pass


_keep_freed_memory = keep_freed_memory  # the name before it was public


def recommend_command(args) -> int:
    """recommend: load the run, score every requested user, write the rows; unknown users in a note."""
    if args.k < 1:
        raise SettingsError(f"--k must be at least 1, got {args.k}")
    if args.out not in (None, "", "-"):  # before the run is loaded; never over the run's own files
        out = Path(args.out)
        if out.suffix == ".pt":
            raise SettingsError(f"--out {out}: .pt is where runs keep their models; give the recommendations "
                                "a file of their own (e.g. recs.tsv)")
        if out.resolve() == Path(args.run).resolve():
            raise SettingsError(f"--out {out}: that is the run's own results file; give the recommendations "
                                "a file of their own (e.g. recs.tsv)")
        check_writable(out)
    users = list(dict.fromkeys(read_user_ids(args.users))) if args.users else None
    t0 = time.perf_counter()
    run = load_run(args.run, args.data_dir, args.device)
    t1 = time.perf_counter()
    rows = run.recommend(users, k=args.k, original=True, include_seen=args.include_seen)
    t2 = time.perf_counter()
    if users and len(rows.unknown) == len(users):
        raise SettingsError(f"none of the {len(users)} users of {args.users} is in {run.trainer.s.dataset} "
                            f"(user_list.txt), e.g. {users[0]!r}; --users takes original user ids")
    if rows.unknown:
        shown = ", ".join(map(str, rows.unknown[:20])) + (f" and {len(rows.unknown) - 20} more" if len(rows.unknown) > 20 else "")
        log(f"note: {len(rows.unknown)} of {len(users)} users are not in {run.trainer.s.dataset} "
            f"(user_list.txt), left out: {shown}")
    write_recommendations(rows, args.out, args.format)
    n_users = len({r["user"] for r in rows})
    log(f"{n_users} users x top {args.k} from {run.model_file}: loaded in {t1 - t0:.1f}s, scored in {t2 - t1:.2f}s"
        + (f"; written to {args.out}" if args.out not in (None, "-") else ""))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in MOVED:
        log(f"error: `{argv[0]}` moved to experiments.py: {MOVED[argv[0]]} {' '.join(argv[1:])}".rstrip())
        return 2
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    return exit_code(lambda: command(args), "interrupted outside the training epochs; where a checkpoint "
                     "exists beside --out, the same command with --resume continues from it.")


def command(args: argparse.Namespace) -> int:
    """Run the command the parsed command line names; its exit code when it ends normally."""
    if args.command == "download":
        download(args.dataset, args.data_dir)
        return 0
    if args.command == "prepare":
        st = prepare(args.interactions, args.name, args.data_dir, args.items, args.kg, args.user_col,
                     args.item_col, args.rating_col, args.time_col, args.name_col, args.header, args.sep,
                     args.min_rating, args.min_user_interactions, args.split_seed, args.force)
        for note in st["warnings"]:
            log(f"note: {note}")
        print(stats_markdown(args.name, st), end="")
        log(f"wrote {Path(args.data_dir) / args.name}/ (train.txt, test.txt, the id lists, "
            f"{'kg_final.txt, ' if args.kg else ''}stats.md)")
        return 0
    if args.command == "stats":
        st = dataset_stats(dataset_folder(Path(args.data_dir) / args.dataset))
        for note in st["warnings"]:
            log(f"note: {note}")
        print(stats_markdown(args.dataset, st), end="")
        return 0
    if args.command == "recommend":
        return recommend_command(args)
    s = resolve_settings(args)
    if args.command == "bench":
        bench(s, args.bench_epochs)
        return 0
    r = fit(s, force=args.force)
    print(json.dumps({"dataset": r["dataset"], "selected_on": r["selected_on"],
                      "best_epoch": r["best_epoch"], "test": r["test"]}, indent=2))
    return 0


def exit_code(action, interrupted: str, own: bool = True) -> int:
    """The command line's exit codes around `action` (a function returning one): 2 with one line
    for bad input or settings, 1 for a failed training, 130 for Ctrl-C (saying what the checkpoint
    holds, or `interrupted` when no epoch was running or `own` is False: a sweep's own words)."""
    try:
        return action()
    except (DataError, SettingsError) as e:
        log(f"error: {e}")
        return 2
    except TrainingError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt as e:
        log(str(e) if isinstance(e, Interrupted) and own else interrupted)
        return 130


if __name__ == "__main__":
    sys.exit(main())
