"""Datasets in and out, the tool layer around cikgrec.py (which it imports; never the reverse).

    prepare       your own raw files (CSV, TSV, `::` as MovieLens', whitespace, RecBole's atomic
                  files; any encoding) -> a dataset folder in the published format: train.txt,
                  test.txt, the id lists, kg_final.txt, stats.md
    stats         the paper's Table 2 for a dataset folder
    check_dataset the checks of a dataset folder that need more than one line (ids against the id
                  lists, ids without large gaps) and its notes; load_checked = them + load_dataset
    download      the published datasets from the authors' repository, verified by git blob id

    python cikgrec_cli.py prepare --interactions ratings.csv --items books.csv --kg kg.csv --name mine
    python cikgrec_cli.py prepare --recbole dataset/ml-100k --name ml100k
    python cikgrec_cli.py stats --dataset mine
    python cikgrec_cli.py download --dataset book-crossing --data-dir data
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import itertools
import math
import os
import unicodedata
import urllib.request
from pathlib import Path

import numpy as np

from cikgrec import DataError, SettingsError, int_rows, load_dataset, log, read_id_list
from llm_interests import check_dense, item_title

# ----------------------------------------------------------------------------------------------
# The checks of a dataset folder that need more than one line
# ----------------------------------------------------------------------------------------------
def dataset_folder(folder) -> Path:
    """The dataset folder as a Path; DataError when it does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, 0, "dataset folder not found (run `make data`, or set --data-dir)")
    return folder


def list_size(path) -> int | None:
    """Rows of an id list (cikgrec.read_id_list; user_list.txt, entity_list.txt, relation_list.txt).
    None when the file does not exist. Raises DataError as read_id_list."""
    path = Path(path)
    return len(read_id_list(path)) if path.exists() else None


def check_dataset(folder) -> list:
    """The checks of a dataset folder beyond cikgrec.load_dataset's line-by-line ones, run before
    it (a user id of 10 million would otherwise cost a list of 10 million users): user, entity and
    relation ids inside user_list.txt, entity_list.txt and relation_list.txt where those exist,
    and numbered 0, 1, 2, ... without large gaps where they do not. Returns notes: lines that
    repeat the user of an earlier line (items merged; identical repeated lines are no news) and
    test items that are also training items of the same user. Raises DataError naming file, line
    and value."""
    folder = dataset_folder(folder)
    items_path = folder / "item_list.txt"
    n_items = len(read_id_list(items_path, "org_id remap_id name")) if items_path.exists() else None
    if n_items == 0:
        raise DataError(items_path, 0, "the file is empty")
    users, entities, relations = (list_size(folder / f) for f in ("user_list.txt", "entity_list.txt",
                                                                  "relation_list.txt"))
    notes, items_of = [], {}
    for name in ("train.txt", "test.txt"):
        path, first_line, merged = folder / name, {}, []
        items_of[name] = pairs = {}
        for no, values in int_rows(path):
            user = values[0]
            if users is not None and user >= users:
                raise DataError(path, no, f"user id {user} out of range: user_list.txt has {users} users")
            if user in first_line and first_line[user][1] != values:
                merged.append((no, user, first_line[user][0]))
            first_line.setdefault(user, (no, values))
            pairs.setdefault(user, set()).update(values[1:])
        if merged:
            examples = "; ".join(f"line {no}: user {u} also on line {first}" for no, u, first in merged[:3])
            notes.append(f"{path}: {len(merged)} lines repeat the user of an earlier line; items merged "
                         f"(e.g. {examples})")
    for what, listed in (("user", users), ("item", n_items)):
        if listed:
            continue
        ids = {f: set(d) if what == "user" else {i for v in d.values() for i in v} for f, d in items_of.items()}
        worst = max(ids, key=lambda f: max(ids[f], default=-1))  # the file with the largest id
        check_dense(folder / worst, what, ids["train.txt"] | ids["test.txt"])
    train, test = items_of["train.txt"], items_of["test.txt"]
    overlap = sum(len(test[u] & train.get(u, set())) for u in test)
    if overlap:
        notes.append(f"{overlap} test items are also training items of the same user: they are "
                     "excluded from ranking and can never be hit")
    kg_path, seen = folder / "kg_final.txt", set()
    if kg_path.is_file():
        for no, (h, r, t) in int_rows(kg_path, 3):
            if entities is not None and max(h, t) >= entities:
                raise DataError(kg_path, no, f"entity id {max(h, t)} out of range: entity_list.txt has "
                                             f"{entities} entities")
            if relations is not None and r >= relations:
                raise DataError(kg_path, no, f"relation id {r} out of range: relation_list.txt has "
                                             f"{relations} relations")
            seen.update((h, t))
        if entities is None:
            check_dense(kg_path, "entity", seen | set(range(n_items or 0)))
    return notes


def load_checked(folder, interests_file=None, name: str = "", with_interests: bool = True):
    """cikgrec.load_dataset after check_dataset, its notes first in the Dataset's warnings."""
    notes = check_dataset(folder)
    ds = load_dataset(folder, interests_file, name, with_interests)
    ds.warnings[:0] = notes
    return ds


# ----------------------------------------------------------------------------------------------
# Your own data: prepare (raw files -> the published format) and stats (the paper's Table 2)
# ----------------------------------------------------------------------------------------------
PREPARED_FILES = ("train.txt", "test.txt", "item_list.txt", "user_list.txt", "kg_final.txt", "entity_list.txt",
                  "relation_list.txt", "stats.md")
SEPARATORS = {"tab": "\t", "comma": ",", "semicolon": ";", "space": None}
RECBOLE_TYPES = ("token", "float", "token_seq", "float_seq")  # a RecBole header field is `name:type`
RECBOLE_FILES = {"interactions": ".inter", "items": ".item", "kg": ".kg", "link": ".link"}
# The header names a column is known by without a --*-col option: lower case, without `_`, `-`,
# `.`, spaces and a RecBole `:type` (userId, user_id:token, User-ID -> userid).
COLUMN_NAMES = {"user": ("user", "userid", "uid"),
                "item": ("item", "itemid", "iid", "movieid", "bookid", "isbn", "productid", "asin"),
                "rating": ("rating", "score", "stars"), "timestamp": ("timestamp", "time", "ts"),
                "name": ("name", "title", "itemname", "itemtitle"), "head": ("head", "headid"),
                "relation": ("relation", "relationid"), "tail": ("tail", "tailid"), "entity": ("entity", "entityid")}
OPTIONS = {"user": "--user-col", "item": "--item-col", "rating": "--rating-col", "timestamp": "--time-col",
           "name": "--name-col", "head": "--head-col", "relation": "--relation-col", "tail": "--tail-col"}


def _delimiter(sep: str, first: str):
    """The field separator: None for runs of whitespace, else the literal string. sep: "auto" (tab
    if line 1 has one, else `::`, comma, semicolon, whitespace), a key of SEPARATORS, `\\t`, or
    any literal (`::`, `|`)."""
    if sep == "auto":
        return next((d for d in ("\t", "::", ",", ";") if d in first), None)
    return SEPARATORS[sep] if sep in SEPARATORS else {"\\t": "\t"}.get(sep, sep)


def check_format(sep: str, encoding: str, header: str) -> None:
    """SettingsError for a --sep that cannot separate fields, an unknown --encoding or --header."""
    if sep != "auto" and sep not in SEPARATORS and (not sep or any(c in sep for c in "\r\n\"") or sep.isalnum()):
        raise SettingsError(f"--sep must be auto, {', '.join(SEPARATORS)} or a literal separator such as '::' "
                            f"or '|', got {sep!r}")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise SettingsError(f"--encoding {encoding}: not an encoding Python knows (e.g. utf-8, latin-1, cp1252)") from None
    if header not in ("auto", "yes", "no"):
        raise SettingsError(f"--header must be auto, yes or no, got {header!r}")


def raw_rows(path, sep: str = "auto", rest_after: int = 0, encoding: str = "utf-8", quoted: bool = True):
    """Yield (line number, fields) of a raw CSV, TSV, `::`-separated or whitespace-separated file
    (blank lines skipped, fields stripped, a byte-order mark accepted).

    sep: see _delimiter. A one-character separator honours CSV quoting unless quoted is False
    (RecBole's files); a longer one splits plainly. rest_after (whitespace files): split at most
    that many times, so the last field keeps its spaces (an item's name). encoding: the files'
    text encoding; a byte it cannot decode is a DataError naming the line and the byte (never a
    replacement character). Raises DataError on a missing or unreadable file and on one with no
    data line."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, 0, "is a folder, not a file")
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        f = open(path, encoding=codec, errors="strict", newline="")
    except FileNotFoundError:
        raise DataError(path, 0, "file not found") from None
    except OSError as e:
        raise DataError(path, 0, f"cannot read it ({e.strerror})") from None
    seen = False
    try:
        with f:
            first = next((line for line in f if line.strip()), "")
            f.seek(0)
            delimiter = _delimiter(sep, first.lstrip("\ufeff"))
            if delimiter is None or len(delimiter) > 1 or not quoted:
                numbered = ((no, line.rstrip("\r\n")) for no, line in enumerate(f, 1))
                rows = ((no, line.split(None, rest_after) if rest_after else line.split()) if delimiter is None
                        else (no, line.split(delimiter)) for no, line in numbered)
            else:
                reader = csv.reader(f, delimiter=delimiter)
                rows = ((reader.line_num, fields) for fields in reader)
            for no, fields in rows:
                fields = [x.strip() for x in fields]
                if fields and not seen:
                    fields[0] = fields[0].lstrip("\ufeff").strip()
                if any(fields):
                    seen = True
                    yield no, fields
    except UnicodeDecodeError:
        raise _undecodable(path, encoding, codec) from None
    if not seen:
        raise DataError(path, 0, "the file is empty")


def _undecodable(path: Path, encoding: str, codec: str) -> DataError:
    """The DataError for a file that `codec` cannot decode: the first line and bytes it fails at."""
    decoder, no, bad = codecs.getincrementaldecoder(codec)(), 0, b""
    with open(path, "rb") as f:
        try:
            for no, raw in enumerate(f, 1):
                decoder.decode(raw)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:
            bad = e.object[e.start:e.end]
    shown = " ".join(f"0x{b:02x}" for b in bad[:4]) or "a byte"
    text = path.read_bytes().decode(codec, errors="replace")
    if codec.replace("-", "").lower() in ("utf8", "utf8sig") and any(ord(c) > 127 and c != "\ufffd" for c in text):
        # valid UTF-8 beside the bad bytes: latin-1 would misread those characters without a word
        return DataError(path, no, f"byte {shown} is not {encoding} text, though the file's other non-ASCII "
                                   "characters are: a damaged line? Fix it (another --encoding would misread the rest)")
    return DataError(path, no, f"byte {shown} is not {encoding} text: give the file's encoding, e.g. "
                               "--encoding latin-1 (or cp1252)")


def _typed(text: str) -> bool:
    """Whether a header field is a RecBole typed name (`item_id:token`, `rating:float`)."""
    name, _, kind = text.rpartition(":")
    return bool(name) and kind in RECBOLE_TYPES


def _bare(text: str) -> str:
    """A header field as COLUMN_NAMES knows it: without a RecBole `:type`, lower case, without `_-. `."""
    name = text.rpartition(":")[0] if _typed(text) else text
    return "".join(c for c in name.lower() if c not in "_-. ")


def _names(text: str, role: str, given: str, loose: bool = False) -> bool:
    """Whether header field `text` names the `role` column given as `given` (a --*-col value). A
    name of its own matches itself (case and a RecBole `:type` aside); the role's own name matches
    COLUMN_NAMES, and with loose a name column is any whose name says title or name."""
    if given.lower() != role:
        return text.lower() == given.lower() or _typed(text) and text.rpartition(":")[0].lower() == given.lower()
    bare = _bare(text)
    if loose:
        return role == "name" and ("title" in bare or "name" in bare) or role == "rating" and bare.endswith("rating")
    return bare in COLUMN_NAMES.get(role, (role,))


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _is_header(path, first: list, below: list, spec: dict, header: str | None, notes: list) -> bool:
    """Whether line 1 (`first`) of a raw file is a header. It is when a field names one of the
    columns in `spec` or is a RecBole typed name (`item_id:token`), whatever --header says; else
    header "yes"/"no" decides, and "auto" or None guesses from the lines `below`: a header holds no
    number, and holds names where the lines below hold numbers. A guess is told in `notes`, with
    what changes it: --header for the interactions file (header not None), and for the other files
    (header None: --header is not theirs) a header line naming the columns or the --*-col options."""
    shown = "(" + ", ".join(repr(x[:30]) for x in first[:4]) + (", ..." if len(first) > 4 else "") + ")"
    if any(_typed(x) for x in first) or any(
            _names(x, role, str(v)) for role, v in spec.items() if not str(v).isdigit() for x in first):
        if header == "no":
            notes.append(f"{path}: line 1 {shown} names the columns: read as a header although --header no")
        return True
    if header in ("yes", "no"):
        return header == "yes"
    options = [OPTIONS[role] for role in spec] if all(role in OPTIONS for role in spec) else []  # not the link's
    if header is None:
        if_data = f"if it is data, add a first line naming the columns ({', '.join(spec)})"
        if_header = (f"if it is a header, name its columns with {', '.join(options)}" if options else
                     f"if it is a header, it must name the columns {' and '.join(spec)}")
    else:
        if_data, if_header = "--header no if it is data", "--header yes if it is a header"
    if any(_is_number(x) for x in first):
        return False
    if below and any(all(n < len(f) and _is_number(f[n]) for f in below) for n in range(len(first))):
        notes.append(f"{path}: line 1 {shown} read as a header: the lines below hold numbers where it holds "
                     f"names ({if_data})")
        return True
    notes.append(f"{path}: line 1 {shown} read as data: it names no column and looks like the lines below "
                 f"({if_header})")
    return False


def _columns(path, first: list, spec: dict, required: tuple, has_header: bool) -> dict:
    """Where each column of a raw file is: {role: 0-based index or None}. spec: {role: a header
    name, a 1-based position as digits, or "none" (not read; roles not in `required` only)};
    roles not in `required` may be absent (index None). A header is read by name (_names); without
    one, or with a header that names no column, roles given by their own name take the order of
    `spec` (user, item, rating, timestamp: positions 1, 2, 3, 4). The name column: one that says
    title before one that says name. Raises DataError naming the file and the missing column, and
    the option that names it, and naming both options where two roles would read one column."""
    def how(role):
        return (f"name the {role} column with {OPTIONS[role]} NAME or a position" if role in OPTIONS else
                f"its columns are {', '.join(spec)} (a header naming them, or that order without one)")
    named = has_header and any(_names(x, role, str(v)) for role, v in spec.items() if not str(v).isdigit()
                               for x in first)
    where = {}
    for pos, (role, v) in enumerate(spec.items()):
        v = str(v)
        hits = [n for n, x in enumerate(first) if _names(x, role, v)] or [
            n for n, x in enumerate(first) if _names(x, role, v, loose=True)]
        if role == "name":  # a column that says title before one that says name (track_title, artist_name)
            hits.sort(key=lambda n: "title" not in _bare(first[n]))
        if v.lower() == "none" and role not in required:
            where[role] = None
        elif v.isdigit():
            if int(v) < 1:
                raise DataError(path, 0, f"column positions count from 1, got {role} column {v}")
            where[role] = int(v) - 1
        elif has_header and hits:
            where[role] = hits[0]
        elif has_header and (named or v.lower() != role):
            if role in required or v.lower() != role:
                raise DataError(path, 1, f"no column {v!r} in the header (columns: {', '.join(first)[:200]}); "
                                         + how(role))
            where[role] = None
        elif v.lower() == role:  # the role's own name, no header naming columns: the order of spec
            where[role] = pos if role in required or pos < len(first) else None
        else:
            raise DataError(path, 1, f"the {role} column is named {v!r}, but the first line is not a header "
                                     f"naming it ({', '.join(first)[:120]!r}); give its position instead")
    read_by = {}
    for role, n in where.items():
        if n is not None and read_by.setdefault(n, role) != role:
            other = read_by[n]
            both = " and ".join(f"{OPTIONS.get(r, f'the {r} column')} ({spec[r]})" for r in (other, role))
            named = f" ({first[n][:40]!r})" if has_header and n < len(first) else ""
            raise DataError(path, 1 if has_header else 0, f"{both} both read column {n + 1}{named}: give each "
                                                         "its own column")
    return where


def _table(path, spec: dict, required: tuple, fmt: dict, notes: list, rest_after: int = 0):
    """Open a raw file: ({role: column index or None} as _columns, its data rows (line number,
    fields) without the header). fmt: header ("auto", "yes", "no", or None where --header does not
    apply: _is_header), sep, encoding, quoted (raw_rows)."""
    path = Path(path)
    rows = raw_rows(path, fmt["sep"], rest_after, fmt["encoding"], fmt.get("quoted", True))
    head = list(itertools.islice(rows, 21))  # line 1 and up to 20 lines below it, to tell a header
    first = head[0][1]
    has_header = _is_header(path, first, [f for _, f in head[1:]], spec, fmt.get("header"), notes)
    where = _columns(path, first, spec, required, has_header)
    return where, itertools.chain(head[1:] if has_header else head, rows)


LIKELY_SEPARATORS = (("\t", "tab"), ("::", "'::'"), ("|", "'|'"), (";", "';'"), (":", "':'"), (",", "','"))


def _values(path, no: int, fields: list, where: dict) -> dict:
    """{role: field} of a data row; DataError when the row is too short for its columns (with a
    hint naming --sep where the row's fields hold a likely separator: LIKELY_SEPARATORS)."""
    width = 1 + max(v for v in where.values() if v is not None)
    if len(fields) < width:
        roles = ", ".join(r for r, v in where.items() if v is not None)
        sep = next((shown for s, shown in LIKELY_SEPARATORS if any(s in x for x in fields)), None)
        hint = f" (is the file separated by something else? --sep {sep})" if sep else ""
        raise DataError(path, no, f"expected at least {width} fields ({roles}), got {len(fields)}: "
                                  f"{','.join(fields)[:80]!r}{hint}")
    return {role: None if v is None else fields[v] for role, v in where.items()}


def _number(path, no: int, what: str, text: str) -> float:
    """A rating or timestamp as a finite float; DataError naming file, line and value otherwise
    (an empty one names the option that leaves the column out)."""
    if not text:
        raise DataError(path, no, f"empty {what} ({OPTIONS[what]} none ignores the {what}s)")
    v = float(text) if _is_number(text) else math.nan
    if not math.isfinite(v):
        raise DataError(path, no, f"the {what} must be a number, got {text[:40]!r}")
    return v


def _id(path, no: int, what: str, text: str, kind: str = " id") -> str:
    """An original id: not empty, and without a control character (NUL, ...; a tab is whitespace:
    whitespace inside is kept, and the id lists write it as `_`). DataError naming file, line, the
    id and the character otherwise. kind: how the message calls it (" id"; "" for a relation, " name"
    for an item's name)."""
    if not text:
        raise DataError(path, no, f"empty {what}{kind}")
    bad = next((c for c in text if c != "\t" and unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise DataError(path, no, f"{what}{kind} {text[:40]!r} holds a control character U+{ord(bad):04X} "
                                  "(is the file binary, or in another --encoding?)")
    return text


def _listed(ids: list, what: str, path, notes: list) -> list:
    """The ids as the id lists write them: each run of whitespace as `_`, with a note. Raises
    DataError when two ids would be written alike."""
    written, seen, spaced = [], {}, []
    for x in ids:
        w = "_".join(x.split())
        if seen.setdefault(w, x) != x:
            raise DataError(path, 0, f"{what} ids {seen[w]!r} and {x!r} would both be {w!r} in {what}_list.txt "
                                     "(whitespace is written as '_'): rename one")
        if w != x:
            spaced.append(x)
        written.append(w)
    if spaced:
        notes.append(f"{len(spaced)} {what} id{' holds' if len(spaced) == 1 else 's hold'} whitespace, written "
                     f"with '_' in {what}_list.txt (e.g. {spaced[0]!r} -> {'_'.join(spaced[0].split())!r})")
    return written


def n_test_items(n: int) -> int:
    """How many of a user's n interactions go to test in prepare's 8:2 split: round-half-up(n/5),
    at most n-1 (n=1 -> 0, n=5 -> 1, n=12 -> 2, n=13 -> 3)."""
    return max(0, min(int(math.floor(n / 5 + 0.5)), n - 1))


def recbole_files(base) -> dict:
    """RecBole's atomic files of one dataset: {"interactions": NAME.inter, "items": NAME.item,
    "kg": NAME.kg, "link": NAME.link} (None where absent; only .inter is required). base: DIR/NAME,
    DIR/NAME.inter, or the folder DIR/NAME holding NAME.inter (RecBole's own layout). Raises
    DataError when NAME.inter is not there."""
    base = Path(base)
    if base.is_dir() and not base.with_suffix(".inter").is_file():
        base = base / base.name
    elif base.suffix in RECBOLE_FILES.values():
        base = base.with_suffix("")
    files = {k: base.with_name(base.name + ext) for k, ext in RECBOLE_FILES.items()}
    if not files["interactions"].is_file():
        raise DataError(files["interactions"], 0, "file not found (--recbole DIR/NAME reads NAME.inter and, where "
                                                  "they exist, NAME.item, NAME.kg and NAME.link beside it)")
    return {k: p if k == "interactions" or p.is_file() else None for k, p in files.items()}


def _check_target(folder: Path, flag: str = "--data-dir") -> None:
    """The folder (given by option `flag`) can be made and written (checked before anything is
    read, and nothing made): SettingsError naming it otherwise."""
    for parent in reversed((folder, *folder.parents)):
        if parent.exists() and not parent.is_dir():
            raise SettingsError(f"{flag}: cannot write {folder}: {parent} is a file, not a folder")
    nearest = next(p for p in (folder, *folder.parents) if p.exists())
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise SettingsError(f"{flag}: cannot write {folder}: {nearest} is not writable (permission denied)")


def prepare(interactions, name: str, data_dir="data", items=None, kg=None, user_col="user", item_col="item",
            rating_col="rating", time_col="timestamp", name_col="name", header: str = "auto", sep: str = "auto",
            min_rating: float | None = None, min_user_interactions: int = 5, split_seed: int = 0,
            force: bool = False, link=None, encoding: str = "utf-8", head_col="head", relation_col="relation",
            tail_col="tail", recbole: bool = False) -> dict:
    """Raw files -> a dataset folder `data_dir/name/` in the published format, the paper's way.

    interactions: CSV/TSV/`::`/whitespace file with columns user, item and optionally rating and
    timestamp (by header name, or by position: *_col "3" is the third column; rating_col and
    time_col "none" leave the column out). items: optional file (item, name). kg: optional
    triples file (head, relation, tail; head_col etc. as above). link: optional file (item,
    entity): a KG head or tail that is a linked entity is that item, any other value an entity.
    Without a link, a head or tail equal to an item's original id is that item, any other value an
    entity (entities are numbered after the items). recbole: the files are RecBole atomic files
    (tab-separated, no CSV quoting; recbole_files finds them). Every file: a first line that names
    the columns (or holds RecBole typed names) is a header; where that cannot be told, header
    "yes"/"no" decides for the interactions file (only), and "auto" (and every other file) guesses
    with a note (_is_header). sep: "auto", a key of SEPARATORS or
    any literal ("::"); encoding: the files' text encoding (undecodable bytes are an error).
    Processing: duplicate (user, item) pairs merged (highest rating, earliest time); with
    min_rating, only pairs rated >= min_rating kept; users with fewer than min_user_interactions
    pairs dropped; each user's pairs split 8:2 (n_test_items), the latest to test where
    timestamps exist, else at random (split_seed). Items are written in time order where
    timestamps exist (else file order); users and items are numbered in order of first
    appearance; an id with whitespace is written with `_` (_listed). Writes train.txt, test.txt,
    item_list.txt, user_list.txt, entity_list.txt, relation_list.txt, kg_final.txt (with a KG)
    and stats.md. Returns the stats (dataset_stats, with prepare's notes first in "warnings") plus
    "processing" (what each rule removed). Raises DataError (file, line, value) on bad input, an
    empty result or a KG that touches no item, and SettingsError for an existing folder without
    force or one that cannot be written, an empty name or data_dir; nothing is written then.
    """
    if min_user_interactions < 1:
        raise SettingsError(f"--min-user-interactions must be at least 1, got {min_user_interactions}")
    check_format(sep, encoding, header)
    if not name.strip() or any(c in name for c in "/\\") or name in (".", ".."):
        raise SettingsError(f"--name must be a folder name, got {name!r}")
    if not str(data_dir).strip():  # Path("") is the current folder
        raise SettingsError(f"--data-dir must name a folder, got {str(data_dir)!r}")
    if min_rating is not None and str(rating_col).lower() == "none":
        raise SettingsError("--min-rating needs ratings: not with --rating-col none")
    folder = Path(data_dir) / name
    present = [f for f in PREPARED_FILES + ("user_interest_clustered.txt",) if (folder / f).exists()]
    if present and not force:
        raise SettingsError(f"{folder} already holds a dataset ({', '.join(present[:3])}): give --force to replace "
                            "it, or another --name")
    _check_target(folder)
    fmt, notes = {"header": header, "sep": sep, "encoding": encoding, "quoted": not recbole}, []
    path = Path(interactions)
    spec = {"user": user_col, "item": item_col, "rating": rating_col, "timestamp": time_col}
    where, rows = _table(path, spec, ("user", "item"), fmt, notes)
    if min_rating is not None and where["rating"] is None:
        raise DataError(path, 0, f"--min-rating {min_rating:g} needs a rating column, and there is none "
                                 "(--rating-col names it)")
    pairs: dict[tuple, list] = {}  # (user, item) -> [rating, time, first order]
    lines = 0
    for no, fields in rows:
        v = _values(path, no, fields, where)
        u, i = _id(path, no, "user", v["user"]), _id(path, no, "item", v["item"])
        r = _number(path, no, "rating", v["rating"]) if v["rating"] is not None else None
        t = _number(path, no, "timestamp", v["timestamp"]) if v["timestamp"] is not None else None
        lines += 1
        known = pairs.get((u, i))
        if known is None:
            pairs[(u, i)] = [r, t, lines]
        else:
            if r is not None:
                known[0] = max(known[0], r)
            if t is not None:
                known[1] = min(known[1], t)
    all_items = {i for _, i in pairs}
    users_read = len({u for u, _ in pairs})
    kept = pairs if min_rating is None else {k: v for k, v in pairs.items() if v[0] >= min_rating}
    per_user: dict[str, list] = {}
    for (u, i), (r, t, order) in kept.items():
        per_user.setdefault(u, []).append((t if t is not None else 0.0, order, i))
    by_rating = users_read - len(per_user)
    short = [u for u, v in per_user.items() if len(v) < min_user_interactions]
    for u in short:
        del per_user[u]
    processing = {"lines": lines, "pairs": len(pairs), "duplicates_merged": lines - len(pairs),
                  "pairs_below_min_rating": len(pairs) - len(kept), "users_read": users_read,
                  "users_removed_by_min_rating": by_rating, "users_removed_by_min_interactions": len(short),
                  "min_rating": min_rating, "min_user_interactions": min_user_interactions,
                  "split": "by time" if where["timestamp"] is not None else f"random (split seed {split_seed})"}
    if not per_user:
        rules = ([f"{by_rating} had no rating >= {min_rating:g} (--min-rating)"] if min_rating is not None else []) + \
                [f"{len(short)} had fewer than {min_user_interactions} interactions (--min-user-interactions)"]
        raise DataError(path, 0, f"no user is left after filtering: of {users_read} users, " + "; ".join(rules))
    # dense ids in order of first appearance; each user's items in time order (else file order)
    user_ids = sorted(per_user, key=lambda u: min(o for _, o, _ in per_user[u]))
    rng = np.random.default_rng(split_seed)
    train, test = [], []
    for u in user_ids:
        events = sorted(per_user[u])  # (time, file order, item): time order, ties in file order
        k = n_test_items(len(events))
        if where["timestamp"] is not None:
            chosen = set(range(len(events) - k, len(events)))
        else:
            chosen = set(rng.choice(len(events), size=k, replace=False).tolist()) if k else set()
        train.append([i for n_, (_, _, i) in enumerate(events) if n_ not in chosen])
        test.append([i for n_, (_, _, i) in enumerate(events) if n_ in chosen])
    first_seen = {}
    for (u, i), (_, _, order) in pairs.items():
        if u in per_user and (u, i) in kept and (i not in first_seen or order < first_seen[i]):
            first_seen[i] = order
    item_ids = sorted(first_seen, key=first_seen.get)
    item_index = {i: n_ for n_, i in enumerate(item_ids)}
    other = dict(fmt, header=None)  # --header is the interactions file's; the others go by _is_header's rule
    names = _read_item_names_raw(items, item_col, name_col, other, notes) if items else {}
    linked = _read_link_raw(link, other, notes) if link else None
    kg_spec = {"head": head_col, "relation": relation_col, "tail": tail_col}
    kg_rows, entity_ids, relation_ids, kg_info = (_read_kg_raw(kg, item_index, all_items | set(names), other, notes,
                                                               kg_spec, linked) if kg else ([], [], [], {}))
    processing.update(kg_info)
    users_written = _listed(user_ids, "user", path, notes)
    items_written = _listed(item_ids, "item", path, notes)

    # everything is read and checked: write
    clean = lambda text: " ".join(text.split()) or "None"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in ("user_interest_clustered.txt", "kg_final.txt"):  # with --force: the old data's
            if (folder / stale).exists():
                (folder / stale).unlink()
        _write_lines(folder / "train.txt", [" ".join(map(str, [n_] + [item_index[i] for i in v]))
                                            for n_, v in enumerate(train)])
        _write_lines(folder / "test.txt", [" ".join(map(str, [n_] + [item_index[i] for i in v]))
                                           for n_, v in enumerate(test)])
        _write_lines(folder / "user_list.txt", ["org_id remap_id"] + [f"{u} {n_}" for n_, u in enumerate(users_written)])
        item_rows = [f"{w} {n_} {clean(names.get(i, ''))}" for n_, (i, w) in enumerate(zip(item_ids, items_written))]
        _write_lines(folder / "item_list.txt", ["org_id remap_id item_name"] + item_rows)
        _write_lines(folder / "entity_list.txt", ["org_id remap_id entity_name"] + item_rows
                     + [f"{'_'.join(e.split())} {len(item_ids) + n_} {clean(e)}" for n_, e in enumerate(entity_ids)])
        _write_lines(folder / "relation_list.txt", ["org_id remap_id"]
                     + [f"{'_'.join(r.split())} {n_}" for n_, r in enumerate(relation_ids)])
        if kg_rows:
            _write_lines(folder / "kg_final.txt", [f"{h} {r} {t}" for h, r, t in kg_rows])
        st = dataset_stats(folder)
        st["processing"] = processing
        st["warnings"][:0] = notes
        (folder / "stats.md").write_text(stats_markdown(name, st), encoding="utf-8")
    except OSError as e:
        raise SettingsError(f"--data-dir: cannot write {folder} ({e.strerror or e})") from None
    return st


def _write_lines(path: Path, lines: list) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_item_names_raw(path, item_col, name_col, fmt: dict, notes: list) -> dict:
    """{original item id: name} from a raw items file (item, name; further columns ignored)."""
    path = Path(path)
    spec = {"item": item_col if not str(item_col).isdigit() else "item", "name": name_col}
    where, rows = _table(path, spec, ("item", "name"), fmt, notes, rest_after=1)
    names = {}
    for no, fields in rows:
        v = _values(path, no, fields, where)
        names.setdefault(_id(path, no, "item", v["item"]), v["name"] and _id(path, no, "item", v["name"], " name"))
    return names


def _read_link_raw(path, fmt: dict, notes: list) -> dict:
    """{entity: [its items' original ids]} from a link file (item, entity; RecBole's .link)."""
    path = Path(path)
    where, rows = _table(path, {"item": "item", "entity": "entity"}, ("item", "entity"), fmt, notes)
    linked = {}
    for no, fields in rows:
        v = _values(path, no, fields, where)
        items = linked.setdefault(_id(path, no, "entity", v["entity"]), [])
        if v["item"] not in items:
            items.append(_id(path, no, "item", v["item"]))
    return linked


def _read_kg_raw(path, item_index: dict, item_like: set, fmt: dict, notes: list, spec: dict, linked=None) -> tuple:
    """(triples as dense (head, relation, tail), entity original ids, relation names, counts) from
    a raw KG file. Without `linked`, a head or tail in item_index is that item, one that is an item
    id dropped by the filtering (in item_like) drops its triple, and any other value is an entity.
    With `linked` ({entity: items}, _read_link_raw), a linked entity is its items (its triple is
    dropped when none of them is kept) and any other value is an entity, an item's own id too: a
    note counts those (distinct ids) with the first line holding one."""
    path = Path(path)
    where, rows = _table(path, spec, ("head", "relation", "tail"), fmt, notes)

    def items_of(x):  # the dense items x stands for; [] for an entity; None for items filtered out
        if linked is not None:
            if x not in linked:
                return []
            return [item_index[i] for i in linked[x] if i in item_index] or None
        if x in item_index:
            return [item_index[x]]
        return None if x in item_like else []
    entities, relations, triples, dropped, example, read, touching = {}, {}, set(), 0, None, 0, 0
    unlinked = {}  # with a link: KG ids equal to an item's id but not linked -> the first line holding one
    entity = lambda x: len(item_index) + entities.setdefault(x, len(entities))
    for no, fields in rows:
        v = _values(path, no, fields, where)
        read += 1
        for what in ("head", "relation", "tail"):
            _id(path, no, what, v[what], "")
        h, r, t = v["head"], v["relation"], v["tail"]
        if linked is not None:
            for x in (h, t):
                if x not in linked and (x in item_index or x in item_like):
                    unlinked.setdefault(x, no)
        heads, tails = items_of(h), items_of(t)
        if heads is None or tails is None:
            dropped += 1
            continue
        example = example or (no, h, t)
        touching += bool(heads or tails)
        rel = relations.setdefault(r, len(relations))
        triples.update((a, rel, b) for a in heads or [entity(h)] for b in tails or [entity(t)])
    if not touching:
        where_ = f" (e.g. line {example[0]}: head {example[1][:40]!r}, tail {example[2][:40]!r})" if example else ""
        raise DataError(path, 0, f"no head or tail is one of the items' ids{where_}: the KG would connect to nothing "
                        + ("(the link file maps entities to items: heads and tails must be its entities)" if linked
                           is not None else "(heads and tails that are items must be written as the interactions "
                           "file's item ids, or give a --link file)"))
    if unlinked:
        x, no = next(iter(unlinked.items()))
        many = len(unlinked) > 1
        notes.append(f"{path}: {len(unlinked)} KG {'heads/tails' if many else 'head/tail'} equal{'' if many else 's'} "
                     f"an item's id but {'are' if many else 'is'} not in the link file "
                     f"(e.g. line {no}: {x[:40]!r}): read as entities: with --link only linked entities are items")
    info = {"kg_lines": read, "kg_triples": len(triples), "kg_triples_of_removed_items": dropped}
    return sorted(triples), list(entities), list(relations), info


def dataset_stats(folder) -> dict:
    """The paper's Table 2 for a dataset folder: users, items, interactions (train + test pairs),
    density (interactions / (users x items)), entities (the distinct heads and tails of the KG
    triples, items among them, as the paper counts), relations and triples. Raises DataError as
    load_checked."""
    ds = load_checked(folder, with_interests=True)
    interactions = sum(len(x) for x in ds.train) + sum(len(x) for x in ds.test)
    kg_nodes = np.unique(ds.kg[:, [0, 2]]) if len(ds.kg) else np.zeros(0, dtype=np.int64)
    return {"dataset": ds.name, "users": ds.n_users, "items": ds.n_items, "interactions": interactions,
            "density": interactions / max(ds.n_users * ds.n_items, 1), "entities": len(kg_nodes),
            "entities_that_are_items": int((kg_nodes < ds.n_items).sum()),
            "relations": len(np.unique(ds.kg[:, 1])) if len(ds.kg) else 0, "triples": len(ds.kg),
            "interest_nodes": ds.n_interests,
            "users_with_interests": len(np.unique(ds.interest_edges[:, 0])) if len(ds.interest_edges) else 0,
            "warnings": ds.warnings}


def stats_markdown(name: str, st: dict) -> str:
    """dataset_stats (and prepare's processing, where present) as the rows of the paper's Table 2."""
    lines = [f"# {name}", "", "| dataset | users | items | interactions | density | entities | relations | triples |",
             "|---|---|---|---|---|---|---|---|",
             f"| {name} | {st['users']:,} | {st['items']:,} | {st['interactions']:,} | {100 * st['density']:.2f}% | "
             f"{st['entities']:,} | {st['relations']:,} | {st['triples']:,} |", "",
             f"Entities: the distinct heads and tails of the KG triples ({st['entities_that_are_items']:,} of them items),"
             " as the paper's Table 2 counts them. Interest nodes: "
             f"{st['interest_nodes']:,} ({st['users_with_interests']:,} users have one)."]
    p = st.get("processing")
    if p:
        rating = (f"{p['pairs_below_min_rating']:,} pairs rated below {p['min_rating']:g} dropped "
                  f"(users left without one: {p['users_removed_by_min_rating']:,})" if p["min_rating"] is not None
                  else "no rating filter")
        lines += ["", f"Made by `cikgrec_cli.py prepare` from {p['lines']:,} lines: {p['duplicates_merged']:,} duplicate "
                      f"pairs merged; {rating}; {p['users_removed_by_min_interactions']:,} of {p['users_read']:,} users "
                      f"with fewer than {p['min_user_interactions']} interactions dropped; split 8:2 {p['split']}."]
        if "kg_lines" in p:
            lines.append(f"KG: {p['kg_lines']:,} lines, {p['kg_triples_of_removed_items']:,} of them dropped with their "
                         f"filtered-out items; {p['kg_triples']:,} distinct triples kept.")
    return "\n".join(lines) + "\n"

# ----------------------------------------------------------------------------------------------
# The published datasets: download, verified by git blob id
# ----------------------------------------------------------------------------------------------
DATASETS = ("ml1m", "dbbook2014", "book-crossing")  # the paper's, as the authors published them
DATA_URL = "https://raw.githubusercontent.com/laowangzi/CIKGRec/{commit}/data/{dataset}/{file}"
DATA_COMMIT = "4cd310f605e8857883a508170e6753dcb05c4e98"
DATA_FILES = ("train.txt", "test.txt", "kg_final.txt", "user_interest_clustered.txt", "item_list.txt",
              "entity_list.txt", "relation_list.txt", "user_list.txt")


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
                example = Path(__file__).resolve().parent.parent / "shared" / "data"
                hint = (f", e.g. make train DATA_DIR={example}" if example.is_dir()
                        and example.resolve() != Path(data_dir).resolve() else "")
                raise DataError(path, 0, f"{present}cannot download {url} ({getattr(e, 'reason', e)}); "
                                         f"without network, set DATA_DIR to a folder that has the files "
                                         f"({data_dir} has no verified {name}){hint}") from None
            if git_blob_id(data) != blob:
                raise DataError(path, 0, f"downloaded file does not match its upstream git blob {blob}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)



# ----------------------------------------------------------------------------------------------
# export: our split as RecBole benchmark files
# ----------------------------------------------------------------------------------------------
# RecBole 1.2.1 reads a dataset as atomic files under <data_path>/<name>/: with benchmark_filename
# [train, valid, test] it takes the three .inter files as the split (no split of its own), so a
# RecBole baseline trains, selects and tests on exactly the users and items ours do. Its
# knowledge-based models add .kg (triples) and .link (item -> entity). With benchmark files RecBole
# filters nothing (no k-core, no dropping of unlinked items). docs/reproducing.md has the
# environment and one command per baseline.


def _org_ids(path, n: int) -> list:
    """The original ids of an id list (user_list.txt, item_list.txt) by remap id, or the dense
    ids as text where the file is missing, shorter than n or repeats an id."""
    if Path(path).exists():
        ids = [org for org, _ in read_id_list(path)]
        if len(ids) >= n and len(set(ids[:n])) == n:
            return ids[:n]
        log(f"note: {path}: {'repeated ids' if len(ids) >= n else f'{len(ids)} rows for {n} ids'}; "
            "the export uses the dense ids")
    return [str(i) for i in range(n)]


def _atomic(path: Path, header: list, rows) -> int:
    """Write one RecBole atomic file: a typed, tab-separated header line, then the rows. Returns the
    number of rows."""
    lines = ["\t".join(header)] + ["\t".join(map(str, r)) for r in rows]
    _write_lines(path, lines)
    return len(lines) - 1


def _pairs(lists, users: list, items: list):
    for u, its in enumerate(lists):
        for i in its:
            yield users[u], items[int(i)]


def recbole_config(name: str, data_path, has_kg: bool) -> str:
    """The RecBole config (YAML) of an export: the benchmark files, the field names, and our
    dataset's embedding size, learning rate and batch size (cikgrec.make_settings), full-sort
    evaluation by Recall/NDCG@20/50/100, early stopping on NDCG@50 with our patience."""
    import json
    from cikgrec import make_settings
    s = make_settings(dataset=name)
    kg = ("  kg: [head_id, relation_id, tail_id]\n  link: [item_id, entity_id]\n" if has_kg else "")
    return (f"# RecBole 1.2.1 config of `python cikgrec_cli.py export --format recbole --dataset {name}`.\n"
            "# Run a baseline with it as docs/reproducing.md shows; data_path is where the export was written.\n"
            f"data_path: {json.dumps(str(Path(data_path).resolve()))}\n"  # a JSON string is a YAML string
            f"dataset: {json.dumps(name)}\n"
            "benchmark_filename: [train, valid, test]\n"
            "field_separator: \"\\t\"\n"
            "USER_ID_FIELD: user_id\nITEM_ID_FIELD: item_id\nRATING_FIELD: ~\nTIME_FIELD: ~\n"
            "HEAD_ENTITY_ID_FIELD: head_id\nTAIL_ENTITY_ID_FIELD: tail_id\n"
            "RELATION_ID_FIELD: relation_id\nENTITY_ID_FIELD: entity_id\n"
            "load_col:\n  inter: [user_id, item_id]\n" + kg +
            f"embedding_size: {s.dim}\n"
            f"learning_rate: {s.lr:g}\n"
            f"train_batch_size: {s.batch_size}\n"
            f"stopping_step: {s.patience}\n"
            f"seed: {s.seed}\n"
            "eval_args: {split: {RS: [0.8, 0.1, 0.1]}, group_by: user, order: RO, mode: full}\n"
            "metrics: [Recall, NDCG]\n"
            "topk: [20, 50, 100]\n"
            "valid_metric: NDCG@50\n"
            "show_progress: False\n")


def export_recbole(name: str, data_dir="data", out="recbole", split_seed: int = 0, force: bool = False) -> dict:
    """Write dataset `name` of data_dir as RecBole benchmark files under out/<name>/:
    <name>.train.inter and <name>.valid.inter (our validation carve-out,
    cikgrec.split_validation(train, split_seed)), <name>.test.inter (test.txt), <name>.item (titles),
    <name>.kg and <name>.link where the dataset has a KG (.link lists only the items whose entity is
    in a triple: RecBole fails on a linked entity that no triple holds), <name>.yaml (the config).
    Users and items keep their original ids (user_list.txt, item_list.txt) where those exist;
    entities and relations keep the dense ids of kg_final.txt. Interest edges are not exported.
    Refuses a non-empty out/<name>/ unless force, and the dataset's own folder always.
    Returns the folder, the rows written by file, the items in the KG and the dataset's notes.
    Raises DataError, SettingsError."""
    from cikgrec import split_validation
    if split_seed < 0:
        raise SettingsError(f"--split-seed must be >= 0, got {split_seed}")
    folder = dataset_folder(Path(data_dir) / name)
    if not str(out).strip():
        raise SettingsError("--out is empty: give the folder to export to")
    target = Path(out) / name
    if target.exists() and not target.is_dir():
        raise SettingsError(f"--out {out}: {target} is a file, not a folder")
    _check_target(target, "--out")
    if target.resolve() == folder.resolve():
        raise SettingsError(f"--out {out}: {target} is the dataset's own folder; export to another folder")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise SettingsError(f"{target} exists and is not empty: --force replaces its files")
    ds = load_checked(folder, with_interests=False)
    users = _org_ids(folder / "user_list.txt", ds.n_users)
    items = _org_ids(folder / "item_list.txt", ds.n_items)
    train, valid = split_validation(ds.train, split_seed)
    target.mkdir(parents=True, exist_ok=True)
    inter = ["user_id:token", "item_id:token"]
    counts = {f"{part}.inter": _atomic(target / f"{name}.{part}.inter", inter, _pairs(lists, users, items))
              for part, lists in (("train", train), ("valid", valid), ("test", ds.test))}
    titles = [item_title(t).replace("\t", " ") for t in ds.item_names] or [""] * ds.n_items
    counts["item"] = _atomic(target / f"{name}.item", ["item_id:token", "item_title:token_seq"],
                             zip(items, titles))
    has_kg = len(ds.kg) > 0
    in_kg = np.zeros(0, dtype=np.int64)
    for stale in (".kg", ".link"):
        (target / f"{name}{stale}").unlink(missing_ok=True)
    if has_kg:
        counts["kg"] = _atomic(target / f"{name}.kg", ["head_id:token", "relation_id:token", "tail_id:token"],
                               ds.kg.tolist())
        in_kg = np.intersect1d(np.unique(ds.kg[:, [0, 2]]), np.arange(ds.n_items))
        counts["link"] = _atomic(target / f"{name}.link", ["item_id:token", "entity_id:token"],
                                 ((items[i], i) for i in in_kg.tolist()))
    (target / f"{name}.yaml").write_text(recbole_config(name, out, has_kg))
    return {"folder": str(target), "counts": counts, "items_in_kg": len(in_kg), "n_items": ds.n_items,
            "warnings": ds.warnings}
