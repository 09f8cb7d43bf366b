"""Tests of `prepare` reading the formats people have (cikgrec_prepare.py): RecBole atomic files
(.inter, .item, .kg, .link with typed headers), MovieLens `::` files in Latin-1, --encoding, header
lines never imported as data, ids with spaces, --rating-col none, the options error messages
suggest, and a data folder that cannot be written. Small files made in tmp_path; no network.
"""
import os
import re
import stat

import numpy as np
import pytest

import cikgrec as C
import cikgrec_cli as T
import cikgrec_prepare as P
from test_cikgrec import run_cli


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def write_recbole(folder, name="ml-100k", users=30, items=40, per_user=8, seed=0):
    """A tiny RecBole-style ml-100k: NAME.inter, NAME.item, NAME.kg, NAME.link, tab-separated with
    typed headers, the way RecBole's own dataset files are written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(1, users + 1):
        for t, i in enumerate(rng.choice(items, per_user, replace=False)):
            inter.append(f"{u}\t{i + 1}\t{int(rng.integers(1, 6))}\t{881250949 + 100 * u + t}")
    (folder / f"{name}.inter").write_text("\n".join(inter) + "\n")
    (folder / f"{name}.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "".join(f"{i}\tMovie number {i}\t199{i % 10}\tDrama Comedy\n" for i in range(1, items + 1)))
    (folder / f"{name}.link").write_text("item_id:token\tentity_id:token\n"
                                         + "".join(f"{i}\tm.0it{i}\n" for i in range(1, items + 1)))
    (folder / f"{name}.kg").write_text(
        "head_id:token\trelation_id:token\ttail_id:token\n"
        + "".join(f"m.0it{i}\tfilm.film.genre\tm.0genre{i % 4}\n" for i in range(1, items + 1))
        + "".join(f"m.0it{i}\tfilm.film.sequel\tm.0it{i + 1}\n" for i in range(1, 6))
        + "m.0genre0\tgenre.parent\tm.0genre1\n")
    return folder / name


# ---- header lines are never imported as data ---------------------------------------------------
def test_a_header_named_otherwise_is_not_imported_as_a_user_and_an_item(tmp_path):
    """Found failing: `userId,movieId` (MovieLens' ratings.csv) did not name the default columns,
    so line 1 became user 'userId' with item 'movieId' (kept with --min-user-interactions 1)."""
    (tmp_path / "r.csv").write_text("userId,movieId\n1,10\n1,11\n2,10\n2,12\n")
    st = P.prepare(tmp_path / "r.csv", "m", tmp_path, min_user_interactions=1)
    assert [x.split()[0] for x in lines(tmp_path / "m" / "user_list.txt")] == ["org_id", "1", "2"]
    assert [x.split()[0] for x in lines(tmp_path / "m" / "item_list.txt")] == ["org_id", "10", "11", "12"]
    assert st["processing"]["lines"] == 4


def test_a_recbole_kg_header_is_not_imported_as_a_relation(tmp_path):
    """Found failing: a RecBole .kg's typed header `head_id:token relation_id:token tail_id:token`
    was read as a triple, so `relation_id:token` became a relation."""
    base = write_recbole(tmp_path / "raw")
    files = P.recbole_files(base)
    P.prepare(files["interactions"], "k", tmp_path / "data", items=files["items"], kg=files["kg"],
              link=files["link"], min_user_interactions=1)
    relations = [x.split()[0] for x in lines(tmp_path / "data" / "k" / "relation_list.txt")[1:]]
    assert relations == ["film.film.genre", "film.film.sequel", "genre.parent"]
    entities = "\n".join(lines(tmp_path / "data" / "k" / "entity_list.txt"))
    assert "head_id" not in entities and "tail_id" not in entities


def test_a_header_is_found_by_numbers_below_it_and_an_unclear_one_is_named_in_a_note(tmp_path):
    (tmp_path / "r.csv").write_text("reader,book\n1,10\n1,11\n2,10\n2,12\n")  # names nothing; numbers below
    st = P.prepare(tmp_path / "r.csv", "a", tmp_path, min_user_interactions=1)
    assert "reader" not in (tmp_path / "a" / "user_list.txt").read_text()
    assert any("r.csv: line 1 ('reader', 'book') read as a header" in w for w in st["warnings"])
    (tmp_path / "s.csv").write_text("ua,ia\nub,ib\nua,ib\n")  # strings throughout: nothing tells
    st = P.prepare(tmp_path / "s.csv", "b", tmp_path, min_user_interactions=1)
    assert "ua 0" in (tmp_path / "b" / "user_list.txt").read_text()
    assert any("s.csv: line 1 ('ua', 'ia') read as data" in w and "--header yes" in w for w in st["warnings"])
    st = P.prepare(tmp_path / "s.csv", "c", tmp_path, min_user_interactions=1, header="yes")
    assert lines(tmp_path / "c" / "user_list.txt") == ["org_id remap_id", "ub 0", "ua 1"]
    assert not any("s.csv" in w for w in st["warnings"])  # decided by --header: no guess to report


# ---- RecBole atomic files ---------------------------------------------------------------------
def test_recbole_files_through_prepare_train_and_recommend(tmp_path):
    write_recbole(tmp_path / "dataset" / "ml-100k")
    cli = lambda *a: run_cli(*a, cwd=tmp_path)
    r = cli("prepare", "--recbole", "dataset/ml-100k/ml-100k", "--name", "ml100k")
    assert r.returncode == 0 and "| ml100k | 30 | 40 | 240 |" in r.stdout, r.stderr
    d = tmp_path / "data" / "ml100k"
    assert lines(d / "user_list.txt")[1] == "1 0"
    names = {x.split(" ", 2)[0]: x.split(" ", 2)[2] for x in lines(d / "item_list.txt")[1:]}
    assert names["7"] == "Movie number 7"  # the title: the .item column named movie_title
    # linked entities are their items (m.0it7 -> item 7); the genres are entities after the items
    index = {x.split()[0]: int(x.split()[1]) for x in lines(d / "item_list.txt")[1:]}
    kg = {tuple(map(int, x.split())) for x in lines(d / "kg_final.txt")}
    assert (index["1"], 1, index["2"]) in kg
    assert lines(d / "entity_list.txt")[41:] == [f"m.0genre{g} {40 + n} m.0genre{g}" for n, g in enumerate((1, 2, 3, 0))]
    assert len(lines(d / "kg_final.txt")) == 46
    # the folder form finds ml-100k/ml-100k.* itself
    r = cli("prepare", "--recbole", "dataset/ml-100k", "--name", "again")
    assert r.returncode == 0 and (tmp_path / "data" / "again" / "kg_final.txt").read_text() == (d / "kg_final.txt").read_text()
    r = cli("train", "--dataset", "ml100k", "--epochs", "1", "--threads", "1", "--dim", "8", "--out", "runs/r.json")
    assert r.returncode == 0, r.stderr
    r = cli("recommend", "--run", "runs/r.json", "--k", "2")
    rows = [x.split("\t") for x in r.stdout.splitlines()]
    assert r.returncode == 0 and rows[0] == ["user", "rank", "item", "title", "score"], r.stderr
    assert rows[1][0] == "1" and rows[1][3] == f"Movie number {rows[1][2]}"


def test_recbole_form_errors_name_what_is_missing(tmp_path):
    write_recbole(tmp_path / "raw")
    (tmp_path / "raw" / "ml-100k.kg").unlink()
    (tmp_path / "raw" / "ml-100k.link").unlink()
    files = P.recbole_files(tmp_path / "raw" / "ml-100k.inter")  # the .inter's own path works too
    assert files["kg"] is None and files["link"] is None and files["items"].name == "ml-100k.item"
    with pytest.raises(C.DataError, match=r"nope\.inter: file not found"):
        P.recbole_files(tmp_path / "raw" / "nope")
    r = run_cli("prepare", "--recbole", "raw/ml-100k", "--interactions", "raw/ml-100k.inter", "--name", "x",
                cwd=tmp_path)
    assert r.returncode == 2 and "--recbole" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("prepare", "--name", "x", cwd=tmp_path)
    assert r.returncode == 2 and "--interactions" in r.stderr and "--recbole" in r.stderr


def test_explicit_link_file_maps_entities_to_items_and_others_stay_entities(tmp_path):
    (tmp_path / "r.csv").write_text("user,item\n" + "".join(f"u{u},{i}\n" for u in range(2) for i in "abc"))
    (tmp_path / "link.csv").write_text("item,entity\na,Q1\nb,Q2\n")
    # without the link, 'c' (an item id) is item c; with it, only linked entities are items
    (tmp_path / "kg.csv").write_text("head,relation,tail\nQ1,sequel,Q2\nQ2,genre,Q9\nc,genre,Q9\n")
    P.prepare(tmp_path / "r.csv", "l", tmp_path, kg=tmp_path / "kg.csv", link=tmp_path / "link.csv",
              min_user_interactions=1)
    ents = [x.split()[0] for x in lines(tmp_path / "l" / "entity_list.txt")[1:]]
    assert ents == ["a", "b", "c", "Q9", "c"]  # item c, then Q9 and the entity c
    assert lines(tmp_path / "l" / "kg_final.txt") == ["0 0 1", "1 1 3", "4 1 3"]
    P.prepare(tmp_path / "r.csv", "n", tmp_path, kg=tmp_path / "kg.csv", min_user_interactions=1)
    assert "2 1 " in (tmp_path / "n" / "kg_final.txt").read_text()  # c is the item without a link


# ---- MovieLens files, separators, encodings -------------------------------------------------------
def test_movielens_dat_files_in_latin_1(tmp_path):
    (tmp_path / "ratings.dat").write_text("".join(f"{u}::{m}::{3 + (u + m) % 3}::{978300760 + m}\n"
                                                  for u in (1, 2) for m in (1, 2, 3, 48)))
    (tmp_path / "movies.dat").write_bytes("1::Toy Story (1995)::Animation|Children's|Comedy\n"
                                          "2::Jumanji (1995)::Adventure\n3::Misérables, Les (1995)::Drama\n"
                                          "48::Pocahontas (1995)::Animation\n".encode("latin-1"))
    args = ("prepare", "--interactions", "ratings.dat", "--items", "movies.dat", "--name", "ml", "--sep", "::",
            "--min-user-interactions", "1")
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "movies.dat, line 3: byte 0xe9" in r.stderr and "--encoding latin-1" in r.stderr
    assert not (tmp_path / "data").exists()
    r = run_cli(*args, "--encoding", "latin-1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    d = tmp_path / "data" / "ml"
    assert lines(d / "item_list.txt")[1:] == ["1 0 Toy Story (1995)", "2 1 Jumanji (1995)",
                                              "3 2 Misérables, Les (1995)", "48 3 Pocahontas (1995)"]
    assert (d / "test.txt").read_text() == "0 3\n1 3\n"  # the latest (timestamp column 4) to test
    r = run_cli("train", "--dataset", "ml", "--epochs", "1", "--threads", "1", "--dim", "8", "--select-on", "test",
                "--out", "runs/ml.json", cwd=tmp_path)  # 3 training items a user: too few for a validation split
    assert r.returncode == 0, r.stderr
    r = run_cli("recommend", "--run", "runs/ml.json", "--k", "4", "--include-seen", cwd=tmp_path)
    assert r.returncode == 0 and "\tMisérables, Les (1995)\t" in r.stdout, r.stderr
    r = run_cli(*args[:-4], "--encoding", "latin-1", "--min-user-interactions", "1", "--name", "auto", cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # --sep auto finds '::' too


def test_undecodable_bytes_are_an_error_never_a_replacement_character(tmp_path):
    (tmp_path / "r.csv").write_bytes(b"user,item\nu1,caf\xe9\nu1,b\n")
    with pytest.raises(C.DataError) as e:
        P.prepare(tmp_path / "r.csv", "x", tmp_path, min_user_interactions=1)
    assert str(e.value).startswith(f"{tmp_path / 'r.csv'}, line 2: byte 0xe9") and "--encoding latin-1" in str(e.value)
    with pytest.raises(C.SettingsError, match="--encoding nope"):
        P.prepare(tmp_path / "r.csv", "x", tmp_path, encoding="nope")
    P.prepare(tmp_path / "r.csv", "x", tmp_path, min_user_interactions=1, encoding="cp1252")
    assert "café 0 None" in (tmp_path / "x" / "item_list.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("sep, text", [("|", "u1|a|5\nu1|b|4\n"), ("::", "u1::a::5\nu1::b::4\n"),
                                        ("tab", "u1\ta\t5\nu1\tb\t4\n"), ("\\t", "u1\ta\t5\nu1\tb\t4\n")])
def test_any_literal_separator(tmp_path, sep, text):
    (tmp_path / "r.txt").write_text(text)
    st = P.prepare(tmp_path / "r.txt", "s", tmp_path, sep=sep, min_user_interactions=1, min_rating=5)
    assert st["items"] == 1 and lines(tmp_path / "s" / "item_list.txt")[1] == "a 0 None"


# ---- ids with spaces, empty ratings ----------------------------------------------------------
def test_ids_with_spaces_are_kept_with_underscores_and_a_clash_is_an_error(tmp_path):
    (tmp_path / "r.csv").write_text("user,item\nAnn Lee,The Book\nAnn Lee,Other\nBo,The Book\n")
    st = P.prepare(tmp_path / "r.csv", "w", tmp_path, min_user_interactions=1)
    assert lines(tmp_path / "w" / "user_list.txt") == ["org_id remap_id", "Ann_Lee 0", "Bo 1"]
    assert lines(tmp_path / "w" / "item_list.txt")[1] == "The_Book 0 None"
    assert any("1 user id holds whitespace" in w for w in st["warnings"])
    (tmp_path / "s.csv").write_text("user,item\nAnn Lee,a\nAnn_Lee,b\n")
    with pytest.raises(C.DataError, match="user ids 'Ann Lee' and 'Ann_Lee' would both be 'Ann_Lee'"):
        P.prepare(tmp_path / "s.csv", "v", tmp_path, min_user_interactions=1)


def test_empty_ratings_and_rating_col_none(tmp_path):
    (tmp_path / "r.csv").write_text("user,item,rating\nu1,a,\nu1,b,5\n")
    with pytest.raises(C.DataError, match=r"line 2: empty rating \(--rating-col none ignores the ratings\)"):
        P.prepare(tmp_path / "r.csv", "x", tmp_path, min_user_interactions=1)
    st = P.prepare(tmp_path / "r.csv", "x", tmp_path, min_user_interactions=1, rating_col="none")
    assert st["items"] == 2
    with pytest.raises(C.SettingsError, match="--min-rating needs ratings: not with --rating-col none"):
        P.prepare(tmp_path / "r.csv", "y", tmp_path, rating_col="none", min_rating=4)
    help_text = run_cli("prepare", "--help", cwd=tmp_path).stdout
    assert "--rating-col none" in " ".join(help_text.split()) and "--encoding" in help_text


@pytest.mark.parametrize("files, args", [
    ({"r.csv": "user,item\n1,2\n", "kg.csv": "subject,relation,tail\na,b,c\n"}, ["--kg", "kg.csv"]),
    ({"r.csv": "usr,item\n1,2\n"}, []),
    ({"r.csv": "user,item,when\n1,2,3\n"}, ["--time-col", "stamp"]),
    ({"r.csv": "user,item\n1,2\n", "i.csv": "item,label\n2,x\n"}, ["--items", "i.csv"]),
    ({"r.csv": "user,item,rating\n1,2,\n"}, []),
    ({"r.csv": "user,item\n1,2\n"}, ["--min-rating", "3"]),
    ({"r.csv": b"user,item\n1,\xff\n"}, []),
])
def test_every_option_an_error_message_suggests_exists(tmp_path, files, args):
    """Found failing: a KG without a `head` column was told to use --head-col, which did not exist."""
    for name, text in files.items():
        (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    r = run_cli("prepare", "--interactions", "r.csv", "--name", "x", *args, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    options = {o for a in T.build_parser()._subparsers._group_actions[0].choices["prepare"]._actions
               for o in a.option_strings}
    suggested = set(re.findall(r"(--[a-z][a-z-]*)", r.stderr))
    assert suggested and suggested <= options, (suggested - options, r.stderr)


# ---- where the dataset goes --------------------------------------------------------------------
def test_a_data_dir_that_cannot_be_written_is_one_line(tmp_path):
    """Found failing: prepare into a read-only --data-dir was a traceback (PermissionError)."""
    (tmp_path / "r.csv").write_text("user,item\n1,2\n1,3\n")
    (tmp_path / "plain-file").write_text("not a folder\n")
    r = run_cli("prepare", "--interactions", "r.csv", "--name", "x", "--data-dir", "plain-file/data",
                "--min-user-interactions", "1", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "plain-file" in r.stderr and "not a folder" in r.stderr


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="chmod cannot keep root out")
def test_a_read_only_data_dir_is_one_line(tmp_path):
    (tmp_path / "r.csv").write_text("user,item\n1,2\n1,3\n")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        r = run_cli("prepare", "--interactions", "r.csv", "--name", "x", "--data-dir", "ro",
                    "--min-user-interactions", "1", cwd=tmp_path)
    finally:
        (tmp_path / "ro").chmod(stat.S_IRWXU)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "ro/x" in r.stderr and "cannot write" in r.stderr


# ---- review defects (fix19b): each input below failed before its fix ----------------------------
def test_header_option_is_the_interactions_files_only_and_the_kg_keeps_its_first_triple(tmp_path):
    """Found failing: --header yes, suggested by the note on an interactions file with a header of
    strings, also dropped the first triple of a KG without a header (29 of 30 kept)."""
    (tmp_path / "strhdr.csv").write_text("reader,book\n" + "".join(f"r{u},b{i}\n" for u in range(3) for i in range(10)))
    (tmp_path / "kg_nohdr.csv").write_text("".join(f"b{i},genre,g{i % 3}\n" for i in range(10))
                                           + "".join(f"b{i},author,a{i % 4}\n" for i in range(10))
                                           + "".join(f"b{i},year,y{i % 5}\n" for i in range(10)))
    st = P.prepare(tmp_path / "strhdr.csv", "hy", tmp_path, kg=tmp_path / "kg_nohdr.csv", header="yes",
                   min_user_interactions=1)
    assert st["processing"]["kg_lines"] == 30 and st["triples"] == 30
    assert "reader" not in (tmp_path / "hy" / "user_list.txt").read_text()
    kg_note = [w for w in st["warnings"] if "kg_nohdr.csv" in w]
    assert len(kg_note) == 1 and "read as data" in kg_note[0] and "--header" not in kg_note[0]
    assert "--head-col" in kg_note[0]  # what makes it a header, if it is one
    (tmp_path / "link.csv").write_text("".join(f"b{i},b{i}\n" for i in range(10)))  # no options of its own
    st = P.prepare(tmp_path / "strhdr.csv", "hl", tmp_path, kg=tmp_path / "kg_nohdr.csv", link=tmp_path / "link.csv",
                   header="yes", min_user_interactions=1)
    link_note = [w for w in st["warnings"] if "link.csv" in w]
    assert len(link_note) == 1 and "must name the columns item and entity" in link_note[0], link_note
    help_text = " ".join(run_cli("prepare", "--help", cwd=tmp_path).stdout.split())
    assert "the --interactions file only" in help_text


def test_a_kg_id_equal_to_an_unlinked_items_id_is_an_entity_with_a_note(tmp_path):
    """Found failing: with --link, a KG tail written as an item's own id (not linked) became a
    second entity of that id, silently (entity_list.txt: `i1 0 ...` and `i1 40 i1`)."""
    (tmp_path / "r.csv").write_text("user,item\n" + "".join(f"u{u},i{i}\n" for u in range(2) for i in range(3)))
    (tmp_path / "link.csv").write_text("item,entity\ni0,Q0\ni1,Q1\ni2,Q2\n")
    (tmp_path / "kg.csv").write_text("head,relation,tail\nQ0,sequel,Q1\nQ0,similar,i1\nQ2,similar,i1\ni2,by,Q7\n")
    st = P.prepare(tmp_path / "r.csv", "l", tmp_path, kg=tmp_path / "kg.csv", link=tmp_path / "link.csv",
                   min_user_interactions=1)
    ents = [x.split()[0] for x in lines(tmp_path / "l" / "entity_list.txt")[1:]]
    assert ents == ["i0", "i1", "i2", "i1", "i2", "Q7"]  # the rule stays: unlinked ids are entities
    note = [w for w in st["warnings"] if "kg.csv" in w and "read as entities" in w]
    assert len(note) == 1 and "2 KG heads/tails" in note[0] and "line 3" in note[0] and "'i1'" in note[0], st["warnings"]
    assert "with --link only linked entities are items" in note[0]


def test_a_line_with_too_few_fields_suggests_the_separator_it_holds(tmp_path):
    """Found failing: a pipe-separated file without --sep stopped with `expected at least 2 fields`
    and no word of --sep."""
    (tmp_path / "p.txt").write_text("user|item|rating\nu1|a|5\nu1|b|4\n")
    with pytest.raises(C.DataError, match=r"p\.txt, line 1: expected at least 2 fields .*--sep '\|'"):
        P.prepare(tmp_path / "p.txt", "p", tmp_path, min_user_interactions=1)
    (tmp_path / "c.txt").write_text("u1;a\nu1;b\n")
    with pytest.raises(C.DataError, match=r"c\.txt, line 1: .*--sep ';'"):
        P.prepare(tmp_path / "c.txt", "c", tmp_path, min_user_interactions=1, sep=",")
    (tmp_path / "k.csv").write_text("head,relation,tail\nQ1,rel\n")
    (tmp_path / "r.csv").write_text("user,item\nu1,Q1\n")
    with pytest.raises(C.DataError) as e:  # no likely separator on the line: no hint
        P.prepare(tmp_path / "r.csv", "k", tmp_path, kg=tmp_path / "k.csv", min_user_interactions=1)
    assert "line 2: expected at least 3 fields" in str(e.value) and "--sep" not in str(e.value)


@pytest.mark.parametrize("args, options", [
    (["--user-col", "2", "--item-col", "2"], ("--user-col", "--item-col")),
    (["--time-col", "rating"], ("--rating-col", "--time-col")),
    (["--user-col", "3"], ("--user-col", "--rating-col")),  # no header: rating is column 3 by order
])
def test_two_roles_reading_one_column_is_an_error_naming_both_options(tmp_path, args, options):
    """Found failing: `--user-col 2 --item-col 2` and `--time-col rating` were accepted."""
    header = "" if args == ["--user-col", "3"] else "user,item,rating,timestamp\n"
    (tmp_path / "r.csv").write_text(header + "u1,a,5,100\nu1,b,4,101\n")
    r = run_cli("prepare", "--interactions", "r.csv", "--name", "x", "--min-user-interactions", "1", *args,
                cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "r.csv" in r.stderr and all(o in r.stderr for o in options) and "both read column" in r.stderr, r.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("raw, kg, expect", [
    (b"user,item\nu1,a\x00b\nu1,c\n", None, r"r\.csv, line 2: item id 'a\\x00b' holds a control character U\+0000"),
    (b"user,item\nu\x07,a\nu1,c\n", None, r"r\.csv, line 2: user id 'u\\x07' holds a control character U\+0007"),
    (b"user,item\nu1,a\n", b"head,relation,tail\na,re\x00l,Q1\n", r"kg\.csv, line 2: relation .*U\+0000"),
])
def test_a_control_character_in_an_id_is_an_error(tmp_path, raw, kg, expect):
    """Found failing: NUL bytes passed into the ids and the id lists."""
    (tmp_path / "r.csv").write_bytes(raw)
    if kg:
        (tmp_path / "kg.csv").write_bytes(kg)
    with pytest.raises(C.DataError, match=expect):
        P.prepare(tmp_path / "r.csv", "x", tmp_path, kg=tmp_path / "kg.csv" if kg else None, min_user_interactions=1)
    assert not (tmp_path / "x").exists()


def test_the_items_title_column_is_preferred_to_a_name_column(tmp_path):
    """Found failing: an items file `track_id,artist_name,track_title` took the artist as the title."""
    (tmp_path / "r.csv").write_text("user,item\nu1,t1\nu1,t2\n")
    (tmp_path / "i.csv").write_text("item,artist_name,track_title\nt1,Ann,Song One\nt2,Bo,Song Two\n")
    P.prepare(tmp_path / "r.csv", "t", tmp_path, items=tmp_path / "i.csv", min_user_interactions=1)
    assert lines(tmp_path / "t" / "item_list.txt")[1:] == ["t1 0 Song One", "t2 1 Song Two"]
    (tmp_path / "j.csv").write_text("item,name,title\nt1,Ann,Song One\nt2,Bo,Song Two\n")
    P.prepare(tmp_path / "r.csv", "u", tmp_path, items=tmp_path / "j.csv", min_user_interactions=1)
    assert lines(tmp_path / "u" / "item_list.txt")[1:] == ["t1 0 Song One", "t2 1 Song Two"]


@pytest.mark.parametrize("args, option", [(["--data-dir", ""], "--data-dir"), (["--name", ""], "--name"),
                                          (["--name", " "], "--name")])
def test_an_empty_data_dir_or_name_is_refused(tmp_path, args, option):
    """Found failing: `--data-dir ""` wrote the dataset into the current folder."""
    (tmp_path / "r.csv").write_text("user,item\nu1,a\nu1,b\n")
    r = run_cli("prepare", "--interactions", "r.csv", "--name", "x", "--min-user-interactions", "1", *args,
                cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert option in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]


def test_a_stray_byte_in_a_utf8_file_is_not_answered_with_latin_1(tmp_path):
    """Found by a new user: the error suggested --encoding latin-1 for a UTF-8 file with one damaged
    byte, and following it turned the file's valid characters into mojibake without a word."""
    (tmp_path / "r.csv").write_text("user,item\n1,Mis\u00e9rables\n2,b\n", encoding="utf-8")
    with open(tmp_path / "r.csv", "ab") as f:
        f.write(b"3,caf\xe9\n")
    r = run_cli("prepare", "--interactions", "r.csv", "--name", "x", "--min-user-interactions", "1", cwd=tmp_path)
    assert r.returncode == 2 and "r.csv, line 4: byte 0xe9 is not utf-8 text, though the file's other" in r.stderr
    assert "--encoding latin-1" not in r.stderr
