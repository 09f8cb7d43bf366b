"""Tests of the tool layer: cikgrec_cli.py (fit with results files, locks, checkpoints and --resume, --refit,
--max-minutes; recommend and load_run; the command line) and cikgrec_prepare.py (raw files in, the strict
dataset checks, stats, download). Run with `make test`. The method's own tests are in test_cikgrec.py.

The published datasets are found through $CIKGREC_DATA (default ../shared/data relative to the
repository root); under CI ($CI set) a missing dataset fails instead of skipping.
"""
import json
import math
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import cikgrec as C
import cikgrec_cli as T
import cikgrec_prepare as P
import llm_interests as L
from test_cikgrec import DATA, ROOT, dense, need_data, run_cli, small_dataset, tiny_settings, write_dataset


def write_lists(folder, users, entities, relations):
    for name, n in (("user_list.txt", users), ("entity_list.txt", entities), ("relation_list.txt", relations)):
        (folder / name).write_text("org_id remap_id\n" + "".join(f"{i} {i}\n" for i in range(n)))


RAW = """user,item,rating,timestamp
u1,a,5,100
u1,b,4,200
u1,a,3,50
u1,c,5,300
u1,d,4,400
u1,e,5,500
u2,b,5,10
u2,c,2,20
u2,d,5,30
u2,e,4,40
u2,f,5,50
u2,a,4,60
u3,a,5,1
u3,b,5,2
u4,x,5,1
"""


def trained_fixture(tmp_path, **kw):
    folder = small_dataset(tmp_path)
    (folder / "user_list.txt").write_text("org_id remap_id\n" + "".join(f"U{u} {u}\n" for u in range(8)))
    r = T.fit(tiny_settings(tmp_path, epochs=2, **kw))
    return T.load_run(tmp_path / "runs" / "fx.json"), r


def test_t11_schedules_and_masking():
    for q, lin, exp in ((0, 0.1, 0.1), (50, 0.3, 0.223607), (100, 0.5, 0.5), (200, 0.5, 0.5)):
        assert C.mask_rate(q, "lin", 0.1, 0.5, 100) == pytest.approx(lin, abs=1e-6)
        assert C.mask_rate(q, "exp", 0.1, 0.5, 100) == pytest.approx(exp, abs=1e-6)
    x = torch.arange(20.0).reshape(10, 2)
    token = torch.full((1, 2), -1.0)
    xm, masked = C.mask_interests(x, 7, 3, 0.2, 0.0, token)  # 3 interest nodes at rate 0.2
    assert len(masked) == 1 and 7 <= masked.item() <= 9 and torch.all(xm[masked] == -1)
    assert torch.equal(xm[:7], x[:7])
    torch.manual_seed(0)
    xm, masked = C.mask_interests(x, 0, 10, 1.0, 0.15, token)  # m = 10, int(0.15 * 10) = 1 replaced
    assert (xm[masked] == -1).all(dim=1).sum() == 9
    xm, masked = C.mask_interests(x, 0, 10, 1.0, 0.05, token)  # int(0.5) = 0: all get [M]
    assert (xm[masked] == -1).all()
    with pytest.raises(ValueError):
        C.mask_interests(x, 0, 0, 0.5, 0.0, token)
    with pytest.raises(C.SettingsError, match="alpha"):
        T.check_settings(C.Settings(alpha=0.0, schedule="exp"))


def test_t4_users_without_training_items(tmp_path):
    folder = write_dataset(tmp_path / "fx", ["0 10 11", "2"], ["0 12", "1 10", "2 11"], n_items=13)
    ds = C.load_dataset(folder)
    assert [len(x) for x in ds.train] == [2, 0, 0]
    a = dense(C.build_graph(ds, ds.train, ("ui",), "none").adjacency())
    assert not a[1].any() and not a[2].any()
    s = tiny_settings(tmp_path, select_on="test", epochs=1)
    r = T.fit(s)
    assert any("2 users have no training items" in n for n in r["notes"])
    assert all(math.isfinite(v) for v in r["test"].values())
    assert r["test"]["recall@50"] == 1.0  # only user 0 is evaluated: item 12 is its only candidate


def test_t2_selection_on_validation_test_touched_once(tmp_path, monkeypatch):
    small_dataset(tmp_path)
    valid = [0.10, 0.12, 0.11, 0.30]
    test = [0.13, 0.11, 0.12, 0.40]
    calls = []

    def fake_epoch(self, epoch):
        with torch.no_grad():
            self.model.emb[0, 0] = float(epoch)  # marks which epoch's model is loaded
        return {"bpr": 0.0}

    def fake_eval(self, split):
        epoch = int(self.model.emb[0, 0].item())
        calls.append(split)
        v = (valid if split == "valid" else test)[epoch]
        return {"recall@50": v, "ndcg@50": 0.0}

    monkeypatch.setattr(C.Trainer, "train_epoch", fake_epoch)
    monkeypatch.setattr(C.Trainer, "evaluate", fake_eval)
    r = T.fit(tiny_settings(tmp_path, epochs=10, patience=1))
    assert r["best_epoch"] == 1 and r["epochs_run"] == 3  # epoch 2 of 3 (counting from 1)
    assert r["test"]["recall@50"] == 0.11
    assert calls == ["valid", "valid", "valid", "test"]
    assert r["selected_on"] == "valid" and r["valid"]["recall@50"] == 0.12


def test_fit_resume_is_exact(tmp_path, capsys):
    small_dataset(tmp_path)
    straight = T.fit(tiny_settings(tmp_path, epochs=3, out=str(tmp_path / "a.json"), transe=True))
    err = capsys.readouterr().err
    assert "starting afresh" not in err and "fx: 8 users, 6 items, 8 entities, 3 interest nodes, " in err
    T.fit(tiny_settings(tmp_path, epochs=2, out=str(tmp_path / "b.json"), transe=True))
    with pytest.raises(C.SettingsError, match=r"b.json holds the results of a finished run .*--lr 0.01 there, 0.02 "
                                              r"here.*give --force"):  # found in review: replaced with a note only
        T.fit(tiny_settings(tmp_path, epochs=2, out=str(tmp_path / "b.json"), transe=True, lr=0.02))
    T.fit(tiny_settings(tmp_path, epochs=2, out=str(tmp_path / "b.json"), transe=True), force=True)  # again
    err = capsys.readouterr().err  # found by a fresh user: the checkpoint was replaced without a word
    assert f"note: starting afresh: the checkpoint {tmp_path / 'b.ckpt.pt'} will be replaced" in err
    resumed = T.fit(tiny_settings(tmp_path, epochs=3, out=str(tmp_path / "b.json"), transe=True,
                                  resume=True))
    assert [h["bpr"] for h in resumed["history"]] == [h["bpr"] for h in straight["history"]]
    assert resumed["test"] == straight["test"]
    with pytest.raises(C.SettingsError, match="other settings"):
        T.fit(tiny_settings(tmp_path, epochs=4, out=str(tmp_path / "b.json"), lr=0.5, resume=True))


def test_the_header_says_when_interest_nodes_are_not_in_the_graph(tmp_path, capsys):
    small_dataset(tmp_path)
    T.fit(tiny_settings(tmp_path, epochs=1, model="lightgcn", graph="cg"))
    assert "8 entities, 3 interest nodes (not in the CG graph), " in capsys.readouterr().err


def test_max_minutes_stops_writes_the_best_so_far_and_resumes(tmp_path):
    """A run cut by --max-minutes (e.g. a lent GPU's short lease) keeps what it measured."""
    small_dataset(tmp_path)
    straight = T.fit(tiny_settings(tmp_path, epochs=3, out=str(tmp_path / "a.json")))
    assert straight["stopped_by"] is None
    cut = T.fit(tiny_settings(tmp_path, epochs=3, out=str(tmp_path / "b.json"), max_minutes=1e-9))
    assert cut["epochs_run"] == 1 and cut["best_epoch"] == 0
    assert cut["stopped_by"].startswith("time limit: --max-minutes 1e-09 reached after epoch 0")
    assert json.loads((tmp_path / "b.json").read_text())["stopped_by"] == cut["stopped_by"]
    resumed = T.fit(tiny_settings(tmp_path, epochs=3, out=str(tmp_path / "b.json"), resume=True))
    assert resumed["stopped_by"] is None and resumed["epochs_run"] == 3
    assert [h["bpr"] for h in resumed["history"]] == [h["bpr"] for h in straight["history"]]
    assert resumed["test"] == straight["test"]
    with pytest.raises(C.SettingsError, match="--max-minutes must be >= 0, got -1"):
        T.check_settings(tiny_settings(tmp_path, max_minutes=-1))


def test_results_json_and_outputs(tmp_path):
    small_dataset(tmp_path)
    r = T.fit(tiny_settings(tmp_path, epochs=2))
    saved = json.loads((tmp_path / "runs" / "fx.json").read_text())
    for key in ("dataset", "settings", "seed", "split_seed", "selected_on", "best_epoch", "valid",
                "test", "epoch_seconds", "eval_seconds", "provenance"):
        assert key in saved
    assert saved["provenance"]["interest_sha256"] == T._sha256(str(tmp_path / "fx" / "user_interest_clustered.txt"))
    assert set(saved["test"]) >= {"recall@20", "ndcg@50", "precision@100", "hit@100"}
    assert (tmp_path / "runs" / "fx.pt").is_file() and (tmp_path / "runs" / "fx.ckpt.pt").is_file()
    assert saved["test"] == r["test"]
    t = T.fit(tiny_settings(tmp_path, epochs=1, select_on="test", out=str(tmp_path / "t.json")))
    assert t["valid"] is None and t["selected_on"] == "test"


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path, monkeypatch, capsys):
    small_dataset(tmp_path)
    s = tiny_settings(tmp_path, epochs=3)
    calls = {"n": 0}
    real = C.bpr

    def exploding(pos, neg):
        calls["n"] += 1
        return real(pos, neg) * (float("nan") if calls["n"] > 6 else 1.0)  # epoch 0 has 6 batches

    monkeypatch.setattr(C, "bpr", exploding)
    with pytest.raises(C.TrainingError, match=r"non-finite loss \(nan\) at epoch 1.*checkpoint of epoch 0 is kept"
                                              r".*results of the best epoch before it \(0\) are in .*fx.json"):
        T.fit(s)
    ck = torch.load(tmp_path / "runs" / "fx.ckpt.pt", weights_only=False)
    assert ck["epoch"] == 0
    r = json.loads((tmp_path / "runs" / "fx.json").read_text())  # the issue: keeps checkpoint and results
    assert r["best_epoch"] == 0 and r["epochs_run"] == 1 and "non-finite loss" in r["stopped_by"]
    assert all(math.isfinite(v) for v in r["test"].values())


def test_non_finite_loss_in_the_first_epoch_says_there_is_no_checkpoint(tmp_path, capsys):
    """Found by a fresh user: --lambda1 1e308 overflowed the weighted loss while every printed
    part was finite, and the message promised a checkpoint that did not exist."""
    small_dataset(tmp_path)
    s = tiny_settings(tmp_path, lambda1=1e308, lambda3=1e308)
    with pytest.raises(C.TrainingError, match=r"non-finite loss \(inf\) at epoch 0, batch 1/6; its parts "
                                              r"before the lambdas: bpr .*no epoch finished, so there is no checkpoint and no result"):
        T.fit(s)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("case, expect", [
    ("missing", "train.txt: file not found"),
    ("malformed", "train.txt, line 2: expected integer ids, got 'x7'"),
    ("out_of_range", "test.txt, line 1: item id 9 out of range"),
    ("empty", "test.txt: the file is empty"),
    ("kg_fields", "kg_final.txt, line 1: expected 3 fields, got 2"),
    ("interest_collides", "user_interest_clustered.txt, line 1: interest id 3 collides"),
])
def test_bad_input(tmp_path, case, expect):
    folder = write_dataset(tmp_path / "fx", ["0 0 1", "1 1 2"], ["0 2", "1 0"], kg=["0 0 4"],
                           interests=["0 5"], n_items=3)
    if case == "missing":
        (folder / "train.txt").unlink()
    elif case == "malformed":
        (folder / "train.txt").write_text("0 0 1\n1 x7 2\n")
    elif case == "out_of_range":
        (folder / "test.txt").write_text("0 9\n")
    elif case == "empty":
        (folder / "test.txt").write_text("\n\n")
    elif case == "kg_fields":
        (folder / "kg_final.txt").write_text("0 4\n")
    elif case == "interest_collides":
        (folder / "user_interest_clustered.txt").write_text("0 3\n")
    out = tmp_path / "out" / "r.json"
    p = run_cli("train", "--dataset", "fx", "--data-dir", str(tmp_path), "--out", str(out),
                "--epochs", "1", cwd=tmp_path)
    assert p.returncode == 2
    assert expect in p.stderr and "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_bad_setting_is_a_clear_error(tmp_path):
    p = run_cli("train", "--dataset", "fx", "--data-dir", str(tmp_path), "--edge-drop", "1.5", cwd=tmp_path)
    assert p.returncode == 2 and "--edge-drop must be in [0, 1)" in p.stderr and "Traceback" not in p.stderr


def test_download_without_network_is_one_clear_line(tmp_path, monkeypatch):
    import urllib.error
    blobs = tmp_path / "GIT_BLOBS"
    blobs.write_text("e69de29bb2d1d6434b8b29ae775ad8c2e48c5391  fx/train.txt\n")

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(P.urllib.request, "urlopen", offline)
    with pytest.raises(C.DataError, match="set DATA_DIR to a folder that has the files"):
        P.download(["fx"], tmp_path / "data", blobs)
    (tmp_path / "data" / "fx").mkdir(parents=True)
    (tmp_path / "data" / "fx" / "train.txt").write_bytes(b"")  # empty file: blob e69de29...
    P.download(["fx"], tmp_path / "data", blobs)  # present and verified: no network needed
    (tmp_path / "data" / "fx" / "train.txt").write_bytes(b"0 1\n")  # e.g. a local rebuild
    with pytest.raises(C.DataError, match=r"train.txt: present but not the upstream file \(git blob e69de29"):
        P.download(["fx"], tmp_path / "data", blobs)
    assert P.git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_two_epochs_on_book_crossing(tmp_path):
    need_data("book-crossing")
    s = T.resolve_settings(C.argparse.Namespace(dataset="book-crossing"))
    s = C.dataclasses.replace(s, data_dir=str(DATA), epochs=2, out=str(tmp_path / "bc.json"))
    r = T.fit(s)
    saved = json.loads((tmp_path / "bc.json").read_text())
    assert saved["epochs_run"] == 2 and saved["best_epoch"] in (0, 1)
    assert all(math.isfinite(v) for v in saved["test"].values())
    assert 0.02 < saved["test"]["recall@50"] < 0.5  # learned something, not perfect
    assert saved["settings"]["layers"] == 4 and saved["settings"]["tau"] == 0.15  # authors' config


def test_empty_validation_split_is_a_clear_error(tmp_path):
    # every user has <= 3 training items, so no validation item is carved out
    write_dataset(tmp_path / "fx", ["0 0 1", "1 1 2 0"], ["0 2", "1 3"], n_items=4)
    p = run_cli("train", "--dataset", "fx", "--data-dir", str(tmp_path), "--ks", "2",
                "--out", str(tmp_path / "r.json"), cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "no user has enough training items for a validation split" in p.stderr
    m = C.evaluate_ranking(torch.zeros(2, 2), torch.zeros(3, 2), np.zeros(0, np.int64), [], [], [2])
    assert m == {"recall@2": 0.0, "ndcg@2": 0.0, "precision@2": 0.0, "hit@2": 0.0}


def test_no_interest_nodes_flag(tmp_path):
    args = T.build_parser().parse_args(["train", "--dataset", "fx", "--no-interest-nodes"])
    assert T.resolve_settings(args).interest_nodes is False
    args = T.build_parser().parse_args(["train", "--dataset", "fx"])
    assert T.resolve_settings(args).interest_nodes is True
    folder = small_dataset(tmp_path)
    (folder / "user_interest_clustered.txt").write_text("not read\n")  # would be an error if read
    ds, _, _ = C.read_data(tiny_settings(tmp_path, interest_nodes=False))
    assert ds.n_interests == 0 and ds.interest_file == ""


@pytest.mark.parametrize("case, expect", [
    ("user", "train.txt, line 3: user id 5 out of range: user_list.txt has 2 users"),
    ("entity", "kg_final.txt, line 2: entity id 9 out of range: entity_list.txt has 5 entities"),
    ("relation", "kg_final.txt, line 1: relation id 3 out of range: relation_list.txt has 2 relations"),
    ("folder", "test.txt: is a folder, not a file"),
    # found by a fresh user (each was a traceback or a misleading note):
    ("superscript", "train.txt, line 2: expected integer ids, got '²'"),
    ("double_minus", "train.txt, line 2: expected integer ids, got '--5'"),
    ("huge", "user_interest_clustered.txt, line 1: id 99999999999999999999 is too large"),
    ("kg_folder", "kg_final.txt: is a folder, not a file"),
    ("unreadable", "train.txt: cannot read it (Permission denied)"),
    ("sparse_items", "test.txt, line 2: item id 50000000 but only 4 distinct item ids: ids must be numbered"),
    ("sparse_users", "train.txt, line 3: user id 9999999 but only 3 distinct user ids"),
    ("sparse_entities", "kg_final.txt, line 2: entity id 7000000 but only"),
    # a fresh user's garbage list lines were accepted and counted as ids:
    ("list_garbage", "user_list.txt, line 3: expected `org_id remap_id`, got 'garbage'"),
    ("list_order", "relation_list.txt, line 2: remap id 1 out of order: expected 0"),
])
def test_ids_checked_against_list_files(tmp_path, monkeypatch, case, expect):
    folder = write_dataset(tmp_path / "fx", ["0 0 1", "1 1 2"], ["0 2", "1 0"], kg=["0 0 4", "1 1 3"],
                           n_items=3)
    write_lists(folder, 2, 5, 2)
    if case == "user":
        (folder / "train.txt").write_text("0 0 1\n1 1 2\n5 0\n")
    elif case == "entity":
        (folder / "kg_final.txt").write_text("0 0 4\n1 1 9\n")
    elif case == "relation":
        (folder / "kg_final.txt").write_text("0 3 4\n")
    elif case == "folder":
        (folder / "test.txt").unlink()
        (folder / "test.txt").mkdir()
    elif case in ("superscript", "double_minus"):
        (folder / "train.txt").write_text(f"0 0 1\n1 {'²' if case == 'superscript' else '--5'} 2\n")
    elif case == "huge":
        (folder / "user_interest_clustered.txt").write_text("0 99999999999999999999\n")
    elif case == "kg_folder":
        (folder / "kg_final.txt").unlink()
        (folder / "kg_final.txt").mkdir()
    elif case == "unreadable":  # the tests run as root, who reads anything: make open() refuse
        real_open = open
        monkeypatch.setattr("builtins.open", lambda f, *a, **k: (_ for _ in ()).throw(
            PermissionError(13, "Permission denied")) if str(f).endswith("train.txt") else real_open(f, *a, **k))
    elif case == "list_garbage":
        (folder / "user_list.txt").write_text("org_id remap_id\n10 0\ngarbage\n")
    elif case == "list_order":
        (folder / "relation_list.txt").write_text("org_id remap_id\nx 1\ny 0\n")
    elif case.startswith("sparse"):
        for name in ("user_list.txt", "entity_list.txt", "item_list.txt"):
            (folder / name).unlink(missing_ok=True)
        if case == "sparse_items":
            (folder / "test.txt").write_text("0 2\n1 50000000\n")
        elif case == "sparse_users":
            (folder / "train.txt").write_text("0 0 1\n1 1 2\n9999999 0\n")
        else:
            (folder / "kg_final.txt").write_text("0 0 4\n1 1 7000000\n")
    with pytest.raises(C.DataError) as e:
        P.load_checked(folder)
    assert expect in str(e.value)


def test_data_notes_overlap_and_merged_lines(tmp_path):
    folder = write_dataset(tmp_path / "fx", ["0 0 1", "1 1 2", "1 0", "0 0 1"], ["0 1 2", "1 0"], n_items=3)
    ds = P.load_checked(folder)
    assert ds.train[1].tolist() == [1, 2, 0] and ds.train[0].tolist() == [0, 1]
    assert any("train.txt: 1 lines repeat the user of an earlier line; items merged (e.g. line 3: user 1 also on "
               "line 2)" in w for w in ds.warnings)
    assert not any("line 4" in w for w in ds.warnings)  # an identical repeated line is no news
    assert any("2 test items are also training items" in w for w in ds.warnings)


@pytest.mark.parametrize("name, value, expect", [
    ("lr", -1.0, "--lr must be > 0"), ("lr", float("nan"), "--lr must be a finite number"),
    ("seed", -1, "--seed must be >= 0"), ("split_seed", -2, "--split-seed must be >= 0"),
    ("epochs", 0, "--epochs must be at least 1"), ("dec_layers", 0, "--dec-layers must be at least 1"),
    ("lambda2", float("nan"), "--lambda2 must be a finite number"), ("l2", -1.0, "--l2 must be >= 0"),
    ("transe_lr", -1.0, "--transe-lr must be > 0"),
    ("patience", 0, "--patience must be at least 1"),  # was accepted, then a traceback (no epoch ran)
    ("seed", 2**64, "--seed must be < 2\\*\\*32"),  # was a torch overflow traceback
])
def test_settings_rejected(name, value, expect):
    with pytest.raises(C.SettingsError, match=expect):
        T.check_settings(C.dataclasses.replace(C.Settings(), **{name: value}))


def test_min_epochs_holds_off_early_stopping(tmp_path, monkeypatch):
    """Found in the Table 4 sweep: LightGCN on dbbook2014's CKG scored best at epoch 0 (a random
    model ranks by popularity), dipped, and stopped at epoch 10 just before recovering."""
    small_dataset(tmp_path)
    scores = iter([1.0, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    monkeypatch.setattr(C, "selection_score", lambda m: next(scores))
    r = T.fit(tiny_settings(tmp_path, epochs=10, patience=2))
    assert r["epochs_run"] == 3 and r["best_epoch"] == 0  # epoch 0, then 2 without improvement
    scores = iter([1.0, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    r = T.fit(tiny_settings(tmp_path, epochs=10, patience=2, min_epochs=5, out=str(tmp_path / "m.json")))
    assert r["epochs_run"] == 5 and r["best_epoch"] == 0 and r["settings"]["min_epochs"] == 5


def test_no_training_pair_is_a_data_error(tmp_path):
    """Found by a fresh user: train.txt with bare user ids and --select-on test trained on nothing
    and reported zeros."""
    folder = write_dataset(tmp_path / "fx", ["0", "1"], ["0 2", "1 0"], n_items=3)
    with pytest.raises(C.DataError, match="train.txt: no \\(user, item\\) pair to train on"):
        T.fit(tiny_settings(tmp_path, select_on="test"))


def test_resume_refuses_a_checkpoint_that_does_not_fit(tmp_path):
    """Found in use: a checkpoint from older code (no data hashes) resumed with another
    interest file ended in a bare size-mismatch traceback."""
    folder = small_dataset(tmp_path)
    T.fit(tiny_settings(tmp_path, epochs=1))
    _, _, ckpt = T.output_paths(tiny_settings(tmp_path))
    ck = torch.load(ckpt, weights_only=False)
    del ck["data_sha256"]
    torch.save(ck, ckpt)
    interests = (folder / "user_interest_clustered.txt").read_text()
    with open(folder / "user_interest_clustered.txt", "a") as f:
        f.write("1 11\n")  # a fourth interest node: the embedding table grows by one row
    with pytest.raises(C.SettingsError, match=r"does not fit this code, graph or model \(size mismatch"):
        T.fit(tiny_settings(tmp_path, epochs=2, resume=True))
    (folder / "user_interest_clustered.txt").write_text(interests)
    ck = torch.load(ckpt, weights_only=False)  # found in use too: history made before per-epoch
    del ck["history"][0]["seconds"]  # seconds were kept in it: the run crashed only at its end
    torch.save(ck, ckpt)
    with pytest.raises(C.SettingsError, match=r"older code.*\(history without seconds\)|\(history without seconds\)"):
        T.fit(tiny_settings(tmp_path, epochs=2, resume=True))
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(C.SettingsError, match="cannot read"):
        T.fit(tiny_settings(tmp_path, epochs=2, resume=True))


def test_resume_refuses_changed_data_and_unwritable_out(tmp_path):
    folder = small_dataset(tmp_path)
    T.fit(tiny_settings(tmp_path, epochs=1))
    (folder / "train.txt").write_text((folder / "train.txt").read_text().replace("7 3 5 1", "7 3 5"))
    with pytest.raises(C.SettingsError, match=r"other settings or data \(train.txt\)"):
        T.fit(tiny_settings(tmp_path, epochs=2, resume=True))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(C.SettingsError, match="file is a file, not a folder"):  # was "cannot write in ... (File exists)"
        T.fit(tiny_settings(tmp_path, out=str(blocker / "sub" / "r.json")))


@pytest.mark.parametrize("out, expect", [
    ("adir", "adir is a folder"),  # found in use: trained, then IsADirectoryError at the end
    ("model.pt", "give the results file"),  # found in use: the results JSON overwrote the model
    ("ro/r.json", "cannot write in"),  # found in use: Permission denied after the first epoch
])
def test_bad_out_is_refused_before_training(tmp_path, monkeypatch, out, expect):
    small_dataset(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "ro").mkdir()
    real = T.tempfile.TemporaryFile

    def read_only(dir=None, **kw):  # a folder we may not write in (the tests run as root)
        if str(dir).endswith("ro"):
            raise PermissionError(13, "Permission denied")
        return real(dir=dir, **kw)

    monkeypatch.setattr(T.tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(C.Trainer, "train_epoch", lambda *a: pytest.fail("trained before checking --out"))
    with pytest.raises(C.SettingsError, match=expect):
        T.fit(tiny_settings(tmp_path, out=str(tmp_path / out)))
    assert sorted(p.name for p in (tmp_path / "adir").iterdir()) == [] and not (tmp_path / "model.json").exists()


def test_memory_too_large_names_the_setting(tmp_path, capsys):
    big = SimpleNamespace(n_users=10**6, n_items=10**5, n_entities=10**5, n_interests=0)
    for name, value in (("dim", 10**6), ("batch_size", 10**7), ("eval_batch", 10**6)):
        s = C.Settings(**{name: value})
        with pytest.raises(C.SettingsError, match=f"--{name.replace('_', '-')} {value}: this run needs about"):
            T.check_memory(s, big, torch.device("cpu"), free=2**30)
    T.check_memory(C.Settings(), big, torch.device("cpu"), free=2**40)  # fits: no error
    small_dataset(tmp_path)
    args = ["train", "--dataset", "fx", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r.json"),
            "--dim", "100000000"]
    assert T.main(args) == 2
    err = capsys.readouterr().err
    assert "--dim 100000000: this run needs about" in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()


def test_tables_and_explain_moved_to_experiments(capsys):
    assert T.main(["tables", "--table", "table1"]) == 2
    assert "python experiments.py tables --table table1" in capsys.readouterr().err
    assert T.main(["explain", "--run", "x.json", "--user", "0"]) == 2
    err = capsys.readouterr().err
    assert "python experiments.py explain" in err and err.count("\n") == 1


def test_refit_trains_best_epoch_plus_one_on_all_of_train(tmp_path):
    small_dataset(tmp_path)
    r = T.fit(tiny_settings(tmp_path, epochs=3, refit=True))
    out = tmp_path / "runs" / "fx.json"
    e = r["best_epoch"] + 1
    assert r["refit"]["epochs"] == e and set(T.HEADLINE_METRICS) <= set(r["refit"]["test"])
    assert json.loads(out.read_text())["refit"] == json.loads(json.dumps(r["refit"]))
    assert r["refit"]["model_sha256"] == T._sha256(str(out.with_suffix(".refit.pt")))
    # the same as training e epochs on all of train.txt with no selection, from the same seed
    plain = T.fit(tiny_settings(tmp_path, select_on="test", epochs=e, patience=100, out=str(tmp_path / "p.json")))
    last = torch.load(tmp_path / "p.ckpt.pt", weights_only=False)["trainer"]["model"]
    refit = T.read_model(out.with_suffix(".refit.pt"), "cpu")[1]
    assert all(torch.equal(last[k], refit[k]) for k in refit) and plain["epochs_run"] == e
    trainer, _ = T.load_trained(out)  # the refit model, on the graph of all of train.txt
    ds = C.load_dataset(tmp_path / "fx")
    assert trainer.model.graphs.main.n_edges == len(C.cikg_edges(ds, ds.train))
    assert trainer.evaluate("test") == r["refit"]["test"]


def test_refit_of_a_finished_run_trains_only_the_refit(tmp_path, capsys):
    small_dataset(tmp_path)
    first = T.fit(tiny_settings(tmp_path, epochs=3))
    assert "refit" not in first
    again = T.fit(tiny_settings(tmp_path, epochs=3, refit=True))
    assert again["history"] == first["history"] and again["refit"]["epochs"] == first["best_epoch"] + 1
    assert "refitting on all of train.txt" in capsys.readouterr().err
    assert T.fit(tiny_settings(tmp_path, epochs=3, refit=True))["refit"] == json.loads(json.dumps(again["refit"]))
    with pytest.raises(C.SettingsError, match="other settings"):
        T.fit(tiny_settings(tmp_path, epochs=3, refit=True, lambda2=0.5))
    with pytest.raises(C.SettingsError, match="--refit needs validation selection"):
        T.fit(tiny_settings(tmp_path, select_on="test", refit=True))


def test_an_interrupted_refit_resumes_exactly(tmp_path, monkeypatch):
    small_dataset(tmp_path)
    whole = T.fit(tiny_settings(tmp_path, epochs=4, refit=True, out=str(tmp_path / "a.json")))
    real, calls = C.Trainer.train_epoch, {"n": 0}

    def stop_in_the_refit(self, epoch, max_batches=None):
        calls["n"] += 1
        if self.valid is None and epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch, max_batches)
    monkeypatch.setattr(C.Trainer, "train_epoch", stop_in_the_refit)
    with pytest.raises(KeyboardInterrupt):
        T.fit(tiny_settings(tmp_path, epochs=4, refit=True, out=str(tmp_path / "b.json")))
    monkeypatch.setattr(C.Trainer, "train_epoch", real)
    if whole["refit"]["epochs"] > 1:
        assert (tmp_path / "b.refit.ckpt.pt").is_file()
    resumed = T.fit(tiny_settings(tmp_path, epochs=4, refit=True, resume=True, out=str(tmp_path / "b.json")))
    assert resumed["refit"]["test"] == whole["refit"]["test"]


def test_a_refit_checkpoint_of_another_run_is_not_continued(tmp_path, capsys):
    """Found by a fresh user: --force with other settings left the old run's refit checkpoint,
    and --refit --resume continued it (0 epochs trained), reporting the old refit's numbers."""
    small_dataset(tmp_path)
    T.fit(tiny_settings(tmp_path, epochs=3, refit=True))  # leaves runs/fx.refit.ckpt.pt
    T.fit(tiny_settings(tmp_path, epochs=3, lambda3=0.5), force=True)
    resumed = T.fit(tiny_settings(tmp_path, epochs=3, lambda3=0.5, refit=True, resume=True))
    assert "is the refit of another run" in capsys.readouterr().err
    clean = T.fit(tiny_settings(tmp_path, epochs=3, lambda3=0.5, refit=True, out=str(tmp_path / "clean.json")))
    assert resumed["refit"]["test"] == clean["refit"]["test"]
    ckpt = tmp_path / "runs" / "fx.refit.ckpt.pt"
    ckpt.write_bytes(b"not a checkpoint")
    T.fit(tiny_settings(tmp_path, epochs=3, lambda3=0.5), force=True)
    with pytest.raises(C.SettingsError, match=f"--resume: cannot read {ckpt}"):
        T.fit(tiny_settings(tmp_path, epochs=3, lambda3=0.5, refit=True, resume=True))


def test_resume_of_a_finished_run_keeps_its_refit(tmp_path, capsys):
    """Found by a fresh user: --resume without --refit on a finished run rewrote its results
    without the refit."""
    small_dataset(tmp_path)
    done = T.fit(tiny_settings(tmp_path, epochs=3, refit=True))
    out = tmp_path / "runs" / "fx.json"
    before = out.read_bytes()
    again = T.fit(tiny_settings(tmp_path, epochs=3, resume=True))
    assert "is finished: --resume has nothing to continue" in capsys.readouterr().err
    assert out.read_bytes() == before and again["refit"] == json.loads(json.dumps(done["refit"]))


def test_max_minutes_also_limits_the_refit(tmp_path, capsys):
    """Found by a fresh user: --max-minutes stopped the selection run but not its refit (a GPU
    window would run past its end)."""
    small_dataset(tmp_path)
    selected = T.fit(tiny_settings(tmp_path, epochs=4))
    assert selected["best_epoch"] >= 1  # a refit of 2 or more epochs, so that it can be cut
    cut = T.fit(tiny_settings(tmp_path, epochs=4, refit=True, max_minutes=1e-9))
    assert "refit" not in cut and "time limit: --max-minutes 1e-09 reached after refit epoch 0" in capsys.readouterr().err
    assert "refit" not in json.loads((tmp_path / "runs" / "fx.json").read_text())
    resumed = T.fit(tiny_settings(tmp_path, epochs=4, refit=True, resume=True))
    whole = T.fit(tiny_settings(tmp_path, epochs=4, refit=True, out=str(tmp_path / "whole.json")))
    assert resumed["refit"]["test"] == whole["refit"]["test"]


def test_prepare_raw_csv_by_hand(tmp_path):
    """Duplicates merged (u1,a: rating 5, time 50), ratings < 4 dropped (u2,c), users under 5
    pairs dropped (u3, u4), 8:2 split by time, dense ids in order of first appearance."""
    (tmp_path / "r.csv").write_text(RAW)
    (tmp_path / "items.tsv").write_text("item\tname\na\tAlpha Book\nb\tBeta, the Book\nf\tF\n")
    (tmp_path / "kg.csv").write_text("head,relation,tail\na,author,Jane Doe\nb,author,Jane Doe\nx,author,Bob\n"
                                     "Jane Doe,born in,Paris\nc,genre,d\n")
    st = P.prepare(tmp_path / "r.csv", "mine", tmp_path / "data", items=tmp_path / "items.tsv", kg=tmp_path / "kg.csv",
                   min_rating=4)
    d = tmp_path / "data" / "mine"
    # u1: a(50) b(200) c(300) d(400) e(500): test = round(5/5) = 1 latest -> e; u2: b d e f a -> test a
    assert (d / "train.txt").read_text() == "0 0 1 2 3\n1 1 3 4 5\n"
    assert (d / "test.txt").read_text() == "0 4\n1 0\n"
    assert (d / "user_list.txt").read_text() == "org_id remap_id\nu1 0\nu2 1\n"
    assert (d / "item_list.txt").read_text().splitlines() == [
        "org_id remap_id item_name", "a 0 Alpha Book", "b 1 Beta, the Book", "c 2 None", "d 3 None", "e 4 None", "f 5 F"]
    # Jane Doe and Paris are entities 6, 7; x was filtered out with u4, so its triple goes
    assert (d / "kg_final.txt").read_text() == "0 0 6\n1 0 6\n2 2 3\n6 1 7\n"
    assert (d / "entity_list.txt").read_text().splitlines()[-2:] == ["Jane_Doe 6 Jane Doe", "Paris 7 Paris"]
    assert (d / "relation_list.txt").read_text() == "org_id remap_id\nauthor 0\nborn_in 1\ngenre 2\n"
    assert (st["users"], st["items"], st["interactions"], st["entities"], st["relations"], st["triples"]) == (2, 6, 10, 6, 3, 4)
    assert st["density"] == pytest.approx(10 / 12)
    p = st["processing"]
    assert (p["lines"], p["duplicates_merged"], p["pairs_below_min_rating"], p["users_removed_by_min_interactions"],
            p["kg_triples_of_removed_items"]) == (15, 1, 1, 2, 1)
    md = (d / "stats.md").read_text()
    assert "| mine | 2 | 6 | 10 | 83.33% | 6 | 3 | 4 |" in md and "2 of 4 users with fewer than 5" in md
    C.load_dataset(d)  # the loader takes what prepare wrote


def test_prepare_without_header_by_position_and_random_split(tmp_path):
    (tmp_path / "r.tsv").write_text("".join(f"{u}\t{i}\n" for u in (7, 8) for i in range(10 * u, 10 * u + 6)))
    st = P.prepare(tmp_path / "r.tsv", "p", tmp_path, split_seed=3)
    train = (tmp_path / "p" / "train.txt").read_text().splitlines()
    test = (tmp_path / "p" / "test.txt").read_text().splitlines()
    assert [len(x.split()) - 1 for x in train] == [5, 5] and [len(x.split()) - 1 for x in test] == [1, 1]
    for tr, te, first in zip(train, test, (0, 6)):  # each user's items, split 5:1, train in file order
        items = [int(x) for x in tr.split()[1:]]
        assert sorted(items + [int(te.split()[1])]) == list(range(first, first + 6)) and items == sorted(items)
    assert st["processing"]["split"] == "random (split seed 3)" and st["entities"] == 0
    # columns by position: item first, user second, no rating
    (tmp_path / "s.csv").write_text("".join(f"i{i},u{u}\n" for u in range(2) for i in range(5)))
    P.prepare(tmp_path / "s.csv", "q", tmp_path, user_col="2", item_col="1")
    assert (tmp_path / "q" / "user_list.txt").read_text() == "org_id remap_id\nu0 0\nu1 1\n"
    assert P.n_test_items(1) == 0 and P.n_test_items(5) == 1 and P.n_test_items(12) == 2 and P.n_test_items(13) == 3


@pytest.mark.parametrize("raw, args, expect", [
    ("usr,item\n1,2\n", [], "r.csv, line 1: no column 'user' in the header (columns: usr, item)"),
    ("user,item,rating\n1,2,good\n", [], "r.csv, line 2: the rating must be a number, got 'good'"),
    ("user,item,rating,timestamp\n1,2,5,yesterday\n", [], "r.csv, line 2: the timestamp must be a number, got 'yesterday'"),
    ("user,item,rating\n" + "".join(f"{u},{i},{1 + u % 5}\n" for u in range(6) for i in range(3)),
     ["--min-rating", "5"], "r.csv: no user is left after filtering: of 6 users, 5 had no rating >= 5 (--min-rating); "
                            "1 had fewer than 5 interactions"),
    ("user,item\n1,2\n", ["--min-rating", "4"], "r.csv: --min-rating 4 needs a rating column"),
    ("user,item\n" + "".join(f"1,{i}\n" for i in range(6)), ["--kg", "kg.csv"],
     "kg.csv: no head or tail is one of the items' ids (e.g. line 2: head 'Q1', tail 'Q2')"),
    ("user,item\n1 2,3\n1_2,4\n", ["--min-user-interactions", "1"],  # ids with spaces: '_' in the lists
     "r.csv: user ids '1 2' and '1_2' would both be '1_2' in user_list.txt"),
])
def test_prepare_bad_input_is_one_line_and_writes_nothing(tmp_path, raw, args, expect):
    (tmp_path / "r.csv").write_text(raw)
    (tmp_path / "kg.csv").write_text("head,relation,tail\nQ1,rel,Q2\n")
    r = run_cli("prepare", "--interactions", "r.csv", "--name", "x", "--data-dir", "d", *args, cwd=tmp_path)
    assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "d").exists()


def test_prepare_refuses_an_existing_dataset_and_reads_a_bom(tmp_path):
    (tmp_path / "r.csv").write_bytes(b"\xef\xbb\xbfuser,item\n" + b"".join(b"1,%d\n" % i for i in range(6)))
    assert run_cli("prepare", "--interactions", "r.csv", "--name", "x", cwd=tmp_path).returncode == 0
    (tmp_path / "data" / "x" / "user_interest_clustered.txt").write_text("0 9\n")
    r = run_cli("prepare", "--interactions", "r.csv", "--name", "x", cwd=tmp_path)
    assert r.returncode == 2 and "data/x already holds a dataset" in r.stderr and "--force" in r.stderr
    r = run_cli("prepare", "--interactions", "r.csv", "--name", "x", "--force", cwd=tmp_path)
    assert r.returncode == 0 and not (tmp_path / "data" / "x" / "user_interest_clustered.txt").exists()  # the old data's


def test_stats_of_the_published_datasets_is_the_papers_table_2():
    data = need_data("book-crossing")
    paper = {"dbbook2014": "| dbbook2014 | 5,576 | 2,680 | 65,961 | 0.44% | 8,762 | 13 | 134,223 |",
             "book-crossing": "| book-crossing | 6,616 | 8,853 | 110,662 | 0.19% | 1,404 | 4 | 1,137 |",
             "ml1m": "| ml1m | 6,040 | 3,260 | 998,539 | 5.07% | 14,377 | 20 | 415,104 |"}
    for name, row in paper.items():
        if (data / name / "train.txt").is_file():
            r = run_cli("stats", "--dataset", name, "--data-dir", str(data), cwd=ROOT)
            assert r.returncode == 0 and row in r.stdout, r.stdout + r.stderr
    r = run_cli("stats", "--dataset", "nope", "--data-dir", str(data), cwd=ROOT)
    assert r.returncode == 2 and "nope: dataset folder not found" in r.stderr


def test_own_data_prepare_stats_infer_cluster_train_recommend(tmp_path):
    """A raw CSV made here, through prepare, stats, infer (the local test server), cluster, one
    epoch of train and recommend."""
    from test_llm_interests import FakeLLM
    rng = np.random.default_rng(0)
    rows = ["user,item,rating,timestamp"] + [f"r{u},bk{int(i)},{int(rng.integers(3, 6))},{t}" for u in range(40)
                                             for t, i in enumerate(rng.choice(60, 8, replace=False))]
    (tmp_path / "raw.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "books.csv").write_text("item,name\n" + "".join(f"bk{i},Book number {i}\n" for i in range(60)))
    cli = lambda *a: run_cli(*a, cwd=tmp_path)
    r = cli("prepare", "--interactions", "raw.csv", "--items", "books.csv", "--name", "mine", "--min-rating", "4")
    assert r.returncode == 0 and "| mine |" in r.stdout, r.stderr
    table = cli("stats", "--dataset", "mine").stdout
    assert table.splitlines()[4].startswith("| mine | 29 | ") and table.splitlines()[4] in r.stdout
    with FakeLLM() as llm:
        r = subprocess.run([sys.executable, str(ROOT / "llm_interests.py"), "infer", "--dataset", "mine", "--data-dir",
                            "data", "--base-url", llm.url, "--model", "fake"], capture_output=True, text=True,
                           cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "llm_interests.py"), "cluster", "--dataset", "mine", "--data-dir",
                        "data", "--k", "8", "--max-share", "0.9"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    interests = tmp_path / "interests" / "mine" / "user_interest_clustered.txt"
    r = cli("train", "--dataset", "mine", "--interests", str(interests), "--epochs", "1", "--threads", "1",
            "--dim", "8", "--out", "runs/mine.json")
    assert r.returncode == 0 and "interest nodes" in r.stderr, r.stderr
    r = cli("recommend", "--run", "runs/mine.json", "--k", "3")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[0] == "user\trank\titem\ttitle\tscore", r.stderr
    assert lines[1].split("\t")[0].startswith("r") and lines[1].split("\t")[2].startswith("bk")
    assert lines[1].split("\t")[3].startswith("Book number ")


def test_recommend_command_tsv_jsonl_unknown_users_and_foreign_model(tmp_path):
    trained_fixture(tmp_path)
    (tmp_path / "users.txt").write_text("user\nU1\nghost\nU3\n")
    r = run_cli("recommend", "--run", "runs/fx.json", "--k", "2", "--users", "users.txt", "--out", "recs.tsv",
                cwd=tmp_path)
    assert r.returncode == 0 and "note: 1 of 3 users are not in fx (user_list.txt), left out: ghost" in r.stderr
    lines = (tmp_path / "recs.tsv").read_text().splitlines()
    assert lines[0] == "user\trank\titem\ttitle\tscore" and [x.split("\t")[:2] for x in lines[1:]] == [
        ["U1", "1"], ["U1", "2"], ["U3", "1"], ["U3", "2"]]
    r = run_cli("recommend", "--run", "runs/fx.json", "--k", "1", "--format", "jsonl", cwd=tmp_path)
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 8 and set(rows[0]) == {"user", "rank", "item", "title", "score"}
    torch.save(T.load_run(tmp_path / "runs" / "fx.json").trainer.model.state_dict(), tmp_path / "runs" / "fx.pt")
    r = run_cli("recommend", "--run", "runs/fx.json", cwd=tmp_path)  # a re-saved file: not the run's (SHA-256)
    assert r.returncode == 2 and "fx.pt: not the model this run saved" in r.stderr


def test_a_results_file_whose_settings_differ_from_its_models_is_refused(tmp_path):
    """Found by a new user (issue 19): editing `layers`, `self_loops`, `layer0` or `graph` in a
    results file silently changed the recommendations, and deleting "provenance" turned the
    SHA-256 checks off. The settings saved with the model file now decide, and provenance is required."""
    _, results = trained_fixture(tmp_path)
    path = tmp_path / "runs" / "fx.json"
    assert T.read_model(tmp_path / "runs" / "fx.pt", "cpu")[0]["layers"] == results["settings"]["layers"]
    for name, value in (("layers", results["settings"]["layers"] + 1), ("self_loops", not results["settings"]["self_loops"]),
                        ("layer0", not results["settings"]["layer0"]), ("graph", "cg")):
        edited = json.loads(json.dumps(results))
        edited["settings"][name] = value
        path.write_text(json.dumps(edited))
        with pytest.raises(C.DataError, match=f"its settings differ from those saved with its model {C.option(name)} "
                                              f"{value} \\(the model's: "):
            T.load_run(path)
    edited = json.loads(json.dumps(results))
    edited["settings"]["threads"], edited["settings"]["eval_batch"] = 2, 3  # never change numbers
    path.write_text(json.dumps(edited))
    assert T.load_run(path).recommend([0], k=1)
    for cut in (lambda r: r.pop("provenance"), lambda r: r["provenance"].pop("model_sha256"),
                lambda r: r["provenance"].pop("data_sha256")):  # the reviewer's case: every check turned off
        edited = json.loads(json.dumps(results))
        cut(edited)
        path.write_text(json.dumps(edited))
        with pytest.raises(C.DataError, match="its provenance .* is missing or incomplete"):
            T.load_run(path)
    r = run_cli("recommend", "--run", "runs/fx.json", cwd=tmp_path)
    assert r.returncode == 2 and "provenance" in r.stderr and "Traceback" not in r.stderr


def test_recommend_new_folds_in_users_the_model_never_saw(tmp_path, capsys):
    run, _ = trained_fixture(tmp_path)
    ds = run.trainer.ds
    copy = [run.item_ids[i] for i in ds.train[2]]  # user U2's history, in original ids
    rows = run.recommend_new({"alice": copy, "bob": ["101", "nope"], "ghost": ["nope2"]}, k=3)
    assert rows.unknown == ["ghost"] and {r["user"] for r in rows} == {"alice", "bob"}
    err = capsys.readouterr().err
    assert "2 items of the new users are not in fx (item_list.txt), left out: nope, nope2" in err
    assert "1 new users have no item of fx, left out: ghost" in err
    alice = [r for r in rows if r["user"] == "alice"]
    assert [r["rank"] for r in alice] == [1, 2] and not set(r["item"] for r in alice) & set(copy)  # 6 items, 4 seen
    assert alice[0]["score"] >= alice[1]["score"]
    # one user's list never depends on who else is asked
    assert run.recommend_new({"alice": copy}, k=3) == alice
    # the same history as U2: the same top items as U2's own (fold-in misses only U2's own row of Z)
    own = [r["item"] for r in run.recommend(["U2"], k=2, original=True)]
    assert [r["item"] for r in alice[:2]] == own
    # interest edges (ids of the run's interest file) change the embedding; unknown ones are named
    with_interests = run.recommend_new({"alice": copy}, k=3, interests={"alice": ["9", "99"]})
    assert [r["score"] for r in with_interests] != [r["score"] for r in alice]
    assert "1 interest ids of the new users are not in fx (its interest file), left out: 99" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"fold_in: interest indices must lie in 0..2"):  # 3 interest nodes
        run.trainer.model.fold_in([[0]], [[3]])


def test_recommend_users_file_takes_whole_lines_and_a_string_is_one_user(tmp_path, capsys):
    """Found by a new user: --users took the first word of a line, so `user 2` read as the header
    `user` and returned nothing; run.recommend("U1") read the string as a list of characters."""
    run, _ = trained_fixture(tmp_path)
    (tmp_path / "u.txt").write_text("user 2\n")
    r = run_cli("recommend", "--run", "runs/fx.json", "--users", "u.txt", cwd=tmp_path)
    assert r.returncode == 2 and "none of the 1 users of u.txt is in fx" in r.stderr and "'user_2'" in r.stderr
    (tmp_path / "u.txt").write_text("user_id\nU1\n U3 \n")
    r = run_cli("recommend", "--run", "runs/fx.json", "--users", "u.txt", "--k", "1", cwd=tmp_path)
    assert r.returncode == 0 and [x.split("\t")[0] for x in r.stdout.splitlines()] == ["user", "U1", "U3"], r.stderr
    assert [x["user"] for x in run.recommend("U1", k=1, original=True)] == ["U1"]


def test_recommend_new_checks_its_input_and_notes_interests_of_other_users(tmp_path, capsys):
    """Found by a new user (issue 20 review): a string history was read character by character,
    bad interest ids ended in a bare ValueError or TypeError, and interest lines of users not in
    the history were ignored without a word."""
    run, _ = trained_fixture(tmp_path)
    for histories, interests in (({"alice": "101"}, None), (["101"], None), ({"a": ["101"]}, {"a": ["x"]}),
                                 ({"a": ["101"]}, {"a": 9})):
        with pytest.raises(C.SettingsError):
            run.recommend_new(histories, k=1, interests=interests)
    capsys.readouterr()
    rows = run.recommend_new({"a": ["101"]}, k=1, interests={"zed": ["9"], "a": ["9"]})
    assert [r["user"] for r in rows] == ["a"]
    assert "interests of 1 users not among the new users are not used: zed" in capsys.readouterr().err
    (tmp_path / "h.txt").write_bytes(b"al\xffice 101\n")
    with pytest.raises(C.DataError, match=r"h.txt, line 1: byte 0xff \(byte 3 of the line\) is not UTF-8 text"):
        L.read_histories(tmp_path / "h.txt")


def test_recommend_new_leaves_out_users_whose_items_have_no_edge_and_refuses_bad_ids(tmp_path, capsys):
    """Found by review (issue 20): a new user whose known items never had a training edge got
    zeros from fold_in, passed on as a ranking of items 0, 1, 2; an interest id "²" passed
    isdigit() into int(); fold_in took item ids out of range (they landed on other nodes)."""
    folder = small_dataset(tmp_path)
    rows = ["org_id remap_id entity_name"] + [f"{100 + i} {i} Item {i}" for i in range(7)]
    (folder / "item_list.txt").write_text("\n".join(rows) + "\n")  # item 106 is on no train.txt line
    T.fit(tiny_settings(tmp_path, epochs=1, model="lightgcn", graph="cg"))
    run = T.load_run(tmp_path / "runs" / "fx.json")
    capsys.readouterr()
    got = run.recommend_new({"ghost": ["106"], "alice": ["101", "102"]}, k=2)
    assert got.unknown == ["ghost"] and {r["user"] for r in got} == {"alice"}
    assert "1 new users have no item or interest with an edge in the run's graph" in capsys.readouterr().err
    with pytest.raises(C.SettingsError, match="interest ids are integers"):
        run.recommend_new({"a": ["101"]}, k=1, interests={"a": ["\u00b2"]})
    model = run.trainer.model
    for bad in ([[-1]], [[7]], [[0, 1], [100]]):
        with pytest.raises(ValueError, match=r"fold_in: item ids must lie in 0..6"):
            model.fold_in(bad)


def test_recommend_refuses_an_out_over_its_input_and_interest_ids_of_another_clustering(tmp_path):
    """Found by review (issue 20): --out equal to --history overwrote the history; interest ids
    made by infer-new against another clustering were used without a word."""
    trained_fixture(tmp_path)
    (tmp_path / "h.txt").write_text("alice 101 102\n")
    r = run_cli("recommend", "--run", "runs/fx.json", "--history", "h.txt", "--out", "h.txt", cwd=tmp_path)
    assert r.returncode == 2 and "--out h.txt is the input file h.txt" in r.stderr
    assert (tmp_path / "h.txt").read_text() == "alice 101 102\n"
    (tmp_path / "i.txt").write_text("alice 9\n")
    r = run_cli("recommend", "--run", "runs/fx.json", "--history", "h.txt", "--new-interests", "i.txt", cwd=tmp_path)
    assert r.returncode == 0 and "i.txt has no record i.txt.source.json beside it" in r.stderr  # written by hand: a note
    (tmp_path / "i.txt.source.json").write_text(json.dumps({"interest_sha256": "0" * 64, "clusters": "other/k20"}))
    r = run_cli("recommend", "--run", "runs/fx.json", "--history", "h.txt", "--new-interests", "i.txt", cwd=tmp_path)
    assert r.returncode == 2 and "another clustering (other/k20)" in r.stderr and "Traceback" not in r.stderr
    sha = json.loads((tmp_path / "runs" / "fx.json").read_text())["provenance"]["interest_sha256"]
    (tmp_path / "i.txt.source.json").write_text(json.dumps({"interest_sha256": sha, "clusters": "fx"}))
    r = run_cli("recommend", "--run", "runs/fx.json", "--history", "h.txt", "--new-interests", "i.txt", cwd=tmp_path)
    assert r.returncode == 0 and "source.json" not in r.stderr, r.stderr
    (tmp_path / "i.txt").write_text("")  # infer-new placed no phrase: the items alone, with a note
    r = run_cli("recommend", "--run", "runs/fx.json", "--history", "h.txt", "--new-interests", "i.txt", cwd=tmp_path)
    assert r.returncode == 0 and "i.txt holds no interest edge" in r.stderr and "alice\t1\t" in r.stdout, r.stderr


def test_recommend_out_never_replaces_a_file_that_is_not_recommendations(tmp_path):
    """Found by review (issue 20): --out data/fx/train.txt (or the interest file, another run's
    results, a .source.json) was replaced by the TSV, exit 0; a history piped in (/dev/stdin,
    <(...)) ended in "underlying stream is not seekable"; a new user who had every item got no
    row and no word."""
    trained_fixture(tmp_path)
    (tmp_path / "h.txt").write_text("alice 101 102\nall 100 101 102 103 104 105\n")
    for out in ("fx/train.txt", "fx/user_interest_clustered.txt", "runs/fx.json.bak", "h.txt.source.json"):
        path = tmp_path / out
        if not path.exists():
            path.write_text(json.dumps({"settings": {}}) if out.endswith(".bak") else '{"interest_sha256": ""}')
        before = path.read_bytes()
        r = run_cli("recommend", "--run", "runs/fx.json", "--history", "h.txt", "--out", out, cwd=tmp_path)
        assert r.returncode == 2 and f"--out {out} exists and is not a file of recommendations" in r.stderr, r.stderr
        assert path.read_bytes() == before
    for fmt in ("tsv", "jsonl"):  # a file recommend wrote is replaced; so is an empty one
        (tmp_path / "recs").write_text("")
        for _ in range(2):
            r = run_cli("recommend", "--run", "runs/fx.json", "--history", "h.txt", "--k", "2", "--format", fmt,
                        "--out", "recs", cwd=tmp_path)
            assert r.returncode == 0, r.stderr
        assert len((tmp_path / "recs").read_text().splitlines()) == 2 + (fmt == "tsv")
    assert "1 new users have every item of fx in their history, nothing left to recommend" in r.stderr
    assert ": all" in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "cikgrec_cli.py"), "recommend", "--run", "runs/fx.json",
                        "--history", "/dev/stdin", "--k", "1"], input="bob 100\n", capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.splitlines()[1].startswith("bob\t1\t"), r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "cikgrec_cli.py"), "recommend", "--run", "runs/fx.json",
                        "--history", "/dev/stdin"], input="\ufeffbob 100\n", capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 2 and "/dev/stdin, line 1: the file starts with a byte-order mark" in r.stderr, r.stderr


def test_recommend_history_dash_reads_standard_input(tmp_path):
    """Left by review (issue 20): `--history -` looked for a file named "-"."""
    trained_fixture(tmp_path)
    cli = [sys.executable, str(ROOT / "cikgrec_cli.py"), "recommend", "--run", "runs/fx.json", "--history", "-"]
    r = subprocess.run(cli + ["--k", "1"], input="bob 100\n", capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.splitlines()[1].startswith("bob\t1\t"), r.stderr
    for given, expect in (("\ufeffbob 100\n", "standard input, line 1: starts with a byte-order mark"),
                          ("bob\n", "standard input, line 1: expected a new user's id, then their items")):
        r = subprocess.run(cli, input=given, capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr, r.stderr
    for k, note in (("5", False), ("6", True)):  # fx has 6 items, bob has one: 5 are left
        r = subprocess.run(cli + ["--k", k], input="bob 100\n", capture_output=True, text=True, cwd=tmp_path)
        assert len(r.stdout.splitlines()) == 6, r.stderr
        assert ("note: 1 users get fewer than 6 items" in r.stderr) == note, r.stderr
    r = subprocess.run(cli + ["--new-interests", "-"], input="bob 100\n", capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "--new-interests must be a file" in r.stderr, r.stderr


def test_recommend_history_command(tmp_path):
    trained_fixture(tmp_path)
    (tmp_path / "h.txt").write_text("alice\t102 103\nbob 100\n\n")
    (tmp_path / "i.txt").write_text("alice 8\nalice 9\n")
    r = run_cli("recommend", "--run", "runs/fx.json", "--history", "h.txt", "--new-interests", "i.txt", "--k", "2",
                cwd=tmp_path)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[0] == "user\trank\titem\ttitle\tscore", r.stderr
    assert [x.split("\t")[:2] for x in lines[1:]] == [["alice", "1"], ["alice", "2"], ["bob", "1"], ["bob", "2"]]
    assert not {x.split("\t")[2] for x in lines[1:3]} & {"102", "103"}
    for content, expect in (("alice\n", "h.txt, line 1: expected a new user's id, then their items"),
                            ("a 100\na 101\n", "h.txt, line 2: new user 'a' is already on line 1")):
        (tmp_path / "h.txt").write_text(content)
        r = run_cli("recommend", "--run", "runs/fx.json", "--history", "h.txt", cwd=tmp_path)
        assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr, r.stderr
    (tmp_path / "h.txt").write_text("a 100\n")
    (tmp_path / "i.txt").write_text("a eight\n")
    r = run_cli("recommend", "--run", "runs/fx.json", "--history", "h.txt", "--new-interests", "i.txt", cwd=tmp_path)
    assert r.returncode == 2 and "i.txt, line 1: expected `new_id interest_id`" in r.stderr
    r = run_cli("recommend", "--run", "runs/fx.json", "--history", "h.txt", "--users", "h.txt", cwd=tmp_path)
    assert r.returncode == 2 and "--history (new users) and --users (trained users) go alone" in r.stderr


def test_recommend_uses_the_refit_model(tmp_path):
    run, results = trained_fixture(tmp_path, refit=True)
    assert run.model_file.endswith("fx.refit.pt") and "refit" in results
    assert run.trainer.s.select_on == "test"  # the refit's graph: all of train.txt
    # found by a fresh user: without the refit's model_sha256 any .refit.pt was loaded unchecked
    path = tmp_path / "runs" / "fx.json"
    del results["refit"]["model_sha256"]
    path.write_text(json.dumps(results))
    with pytest.raises(C.DataError, match="its refit has no model_sha256"):
        T.load_run(path)


def test_recommend_out_never_replaces_the_run_or_a_special_file(tmp_path):
    """Found by a fresh user: --out replaced whatever it named (the run's results, its model, a
    FIFO), and a folder or an unwritable place was a traceback."""
    trained_fixture(tmp_path)
    run = tmp_path / "runs" / "fx.json"
    before = run.read_bytes()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "afile").write_text("x")
    for out, expect in (("runs/fx.json", "--out runs/fx.json: that is the run's own results file"),
                        ("runs/fx.pt", "--out runs/fx.pt: .pt is where runs keep their models"),
                        ("runs", "--out runs: runs is a folder"),
                        ("fifo", "--out fifo: fifo exists and is not a regular file"),
                        ("afile/recs.tsv", "--out afile/recs.tsv: afile is a file, not a folder")):
        r = run_cli("recommend", "--run", "runs/fx.json", "--out", out, cwd=tmp_path)
        assert r.returncode == 2 and expect in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert run.read_bytes() == before and stat.S_ISFIFO((tmp_path / "fifo").stat().st_mode)
    r = run_cli("recommend", "--run", "runs/fx.json", "--k", "1", "--out", "new/recs.tsv", cwd=tmp_path)
    assert r.returncode == 0 and len((tmp_path / "new" / "recs.tsv").read_text().splitlines()) == 1 + 8


def test_recommend_users_none_known_is_an_error_and_repeats_count_once(tmp_path):
    """Found by a fresh user: a --users file of unknown ids gave a header and exit 0; an id given
    twice gave its rows twice; k = -1 in Python was numpy's error."""
    run, _ = trained_fixture(tmp_path)
    (tmp_path / "ghosts.txt").write_text("ghost\nnobody\n")
    r = run_cli("recommend", "--run", "runs/fx.json", "--users", "ghosts.txt", cwd=tmp_path)
    assert r.returncode == 2 and "none of the 2 users of ghosts.txt is in fx (user_list.txt)" in r.stderr, r.stderr
    (tmp_path / "twice.txt").write_text("U1\nU1\nU2\n")
    r = run_cli("recommend", "--run", "runs/fx.json", "--k", "1", "--users", "twice.txt", cwd=tmp_path)
    assert r.returncode == 0 and [x.split("\t")[0] for x in r.stdout.splitlines()[1:]] == ["U1", "U2"]
    assert [row["user"] for row in run.recommend([3, 3, 4], k=1)] == [3, 4]
    for k in (-1, 0, 2.5, True):
        with pytest.raises(C.SettingsError, match=f"k must be a whole number from 1, got {k!r}"):
            run.recommend([0], k=k)


def test_two_trainings_on_one_out_at_once(tmp_path):
    small_dataset(tmp_path)
    args = ["train", "--dataset", "fx", "--data-dir", str(tmp_path), "--dim", "8", "--layers", "1", "--threads", "1",
            "--out", "runs/fx.json"]
    first = subprocess.Popen([sys.executable, str(ROOT / "cikgrec_cli.py"), *args, "--epochs", "100000", "--patience",
                              "100000"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / "runs" / "fx.json.lock"
        for _ in range(600):
            if (tmp_path / "runs" / "fx.ckpt.pt").exists() and lock.exists():
                break
            time.sleep(0.1)
        assert lock.read_text().strip() == str(first.pid)
        second = run_cli(*args, "--epochs", "1", cwd=tmp_path)
        assert second.returncode == 2 and f"another run (PID {first.pid}) is training to runs/fx.json" in second.stderr
    finally:
        first.kill()
        first.wait()
    assert lock.exists()  # killed: the lock file stays behind, and the kernel has dropped the lock
    refused = run_cli(*args, "--epochs", "1", cwd=tmp_path)  # its checkpoint: --resume or --force (issue 19)
    assert refused.returncode == 2 and "--resume continues it, --force starts afresh" in refused.stderr
    assert f"took over the lock {Path('runs/fx.json.lock')} of PID {first.pid}" in refused.stderr
    third = run_cli(*args, "--epochs", "1", "--force", cwd=tmp_path)
    assert third.returncode == 0 and "starting afresh: the checkpoint" in third.stderr
    assert json.loads((tmp_path / "runs" / "fx.json").read_text())["epochs_run"] == 1 and not lock.exists()
    again = run_cli(*args, "--epochs", "1", cwd=tmp_path)
    assert again.returncode == 2 and "runs/fx.json holds the results of a finished run" in again.stderr


def test_the_best_model_is_never_read_back_from_disk(tmp_path, monkeypatch):
    small_dataset(tmp_path)
    clean = T.fit(tiny_settings(tmp_path, epochs=3, out=str(tmp_path / "a.json")))
    real = C.Trainer.evaluate

    def replaced_meanwhile(self, split):  # another run writes "our" .pt between epochs
        torch.save({k: torch.zeros_like(v) for k, v in self.model.state_dict().items()}, tmp_path / "b.pt")
        return real(self, split)

    monkeypatch.setattr(C.Trainer, "evaluate", replaced_meanwhile)
    r = T.fit(tiny_settings(tmp_path, epochs=3, out=str(tmp_path / "b.json")))
    assert r["test"] == clean["test"]


def test_resume_of_a_checkpoint_without_its_best_model(tmp_path):
    """Checkpoints written before the best model was kept in them: the best model is read from
    <out>.pt, and without it the checkpoint is refused by name."""
    small_dataset(tmp_path)
    straight = T.fit(tiny_settings(tmp_path, epochs=3, out=str(tmp_path / "a.json")))
    T.fit(tiny_settings(tmp_path, epochs=2, out=str(tmp_path / "b.json")))
    ck = torch.load(tmp_path / "b.ckpt.pt", weights_only=False)
    del ck["best_model"]
    torch.save(ck, tmp_path / "b.ckpt.pt")
    resumed = T.fit(tiny_settings(tmp_path, epochs=3, out=str(tmp_path / "b.json"), resume=True))
    assert resumed["test"] == straight["test"] and resumed["history"][-1]["bpr"] == straight["history"][-1]["bpr"]
    T.fit(tiny_settings(tmp_path, epochs=2, out=str(tmp_path / "c.json")))
    torch.save(ck, tmp_path / "c.ckpt.pt")
    (tmp_path / "c.pt").unlink()
    with pytest.raises(C.SettingsError, match=r"c.ckpt.pt was written by older code, which kept the best model only in"):
        T.fit(tiny_settings(tmp_path, epochs=3, out=str(tmp_path / "c.json"), resume=True))


def test_default_out_name_hashes_the_settings_resume_compares():
    name = lambda **kw: T.output_paths(C.make_settings(dataset="book-crossing", **kw))[0]
    assert name() == Path("runs/book-crossing-seed2024.json")  # the defaults keep today's name
    assert name(model="lightgcn") == Path("runs/book-crossing-lightgcn-cg-seed2024.json")
    assert name(lambda2=0.1) != name(lambda2=0.2) and name(lambda2=0.1).name.startswith("book-crossing-")
    assert name(lambda2=0.1) == name(lambda2=0.1, epochs=5, patience=3, device="cpu", threads=1, min_epochs=30)
    assert name(lambda2=0.03) == name()  # book-crossing's own lambda2: a default
    assert len(name(lr=1e-3).name) == len("book-crossing-12345678-seed2024.json")


def test_train_prints_an_estimate_and_the_elapsed_time(tmp_path, capsys):
    small_dataset(tmp_path)
    T.fit(tiny_settings(tmp_path, epochs=2))
    err = capsys.readouterr().err
    assert "  5 of 6 batches in " in err and "per epoch on cpu" in err
    assert "full runs of the published datasets take 60-300 epochs" in err and "stops by --epochs 2" in err
    assert " elapsed" in err.splitlines()[-3]
    assert T.duration(4.26) == "4.3s" and T.duration(754) == "12m34s" and T.duration(7380) == "2h03m"
    line = T.epoch_estimate(C.make_settings(dataset="book-crossing"), 10, 85, 3.0, "cpu")
    assert "about 26s per epoch" in line and "60-240 epochs: about 25m30s to 1h42m" in line


def test_ctrl_c_says_whether_a_checkpoint_exists(tmp_path, monkeypatch, capsys):
    small_dataset(tmp_path)
    args = ["train", "--dataset", "fx", "--data-dir", str(tmp_path), "--dim", "8", "--out", str(tmp_path / "r.json")]

    def stop(self, epoch, max_batches=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(C.Trainer, "train_epoch", stop)
    assert T.main(args) == 130
    err = capsys.readouterr().err  # was: "every finished epoch is in the checkpoint"
    assert "before the first epoch ended: no checkpoint was written" in err and not (tmp_path / "r.ckpt.pt").exists()
    monkeypatch.undo()
    real = C.Trainer.train_epoch
    monkeypatch.setattr(C.Trainer, "train_epoch", lambda self, e, max_batches=None: stop(self, e) if e == 1
                        else real(self, e))
    assert T.main(args) == 130
    assert f"every finished epoch (up to 0) is in the checkpoint {tmp_path / 'r.ckpt.pt'}" in capsys.readouterr().err


def test_offline_download_does_not_suggest_the_data_dir_given(tmp_path, monkeypatch):
    import urllib.error
    blobs = tmp_path / "GIT_BLOBS"
    blobs.write_text("e69de29bb2d1d6434b8b29ae775ad8c2e48c5391  fx/train.txt\n")
    monkeypatch.setattr(P.urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("x")))
    shared = ROOT.parent / "shared" / "data"
    with pytest.raises(C.DataError) as e:
        P.download(["fx"], shared, blobs)
    assert f"({shared} has no verified fx/train.txt)" in str(e.value) and "e.g. make train" not in str(e.value)


def test_fresh_user_review_of_the_redesign(tmp_path, capsys):
    """Found by a fresh user: --out /dev/null was replaced by a regular file; a huge --ks or
    --threads crashed (traceback, segfault); the memory message blamed --dim for a huge
    --batch-size or --layers; --lambda2 without interest nodes was silently ignored; a folder as
    --run said "not found"."""
    small_dataset(tmp_path)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    base = ["train", "--dataset", "fx", "--data-dir", str(tmp_path), "--epochs", "1", "--dim", "8"]
    assert T.main(base + ["--out", str(fifo)]) == 2
    assert "exists and is not a regular file" in capsys.readouterr().err and not fifo.is_file()
    for flag, value, expect in (("--ks", "99999999999999999999", "--ks 99999999999999999999: a cut-off must be at most"),
                                ("--threads", "100000", "--threads must be at most")):
        assert T.main(base + ["--out", str(tmp_path / "r.json"), flag, value]) == 2
        assert expect in capsys.readouterr().err
    big = SimpleNamespace(n_users=40, n_items=30, n_entities=30, n_interests=0)
    for name, value in (("batch_size", 10**12), ("layers", 10**7)):
        with pytest.raises(C.SettingsError, match=f"--{name.replace('_', '-')} {value}: this run needs"):
            T.check_memory(C.Settings(**{name: value}), big, torch.device("cpu"), free=2**34)
    r = T.fit(tiny_settings(tmp_path, model="lightgcn", lambda2=0.5, epochs=1, out=str(tmp_path / "l.json")))
    assert any("--lambda2 0.5 has no effect: the CG graph holds no interest edges" in n for n in r["notes"])
    with pytest.raises(C.DataError, match="is a folder: give the run's results JSON"):
        T.load_trained(tmp_path)


def test_recommend_excludes_training_items_orders_by_score_and_maps_ids(tmp_path):
    run, _ = trained_fixture(tmp_path)
    ue, ie = run.trainer.model.user_item_embeddings()
    scores = (ue @ ie.T).detach().numpy()
    rows = run.recommend([0, 5], k=3)
    for u in (0, 5):
        mine = [r for r in rows if r["user"] == u]
        seen = set(run.trainer.ds.train[u].tolist())
        expect = [i for i in np.argsort(-scores[u], kind="stable") if i not in seen][:3]
        assert [r["item"] for r in mine] == expect and [r["rank"] for r in mine] == list(range(1, len(expect) + 1))
        assert [r["score"] for r in mine] == pytest.approx(scores[u][expect].tolist(), rel=1e-5)
        assert not seen & {r["item"] for r in mine}
    # user 0 has 4 of the 6 items in training: only 2 are left to recommend
    assert len([r for r in run.recommend([0], k=5)]) == 2
    seen_too = run.recommend([0], k=6, include_seen=True)
    assert [r["item"] for r in seen_too] == np.argsort(-scores[0], kind="stable").tolist()
    orig = run.recommend(["U5", "nobody"], k=2, original=True)
    assert [r["user"] for r in orig] == ["U5", "U5"] and orig.unknown == ["nobody"]
    assert [r["item"] for r in orig] == [str(100 + r["item"]) for r in run.recommend([5], k=2)]
    assert orig[0]["title"] == f"Item {int(orig[0]['item']) - 100}"
    assert run.recommend([99, -1], k=2).unknown == [99, -1]


def test_a_checkpoint_left_by_ctrl_c_is_not_replaced_without_resume_or_force(tmp_path, capsys):
    """Found in review (issue 19): after Ctrl-C, the same command without --resume replaced the
    checkpoint behind a one-line note; with the up-arrow habit that loses an hour of book-crossing."""
    small_dataset(tmp_path)
    out = tmp_path / "r.json"
    straight = T.fit(tiny_settings(tmp_path, epochs=3, out=str(tmp_path / "a.json")))
    T.fit(tiny_settings(tmp_path, epochs=2, out=str(out)))
    out.unlink()  # as after Ctrl-C in epoch 2: a checkpoint, no results yet
    before = (tmp_path / "r.ckpt.pt").read_bytes()
    with pytest.raises(C.SettingsError, match=r"r.ckpt.pt holds the checkpoint of an unfinished run .*after epoch 1.*"
                                              r"--resume continues it, --force starts afresh"):
        T.fit(tiny_settings(tmp_path, epochs=3, out=str(out)))
    assert (tmp_path / "r.ckpt.pt").read_bytes() == before and not out.exists()
    resumed = T.fit(tiny_settings(tmp_path, epochs=3, out=str(out), resume=True))
    assert [h["bpr"] for h in resumed["history"]] == [h["bpr"] for h in straight["history"]]


def test_train_never_writes_into_the_dataset_folder_even_with_force(tmp_path):
    """Found by review (issue 21): train --out <data>/fx/train.txt --force replaced train.txt with
    the results JSON (the error without --force even suggested --force)."""
    small_dataset(tmp_path)
    before = (tmp_path / "fx" / "train.txt").read_bytes()
    for out in ("fx/train.txt", "fx/run.json"):
        with pytest.raises(C.SettingsError, match=r"would be written into the dataset folder .*fx; give the run a path outside it"):
            T.fit(tiny_settings(tmp_path, out=str(tmp_path / out)), force=True)
    assert (tmp_path / "fx" / "train.txt").read_bytes() == before and not (tmp_path / "fx" / "run.json").exists()


def test_recommend_refuses_a_changed_user_list(tmp_path):
    """Found by review (issue 21): two users swapped in user_list.txt after training, and recommend
    printed one user's list under the other's name, exit 0 (only train, test, KG and interests were
    hashed)."""
    trained_fixture(tmp_path)
    lists = tmp_path / "fx" / "user_list.txt"
    lists.write_text(lists.read_text().replace("U0 0", "U9 0").replace("U1 1", "U0 1").replace("U9 0", "U1 0"))
    r = run_cli("recommend", "--run", "runs/fx.json", cwd=tmp_path)
    assert r.returncode == 2 and "trained on other data (the SHA-256 of" in r.stderr and "user_list.txt" in r.stderr, r.stderr
    (tmp_path / "h.txt").write_text("U3 100\nnew 101\n")  # and (found by the same review) a trained id in --history
    lists.write_text("org_id remap_id\n" + "".join(f"U{u} {u}\n" for u in range(8)))
    r = run_cli("recommend", "--run", "runs/fx.json", "--history", "h.txt", cwd=tmp_path)
    assert r.returncode == 0 and "note: 1 ids of h.txt are also trained users (e.g. 'U3')" in r.stderr, r.stderr


def test_run_recommend_names_unknown_users(tmp_path, capsys):
    """Found in review (issue 19): run.recommend(["nobody"]) returned [] without a word."""
    run, _ = trained_fixture(tmp_path)
    capsys.readouterr()
    rows = run.recommend(["nobody", "U1"], k=2, original=True)
    assert rows.unknown == ["nobody"] and {r["user"] for r in rows} == {"U1"}
    assert "note: 1 of 2 users are not in fx (user_list.txt), left out: nobody" in capsys.readouterr().err
    rows = run.recommend(["U1"], k=2)  # found by review (issue 21): the note did not say ids are dense here
    assert rows == [] and "(dense ids 0..7; original=True takes user_list.txt's), left out: U1" in capsys.readouterr().err
    r = subprocess.run([sys.executable, str(ROOT / "cikgrec_cli.py"), "recommend", "--run", "runs/fx.json", "--users", "-",
                        "--k", "1"], input="U2\n", capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and [x.split("\t")[0] for x in r.stdout.splitlines()] == ["user", "U2"], r.stderr
