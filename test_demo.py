"""The first run: the demo dataset (make_demo.py) and the comparison `make demo` prints (demo.py)."""
from pathlib import Path

import numpy as np
import pytest

import cikgrec_prepare
import demo
import make_demo

ROOT = Path(__file__).resolve().parent


def files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_make_demo_writes_the_same_bytes_every_time_under_a_megabyte(tmp_path):
    make_demo.make(tmp_path / "a" / "demo")
    make_demo.make(tmp_path / "b" / "demo")
    a, b = files(tmp_path / "a" / "demo"), files(tmp_path / "b" / "demo")
    assert a == b
    assert sum(len(v) for v in a.values()) < 1_000_000
    assert {"train.txt", "test.txt", "kg_final.txt", "user_interest_clustered.txt", "interest_clusters.tsv",
            "raw/ratings.csv", "raw/answers.jsonl"} <= set(a)
    # the interest file passes the dataset checks, and is what clustering the answers gives
    ds = cikgrec_prepare.load_checked(tmp_path / "a" / "demo")
    assert ds.n_interests >= 20 and not [w for w in ds.warnings if "interest" in w]
    assert len(np.unique(ds.interest_edges[:, 0])) > 0.8 * ds.n_users
    assert 1000 <= ds.n_items <= 2000
    n_train = np.array([len(x) for x in ds.train])
    assert (n_train < 6).mean() > 0.3  # many sparse users
    answers = (tmp_path / "a" / "demo" / "raw" / "answers.jsonl").read_text()
    assert "whodunit" in answers.lower() and r"\n2. " in answers  # wordings and list shapes of a model


def test_popularity_on_a_hand_made_case():
    train = [np.array([0, 1]), np.array([0]), np.array([0, 2])]  # counts 3, 1, 1, 0: ties go to the lower id
    assert list(np.argsort(-demo.popularity_scores(train, 4))) == [0, 1, 2, 3]
    # user 0: train 0, 1 left out, ranks 2, 3; truth 3 at rank 2. user 1: train 0 left out,
    # ranks 1, 2, 3; truth 1 (rank 1) and 3 (rank 3)
    m = demo.popularity_metrics(train, np.array([0, 1]), [[0, 1], [0]], [[3], [1, 3]], 4, ks=(1, 2))
    assert m["recall@1"] == pytest.approx((0 + 0.5) / 2)
    assert m["recall@2"] == pytest.approx((1 + 0.5) / 2)
    ndcg0 = (1 / np.log2(3)) / 1.0
    ndcg1 = 1.0 / (1 + 1 / np.log2(3))
    assert m["ndcg@2"] == pytest.approx((ndcg0 + ndcg1) / 2)
    assert m["hit@1"] == pytest.approx(0.5)


def test_the_comparison_runs_end_to_end_and_a_second_run_replaces_the_first(tmp_path, capsys):
    args = ["--epochs", "1", "--data-dir", str(ROOT / "data"), "--out-dir", str(tmp_path / "demo")]
    for _ in range(2):  # the second run: earlier results and checkpoints at the same paths
        assert demo.main(args) == 0
        out = capsys.readouterr().out
        rows = [line for line in out.splitlines() if line.startswith("| ")]
        assert [r.split(" | ")[0] for r in rows] == ["| model", "| CIKGRec", "| LightGCN", "| popularity"]
        assert "sparse R@20" in rows[0] and "sparse: the" in out
        assert all(0 <= float(c) <= 1 for r in rows[1:] for c in r.strip("| ").split(" | ")[1:-1])
    assert (tmp_path / "demo" / "compare.md").read_text().count("\n| ") == 4
    assert (tmp_path / "demo" / "first-run.json").is_file() and (tmp_path / "demo" / "lightgcn.json").is_file()


def test_the_table_says_n_a_without_sparse_users():
    m = {k: 0.5 for k, _ in demo.COLUMNS}
    text = demo.table([("x", m, m, 1.0)], 10, 0, 2)
    assert "| x | 0.500 | 0.500 | 0.500 | 0.500 | n/a | n/a | 1 |" in text
