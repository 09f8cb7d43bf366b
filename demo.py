"""The first run (`make demo`): CIKGRec, LightGCN and a popularity ranking on the same split of
the demo dataset, side by side, so that what the method adds can be seen.

    python demo.py [--epochs 150] [--threads 1] [--data-dir data] [--dataset demo] [--out-dir runs/demo]

CIKGRec and LightGCN (`--model lightgcn`: BPR on the user-item graph alone, no KG, no
interests) are trained by the tool layer (cikgrec_cli.fit: validation selection, then one test
evaluation) into OUT_DIR/first-run.json and OUT_DIR/lightgcn.json, replacing an earlier demo's
results (--force). The popularity ranking scores every item by its number of train.txt
interactions. All three are evaluated by cikgrec.evaluate_ranking on the same test users
(each user's train.txt items excluded): all of them, and the sparse ones (fewer than
--sparse-below train.txt items). The table is printed and written to OUT_DIR/compare.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import cikgrec
import cikgrec_cli

KS = (10, 20, 50)
COLUMNS = (("recall@10", "R@10"), ("recall@20", "R@20"), ("ndcg@20", "N@20"), ("recall@50", "R@50"))


def popularity_scores(train: list, n_items: int) -> np.ndarray:
    """Each item's number of training interactions (train: one item-id array per user), plus a
    tie-break below 1 that puts the lower item id first: float64 [n_items]."""
    counts = np.bincount(np.concatenate([np.asarray(x, dtype=np.int64) for x in train] + [np.zeros(0, np.int64)]),
                         minlength=n_items)[:n_items].astype(np.float64)
    return counts + (n_items - np.arange(n_items)) / (n_items + 1)


def popularity_metrics(train: list, users: np.ndarray, exclude: list, truth: list, n_items: int, ks=KS) -> dict:
    """The popularity ranking's metrics (cikgrec.evaluate_ranking: every user gets the same
    scores, its own `exclude` items left out) over `users` with held-out items `truth`."""
    scores = torch.as_tensor(popularity_scores(train, n_items), dtype=torch.float64)
    return cikgrec.evaluate_ranking(torch.ones(int(max(users, default=0)) + 1, 1, dtype=torch.float64),
                                    scores[:, None], np.asarray(users, dtype=np.int64), exclude, truth, ks)


def sparse_rows(trainer: cikgrec.Trainer, below: int) -> np.ndarray:
    """Positions in the test evaluation set of the users with fewer than `below` train.txt items."""
    users = trainer.eval_sets["test"][0]
    return np.array([i for i, u in enumerate(users) if len(trainer.ds.train[u]) < below], dtype=np.int64)


def subset(trainer: cikgrec.Trainer, rows: np.ndarray) -> tuple:
    users, exclude, truth = trainer.eval_sets["test"]
    return users[rows], [exclude[i] for i in rows], [truth[i] for i in rows]


@torch.no_grad()
def model_metrics(trainer: cikgrec.Trainer, rows_sparse: np.ndarray) -> tuple[dict, dict]:
    """Test metrics of a trained model: all test users, and the sparse ones."""
    trainer.model.eval()
    ue, ie = trainer.model.user_item_embeddings()
    everyone = trainer.eval_sets["test"]
    return (cikgrec.evaluate_ranking(ue, ie, *everyone, KS),
            cikgrec.evaluate_ranking(ue, ie, *subset(trainer, rows_sparse), KS))


def table(rows: list, n_users: int, n_sparse: int, below: int) -> str:
    """rows: (name, metrics of all test users, of the sparse ones, seconds) -> a Markdown table."""
    head = ["model"] + [c for _, c in COLUMNS] + [f"sparse {c}" for _, c in COLUMNS[1:3]] + ["seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m, s, sec in rows:
        cells = [f"{m[k]:.3f}" for k, _ in COLUMNS] + [f"{s[k]:.3f}" if n_sparse else "n/a" for k, _ in COLUMNS[1:3]] + [f"{sec:.0f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\n{n_users} test users; sparse: the {n_sparse} with fewer than {below} items in "
                               "train.txt. Same split, test items held out from all three.\n")


def demo(data_dir="data", dataset="demo", out_dir="runs/demo", epochs: int = 150, threads: int = 1,
         sparse_below: int = 6, seed: int = 2024, extra: dict | None = None) -> str:
    """Train CIKGRec and LightGCN, rank by popularity, compare on the test users; returns the
    table (also written to out_dir/compare.md). extra: more settings for both models."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, trainer = [], None
    for name, model, out in (("CIKGRec", "cikgrec", "first-run.json"), ("LightGCN", "lightgcn", "lightgcn.json")):
        s = cikgrec.make_settings(dataset=dataset, data_dir=str(data_dir), model=model, epochs=epochs, threads=threads,
                                  seed=seed, device="cpu", out=str(out_dir / out), **(extra or {}))
        cikgrec.log(f"demo: training {name} ({model}) for at most {epochs} epochs -> {s.out}")
        t0 = time.perf_counter()
        cikgrec_cli.fit(s, force=True)
        seconds = time.perf_counter() - t0
        trainer, _ = cikgrec_cli.load_trained(s.out, device="cpu")
        sparse = sparse_rows(trainer, sparse_below)
        rows.append((name, *model_metrics(trainer, sparse), seconds))
    t0 = time.perf_counter()
    ds = trainer.ds
    pop = popularity_metrics(ds.train, *trainer.eval_sets["test"], ds.n_items)
    pop_sparse = popularity_metrics(ds.train, *subset(trainer, sparse), ds.n_items)
    rows.append(("popularity", pop, pop_sparse, time.perf_counter() - t0))
    text = table(rows, len(trainer.eval_sets["test"][0]), len(sparse), sparse_below)
    (out_dir / "compare.md").write_text(f"# {dataset}: CIKGRec, LightGCN and popularity (test)\n\n" + text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="demo.py", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--dataset", default="demo")
    p.add_argument("--out-dir", default="runs/demo")
    p.add_argument("--epochs", type=int, default=150, help="at most; validation stops it earlier")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sparse-below", type=int, default=6, help="sparse users: fewer than this many train.txt items")
    p.add_argument("--seed", type=int, default=2024)
    args = p.parse_args(argv)
    t0 = time.perf_counter()

    def run() -> int:
        text = demo(args.data_dir, args.dataset, args.out_dir, args.epochs, args.threads, args.sparse_below, args.seed)
        print(text, end="")
        print(f"({time.perf_counter() - t0:.0f} s in all; table in {Path(args.out_dir) / 'compare.md'})")
        return 0
    return cikgrec_cli.exit_code(run, "interrupted: `make demo` starts afresh when run again", own=False)


if __name__ == "__main__":
    sys.exit(main())
