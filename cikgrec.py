"""CIKGRec: knowledge-aware recommendation with LLM-inferred user interests (Hu et al., AAAI 2025).

The method and a plain training loop, in the order the data flows; equation, table and figure
numbers are the paper's. Copy this one file into a project and it trains (numpy and torch only).

    1. Settings    Settings, DATASET_DEFAULTS (the authors' configs), MODELS (the baselines), VARIANTS
    2. Loading     load_dataset: the published format, errors naming file, line and value
    3. Split       split_validation: the validation carve-out from train.txt
    4. The CIKG    cikg_edges, Graph (D^-1/2 (A+I) D^-1/2), build_graphs (CIKG, views, GMAE graph)
    5. The model   class CIKGRec (Fig. 2): encode (f_G), bpr_loss (Eq. 10), contrastive_loss (Eqs. 8-9),
                   simgcl_loss, reconstruction_loss (Eqs. 3-7), transe_loss (Eq. 12), loss (Eq. 11), fold_in
    6. Its parts   two fast kernels, mask_rate (Eq. 3), the losses' terms: bpr, info_nce, sce, translation
    7. Sampling    negatives (Eq. 10's i'), TransE triples and corrupted tails
    8. Metrics     ranking_metrics, evaluate_ranking: full-ranking Recall@K, NDCG@K
    9. Training    Trainer and train_loop: the one loop, with early stopping, that the refit runs through
   10. main        `python cikgrec.py train ...`: select on validation, test once, print
Beside it, cikgrec_cli.py (the full command line) and cikgrec_prepare.py are the tool layer; it imports this file.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

# ---- 1. Settings ---------------------------------------------------------------------------------
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


# The authors' per-dataset configurations (their public repository laowangzi/CIKGRec, commit 4cd310f,
# the best config of each dataset); the rest are Settings defaults.
DATASET_DEFAULTS = {
    "ml1m": dict(layers=3, lr=5e-4, lambda1=1.8, l2=5e-5, edge_drop=0.1, node_drop=0.1, lambda3=0.03, tau=0.2,
                 eps=0.1, lambda2=0.15, eta=3.0, alpha=0.10, omega=0.95, mask_epochs=80, enc_layers=2,
                 replace_rate=0.0, recon_edge_drop=0.0, transe=False),
    "dbbook2014": dict(layers=3, lr=8e-4, lambda1=1.5, l2=1e-5, edge_drop=0.0, node_drop=0.0, lambda3=0.01, tau=0.2,
                       eps=0.1, lambda2=0.03, eta=2.0, alpha=0.05, omega=0.75, mask_epochs=150, enc_layers=2,
                       replace_rate=0.15, recon_edge_drop=0.2, transe=True),
    "book-crossing": dict(layers=4, lr=8e-4, lambda1=1.5, l2=5e-5, edge_drop=0.1, node_drop=0.0, lambda3=0.01,
                          tau=0.15, eps=0.1, lambda2=0.03, eta=2.0, alpha=0.05, omega=0.65, mask_epochs=120,
                          enc_layers=3, replace_rate=0.0, recon_edge_drop=0.0, transe=False),
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

# Where the paper and the authors' code (laowangzi/CIKGRec, commit 4cd310f) differ: each switch once, as
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
    # batches, n_kg counting KG triples and inverses only (we add: at least 1, so a
    # KG smaller than one batch still trains).
    "transe_head_first": (False, True),
}


def switches(variant: str) -> SimpleNamespace:
    """The VARIANTS column of `variant` ("paper" or "authors"): switches("authors").views, ..."""
    col = ("paper", "authors").index(variant)
    return SimpleNamespace(**{name: pair[col] for name, pair in VARIANTS.items()})


# --graph: the parts of the main graph (ui: Interact, kg: the KG, uj: Has-Interest; section 4)
GRAPHS = {"cikg": ("ui", "kg", "uj"), "cg": ("ui",), "cig": ("ui", "uj"), "ckg": ("ui", "kg")}
CHOICES = {"select_on": ("valid", "test"), "variant": ("paper", "authors"), "model": tuple(MODELS),
           "graph": tuple(GRAPHS), "device": ("auto", "cpu", "cuda"), "schedule": ("exp", "lin", "fixed"),
           "contrast": ("cross-domain", "simgcl")}


class SettingsError(ValueError):
    """A setting that cannot work (the command line reports it and exits with code 2)."""


def option(name: str) -> str:
    """The command-line flag of a Settings field: min_epochs -> --min-epochs."""
    return "--" + name.replace("_", "-")


def make_settings(**given) -> Settings:
    """Settings as the command line builds them: the Settings defaults < the dataset's defaults
    (the authors' configs) < the model's preset (MODELS: a baseline's own definition) < `given`,
    e.g. make_settings(dataset="book-crossing", model="lightgcn", lr=1e-3)."""
    dataset, model = given.get("dataset", Settings.dataset), given.get("model", Settings.model)
    return dataclasses.replace(Settings(), **{**DATASET_DEFAULTS.get(dataset, {}), **MODELS.get(model, {}), **given})


def parse_ks(text: str) -> list[int]:
    """'20,50,100' -> [20, 50, 100]. Raises ValueError on anything else."""
    return sorted({int(k) for k in text.split(",") if k.strip()})


# ---- 2. Loading the published format -------------------------------------------------------------
class DataError(Exception):
    """Bad input data: carries the file, the line number (0 = the whole file) and the problem."""

    def __init__(self, path, line: int, message: str):
        self.path, self.line, self.message = str(path), line, message
        super().__init__(f"{self.path}, line {line}: {message}" if line else f"{self.path}: {message}")


MAX_ID = 2**31 - 2  # the sparse adjacency indexes nodes with int32


def open_text(path: Path):
    """open() for reading, with DataError (not a traceback) on a folder, a missing or an
    unreadable file, or one that starts with a byte-order mark."""
    if path.is_dir():
        raise DataError(path, 0, "is a folder, not a file")
    try:
        f = open(path, encoding="utf-8", errors="replace")
    except OSError as e:
        raise DataError(path, 0, "file not found" if isinstance(e, FileNotFoundError) else f"cannot read it ({e.strerror})") from None
    if f.buffer.peek(3)[:3] == b"\xef\xbb\xbf":  # peek, not read and seek back: a pipe cannot seek
        f.close()
        raise DataError(path, 1, "the file starts with a byte-order mark (BOM, as some editors save UTF-8):"
                                 " save it as plain UTF-8 without a BOM")
    return f


def int_rows(path: Path, width: int | None = None):
    """Yield (line number, list of ints) for each non-blank line of a whitespace-separated file.

    width: the exact number of fields required (None: at least one). Raises DataError naming the
    file, line and offending value on a field that is not a plain id (ASCII digits, 0..MAX_ID), a
    wrong field count, an unreadable file or one with no data lines.
    """
    seen_data = False
    with open_text(path) as f:
        for no, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if width is not None and len(fields) != width:
                raise DataError(path, no, f"expected {width} fields, got {len(fields)}: {line.strip()[:80]!r}")
            bad = next((x for x in fields if not (x.isascii() and x.isdigit())), None)  # int() takes '+5', '٣'
            if bad is not None:
                raise DataError(path, no, f"ids must be >= 0, got {bad}" if bad[:1] == "-" and bad[1:].isascii()
                                and bad[1:].isdigit() else f"expected integer ids, got {bad!r}")
            values = [int(x) for x in fields]
            if max(values) > MAX_ID:
                raise DataError(path, no, f"id {max(values)} is too large (at most {MAX_ID})")
            seen_data = True
            yield no, values
    if not seen_data:
        raise DataError(path, 0, "the file is empty")


def read_user_items(path, n_items: int | None = None, n_users: int | None = None) -> dict[int, list[int]]:
    """Read a train.txt/test.txt file: one line `user item item ...` per user.

    Blank lines are skipped, repeated items of a user are kept once (first occurrence order), and
    a user on several lines gets the union. A line with only a user id gives that user no items.
    Returns {user id: [item ids]}. Raises DataError (file, line, value) on a malformed line, an
    item id >= n_items or a user id >= n_users (when given).
    """
    path = Path(path)
    out: dict[int, list[int]] = {}
    for no, values in int_rows(path):
        user, items = values[0], values[1:]
        if n_items is not None and items and max(items) >= n_items:
            raise DataError(path, no, f"item id {max(items)} out of range: there are {n_items} items "
                                      f"(ids 0..{n_items - 1}, item_list.txt)")
        if n_users is not None and user >= n_users:
            raise DataError(path, no, f"user id {user} out of range: user_list.txt has {n_users} users")
        known = out.setdefault(user, [])
        seen = set(known)
        known.extend(i for i in dict.fromkeys(items) if i not in seen)
    return out


def read_id_list(path, fields: str = "org_id remap_id") -> list[tuple[str, str]]:
    """An id list (user_, item_, entity_, relation_list.txt: `org_id remap_id [name...]`, header first, if any) ->
    [(org_id, name)] by remap id; the name is all after the second field (book-crossing titles hold spaces), ''
    where there is none or it is 'None'. Blank lines are skipped. Raises DataError naming the line of a row
    without a remap id (`fields`: the expected form) or out of order (remap ids run 0, 1, 2, ...)."""
    rows = []
    with open_text(Path(path)) as f:
        for no, line in enumerate(f, 1):
            parts = line.rstrip("\n").split(None, 2)
            if not parts or no == 1 and not (len(parts) > 1 and parts[1].isdigit()):
                continue  # a blank line, or the header (`org_id remap_id ...`)
            if len(parts) < 2 or not parts[1].isdigit():
                raise DataError(path, no, f"expected `{fields}`, got {line.strip()[:80]!r}")
            if int(parts[1]) != len(rows):
                raise DataError(path, no, f"remap id {parts[1]} out of order: expected {len(rows)}")
            rows.append((parts[0], "" if len(parts) < 3 or parts[2].strip() == "None" else parts[2].strip()))
    return rows


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


def flatten(lists) -> tuple[np.ndarray, np.ndarray]:
    """List of id lists -> (row index per entry, id per entry), both int64."""
    lens = [len(x) for x in lists]
    rows = np.repeat(np.arange(len(lists)), lens)
    cols = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]) if sum(lens) else rows
    return rows, cols


def load_dataset(folder, interests_file=None, name: str = "", with_interests: bool = True) -> Dataset:
    """Read a dataset folder: train.txt, test.txt (required), item_list.txt, kg_final.txt,
    user_interest_clustered.txt (optional: each missing one is noted in `warnings`). Items are
    counted by item_list.txt where it exists (else by the largest item id seen), users and
    entities by the largest id seen; the entities are the items plus the KG's. Interest ids must
    lie above every entity id; they are remapped to 0..J-1 in sorted order (with_interests=False:
    the file is not read). Raises DataError naming file, line and value on a malformed line (the
    checks that need more than one line are the tool layer's, cikgrec_prepare.check_dataset)."""
    folder, notes = Path(folder), []
    if not folder.is_dir():
        raise DataError(folder, 0, "dataset folder not found (run `make data`, or set --data-dir)")
    items = folder / "item_list.txt"
    names = [name for _, name in read_id_list(items, "org_id remap_id name")] if items.exists() else []
    n_items = len(names) or None
    train, test = (read_user_items(folder / f, n_items) for f in ("train.txt", "test.txt"))
    if n_items is None:
        n_items = 1 + max(max((max(v) for v in d.values() if v), default=-1) for d in (train, test))
    n_users = 1 + max(max(train), max(test))
    kg_path = folder / "kg_final.txt"
    kg = np.array([row for _, row in int_rows(kg_path, 3)] if kg_path.exists() else np.zeros((0, 3)), dtype=np.int64)
    if not kg_path.exists():
        notes.append(f"{kg_path} not found: running without item-side knowledge (no KG edges)")
    n_entities = max(n_items, int(kg[:, [0, 2]].max()) + 1 if len(kg) else 0)
    n_relations = int(kg[:, 1].max()) + 1 if len(kg) else 0

    int_path = Path(interests_file) if interests_file else folder / "user_interest_clustered.txt"
    edges, raw_ids = np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    if with_interests and (int_path.exists() or interests_file):
        rows = []
        for no, (u, j) in int_rows(int_path, 2):
            if u >= n_users:
                raise DataError(int_path, no, f"user id {u} out of range: train/test have {n_users} users")
            if j < n_entities:
                raise DataError(int_path, no, f"interest id {j} collides with the entity ids 0..{n_entities - 1} (interest"
                                              " ids come after the largest entity id: is kg_final.txt's largest right?)")
            rows.append((u, j))
        pairs = np.unique(np.array(rows, dtype=np.int64), axis=0)  # duplicate lines count once
        raw_ids, idx = np.unique(pairs[:, 1], return_inverse=True)
        edges = np.stack([pairs[:, 0], idx.reshape(-1)], axis=1)
    elif with_interests:
        notes.append(f"{int_path} not found: running without interest nodes")

    as_arrays = lambda d: [np.array(d.get(u, []), dtype=np.int64) for u in range(n_users)]
    return Dataset(name or folder.name, n_users, n_items, n_entities, n_relations, len(raw_ids),
                   as_arrays(train), as_arrays(test), kg, edges, raw_ids, names,
                   str(int_path) if len(raw_ids) else "", notes)


# ---- 3. Validation split -------------------------------------------------------------------------
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
        k, chosen = n_valid_items(len(items)), np.zeros(len(items), dtype=bool)
        if k:
            chosen[rng.choice(len(items), size=k, replace=False)] = True
        kept.append(items[~chosen])
        valid.append(np.sort(items[chosen]))
    return kept, valid

# ---- 4. The CIKG: node layout, edges, normalised adjacency ---------------------------------------
# Node layout: [users | entities (items first) | interests]. User u -> node u, entity e -> node
# n_users + e, interest j -> node n_users + n_entities + j.
def node_counts(ds: Dataset) -> tuple[int, int, int]:
    """(first entity node, first interest node, number of nodes) of the CIKG layout."""
    e0, j0 = ds.n_users, ds.n_users + ds.n_entities
    return e0, j0, j0 + ds.n_interests


def cikg_edges(ds: Dataset, train: list, parts=("ui", "kg", "uj")) -> np.ndarray:
    """Undirected CIKG edges, as node-id pairs int64 [m, 2] with a < b, deduplicated.

    parts: "ui" (Interact: user-item, from `train`), "kg" (item/entity knowledge, the KG triples
    with relations dropped: an undirected edge covers a relation and its inverse), "uj"
    (Has-Interest: user-interest). KG triples whose head equals their tail are left out (self-loops
    are a setting of the adjacency, not an edge). Section "LLM-based CIKG Construction".
    """
    e0, j0, _ = node_counts(ds)
    chunks = [np.zeros((0, 2), dtype=np.int64)]  # so that no part still concatenates
    if "ui" in parts:
        users, items = flatten(train)
        chunks.append(np.stack([users, e0 + items], axis=1))
    if "kg" in parts and len(ds.kg):
        chunks.append(e0 + ds.kg[:, [0, 2]])
    if "uj" in parts and len(ds.interest_edges):
        chunks.append(np.stack([ds.interest_edges[:, 0], j0 + ds.interest_edges[:, 1]], axis=1))
    edges = np.sort(np.concatenate(chunks).astype(np.int64), axis=1)
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
        self.row, self.col, self.eid = (torch.as_tensor(a[order], device=device) for a in (row, col, eid))
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
        dinv = torch.where(deg > 0, deg.pow(-0.5), 0.0)
        crow = F.pad(torch.cumsum(torch.bincount(row, minlength=self.n_nodes), 0), (1, 0)).int()  # row pointers
        # int32 indices: the sparse kernels would otherwise convert them on every product
        adj = torch.sparse_csr_tensor(crow, col.int(), w * dinv[row] * dinv[col], (self.n_nodes, self.n_nodes),
                                      check_invariants=False)
        if drop == 0.0:
            self._full, self.degree = adj, deg  # degree [n_nodes]: of the full graph (fold-in reads it)
        return adj


def build_graph(ds: Dataset, train: list, parts, loops: str = "all", device="cpu") -> Graph:
    """The Graph of the chosen CIKG parts; loops: "all" nodes, "ui" (users and items) or "none"."""
    e0, _, n = node_counts(ds)
    mask = None if loops == "none" else np.arange(n) < (n if loops == "all" else e0 + ds.n_items)
    return Graph(cikg_edges(ds, train, parts), n, mask, device)


@dataclass
class Graphs:
    """The graphs a CIKGRec model propagates on (built from the training interactions only)."""
    main: Graph  # G: the CIKG (or the part --graph names), for the BPR pass (Eq. 10) and scoring
    views: list  # Eq. 8's graphs of views 1, 2, 3 (SimGCL: G_R twice); [] without contrastive loss
    recon: Graph | None  # the GMAE's graph (Eq. 6); None without reconstruction loss


def build_graphs(ds: Dataset, train: list, hp, device="cpu") -> Graphs:
    """The Graphs of a model with settings hp (its graph, self_loops, contrast, lambda2, lambda3
    and variant, read through VARIANTS). train: the training items per user (never test items:
    a test edge in the graph would leak the answer). Reconstruction needs interest nodes in the
    graph."""
    sw, parts = switches(hp.variant), GRAPHS[hp.graph]
    loops = "all" if hp.self_loops else "none"
    main = build_graph(ds, train, parts, loops, device)
    views = []
    if hp.lambda3 > 0 and hp.contrast == "simgcl":
        views = [build_graph(ds, train, ("ui",), loops, device)] * 2
    elif hp.lambda3 > 0:
        views = [build_graph(ds, train, p, loops if lp == "main" else lp, device)
                 for p, lp in zip(sw.views, sw.view_loops)]
    recon = None if not (hp.lambda2 > 0 and "uj" in parts and ds.n_interests > 0) else (
        main if sw.recon_loops == "main" else build_graph(ds, train, parts, sw.recon_loops, device))
    return Graphs(main, views, recon)

# ---- 5. The model (Fig. 2, right half) -----------------------------------------------------------
class CIKGRec(torch.nn.Module):
    """CIKGRec: LightGCN on the CIKG trained with BPR, interest reconstruction and cross-domain
    contrastive learning (Eq. 11), and optionally TransE (Eq. 12).

    n_users, n_items, n_entities (items included), n_interests, n_relations: the node counts of the
    layout [users | entities, items first | interests]. graphs: build_graphs(...). hp: the settings
    it reads (a Settings, or any object with the same attributes): dim, layers, layer0, lambda1-3,
    l2, edge_drop, node_drop, contrast, tau, eps, eta, enc_layers, dec_layers, replace_rate,
    recon_edge_drop, self_loops, graph, transe_l2, variant. LightGCN is this model with lambda2 =
    lambda3 = 0; SimGCL with lambda2 = 0 and contrast = "simgcl" (MODELS)."""

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
        hp, adj = self.hp, self.graphs.recon.adjacency(self.hp.recon_edge_drop, self.sw.dropout_readds_loops)
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

    @torch.no_grad()
    def fold_in(self, items: list, interests: list | None = None) -> torch.Tensor:
        """Final embeddings [n_new, D] of users the model never saw ("fold-in"), from their item ids (one list
        per new user) and, where G has Has-Interest edges, their interest indices. Z and G stay frozen and each
        user is added alone, so no user depends on another: layer 0 is zero (a new user has no row of Z), layer
        k+1 is the sum over the user's neighbours n of z_n^k / sqrt(d d_n), plus z^k / d with self-loops, where
        d_n is n's degree in the trained G and d the user's own (neighbours, +1 with a self-loop); the mean over
        layers is encode's. A user with no neighbour in G gets zeros. Scores: dot products with
        user_item_embeddings' items. Raises ValueError on an item id or interest index out of range."""
        hp, g, h = self.hp, self.graphs.main, self.emb  # h: layer k of G
        adj, with_uj = g.adjacency(), interests is not None and "uj" in GRAPHS[hp.graph]
        for ids, n, what in ((items, self.n_items, "item ids"), (interests if with_uj else [], self.n_interests, "interest indices")):
            if any(len(x) and not 0 <= min(x) <= max(x) < n for x in ids):
                raise ValueError(f"fold_in: {what} must lie in 0..{n - 1}")
        nodes = [np.unique(np.concatenate([self.e0 + np.asarray(i, dtype=np.int64)] + (
            [self.j0 + np.asarray(interests[b], dtype=np.int64)] if with_uj else []))) for b, i in enumerate(items)]
        rows, cols = (torch.as_tensor(a, device=h.device) for a in flatten(nodes))
        rows, cols = rows[g.degree[cols] > 0], cols[g.degree[cols] > 0]  # a node outside G passes nothing
        d = torch.bincount(rows, minlength=len(items)).float() + float(hp.self_loops)
        edges = torch.sparse_coo_tensor(torch.stack([rows, cols]), (d[rows] * g.degree[cols]).rsqrt(),
                                        (len(items), g.n_nodes), check_invariants=True)
        x = total = torch.zeros(len(items), hp.dim, device=h.device)  # layer k of the new users, their sum
        for _ in range(hp.layers):
            x = torch.sparse.mm(edges, h) + x * (float(hp.self_loops) / d.clamp(min=1))[:, None]
            h, total = torch.sparse.mm(adj, h), total + x
        return total / (hp.layers + 1 if hp.layer0 else hp.layers)

# ---- 6. What the model calls: two fast kernels, Eq. 3's mask rate, the losses' terms -------------
# The kernels are the same mathematics as a plain expression, with fewer passes over memory. Why
# they exist: a CIKGRec step is ~20 full-graph sparse products and two dense [N, B] InfoNCE
# matrices. The tests hold each to its plain expression (values and gradcheck in float64).
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

def mask_rate(q: int, schedule: str, alpha: float, omega: float, big_lambda: int) -> float:
    """Eq. 3: the mask rate p^q at epoch q (from 0), capped at omega.

    lin: alpha + q (omega - alpha) / Lambda; exp: alpha (omega / alpha)^(q / Lambda);
    fixed: omega throughout (the ablation "w/o DMR"). Eq. 4: exp < lin for 0 < q < Lambda.
    """
    if schedule not in ("fixed", "lin", "exp"):
        raise ValueError(f"unknown mask schedule {schedule!r}")
    delta = (omega if schedule == "fixed" else alpha + q * (omega - alpha) / big_lambda if schedule == "lin"
             else alpha * (omega / alpha) ** (q / big_lambda))
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
    return torch.sign(h) * F.normalize(torch.rand_like(h) if r is None else r, dim=1) * eps


def bpr(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Eq. 10: mean of -ln sigma(pos - neg), computed as softplus(neg - pos) (finite for any
    margin; -log(sigmoid(x)) overflows to inf at x = -100 in float32). pos, neg: [B]."""
    return F.softplus(neg - pos).mean()


def l2(*rows: torch.Tensor) -> torch.Tensor:
    """1/2 * sum of squared L2 norms of the given layer-0 rows, divided by the batch size B.
    rows: tensors [B, D] (e.g. e_u, e_i, e_j of the batch): only the batch's rows count."""
    return sum(r.pow(2).sum() for r in rows) / 2.0 / rows[0].shape[0]


def info_nce(anchor: torch.Tensor, candidates: torch.Tensor, positive: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 9, one term: InfoNCE with cosine similarity s, averaged over the anchors.

    anchor: [B, D] (view 1 rows of the batch, duplicates kept); candidates: [N, D]; positive:
    int64 [B], the row of candidates that is each anchor's positive. Returns
    mean_b -log(exp(s(a_b, c_pos)/tau) / sum_n exp(s(a_b, c_n)/tau)).
    """
    a, c = F.normalize(anchor, dim=1), F.normalize(candidates, dim=1)
    pos = (a * c[positive]).sum(dim=1) / tau
    return MeanLogSumExp.apply(a, c, tau) - pos.mean()


def sce(target: torch.Tensor, recon: torch.Tensor, eta: float) -> torch.Tensor:
    """Eq. 7: mean over masked nodes of (1 - cos(z_j, z'''_j))^eta. target, recon: [m, D]."""
    return (1.0 - F.cosine_similarity(target, recon, dim=1)).pow(eta).mean()


def translation(h, r, t, t_neg, squared: bool = False) -> torch.Tensor:
    """Eq. 12: mean of -ln sigma(||h + r - t'|| - ||h + r - t||), each argument [B, D].
    squared=True uses squared distances (the authors' code); the paper writes norms."""
    d_pos, d_neg = (h + r - t).norm(dim=1), (h + r - t_neg).norm(dim=1)
    if squared:
        d_pos, d_neg = d_pos.pow(2), d_neg.pow(2)
    return F.softplus(d_pos - d_neg).mean()

# ---- 7. Sampling ---------------------------------------------------------------------------------
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
    neg, todo = redraw_clashes(lambda n: rng.integers(0, n_items, size=n), lambda rows, v: users[rows] * n_items + v,
                               positive_keys, len(users), max_rounds)
    if len(todo):
        raise RuntimeError(f"no negative item found for {len(todo)} draws (users with every item?)")
    return neg


def redraw_clashes(draw, key, taken: np.ndarray, n: int, max_rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised rejection sampling: values = draw(n); while key(rows, values[rows]) of some rows
    lies in the sorted keys `taken`, draw those rows again (max_rounds times at most). Returns
    (values, the rows still clashing after the last round)."""
    values, todo = draw(n), np.arange(n)
    for _ in range(max_rounds):
        k = key(todo, values[todo])
        clash = taken[np.searchsorted(taken, k).clip(max=len(taken) - 1)] == k if len(taken) else np.zeros(len(k), bool)
        todo = todo[clash]
        if not len(todo):
            break
        values[todo] = draw(len(todo))
    return values, todo


def kg_triples(ds: Dataset, train: list, with_interactions: bool = False) -> np.ndarray:
    """TransE triples (head node, relation, tail node) int64 [n, 3] for Eq. 12.

    The KG triples and their inverses (relation r + R). with_interactions adds user->item and
    item->user "interact" triples (relations 2R and 2R+1), as the authors' code does.
    """
    e0, R = ds.n_users, ds.n_relations
    h, r, t = e0 + ds.kg[:, 0], ds.kg[:, 1], e0 + ds.kg[:, 2]
    parts = [np.stack([h, r, t], 1), np.stack([t, r + R, h], 1)]
    if with_interactions:
        users, items = flatten(train)
        items = e0 + items
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
    neg, todo = redraw_clashes(lambda n: first + rng.integers(0, count, size=n),
                               lambda rows, t: key(triples[rows, 0], triples[rows, 1], t), true_keys, len(triples), max_rounds)
    keep = np.setdiff1d(np.arange(len(triples)), todo)
    return keep, neg[keep]

def head_first(heads: np.ndarray, batch: int, rng: np.random.Generator) -> np.ndarray:
    """KGAT's TransE sampler (the authors' code): `batch` heads, without replacement where there
    are enough, then one triple of each uniformly. heads: int64 [n], the head of each triple,
    sorted. Returns row indices int64 [batch] into those triples."""
    distinct, starts, counts = np.unique(heads, return_index=True, return_counts=True)
    pick = rng.choice(len(distinct), size=batch, replace=batch > len(distinct))
    return starts[pick] + (rng.random(batch) * counts[pick]).astype(np.int64)

# ---- 8. Metrics: full ranking, Recall@K, NDCG@K, Precision@K, HitRatio@K -------------------------
def id_pairs(lists, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """List of item-id lists (one per row) -> the unique (row, item) pairs as two int64 arrays,
    sorted by row: `5 7 7 9` on row 0 -> (0, 7), (0, 9). Done once per evaluation set."""
    keys = pair_keys(*flatten(lists), n_items)
    return keys // n_items, keys % n_items


def _metric_sums(scores: torch.Tensor, exclude: tuple, truth: tuple, ks) -> tuple[dict, int]:
    """Sums over users (not means) of each metric, and the number of users with a truth item.

    scores: float [n, n_items] (modified in place: excluded items get -inf); exclude and truth:
    id_pairs (rows 0..n-1). An excluded item is never a hit, even when K reaches past the items
    left to rank. Sums let chunked evaluation average over users, not over chunks.
    """
    (n, n_items), dev = scores.shape, scores.device
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
        hits, dcg = hit[:, :k].sum(1), (hit[:, :k] * discount[:k]).sum(1)
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
    loops over users in Python). Averages over users, never over chunks (a mean of chunk means
    would weigh the users of a short last chunk more).
    """
    n_items = item_emb.shape[0]
    paired = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], np.ndarray)
    ex = exclude if paired(exclude) else id_pairs(exclude, n_items)
    tr = truth if paired(truth) else id_pairs(truth, n_items)
    totals, count = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "precision", "hit")}, 0
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


def selection_score(metrics: dict) -> float:
    """What early stopping and model selection maximise: Recall@50 + NDCG@50."""
    return metrics["recall@50"] + metrics["ndcg@50"]


# ---- 9. Training: the Trainer (batches, optimisers, evaluation sets) and the one loop ------------
class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss): the last good checkpoint is kept."""


def log(msg: str) -> None:
    """Progress goes to stderr, results to stdout."""
    print(msg, file=sys.stderr, flush=True)


def read_data(s: Settings, load=None) -> tuple[Dataset, list, list | None]:
    """The dataset (read by `load`, default load_dataset), the training items per user and the
    validation items per user (None with --select-on test). Raises DataError on bad files."""
    # --no-interest-nodes (Table 3 "w/o UIK"): the interest file is not even read
    ds = (load or load_dataset)(Path(s.data_dir) / s.dataset, s.interests or None, s.dataset, s.interest_nodes)
    for note in ds.warnings:
        log(f"warning: {note}")
    return (ds, ds.train, None) if s.select_on == "test" else (ds, *split_validation(ds.train, s.split_seed))


class Trainer:
    """One run's training around a CIKGRec model: the training pairs, negative sampling and batches,
    the optimisers, the random generators and the evaluation sets. train_part: the training items
    per user (train.txt less validation); valid: the validation items per user, or None when
    selecting on test (the authors' protocol)."""

    def __init__(self, s: Settings, ds: Dataset, train_part: list, valid: list | None, device):
        torch.manual_seed(s.seed)  # first: the model's initialisation draws from it
        self.s, self.ds, self.train, self.valid, self.device = s, ds, train_part, valid, device
        self.sw, graphs = switches(s.variant), build_graphs(ds, train_part, s, device)
        self.model = CIKGRec(ds.n_users, ds.n_items, ds.n_entities, ds.n_interests, ds.n_relations, graphs, s).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=s.lr)
        self.transe = s.transe and len(ds.kg) > 0
        if self.transe:
            self.triples = kg_triples(ds, train_part, with_interactions=self.sw.transe_interactions)
            self.n_kg_triples = len(kg_triples(ds, train_part))  # the authors' count of batches
            self.opt_transe = torch.optim.Adam([self.model.emb, self.model.rel], lr=s.transe_lr)
        self.on_batch = None  # on_batch(batches done, batches, seconds) after each batch: the tool's progress
        self.rng = np.random.default_rng(s.seed)
        self.model.noise_rng = self.rng if device.type == "cpu" else None
        # BPR pairs; users with every item have no negative and are left out
        users, items = flatten(train_part)
        full = np.array([len(x) >= ds.n_items for x in train_part])
        self.notes = [f"{int(full.sum())} users have every item: left out of BPR (no negative)"] if full.any() else []
        keep = ~full[users]
        self.pair_u, self.pair_i = users[keep], items[keep]
        if not len(self.pair_u):
            raise DataError(Path(s.data_dir) / s.dataset / "train.txt", 0, "no (user, item) pair to train on")
        self.pos_keys = pair_keys(users, items, ds.n_items)
        # evaluation sets: users with held-out items and at least one training item (a user with none has no embedding
        # learned from interactions: scoring them would only add noise)
        no_train = np.array([len(x) == 0 for x in ds.train])
        if no_train.any():
            self.notes.append(f"{int(no_train.sum())} users have no training items: left out of BPR and evaluation")
        self.eval_sets, self.eval_pairs = {}, {}
        for name, truth, exclude in (("valid", valid, train_part), ("test", ds.test, ds.train))[valid is None:]:
            users = np.array([u for u in range(ds.n_users) if len(truth[u]) and not no_train[u]], dtype=np.int64)
            self.eval_sets[name] = (users, [exclude[u] for u in users], [truth[u] for u in users])
            self.eval_pairs[name] = tuple(id_pairs(x, ds.n_items) for x in self.eval_sets[name][1:])
        if valid is not None and not len(self.eval_sets["valid"][0]):
            raise DataError(Path(s.data_dir) / s.dataset / "train.txt", 0, "no user has enough training items "
                            "for a validation split (4 or more); use --select-on test")

    def train_epoch(self, epoch: int, max_batches: int | None = None) -> dict:
        """One pass over the shuffled training pairs, one negative each (max_batches: stop
        early, for bench). Returns the mean loss parts, the mask rate and the TransE loss."""
        s = self.s
        order = self.rng.permutation(len(self.pair_u))
        users, items = self.pair_u[order], self.pair_i[order]
        negs = sample_negatives(users, self.pos_keys, self.ds.n_items, self.rng)
        rate = mask_rate(epoch, s.schedule, s.alpha, s.omega, s.mask_epochs)
        totals, n_batches = {}, math.ceil(len(users) / s.batch_size)
        epoch_start = time.perf_counter()
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
            if self.on_batch is not None:
                self.on_batch(b + 1, n_batches, time.perf_counter() - epoch_start)
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
        order, total = None if sw.transe_head_first else self.rng.permutation(len(trip)), 0.0
        for b in range(n_batches):
            sel = (head_first(trip[:, 0], s.transe_batch, self.rng) if order is None
                   else order[b * s.transe_batch:(b + 1) * s.transe_batch])
            h, r, t, tn = (torch.from_numpy(a).to(self.device) for a in (*trip[sel].T, neg[sel]))
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


@dataclass
class Progress:
    """Where a training loop stands, early stopping included: what a checkpoint saves."""
    patience: int = 10  # evaluations without improvement before early stopping
    epoch: int = -1  # the last finished epoch
    best: float = -math.inf  # the best selection_score so far
    best_epoch: int = -1  # its epoch
    bad: int = 0  # evaluations since then
    history: list = field(default_factory=list)  # per epoch: losses, metrics, seconds, eval_seconds
    best_state: dict | None = None  # the selected model's state_dict (a copy)


def train_loop(trainer: Trainer, epochs: int, select: str | None = "valid", min_epochs: int = 0,
               progress: Progress | None = None, after_epoch=None) -> Progress:
    """The one loop of every run, selection and refit alike. select "valid" or "test": evaluate
    after each epoch, keep a copy of the best model by selection_score, stop after patience
    evaluations without improvement but never before min_epochs epochs; None (the refit): exactly
    `epochs` epochs (the most in all, from 0), no evaluation. progress: one to continue (resume),
    updated in place, so a caller that catches Ctrl-C or TrainingError knows the last finished
    epoch. after_epoch(progress, more), after each epoch (`more`: whether the loop would go on),
    stops the loop by returning True: the tool layer's checkpoints, deadline and progress lines."""
    p = progress or Progress(trainer.s.patience)
    going_on = lambda e: e + 1 < epochs and not (select and p.bad >= p.patience and e + 1 >= min_epochs)
    while going_on(p.epoch):
        epoch, t0 = p.epoch + 1, time.perf_counter()
        record = {"epoch": epoch, **trainer.train_epoch(epoch)}
        seconds, eval_seconds = time.perf_counter() - t0, 0.0
        if select:
            t1 = time.perf_counter()
            record[select] = metrics = trainer.evaluate(select)
            eval_seconds = time.perf_counter() - t1
            score, p.bad = selection_score(metrics), p.bad + 1
            if score > p.best:
                p.best, p.best_epoch, p.bad = score, epoch, 0
                p.best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        p.history.append({**record, "seconds": round(seconds, 3), "eval_seconds": round(eval_seconds, 3)})
        p.epoch = epoch
        if after_epoch is not None and after_epoch(p, going_on(epoch)):
            break
    return p


# ---- 10. main: train, select on validation, test once --------------------------------------------
def add_settings_arguments(p: argparse.ArgumentParser, skip=(), notes: dict | None = None) -> None:
    """One option per Settings field but those in `skip`, default None (the dataset's defaults
    then apply); notes: {field: help text} instead of the default's."""
    for f in (f for f in dataclasses.fields(Settings) if f.name not in skip):
        default = ("default: the dataset's" if f.name in DATASET_DEFAULTS["ml1m"] else
                   f"default {({True: 'on', False: 'off'}.get(f.default) if f.type == 'bool' else f.default)}")
        if f.type in ("bool", bool):
            p.add_argument(option(f.name), action=argparse.BooleanOptionalAction, default=None, help=default)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            p.add_argument(option(f.name), type=kind, default=None, choices=CHOICES.get(f.name),
                           help=(notes or {}).get(f.name) or default)


# What each number may be: (test, what the error says, the fields); check() reads it
SETTING_RULES = (
    (lambda v: v >= 1, "must be at least 1", ("dim", "layers", "dec_layers", "batch_size", "eval_batch",
                                              "transe_batch", "mask_epochs", "epochs", "patience")),
    (lambda v: v >= 0, "must be >= 0", ("enc_layers", "min_epochs", "max_minutes", "threads", "seed", "split_seed",
                                        "l2", "transe_l2", "lambda1", "lambda2", "lambda3", "eps")),
    (lambda v: v < 2**32, "must be < 2**32", ("seed", "split_seed")),  # numpy's and torch's generators
    (lambda v: v > 0, "must be > 0", ("lr", "transe_lr", "tau")),
    (lambda v: 0 <= v < 1, "must be in [0, 1)", ("edge_drop", "node_drop", "replace_rate", "recon_edge_drop")),
    (lambda v: 0 <= v <= 1, "is a rate in [0, 1]", ("alpha", "omega")),
    (lambda v: v >= 1, "must be >= 1 (Eq. 7)", ("eta",)))


def check(s: Settings) -> Settings:
    """Reject settings that cannot work, before anything is read: SettingsError naming the first and
    its value (a choice outside CHOICES, a number not finite or breaking SETTING_RULES, --schedule
    exp with alpha 0, --ks not positive integers, --device cuda without a GPU). Returns s."""
    for name, allowed in CHOICES.items():
        if getattr(s, name) not in allowed:
            raise SettingsError(f"{option(name)} must be one of {', '.join(allowed)}, got {getattr(s, name)!r}")
    bad = [f.name for f in dataclasses.fields(s) if f.type in ("float", float) and not math.isfinite(getattr(s, f.name))]
    bad = [(n, "must be a finite number") for n in bad] + [(n, m) for ok, m, ns in SETTING_RULES for n in ns
                                                            if not ok(getattr(s, n))]
    if bad:
        raise SettingsError(f"{option(bad[0][0])} {bad[0][1]}, got {getattr(s, bad[0][0])}")
    if s.schedule == "exp" and s.alpha <= 0.0:
        raise SettingsError(f"--schedule exp needs --alpha > 0 (Eq. 3 divides by it), got {s.alpha}")
    ks = [k.strip() for k in s.ks.split(",") if k.strip()]
    if not ks or not all(k.isascii() and k.isdigit() and int(k) > 0 for k in ks):
        raise SettingsError(f"--ks must be comma-separated positive integers, got {s.ks!r}")
    if s.device == "cuda" and not torch.cuda.is_available():
        raise SettingsError("--device cuda: no CUDA GPU is available")
    return s


def train(s: Settings) -> dict:
    """Train with settings s, select the epoch on validation (on test with select_on="test"),
    evaluate the selected model on test once. Returns {"best_epoch", "valid", "test"}."""
    torch.set_num_threads(check(s).threads or torch.get_num_threads())
    device = torch.device("cuda" if s.device != "cpu" and torch.cuda.is_available() else "cpu")
    ds, train_part, valid = read_data(s)
    trainer, select = Trainer(s, ds, train_part, valid, device), s.select_on
    log(f"{s.dataset}: {ds.n_users} users, {ds.n_items} items, {ds.n_entities} entities, {ds.n_interests} interest "
        f"nodes; model {s.model}, variant {s.variant}, selection on {select}, device {device}")
    say = lambda p, more: log(f"epoch {p.epoch:4d} | " + " ".join(f"{k} {v:.4f}" for k, v in p.history[-1].items() if k in (
        "bpr", "cl", "rec", "transe") and v) + f" | {select} R@50 {p.history[-1][select]['recall@50']:.4f}")
    p = train_loop(trainer, s.epochs, select, s.min_epochs, after_epoch=say)
    trainer.model.load_state_dict(p.best_state)
    best = next(h for h in p.history if h["epoch"] == p.best_epoch)
    return {"best_epoch": p.best_epoch, "valid": best.get("valid"), "test": trainer.evaluate("test")}


def main(argv=None) -> int:
    """The plain command line: `train` with every setting as an option, printing the test metrics of
    the selected epoch as JSON (results files, resume, refit, recommend: `python cikgrec_cli.py`)."""
    p = argparse.ArgumentParser(prog="cikgrec.py", description=__doc__.split("\n")[0], allow_abbrev=False)
    add_settings_arguments(p.add_subparsers(dest="command", required=True).add_parser("train", allow_abbrev=False),
                           ("out", "resume", "refit", "max_minutes"))  # a run's files: cikgrec_cli.py's
    args = p.parse_args(argv)
    try:
        r = train(make_settings(**{k: v for k, v in vars(args).items() if k != "command" and v is not None}))
    except (DataError, SettingsError, TrainingError, ValueError) as e:  # ValueError: e.g. --ks 20,abc
        log(f"error: {e}")
        return 1 if isinstance(e, TrainingError) else 2
    print(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
