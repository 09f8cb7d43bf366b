"""Tests of new users' interests (issue 20, part 2): `cluster` saves its clustering state,
assign_phrases places a new phrase in the run's clusters, `infer-new` asks the LLM about new users
and writes their edges with the run's interest ids.

    OMP_NUM_THREADS=1 python -m pytest -q test_new_interests.py

No network: the LLM is test_llm_interests.FakeLLM on 127.0.0.1.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import llm_interests as L
from test_llm_interests import POOL

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
