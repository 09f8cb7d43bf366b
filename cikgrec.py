"""CIKGRec: knowledge-aware recommendation with LLM-inferred user interests (AAAI 2025).

One readable file, in the order the data flows: settings -> data -> validation split -> the CIKG
-> LightGCN -> losses (Eqs. 3-12) -> sampling -> evaluation -> training -> benchmark -> download
-> experiments (the paper's tables, Fig. 3, Fig. 4) -> command line. Equation, table and figure
numbers refer to the paper (Hu et al., AAAI 2025).

    python cikgrec.py train --dataset book-crossing --data-dir ../shared/data
    python cikgrec.py bench --dataset book-crossing --data-dir ../shared/data
    python cikgrec.py tables --table table1 --dataset book-crossing --seeds 5
    python cikgrec.py explain --run runs/book-crossing-seed2024.json --user 2362
"""
from __future__ import annotations

import argparse
import csv
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

import numpy as np
import torch
import torch.nn.functional as F


def _keep_freed_memory() -> None:
    """Ask glibc to reuse freed memory instead of returning it to the system.

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


_keep_freed_memory()
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

# ----------------------------------------------------------------------------------------------
# Settings
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
    variant: str = "paper"  # paper | authors (see README: where the paper and their code differ)
    model: str = "cikgrec"  # cikgrec | lightgcn | simgcl
    graph: str = "cikg"  # cikg | cg | cig | ckg: which parts the main graph holds
    device: str = "auto"  # auto | cpu | cuda
    epochs: int = 2000  # maximum epochs
    patience: int = 10  # evaluations without improvement before stopping
    min_epochs: int = 0  # no early stop before this many epochs (0: the authors' protocol)
    max_minutes: float = 0.0  # stop after the epoch in which this many minutes passed (0: no limit)
    resume: bool = False  # continue from the checkpoint beside --out
    ks: str = "20,50,100"  # cut-offs K of Recall@K, NDCG@K, Precision@K, HitRatio@K
    # encoder and BPR (Eq. 10)
    dim: int = 64  # embedding dimension D
    layers: int = 3  # LightGCN layers l
    lr: float = 5e-4  # Adam learning rate
    batch_size: int = 1024  # BPR triples per batch
    lambda1: float = 1.8  # weight of BPR, Eq. 11
    l2: float = 5e-5  # L2 on the batch's layer-0 embeddings
    self_loops: bool = True  # D^-1/2 (A+I) D^-1/2 instead of D^-1/2 A D^-1/2
    edge_drop: float = 0.1  # share of undirected CIKG edges dropped in the BPR pass
    node_drop: float = 0.0  # message dropout on every layer's output in the BPR pass
    # cross-domain contrastive learning (Eqs. 8-9)
    lambda3: float = 0.03  # weight of the contrastive loss, Eq. 11
    tau: float = 0.2  # InfoNCE temperature
    eps: float = 0.1  # SimGCL noise magnitude on view 1
    # user interest reconstruction, GMAE (Eqs. 3-7)
    lambda2: float = 0.15  # weight of the reconstruction loss, Eq. 11
    eta: float = 3.0  # exponent of the cosine loss, Eq. 7
    alpha: float = 0.1  # initial mask rate, Eq. 3
    omega: float = 0.95  # maximum mask rate, Eq. 3
    mask_epochs: int = 80  # Lambda, epochs to reach omega, Eq. 3
    schedule: str = "exp"  # exp | lin | fixed (fixed: the rate is omega throughout)
    enc_layers: int = 2  # GMAE encoder layers (l-1), Eq. 6
    dec_layers: int = 1  # GMAE decoder layers, Eq. 6
    replace_rate: float = 0.0  # share of masked nodes given another node's embedding
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

CHOICES = {"select_on": ("valid", "test"), "variant": ("paper", "authors"),
           "model": ("cikgrec", "lightgcn", "simgcl"), "graph": ("cikg", "cg", "cig", "ckg"),
           "device": ("auto", "cpu", "cuda"), "schedule": ("exp", "lin", "fixed")}


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
    for name in ("dim", "layers", "dec_layers", "batch_size", "eval_batch", "transe_batch",
                 "mask_epochs", "epochs", "patience"):
        if getattr(s, name) < 1:
            raise SettingsError(f"{option(name)} must be at least 1, got {getattr(s, name)}")
    for name in ("enc_layers", "min_epochs", "max_minutes", "threads", "seed", "split_seed", "l2", "transe_l2",
                 "lambda1", "lambda2", "lambda3", "eps"):
        if getattr(s, name) < 0:
            raise SettingsError(f"{option(name)} must be >= 0, got {getattr(s, name)}")
    for name in ("seed", "split_seed"):
        if getattr(s, name) >= 2**32:  # what numpy's and torch's generators all accept
            raise SettingsError(f"{option(name)} must be < 2**32, got {getattr(s, name)}")
    for name in ("lr", "transe_lr"):
        if getattr(s, name) <= 0:
            raise SettingsError(f"{option(name)} must be > 0, got {getattr(s, name)}")
    for name in ("edge_drop", "node_drop", "replace_rate", "recon_edge_drop"):
        if not 0.0 <= getattr(s, name) < 1.0:
            raise SettingsError(f"{option(name)} must be in [0, 1), got {getattr(s, name)}")
    if not (0.0 <= s.alpha <= 1.0 and 0.0 <= s.omega <= 1.0):
        raise SettingsError(f"--alpha and --omega are rates in [0, 1], got {s.alpha} and {s.omega}")
    if s.schedule == "exp" and s.alpha <= 0.0:
        raise SettingsError(f"--schedule exp needs --alpha > 0 (Eq. 3 divides by it), got {s.alpha}")
    if s.tau <= 0.0 or s.eta < 1.0:
        raise SettingsError(f"--tau must be > 0 and --eta >= 1, got {s.tau} and {s.eta}")
    try:
        ks = parse_ks(s.ks)
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise SettingsError(f"--ks must be comma-separated positive integers, got {s.ks!r}")
    return s


def parse_ks(text: str) -> list[int]:
    """'20,50,100' -> [20, 50, 100]. Raises ValueError on anything else."""
    return sorted({int(k) for k in text.split(",") if k.strip()})


# ----------------------------------------------------------------------------------------------
# Data
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
    a user on several lines gets the union (noted in `notes`, unless the lines are identical). A
    line with only a user id gives that user no items. Returns {user id: [item ids]}. Raises
    DataError (file, line, value) on a malformed line, an item id >= n_items or a user id >=
    n_users (when given).
    """
    path = Path(path)
    out: dict[int, list[int]] = {}
    first_line: dict[int, tuple] = {}
    for no, values in _int_rows(path):
        user, items = values[0], values[1:]
        if n_items is not None and items and max(items) >= n_items:
            raise DataError(path, no, f"item id {max(items)} out of range: there are {n_items} items "
                                      f"(ids 0..{n_items - 1}, item_list.txt)")
        if n_users is not None and user >= n_users:
            raise DataError(path, no, f"user id {user} out of range: user_list.txt has {n_users} users")
        if user in first_line and first_line[user][1] != values and notes is not None:
            notes.append(f"{path}, line {no}: user {user} also on line {first_line[user][0]}; items merged")
        first_line.setdefault(user, (no, values))
        known = out.setdefault(user, [])
        seen = set(known)
        for i in items:
            if i not in seen:
                seen.add(i)
                known.append(i)
    return out


def id_list_rows(path, fields: str = "org_id remap_id"):
    """Yield the rows of an id list (user_list.txt, entity_list.txt, relation_list.txt,
    item_list.txt: `org_id remap_id [name...]`, header first, remap ids 0, 1, 2... in order), each
    split into at most 3 fields (a name may hold spaces). Blank lines are skipped. Raises DataError
    naming the line of a row without a remap id (`fields` names the expected form) or with one out
    of order."""
    with _open_text(path) as f:
        rows = 0
        for no, line in enumerate(f, 1):
            if no == 1 or not line.strip():
                continue
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


# ----------------------------------------------------------------------------------------------
# Validation split
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
# The CIKG: node layout, edges, normalised adjacency
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
    self-loop (None: none). The directed entries are sorted once by (row, col), so a dropout mask
    only has to select entries and recount row pointers.
    """

    def __init__(self, edges: np.ndarray, n_nodes: int, loops=None, device="cpu"):
        m = len(edges)
        loop_nodes = np.flatnonzero(loops) if loops is not None else np.zeros(0, dtype=np.int64)
        row = np.concatenate([edges[:, 0], edges[:, 1], loop_nodes])
        col = np.concatenate([edges[:, 1], edges[:, 0], loop_nodes])
        eid = np.concatenate([np.arange(m), np.arange(m), np.full(len(loop_nodes), -1)])
        order = np.lexsort((col, row))
        self.n_nodes, self.n_edges = n_nodes, m
        self.row = torch.as_tensor(row[order], device=device)
        self.col = torch.as_tensor(col[order], device=device)
        self.eid = torch.as_tensor(eid[order], device=device)
        self._full = None

    def adjacency(self, drop: float = 0.0) -> torch.Tensor:
        """Sparse CSR [n_nodes, n_nodes] float32: D^-1/2 (A+I) D^-1/2 (or without I).

        drop: share of undirected edges removed (both directions at once, self-loops kept), drawn
        from torch's global generator; the matrix is renormalised after the drop. Rows of nodes of
        degree 0 stay zero (no NaN).
        """
        if drop == 0.0 and self._full is not None:
            return self._full
        row, col = self.row, self.col
        if drop > 0.0:
            keep_edge = torch.rand(self.n_edges, device=row.device) >= drop
            keep = (self.eid < 0) | keep_edge[self.eid.clamp(min=0)]
            row, col = row[keep], col[keep]
        deg = torch.bincount(row, minlength=self.n_nodes).float()
        dinv = deg.pow(-0.5)
        dinv[deg == 0] = 0.0
        crow = torch.zeros(self.n_nodes + 1, dtype=torch.int32, device=row.device)
        crow[1:] = torch.cumsum(torch.bincount(row, minlength=self.n_nodes), 0)
        # int32 indices: the sparse kernels would otherwise convert them on every product
        adj = torch.sparse_csr_tensor(crow, col.int(), dinv[row] * dinv[col], (self.n_nodes, self.n_nodes),
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


# ----------------------------------------------------------------------------------------------
# LightGCN propagation (with SimGCL noise)
# ----------------------------------------------------------------------------------------------
TIMES: dict = {}  # seconds per part of a training step, filled as it runs (read by `bench`)


def _tick(part: str, t0: float) -> None:
    TIMES[part] = TIMES.get(part, 0.0) + time.perf_counter() - t0


class _SymmetricSpMM(torch.autograd.Function):
    """y = A x for a symmetric sparse A; the backward is A grad, reusing A (A^T = A)."""

    @staticmethod
    def forward(ctx, adj, x):
        t0 = time.perf_counter()
        ctx.adj = adj
        y = torch.sparse.mm(adj, x)
        _tick("propagation", t0)
        return y

    @staticmethod
    def backward(ctx, grad):
        t0 = time.perf_counter()
        g = torch.sparse.mm(ctx.adj, grad.contiguous())
        _tick("propagation", t0)
        return None, g


def simgcl_noise(h: torch.Tensor, eps: float, r: torch.Tensor | None = None) -> torch.Tensor:
    """SimGCL's perturbation (Yu et al. 2022): sign(h) * normalize(r) * eps, r ~ U(0, 1) per row.

    h: [n, D]. Returns the noise [n, D] to add to h. Used for view 1 of Eq. 8.
    """
    if r is None:
        r = torch.rand_like(h)
    return torch.sign(h) * F.normalize(r, dim=1) * eps


def propagate(x: torch.Tensor, adj: torch.Tensor, layers: int, eps: float = 0.0,
              drop: float = 0.0, rng: np.random.Generator | None = None) -> torch.Tensor:
    """LightGCN (He et al. 2020): mean of x, Ax, A^2 x, ..., A^l x.

    x: [n_nodes, D]; adj: normalised sparse [n_nodes, n_nodes]. eps > 0 adds SimGCL noise after
    every layer (view 1 of Eq. 8), its uniform draws from `rng` when given (numpy's generator
    is twice as fast as torch's on a CPU) or else from torch; drop > 0 is message dropout on
    every layer's output. This is f_G^l of the paper, shared by the BPR pass (Eq. 10), the views
    (Eq. 8) and the GMAE (Eq. 6).
    """
    h, total = x, x
    for _ in range(layers):
        h = _SymmetricSpMM.apply(adj, h)
        if eps > 0.0:
            r = None if rng is None else torch.from_numpy(rng.random(h.shape, dtype=np.float32))
            h = h + simgcl_noise(h, eps, r)
        if drop > 0.0:
            h = F.dropout(h, drop)
        total = total + h
    return total / (layers + 1)


class CIKGRecModel(torch.nn.Module):
    """The trainable parts: node embeddings Z [n_nodes, D] (users | entities | interests), the
    relation embeddings of TransE [n_relations, D], the GMAE mask token [M] [1, D] and the linear
    projection chi (Eq. 6). Xavier-uniform initialisation as in the authors' code."""

    def __init__(self, n_nodes: int, n_relations: int, dim: int):
        super().__init__()
        self.emb = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(n_nodes, dim)))
        self.rel = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(max(n_relations, 1), dim)))
        self.mask_token = torch.nn.Parameter(torch.zeros(1, dim))
        self.chi = torch.nn.Linear(dim, dim)


# ----------------------------------------------------------------------------------------------
# Losses
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
    get the embedding of a random node instead of [M] (GraphMAE's replacement). Returns
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
        source = torch.randint(0, x.shape[0], (n_replace,), device=x.device)
        x_masked[masked[:n_replace]] = x[source]
    return x_masked, masked


def reconstruction_loss(target: torch.Tensor, recon: torch.Tensor, eta: float) -> torch.Tensor:
    """Eq. 7: mean over masked nodes of (1 - cos(z_j, z'''_j))^eta. target, recon: [m, D]."""
    return (1.0 - F.cosine_similarity(target, recon, dim=1)).pow(eta).mean()


class _MeanLogSumExp(torch.autograd.Function):
    """mean_b log sum_n exp(a_b . c_n / tau) for unit rows a [B, D], c [N, D]: the denominator
    of InfoNCE.

    Same mathematics as autograd through logsumexp, fewer passes over the dense [N, B] matrix,
    which dominates a CIKGRec step: the exponentials are computed once, in place, and the
    backward reuses them: d/da_b = sum_n softmax_bn c_n / (B tau), d/dc_n = sum_b softmax_bn a_b
    / (B tau). Cosines are <= 1, so no logit exceeds 1/tau and exp cannot overflow unless
    1/tau > 80; then every logit is shifted by 1/tau first (the result is the same).
    """

    @staticmethod
    def forward(ctx, a, c, tau):
        t0 = time.perf_counter()
        shift = 1.0 / tau if tau < 1.0 / 80 else 0.0
        e = torch.mm(c, a.t() / tau)  # [N, B] logits: this layout multiplies fastest on CPU
        if shift:
            e.sub_(shift)
        e.exp_()
        total = e.sum(dim=0)  # [B]
        ctx.save_for_backward(a, c, e, total)
        ctx.tau = tau
        _tick("contrastive", t0)
        return (total.log() + shift).mean()

    @staticmethod
    def backward(ctx, g):
        t0 = time.perf_counter()
        a, c, e, total = ctx.saved_tensors
        w = (g / (a.shape[0] * ctx.tau)) / total  # [B]: softmax = e / total, per column
        grad_a = torch.mm(e.t(), c).mul_(w[:, None])
        grad_c = torch.mm(e, a * w[:, None])
        _tick("contrastive", t0)
        return grad_a, grad_c, None


def info_nce(anchor: torch.Tensor, candidates: torch.Tensor, positive: torch.Tensor,
             tau: float) -> torch.Tensor:
    """Eq. 9, one term: InfoNCE with cosine similarity, averaged over the anchors.

    anchor: [B, D] (view 1 rows of the batch, duplicates kept); candidates: [N, D] (all users of
    view 2, or all items of view 3); positive: int64 [B], the row of candidates that is each
    anchor's positive. Returns mean_b -log(exp(s(a_b, c_pos)/tau) / sum_n exp(s(a_b, c_n)/tau)).
    """
    a = F.normalize(anchor, dim=1)
    c = F.normalize(candidates, dim=1)
    pos = (a * c[positive]).sum(dim=1) / tau
    return _MeanLogSumExp.apply(a, c, tau) - pos.mean()


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Eq. 10: mean of -ln sigma(pos - neg), computed as softplus(neg - pos) (finite for any
    margin; -log(sigmoid(x)) overflows to inf at x = -100 in float32). pos, neg: [B]."""
    return F.softplus(neg - pos).mean()


def l2_reg(*rows: torch.Tensor) -> torch.Tensor:
    """1/2 * sum of squared L2 norms of the given layer-0 rows, divided by the batch size B.

    rows: tensors [B, D] (e.g. e_u, e_i, e_j of the batch): only the batch's rows count.
    """
    return sum(r.pow(2).sum() for r in rows) / 2.0 / rows[0].shape[0]


def transe_loss(h, r, t, t_neg, squared: bool = False) -> torch.Tensor:
    """Eq. 12: mean of -ln sigma(||h + r - t'|| - ||h + r - t||), each argument [B, D].

    squared=True uses squared distances (what the authors' code does); the paper writes norms.
    """
    d_pos = (h + r - t).norm(dim=1)
    d_neg = (h + r - t_neg).norm(dim=1)
    if squared:
        d_pos, d_neg = d_pos.pow(2), d_neg.pow(2)
    return F.softplus(d_pos - d_neg).mean()


# ----------------------------------------------------------------------------------------------
# Sampling
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


# ----------------------------------------------------------------------------------------------
# Evaluation: full ranking, Recall@K, NDCG@K, Precision@K, HitRatio@K
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
# Training
# ----------------------------------------------------------------------------------------------
class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss): the last good checkpoint is kept."""


def log(msg: str) -> None:
    """Progress goes to stderr, results to stdout."""
    print(msg, file=sys.stderr, flush=True)


MAIN_PARTS = {"cikg": ("ui", "kg", "uj"), "cg": ("ui",), "cig": ("ui", "uj"), "ckg": ("ui", "kg")}


class Trainer:
    """One CIKGRec (or baseline) run on one dataset: graphs, model, optimisers and their state.

    train_part: the training items per user (train.txt less validation); valid: the validation
    items per user, or None when selecting on test (the authors' protocol).
    """

    def __init__(self, s: Settings, ds: Dataset, train_part: list, valid: list | None, device):
        self.s, self.ds, self.train, self.valid, self.device = s, ds, train_part, valid, device
        self.e0, self.j0, self.n_nodes = node_counts(ds)
        loops = "all" if s.self_loops else "none"
        parts = MAIN_PARTS[s.graph]
        self.main = build_graph(ds, train_part, parts, loops, device)  # the CIKG G (Eq. 10)
        self.contrast = s.model in ("cikgrec", "simgcl") and s.lambda3 > 0
        self.reconstruct = (s.model == "cikgrec" and s.lambda2 > 0 and "uj" in parts
                            and ds.n_interests > 0)
        if s.model == "simgcl" and self.contrast:  # two noisy views of the user-item graph
            self.views = [build_graph(ds, train_part, ("ui",), loops, device)] * 2
        elif self.contrast and s.variant == "paper":  # Eq. 8
            self.views = [build_graph(ds, train_part, p, loops, device)
                          for p in (("ui",), ("ui", "uj"), ("ui", "kg"))]
        elif self.contrast:  # what the authors' script builds (REFERENCE.md)
            self.views = [build_graph(ds, train_part, ("ui", "kg", "uj"), "none", device),
                          build_graph(ds, train_part, ("uj",), "ui", device),
                          build_graph(ds, train_part, ("kg",), "ui", device)]
        if self.reconstruct:
            rec_loops = loops if s.variant == "paper" else ("all" if s.recon_edge_drop > 0 else "none")
            self.recon_graph = (self.main if rec_loops == loops
                                else build_graph(ds, train_part, parts, rec_loops, device))
        self.model = CIKGRecModel(self.n_nodes, 2 * ds.n_relations + 2, s.dim).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=s.lr)
        self.transe = s.transe and s.model == "cikgrec" and len(ds.kg) > 0
        if self.transe:
            self.triples = kg_triples(ds, train_part, with_interactions=s.variant == "authors")
            self.opt_transe = torch.optim.Adam([self.model.emb, self.model.rel], lr=s.transe_lr)
        self.rng = np.random.default_rng(s.seed)
        # BPR pairs; users with every item have no negative and are left out (case T5)
        users = np.repeat(np.arange(ds.n_users), [len(x) for x in train_part])
        items = np.concatenate(train_part).astype(np.int64)
        full = np.array([len(x) >= ds.n_items for x in train_part])
        self.notes = []
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
        for name, truth, exclude in (("valid", valid, train_part),
                                     ("test", ds.test, ds.train)):
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

    # -- one epoch -----------------------------------------------------------------------------
    def step_loss(self, u, i, j, rate: float) -> tuple[torch.Tensor, dict]:
        """Eq. 11 for one batch: lambda1 BPR + L2 + lambda2 L_u + lambda3 L_c.

        u, i, j: int64 [B] user ids, positive and negative item ids. Returns (loss, parts).
        """
        s, x, e0 = self.s, self.model.emb, self.e0
        z = propagate(x, self.main.adjacency(s.edge_drop), s.layers, drop=s.node_drop)
        zu, zi, zj = z[u], z[e0 + i], z[e0 + j]
        bpr = bpr_loss((zu * zi).sum(1), (zu * zj).sum(1))  # Eq. 10
        reg = l2_reg(x[u], x[e0 + i], x[e0 + j])
        loss = s.lambda1 * bpr + s.l2 * reg
        parts = {"bpr": bpr.item()}
        if self.contrast:  # Eqs. 8-9
            rng = self.rng if self.device.type == "cpu" else None
            v1 = propagate(x, self.views[0].adjacency(), s.layers, eps=s.eps, rng=rng)
            v2 = propagate(x, self.views[1].adjacency(), s.layers, eps=s.eps if s.model == "simgcl" else 0.0,
                           rng=rng)
            if s.model == "simgcl":  # SimGCL's own InfoNCE: in-batch, over the batch's distinct
                uu, ii = torch.unique(u), e0 + torch.unique(i)  # users and items (Yu et al. 2022)
                cl = (info_nce(v1[uu], v2[uu], torch.arange(len(uu), device=uu.device), s.tau)
                      + info_nce(v1[ii], v2[ii], torch.arange(len(ii), device=ii.device), s.tau))
            else:  # Eq. 9: every user (item) of view 2 (view 3) is a candidate
                v3 = propagate(x, self.views[2].adjacency(), s.layers)
                items3 = v3[e0:e0 + self.ds.n_items] if s.variant == "paper" else v3[e0:]
                cl = (info_nce(v1[u], v2[:e0], u, s.tau)
                      + info_nce(v1[e0 + i], items3, i, s.tau))
            loss = loss + s.lambda3 * cl
            parts["cl"] = cl.item()
        if self.reconstruct:  # Eqs. 5-7
            t0, p0 = time.perf_counter(), TIMES.get("propagation", 0.0)
            adj = self.recon_graph.adjacency(s.recon_edge_drop)
            x_masked, masked = mask_interests(x, self.j0, self.ds.n_interests, rate, s.replace_rate,
                                              self.model.mask_token)  # Eq. 5
            h = self.model.chi(propagate(x_masked, adj, s.enc_layers))  # Eq. 6, encoder + chi
            h = h.index_fill(0, masked, 0.0)  # GraphMAE's re-mask before the decoder
            z3 = propagate(h, adj, s.dec_layers)  # Eq. 6, decoder
            rec = reconstruction_loss(x[masked], z3[masked], s.eta)  # Eq. 7
            loss = loss + s.lambda2 * rec
            parts["rec"] = rec.item()
            TIMES["reconstruction"] = (TIMES.get("reconstruction", 0.0) + time.perf_counter() - t0
                                       - (TIMES.get("propagation", 0.0) - p0))
        return loss, parts

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the shuffled training pairs, one negative each. Returns mean loss parts."""
        s = self.s
        order = self.rng.permutation(len(self.pair_u))
        users, items = self.pair_u[order], self.pair_i[order]
        negs = sample_negatives(users, self.pos_keys, self.ds.n_items, self.rng)
        rate = mask_rate(epoch, s.schedule, s.alpha, s.omega, s.mask_epochs)
        totals, n_batches = {}, math.ceil(len(users) / s.batch_size)
        last_report = time.perf_counter()
        self.model.train()
        for b in range(n_batches):
            sl = slice(b * s.batch_size, (b + 1) * s.batch_size)
            u, i, j = (torch.from_numpy(a[sl]).to(self.device) for a in (users, items, negs))
            loss, parts = self.step_loss(u, i, j, rate)
            if not math.isfinite(loss.item()):
                raise TrainingError(f"non-finite loss ({loss.item()}) at epoch {epoch}, batch {b + 1}/{n_batches}; "
                                    "its parts before the lambdas: " + ", ".join(f"{k} {v:.4g}" for k, v in parts.items()))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v
            if time.perf_counter() - last_report > 30:
                log(f"  epoch {epoch}: batch {b + 1}/{n_batches}")
                last_report = time.perf_counter()
        out = {k: v / n_batches for k, v in totals.items()}
        out["mask_rate"] = rate if self.reconstruct else None
        if self.transe:
            out["transe"] = self.transe_epoch()
        return out

    def transe_epoch(self) -> float:
        """The alternating TransE step (Eq. 12): max(1, n_triples // batch) batches of triples,
        a corrupted entity tail each, with its own Adam optimiser. Returns the mean loss."""
        s, t0 = self.s, time.perf_counter()
        keep, neg = corrupt_tails(self.triples, self.e0, self.ds.n_entities, self.rng)
        trip, neg = self.triples[keep], neg[keep]
        order = self.rng.permutation(len(trip))
        n_batches = max(1, len(trip) // s.transe_batch)
        total = 0.0
        for b in range(n_batches):
            sel = order[b * s.transe_batch:(b + 1) * s.transe_batch]
            h, r, t = (torch.from_numpy(trip[sel, c]).to(self.device) for c in range(3))
            tn = torch.from_numpy(neg[sel]).to(self.device)
            e, rel = self.model.emb, self.model.rel
            loss = transe_loss(e[h], rel[r], e[t], e[tn], squared=s.variant == "authors")
            loss = loss + s.transe_l2 * l2_reg(e[h], rel[r], e[t], e[tn])
            self.opt_transe.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_transe.step()
            total += loss.item()
        _tick("transe", t0)
        return total / n_batches

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user [n_users, D] and item [n_items, D] embeddings: LightGCN on the CIKG, no
        dropout, no noise."""
        self.model.eval()
        z = propagate(self.model.emb, self.main.adjacency(), self.s.layers)
        return z[:self.e0], z[self.e0:self.e0 + self.ds.n_items]

    @torch.no_grad()
    def evaluate(self, split: str) -> dict:
        """Metrics on "valid" (training items excluded) or "test" (train.txt items excluded)."""
        users = self.eval_sets[split][0]
        ue, ie = self.embeddings()
        ks = sorted(set(parse_ks(self.s.ks)) | {50, 100})  # @50 selects the model; @50, @100: the tables
        return evaluate_ranking(ue, ie, users, *self.eval_pairs[split], ks, self.s.eval_batch)

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict:
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


def output_paths(s: Settings) -> tuple[Path, Path, Path]:
    """(results JSON, best model state, checkpoint). Default runs/<dataset>-seed<seed>.json; a
    baseline, graph, variant or test selection adds its name so runs never overwrite each other."""
    if s.out:
        out = Path(s.out)
    else:
        tags = [t for t in (s.model if s.model != "cikgrec" else "",
                            s.graph if s.graph != "cikg" else "",
                            s.variant if s.variant != "paper" else "",
                            "testsel" if s.select_on == "test" else "",
                            "nointerests" if not s.interest_nodes else "") if t]
        out = Path("runs") / f"{'-'.join([s.dataset] + tags)}-seed{s.seed}.json"
    return out, out.with_suffix(".pt"), out.with_suffix(".ckpt.pt")


def check_writable(out: Path, *beside: Path) -> None:
    """Before any training: --out names a file (not a folder, not a .pt, which is where the model
    goes) in a folder that exists or can be made and that takes a new file. Raises SettingsError."""
    if out.suffix == ".pt":
        raise SettingsError(f"--out {out}: give the results file (e.g. .json); the model is saved beside "
                            "it as .pt")
    for path in (out, *beside):
        if path.is_dir():
            raise SettingsError(f"--out {out}: {path} is a folder")
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


def prepare(s: Settings) -> tuple[Dataset, list, list | None]:
    """Read the dataset and carve the validation split. Raises DataError on bad files."""
    # --no-interest-nodes (Table 3 "w/o UIK"): the interest file is not even read
    ds = load_dataset(Path(s.data_dir) / s.dataset, s.interests or None, s.dataset, s.interest_nodes)
    for note in ds.warnings:
        log(f"warning: {note}")
    if s.select_on == "test":
        return ds, ds.train, None
    train_part, valid = split_validation(ds.train, s.split_seed)
    return ds, train_part, valid


def fit(s: Settings) -> dict:
    """Train with early stopping on validation Recall@50 + NDCG@50, evaluate the selected model
    on test once, write the results JSON and the best model's state. With select_on="test"
    (the authors' protocol) there is no validation split and epochs are selected on test.

    A checkpoint after every epoch lets resume=True continue exactly. With max_minutes, training
    stops after the epoch in which that many minutes (wall clock, this call) have passed; the
    results of the best epoch so far are written with stopped_by "time limit: ..." (a sweep counts
    such a run as unfinished and resumes it). Raises DataError,
    SettingsError, TrainingError.
    """
    check_settings(s)
    device = pick_device(s.device)
    if s.threads:
        torch.set_num_threads(s.threads)
    ds, train_part, valid = prepare(s)  # bad input stops here, before anything is written
    out, best_path, ckpt_path = output_paths(s)
    torch.manual_seed(s.seed)
    trainer = Trainer(s, ds, train_part, valid, device)
    for note in trainer.notes:
        log(f"note: {note}")
    sel = "valid" if s.select_on == "valid" else "test"
    stopper, history, start = EarlyStopping(s.patience), [], 0
    data_sha256 = {p.name: _sha256(str(p)) for p in data_files(s)}
    if s.dataset not in DATASET_DEFAULTS:
        log(f"note: no per-dataset defaults for {s.dataset!r}: the Settings defaults apply")
    if s.resume and ckpt_path.is_file():
        try:
            ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        except Exception as e:  # a truncated or foreign file: say which, not a traceback
            raise SettingsError(f"--resume: cannot read {ckpt_path} ({e}); delete it to start afresh") from None
        free = ("epochs", "patience", "min_epochs", "max_minutes", "resume", "device", "threads", "out", "data_dir", "interests")
        changed = {k for k, v in ck["settings"].items() if k not in free and getattr(s, k, v) != v}
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
        stopper.__dict__.update(ck["stopper"], patience=s.patience)
        history, start = ck["history"], ck["epoch"] + 1
        log(f"resuming {ckpt_path} after epoch {ck['epoch']}")
    elif s.resume:
        log(f"note: --resume: no checkpoint at {ckpt_path}, starting afresh")
    elif ckpt_path.is_file():
        log(f"note: starting afresh: the checkpoint {ckpt_path} will be replaced (--resume continues it)")
    check_writable(out, best_path, ckpt_path)
    unused = "" if "uj" in MAIN_PARTS[s.graph] else f" (not in the {s.graph.upper()} graph)"
    log(f"{s.dataset}: {ds.n_users} users, {ds.n_items} items, {ds.n_entities} entities, "
        f"{ds.n_interests} interest nodes{unused}, {trainer.main.n_edges} undirected {s.graph.upper()} edges, "
        f"{len(trainer.pair_u)} training pairs; model {s.model}, variant {s.variant}, "
        f"selection on {sel}, device {device}")
    epoch, failure, limit = start - 1, None, None
    started = time.perf_counter()
    going_on = lambda e: e + 1 < s.epochs and not (stopper.stop and e + 1 >= s.min_epochs)
    while going_on(epoch):
        epoch += 1
        t0 = time.perf_counter()
        try:
            losses = trainer.train_epoch(epoch)
        except TrainingError as e:
            if not history:
                raise TrainingError(f"{e}; no epoch finished, so there is no checkpoint and no result") from None
            failure = f"{e}; the checkpoint of epoch {epoch - 1} is kept ({ckpt_path})"
            epoch -= 1
            break
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        metrics = trainer.evaluate(sel)
        eval_seconds = time.perf_counter() - t1
        if stopper.update(epoch, selection_score(metrics)):
            _save(trainer.model.state_dict(), best_path)
        history.append({"epoch": epoch, **losses, sel: metrics, "seconds": round(seconds, 3),
                        "eval_seconds": round(eval_seconds, 3)})
        _save({"trainer": trainer.state(), "stopper": {k: v for k, v in stopper.__dict__.items()
                                                      if k != "patience"},
               "history": history, "epoch": epoch,
               "data_sha256": data_sha256,
               "settings": dataclasses.asdict(s)}, ckpt_path)
        parts = " ".join(f"{k} {v:.4f}" for k, v in losses.items() if k != "mask_rate" and v is not None)
        mask = f" | mask {losses['mask_rate']:.3f}" if losses.get("mask_rate") is not None else ""
        log(f"epoch {epoch:4d} | {parts}{mask} | {sel} R@50 {metrics['recall@50']:.4f} "
            f"N@50 {metrics['ndcg@50']:.4f}{' *' if stopper.best_epoch == epoch else ''} | "
            f"{seconds:.1f}s + eval {eval_seconds:.2f}s")
        if s.max_minutes and time.perf_counter() - started >= 60 * s.max_minutes and going_on(epoch):
            limit = (f"time limit: --max-minutes {s.max_minutes:g} reached after epoch {epoch}, before early "
                     f"stopping; --resume (in a sweep: the same tables command) continues from {ckpt_path}")
            log(limit)
            break
    trainer.model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    t1 = time.perf_counter()
    test = trainer.evaluate("test")  # the one and only look at test (valid selection)
    eval_seconds = time.perf_counter() - t1
    groups = group_ndcg(trainer)  # Fig. 3, kept in the results so tables need no model file
    best = next(h for h in history if h["epoch"] == stopper.best_epoch)
    results = {
        "dataset": s.dataset, "settings": dataclasses.asdict(s), "seed": s.seed,
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
    return results


# ----------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------
def bench(s: Settings, epochs: int = 3, evals: int = 5) -> dict:
    """Seconds per training epoch (with a breakdown), per full evaluation (median) and peak memory.

    propagation: every sparse product, forward and backward, of every pass; contrastive: the
    dense InfoNCE products (forward and backward); reconstruction: the GMAE forward outside its
    propagation; transe: the TransE step; rest: everything else (BPR, optimiser, sampling,
    adjacency builds, autograd bookkeeping). Does not train to the end. Prints the figures and
    writes them to runs/<dataset>-bench.json. Raises SettingsError, DataError.
    """
    import resource
    check_settings(s)
    if epochs < 1:
        raise SettingsError(f"--bench-epochs must be at least 1, got {epochs}")
    device = pick_device(s.device)
    if s.threads:
        torch.set_num_threads(s.threads)
    ds, train_part, valid = prepare(s)
    out = Path("runs") / f"{s.dataset}-bench.json"
    check_writable(out)
    torch.manual_seed(s.seed)
    trainer = Trainer(s, ds, train_part, valid, device)
    rows = []
    for epoch in range(epochs):
        TIMES.clear()
        t0 = time.perf_counter()
        trainer.train_epoch(epoch)
        total = time.perf_counter() - t0
        row = {k: TIMES.get(k, 0.0) for k in ("propagation", "contrastive", "reconstruction", "transe")}
        row["rest"] = total - sum(row.values())
        row["total"] = total
        rows.append(row)
        log(f"epoch {epoch}: {total:.1f}s (" + ", ".join(f"{k} {v:.1f}s" for k, v in row.items()
                                                        if k != "total") + ")")
    eval_times = []
    for _ in range(evals):
        t0 = time.perf_counter()
        trainer.evaluate("valid" if valid is not None else "test")
        eval_times.append(time.perf_counter() - t0)
    median = lambda v: float(np.median(v))
    result = {"dataset": s.dataset, "device": str(device), "threads": torch.get_num_threads(),
              "epochs": epochs, "batches_per_epoch": math.ceil(len(trainer.pair_u) / s.batch_size),
              "epoch_seconds": median([r["total"] for r in rows]),
              "breakdown_seconds": {k: median([r[k] for r in rows]) for k in rows[0] if k != "total"},
              "eval_seconds": median(eval_times),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(f"{s.dataset}: {result['epoch_seconds']:.1f} s per training epoch (median of {epochs}; "
          f"{result['batches_per_epoch']} batches) = "
          + " + ".join(f"{k} {v:.1f}" for k, v in result["breakdown_seconds"].items())
          + f"\n{s.dataset}: {result['eval_seconds']:.3f} s per full evaluation (median of {evals})"
          + f"\n{s.dataset}: peak resident memory {result['peak_rss_mb']:.0f} MB"
          + f" ({result['threads']} threads, {device})")
    out.write_text(json.dumps({**result, "per_epoch_seconds": rows, "settings": dataclasses.asdict(s)}, indent=1))
    log(f"wrote {out}")
    return result


# ----------------------------------------------------------------------------------------------
# Data download
# ----------------------------------------------------------------------------------------------
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
                raise DataError(path, 0, f"{present}cannot download {url} ({getattr(e, 'reason', e)}); "
                                         "without network, set DATA_DIR to a folder that has the "
                                         "files, e.g. make train DATA_DIR=../shared/data") from None
            if git_blob_id(data) != blob:
                raise DataError(path, 0, f"downloaded file does not match its upstream git blob {blob}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


# ----------------------------------------------------------------------------------------------
# Experiments: tables, sparsity groups, case study
# ----------------------------------------------------------------------------------------------
# `python cikgrec.py tables --table table1|ablation|lightgcn-variants --dataset NAME --seeds N`
# trains every configuration of a table over seeds 2024, 2025, ..., 2024 + N - 1 (one fit() each,
# results in runs/<dataset>/<table>/<config>-seed<seed>.json), then writes
# results/<dataset>/<table>.md and .csv (mean +- sample std over seeds beside the paper's value)
# and results/<dataset>/groups.md (Fig. 3). `explain` prints the case study of Fig. 4.
FIRST_SEED = 2024  # seed i of a sweep is FIRST_SEED + i
TABLE_METRICS = ("recall@50", "recall@100", "ndcg@50", "ndcg@100")
METRIC_NAMES = {"recall@50": "R@50", "recall@100": "R@100", "ndcg@50": "N@50", "ndcg@100": "N@100"}

# Each table: config name -> (row label, settings given on top of the dataset's defaults).
TABLES = {
    "table1": {  # Table 1: overall performance (our code's baselines)
        "cikgrec": ("CIKGRec", {}),
        "lightgcn": ("LightGCN", {"model": "lightgcn", "graph": "cg"}),
        # SimGCL peaks on validation within its first epochs and dips before it climbs (as
        # LightGCN on dbbook2014's CKG, README): patience 10 from epoch 0 would keep that early
        # model, so its row holds off early stopping for 30 epochs (a fair baseline)
        "simgcl": ("SimGCL", {"model": "simgcl", "min_epochs": 30}),
    },
    "ablation": {  # Table 3: ablations by flags on the full model
        "full": ("CIKGRec (ours)", {}),
        "wo-uik": ("w/o UIK", {"interest_nodes": False}),  # no interest nodes at all
        "wo-uir": ("w/o UIR", {"lambda2": 0.0}),  # no interest reconstruction
        "wo-cl": ("w/o CL", {"lambda3": 0.0}),  # no contrastive loss
        "wo-dmr": ("w/o DMR", {"schedule": "fixed"}),  # mask rate = omega throughout
        "linear": ("w linear", {"schedule": "lin"}),  # linear mask schedule (Eq. 3)
    },
    "lightgcn-variants": {  # Table 4: LightGCN on graphs with more auxiliary information
        "lightgcn-cg": ("LightGCN_CG", {"model": "lightgcn", "graph": "cg"}),
        "lightgcn-cig": ("LightGCN_CIG", {"model": "lightgcn", "graph": "cig"}),
        "lightgcn-ckg": ("LightGCN_CKG", {"model": "lightgcn", "graph": "ckg"}),
        "lightgcn-cikg": ("LightGCN_CIKG", {"model": "lightgcn", "graph": "cikg"}),
    },
}
# Configurations that are the same run as one of another table: its results are reused when
# their settings match (a CIKGRec run takes hours; no need to train it twice).
SAME_RUN = {("ablation", "full"): ("table1", "cikgrec"),
            ("lightgcn-variants", "lightgcn-cg"): ("table1", "lightgcn")}


def _paper(metrics, rows):
    return {ds: {cfg: dict(zip(metrics, vals)) for cfg, vals in by_cfg.items()} for ds, by_cfg in rows.items()}


# The paper's numbers (selected on TEST, mean of 10 seeds): PAPER[table][dataset][config][metric].
PAPER = {
    "table1": _paper(("recall@50", "recall@100", "ndcg@50", "ndcg@100"), {  # Table 1
        "dbbook2014": {"lightgcn": (0.4214, 0.5358, 0.2230, 0.2481), "simgcl": (0.4280, 0.5369, 0.2376, 0.2610),
                       "cikgrec": (0.4642, 0.5756, 0.2494, 0.2739)},
        "book-crossing": {"lightgcn": (0.1607, 0.2246, 0.0765, 0.0911), "simgcl": (0.1653, 0.2211, 0.0860, 0.0988),
                          "cikgrec": (0.1791, 0.2455, 0.0889, 0.1041)},
        "ml1m": {"lightgcn": (0.4086, 0.5574, 0.3977, 0.4432), "simgcl": (0.4131, 0.5560, 0.4048, 0.4482),
                 "cikgrec": (0.4250, 0.5718, 0.4162, 0.4609)}}),
    "ablation": _paper(("recall@100", "ndcg@100"), {  # Table 3 (its w/o DMR row is empty)
        "dbbook2014": {"full": (0.5756, 0.2739), "wo-uik": (0.5673, 0.2615), "wo-uir": (0.5701, 0.2704),
                       "wo-cl": (0.5732, 0.2659), "linear": (0.5733, 0.2716)},
        "book-crossing": {"full": (0.2455, 0.1041), "wo-uik": (0.2330, 0.0991), "wo-uir": (0.2081, 0.0843),
                          "wo-cl": (0.2291, 0.0917), "linear": (0.2452, 0.1036)},
        "ml1m": {"full": (0.5718, 0.4609), "wo-uik": (0.5662, 0.4527), "wo-uir": (0.5713, 0.4601),
                 "wo-cl": (0.5583, 0.4480), "linear": (0.5714, 0.4603)}}),
    "lightgcn-variants": _paper(("recall@50", "ndcg@50", "recall@100", "ndcg@100"), {  # Table 4
        "dbbook2014": {"lightgcn-cg": (0.4214, 0.2230, 0.5358, 0.2481),
                       "lightgcn-cig": (0.4240, 0.2283, 0.5395, 0.2537),
                       "lightgcn-ckg": (0.4273, 0.2276, 0.5394, 0.2524),
                       "lightgcn-cikg": (0.4272, 0.2279, 0.5428, 0.2534)},
        "book-crossing": {"lightgcn-cg": (0.1607, 0.0765, 0.2246, 0.0911),
                          "lightgcn-cig": (0.1611, 0.0773, 0.2247, 0.0916),
                          "lightgcn-ckg": (0.1602, 0.0790, 0.2197, 0.0928),
                          "lightgcn-cikg": (0.1603, 0.0759, 0.2231, 0.0901)},
        "ml1m": {"lightgcn-cg": (0.4086, 0.3977, 0.5574, 0.4432), "lightgcn-cig": (0.4079, 0.3982, 0.5571, 0.4439),
                 "lightgcn-ckg": (0.4097, 0.3985, 0.5584, 0.4441),
                 "lightgcn-cikg": (0.4096, 0.3995, 0.5574, 0.4446)}}),
}


@dataclass
class PlannedRun:
    """One fit() of a sweep: its table, configuration, seed, settings and results file."""
    table: str
    config: str
    seed: int
    settings: Settings
    out: Path


def run_settings(base: dict, flags: dict, seed: int, out) -> Settings:
    """Settings as the command line would build them: `base` (the options given, e.g.
    {"dataset": "ml1m", "data_dir": "data"}), then the configuration's flags, seed and out, all
    through resolve_settings (so the dataset's defaults apply to everything not given)."""
    ns = argparse.Namespace(**{f.name: None for f in dataclasses.fields(Settings)})
    values = {k: v for k, v in base.items() if v is not None}
    values.update(flags, seed=seed, out=str(out))
    vars(ns).update(values)
    return resolve_settings(ns)


def plan_runs(table: str, base: dict, n_seeds: int, runs_dir="runs") -> list:
    """Every run of a table, configuration by configuration, seeds FIRST_SEED.. in order."""
    dataset = base.get("dataset") or Settings.dataset
    runs = []
    for config, (_, flags) in TABLES[table].items():
        for i in range(n_seeds):
            seed = FIRST_SEED + i
            out = Path(runs_dir) / dataset / table / f"{config}-seed{seed}.json"
            runs.append(PlannedRun(table, config, seed, run_settings(base, flags, seed, out), out))
    return runs


_NOT_COMPARED = ("out", "resume", "device", "threads", "eval_batch", "data_dir", "max_minutes")


def _finite(v) -> bool:
    """A finite int or float (not a bool, a string or None), as read from a JSON file."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_results(path) -> dict:
    """A run's results JSON, checked: an object with a "test" dict of numbers in [0, 1] and, where
    present, a "settings" dict. Raises DataError naming the file (a torn, foreign or hand-edited
    file must not become a traceback or a wrong number in a table)."""
    path = Path(path)
    try:
        with _open_text(path) as f:
            r = json.loads(f.read())
    except (UnicodeDecodeError, ValueError) as e:
        raise DataError(path, 0, f"not a results JSON ({type(e).__name__}: {e})") from None
    if not isinstance(r, dict) or not isinstance(r.get("test"), dict):
        raise DataError(path, 0, "not the results JSON of a run (no \"test\" metrics)")
    missing = [m for m in TABLE_METRICS if m not in r["test"]]
    if missing:
        raise DataError(path, 0, f"no test {missing[0]} in it")
    bad = [k for k, v in r["test"].items() if not _finite(v)]
    if bad:
        raise DataError(path, 0, f"test {bad[0]} = {r['test'][bad[0]]!r} is not a finite number")
    bad = [k for k, v in r["test"].items() if not 0 <= v <= 1]  # Recall, NDCG, precision, hit rate
    if bad:
        raise DataError(path, 0, f"test {bad[0]} = {r['test'][bad[0]]!r} is not between 0 and 1")
    if r.get("minutes") is not None and not _finite(r["minutes"]):
        raise DataError(path, 0, f"minutes = {r['minutes']!r} is not a finite number")
    for key in ("settings", "provenance"):
        if not isinstance(r.get(key, {}), dict):
            raise DataError(path, 0, f"{key} is not an object")
    if not isinstance(r.get("provenance", {}).get("data_sha256", {}), dict):
        raise DataError(path, 0, "provenance data_sha256 is not an object")
    return r


def run_data_changed(results: dict, settings: Settings) -> list:
    """The data files (names) that differ from those the run of `results` (read_results) was
    trained on, read as `settings` would read them (data_changed)."""
    return data_changed(results.get("provenance", {}).get("data_sha256", {}), settings)


def check_groups(g, path) -> dict:
    """Fig. 3 groups as group_ndcg returns them ({"bounds": [[lo, hi, users, interactions]...],
    "ndcg": [...]}, one value per group); DataError naming `path` otherwise."""
    ok = (isinstance(g, dict) and isinstance(g.get("bounds"), list) and isinstance(g.get("ndcg"), list)
          and len(g["bounds"]) == len(g["ndcg"]) > 0
          and all(isinstance(b, (list, tuple)) and len(b) == 4 for b in g["bounds"])
          and all(_finite(v) for v in g["ndcg"]))
    if not ok:
        raise DataError(path, 0, "not Fig. 3 groups ({\"bounds\": [...], \"ndcg\": [...]}, one value per group)")
    return g


def time_limited(results: dict) -> bool:
    """True for the results (read_results) of a run stopped by --max-minutes before early stopping."""
    return str(results.get("stopped_by") or "").startswith("time limit")


def settings_differ(results: dict, settings: Settings) -> list:
    """The settings (names) in which the results (read_results) differ from `settings`, leaving
    out those that do not change a run's numbers (_NOT_COMPARED)."""
    saved = results.get("settings", {})
    if saved:  # a setting newer than the file counts as its default, which keeps the old behaviour
        saved = {**{f.name: f.default for f in dataclasses.fields(Settings)}, **saved}
    return [k for k, v in dataclasses.asdict(settings).items() if k not in _NOT_COMPARED and saved.get(k) != v]


def done_results(run: PlannedRun) -> Path | None:
    """The results file of a planned run if it exists: its own, or that of the same run made
    elsewhere when the settings agree (all but _NOT_COMPARED): in another table (SAME_RUN), or by
    `train` at its default --out (runs/<dataset>-seed<seed>.json, so `make train` counts as
    Table 1's CIKGRec row). None when the run is still to do. Raises SettingsError when the run's
    own file was made with other settings (e.g. a quick --epochs 1 trial) or on other data (the
    SHA-256 of its files): it is neither reused nor overwritten. A run stopped by --max-minutes is
    not done (the sweep resumes it)."""
    if run.out.is_file():
        results = read_results(run.out)
        differ = settings_differ(results, run.settings)
        if differ:
            more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
            raise SettingsError(f"{run.out} was made with other settings ({', '.join(differ[:4])}{more}): "
                                "delete it or give another --runs-dir")
        changed = run_data_changed(results, run.settings)
        if changed:
            raise SettingsError(f"{run.out} was trained on other data (the SHA-256 of {', '.join(changed)} "
                                "differs from the run's): delete it or give another --runs-dir")
        return None if time_limited(results) else run.out
    runs_dir = run.out.parents[2]  # plan_runs writes runs_dir/<dataset>/<table>/<config>-seed<s>.json
    others = [runs_dir / output_paths(dataclasses.replace(run.settings, out=""))[0].name]
    same = SAME_RUN.get((run.table, run.config))
    if same:
        others.insert(0, run.out.parent.parent / same[0] / f"{same[1]}-seed{run.seed}.json")
    for other in others:
        if other.is_file():
            results = read_results(other)
            if not (settings_differ(results, run.settings) or time_limited(results)
                    or run_data_changed(results, run.settings)):
                return other
    return None


def _fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def run_sweep(runs: list, dry_run: bool = False) -> int:
    """fit() every planned run whose results file does not exist yet (an interrupted sweep
    resumes: finished runs are skipped, a run cut mid-way continues from its checkpoint). Progress
    on stderr: "run i/n: config seed s (elapsed, ~time left)", the time left estimated from the
    runs finished so far. A run that fails (TrainingError) is reported and the sweep goes on.
    Returns the number of failed runs."""
    todo = [r for r in runs if done_results(r) is None]
    log(f"{len(runs) - len(todo)} of {len(runs)} runs already done; {len(todo)} to run")
    if dry_run:
        for r in todo:
            log(f"  to run: {r.config} seed {r.seed} -> {r.out}")
        return 0
    start, finished, failed, cut = time.perf_counter(), 0, 0, 0
    for n, r in enumerate(todo, 1):
        elapsed = time.perf_counter() - start
        left = f"~{_fmt_duration(elapsed / finished * (len(todo) - n + 1))} left" if finished else "time left unknown yet"
        log(f"run {n}/{len(todo)}: {r.config} seed {r.seed} ({_fmt_duration(elapsed)} elapsed, {left})")
        ckpt = output_paths(r.settings)[2]
        try:
            cut += time_limited(fit(dataclasses.replace(r.settings, resume=ckpt.is_file())))
            finished += 1
        except TrainingError as e:
            failed += 1
            log(f"run {n}/{len(todo)} failed: {e} (its checkpoint is kept; going on)")
    if cut:
        log(f"{cut} of {len(todo)} runs stopped at --max-minutes before early stopping: they are not in the "
            "tables yet; the same command continues them")
    return failed


def _mean_std(values: list) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; None for a single value)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def aggregate_table(table: str, dataset: str, files: dict) -> list:
    """One row per configuration of the table: {"config", "label", "n", "files", "minutes" (mean
    minutes per run; None without runs), "minutes_by_device" ({"cpu": mean, "cuda": mean} from
    each file's provenance), and for each metric m of TABLE_METRICS: m (mean),
    m+"_std" (sample std, None when n < 2), m+"_paper" (None where the paper has no value) and
    m+"_diff" (100 (ours - paper) / paper)}.

    files: {config: [results JSON paths]} (test metrics are read from each file's "test")."""
    paper = PAPER.get(table, {}).get(dataset, {})
    rows = []
    for config, (label, _) in TABLES[table].items():
        paths = files.get(config, [])
        runs = [read_results(p) for p in paths]
        tests = [r["test"] for r in runs]
        minutes = [r["minutes"] for r in runs if r.get("minutes") is not None]
        by_device = {}  # runs made on different machines (e.g. a lent GPU) are timed apart
        for r in runs:
            if r.get("minutes") is not None:
                by_device.setdefault(r.get("provenance", {}).get("device", "?"), []).append(r["minutes"])
        row = {"config": config, "label": label, "n": len(tests), "files": [str(p) for p in paths],
               "minutes": _mean_std(minutes)[0] if minutes else None,
               "minutes_by_device": {d: _mean_std(v)[0] for d, v in sorted(by_device.items())}}
        for m in TABLE_METRICS:
            mean, std = _mean_std([t[m] for t in tests]) if tests else (None, None)
            ref = paper.get(config, {}).get(m)
            row.update({m: mean, m + "_std": std, m + "_paper": ref,
                        m + "_diff": 100.0 * (mean - ref) / ref if mean is not None and ref else None})
        rows.append(row)
    return rows


_TABLE_TITLES = {"table1": "Table 1: overall performance", "ablation": "Table 3: ablation study",
                 "lightgcn-variants": "Table 4: LightGCN with more auxiliary information"}


_TABLE_NOTES = {"ablation": " The paper's Table 3 reports R@100 and N@100 only, and no numbers for w/o DMR "
                            "(ours: the mask rate is omega throughout).",
                "table1": " Our LightGCN and SimGCL rows are trained by this code with the dataset's settings."}


def _device_minutes(row: dict) -> str:
    """The min/run cell: '114 (cpu)', or '138 (cpu), 6.4 (cuda)' when the seeds ran on different machines."""
    return ", ".join(f"{v:.0f} ({d})" if v >= 10 else f"{v:.1f} ({d})"
                     for d, v in row.get("minutes_by_device", {}).items())


def _non_defaults(base: dict) -> str:
    """The options a tables command gave beyond the dataset and the run-independent ones, e.g.
    "--min-epochs 30", so a table says what it was made with."""
    skip = ("dataset",) + _NOT_COMPARED
    return " ".join(f"{option(k)} {v}" for k, v in sorted(base.items()) if k not in skip and v is not None)


def _made_with(given: str) -> list:
    return [f"Made with `{given}` on top of the dataset's settings.", ""] if given else []


def write_table(rows: list, table: str, dataset: str, results_dir="results", given: str = "") -> tuple[Path, Path]:
    """results/<dataset>/<table>.md and .csv from aggregate_table's rows; `given`: the options the
    runs were made with beyond the dataset's settings (_non_defaults), stated under the title."""
    folder = Path(results_dir) / dataset
    folder.mkdir(parents=True, exist_ok=True)
    num = lambda x, fmt: "" if x is None else format(x, fmt)
    header = ["model", "n", "min/run"] + [h for m in TABLE_METRICS for h in (METRIC_NAMES[m], "paper", "diff %")]
    md = [f"# {dataset}: {_TABLE_TITLES[table]}", "",
          "Ours: test metrics of the epoch selected on validation, mean ± sample std over n seeds "
          f"({FIRST_SEED}, {FIRST_SEED + 1}, ...; std '-' when n = 1). Paper: selected on test, "
          "mean of 10 seeds. diff % = 100 (ours - paper) / paper. min/run: mean minutes of training and "
          "evaluation per run, by device (each results file's provenance names the device and threads; "
          "the README says which machines and how many runs shared them)."
          + _TABLE_NOTES.get(table, ""), ""] + _made_with(given) + [
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["label"], str(r["n"]), _device_minutes(r)]
        for m in TABLE_METRICS:
            ours = "" if r[m] is None else f"{r[m]:.4f} ± " + ("-" if r[m + "_std"] is None else f"{r[m + '_std']:.4f}")
            diff = "" if r[m + "_diff"] is None else f"{r[m + '_diff']:+.1f}"
            cells += [ours, num(r[m + "_paper"], ".4f"), diff]
        md.append("| " + " | ".join(cells) + " |")
    md_path, csv_path = folder / f"{table}.md", folder / f"{table}.csv"
    md_path.write_text("\n".join(md) + "\n")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", "model", "n", "minutes_per_run", "minutes_per_run_by_device"]
                   + [f"{m}_{k}" for m in TABLE_METRICS for k in ("mean", "std", "paper", "diff_pct")])
        for r in rows:
            w.writerow([r["config"], r["label"], r["n"], num(r["minutes"], ".4g"),
                        ";".join(f"{d}:{v:.4g}" for d, v in r.get("minutes_by_device", {}).items())]
                       + [num(r[m + s], ".6g") for m in TABLE_METRICS for s in ("", "_std", "_paper", "_diff")])
    return md_path, csv_path


def load_trained(results_path, data_dir: str | None = None, device: str = "cpu") -> tuple[Trainer, dict]:
    """The Trainer of a finished run with its selected model: settings from the results JSON
    (fields this version does not know are ignored), the best model state from <results>.pt
    (saved by fit beside the JSON). data_dir overrides the saved data folder. Raises DataError on
    a missing or foreign file, and when the data files differ from those the run was trained on."""
    results_path = Path(results_path)
    if results_path.suffix == ".pt":
        raise DataError(results_path, 0, "give the run's results JSON; its model .pt is found beside it")
    for path in (results_path, results_path.with_suffix(".pt")):
        if not path.is_file():
            raise DataError(path, 0, "not found (a finished run writes <out>.json and <out>.pt)")
    results = read_results(results_path)
    if "settings" not in results:
        raise DataError(results_path, 0, "not the results JSON of a run (no \"settings\")")
    known = {f.name for f in dataclasses.fields(Settings)}
    s = Settings(**{k: v for k, v in results["settings"].items() if k in known})
    s = dataclasses.replace(s, resume=False, device=device, **({"data_dir": data_dir} if data_dir else {}))
    ds, train_part, valid = prepare(s)  # a missing folder or file is named here
    changed = run_data_changed(results, s)
    if changed:
        raise DataError(results_path, 0, f"the run was trained on other data (the SHA-256 of {', '.join(changed)} "
                                         "differs from the run's); give its --data-dir or --interests")
    model_sha256 = results.get("provenance", {}).get("model_sha256")
    if model_sha256 and _sha256(str(results_path.with_suffix(".pt"))) != model_sha256:
        raise DataError(results_path.with_suffix(".pt"), 0, "not the model this run saved (SHA-256; replaced "
                                                             "by a later run to the same --out?)")
    trainer = Trainer(s, ds, train_part, valid, pick_device(device))
    try:
        state = torch.load(results_path.with_suffix(".pt"), map_location=trainer.device, weights_only=True)
        trainer.model.load_state_dict(state)
    except Exception as e:  # truncated, foreign, or made for another graph (e.g. other interests)
        first = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
        raise DataError(results_path.with_suffix(".pt"), 0, f"cannot load the model for this data ({first})") from None
    return trainer, results


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
    ue, ie = trainer.embeddings()
    ndcg = []
    for g in range(len(bounds)):
        sel = np.flatnonzero(group == g)
        m = evaluate_ranking(ue, ie, users[sel], [exclude[i] for i in sel], [truth[i] for i in sel],
                             [k], trainer.s.eval_batch)
        ndcg.append(m[f"ndcg@{k}"])
    return {"bounds": bounds, "ndcg": ndcg}


def results_groups(results_path, data_dir: str | None = None) -> dict:
    """group_ndcg of a results file: its "groups" (written by fit), else computed from the model
    file <results>.pt and cached in <results>.groups.json (redone when the model is newer than
    the cache). Raises DataError for an older results file with neither model nor cache."""
    results_path = Path(results_path)
    saved = read_results(results_path).get("groups") if results_path.is_file() else None
    if saved is not None:
        return check_groups(saved, results_path)
    cache, model = results_path.with_suffix(".groups.json"), results_path.with_suffix(".pt")
    if cache.is_file() and (not model.is_file() or cache.stat().st_mtime_ns >= model.stat().st_mtime_ns):
        try:
            with _open_text(cache) as f:
                return check_groups(json.loads(f.read()), cache)
        except ValueError as e:
            raise DataError(cache, 0, f"not a groups JSON ({type(e).__name__}: {e})") from None
    trainer, _ = load_trained(results_path, data_dir)
    out = group_ndcg(trainer)
    _write_json(out, cache)
    return out


def write_groups(dataset: str, files: dict, results_dir="results", data_dir: str | None = None,
                 given: str = "") -> Path:
    """results/<dataset>/groups.md: Fig. 3 as a table, test NDCG@50 of each user group (sparse to
    dense) for every configuration with results, mean ± sample std over seeds; `given` as in
    write_table.

    files: {(table, config): [results paths]}."""
    rows, bounds, data = [], None, []
    for (table, config), paths in files.items():
        if not paths:
            continue
        per_seed = []
        for p in paths:
            try:
                g = results_groups(p, data_dir)
            except DataError as e:  # e.g. results copied without their model file
                log(f"warning: groups.md leaves out {p}: {e}")
                continue
            if bounds is not None and [list(b) for b in g["bounds"]] != [list(b) for b in bounds]:
                log(f"warning: groups.md leaves out {p}: its groups differ from the other runs' (other data?)")
                continue
            bounds = bounds or g["bounds"]
            per_seed.append(g)
        if not per_seed:
            continue
        cells, stats = [], [_mean_std([r["ndcg"][g] for r in per_seed]) for g in range(len(bounds))]
        for mean, std in stats:
            cells.append(f"{mean:.4f} ± " + ("-" if std is None else f"{std:.4f}"))
        data.append({"label": f"{TABLES[table][config][0]} ({table})", "n": len(per_seed),
                     "mean": [m for m, _ in stats], "std": [sd for _, sd in stats]})
        rows.append(f"| {TABLES[table][config][0]} ({table}) | {len(per_seed)} | " + " | ".join(cells) + " |")
    folder = Path(results_dir) / dataset
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "groups.md"
    if bounds is None:
        path.write_text(f"# {dataset}: sparsity groups (Fig. 3)\n\nNo results yet.\n")
        path.with_suffix(".json").write_text(json.dumps({"dataset": dataset, "groups": [], "rows": []}))
        return path
    heads = [f"{lo}-{hi} items ({u} users, {n} interactions)" for lo, hi, u, n in bounds]
    text = [f"# {dataset}: test NDCG@50 by user sparsity group (Fig. 3)", "",
            "Test users split by their number of train.txt interactions into groups holding about the "
            "same total number of interactions (KGAT's protocol), sparse to dense. Mean ± sample std "
            "over n seeds. Each run once, in the first row it belongs to.", ""] + _made_with(given)
    text += ["| model | n | " + " | ".join(heads) + " |", "|" + "---|" * (len(heads) + 2)]
    path.write_text("\n".join(text + rows) + "\n")
    path.with_suffix(".json").write_text(json.dumps({"dataset": dataset, "groups": heads, "rows": data}, indent=1))
    return path


def tables(table: str, base: dict, n_seeds: int, runs_dir="runs", results_dir="results",
           dry_run: bool = False, only: str | None = None) -> int:
    """Run a table's sweep (unless dry_run; only the configurations named in `only`, comma
    separated, when given), then write its .md/.csv and groups.md from every results file there
    is. Returns the number of failed runs. Raises SettingsError on an unknown configuration."""
    dataset = base.get("dataset") or Settings.dataset
    planned = plan_runs(table, base, n_seeds, runs_dir)
    for r in planned:
        check_settings(r.settings)
    dataset_folder(Path(planned[0].settings.data_dir) / dataset)
    wanted = [c.strip() for c in (only or "").split(",") if c.strip()]
    unknown = [c for c in wanted if c not in TABLES[table]]
    if only is not None and not wanted:
        raise SettingsError(f"--only {only!r} names no configuration: {table} has {', '.join(TABLES[table])}")
    if unknown:
        raise SettingsError(f"--only {','.join(unknown)}: {table} has the configurations "
                            f"{', '.join(TABLES[table])}")
    todo = [r for r in planned if not wanted or r.config in wanted]
    by_rows = sorted({"model", "graph"} | {k for _, flags in TABLES[table].values() for k in flags})
    clash = [k for k in by_rows if k in base]
    if clash:  # e.g. --model simgcl would run SimGCL in the row labelled CIKGRec
        raise SettingsError(f"{option(clash[0])}: the rows of {table} set {', '.join(map(option, by_rows))} "
                            "themselves")
    existing = Path(results_dir) / dataset  # checked before hours of training, not after; made later
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SettingsError(f"--results-dir {results_dir}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise SettingsError(f"--results-dir {results_dir}: cannot write into {existing} ({e.strerror})") from None
    failed = run_sweep(todo, dry_run)
    files = {}  # (table, config) -> results files found, for every table of the dataset
    for t in TABLES:
        for r in plan_runs(t, base, n_seeds, runs_dir):
            try:
                found = done_results(r)
            except SettingsError:  # another table's run with other settings (e.g. no --min-epochs):
                if t == table:     # not one of these runs; only this table's own files must agree
                    raise
                found = None
            files.setdefault((t, r.config), []).extend([found] if found else [])
    if not any(files.values()):  # e.g. --dry-run in a fresh clone: keep the committed tables
        log(f"no results made with these settings under {Path(runs_dir) / dataset} yet: "
            f"{Path(results_dir) / dataset} left as it is")
        return failed
    rows = aggregate_table(table, dataset, {c: p for (t, c), p in files.items() if t == table})
    md, csv_path = write_table(rows, table, dataset, results_dir, _non_defaults(base))
    # groups: each results file once, in the first row that has it (SAME_RUN rows share files:
    # Table 4's CG seeds are Table 1's LightGCN ones)
    unique, seen = {}, set()
    for key, paths in files.items():
        mine = [p for p in paths if p not in seen]
        seen.update(mine)
        if mine:
            unique[key] = mine
    groups = write_groups(dataset, unique, results_dir, base.get("data_dir"), _non_defaults(base))
    print(md.read_text())
    log(f"wrote {md}, {csv_path}, {groups}")
    return failed


def read_cluster_terms(path) -> dict:
    """interest_clusters.tsv (llm_interests.py cluster) -> {interest id: "top terms"} of the kept
    clusters (rows whose interest_id column is a number)."""
    terms = {}
    with _open_text(Path(path)) as f:
        next(f, None)  # header: cluster users interest_id top_terms example_phrases
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) >= 4 and cols[2].isdigit():
                terms[int(cols[2])] = cols[3]
    return terms


@torch.no_grad()
def explain(trainer: Trainer, user: int, top: int = 10, answers: dict | None = None,
            terms: dict | None = None) -> dict:
    """The case study of Fig. 4 for one user: training items, interests, top recommendations and,
    for each, the strongest path user -> interest -> another user who has the item in training.

    Path strength = mean cosine similarity of the final (propagated) embeddings along its three
    edges, (cos(u, j) + cos(j, v) + cos(v, i)) / 3, in [-1, 1]: the space the model scores in,
    independent of embedding norms. Edges are the run's training interactions (validation items
    excluded) and the dataset's user-interest edges. Returns a dict (printed by print_explain)."""
    ds, e0, j0 = trainer.ds, trainer.e0, trainer.j0
    if not 0 <= user < ds.n_users:
        raise SettingsError(f"--user must be in 0..{ds.n_users - 1}, got {user}")
    trainer.model.eval()
    raw = propagate(trainer.model.emb, trainer.main.adjacency(), trainer.s.layers)  # [n_nodes, D]
    z = F.normalize(raw, dim=1)
    scores = raw[user] @ raw[e0:e0 + ds.n_items].t()
    scores[torch.as_tensor(ds.train[user], dtype=torch.long)] = float("-inf")  # train.txt items
    recs = torch.topk(scores, min(top, int(torch.isfinite(scores).sum()))).indices.tolist()
    edges = ds.interest_edges
    mine = edges[edges[:, 0] == user, 1]  # interest indices of the user
    title = lambda i: item_title(ds.item_names[i]) if i < len(ds.item_names) and ds.item_names[i] else f"item {i}"
    raw_id = lambda j: int(ds.interest_ids[j])
    out = {"user": user, "train": [(int(i), title(i)) for i in ds.train[user]],
           "interests": [(raw_id(j), (terms or {}).get(raw_id(j), "")) for j in mine],
           "answer": (answers or {}).get(user), "recommendations": [],
           "graph_has_interests": "uj" in MAIN_PARTS[trainer.s.graph]}
    share = edges[np.isin(edges[:, 1], mine) & (edges[:, 0] != user)]  # (other user, shared interest)
    if not out["graph_has_interests"]:  # the interest embeddings of such a model were never trained
        share = share[:0]
    has_item = np.zeros((ds.n_users, ds.n_items), dtype=bool) if len(share) else None
    if has_item is not None:
        rows, cols = _flatten(trainer.train)
        has_item[rows, cols] = True
    test = set(ds.test[user].tolist())
    for i in recs:
        best = None
        if has_item is not None:
            cand = share[has_item[share[:, 0], i]]  # (v, j) with v holding item i in training
            if len(cand):
                v, j = torch.as_tensor(cand[:, 0]), torch.as_tensor(cand[:, 1])
                strength = ((z[user] * z[j0 + j]).sum(1) + (z[j0 + j] * z[v]).sum(1)
                            + (z[v] * z[e0 + i]).sum(1)) / 3
                b = int(strength.argmax())
                best = (int(cand[b, 1]), raw_id(int(cand[b, 1])), int(cand[b, 0]), float(strength[b]))
        out["recommendations"].append({"item": i, "title": title(i), "score": float(scores[i]),
                                       "in_test": i in test, "path": best})
    return out


def print_explain(ex: dict) -> None:
    """Print explain()'s dict for a reader (stdout)."""
    u = ex["user"]
    print(f"user {u}: {len(ex['train'])} training items")
    for i, t in ex["train"]:
        print(f"  item {i}: {t}")
    print(f"interests of user {u}: {len(ex['interests'])}" + ("" if ex["graph_has_interests"] else
                                                             " (not in this model's graph)"))
    for j, t in ex["interests"]:
        print(f"  interest {j}" + (f": {t}" if t else ""))
    if ex["answer"] is not None:
        print(f"LLM answer: {ex['answer']}")
    print(f"top-{len(ex['recommendations'])} recommendations (train.txt items excluded; * = in test.txt):")
    for r, rec in enumerate(ex["recommendations"], 1):
        print(f"  {r:2d}. item {rec['item']}{' *' if rec['in_test'] else ''}: {rec['title']} "
              f"(score {rec['score']:.3f})")
        if rec["path"]:
            j_idx, j, v, s = rec["path"]
            print(f"      path: user {u} -> interest {j} -> user {v} -> item {rec['item']} (strength {s:.3f})")
        elif not ex["graph_has_interests"]:
            print("      no path: this model's graph has no interest nodes")
        else:
            print("      no path through a shared interest")


def explain_command(run: str, user: int, answers_path: str | None = None, clusters_path: str | None = None,
                    data_dir: str | None = None, top: int = 10) -> dict:
    """`explain`: load the run's model and print the case study for one user. The answers and
    clusters files default to those beside the run's interest file (interests/<dataset>/), since
    cluster terms and answers only fit the interest file they were made with (a run on the
    dataset's published file has neither unless given). Raises DataError, SettingsError."""
    if top < 1:
        raise SettingsError(f"--top must be at least 1, got {top}")
    trainer, results = load_trained(run, data_dir)
    s = trainer.s
    folder = Path(s.interests).parent if s.interests else None
    if answers_path is None and folder and (folder / "llm_answers.jsonl").is_file():
        answers_path = str(folder / "llm_answers.jsonl")  # only answers that made the run's interests
    if clusters_path is None and folder and (folder / "interest_clusters.tsv").is_file():
        clusters_path = str(folder / "interest_clusters.tsv")
    answers = {}
    if answers_path:
        with _open_text(Path(answers_path)) as f:
            lines = f.read().splitlines()
        for line in lines:
            try:
                rec = json.loads(line)
                answers.setdefault(int(rec["user"]), rec.get("answer"))
            except (ValueError, KeyError, TypeError):
                continue  # a torn or foreign line: this is only a display
        if not answers:
            raise DataError(answers_path, 0, 'no line of llm_interests.py\'s answers ({"user": ..., "answer": ...})')
    terms = read_cluster_terms(Path(clusters_path)) if clusters_path else {}
    if clusters_path and not terms:
        raise DataError(clusters_path, 0, "no kept cluster row of llm_interests.py's interest_clusters.tsv")
    if terms and set(terms) != set(int(j) for j in trainer.ds.interest_ids):
        log(f"warning: {clusters_path} does not describe the run's interest nodes; terms may not match")
    ex = explain(trainer, user, top, answers, terms)
    print_explain(ex)
    return ex


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
HELP = {"interests": "default: <data-dir>/<dataset>/user_interest_clustered.txt",
        "out": "results JSON; default runs/<dataset>[-model-graph-...]-seed<seed>.json (model and "
               "checkpoint beside it)"}


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


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Settings defaults < the dataset's defaults (the authors' configs) < the command line.

    Baselines (--model lightgcn/simgcl) default to the user-item graph (--graph cg).
    """
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
             if getattr(args, f.name, None) is not None}
    s = Settings()
    dataset = given.get("dataset", s.dataset)
    values = {**DATASET_DEFAULTS.get(dataset, {}), **given}
    if values.get("model") in ("lightgcn", "simgcl") and "graph" not in given:
        values["graph"] = "cg"
    return dataclasses.replace(s, **values)


def build_parser() -> argparse.ArgumentParser:
    """The command line: train, bench, download, tables, explain."""
    p = argparse.ArgumentParser(prog="cikgrec.py", description=__doc__.split("\n")[0], allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("train", "train, select on validation, evaluate on test"),
                       ("bench", "time a few training epochs and evaluations")):
        sp = sub.add_parser(name, allow_abbrev=False, help=text)
        add_settings_arguments(sp, skip=("out", "resume", "epochs", "patience") if name == "bench" else ())
        if name == "bench":
            sp.add_argument("--bench-epochs", type=int, default=3)
    tp = sub.add_parser("tables", allow_abbrev=False, help="run a paper table's configurations over seeds, write results/<dataset>/")
    add_settings_arguments(tp, skip=("seed", "out", "resume"))  # the sweep sets these itself
    tp.add_argument("--table", required=True, choices=list(TABLES))
    tp.add_argument("--seeds", type=int, default=1, help=f"number of seeds: {FIRST_SEED}, {FIRST_SEED + 1}, ...")
    tp.add_argument("--only", default=None, help="run only these configurations (comma separated; "
                    "the tables still show every finished run)")
    tp.add_argument("--runs-dir", default="runs")
    tp.add_argument("--results-dir", default="results")
    tp.add_argument("--dry-run", "--aggregate-only", dest="dry_run", action="store_true",
                    help="train nothing: list the runs still to do, aggregate the existing results")
    ep = sub.add_parser("explain", allow_abbrev=False, help="case study (Fig. 4): a user's interests, recommendations, paths")
    ep.add_argument("--run", required=True, help="results JSON of a finished run (its .pt beside it)")
    ep.add_argument("--user", type=int, required=True)
    ep.add_argument("--answers", default=None, help="llm_answers.jsonl (default: beside the run's interests)")
    ep.add_argument("--clusters", default=None, help="interest_clusters.tsv (default: beside the run's interests)")
    ep.add_argument("--data-dir", default=None, help="default: the run's")
    ep.add_argument("--top", type=int, default=10)
    dp = sub.add_parser("download", allow_abbrev=False, help="fetch datasets from the authors' repository (verified)")
    dp.add_argument("--dataset", nargs="+", default=list(DATASETS), choices=DATASETS)
    dp.add_argument("--data-dir", default="data")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "download":
            download(args.dataset, args.data_dir)
            return 0
        if args.command == "tables":
            base = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
                    if getattr(args, f.name, None) is not None}
            if args.seeds < 1:
                raise SettingsError(f"--seeds must be at least 1, got {args.seeds}")
            return 1 if tables(args.table, base, args.seeds, args.runs_dir, args.results_dir, args.dry_run,
                               args.only) else 0
        if args.command == "explain":
            explain_command(args.run, args.user, args.answers, args.clusters, args.data_dir, args.top)
            return 0
        s = resolve_settings(args)
        if args.command == "bench":
            bench(s, args.bench_epochs)
            return 0
        r = fit(s)
        print(json.dumps({"dataset": r["dataset"], "selected_on": r["selected_on"],
                          "best_epoch": r["best_epoch"], "test": r["test"]}, indent=2))
        return 0
    except (DataError, SettingsError) as e:
        log(f"error: {e}")
        return 2
    except TrainingError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted: every finished epoch is in the checkpoint; " + (
            "the same tables command continues from it." if args.command == "tables"
            else "the same command with --resume continues from it."))
        return 130


if __name__ == "__main__":
    sys.exit(main())
