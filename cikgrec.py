"""CIKGRec: knowledge-aware recommendation with LLM-inferred user interests (AAAI 2025).

One readable file, in the order the data flows:
settings -> data -> validation split -> CIKG -> LightGCN -> losses -> training -> evaluation
-> command line. Equation numbers refer to the paper (Hu et al., AAAI 2025).

    python cikgrec.py train --dataset book-crossing --data-dir ../shared/data
    python cikgrec.py bench --dataset book-crossing --data-dir ../shared/data
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
import random
import subprocess
import sys
import time
import urllib.request
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


def check_settings(s: Settings) -> Settings:
    """Reject settings that cannot work, before anything is read or written.

    Raises SettingsError naming the setting and its value.
    """
    for name, allowed in CHOICES.items():
        if getattr(s, name) not in allowed:
            raise SettingsError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                f"got {getattr(s, name)!r}")
    for name in ("dim", "layers", "batch_size", "eval_batch", "transe_batch", "mask_epochs"):
        if getattr(s, name) < 1:
            raise SettingsError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(s, name)}")
    for name in ("enc_layers", "dec_layers", "epochs", "patience", "threads"):
        if getattr(s, name) < 0:
            raise SettingsError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(s, name)}")
    for name in ("edge_drop", "node_drop", "replace_rate", "recon_edge_drop"):
        if not 0.0 <= getattr(s, name) < 1.0:
            raise SettingsError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(s, name)}")
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


def _int_rows(path: Path, width: int | None = None):
    """Yield (line number, list of ints) for each non-blank line of a whitespace-separated file.

    width: the exact number of fields required (None: at least one). Raises DataError naming the
    file, line and offending value on a non-integer or negative field, a wrong field count, or a
    file with no data lines.
    """
    if not path.is_file():
        raise DataError(path, 0, "file not found")
    seen_data = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for no, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if width is not None and len(fields) != width:
                raise DataError(path, no, f"expected {width} fields, got {len(fields)}: {line.strip()[:80]!r}")
            try:
                values = [int(x) for x in fields]
            except ValueError:
                bad = next(x for x in fields if not x.lstrip("-").isdigit())
                raise DataError(path, no, f"expected integer ids, got {bad!r}") from None
            if min(values) < 0:
                raise DataError(path, no, f"ids must be >= 0, got {min(values)}")
            seen_data = True
            yield no, values
    if not seen_data:
        raise DataError(path, 0, "the file is empty")


def read_user_items(path, n_items: int | None = None) -> dict[int, list[int]]:
    """Read a train.txt/test.txt file: one line `user item item ...` per user.

    Blank lines are skipped, repeated items of a user are kept once (first occurrence order), and
    a user on several lines gets the union. A line with only a user id gives that user no items.
    Returns {user id: [item ids]}. Raises DataError (file, line, value) on a malformed line or,
    when n_items is given, an item id >= n_items.
    """
    path = Path(path)
    out: dict[int, list[int]] = {}
    for no, values in _int_rows(path):
        user, items = values[0], values[1:]
        if n_items is not None and items and max(items) >= n_items:
            raise DataError(path, no, f"item id {max(items)} out of range: there are {n_items} items "
                                      f"(ids 0..{n_items - 1})")
        known = out.setdefault(user, [])
        seen = set(known)
        for i in items:
            if i not in seen:
                seen.add(i)
                known.append(i)
    return out


def read_item_names(path) -> list[str]:
    """Read item_list.txt (`org_id remap_id name...`, header first): names indexed by remap id.

    The name is everything after the second field (book-crossing titles contain spaces);
    'None' marks an item without a name and is returned as ''. Raises DataError on a line
    without a remap id or with remap ids out of order.
    """
    path = Path(path)
    names: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for no, line in enumerate(f, 1):
            if no == 1 or not line.strip():
                continue
            parts = line.rstrip("\n").split(None, 2)
            if len(parts) < 2 or not parts[1].isdigit():
                raise DataError(path, no, f"expected `org_id remap_id name`, got {line.strip()[:80]!r}")
            if int(parts[1]) != len(names):
                raise DataError(path, no, f"remap id {parts[1]} out of order: expected {len(names)}")
            name = parts[2].strip() if len(parts) > 2 else ""
            names.append("" if name == "None" else name)
    if not names:
        raise DataError(path, 0, "the file is empty")
    return names


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


def load_dataset(folder, interests_file=None, name: str = "") -> Dataset:
    """Read a dataset folder: train.txt, test.txt (required), item_list.txt, kg_final.txt,
    user_interest_clustered.txt (optional: each missing one is noted in `warnings`).

    Items are counted by item_list.txt where it exists (else by the largest item id seen); the
    entities are the items plus the KG's entities; interest ids must lie above every entity id
    and are remapped to 0..J-1 in sorted order. Raises DataError naming file, line and value.
    """
    folder = Path(folder)
    notes = []
    if not folder.is_dir():
        raise DataError(folder, 0, "dataset folder not found (run `make data`, or set --data-dir)")
    names = read_item_names(folder / "item_list.txt") if (folder / "item_list.txt").is_file() else []
    n_items = len(names) or None
    train = read_user_items(folder / "train.txt", n_items)
    test = read_user_items(folder / "test.txt", n_items)
    if n_items is None:
        n_items = 1 + max(max((max(v) for v in d.values() if v), default=-1) for d in (train, test))
    n_users = 1 + max(max(train), max(test))

    kg_path = folder / "kg_final.txt"
    if kg_path.is_file():
        kg = np.array([v for _, v in _int_rows(kg_path, 3)], dtype=np.int64)
    else:
        notes.append(f"{kg_path} not found: running without item-side knowledge (no KG edges)")
        kg = np.zeros((0, 3), dtype=np.int64)
    n_entities = max(n_items, int(kg[:, [0, 2]].max()) + 1 if len(kg) else 0)
    n_relations = int(kg[:, 1].max()) + 1 if len(kg) else 0

    int_path = Path(interests_file) if interests_file else folder / "user_interest_clustered.txt"
    edges = np.zeros((0, 2), dtype=np.int64)
    raw_ids = np.zeros(0, dtype=np.int64)
    if int_path.is_file() or interests_file:
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
