"""Tests of cikgrec.py: hand-computed values, small fixtures with known answers, error cases, and a
two-epoch run on the published book-crossing data. Run with `make test`.

The published datasets are found through $CIKGREC_DATA (default ../shared/data relative to the
repository root); under CI ($CI set) a missing dataset fails instead of skipping.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cikgrec as C

ROOT = Path(__file__).resolve().parent
DATA = Path(os.environ.get("CIKGREC_DATA", ROOT.parent / "shared" / "data"))


def need_data(name):
    if not (DATA / name / "train.txt").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"dataset {name} missing under {DATA} (set CIKGREC_DATA)")
        pytest.skip(f"dataset {name} missing under {DATA}: set CIKGREC_DATA to the folder of the published datasets")
    return DATA


def write_dataset(folder, train, test, kg=None, interests=None, n_items=None):
    """A dataset folder in the published format from lists of lines."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text("\n".join(train) + "\n")
    (folder / "test.txt").write_text("\n".join(test) + "\n")
    if kg is not None:
        (folder / "kg_final.txt").write_text("\n".join(kg) + "\n")
    if interests is not None:
        (folder / "user_interest_clustered.txt").write_text("\n".join(interests) + "\n")
    if n_items is not None:
        rows = ["org_id remap_id entity_name"] + [f"{100 + i} {i} http://dbpedia.org/resource/Item_{i}"
                                                  for i in range(n_items)]
        (folder / "item_list.txt").write_text("\n".join(rows) + "\n")
    return folder


def small_dataset(tmp_path, name="fx"):
    """8 users, 6 items, 2 extra KG entities, 3 interests (ids after the largest entity id 7)."""
    train = ["0 0 1 2 3", "1 1 2 4", "2 0 3 5 4", "3 2 3", "4 4 5 0 1", "5 1 5", "6 0 2 4", "7 3 5 1"]
    test = ["0 4", "1 0 5", "2 1", "3 5", "4 2", "5 3", "6 5", "7 0"]
    kg = ["0 0 6", "1 0 6", "2 1 7", "3 1 7", "4 0 6"]
    interests = ["0 8", "1 8", "2 9", "3 9", "4 10", "5 10", "6 8", "7 9", "0 8"]
    return write_dataset(tmp_path / name, train, test, kg, interests, n_items=6)


def tiny_settings(tmp_path, **kw):
    base = dict(dataset="fx", data_dir=str(tmp_path), out=str(tmp_path / "runs" / "fx.json"), dim=8,
                layers=2, enc_layers=1, batch_size=4, epochs=2, patience=5, lr=0.01, mask_epochs=5,
                transe_batch=4, eval_batch=3, seed=1)
    base.update(kw)
    return C.make_settings(**base)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
def test_ranking_metrics_by_hand():
    # user 0: ranking 0 > 1 > 2 > 3 > 4 (item 0 excluded, so the top-2 is [1, 2]), truth {2, 4}
    # user 1: ranking 4 > 3 > 2 > 1 > 0, truth {4, 3, 0}: more truth items than K = 2
    scores = torch.tensor([[5.0, 4, 3, 2, 1], [1.0, 2, 3, 4, 5]])
    m = C.ranking_metrics(scores, exclude=[[0], []], truth=[[2, 4], [4, 3, 0]], ks=[2])
    d = 1 / math.log2(3)  # discount of rank 2
    ndcg0 = d / (1 + d)  # one hit at rank 2; ideal: 2 hits
    ndcg1 = 1.0  # hits at ranks 1 and 2; ideal with min(3, 2) = 2 hits
    assert m["recall@2"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["ndcg@2"] == pytest.approx((ndcg0 + ndcg1) / 2)
    assert m["precision@2"] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert m["hit@2"] == pytest.approx(1.0)
    assert scores[0, 0] == 5.0  # the caller's matrix is left alone


def test_ranking_metrics_skips_users_without_truth_and_k_above_items():
    scores = torch.tensor([[3.0, 2, 1], [1.0, 2, 3]])
    m = C.ranking_metrics(scores, exclude=[[], []], truth=[[2], []], ks=[5])
    assert m["recall@5"] == 1.0 and m["precision@5"] == pytest.approx(1 / 5)
    assert m["ndcg@5"] == pytest.approx(1 / math.log2(4))


def test_t1_recall_averaged_over_users_not_chunks(tmp_path):
    # one-hot items: a user's embedding is its score row
    rank = {0: [1, 2], 1: [4, 5], 2: [6, 7]}
    ue = torch.zeros(3, 10)
    for u, top in rank.items():
        ue[u, top[0]], ue[u, top[1]] = 2.0, 1.0
    truth = {0: [1, 2], 1: [3], 2: [6, 7, 8, 9]}
    users = np.array([1, 2, 0])  # chunks of 2: [u1, u2] then [u0]
    m = C.evaluate_ranking(ue, torch.eye(10), users, [[]] * 3, [truth[u] for u in users], [2], chunk=2)
    assert m["recall@2"] == pytest.approx(0.5)  # not the chunk mean 0.625
    path = tmp_path / "test.txt"
    path.write_text("5 7 7 9\n")
    assert C.read_user_items(path) == {5: [7, 9]}
    m = C.ranking_metrics(torch.tensor([[0.0, 0, 0, 0, 0, 0, 0, 2, 1, 0]]), [[]], [[7, 7, 9]], [2])
    assert m["recall@2"] == pytest.approx(0.5)  # |truth| = 2 after removing the duplicate


def test_an_excluded_item_is_never_a_hit_even_when_k_reaches_it():
    """Found by a fresh user: with K >= the items left, top-k picked the -inf excluded items too,
    and an excluded truth item counted as a hit."""
    m = C.ranking_metrics(torch.tensor([[5.0, 4, 3, 2, 1]]), [[0, 1, 2]], [[0]], [5])
    assert m["recall@5"] == 0.0 and m["hit@5"] == 0.0 and m["ndcg@5"] == 0.0
    m = C.ranking_metrics(torch.tensor([[5.0, 4, 3, 2, 1]]), [[0, 1, 2]], [[0, 4]], [5])
    assert m["recall@5"] == pytest.approx(0.5)  # item 4 (rank 2 of the two left) is a hit
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    pairs = C.id_pairs([[3, 1, 3], [], [2]], 5)
    assert pairs[0].tolist() == [0, 0, 2] and pairs[1].tolist() == [1, 3, 2]
    ue, ie = torch.randn(3, 4), torch.randn(5, 4)
    lists = C.evaluate_ranking(ue, ie, np.arange(3), [[0], [1, 2], []], [[1], [3], [4]], [2, 5], chunk=2)
    paired = C.evaluate_ranking(ue, ie, np.arange(3), C.id_pairs([[0], [1, 2], []], 5),
                                C.id_pairs([[1], [3], [4]], 5), [2, 5], chunk=2)
    assert lists == paired


# ---------------------------------------------------------------------------------------------
# Mask schedules (Eq. 3, Eq. 4)
# ---------------------------------------------------------------------------------------------
def test_mask_schedules_eq3():
    a, w, L = 0.02, 0.95, 150
    assert C.mask_rate(0, "lin", a, w, L) == pytest.approx(0.02)
    assert C.mask_rate(75, "lin", a, w, L) == pytest.approx(0.485)
    assert C.mask_rate(75, "exp", a, w, L) == pytest.approx(0.02 * (0.95 / 0.02) ** 0.5)  # 0.137840
    assert C.mask_rate(75, "exp", a, w, L) == pytest.approx(0.137840, abs=1e-6)
    for q in (150, 300):
        assert C.mask_rate(q, "lin", a, w, L) == pytest.approx(0.95)
        assert C.mask_rate(q, "exp", a, w, L) == pytest.approx(0.95)
    assert C.mask_rate(7, "fixed", a, w, L) == 0.95
    for q in range(1, L):  # Eq. 4
        assert C.mask_rate(q, "exp", a, w, L) < C.mask_rate(q, "lin", a, w, L)


def test_t11_no_interest_nodes_skips_reconstruction(tmp_path):
    folder = small_dataset(tmp_path)
    (folder / "user_interest_clustered.txt").unlink()
    s = tiny_settings(tmp_path)
    ds, tr, va = C.read_data(s)
    t = C.Trainer(s, ds, tr, va, torch.device("cpu"))
    assert ds.n_interests == 0 and t.model.graphs.recon is None
    assert "rec" not in t.train_epoch(0)


# ---------------------------------------------------------------------------------------------
# The CIKG
# ---------------------------------------------------------------------------------------------
def dense(adj):
    return adj.to_dense().numpy()


def test_normalised_adjacency_three_nodes_by_hand():
    g = C.Graph(np.array([[0, 1], [1, 2]]), 3, loops=np.ones(3, bool))
    a = dense(g.adjacency())
    # degrees with self-loops: 2, 3, 2
    expect = np.array([[1 / 2, 1 / math.sqrt(6), 0], [1 / math.sqrt(6), 1 / 3, 1 / math.sqrt(6)],
                       [0, 1 / math.sqrt(6), 1 / 2]])
    np.testing.assert_allclose(a, expect, rtol=1e-6)
    b = dense(C.Graph(np.array([[0, 1], [1, 2]]), 3).adjacency())
    np.testing.assert_allclose(b, [[0, 1 / math.sqrt(2), 0], [1 / math.sqrt(2), 0, 1 / math.sqrt(2)],
                                   [0, 1 / math.sqrt(2), 0]], rtol=1e-6)


def test_t8_isolated_nodes_and_matrix_size():
    edges = np.array([[0, 2], [0, 3], [1, 3]])  # users 0, 1; items 0, 1, 2 = nodes 2, 3, 4
    a = dense(C.Graph(edges, 5).adjacency())
    assert a.shape == (5, 5)
    assert a[0, 2] == pytest.approx(0.70711, abs=1e-5)
    assert a[0, 3] == pytest.approx(0.5)
    assert a[1, 3] == pytest.approx(0.70711, abs=1e-5)
    assert not a[4].any() and not a[:, 4].any() and np.isfinite(a).all()


def test_edge_dropout_removes_whole_edges_and_renormalises():
    torch.manual_seed(0)
    edges = np.array([[i, j] for i in range(6) for j in range(i + 1, 6)])
    g = C.Graph(edges, 6, loops=np.ones(6, bool))
    a = dense(g.adjacency(drop=0.5))
    off = a - np.diag(np.diag(a))
    assert 0 < (off > 0).sum() < 30
    np.testing.assert_array_equal(off > 0, (off > 0).T)  # both directions kept or dropped together
    deg = (a > 0).sum(1)  # renormalised: entry = 1/sqrt(d_i d_j) with the new degrees
    i, j = np.argwhere(off > 0)[0]
    assert a[i, j] == pytest.approx(1 / math.sqrt(deg[i] * deg[j]))


def test_t7_id_offsets(tmp_path):
    folder = write_dataset(tmp_path / "fx", ["0 0 1", "1 2"], ["0 2", "1 0"], kg=["0 0 3", "2 1 4"],
                           interests=["0 5", "1 6"], n_items=3)
    ds = C.load_dataset(folder)
    assert (ds.n_users, ds.n_items, ds.n_entities, ds.n_interests) == (2, 3, 5, 2)
    assert C.node_counts(ds) == (2, 7, 9)
    kg = C.cikg_edges(ds, ds.train, ("kg",))
    assert kg.tolist() == [[2, 5], [4, 6]]
    uj = C.cikg_edges(ds, ds.train, ("uj",))
    assert uj.tolist() == [[0, 7], [1, 8]]
    s = tiny_settings(tmp_path, select_on="test")
    t = C.Trainer(s, *C.read_data(s), torch.device("cpu"))
    ue, ie = t.model.user_item_embeddings()
    z = t.model.encode(t.model.graphs.main.adjacency())
    assert torch.allclose(ie, z[2:5]) and torch.allclose(ue, z[0:2])


def test_cikg_counts_on_fixture(tmp_path):
    ds = C.load_dataset(small_dataset(tmp_path))
    assert (ds.n_users, ds.n_items, ds.n_entities, ds.n_interests) == (8, 6, 8, 3)
    assert C.node_counts(ds) == (8, 16, 19)
    assert len(ds.interest_edges) == 8  # the duplicate line "0 8" counts once
    n_ui = sum(len(x) for x in ds.train)
    assert n_ui == 25
    assert len(C.cikg_edges(ds, ds.train, ("ui",))) == 25
    assert len(C.cikg_edges(ds, ds.train, ("kg",))) == 5
    assert len(C.cikg_edges(ds, ds.train)) == 25 + 5 + 8
    g = C.build_graph(ds, ds.train, ("ui", "kg", "uj"), "all")
    assert g.adjacency()._nnz() == 2 * 38 + 19


def test_t3_no_test_edge_in_graph(tmp_path):
    folder = write_dataset(tmp_path / "fx", ["0 0"], ["0 1"], n_items=2)
    ds = C.load_dataset(folder)
    a = dense(C.build_graph(ds, ds.train, ("ui",), "none").adjacency())
    assert a[0, 1 + 1] == 0 and not a[2].any()  # u0-i1 (node 2) absent; deg(i1) = 0
    assert a[0, 1] == 1.0


def fold_in_reference(model, items, interests=None):
    """Fold-in as its docstring states it, with a dense matrix: the new user added to G alone, the
    trained nodes' layers and degrees frozen."""
    g, hp = model.graphs.main, model.hp
    a, loop = dense(g.adjacency()).astype(np.float64), float(hp.self_loops)
    deg = g.degree.numpy().astype(np.float64)
    z = model.emb.detach().numpy().astype(np.float64)
    layers_of_g = [z]
    for _ in range(hp.layers):
        layers_of_g.append(a @ layers_of_g[-1])
    out = []
    for b, its in enumerate(items):
        nbrs = sorted({model.e0 + i for i in its} | ({model.j0 + j for j in interests[b]} if interests else set()))
        nbrs = [n for n in nbrs if deg[n] > 0]
        d = len(nbrs) + loop
        x, total = np.zeros(z.shape[1]), np.zeros(z.shape[1])
        for k in range(hp.layers):
            x = sum((layers_of_g[k][n] / math.sqrt(d * deg[n]) for n in nbrs), np.zeros(z.shape[1])) + (
                x * loop / d if d else 0)
            total = total + x
        out.append(total / (hp.layers + 1 if hp.layer0 else hp.layers))
    return np.array(out)


def test_authors_view_2_without_interest_nodes_is_the_layer_0_table(tmp_path):
    """Under --variant authors, view 2 is the interest graph alone: with --no-interest-nodes it has
    no edges, and its self-loops (users and items) make each user's view-2 embedding its own Z row."""
    small_dataset(tmp_path)
    s = tiny_settings(tmp_path, variant="authors", interest_nodes=False, lambda3=0.1)
    t = C.Trainer(s, *C.read_data(s), torch.device("cpu"))
    view2 = t.model.graphs.views[1]
    assert view2.n_edges == 0
    n = t.ds.n_users + t.ds.n_items
    assert torch.allclose(t.model.encode(view2.adjacency())[:n], t.model.emb[:n])


def test_fold_in_by_hand_one_layer():
    """Users 0 and 1 liked items {0, 1} and {1}; no self-loops, 1 layer, layer 0 in the mean. A new
    user with items 0 and 1 (d = 2; item degrees 1 and 2): layer 1 = z_i0 / sqrt(2 * 1) + z_i1 /
    sqrt(2 * 2); final = (0 + layer 1) / 2."""
    ds = C.Dataset("h", 2, 2, 2, 0, 0, [np.array([0, 1]), np.array([1])], [np.array([]), np.array([0])],
                   np.zeros((0, 3), np.int64), np.zeros((0, 2), np.int64), np.zeros(0, np.int64))
    hp = C.make_settings(model="lightgcn", dim=2, layers=1)
    model = C.CIKGRec(2, 2, 2, 0, 0, C.build_graphs(ds, ds.train, hp), hp)
    with torch.no_grad():
        model.emb.copy_(torch.tensor([[9.0, 9], [9, 9], [1, 2], [3, 4]]))  # users 0-1, items 0-1
    expect = (np.array([1, 2]) / math.sqrt(2) + np.array([3, 4]) / 2) / 2
    np.testing.assert_allclose(model.fold_in([[0, 1]])[0].numpy(), expect, rtol=1e-6)
    assert torch.equal(model.fold_in([[]])[0], torch.zeros(2))  # no neighbour: zeros, not NaN


@pytest.mark.parametrize("kw", [dict(), dict(model="lightgcn"), dict(layer0=False, layers=3)])
def test_fold_in_equals_its_plain_statement_and_each_user_stands_alone(tmp_path, kw):
    small_dataset(tmp_path)
    s = tiny_settings(tmp_path, **kw)
    ds = C.load_dataset(tmp_path / "fx")
    model = C.Trainer(s, ds, ds.train, None, torch.device("cpu")).model
    items, interests = [[0, 3], [5], [1, 2, 4, 4]], [[0], [], [1, 2]]
    got = model.fold_in(items, interests).numpy()
    uj = "uj" in C.GRAPHS[s.graph]
    np.testing.assert_allclose(got, fold_in_reference(model, items, interests if uj else None), rtol=1e-5, atol=1e-6)
    alone = model.fold_in([items[2]], [interests[2]]).numpy()[0]  # one user's result never depends on the others
    np.testing.assert_allclose(alone, got[2], rtol=1e-6, atol=1e-7)
    if uj:  # interest edges change the embedding of a graph that has them
        assert not np.allclose(model.fold_in([items[0]], [[0]]).numpy(), model.fold_in([items[0]]).numpy())


def test_a_new_user_with_a_training_users_history_gets_nearly_their_recommendations(tmp_path):
    small_dataset(tmp_path)
    s = tiny_settings(tmp_path, epochs=20, dim=16)
    ds = C.load_dataset(tmp_path / "fx")
    trainer = C.Trainer(s, ds, ds.train, None, torch.device("cpu"))
    C.train_loop(trainer, s.epochs, None)
    users, item_emb = trainer.model.user_item_embeddings()
    interests = [[int(j) for u, j in ds.interest_edges if u == v] for v in range(ds.n_users)]
    new = trainer.model.fold_in([list(ds.train[u]) for u in range(ds.n_users)], interests)
    cos = torch.nn.functional.cosine_similarity(new, users, dim=1)
    assert cos.min() > 0.9, cos  # the same neighbours: only the own row of Z (layer 0) is missing
    same_top = [(new[u] @ item_emb.T).argmax() == (users[u] @ item_emb.T).argmax() for u in range(ds.n_users)]
    assert sum(same_top) >= 6, same_top


# ---------------------------------------------------------------------------------------------
# Sampling and losses
# ---------------------------------------------------------------------------------------------
def test_t5_negative_sampling():
    users = np.array([0, 0, 1])
    items = np.array([0, 1, 2])
    keys = C.pair_keys(users, items, 3)
    neg = C.sample_negatives(np.zeros(10_000, dtype=np.int64), keys, 3, np.random.default_rng(0))
    assert (neg == 2).all()  # item 2 = node 2 + 2 users = 4; never a user, never past the last item
    with pytest.raises(RuntimeError):
        full = C.pair_keys(np.zeros(3, np.int64), np.arange(3), 3)
        C.sample_negatives(np.zeros(5, dtype=np.int64), full, 3, np.random.default_rng(0), max_rounds=50)


def test_t5_user_with_every_item_is_left_out(tmp_path):
    folder = write_dataset(tmp_path / "fx", ["0 0 1 2", "1 0"], ["0 1", "1 2"], n_items=3)
    s = tiny_settings(tmp_path, select_on="test", epochs=1)
    ds, tr, va = C.read_data(s)
    t = C.Trainer(s, ds, tr, va, torch.device("cpu"))
    assert t.pair_u.tolist() == [1]
    assert any("1 users have every item" in n for n in t.notes)
    t.train_epoch(0)  # terminates


def test_t6_bpr_numerics_and_l2_scope():
    loss = C.bpr(torch.tensor([2.0, -100.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx(50.063464, abs=1e-5) and math.isfinite(loss.item())
    per = torch.nn.functional.softplus(torch.tensor([-2.0, 100.0]))
    assert per.tolist() == pytest.approx([0.126928, 100.0], abs=1e-6)
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [9.0, 9.0]])
    u, i, j = torch.tensor([0]), torch.tensor([1]), torch.tensor([2])
    assert C.l2(table[u], table[i], table[j]).item() == pytest.approx(2.0)


def test_t9_simgcl_noise_and_info_nce():
    d = C.simgcl_noise(torch.tensor([[0.3, -0.4, 0.0]]), 0.1, r=torch.tensor([[0.6, 0.8, 0.5]]))
    assert d[0].tolist() == pytest.approx([0.053666, -0.071554, 0.0], abs=1e-6)
    eye = torch.eye(2)
    loss = C.info_nce(eye, eye, torch.tensor([0, 1]), tau=1.0)
    assert loss.item() == pytest.approx(0.313262, abs=1e-6)


def test_info_nce_matches_autograd_reference():
    torch.manual_seed(0)
    a = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    c = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([0, 3, 3, 10, 2, 5, 0])
    ours = C.info_nce(a, c, pos, 0.2)
    ga, gc = torch.autograd.grad(ours, (a, c))
    an, cn = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(c, dim=1)
    logits = an @ cn.T / 0.2
    ref = torch.nn.functional.cross_entropy(logits, pos)
    ra, rc = torch.autograd.grad(ref, (a, c))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    assert torch.allclose(ga, ra) and torch.allclose(gc, rc)
    # a temperature so small that exp(1/tau) overflows float32 takes the shifted path
    a32, c32 = torch.eye(3), torch.tensor([[1.0, 0, 0], [0.6, 0.8, 0], [0, 0, 1]])
    ours = C.info_nce(a32, c32, torch.tensor([0, 1, 2]), 0.01)
    ref = torch.nn.functional.cross_entropy(a32 @ c32.T / 0.01, torch.tensor([0, 1, 2]))
    assert math.isfinite(ours.item()) and ours.item() == pytest.approx(ref.item(), rel=1e-5)


def tiny_model(graph, n_users, n_items, **hp):
    """A CIKGRec on one Graph (as main graph, no views, no reconstruction), for the encoder."""
    s = C.Settings(**{"dim": 3, "layers": 3, "lambda2": 0.0, "lambda3": 0.0, **hp})
    return C.CIKGRec(n_users, n_items, graph.n_nodes - n_users, 0, 0, C.Graphs(graph, [], None), s)


def test_symmetric_spmm_kernel_equals_the_plain_sparse_product():
    """The fast kernel against its plain expression torch.sparse.mm(adj, x): values, and gradients
    with gradcheck in float64 (its backward reuses A because A is symmetric)."""
    adj = C.Graph(np.array([[0, 1], [1, 2], [0, 3]]), 4, loops=np.ones(4, bool)).adjacency()
    a64 = torch.sparse_csr_tensor(adj.crow_indices(), adj.col_indices(), adj.values().double(), (4, 4))
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(C.SymmetricSpMM.apply(a64, x), a64.to_dense() @ x)
    assert torch.autograd.gradcheck(lambda x: C.SymmetricSpMM.apply(a64, x), (x,))
    g = torch.randn(4, 3, dtype=torch.float64)
    ours = torch.autograd.grad(C.SymmetricSpMM.apply(a64, x), x, g)[0]
    plain = torch.autograd.grad(a64.to_dense() @ x, x, g)[0]
    assert torch.allclose(ours, plain)


def test_mean_log_sum_exp_kernel_equals_logsumexp():
    """The InfoNCE denominator against torch.logsumexp(a @ c.T / tau, dim=1).mean(): values and
    gradients (gradcheck, float64), on the plain and on the shifted (tiny tau) path."""
    torch.manual_seed(0)
    for tau in (0.2, 0.01):
        a = torch.nn.functional.normalize(torch.randn(5, 4, dtype=torch.float64), dim=1).requires_grad_()
        c = torch.nn.functional.normalize(torch.randn(7, 4, dtype=torch.float64), dim=1).requires_grad_()
        plain = lambda a, c: torch.logsumexp(a @ c.T / tau, dim=1).mean()
        assert C.MeanLogSumExp.apply(a, c, tau).item() == pytest.approx(plain(a, c).item(), rel=1e-12)
        assert torch.autograd.gradcheck(lambda a, c: C.MeanLogSumExp.apply(a, c, tau), (a, c))
        ours = torch.autograd.grad(C.MeanLogSumExp.apply(a, c, tau), (a, c))
        ref = torch.autograd.grad(plain(a, c), (a, c))
        assert all(torch.allclose(o, r) for o, r in zip(ours, ref))


def test_encode_is_the_lightgcn_layer_mean():
    """f_G = mean of x, Ax, ..., A^3 x; with layer0 off (SimGCL) the mean of Ax .. A^3 x."""
    graph = C.Graph(np.array([[0, 1], [1, 2], [0, 3]]), 4, loops=np.ones(4, bool))
    a = graph.adjacency().to_dense()
    x = torch.randn(4, 3)
    powers = [torch.linalg.matrix_power(a, k) @ x for k in range(4)]
    assert torch.allclose(tiny_model(graph, 2, 2).encode(graph.adjacency(), x), sum(powers) / 4, atol=1e-6)
    simgcl = tiny_model(graph, 2, 2, layer0=False)
    assert torch.allclose(simgcl.encode(graph.adjacency(), x), sum(powers[1:]) / 3, atol=1e-6)


def test_t10_transe():
    h, r, t, tn = (torch.tensor([v]) for v in ([0.6, 0.8], [0.1, 0.0], [0.7, 0.8], [0.0, 1.0]))
    assert C.translation(h, r, t, tn).item() == pytest.approx(0.393978, abs=1e-6)
    assert C.translation(h, r, t, tn, squared=True).item() == pytest.approx(0.462856, abs=1e-6)


def test_t10_triples_and_corrupted_tails(tmp_path):
    ds = C.load_dataset(small_dataset(tmp_path))
    trip = C.kg_triples(ds, ds.train)
    assert len(trip) == 10  # 5 triples and their inverses
    assert {(8 + 0, 0, 8 + 6), (8 + 6, 2, 8 + 0)} <= set(map(tuple, trip.tolist()))
    keep, neg = C.corrupt_tails(trip, 8, ds.n_entities, np.random.default_rng(0))
    true = set(map(tuple, trip.tolist()))
    assert len(keep) == len(trip)
    assert ((neg >= 8) & (neg < 16)).all()  # entity nodes only: never users (0..7) or interests
    assert not any((h, r, t) in true for (h, r, _), t in zip(trip[keep].tolist(), neg))
    with_ui = C.kg_triples(ds, ds.train, with_interactions=True)
    assert len(with_ui) == 10 + 2 * 25


def test_t10_small_kg_gets_a_transe_batch(tmp_path):
    small_dataset(tmp_path)
    s = tiny_settings(tmp_path, transe=True, transe_batch=4096)
    t = C.Trainer(s, *C.read_data(s), torch.device("cpu"))
    before = t.model.rel.detach().clone()
    loss = t.transe_epoch()
    assert math.isfinite(loss) and not torch.equal(before, t.model.rel.detach())


# ---------------------------------------------------------------------------------------------
# Validation split
# ---------------------------------------------------------------------------------------------
def test_validation_split():
    assert [C.n_valid_items(n) for n in (1, 2, 3, 4, 8, 12, 20)] == [0, 0, 0, 1, 1, 2, 3]
    rng = np.random.default_rng(5)
    train = [rng.choice(1000, size=n, replace=False) for n in rng.integers(1, 60, size=300)]
    a_tr, a_va = C.split_validation(train, seed=3)
    b_tr, b_va = C.split_validation(train, seed=3)
    c_tr, _ = C.split_validation(train, seed=4)
    for items, tr, va, tr2, va2 in zip(train, a_tr, a_va, b_tr, b_va):
        assert not set(tr) & set(va) and set(tr) | set(va) == set(items)
        assert len(va) == C.n_valid_items(len(items)) and len(tr) >= 1
        assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
        assert list(tr) == [i for i in items if i in set(tr)]  # file order kept
    assert any(not np.array_equal(x, y) for x, y in zip(a_tr, c_tr))
    big = [np.arange(80)] * 10
    tr, va = C.split_validation(big, 0)
    assert sum(map(len, tr)) / sum(map(len, va)) == 7.0


# ---------------------------------------------------------------------------------------------
# Bad input: one clear message, exit code 2, nothing written
# ---------------------------------------------------------------------------------------------
def run_cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "cikgrec_cli.py"), *args], capture_output=True,
                          text=True, cwd=cwd)


def test_optional_files_warn(tmp_path):
    folder = write_dataset(tmp_path / "fx", ["0 0 1", "1 1 2"], ["0 2", "1 0"])
    ds = C.load_dataset(folder)
    assert ds.n_items == 3 and ds.n_interests == 0 and len(ds.kg) == 0
    assert any("kg_final.txt not found" in w for w in ds.warnings)
    assert any("user_interest_clustered.txt not found" in w for w in ds.warnings)


# ---------------------------------------------------------------------------------------------
# The published data
# ---------------------------------------------------------------------------------------------
def test_published_datasets_load():
    need_data("book-crossing")
    expect = {"book-crossing": (6616, 8853, 244, 85989, 24673, 1137, 19497),
              "dbbook2014": (5576, 2680, 381, 50745, 15216, 134223, 6961)}
    for name, (users, items, interests, n_train, n_test, n_kg, n_uj) in expect.items():
        ds = C.load_dataset(DATA / name)
        assert (ds.n_users, ds.n_items, ds.n_interests) == (users, items, interests)
        assert sum(map(len, ds.train)) == n_train and sum(map(len, ds.test)) == n_test
        assert len(ds.kg) == n_kg and len(ds.interest_edges) == n_uj


# ---------------------------------------------------------------------------------------------
# The model as a reference: the README's example, configurations, and the review's six fixes
# ---------------------------------------------------------------------------------------------
def readme_block(marker):
    """The ```python block of README.md that follows the line holding `marker`."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```python", text.index(marker)) + len("```python")
    return text[start:text.index("```", start)]


def test_the_readme_example_uses_the_model_in_other_code(tmp_path):
    folder = small_dataset(tmp_path)
    code = readme_block("Use the model in your own code").replace("data/book-crossing", str(folder))
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert math.isfinite(float(scope["loss"])) and set(scope["parts"]) == {"bpr", "cl", "rec"}
    assert scope["top5"].shape == (5, 5)
    assert scope["progress"].epoch == 2 and 0 <= scope["progress"].best_epoch <= 2


def test_baselines_are_presets_of_the_same_model():
    bc = C.make_settings(dataset="book-crossing")
    for name in ("lightgcn", "simgcl"):
        s = C.make_settings(dataset="book-crossing", model=name)
        # their own papers' graph and losses: no self-loops, no dropout, BPR weight 1, no GMAE
        assert (s.graph, s.self_loops, s.edge_drop, s.node_drop, s.lambda1, s.lambda2, s.transe) == (
            "cg", False, 0.0, 0.0, 1.0, 0.0, False)
        assert (s.dim, s.layers, s.batch_size, s.lr, s.l2) == (bc.dim, bc.layers, bc.batch_size, bc.lr, bc.l2)
    assert C.make_settings(model="lightgcn").lambda3 == 0.0
    simgcl = C.make_settings(dataset="book-crossing", model="simgcl")
    assert (simgcl.contrast, simgcl.layer0, simgcl.lambda3) == ("simgcl", False, bc.lambda3)
    assert C.make_settings(model="lightgcn", lr=0.01).lr == 0.01  # the command line wins


def test_simgcl_scores_without_layer_0_and_without_self_loops(tmp_path):
    small_dataset(tmp_path)
    s = tiny_settings(tmp_path, model="simgcl")
    t = C.Trainer(s, *C.read_data(s), torch.device("cpu"))
    adj = t.model.graphs.main.adjacency()
    assert float(adj.to_dense().diagonal().abs().sum()) == 0.0  # no self-loops
    a, x = adj.to_dense(), t.model.emb.detach()
    mean_1_to_l = sum(torch.linalg.matrix_power(a, k) @ x for k in range(1, s.layers + 1)) / s.layers
    ue, ie = t.model.user_item_embeddings()
    assert torch.allclose(ue, mean_1_to_l[:t.ds.n_users], atol=1e-6)


def test_node_drop_is_dropout_once_on_the_layer_0_table(tmp_path):
    """The authors' node dropout: F.dropout on Z before propagation (the dropped table is also layer
    0 of the mean), not on every layer's output."""
    small_dataset(tmp_path)
    s = tiny_settings(tmp_path, node_drop=0.5, edge_drop=0.0, lambda2=0.0, lambda3=0.0, l2=0.0)
    model = C.Trainer(s, *C.read_data(s), torch.device("cpu")).model
    batch = (torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([5, 4]))
    torch.manual_seed(3)
    _, parts = model.loss(batch, 0.0)
    torch.manual_seed(3)
    z = model.encode(model.graphs.main.adjacency(), torch.nn.functional.dropout(model.emb, 0.5))
    expect, _ = model.bpr_loss(z, *batch)
    assert float(parts["bpr"]) == pytest.approx(float(expect), rel=1e-6)


def test_replacement_donors_are_other_interest_rows_without_replacement():
    """GraphMAE's replacement as in the authors' code: int(r * m) masked nodes take the rows of a
    fresh permutation of the interest rows (never users or entities, never the same donor twice)."""
    x = torch.arange(30, dtype=torch.float32)[:, None].repeat(1, 4)  # row k holds k everywhere
    token = torch.full((1, 4), -1.0)
    for seed in range(50):
        torch.manual_seed(seed)
        xm, masked = C.mask_interests(x, 20, 10, 1.0, 0.4, token)  # 10 masked, 4 replaced
        donors = xm[masked[:4], 0]
        assert ((donors >= 20) & (donors < 30)).all() and len(set(donors.tolist())) == 4
        assert (xm[masked[4:]] == -1).all() and torch.equal(xm[:20], x[:20])


def test_edge_dropout_on_a_graph_without_edges_is_the_empty_adjacency():
    for loops in (None, np.ones(3, bool)):
        g = C.Graph(np.zeros((0, 2), dtype=np.int64), 3, loops)
        for readd in (False, True):
            a = dense(g.adjacency(0.5, readd_loops=readd))
            expect = np.eye(3) if loops is not None or readd else np.zeros((3, 3))
            np.testing.assert_allclose(a, expect)


def test_authors_dropout_drops_self_loops_and_adds_them_again():
    """--variant authors: a self-loop is dropped like an edge, then one is added to every node, so a
    kept loop weighs 2 in D^-1/2 (A + loops) D^-1/2; the paper variant keeps loops of weight 1."""
    edges = np.array([[0, 1], [1, 2], [2, 3], [0, 3], [0, 2]])
    g = C.Graph(edges, 4, loops=np.ones(4, bool))
    for readd in (False, True):
        torch.manual_seed(7)
        got = dense(g.adjacency(0.5, readd_loops=readd))
        torch.manual_seed(7)
        keep_edge = (torch.rand(5) >= 0.5).numpy()
        keep_loop = (torch.rand(4) >= 0.5).numpy() if readd else np.ones(4)
        a = np.zeros((4, 4))
        for (x, y), k in zip(edges, keep_edge):
            a[x, y] = a[y, x] = float(k)
        a += np.diag(keep_loop + 1.0 if readd else np.ones(4))
        d = 1 / np.sqrt(a.sum(1))
        np.testing.assert_allclose(got, d[:, None] * a * d[None, :], rtol=1e-6)


def test_authors_transe_is_head_first_with_their_batch_count(tmp_path):
    small_dataset(tmp_path)
    heads = np.array([0, 0, 0, 1, 2, 2, 5])
    rng = np.random.default_rng(0)
    for _ in range(20):
        rows = C.head_first(heads, 4, rng)
        assert len(set(heads[rows].tolist())) == 4  # 4 distinct heads of the 4 there are
    counts = {}
    for variant in ("paper", "authors"):
        s = tiny_settings(tmp_path, transe=True, transe_batch=4, variant=variant)
        t = C.Trainer(s, *C.read_data(s), torch.device("cpu"))
        calls = []
        real = t.model.transe_loss
        t.model.transe_loss = lambda *a: calls.append(a[0]) or real(*a)
        t.transe_epoch()
        counts[variant] = len(calls)
        kg_only = len(C.kg_triples(t.ds, t.train))
        assert len(t.triples) == kg_only + (2 * len(t.pair_u) if variant == "authors" else 0)
    # paper: every KG triple once (10 with inverses, batches of 4); authors: 10 // 4 as their
    # count, though their triples also hold the interactions
    assert counts == {"paper": 2, "authors": 2}


def test_importing_cikgrec_does_not_import_experiments():
    code = "import sys, cikgrec; print('experiments' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# The review's smaller defects, loading
# ---------------------------------------------------------------------------------------------
def test_a_bom_is_named_and_an_item_list_without_header_is_read(tmp_path):
    folder = small_dataset(tmp_path)
    (folder / "train.txt").write_bytes(b"\xef\xbb\xbf" + (folder / "train.txt").read_bytes())
    with pytest.raises(C.DataError, match=r"train.txt, line 1: the file starts with a byte-order mark \(BOM"):
        C.load_dataset(folder)
    folder = small_dataset(tmp_path, "fy")
    rows = (folder / "item_list.txt").read_text().splitlines()
    (folder / "item_list.txt").write_text("\n".join(rows[1:]) + "\n")  # found in review: the first item was lost
    ds = C.load_dataset(folder)
    assert ds.n_items == 6 and ds.item_names[0] == "http://dbpedia.org/resource/Item_0"


def test_importing_cikgrec_or_cli_leaves_the_allocator_alone():
    code = ("import ctypes; calls = []; real = ctypes.CDLL\n"
            "class Libc:\n    def mallopt(self, *a): calls.append(a)\n"
            "ctypes.CDLL = lambda name, *a, **k: Libc() if name == 'libc.so.6' else real(name, *a, **k)\n"
            "import cikgrec, cikgrec_cli\nassert calls == [], calls\n"
            "cikgrec_cli.keep_freed_memory(); print(calls)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    import platform
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("[(-3, 1073741824), (-1, 2147483647)]" if platform.system() == "Linux" else "[]")


def test_the_demo_dataset_is_what_make_demo_writes(tmp_path):
    import make_demo
    make_demo.make(tmp_path / "demo")
    shipped = ROOT / "data" / "demo"
    names = sorted(p.relative_to(shipped).as_posix() for p in shipped.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(tmp_path / "demo").as_posix() for p in (tmp_path / "demo").rglob("*")
                           if p.is_file())
    for name in names:
        assert (shipped / name).read_bytes() == (tmp_path / "demo" / name).read_bytes(), name
    assert sum((shipped / n).stat().st_size for n in names) < 1_000_000
    ds = C.load_dataset(shipped)
    assert (ds.n_users, ds.n_items, ds.n_interests) == (532, 1420, 36) and len(ds.kg) == 2984 and ds.item_names[0]


def test_cikgrec_py_copied_alone_trains_and_prints_the_test_metrics(tmp_path):
    """The method file is the teaching text people copy: alone in an empty folder beside a
    dataset folder (no cikgrec_cli.py, cikgrec_prepare.py), its `train` takes every setting, selects on
    validation and prints the test metrics; importing it imports no other file of ours."""
    data = need_data("book-crossing")
    (tmp_path / "cikgrec.py").write_text((ROOT / "cikgrec.py").read_text())
    p = subprocess.run([sys.executable, "cikgrec.py", "train", "--dataset", "book-crossing", "--data-dir", str(data),
                        "--epochs", "1", "--seed", "2025", "--threads", "1", "--lambda2", "0.05"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert out["best_epoch"] == 0 and 0 < out["valid"]["recall@50"] < 1
    assert all(0 < out["test"][m] < 1 for m in ("recall@50", "recall@100", "ndcg@50", "ndcg@100"))
    assert "epoch    0 | bpr" in p.stderr and "selection on valid" in p.stderr
    assert sorted(x.name for x in tmp_path.iterdir() if x.suffix == ".py") == ["cikgrec.py"]
    code = "import sys, cikgrec; print(sorted(m for m in ('cikgrec_cli', 'cikgrec_prepare', 'experiments', 'llm_interests') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True).stdout.strip() == "[]"


def test_read_id_list_reads_names_with_spaces_and_refuses_remap_ids_out_of_order(tmp_path):
    """One strict reader of the id lists (it replaced a lenient twin of the method file that read
    an item_list.txt with its rows out of order as if they were in order, names on the wrong items)."""
    path = tmp_path / "item_list.txt"
    path.write_text("org_id remap_id entity_name\n0374157065 0 Flu: The Story\n\nB2 1 None\nB3 2\n")
    assert C.read_id_list(path, "org_id remap_id name") == [("0374157065", "Flu: The Story"), ("B2", ""), ("B3", "")]
    path.write_text("a 0 x\nb 1 y\n")  # no header: the first line is a row
    assert C.read_id_list(path) == [("a", "x"), ("b", "y")]
    path.write_text("org_id remap_id entity_name\na 0 x\nc 2 z\nb 1 y\n")
    with pytest.raises(C.DataError, match=r"item_list.txt, line 3: remap id 2 out of order: expected 1"):
        C.read_id_list(path)
    folder = write_dataset(tmp_path / "fx", ["0 0 1", "1 1 2"], ["0 2", "1 0"], n_items=3)
    (folder / "item_list.txt").write_text("org_id remap_id entity_name\na 0 x\nc 2 z\nb 1 y\n")
    with pytest.raises(C.DataError, match="line 3: remap id 2 out of order"):
        C.load_dataset(folder)
    path.write_text("org_id remap_id entity_name\na zero x\n")
    with pytest.raises(C.DataError, match=r"line 2: expected `org_id remap_id name`, got 'a zero x'"):
        C.read_id_list(path, "org_id remap_id name")


def test_llm_interests_imports_the_method_file_and_no_tool_file():
    """The layers: llm_interests.py (the paper's first half) reads datasets through cikgrec.py
    alone, so the two files work without the tool layer, which imports them and never the reverse."""
    code = ("import sys, llm_interests; print(sorted(m for m in ('cikgrec', 'cikgrec_cli', 'cikgrec_prepare', "
            "'experiments') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "['cikgrec']", out.stderr


@pytest.mark.parametrize("option, expect", [
    (["--dim", "0"], "--dim must be at least 1, got 0"), (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"), (["--edge-drop", "1.5"], "--edge-drop must be in [0, 1), got 1.5"),
    (["--alpha", "2"], "--alpha is a rate in [0, 1], got 2.0"), (["--ks", "0"], "--ks must be comma-separated positive integers"),
    (["--out", "x.json"], "unrecognized arguments: --out"), (["--refit"], "unrecognized arguments: --refit")])
def test_the_copy_alone_refuses_settings_that_cannot_work(tmp_path, option, expect):
    """Found by a fresh user: copied alone, `train --dim 0` printed meaningless metrics, `--epochs 0`
    and `--lr -1` ended in tracebacks, and `--out`/`--refit` were accepted and silently ignored."""
    small_dataset(tmp_path)
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "cikgrec.py").write_text((ROOT / "cikgrec.py").read_text())
    p = subprocess.run([sys.executable, "cikgrec.py", "train", "--dataset", "fx", "--data-dir", str(tmp_path),
                        "--epochs", "1", *option], cwd=tmp_path / "alone", capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and expect in p.stderr and "Traceback" not in p.stderr, p.stderr
