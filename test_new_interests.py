"""Tests of new users' interests (issue 20, part 2): `cluster` saves its clustering state,
assign_phrases places a new phrase in the run's clusters, `infer-new` asks the LLM about new users
and writes their edges with the run's interest ids.

    OMP_NUM_THREADS=1 python -m pytest -q test_new_interests.py

No network: the LLM is test_llm_interests.FakeLLM on 127.0.0.1.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

import llm_interests as L
from test_llm_interests import POOL, FakeLLM, make_fixture, ok, tree, user_of

STATE = L.CLUSTER_FILES[3]  # user_interest_clustered.model.npz


# ----------------------------------------------------------------------------------------------
# assign_phrases and the saved state
# ----------------------------------------------------------------------------------------------
def test_assign_phrases_by_hand():
    # terms crime, horror, sci with idf 1, 2, 1; one centre on each axis; cluster 1 was dropped
    state = L.ClusterState(["crime", "horror", "sci"], np.array([1.0, 2.0, 1.0]), np.eye(3), np.array([100, -1, 101]))
    got = L.assign_phrases(["crime", "horror", "crime horror", "sci fi", "jazz", ""], state)
    # "crime horror": the bigram is unknown; row (1, 2, 0) / sqrt(5): squared distance to centre 0
    # is 1 - 2 / sqrt(5) + 1 = 1.106, to centre 1 is 1 - 4 / sqrt(5) + 1 = 0.211 -> cluster 1, dropped.
    # "sci fi": "fi" and "sci fi" unknown -> (0, 0, 1) -> cluster 2
    assert got == [(0, 100), (1, None), (1, None), (2, 101), (None, None), (None, None)]
    x = L.tfidf_rows(["crime horror"], state.terms, state.idf).toarray()
    np.testing.assert_allclose(x, [[1 / math.sqrt(5), 2 / math.sqrt(5), 0]])


def answers_of(users: dict) -> dict:
    return {u: {"user": u, "answer": a} for u, a in users.items()}


def test_fitted_phrases_land_in_their_own_clusters_and_users_get_their_edges_again(tmp_path):
    # 24 users, two POOL interests each, several phrases per cluster (k = 6 < 16 distinct phrases)
    more = ["science fiction", "sci fi", "ghost stories", "crime novels"]
    answers = answers_of({u: f"{POOL[u % 12]}, {POOL[(u + 5) % 12]}, {more[u % 4]}" for u in range(24)})
    r = L.cluster_answers(answers, n_entities=500, k=6, seed=0)
    phrases = sorted(r["cluster_of"])
    assert len(phrases) == 16 and r["n_clusters"] == 6
    # the rows tfidf_rows builds from the saved vocabulary are tfidf's rows, exactly
    x, terms = L.tfidf(phrases, [sum(p in L.record_phrases(a).phrases for a in answers.values()) for p in phrases])
    assert terms == r["state"].terms
    assert (L.tfidf_rows(phrases, terms, r["state"].idf) != x).nnz == 0
    L.write_outputs(r, tmp_path)
    state = L.load_state(tmp_path / STATE)
    assert [c for c, _ in L.assign_phrases(phrases, state)] == [r["cluster_of"][p] for p in phrases]
    # the run's own users, placed as new users, get exactly the run's edges
    edges, n = L.new_user_edges(answers, state)
    assert edges == r["edges"] and n["unknown"] == 0 and n["users"] == r["n_users_linked"]
    kept_ids = {int(i) for i in state.interest_id if i >= 0}
    assert kept_ids == {j for _, j in r["edges"]} and min(kept_ids) == 500


def test_state_round_trip_without_pickle(tmp_path):
    state = L.ClusterState(["fi", "sci", "sci fi", "épée"], np.array([1.5, 1.2, 1.9, 2.0]),
                           np.arange(8, dtype=float).reshape(2, 4), np.array([-1, 7]), "ab" * 32)
    L.save_state(tmp_path / "s.npz", state)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        assert z["terms"].dtype.kind == "U" and z["interest_id"].dtype == np.int64
    back = L.load_state(tmp_path / "s.npz")
    assert back.terms == state.terms and back.interest_sha256 == state.interest_sha256
    np.testing.assert_array_equal(back.idf, state.idf)
    np.testing.assert_array_equal(back.centres, state.centres)
    np.testing.assert_array_equal(back.interest_id, state.interest_id)
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(L.DataError, match="not a clustering state"):
        L.load_state(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(L.DataError, match="not a clustering state"):
        L.load_state(tmp_path / "other.npz")


# ----------------------------------------------------------------------------------------------
# infer-new end to end, against the local test server
# ----------------------------------------------------------------------------------------------
def new_user_answer(msg: str):
    """The fake LLM: the new user whose prompt starts with user 0's items, and the one with user 2's."""
    return ok({0: "Space opera, Reading, Underwater basket weaving", 2: "Cozy mysteries; poetry"}[user_of(msg)])


@pytest.fixture
def run(tmp_path):
    """A run's `cluster` output (13 clusters, one per phrase: the 12 of POOL, kept, and "reading",
    said by everyone, dropped), a history file of 3 new users and the common arguments."""
    make_fixture(tmp_path / "fx", n_users=24, extras=False)
    out = tmp_path / "interests" / "fx"
    out.mkdir(parents=True)
    (out / "llm_answers.jsonl").write_text("".join(json.dumps(
        {"user": u, "answer": f"{POOL[u % 12]}, {POOL[(u + 5) % 12]}, reading"}) + "\n" for u in range(24)))
    assert L.main(["cluster", "--dataset", "fx", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "interests"),
                   "--k", "13"]) == 0
    assert (out / STATE).is_file()
    # alice: user 0's first two items; bob: user 2's, with an unknown item; carol: only unknown items
    (tmp_path / "history.txt").write_text("alice\tx0\tx1\nbob x8 zzz x9\n\ncarol nope\n")
    interest = {}
    for row in (out / "interest_clusters.tsv").read_text().splitlines()[1:]:
        cluster, users, status, top, examples = row.split("\t")
        interest[examples] = status
    assert interest["reading"].startswith("dropped") and sum(s.isdigit() for s in interest.values()) == 12
    args = ["infer-new", "--history", str(tmp_path / "history.txt"), "--dataset", "fx", "--data-dir", str(tmp_path),
            "--clusters", str(out), "--out", str(tmp_path / "new" / "new_interests.txt"), "--model", "fake"]
    return tmp_path, args, interest


def test_infer_new_end_to_end_then_a_rerun_asks_nothing(run, capsys):
    tmp_path, args, interest = run
    capsys.readouterr()
    with FakeLLM(lambda msg, n: new_user_answer(msg)) as srv:
        assert L.main([*args, "--base-url", srv.url]) == 0
        assert len(srv.bodies) == 2  # carol has no known item: not asked
        prompts = [b["messages"][1]["content"] for _, b in srv.bodies]
        assert sorted(prompts) == ["The items this user liked: [Title 0], [Title 1]",
                                   "The items this user liked: [Title 8], [Title 9]"]
        err = capsys.readouterr().err
        out_file = tmp_path / "new" / "new_interests.txt"
        expected = sorted([("alice", interest["space opera"]), ("bob", interest["cozy mystery"]),
                           ("bob", interest["poetry"])])
        assert sorted(tuple(line.split()) for line in out_file.read_text().splitlines()) == expected
        assert "note: 2 items of" in err and "left out: zzz, nope" in err
        assert "note: 1 new users have no known item with a name, not asked: carol" in err
        assert "infer-new summary: 2 users asked now (2 answered, 0 failed), 0 answered before; 2 of 2 users " \
               "have an answer; phrases: 3 assigned, 1 in a dropped cluster, 1 with no known term; 3 edges for " \
               "2 users" in err
        answers = tmp_path / "new" / "new_interests.answers.jsonl"
        assert sorted(r["user"] for r in map(json.loads, answers.read_text().splitlines())) == ["alice", "bob"]
        # a rerun asks nothing (resume by new id) and writes the same pairs
        before = out_file.read_text()
        assert L.main([*args, "--base-url", srv.url]) == 0
        assert len(srv.bodies) == 2 and out_file.read_text() == before
    err = capsys.readouterr().err
    assert "resume: 2 users already in" in err and "infer-new summary: 0 users asked now" in err
    # found by review (issue 20): --limit 1 rewrote the output with the first user's edges alone
    with FakeLLM(lambda msg, n: new_user_answer(msg)) as srv:
        assert L.main([*args, "--base-url", srv.url, "--limit", "1"]) == 0 and not srv.bodies
    assert out_file.read_text() == before


def test_infer_new_writes_only_over_its_own_files(run, capsys):
    """Found by review (issue 20): infer-new --out replaced any file (a run's results, a model,
    /dev/null) and --answers cut a file's last line before finding it was no answers file."""
    tmp_path, args, _ = run
    i = args.index("--out")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "run.json").write_text('{"settings": {}}\n')
    (tmp_path / "notes.txt").write_text("line one\nline two, no newline")
    for option, path, expect in (("--out", "run.json", "it exists and is not an interest file infer-new wrote"),
                                 ("--out", "fifo", "it is not a regular file"),
                                 ("--answers", "notes.txt", "it exists and is not an answers file")):
        before = files(tmp_path)
        argv = [*args[:i], *args[i + 2:], "--out", str(tmp_path / "new" / "ni.txt"), option, str(tmp_path / path)]
        capsys.readouterr()
        assert L.main([*argv, "--base-url", "http://127.0.0.1:9/v1"]) == 2
        assert f"cannot write {tmp_path / path}: {expect}" in capsys.readouterr().err
        assert files(tmp_path) == before and (tmp_path / "fifo").is_fifo()


def files(root: Path) -> dict:
    """The regular files under root and their bytes (tree() would block reading a FIFO)."""
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_an_interest_file_without_lines_folds_in_from_the_items(tmp_path):
    """Found by review (issue 20): infer-new wrote an empty file when no phrase was placed, and
    recommend --new-interests refused it as empty."""
    (tmp_path / "i.txt").write_text("")
    assert L.read_histories(tmp_path / "i.txt", "interests") == {}
    with pytest.raises(L.DataError, match="the file is empty"):
        L.read_histories(tmp_path / "i.txt")


def test_infer_new_failures_are_recorded_and_asked_again(run, capsys):
    tmp_path, args, interest = run
    script = lambda msg, n: (500, {"error": {"message": "down"}}, {}, 0.0) if user_of(msg) == 2 else new_user_answer(msg)
    with FakeLLM(script) as srv:
        assert L.main([*args, "--base-url", srv.url, "--max-attempts", "2", "--backoff", "0.01"]) == 1
    failures = tmp_path / "new" / "new_interests.answers.failures.jsonl"
    assert [json.loads(x)["user"] for x in failures.read_text().splitlines()] == ["bob"]
    assert (tmp_path / "new" / "new_interests.txt").read_text() == f"alice {interest['space opera']}\n"
    with FakeLLM(lambda msg, n: new_user_answer(msg)) as srv:
        assert L.main([*args, "--base-url", srv.url]) == 0
        assert [user_of(b["messages"][1]["content"]) for _, b in srv.bodies] == [2]  # only bob again
    assert len((tmp_path / "new" / "new_interests.txt").read_text().splitlines()) == 3


def test_infer_new_dry_run_sends_and_writes_nothing(run, capsys):
    tmp_path, args, _ = run
    before = tree(tmp_path)
    with FakeLLM(lambda msg, n: new_user_answer(msg)) as srv:
        assert L.main([*args, "--base-url", srv.url, "--dry-run"]) == 0
        assert not srv.bodies
    assert tree(tmp_path) == before
    err = capsys.readouterr().err
    assert "2 users to ask" in err and "the first prompt (alice's)" in err and "Nothing was sent." in err


def test_a_clusters_folder_without_state_is_one_line(run, capsys):
    tmp_path, args, _ = run
    published = tmp_path / "fx"  # the dataset folder, as downloaded: an interest file, no state
    (published / "user_interest_clustered.txt").write_text("0 200\n1 200\n")
    i = args.index("--clusters")
    for where in (published, published / "user_interest_clustered.txt"):
        capsys.readouterr()
        with FakeLLM() as srv:
            rc = L.main([*args[:i + 1], str(where), *args[i + 2:], "--base-url", srv.url])
            assert not srv.bodies
        err = capsys.readouterr().err
        assert rc == 2 and len(err.splitlines()) == 1
        assert err.startswith(f"error: {where} holds no clustering state ({STATE}") and "`llm_interests.py cluster`" in err
    assert not (tmp_path / "new").exists()


def test_a_changed_interest_file_or_a_dataset_answers_file_is_refused(run, capsys):
    tmp_path, args, _ = run
    interests = tmp_path / "interests" / "fx"
    capsys.readouterr()
    rc = L.main([*args, "--base-url", "http://127.0.0.1:9/v1", "--answers", str(interests / "llm_answers.jsonl")])
    err = capsys.readouterr().err
    last = err.splitlines()[-1]  # after the history's notes
    assert rc == 2 and last.startswith("error: ") and "\"user\" must be a new user's id (a string), got 0" in last
    with open(interests / "user_interest_clustered.txt", "a") as f:
        f.write("0 999\n")
    rc = L.main([*args, "--base-url", "http://127.0.0.1:9/v1"])
    err = capsys.readouterr().err
    assert rc == 2 and "is not the interest file written with" in err and len(err.splitlines()) == 1


def test_infer_new_records_its_clustering_and_notes_a_changed_history(run, capsys):
    """Found by review: nothing tied infer-new's ids to a clustering (recommend took ids of
    another one), and a changed history silently kept the old answer."""
    tmp_path, args, _ = run
    with FakeLLM(lambda msg, n: new_user_answer(msg)) as srv:
        assert L.main([*args, "--base-url", srv.url]) == 0
        source = json.loads((tmp_path / "new" / "new_interests.txt.source.json").read_text())
        written = (tmp_path / "interests" / "fx" / "user_interest_clustered.txt").read_bytes()
        assert source["interest_sha256"] == __import__("hashlib").sha256(written).hexdigest()
        (tmp_path / "history.txt").write_text("alice\tx0\tx2\nbob x8 zzz x9\n")  # alice's history changed
        capsys.readouterr()
        assert L.main([*args, "--base-url", srv.url]) == 0 and len(srv.bodies) == 2  # nobody asked again
    err = capsys.readouterr().err
    assert "note: the histories of 1 new users differ from those their answers in" in err and ": alice (delete" in err


def test_infer_new_refuses_an_out_over_its_history_and_a_history_with_nothing_to_ask(run, capsys):
    tmp_path, args, _ = run
    before = (tmp_path / "history.txt").read_text()
    i = args.index("--out")
    capsys.readouterr()
    assert L.main([*args[:i + 1], str(tmp_path / "history.txt"), *args[i + 2:], "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert "must not be the --history file" in capsys.readouterr().err
    assert (tmp_path / "history.txt").read_text() == before
    (tmp_path / "history.txt").write_text("carol nope\n")  # no known item: nothing to ask is an error, not exit 0
    assert L.main([*args, "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert "history.txt: no new user has an item of" in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "new" / "new_interests.txt").exists()


def test_infer_new_refuses_an_out_over_the_clustering_files_it_reads(run, capsys):
    """Found by review (issue 20): --out into the --clusters folder's interest file (or --clusters
    FILE.npz --out FILE.npz) overwrote the clustering the run belongs to, exit 0."""
    tmp_path, args, _ = run
    folder = tmp_path / "interests" / "fx"
    kept = {name: (folder / name).read_bytes() for name in L.CLUSTER_FILES}
    c = args.index("--clusters")
    for clusters, option, path in ((folder, "--out", folder / "user_interest_clustered.txt"),
                                   (folder / STATE, "--out", folder / STATE),
                                   (folder / "user_interest_clustered.txt", "--answers", folder / "interest_clusters.tsv")):
        argv = [*args[:c + 1], str(clusters), *args[c + 2:], option, str(path), "--base-url", "http://127.0.0.1:9/v1"]
        capsys.readouterr()
        assert L.main(argv) == 2
        err = capsys.readouterr().err
        assert f"must not be files of --clusters {clusters}: {path} is one" in err, err
    assert {name: (folder / name).read_bytes() for name in L.CLUSTER_FILES} == kept
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("content, expect", [
    (b"alice B1\x00 B2\n", "line 1: control character U+0000 at column 9"),
    (b"alice B1\nbob \xe9t\xe9\n", "line 2: byte 0xe9 (byte 5 of the line) is not UTF-8 text"),
])
def test_read_histories_names_control_characters_and_bytes(tmp_path, content, expect):
    (tmp_path / "h.txt").write_bytes(content)
    with pytest.raises(L.DataError, match=re.escape(expect)):
        L.read_histories(tmp_path / "h.txt")
    (tmp_path / "h.txt").write_text("alice B1 \ufffd\n")  # a real U+FFFD is text, not a decoding error
    assert L.read_histories(tmp_path / "h.txt") == {"alice": ["B1", "\ufffd"]}
