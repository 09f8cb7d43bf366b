"""Tests of `python cikgrec_cli.py export --format recbole` (cikgrec_prepare.export_recbole): a small
dataset made here is exported and read back. Fast, no network, no RecBole needed."""
import json
from pathlib import Path

import numpy as np
import pytest

import cikgrec as C
import cikgrec_cli as T
from test_cikgrec import run_cli, small_dataset, write_dataset

INTER_HEADER = ["user_id:token", "item_id:token"]


def read_atomic(path: Path) -> tuple[list, list]:
    """(header fields, rows as lists of fields) of a tab-separated RecBole atomic file."""
    lines = path.read_text().rstrip("\n").split("\n")
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def parse_config(text: str) -> dict:
    """The keys of the exported YAML this test needs: `key: value` lines at the top level, and the
    indented `sub: value` lines below a `key:` with no value as a dict. Values stay text, but a
    double-quoted one is read as the JSON string it is."""
    config, parent = {}, None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.strip().partition(": ") if ": " in line else (line.strip().rstrip(":"), "", "")
        value = json.loads(value) if value.startswith('"') else value
        if line.startswith(" ") and parent is not None:
            config[parent][key] = value
        elif value:
            config[key], parent = value, None
        else:
            config[key], parent = {}, key
    return config


def export(tmp_path, name, *extra):
    return T.main(["export", "--format", "recbole", "--dataset", name, "--data-dir", str(tmp_path),
                   "--out", str(tmp_path / "rb"), *extra])


def with_user_list(folder: Path, n_users: int) -> Path:
    rows = ["org_id remap_id"] + [f"u{9000 + u} {u}" for u in range(n_users)]
    (folder / "user_list.txt").write_text("\n".join(rows) + "\n")
    return folder


def test_export_is_our_split_with_original_ids(tmp_path):
    folder = with_user_list(small_dataset(tmp_path, "book-crossing"), 8)
    assert export(tmp_path, "book-crossing", "--split-seed", "3") == 0
    out = tmp_path / "rb" / "book-crossing"
    ds = C.load_dataset(folder)
    train, valid = C.split_validation(ds.train, 3)
    user_of = {f"u{9000 + u}": u for u in range(8)}
    item_of = {str(100 + i): i for i in range(6)}  # item_list.txt of small_dataset: org id 100 + i
    for part, lists in (("train", train), ("valid", valid), ("test", ds.test)):
        header, rows = read_atomic(out / f"book-crossing.{part}.inter")
        assert header == INTER_HEADER
        want = [(u, int(i)) for u, items in enumerate(lists) for i in items]
        assert [(user_of[u], item_of[i]) for u, i in rows] == want, part
    assert sum(len(v) for v in valid) > 0  # the carve-out is not empty on this fixture
    header, rows = read_atomic(out / "book-crossing.item")
    assert header == ["item_id:token", "item_title:token_seq"]
    assert rows[0] == ["100", "Item 0"]  # the DBpedia URI as a readable title


def test_export_kg_and_link_only_kg_items(tmp_path):
    folder = small_dataset(tmp_path)  # kg_final.txt: items 0..4 in triples, item 5 in none
    assert export(tmp_path, "fx") == 0
    out = tmp_path / "rb" / "fx"
    header, rows = read_atomic(out / "fx.kg")
    assert header == ["head_id:token", "relation_id:token", "tail_id:token"]
    assert [list(map(int, r)) for r in rows] == np.loadtxt(folder / "kg_final.txt", dtype=int).tolist()
    header, rows = read_atomic(out / "fx.link")
    assert header == ["item_id:token", "entity_id:token"]
    assert rows == [[str(100 + i), str(i)] for i in range(5)]  # not item 5: no triple holds it
    in_kg = {r[0] for r in read_atomic(out / "fx.kg")[1]} | {r[2] for r in read_atomic(out / "fx.kg")[1]}
    assert {e for _, e in rows} <= in_kg


def test_export_config(tmp_path):
    small_dataset(tmp_path, "book-crossing")
    assert export(tmp_path, "book-crossing") == 0
    config = parse_config((tmp_path / "rb" / "book-crossing" / "book-crossing.yaml").read_text())
    s = C.make_settings(dataset="book-crossing")
    assert config["benchmark_filename"] == "[train, valid, test]"
    assert config["dataset"] == "book-crossing" and config["field_separator"] == "\t"
    assert Path(config["data_path"]) == (tmp_path / "rb").resolve()
    assert config["load_col"] == {"inter": "[user_id, item_id]", "kg": "[head_id, relation_id, tail_id]",
                                  "link": "[item_id, entity_id]"}
    assert int(config["embedding_size"]) == s.dim == 64
    assert float(config["learning_rate"]) == s.lr == 8e-4  # book-crossing's, not the Settings default
    assert int(config["train_batch_size"]) == s.batch_size
    assert "mode: full" in config["eval_args"] and "group_by: user" in config["eval_args"]
    assert config["metrics"] == "[Recall, NDCG]" and config["topk"] == "[20, 50, 100]"
    assert config["valid_metric"] in ("NDCG@50", "Recall@50")
    for field, name in (("USER_ID_FIELD", "user_id"), ("ITEM_ID_FIELD", "item_id"), ("HEAD_ENTITY_ID_FIELD", "head_id"),
                        ("TAIL_ENTITY_ID_FIELD", "tail_id"), ("RELATION_ID_FIELD", "relation_id"),
                        ("ENTITY_ID_FIELD", "entity_id")):
        assert config[field] == name


def test_export_without_kg_or_id_lists_uses_dense_ids(tmp_path):
    write_dataset(tmp_path / "plain", ["0 0 1 2 3 4 5 6 7", "1 1 2"], ["0 8", "1 0"])
    assert export(tmp_path, "plain") == 0
    out = tmp_path / "rb" / "plain"
    assert not (out / "plain.kg").exists() and not (out / "plain.link").exists()
    pairs = [tuple(r) for part in ("train", "valid") for r in read_atomic(out / f"plain.{part}.inter")[1]]
    assert sorted(pairs) == sorted([("0", str(i)) for i in range(8)] + [("1", "1"), ("1", "2")])
    assert read_atomic(out / "plain.test.inter")[1] == [["0", "8"], ["1", "0"]]
    config = parse_config((out / "plain.yaml").read_text())
    assert config["load_col"] == {"inter": "[user_id, item_id]"}


def test_export_refuses_a_non_empty_folder_without_force(tmp_path, capsys):
    small_dataset(tmp_path)
    assert export(tmp_path, "fx") == 0
    capsys.readouterr()
    assert export(tmp_path, "fx") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--force" in err and "\n" not in err
    assert export(tmp_path, "fx", "--force") == 0
    # never into the dataset's own folder, even with --force
    code = T.main(["export", "--format", "recbole", "--dataset", "fx", "--data-dir", str(tmp_path),
                   "--out", str(tmp_path), "--force"])
    assert code == 2 and "own folder" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "fx").iterdir() if p.name.startswith("fx.")) == []


@pytest.mark.parametrize("argv", [["--dataset", "missing"], ["--dataset", "fx", "--split-seed", "-1"]])
def test_export_errors_are_one_line(tmp_path, capsys, argv):
    small_dataset(tmp_path)
    code = T.main(["export", "--format", "recbole", *argv, "--data-dir", str(tmp_path), "--out", str(tmp_path / "rb")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path):
    """Found by a new user: --out under a regular file, or where no folder can be made, ended in a
    traceback (NotADirectoryError, FileNotFoundError)."""
    write_dataset(tmp_path / "data" / "d", ["0 0 1 2 3", "1 1 2 3 4"], ["0 4", "1 0"])
    (tmp_path / "afile").write_text("x")
    for out, expect in ((str(tmp_path / "afile"), "--out: cannot write"), ("", "--out is empty"),
                        ("/proc/cikgrec-no-such", "cikgrec-no-such")):
        if out.startswith("/proc") and not Path("/proc").is_dir():
            continue
        r = run_cli("export", "--format", "recbole", "--dataset", "d", "--data-dir", str(tmp_path / "data"),
                    "--out", out, cwd=tmp_path)
        assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr, (out, r.stderr)
