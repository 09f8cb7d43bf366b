"""CIKGRec, first half: infer user interests with an LLM (Eq. 1) and structure them into
interest nodes by text clustering (Eq. 2). Paper section "LLM-based CIKG Construction".

Read from the top. First the method, in the order the data flows:
  prompts (P_u of Eq. 1: the user's last 30 named training items, titles in brackets) ->
  parsing an answer (A_u) into interest pieces (reasoning stripped, lists in any shape) ->
  cleaning the pieces into phrases -> TF-IDF vectors of the phrases -> k-means into kappa
  clusters (f_C of Eq. 2) -> filtering the clusters (too common, or one user's only) ->
  interest edges (u, Has Interest, j), written as user_interest_clustered.txt.
Then, below a banner, the tool that gets the answers out of real servers: the client (one
request gives an answer, a refusal or a failure; retries and waits), the runner (thread pool,
answers file, resume, progress, cost preview), batch export/import, the coverage file, the
benchmark and the command line.

    python llm_interests.py infer   --dataset book-crossing --data-dir ../shared/data [--dry-run]
    python llm_interests.py cluster --dataset book-crossing --data-dir ../shared/data
    python llm_interests.py batch-export --dataset ml1m      (OpenAI Batch API / vllm run-batch input)
    python llm_interests.py batch-import FILE --dataset ml1m (their output -> answers file)
    python llm_interests.py bench                            (TF-IDF and k-means timing)
    python llm_interests.py infer-new --history FILE --dataset ml1m --clusters interests/ml1m --out new.txt
                                       (new users' interests, placed in a run's clusters: its interest ids)

Everything is written under interests/<dataset>/ (--out-dir), never into the dataset folder.
The LLM is any OpenAI-compatible chat-completions server: $OPENAI_BASE_URL (default
https://api.openai.com/v1), $OPENAI_API_KEY (may be unset for a local server), $LLM_MODEL.
docs/llm-servers.md, in the repository, tells how OpenAI, vLLM, llama.cpp, Ollama and
gateways behave with it.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import email.utils
import hashlib
import json
import math
import os
import random
import re
import sys
import threading
import time
import unicodedata
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import requests
import scipy.sparse as sp

import cikgrec  # shared: DataError, the dataset readers (read_id_list, read_user_items, split_validation, ...)

DataError = cikgrec.DataError

# ----------------------------------------------------------------------------------------------
# Settings of the method
# ----------------------------------------------------------------------------------------------
ITEM_WORD = {"ml1m": "movies", "dbbook2014": "books", "book-crossing": "books"}  # --field overrides
# kappa, the number of clusters of Eq. (2). book-crossing: 350, the authors' script. ml1m and
# dbbook2014: their published interest ids span 550 and 544 values, so their kappa was at least
# that; we use 550 for both.
DEFAULT_K = {"ml1m": 550, "dbbook2014": 550, "book-crossing": 350}
N_LAST_ITEMS = 30  # items per prompt: the user's last 30 named training items
MAX_ANSWER_CHARS = 600  # an answer longer than this is not "at most five short interests"
MIN_PHRASE_CHARS, MAX_PHRASE_CHARS = 2, 50  # cleaned phrases outside this range are dropped
CLUSTER_FILES = ("user_interest_clustered.txt", "interest_clusters.tsv",  # what `cluster` writes
                 "user_interest_clustered.coverage.json", "user_interest_clustered.model.npz")

SYSTEM_PROMPT = (
    "You are shown the {field} that an anonymous user liked. Infer the user's interests from "
    "them. Answer with at most five short interests of a few words each, separated by commas, "
    "and nothing else: no numbering, no explanation.")


def say(*parts) -> None:
    """Progress and summaries go to stderr, so stdout stays clean for data (bench prints there)."""
    print(*parts, file=sys.stderr, flush=True)


class InputError(Exception):
    """A setting or an input the command cannot work with (reported in one line, exit code 2)."""


# ----------------------------------------------------------------------------------------------
# Prompts (the P_u of Eq. 1)
# ----------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One user's request: the user id (a dataset user's int; a new user's str, infer-new), the
    item ids in the prompt and the chat messages."""
    user: int | str
    items: list
    messages: list


def item_title(name: str) -> str:
    """The title a prompt shows for an item name (item_list.txt): a DBpedia URI becomes its last path
    segment, URL-decoded, with '_' as spaces (`http://dbpedia.org/resource/Where's_My_Cow%3F` ->
    "Where's My Cow?"); any other name (book-crossing titles) is returned stripped. '' stays ''."""
    name = name.strip()
    if name.startswith(("http://", "https://")):
        return urllib.parse.unquote(name.rstrip("/").rsplit("/", 1)[-1]).replace("_", " ").strip()
    return name


def build_messages(titles: list, field: str) -> list:
    """The chat messages for one user: our system instruction, then the titles in brackets
    joined by ', ' (the authors' format: a system message asking for at most five interests,
    comma-separated, no explanation; a user message "[title 1], [title 2], ...")."""
    liked = ", ".join(f"[{t}]" for t in titles)
    return [{"role": "system", "content": SYSTEM_PROMPT.format(field=field)},
            {"role": "user", "content": f"The {field} this user liked: {liked}"}]


@dataclass
class PromptData:
    """What the prompts are made of (load_prompt_data): training item ids per user, item names."""
    train: list
    item_names: list


def read_item_rows(folder) -> list:
    """The (org_id, name) rows of a dataset folder's item_list.txt (cikgrec.read_id_list), in item
    id order. Raises DataError when the folder or the file does not exist, or the file has no row."""
    if not Path(folder).is_dir():
        raise DataError(folder, 0, "dataset folder not found (run `make data`, or set --data-dir)")
    path = Path(folder) / "item_list.txt"
    if not path.exists():
        raise DataError(path, 0, "not found: the prompts name each user's items by the titles this file holds")
    rows = cikgrec.read_id_list(path, "org_id remap_id name")
    if not rows:
        raise DataError(path, 0, "the file is empty")
    return rows


def check_dense(path: Path, what: str, ids: set) -> None:
    """Ids are numbered 0, 1, 2, ...: one far above the number of distinct ids is a DataError
    naming the first line of `path` that holds it."""
    if ids and max(ids) + 1 > 2 * len(ids) + 1000:
        with cikgrec.open_text(path) as f:
            line = next((no for no, text in enumerate(f, 1) if str(max(ids)) in text.split()), 0)
        raise DataError(path, line, f"{what} id {max(ids)} but only {len(ids)} distinct {what} ids: ids must be "
                                    f"numbered 0, 1, 2, ... without large gaps (or list them in {what}_list.txt)")


def load_prompt_data(folder) -> PromptData:
    """Read what the prompts need and nothing more: train.txt and item_list.txt of a dataset
    folder, checked as cikgrec.load_dataset checks them (item ids against item_list.txt, user
    ids against user_list.txt). kg_final.txt, test.txt and user_interest_clustered.txt are not
    read, so a broken one does not stop `infer` or the batch commands (which regenerate the
    interest file). Raises DataError naming the file, also when item_list.txt is missing."""
    folder = Path(folder)
    names = [name for _, name in read_item_rows(folder)]
    users_path, train_path = folder / "user_list.txt", folder / "train.txt"
    listed_users = len(cikgrec.read_id_list(users_path)) if users_path.exists() else None
    train = cikgrec.read_user_items(train_path, len(names), listed_users)
    if listed_users is None:  # a stray huge id would cost a huge list below
        check_dense(train_path, "user", set(train))
    return PromptData([np.array(train.get(u, []), dtype=np.int64) for u in range(1 + max(train))], names)


def make_jobs(dataset, field: str, split_seed: int = 0, n_last: int = N_LAST_ITEMS):
    """One Job per user with at least one named training item, in user id order.

    The prompt holds the names of the user's last `n_last` training items in train.txt order,
    counted after the validation items are removed (cikgrec.split_validation, same seed as
    training, so no validation or test item ever reaches the LLM) and after items without a
    name are dropped. dataset: a PromptData or a cikgrec.Dataset (.train and .item_names are
    read). Returns (jobs, skipped): skipped lists the users with no named item.
    """
    train_part, _ = cikgrec.split_validation(dataset.train, split_seed)
    return history_jobs(enumerate(train_part), [item_title(n) for n in dataset.item_names],
                        field, n_last)


def history_jobs(histories, titles: list, field: str, n_last: int = N_LAST_ITEMS):
    """(user, item ids in order) pairs -> (jobs, skipped): one Job per user with a named item,
    its prompt the titles of its last `n_last` named items (items without a title dropped
    first); skipped lists the users without one. make_jobs' prompts, and infer-new's for new
    users (user: any id)."""
    jobs, skipped = [], []
    for user, items in histories:
        named = [int(i) for i in items if i < len(titles) and titles[i]][-n_last:]
        if not named:
            skipped.append(user)
            continue
        jobs.append(Job(user, named, build_messages([titles[i] for i in named], field)))
    return jobs, skipped


# ----------------------------------------------------------------------------------------------
# Answer parsing: reasoning stripped, lists in the shapes models write them
# ----------------------------------------------------------------------------------------------
THINK_CLOSE = re.compile(r"</(?:think|thinking|thought|reasoning)>|<\|channel\|>final<\|message\|>", re.I)
THINK_OPEN = re.compile(r"<(?:think|thinking|thought|reasoning)>|<\|channel\|>analysis<\|message\|>", re.I)


def split_reasoning(text: str) -> tuple[str, str]:
    """A reply's content -> (answer, reasoning), both stripped.

    A thinking model writes <think>...</think> before its answer (also <thinking>, <thought>,
    <reasoning>, or gpt-oss's channels): the answer is what follows the last closing tag, and
    everything before it is reasoning, also when the server stripped the opening tag and left
    only </think>. An opening tag never closed (the reply was cut off mid-thought) makes the rest
    reasoning and leaves no answer. Text without tags is all answer."""
    text = text or ""
    closes = list(THINK_CLOSE.finditer(text))
    if closes:
        return text[closes[-1].end():].strip(), THINK_OPEN.sub("", text[:closes[-1].start()]).strip()
    opened = THINK_OPEN.search(text)
    if opened:
        return text[:opened.start()].strip(), text[opened.end():].strip()
    return text.strip(), ""


REFUSAL = re.compile(r"\b(i'?m sorry|i am sorry|i apologi[sz]e|i can'?t|i cannot|i am unable|i'?m unable|"
                     r"as an ai)\b", re.IGNORECASE)  # an apology in the first 200 characters: refused
PREAMBLE = re.compile(r"^[^:\n]{0,100}?\b(?:here|interests?|interested|likes?|enjoys?|based on|answer|user)\b"
                      r"[^:\n]{0,100}:[ \t]*", re.I)
BULLET = re.compile(r"^\s*(?:[-*+•·‣▪]+|\(?\d{1,2}[.):]|#+)\s*")
INLINE_NUMBER = re.compile(r"(?:^|\s)\(?\d{1,2}[.)]\s+")  # "1. X 2. Y" on one line
SEPARATOR = re.compile(r"[,;/|\n，；、]")
PIECE_EDGES = " \t\"'`*_[](){}.!:"


def split_answer(text: str, truncated: bool = False) -> list:
    """An answer -> its raw interest pieces, in order (not yet cleaned).

    Accepted shapes, all giving the same pieces: items separated by commas, semicolons, slashes
    or bars; one per line, with bullets (-, *, •) or numbers ("1.", "2)"); numbered on one line
    ("1. X 2. Y"); a JSON array of strings (also inside a ```json fence); each after a
    preamble such as "Here are the interests:" (a first line ending in a colon, or text before
    a colon that speaks of the interests or the user). Markdown emphasis, quotes and trailing
    full stops are stripped. truncated (the answer was cut at the token limit): the last piece
    is a fragment and is dropped, unless the text ends with a separator."""
    ends_complete = bool(re.search(r"[,;/|\n，；、][ \t]*$", text or ""))  # cut right after a separator
    text = re.sub(r"^```[a-zA-Z]*\s*|\s*```\s*$", "", (text or "").strip()).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
            if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed):
                return [p.strip() for p in parsed if p.strip()]
        except ValueError:
            pass
    lines = text.split("\n")
    if len(lines) > 1 and lines[0].rstrip().endswith(":"):
        lines = lines[1:]
    elif lines:
        lines[0] = PREAMBLE.sub("", lines[0], count=1)
    pieces = []
    for line in lines:
        for part in INLINE_NUMBER.split(BULLET.sub("", line, count=1)):
            pieces += SEPARATOR.split(part)
    pieces = [p.strip(PIECE_EDGES) for p in pieces]
    pieces = [p for p in pieces if p]
    if truncated and pieces and not ends_complete:
        pieces.pop()
    return pieces


class Parsed(NamedTuple):
    """answer_phrases' result."""
    phrases: list  # distinct cleaned phrases
    problem: str  # '' for a usable answer, else why there is no phrase
    dropped: int = 0  # pieces that cleaning emptied


def answer_phrases(text, truncated: bool = False) -> Parsed:
    """An LLM answer (the A_u of Eq. 1) -> Parsed(phrases, problem, dropped).

    phrases: the distinct cleaned phrases (clean_phrase) of the pieces split_answer finds, after
    any reasoning is removed (split_reasoning) and, when truncated, the trailing fragment is
    dropped. dropped: pieces that cleaning emptied (no Latin letters left, e.g. another script,
    or over MAX_PHRASE_CHARS). problem is '' for a usable answer, else one of "empty",
    "reasoning only", "too long" (over MAX_ANSWER_CHARS), "refused" (an apology or "I can't"),
    "truncated" (cut before one complete piece), "not a list" (one piece longer than a phrase,
    e.g. a sentence), "no phrases" (nothing left after cleaning); then phrases is empty.
    """
    if text is None or not str(text).strip():
        return Parsed([], "empty")
    text, reasoning = split_reasoning(str(text))
    if not text:
        return Parsed([], "reasoning only" if reasoning else "empty")
    if len(text) > MAX_ANSWER_CHARS:
        return Parsed([], "too long")
    if REFUSAL.search(text[:200]):
        return Parsed([], "refused")
    pieces = split_answer(text, truncated)
    if not pieces:
        return Parsed([], "truncated" if truncated else "no phrases")
    if len(pieces) == 1 and len(pieces[0]) > MAX_PHRASE_CHARS:
        return Parsed([], "not a list")
    cleaned = [clean_phrase(p) for p in pieces]
    phrases = list(dict.fromkeys(p for p in cleaned if p))
    return Parsed(phrases, "" if phrases else "no phrases", cleaned.count(""))


def record_phrases(rec: dict) -> Parsed:
    """The phrases of one answers-file record: refused and filtered records give none (problem
    "refused" / "filtered"); an answer is truncated when the record says so, or (a file written
    before the flag) when its finish_reason is "length"."""
    outcome = rec.get("outcome", "answered")
    if outcome in ("refused", "filtered"):
        return Parsed([], outcome)
    return answer_phrases(rec.get("answer"), bool(rec.get("truncated", rec.get("finish_reason") == "length")))

# ----------------------------------------------------------------------------------------------
# Cleaning: interest pieces -> phrases
# ----------------------------------------------------------------------------------------------
STOPWORDS = frozenset("""
a about above after again against ain all also am an and any are aren as at be because been before
being below between both but by can couldn could d did didn do does doesn doing don down during each
few for from further had hadn has hasn have haven having he her here hers herself him himself his how
i if in into is isn it its itself just ll m ma me mightn more most mustn my myself needn no nor not
now o of off on once only or other our ours ourselves out over own re s same shan she should shouldn
so some such t than that the their theirs them themselves then there these they this those through
to too under until up ve very was wasn we were weren what when where which while who whom why will
with won wouldn would y you your yours yourself yourselves
""".split())
LEMMA_EXCEPTIONS = {"movies": "movie", "zombies": "zombie", "cookies": "cookie", "series": "series",
                    "species": "species", "news": "news", "christmas": "christmas", "texas": "texas"}


def lemma(word: str) -> str:
    """A simple plural rule in place of a full lemmatiser: mysteries -> mystery, witches ->
    witch, novels -> novel; words ending in ss/us/is/ics, short words and a few listed
    exceptions (series, movies -> movie) are handled as such."""
    if word in LEMMA_EXCEPTIONS:
        return LEMMA_EXCEPTIONS[word]
    if len(word) <= 3 or word.endswith(("ss", "us", "is", "ics")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    return word[:-1] if word.endswith("s") else word


def clean_phrase(text: str) -> str:
    """One raw interest -> a cleaned phrase, or '' if nothing usable is left.

    Lowercase; accents removed; every run of non-letters becomes one space (so "Sci-Fi" ->
    "sci fi"); English stopwords dropped; each word through `lemma`; kept only if 2..50
    characters long."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    words = [lemma(w) for w in re.sub(r"[^a-z]+", " ", text).split() if w not in STOPWORDS]
    phrase = " ".join(words)
    return phrase if MIN_PHRASE_CHARS <= len(phrase) <= MAX_PHRASE_CHARS else ""


# ----------------------------------------------------------------------------------------------
# TF-IDF (the text representation f_C of Eq. 2 clusters)
# ----------------------------------------------------------------------------------------------
def ngrams(phrase: str) -> list:
    """The unigrams and bigrams of a cleaned phrase: "sci fi film" -> [sci, fi, film, sci fi, fi film]."""
    words = phrase.split()
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def tfidf(phrases: list, weights=None, max_df: float = 0.8):
    """TF-IDF vectors of phrases, by hand (what scikit-learn's TfidfVectorizer computes with
    ngram_range=(1, 2), max_df, smooth_idf=True, norm='l2', tokens = the words of the cleaned
    phrase): the vocabulary and idf of `tfidf_fit`, then the rows of `tfidf_rows` (the function
    that also turns a new user's phrases into rows, so both are made alike).
    Returns (X: scipy.sparse.csr_matrix [n, n_terms], terms: list).
    """
    terms, idf = tfidf_fit(phrases, weights, max_df)
    return tfidf_rows(phrases, terms, idf), terms


def tfidf_fit(phrases: list, weights=None, max_df: float = 0.8) -> tuple[list, np.ndarray]:
    """The vocabulary and idf of tfidf.

    phrases: n strings; weights: n occurrence counts (default 1 each), so that a phrase said by
    many users is one row but counts that many documents. Terms (ngrams) are sorted
    alphabetically. df = documents holding the term; terms with df > max_df * N are dropped
    (N = documents); idf = ln((1 + N) / (1 + df)) + 1.
    Fallback (documented): when max_df would drop every term (a tiny or uniform corpus, e.g.
    ["sci fi", "sci fi"]), all terms are kept, with a note. Returns (terms, idf [n_terms]).
    """
    weights = np.ones(len(phrases)) if weights is None else np.asarray(weights, dtype=float)
    grams = [ngrams(p) for p in phrases]
    terms = sorted({g for gs in grams for g in gs})
    index = {t: c for c, t in enumerate(terms)}
    rows = [r for r, gs in enumerate(grams) for _ in gs]
    cols = [index[g] for gs in grams for g in gs]
    counts = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(phrases), len(terms)))
    counts.sum_duplicates()
    n_docs = weights.sum()
    df = np.bincount(counts.indices, weights=weights[np.repeat(np.arange(len(phrases)), np.diff(counts.indptr))],
                     minlength=len(terms))
    keep = df <= max_df * n_docs
    if len(terms) and not keep.any():
        say(f"note: max_df {max_df} would drop all {len(terms)} terms of this small corpus: keeping them all")
        keep[:] = True
    terms = [t for t, k in zip(terms, keep) if k]
    return terms, np.log((1 + n_docs) / (1 + df[keep])) + 1


def tfidf_rows(phrases: list, terms: list, idf) -> sp.csr_matrix:
    """Phrases -> TF-IDF rows over a fixed vocabulary (terms, idf: tfidf_fit's): tf = count of
    the term (ngrams) in the phrase, n-grams not in terms ignored; tf * idf; each row scaled to
    unit L2 norm. A phrase with no known term is an all-zero row (never NaN). Returns
    scipy.sparse.csr_matrix [n, len(terms)]."""
    index = {t: c for c, t in enumerate(terms)}
    cols_of = [[index[g] for g in ngrams(p) if g in index] for p in phrases]
    rows = [r for r, cs in enumerate(cols_of) for _ in cs]
    cols = [c for cs in cols_of for c in cs]
    counts = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(phrases), len(terms)))
    counts.sum_duplicates()
    x = (counts @ sp.diags(np.asarray(idf, dtype=float))).tocsr()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    return (sp.diags(1 / np.where(norms > 0, norms, 1.0)) @ x).tocsr()


# ----------------------------------------------------------------------------------------------
# k-means (the clustering f_C of Eq. 2)
# ----------------------------------------------------------------------------------------------
def _rows_dense(x, idx) -> np.ndarray:
    return x[idx].toarray() if sp.issparse(x) else np.asarray(x[idx], dtype=float)


def _sq_distances(x, x2, centres) -> np.ndarray:
    """Squared Euclidean distances [n, k] = |x|^2 - 2 x.c + |c|^2, clipped at 0."""
    d = x2[:, None] - 2 * np.asarray(x @ centres.T) + (centres ** 2).sum(1)[None, :]
    return np.maximum(d, 0.0)


def n_distinct_rows(x) -> int:
    """How many different vectors x holds (dense or sparse)."""
    if not sp.issparse(x):
        return len(np.unique(np.round(np.asarray(x, dtype=float), 12), axis=0))
    x = x.tocsr()
    return len({(tuple(x.indices[a:b]), tuple(np.round(x.data[a:b], 12)))
                for a, b in zip(x.indptr[:-1], x.indptr[1:])})


def kmeans_pp(x, x2, k: int, w, rng) -> np.ndarray:
    """k-means++ seeding: the first centre drawn by weight, each next one with probability
    proportional to weight * squared distance to the nearest centre so far. Returns [k, d]."""
    first = rng.choice(len(w), p=w / w.sum())
    centres = [_rows_dense(x, [first])[0]]
    d2 = _sq_distances(x, x2, centres[0][None, :])[:, 0]
    for _ in range(1, k):
        p = w * d2
        idx = rng.choice(len(w), p=p / p.sum()) if p.sum() > 0 else rng.choice(len(w))
        centres.append(_rows_dense(x, [idx])[0])
        d2 = np.minimum(d2, _sq_distances(x, x2, centres[-1][None, :])[:, 0])
    return np.vstack(centres)


def kmeans(x, k: int, weights=None, n_init: int = 3, max_iter: int = 100, tol: float = 1e-6,
           seed: int = 0, verbose: bool = False):
    """Weighted k-means (Lloyd) with k-means++ seeding and several seedings, best kept.

    x: [n, d] dense array or scipy.sparse matrix; weights: n positive weights (default 1).
    k larger than the number of distinct vectors is clamped to it, with a note. Each step
    assigns every point to its nearest centre, then moves each centre to the weighted mean of
    its points; a centre left without points is re-seeded at the point farthest from its own
    centre. Stops when the centres move less than tol (sum of squared shifts) or after
    max_iter steps; the labels returned are the nearest centres of the final centres. The
    seeding with the lowest inertia (weighted sum of squared distances) wins.
    Returns (labels int [n], centres [k, d], inertia). Raises ValueError on an empty x or k < 1.
    """
    n = x.shape[0]
    if n == 0 or k < 1:
        raise ValueError(f"k-means needs at least one point and k >= 1 (got {n} points, k = {k})")
    x = x.tocsr().astype(float) if sp.issparse(x) else np.asarray(x, dtype=float)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    distinct = n_distinct_rows(x)
    if k > distinct:
        say(f"note: k = {k} is more than the {distinct} distinct vectors: using k = {distinct}")
        k = distinct
    x2 = np.asarray(x.multiply(x).sum(axis=1)).ravel() if sp.issparse(x) else (x ** 2).sum(1)
    rng = np.random.default_rng(seed)
    best = None
    for init in range(n_init):
        centres = kmeans_pp(x, x2, k, w, rng)
        for step in range(1, max_iter + 1):
            d = _sq_distances(x, x2, centres)
            labels = d.argmin(1)
            members = sp.csr_matrix((w, (labels, np.arange(n))), shape=(k, n))
            size = np.asarray(members.sum(axis=1)).ravel()
            sums = members @ x
            new = (sums.toarray() if sp.issparse(sums) else np.asarray(sums)) / np.maximum(size, 1e-300)[:, None]
            far = d[np.arange(n), labels]
            for j in np.flatnonzero(size == 0):  # empty cluster: re-seed at the farthest point
                idx = int(far.argmax())
                new[j], far[idx] = _rows_dense(x, [idx])[0], -1.0
            shift = ((new - centres) ** 2).sum()
            centres = new
            if shift <= tol:
                break
        d = _sq_distances(x, x2, centres)
        labels = d.argmin(1)
        inertia = float((w * d[np.arange(n), labels]).sum())
        if verbose:
            say(f"k-means seeding {init + 1}/{n_init}: {step} steps, inertia {inertia:.2f}")
        if best is None or inertia < best[2]:
            best = (labels, centres, inertia)
    return best


# ----------------------------------------------------------------------------------------------
# Filtering and writing the interest nodes (Eq. 2: J and the edges (u, Has Interest, j))
# ----------------------------------------------------------------------------------------------
def filter_clusters(user_clusters: dict, max_share: float = 0.2, min_users: int = 2) -> tuple[list, dict]:
    """Which clusters become interest nodes (the authors' rule: clusters shared by at least
    1/5 of the users, and clusters held by a single user, are dropped).

    user_clusters: {user: set of cluster ids} (a set: a user linked twice to a cluster counts
    once). A cluster held by at least max_share of the users that have any cluster is dropped
    (too common to tell users apart), and so is one held by fewer than min_users users (it
    links nobody). Returns (kept cluster ids sorted, {dropped cluster id: reason}).
    """
    n_users = sum(1 for cs in user_clusters.values() if cs)
    held = collections.Counter(c for cs in user_clusters.values() for c in set(cs))
    kept, dropped = [], {}
    for c in sorted(held):
        if held[c] >= max_share * n_users:
            dropped[c] = f"held by {held[c]} of {n_users} users (>= {max_share:g})"
        elif held[c] < min_users:
            dropped[c] = f"held by {held[c]} user(s) (< {min_users})"
        else:
            kept.append(c)
    return kept, dropped


def link_users(user_phrases: dict, cluster_of: dict) -> dict:
    """{user: phrases} and {phrase: cluster} -> {user: set of clusters}: a user whose phrases
    share a cluster ("sci fi", "science fiction") is linked to it once (one edge, not two)."""
    return {u: {cluster_of[p] for p in ps if p in cluster_of} for u, ps in user_phrases.items()}


def interest_edges(user_clusters: dict, kept: list, n_entities: int) -> list:
    """(user, interest id) pairs, sorted and unique: kept cluster number r becomes interest id
    n_entities + r, so ids follow the largest entity id and are contiguous (no id without users)."""
    new_id = {c: n_entities + r for r, c in enumerate(kept)}
    return sorted({(u, new_id[c]) for u, cs in user_clusters.items() for c in cs if c in new_id})


def cluster_answers(answers: dict, n_entities: int, k: int, max_df: float = 0.8, max_share: float = 0.2,
                    seed: int = 0, n_init: int = 3, max_iter: int = 100) -> dict:
    """Eq. (2): answers {user: record with "answer"} -> interest nodes and user-interest edges.

    Each user's record becomes distinct cleaned phrases (record_phrases: reasoning removed, a
    truncated answer's trailing fragment dropped, refused and filtered records none); every
    distinct phrase is one TF-IDF row weighted by the number of users who said it; k-means
    groups the rows into k clusters; a user links to the clusters of its phrases;
    `filter_clusters` keeps the informative ones. Returns a dict with "edges" [(user, interest
    id)], "clusters" (one row per cluster for the TSV), "problems" (Counter of records without
    interests by kind: refused, filtered, empty, ...), "n_truncated" (usable answers whose
    fragment was dropped), "n_dropped" (pieces that cleaning emptied), counts, "cluster_of"
    ({phrase: cluster}) and "state" (a ClusterState: what places a new user's phrase in these
    clusters). Raises InputError when no answer gives a phrase or no cluster survives the filtering (an empty
    interest file helps nobody).
    """
    problems = collections.Counter()
    user_phrases = {}
    n_truncated = n_dropped = 0
    for user, rec in sorted(answers.items()):
        phrases, problem, dropped = record_phrases(rec)
        n_dropped += dropped
        if problem:
            problems[problem] += 1
        else:
            user_phrases[user] = phrases
            n_truncated += bool(rec.get("truncated", rec.get("finish_reason") == "length"))
    said = collections.Counter(p for ps in user_phrases.values() for p in ps)
    if not said:
        raise InputError(f"none of the {len(answers)} answers gives an interest phrase "
                         f"(bad answers: {dict(problems) or 'none'})")
    phrases = sorted(said)
    weights = np.array([said[p] for p in phrases], dtype=float)
    t0 = time.time()
    terms, idf = tfidf_fit(phrases, weights, max_df)
    x = tfidf_rows(phrases, terms, idf)
    nonzero = np.flatnonzero(np.diff(x.indptr) > 0)  # phrases whose terms were all dropped
    say(f"cluster: {len(phrases)} distinct phrases ({int(weights.sum())} in all), {len(terms)} terms, "
        f"{len(phrases) - len(nonzero)} phrases without terms; TF-IDF {time.time() - t0:.2f} s")
    t0 = time.time()
    labels, centres, _ = kmeans(x[nonzero], k, weights[nonzero], n_init, max_iter, seed=seed, verbose=True)
    say(f"cluster: k-means {time.time() - t0:.2f} s")
    cluster_of = {phrases[i]: int(c) for i, c in zip(nonzero, labels)}
    user_clusters = link_users(user_phrases, cluster_of)
    kept, dropped = filter_clusters(user_clusters, max_share)
    edges = interest_edges(user_clusters, kept, n_entities)
    if not edges:
        raise InputError(f"no interest node is left after filtering the {len(centres)} clusters of "
                         f"{len(user_phrases)} users (each is held by one user or by >= {max_share:g} of "
                         f"them): use more users, or another --k or --max-share")
    held = collections.Counter(c for cs in user_clusters.values() for c in cs)
    interest_id = {c: n_entities + r for r, c in enumerate(kept)}
    state = ClusterState(terms, idf, centres, np.array([interest_id.get(c, -1) for c in range(len(centres))]))
    rows = []
    for c in range(len(centres)):
        top = [terms[t] for t in np.argsort(-centres[c])[:5] if centres[c][t] > 0]
        examples = sorted((p for p, cc in cluster_of.items() if cc == c), key=lambda p: (-said[p], p))[:5]
        status = str(interest_id[c]) if c in interest_id else "dropped: " + dropped.get(c, "no users")
        rows.append((c, held[c], status, top, examples))
    return {"edges": edges, "clusters": rows, "problems": problems, "n_answers": len(answers),
            "n_truncated": n_truncated, "n_dropped": n_dropped,
            "n_users_with_phrases": len(user_phrases), "n_phrases": int(weights.sum()),
            "n_distinct": len(phrases), "n_clusters": len(centres), "n_kept": len(kept),
            "n_users_linked": len({u for u, _ in edges}), "cluster_of": cluster_of, "state": state}


def write_outputs(result: dict, out_dir, coverage: dict | None = None) -> tuple[Path, Path, Path | None]:
    """Write user_interest_clustered.txt (`user_id interest_id` lines, the published format),
    interest_clusters.tsv (what each cluster means), user_interest_clustered.model.npz (the
    clustering state, save_state, tied to the interest file by its SHA-256) and, given `coverage`
    ({"users_with_prompt", "users_answered", ...}), user_interest_clustered.coverage.json (see
    coverage_record) into out_dir. Each file is written to a temporary name and renamed, so an
    interruption never leaves half a file. Returns the paths of the first two and of the
    coverage (None without coverage)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    edges_path, tsv_path, cov_path, state_path = (out_dir / name for name in CLUSTER_FILES)
    edges = "".join(f"{u} {j}\n" for u, j in result["edges"])
    tsv = ["cluster\tusers\tinterest_id\ttop_terms\texample_phrases\n"]
    tsv += [f"{c}\t{n}\t{status}\t{', '.join(top)}\t{' | '.join(ex)}\n" for c, n, status, top, ex in result["clusters"]]
    files = [(edges_path, edges), (tsv_path, "".join(tsv))]
    if coverage is not None:
        record = coverage_record(edges.encode("utf-8"), edges_path.name, result["n_users_linked"], **coverage)
        files.append((cov_path, json.dumps(record, indent=1) + "\n"))
    for path, content in files:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(content, encoding="utf-8")
        os.replace(tmp, path)
    if result.get("state") is not None:
        state = dataclasses.replace(result["state"], interest_sha256=hashlib.sha256(edges.encode("utf-8")).hexdigest())
        save_state(state_path, state)
    return edges_path, tsv_path, cov_path if coverage is not None else None


# ----------------------------------------------------------------------------------------------
# New users' interests, in the run's clusters (no refit: the interest ids stay the run's)
# ----------------------------------------------------------------------------------------------
STATE_FORMAT = "cikgrec-cluster-state-1"


@dataclass
class ClusterState:
    """What places a new phrase in a run's clusters: the TF-IDF vocabulary (terms, in column
    order) and idf of tfidf_fit, the k-means centres [k, n_terms], and each cluster's interest id
    (-1: the cluster was dropped). interest_sha256: of the interest file written with it."""
    terms: list
    idf: np.ndarray
    centres: np.ndarray
    interest_id: np.ndarray
    interest_sha256: str = ""


def save_state(path, state: ClusterState) -> None:
    """Write the state as a numpy .npz (no pickle: strings as a unicode array), to a temporary
    name renamed into place."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, format=np.array(STATE_FORMAT), terms=np.array(state.terms, dtype=str),
                 idf=np.asarray(state.idf, dtype=float), centres=np.asarray(state.centres, dtype=float),
                 interest_id=np.asarray(state.interest_id, dtype=np.int64),
                 interest_sha256=np.array(state.interest_sha256))
    os.replace(tmp, path)


def load_state(path) -> ClusterState:
    """Read save_state's file (allow_pickle=False). Raises DataError naming the file when it is
    not one, or its arrays do not fit together."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z.files or str(z["format"]) != STATE_FORMAT:
                raise DataError(path, 0, "not a clustering state written by `llm_interests.py cluster` (it holds no "
                                         f"format record {STATE_FORMAT})")
            terms, idf, centres, ids = z["terms"], z["idf"], z["centres"], z["interest_id"]
            sha = str(z["interest_sha256"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        raise DataError(path, 0, "not a clustering state written by `llm_interests.py cluster` (not a readable .npz "
                                 "of arrays)") from None
    if not (terms.ndim == idf.ndim == ids.ndim == 1 and centres.ndim == 2 and len(terms) == len(idf)
            and centres.shape == (len(ids), len(terms)) and len(ids) > 0 and terms.dtype.kind == "U"):
        raise DataError(path, 0, f"the arrays do not fit together: terms {terms.shape}, idf {idf.shape}, "
                                 f"centres {centres.shape}, interest_id {ids.shape}")
    return ClusterState(terms.tolist(), idf.astype(float), centres.astype(float), ids.astype(np.int64), sha)


def assign_phrases(phrases: list, state: ClusterState) -> list:
    """Each cleaned phrase -> (cluster, interest id or None): its TF-IDF row over the run's
    vocabulary (tfidf_rows: the same n-grams, idf and L2 norm as the fitted phrases; unknown
    terms ignored) goes to the nearest of ALL the centres, by kmeans' squared distance (ties: the
    lowest cluster), as k-means placed the fitted phrases. A dropped cluster gives (cluster,
    None); a phrase with no known term (None, None)."""
    x = tfidf_rows(phrases, state.terms, state.idf)
    x2 = np.asarray(x.multiply(x).sum(axis=1)).ravel()
    labels = _sq_distances(x, x2, state.centres).argmin(1)
    known = np.diff(x.indptr) > 0
    out = []
    for i in range(len(phrases)):
        c = int(labels[i]) if known[i] else None
        j = int(state.interest_id[c]) if c is not None else -1
        out.append((c, j if j >= 0 else None))
    return out


def new_user_edges(answers: dict, state: ClusterState) -> tuple[list, dict]:
    """New users' answers {new id: answers-file record} -> ((new id, interest id) pairs, counts).

    Each record gives its phrases as for `cluster` (record_phrases); each phrase is placed by
    assign_phrases; a user linked twice to an interest gets one edge. Pairs in the answers'
    order, interest ids sorted per user. counts: "assigned" (phrases in a kept cluster),
    "dropped" (in a dropped cluster), "unknown" (no known term), "problems" (Counter of records
    without phrases, by kind), "users" (users with an edge)."""
    counts = {"assigned": 0, "dropped": 0, "unknown": 0, "problems": collections.Counter(), "users": 0}
    user_phrases = {}
    for user, rec in answers.items():
        parsed = record_phrases(rec)
        if parsed.problem:
            counts["problems"][parsed.problem] += 1
        user_phrases[user] = parsed.phrases
    placed = iter(assign_phrases([p for ps in user_phrases.values() for p in ps], state))
    edges = []
    for user, ps in user_phrases.items():
        ids = set()
        for c, j in (next(placed) for _ in ps):
            kind = "unknown" if c is None else "dropped" if j is None else "assigned"
            counts[kind] += 1
            if j is not None:
                ids.add(j)
        edges += [(user, j) for j in sorted(ids)]
        counts["users"] += bool(ids)
    return edges, counts


# ----------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------
# Below: the tool -- the client that survives real servers, the runner, batch mode, the
# coverage file, the benchmark, the command line. The method above turns an answers file into
# the interest graph; the code below gets those answers (Eq. 1, A_u = LLM(P_u)) and runs the
# commands.
# ----------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Client: one request, with retries and bounded waits (Eq. 1, A_u = LLM(P_u, E_u+))
# ----------------------------------------------------------------------------------------------
DEFAULT_MODEL = "gpt-3.5-turbo-0125"  # the authors' model; --model or $LLM_MODEL override
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class SetupError(Exception):
    """`infer` cannot go on for any user, so it stops at once (exit code 2; answers so far are
    kept and a rerun continues): HTTP 401/403/404, a used-up quota (QuotaError), a server that
    asks to wait longer than --max-wait, a request that cannot be sent, or the first users all
    failing (see run_inference)."""


class AuthError(SetupError):
    """HTTP 401/403: the key or the server is wrong for every user."""


class QuotaError(SetupError):
    """HTTP 402, or a 429 (or an error in a 200 reply) saying that the quota, credit or billing
    limit is used up: no retry succeeds before someone pays, so the whole run stops."""


TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")  # OpenAI's reasoning models want the second
BUDGET_GROWTH = 4  # an answer cut at the token limit is asked again with 2x, then 4x --max-tokens
_switch_lock = threading.Lock()


@dataclass
class ClientConfig:
    """Where and how to send chat-completion requests."""
    base_url: str = DEFAULT_BASE_URL  # .../v1; the request goes to {base_url}/chat/completions
    api_key: str = ""  # sent as a Bearer token when not empty
    model: str = DEFAULT_MODEL
    max_tokens: int = 1000  # the authors' setting; thinking models need more (see ask_llm)
    timeout: float = 60.0  # seconds per request
    max_attempts: int = 6  # failed attempts per user, the first included
    backoff: float = 1.0  # first wait in seconds; doubled after each failed attempt, with jitter
    max_backoff: float = 60.0  # the longest computed wait
    max_wait: float = 60.0  # the longest wait a server may ask for (Retry-After); longer stops the run
    token_field: str = "max_tokens"  # the body field of the token limit; ask_llm may switch it once
    token_field_switched: bool = False  # set by switch_token_field (shared by all workers)


def check_config(cfg: ClientConfig) -> None:
    """Raise InputError (one line) for a setting no request can work with: a base URL that is
    not http(s)://HOST[:PORT]/..., a timeout that is not a positive number, attempts or
    max_tokens below 1, a negative or infinite backoff or max_wait, an empty model name, a token
    field other than TOKEN_FIELDS, or an API key with spaces, line breaks or non-ASCII
    characters (a header cannot carry them; a copied key often ends in a newline)."""
    parts = urllib.parse.urlsplit(cfg.base_url)
    try:
        parts.port  # raises ValueError for a port that is not a number
        good_url = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        good_url = False
    if not good_url:
        raise InputError(f"--base-url (or $OPENAI_BASE_URL) must look like http://HOST:PORT/v1 or "
                         f"https://HOST/v1, got {cfg.base_url!r}")
    if not (math.isfinite(cfg.timeout) and cfg.timeout > 0):
        raise InputError(f"--timeout must be a positive number of seconds, got {cfg.timeout:g}")
    if cfg.max_attempts < 1:
        raise InputError(f"--max-attempts must be at least 1, got {cfg.max_attempts}")
    if cfg.max_tokens < 1:
        raise InputError(f"--max-tokens must be at least 1, got {cfg.max_tokens}")
    if not (math.isfinite(cfg.backoff) and cfg.backoff >= 0 and math.isfinite(cfg.max_backoff)
            and cfg.max_backoff >= 0):
        raise InputError(f"--backoff must be a number of seconds >= 0, got {cfg.backoff:g}")
    if not (math.isfinite(cfg.max_wait) and cfg.max_wait >= 0):
        raise InputError(f"--max-wait must be a number of seconds >= 0, got {cfg.max_wait:g}")
    if cfg.token_field not in TOKEN_FIELDS:
        raise InputError(f"--token-field must be one of {', '.join(TOKEN_FIELDS)}, got {cfg.token_field!r}")
    if not cfg.model.strip():
        raise InputError("--model (or $LLM_MODEL) is empty")
    if cfg.api_key and not (cfg.api_key.isascii() and cfg.api_key.isprintable() and " " not in cfg.api_key):
        raise InputError("$OPENAI_API_KEY contains spaces, line breaks or non-ASCII characters")


def request_body(messages: list, model: str, max_tokens: int, token_field: str = "max_tokens") -> dict:
    """The chat-completions JSON body (also the `body` of a Batch API line): no streaming, said
    explicitly (some gateways stream by default); the token limit under `token_field`."""
    return {"model": model, "messages": messages, token_field: max_tokens, "stream": False}


def reply_json(r):
    """The JSON of an HTTP reply, decoded from its bytes as JSON is (UTF-8, or UTF-16/32 by its
    first bytes), whatever the Content-Type says: requests would read a text/plain reply without
    a charset as ISO-8859-1 and turn "café" into "cafÃ©". Bytes that are not UTF-8 are decoded
    with the charset the reply declares, if any. None when the body is not JSON."""
    try:
        return json.loads(r.content)
    except UnicodeDecodeError:
        charset = requests.utils.get_encoding_from_headers(r.headers)
        try:
            return json.loads(r.content.decode(charset or "utf-8", errors="replace"))
        except (LookupError, ValueError):
            return None
    except ValueError:
        return None


def error_fields(data) -> dict:
    """The parts of an error body: {"message", "type", "code", "param"} (strings, '' if absent),
    from OpenAI's {"error": {...}}, a plain {"error": "..."}, {"detail": ...} or {"message": ...}."""
    out = {"message": "", "type": "", "code": "", "param": ""}
    if not isinstance(data, dict):
        return out
    error = data.get("error")
    if isinstance(error, dict):
        out.update({k: str(error.get(k) or "") for k in out})
        metadata = error.get("metadata")  # OpenRouter puts the provider's own words here
        if not out["message"] and isinstance(metadata, dict) and metadata.get("raw"):
            out["message"] = str(metadata["raw"])
    elif isinstance(error, str):
        out["message"] = error
    elif data.get("detail") or data.get("message"):
        out["message"] = str(data.get("detail") or data.get("message"))
    return out


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return (text[:limit] + "...") if len(text) > limit else text


def server_message(r, data=None) -> str:
    """The error text of an HTTP reply, on one line and at most 300 characters: the message of
    its error body (error_fields), else the body itself (decoded as UTF-8)."""
    data = reply_json(r) if data is None else data
    text = error_fields(data)["message"] or r.content.decode("utf-8", errors="replace")
    return one_line(text) or "(empty body)"


def connection_reason(e: Exception, url: str) -> str:
    """A requests ConnectionError in a few words, with the URL: "connection refused to URL",
    "cannot connect to URL: Name or service not known", "SSL error with URL: ...", instead of
    the 300-character urllib3 chain (whose object addresses also differ for every user)."""
    text = str(e)
    if isinstance(e, requests.exceptions.SSLError):
        m = re.search(r"\[SSL: [^\]]+\] ([^'\"(]+)", text)
        detail = m.group(1).strip() if m else "handshake failed"
        return f"SSL error with {url}: {detail} (a plain http server given an https URL?)"
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if m and m.group(1).strip().lower() == "connection refused":
        return f"connection refused to {url}"
    if m:
        return f"cannot connect to {url}: {m.group(1).strip()}"
    m = re.search(r"(Remote end closed connection without response|Connection reset by peer|"
                  r"Connection aborted)", text)
    if m:
        return f"connection to {url} dropped: {m.group(1)}"
    return f"connection error with {url}: " + re.sub(r" at 0x[0-9a-f]+", "", text)[:200]


QUOTA_CODES = {"insufficient_quota", "billing_hard_limit_reached", "billing_not_active", "insufficient_credits",
               "quota_exceeded", "credits_exhausted"}
QUOTA_WORDS = re.compile(r"quota|billing|credit|balance|payment|insufficient funds|per[ _-]?day|daily limit", re.I)
RATE_WORDS = re.compile(r"rate[ _-]?limit|per[ _-]?(minute|min|second|sec|hour)\b|\b[rt]pm\b|too many requests", re.I)


def is_quota(status: int, error: dict) -> bool:
    """Whether an error reply says the quota or credit is used up (stop the run) rather than a
    rate limit (wait and retry): HTTP 402 (OpenRouter: "insufficient credits"), an error type or
    code in QUOTA_CODES (OpenAI: "insufficient_quota"), or a message about quota, billing,
    credit, balance, payment or a daily limit that does not speak of a per-minute/hour rate."""
    if status == 402:
        return True
    codes = {error.get("type", "").lower(), error.get("code", "").lower()}
    if codes & QUOTA_CODES:
        return True
    if any("rate_limit" in c for c in codes):
        return False
    message = error.get("message", "")
    return bool(QUOTA_WORDS.search(message)) and not RATE_WORDS.search(message)


def is_content_filter(error: dict) -> bool:
    """An error reply (HTTP 400 on Azure OpenAI) saying the prompt was filtered by the provider's
    content policy: final for that user, like finish_reason "content_filter"."""
    return "content_filter" in (error.get("code", "") + error.get("type", "")).lower() or \
        "content management policy" in error.get("message", "").lower()


def rejects_token_field(error: dict, field: str) -> bool:
    """A 400 saying the token-limit field we sent is not accepted: OpenAI's reasoning models
    answer "Unsupported parameter: 'max_tokens' is not supported with this model. Use
    'max_completion_tokens' instead."; older servers reject max_completion_tokens as an
    unrecognized or extra argument."""
    text = f"{error.get('param', '')} {error.get('code', '')} {error.get('message', '')}"
    return field in text and bool(re.search(r"unsupported|not supported|unrecogni[sz]ed|unknown|extra|"
                                            r"not permitted|not allowed|invalid", text, re.I))


def switch_token_field(cfg: ClientConfig, rejected: str, message: str) -> bool:
    """After a 400 rejecting the token-limit field `rejected`: make every later request of the
    run (all workers share cfg) send the other field. Returns True when the request should be
    sent again: this call switched (and says so in one note), or another request in flight got
    the same 400 first and already switched. False when the run already switched once (both
    fields rejected: a real error)."""
    with _switch_lock:
        if cfg.token_field != rejected:
            return True
        if cfg.token_field_switched:
            return False
        other = TOKEN_FIELDS[1 - TOKEN_FIELDS.index(rejected)]
        cfg.token_field, cfg.token_field_switched = other, True
    say(f"note: the server does not take {rejected!r} ({one_line(message, 160)}): sending {other!r} "
        f"for the rest of the run (--token-field {other} sets it from the start)")
    return True


def retry_after_seconds(value) -> float | None:
    """Seconds asked for by a Retry-After header (a number or an HTTP date); None if absent/bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def asked_wait(headers) -> tuple[float | None, str]:
    """The wait a reply asks for: `retry-after-ms` (milliseconds; OpenAI, Azure) or
    `Retry-After` (seconds or an HTTP date). Returns (seconds, the header as sent), or
    (None, '') when there is none or it cannot be read."""
    ms = headers.get("retry-after-ms")
    try:
        if ms is not None and math.isfinite(float(ms)):
            return max(0.0, float(ms) / 1000), f"retry-after-ms: {ms}"
    except ValueError:
        pass
    value = headers.get("Retry-After")
    seconds = retry_after_seconds(value)
    return (seconds, f"Retry-After: {value}") if seconds is not None else (None, "")


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def check_wait(seconds: float, header: str, cfg: ClientConfig, url: str) -> None:
    """Raise SetupError when a server asks to wait longer than cfg.max_wait: say what it asked
    and when to rerun, instead of putting a worker to sleep for hours."""
    if seconds > cfg.max_wait:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() + seconds))
        raise SetupError(f"{url} asks to wait {_fmt_seconds(seconds)} ({header}), more than --max-wait "
                         f"{cfg.max_wait:g} s: rerun the same command after {at} (local time), or give a "
                         f"larger --max-wait.")


@dataclass
class Reply:
    """What one chat-completions body says (read_reply).

    outcome: "answered", "refused" or "filtered" (final outcomes); "" when the body gives none,
    and then `problem` says why (or `error` holds the server's message, for an error object in a
    200 reply). answer: the text after any reasoning. refusal: the refusal text ('' for an empty
    answer). reasoning_chars: characters of reasoning removed or ignored. usage: token counts.
    """
    outcome: str = ""
    answer: str = ""
    finish_reason: str = ""
    refusal: str = ""
    reasoning_chars: int = 0
    problem: str = ""
    error: str = ""
    usage: dict | None = None


def usage_of(data) -> dict:
    """Token counts a body reports: {"prompt_tokens", "completion_tokens", "reasoning_tokens"}
    (ints; 0 when absent; reasoning is part of completion, as OpenAI counts it)."""
    u = data.get("usage") if isinstance(data, dict) else None
    u = u if isinstance(u, dict) else {}
    details = u.get("completion_tokens_details") if isinstance(u.get("completion_tokens_details"), dict) else {}

    def count(v):
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else 0
    return {"prompt_tokens": count(u.get("prompt_tokens")), "completion_tokens": count(u.get("completion_tokens")),
            "reasoning_tokens": count(details.get("reasoning_tokens"))}


USAGE_KEYS = ("prompt_tokens", "completion_tokens", "reasoning_tokens")


def no_usage() -> dict:
    return dict.fromkeys(USAGE_KEYS, 0)


def add_usage(total: dict, usage) -> None:
    """Add the token counts of `usage` (a usage_of dict, or None) to `total`, in place."""
    for k in USAGE_KEYS:
        v = (usage or {}).get(k, 0)
        total[k] += v if isinstance(v, int) else 0


def read_reply(data) -> Reply:
    """Read a chat-completions response body (a 200 reply of the server, or the body of one
    Batch API / vllm run-batch output line) into a Reply:

    - finish_reason "content_filter" (with or without content): filtered;
    - a non-empty `refusal` field: refused, its text kept;
    - no answer after the reasoning, finish_reason "length": problem "cut at the token limit";
    - no answer but reasoning (a `reasoning`/`reasoning_content` field or <think> text): problem;
    - empty or null content, finish_reason "stop" (or none): refused, with refusal '';
    - an answer that apologises ("I'm sorry, I can't ..."): refused, its text kept as refusal;
    - any other answer: answered (finish_reason "length" then means it may end in a fragment).
    A body with an `error` object and no choices gives Reply(error=the server's message).
    """
    if isinstance(data, dict) and data.get("error") and not data.get("choices"):
        return Reply(error=one_line(error_fields(data)["message"] or json.dumps(data["error"])), usage=usage_of(data))
    try:
        choice = data["choices"][0]
        message = choice["message"]
        finish = str(choice.get("finish_reason") or "")
        content = message.get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return Reply(problem="malformed response: no choices[0].message", usage=usage_of(data))
    usage = usage_of(data)
    if isinstance(content, list):  # content parts [{"type": "text", "text": ...}]
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    if content is not None and not isinstance(content, str):
        return Reply(problem="malformed response: content is not text", finish_reason=finish, usage=usage)
    answer, thought = split_reasoning(content or "")
    side = message.get("reasoning_content") or message.get("reasoning") or ""
    reasoning = len(thought) + (len(side) if isinstance(side, str) else len(json.dumps(side)))
    refusal = message.get("refusal")
    base = {"answer": answer, "finish_reason": finish, "reasoning_chars": reasoning, "usage": usage}
    if finish == "content_filter":
        return Reply("filtered", refusal=str(refusal or ""), **base)
    if isinstance(refusal, str) and refusal.strip():
        return Reply("refused", refusal=one_line(refusal, 1000), **base)
    if not answer:
        if finish == "length":
            return Reply(problem="cut at the token limit (finish_reason length) before any answer" +
                                 (" (all reasoning)" if reasoning else ""), **base)
        if reasoning:
            return Reply(problem="reasoning and no answer after it", **base)
        return Reply("refused", **base)
    if REFUSAL.search(answer[:200]):
        return Reply("refused", refusal=one_line(answer, 1000), **base)
    return Reply("answered", **base)


def outcome_result(reply: Reply, attempts: int, usage: dict, max_tokens: int | None) -> dict:
    """The result of a final outcome (a Reply with outcome answered, refused or filtered), as
    ask_llm returns it and answer_record writes it. truncated: an answer cut at the token limit
    (finish_reason "length"), whose trailing fragment is not an interest."""
    return {"outcome": reply.outcome, "answer": reply.answer, "finish_reason": reply.finish_reason,
            "truncated": reply.outcome == "answered" and reply.finish_reason == "length",
            "refusal": reply.refusal, "reasoning_chars": reply.reasoning_chars, "max_tokens": max_tokens,
            "attempts": attempts, "usage": usage}


_thread_state = threading.local()


def _session() -> requests.Session:
    """One requests.Session per worker thread (keeps connections open, never shared)."""
    if not hasattr(_thread_state, "session"):
        _thread_state.session = requests.Session()
    return _thread_state.session


THINKING_HINT = ("a thinking model (Qwen3, DeepSeek-R1, o-series, gpt-5) needs a larger --max-tokens, "
                 "e.g. --max-tokens 4000")


def ask_llm(cfg: ClientConfig, messages: list, stop: threading.Event | None = None,
            rng: random.Random | None = None) -> dict:
    """Send one user's chat-completions request; return its final outcome or a failure.

    Returns, for a final outcome (read_reply: answered, refused or filtered), {"outcome",
    "answer", "finish_reason", "truncated", "refusal", "reasoning_chars", "max_tokens",
    "attempts", "usage"}; for a failure {"error", "reason", "status", "attempts", "usage"}:
    "reason" is the cause alone in words with the URL (the same for every user that fails the
    same way), "error" adds how it ended. attempts counts the requests sent; usage sums the
    tokens of all of them (a retry costs too).

    - Cut at the token limit (finish_reason "length", with or without an answer): asked again
      at once with twice the budget, up to BUDGET_GROWTH x cfg.max_tokens. Still cut there: the
      trailing fragment is dropped (truncated: True) and the rest is the answer; with no
      complete interest left (or reasoning only) it is a failure naming THINKING_HINT.
    - Retried with waits (up to cfg.max_attempts failed attempts): HTTP 429 and 5xx, timeouts,
      dropped connections, malformed JSON, reasoning with no answer, an error object in a 200
      reply. Waits grow as backoff * 2^(n-1), capped at max_backoff, times a random factor in
      [0.5, 1] (jitter), unless the server asks for a wait (asked_wait), which is honoured up to
      cfg.max_wait.
    - A 400 rejecting the token-limit field: sent again with the other field (switch_token_field).
    - A 400 saying the content policy filtered the prompt: the final outcome "filtered".
    - Other 4xx: a failure at once (400 "context too long" can be about one user's prompt).

    Raises AuthError on 401/403, SetupError on 404 (a wrong model name, or a base URL without the
    right path: never about one user's prompt), on a request that cannot be sent and on a wait
    longer than cfg.max_wait, and QuotaError when the quota or credit is used up (is_quota):
    they hold for every user, so going on would only spend time.
    """
    rng = rng or random.Random()
    url = cfg.base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    budget, top = cfg.max_tokens, cfg.max_tokens * BUDGET_GROWTH
    usage = no_usage()
    reason, status, sent, failed = "", None, 0, 0

    def failure(why: str, how: str = "") -> dict:
        return {"error": how + why, "reason": why, "status": status, "attempts": sent, "usage": dict(usage)}

    while True:
        sent += 1
        wait = None
        field = cfg.token_field
        try:
            r = _session().post(url, json=request_body(messages, cfg.model, budget, field), headers=headers,
                                timeout=cfg.timeout)
        except requests.Timeout:
            reason, status = f"no reply from {url} within {cfg.timeout:g} s (timeout)", None
        except requests.ConnectionError as e:
            reason, status = connection_reason(e, url), None
        except (requests.RequestException, ValueError) as e:  # invalid URL or header: never sent
            raise SetupError(f"cannot send a request to {url}: {e}") from None
        else:
            status, data = r.status_code, reply_json(r)
            error = error_fields(data)
            message = server_message(r, data)
            if status in (401, 403):
                raise AuthError(f"HTTP {status} from {url}: {message}. Check $OPENAI_API_KEY and $OPENAI_BASE_URL.")
            if status == 404:
                raise SetupError(f"HTTP 404 from {url}: {message}. Check the model name (--model or $LLM_MODEL, "
                                 f"now {cfg.model!r}) and --base-url or $OPENAI_BASE_URL (usually ending in /v1).")
            if status in (402, 429) and is_quota(status, error):
                raise QuotaError(f"HTTP {status} from {url}: {message}. The quota or credit of this key is used "
                                 f"up (not a rate limit), so no user can be answered until it is topped up.")
            if status == 400 and rejects_token_field(error, field) and switch_token_field(cfg, field, message):
                continue  # sent again at once with the other field: not a failed attempt
            if 400 <= status < 500 and status != 429 and is_content_filter(error):
                return outcome_result(Reply("filtered", finish_reason="content_filter", refusal=message), sent,
                                      dict(usage), budget)
            if status == 429 or status >= 500:
                reason = f"HTTP {status} from {url}: {message}"
                wait, header = asked_wait(r.headers)
                if wait is not None:
                    check_wait(wait, header, cfg, url)
            elif status >= 400:
                return failure(f"HTTP {status} from {url}: {message}")
            elif data is None:
                start = one_line(r.content.decode("utf-8", errors="replace"), 80)
                reason = f"malformed JSON in the reply from {url}: {start!r}"
            else:
                reply = read_reply(data)
                add_usage(usage, reply.usage)
                if reply.error:
                    if is_quota(status, error):
                        raise QuotaError(f"error in a 200 reply from {url}: {reply.error}. The quota or credit "
                                         f"of this key is used up, so no user can be answered until it is topped up.")
                    reason = f"error in a 200 reply from {url}: {reply.error}"
                elif reply.finish_reason == "length" and reply.outcome in ("answered", "") and budget < top:
                    budget = min(2 * budget, top)  # cut at the limit: ask again at once with twice the budget
                    continue
                elif reply.outcome:
                    res = outcome_result(reply, sent, dict(usage), budget)
                    if res["truncated"] and not split_answer(reply.answer, truncated=True):
                        return failure(f"the answer was cut at the token limit ({top} tokens, {BUDGET_GROWTH}x "
                                       f"--max-tokens) before one complete interest" +
                                       (f"; {THINKING_HINT}" if reply.reasoning_chars else ""))
                    return res
                elif reply.finish_reason == "length":  # no answer even with the largest budget
                    return failure(f"{reply.problem} at {top} tokens ({BUDGET_GROWTH}x --max-tokens)" +
                                   (f"; {THINKING_HINT}" if reply.reasoning_chars else ""))
                else:
                    reason = reply.problem + (f" ({THINKING_HINT})" if reply.reasoning_chars else "")
        failed += 1
        if failed >= cfg.max_attempts:
            return failure(reason, f"gave up after {failed} attempts: ")
        if wait is None:
            wait = min(cfg.max_backoff, cfg.backoff * 2 ** (failed - 1)) * rng.uniform(0.5, 1.0)
        if stop is not None and stop.wait(wait):
            return failure(reason, "stopped while retrying: ")
        if stop is None:
            time.sleep(wait)


# ----------------------------------------------------------------------------------------------
# Runner: thread pool, answers file, resume, progress, cost preview
# ----------------------------------------------------------------------------------------------
EARLY_STOP_USERS = 8  # infer stops when its first min(8, to ask) finished users all failed


def read_answers(path, n_users: int | None = None, new_users: bool = False) -> dict:
    """Read an answers file (JSON lines, one object per user): returns {user id: record}.

    A torn last line (the process was killed while writing it) is ignored with a note; any other
    unreadable line, a record without an integer "user" (new_users, infer-new's file: a string),
    or a user id >= n_users raises DataError naming the file and line, and so does a folder in
    its place. A user found twice keeps its first record. A missing file is {}.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(path, 0, "is a folder, not a file")
    if not path.is_file():
        return {}
    records = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    torn_tail = lines[-1] != ""  # a complete file ends with a newline
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            user = rec["user"]
            if new_users and not (isinstance(user, str) and user):
                raise DataError(path, no, f"\"user\" must be a new user's id (a string), got {user!r}: "
                                          "is this a dataset's answers file?")
            if not new_users and (not isinstance(user, int) or isinstance(user, bool) or user < 0):
                raise DataError(path, no, f"\"user\" must be a non-negative integer, got {user!r}")
        except (ValueError, KeyError, TypeError) as e:
            if no == len(lines) and torn_tail:
                say(f"note: {path}, line {no}: ignoring a torn last line (an interrupted write)")
                break
            raise DataError(path, no, f"not a JSON object with a \"user\" field ({e})") from None
        if n_users is not None and user >= n_users:
            raise DataError(path, no, f"user id {user} out of range: the dataset has {n_users} users")
        records.setdefault(user, rec)
    return records


def unanswered(jobs: list, answers_path) -> list:
    """The jobs whose user has no final outcome in the answers file (what a rerun asks). New
    users' jobs (string ids, infer-new) read their own kind of answers file."""
    done = set(read_answers(answers_path, new_users=any(isinstance(j.user, str) for j in jobs)))
    return [j for j in jobs if j.user not in done]


def repair_tail(path) -> None:
    """Make an answers file safe to append to: a torn last line is cut off; a complete last
    line missing only its newline gets one."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    try:
        json.loads(data[cut:].decode("utf-8"))
        with open(path, "ab") as f:
            f.write(b"\n")
    except ValueError:
        with open(path, "r+b") as f:
            f.truncate(cut)


def append_jsonl(f, record: dict) -> None:
    """Append one record and flush it to the OS at once, so a kill loses nothing written."""
    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    f.flush()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def format_reasons(reasons: collections.Counter, top: int = 3) -> str:
    """The most common failure reasons, for a summary: "3 x connection refused to URL; 1 x ..."
    (the count is left out when there is one reason only), then how many other reasons."""
    common = reasons.most_common(top)
    if len(common) == 1:
        return common[0][0]
    text = "; ".join(f"{n} x {reason}" for reason, n in common)
    others = len(reasons) - len(common)
    return text + (f"; and {others} other reason(s)" if others else "")


def answer_record(job: Job, model: str, res: dict) -> dict:
    """The answers-file line of one final outcome (ask_llm's result, or one batch output line):
    user, model, time, attempts, the prompt's item ids, outcome (answered / refused / filtered),
    answer (the text after any reasoning), finish_reason, truncated (cut at the token limit:
    the trailing fragment is not an interest), max_tokens (the budget of the last request),
    usage; refusal and reasoning_chars where there are any."""
    rec = {"user": job.user, "model": model, "time": now_iso(), "attempts": res["attempts"], "items": job.items,
           "outcome": res["outcome"], "answer": res["answer"], "finish_reason": res["finish_reason"],
           "truncated": res["truncated"], "max_tokens": res.get("max_tokens"), "usage": res.get("usage") or {}}
    if res["outcome"] != "answered":
        rec["refusal"] = res.get("refusal", "")
    if res.get("reasoning_chars"):
        rec["reasoning_chars"] = res["reasoning_chars"]
    return rec


def format_usage(usage, price_in: float | None = None, price_out: float | None = None) -> str:
    """"1,234 prompt + 567 completion tokens (89 reasoning), $0.0012 at ... USD per million": the
    usage the server reported, and its cost when prices are given."""
    text = f"{usage.get('prompt_tokens', 0):,} prompt + {usage.get('completion_tokens', 0):,} completion tokens"
    if usage.get("reasoning_tokens"):
        text += f" ({usage['reasoning_tokens']:,} of them reasoning)"
    if price_in is not None or price_out is not None:
        cost = usage.get("prompt_tokens", 0) * (price_in or 0) / 1e6 + \
            usage.get("completion_tokens", 0) * (price_out or 0) / 1e6
        text += f", ${cost:,.4f} at ${price_in or 0:g} / ${price_out or 0:g} per million tokens in / out"
    return text


def estimate(jobs: list, max_tokens: int, price_in: float | None = None, price_out: float | None = None) -> dict:
    """What asking `jobs` costs at most, before anything is sent (infer --dry-run, batch-export).

    prompt_tokens: the characters of every message, divided by 4 and rounded up per user (the
    usual rule of thumb for English; a tokenizer would be a new dependency), plus 4 tokens of
    chat formatting per message. max_completion_tokens: len(jobs) * max_tokens (an answer cut at
    the limit is asked again with up to BUDGET_GROWTH x that budget, so the worst case is
    higher). cost_in / cost_out: USD at price_in / price_out per million tokens (None without
    a price). Returns those and "users"."""
    prompt = sum(math.ceil(sum(len(m["content"]) for m in j.messages) / 4) + 4 * len(j.messages) for j in jobs)
    out = {"users": len(jobs), "prompt_tokens": prompt, "max_completion_tokens": len(jobs) * max_tokens,
           "cost_in": None, "cost_out": None}
    if price_in is not None or price_out is not None:
        out["cost_in"] = prompt * (price_in or 0) / 1e6
        out["cost_out"] = out["max_completion_tokens"] * (price_out or 0) / 1e6
    return out


TYPICAL_COMPLETION_TOKENS = 150  # an answer of 10-20 short interest phrases, without reasoning


def typical_estimate(est: dict, answered: dict, price_in: float | None = None, price_out: float | None = None) -> str:
    """The likely cost beside estimate()'s upper bound: completions at the median completion
    tokens of the answers so far (the server's usage), or TYPICAL_COMPLETION_TOKENS per user
    when there are none (a reasoning model writes several times more)."""
    used = sorted(r["usage"]["completion_tokens"] for r in answered.values()
                  if isinstance(r.get("usage"), dict) and isinstance(r["usage"].get("completion_tokens"), int))
    per_user = used[len(used) // 2] if used else TYPICAL_COMPLETION_TOKENS
    where = (f"the median of the {len(used):,} answers so far" if used else
             "a typical answer without reasoning; a reasoning model writes several times more")
    text = f"typical: completions about {est['users'] * per_user:,} tokens ({per_user:,} per user, {where})"
    if price_in is not None or price_out is not None:
        text += f"; cost about ${est['prompt_tokens'] * (price_in or 0) / 1e6 + est['users'] * per_user * (price_out or 0) / 1e6:,.4f}"
    return text


def format_estimate(est: dict, max_tokens: int, batch: bool = False) -> str:
    """estimate()'s figures in a line; batch=True: for batch-export, whose answers cut at the limit
    cannot be asked again (batch-import drops the trailing fragment and marks them)."""
    again = ("a batch answer cut at that limit is kept without its last fragment" if batch
             else f"an answer cut at that limit is asked again with up to {BUDGET_GROWTH}x")
    text = (f"{est['users']:,} users to ask; prompts about {est['prompt_tokens']:,} tokens (4 characters per "
            f"token); completions at most {est['max_completion_tokens']:,} tokens ({max_tokens:,} per user; "
            f"{again})")
    if est["cost_in"] is not None:
        text += (f"; cost at most ${est['cost_in'] + est['cost_out']:,.4f} (${est['cost_in']:,.4f} in + "
                 f"${est['cost_out']:,.4f} out)")
    else:
        text += "; give --price-in and --price-out (USD per million tokens) for the cost"
    return text


def run_inference(jobs: list, answers_path, failures_path, cfg: ClientConfig, workers: int = 8,
                  progress_every: float = 5.0) -> dict:
    """Ask the LLM for every job whose user has no final outcome in the answers file yet (Eq. 1
    for all users).

    Final outcomes (answered, refused, filtered: see ask_llm) are appended to answers_path as
    they arrive (answer_record) and flushed, so a kill loses nothing written; failures go to
    failures_path (user, model, error, status, attempts, usage, time) and a failed user is asked
    again by the next run, a refused or filtered one is not. A progress line (done / failed /
    total, requests per second, ETA) goes to stderr every progress_every seconds.

    Returns counts {"answered", "refused", "filtered", "truncated" (answered but cut at the
    token limit, fragment dropped), "failed", "skipped" (already in the answers file), "total"
    (users asked), "reasons" (Counter of failure causes), "usage" (the token counts the
    server reported), "thinking" (outcomes that carried reasoning)}.

    Stops early, raising SetupError, when the first min(EARLY_STOP_USERS, users to ask) users
    that finish have all failed and none has an outcome: the base URL, model or key is then
    almost surely wrong. Raises SetupError, AuthError or QuotaError from ask_llm, and
    KeyboardInterrupt, likewise: the other workers are stopped first (no new request is sent,
    no retry wait goes on), the requests in flight are let finish and their answers written
    too, and what was written stays.
    Raises InputError for a ClientConfig check_config rejects.
    """
    check_config(cfg)
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    answers_path, failures_path = Path(answers_path), Path(failures_path)
    answers_path.parent.mkdir(parents=True, exist_ok=True)
    repair_tail(answers_path)
    repair_tail(failures_path)
    todo = unanswered(jobs, answers_path)
    counts = {"answered": 0, "refused": 0, "filtered": 0, "truncated": 0, "failed": 0,
              "skipped": len(jobs) - len(todo), "total": len(todo), "reasons": collections.Counter(),
              "usage": no_usage(), "thinking": 0}
    if counts["skipped"]:
        say(f"resume: {counts['skipped']} users already in {answers_path}, {len(todo)} to ask")
    if not todo:
        return counts
    stop = threading.Event()
    start = last_report = time.time()
    early_stop_after = min(EARLY_STOP_USERS, len(todo))

    def finished() -> int:
        return sum(counts[k] for k in ("answered", "refused", "filtered", "failed"))

    def report(final=False):
        n = finished()
        rate = n / max(time.time() - start, 1e-9)
        eta = (len(todo) - n) / rate if rate > 0 else float("inf")
        say(f"infer: {n - counts['failed']} done, {counts['failed']} failed, {len(todo)} total | "
            f"{rate:.1f} req/s | " + ("finished" if final else f"ETA {_fmt_seconds(eta)}"))

    tally, tally_lock = {"failed": 0, "other": 0}, threading.Lock()  # as the workers finish users

    def work(job):
        if stop.is_set():  # another worker hit a setup error, or the early stop: send nothing more
            return job, {"error": "stopped", "reason": "stopped", "status": None, "attempts": 0}
        try:
            res = ask_llm(cfg, job.messages, stop, random.Random(f"{job.user} {time.time_ns()}"))
        except SetupError:
            stop.set()  # at once, from the worker, not when the main thread gets to its result
            raise
        with tally_lock:  # the early stop, decided here too: a busy main thread must not let more be sent
            tally["other" if "outcome" in res else "failed"] += 1
            if tally["failed"] >= early_stop_after and not tally["other"]:
                stop.set()
        return job, res

    with open(answers_path, "a", encoding="utf-8") as answers, \
            open(failures_path, "a", encoding="utf-8") as failures:

        def record(fut):
            """Write a finished request's outcome or failure; return the exception it raised, if any."""
            if fut.cancelled():
                return None
            if fut.exception() is not None:
                return fut.exception()
            job, res = fut.result()
            add_usage(counts["usage"], res.get("usage"))
            if "outcome" in res:
                append_jsonl(answers, answer_record(job, cfg.model, res))
                counts[res["outcome"]] += 1
                counts["truncated"] += bool(res["truncated"])
                counts["thinking"] += bool(res.get("reasoning_chars"))
            elif res["attempts"]:  # (a job never sent because the run was stopping is not a failure)
                append_jsonl(failures, {"user": job.user, "model": cfg.model, "time": now_iso(),
                                        "attempts": res["attempts"], "error": res["error"],
                                        "status": res["status"], "usage": res.get("usage") or {}})
                counts["failed"] += 1
                counts["reasons"][res.get("reason") or res["error"]] += 1
            return None

        pool = cf.ThreadPoolExecutor(max_workers=workers)
        pending = {pool.submit(work, j) for j in todo}
        try:
            while pending:
                done, pending = cf.wait(pending, timeout=progress_every, return_when=cf.FIRST_COMPLETED)
                errors = [e for e in map(record, done) if e is not None]  # every answer first, then the error
                if errors:
                    raise errors[0]
                if counts["failed"] >= early_stop_after and finished() == counts["failed"]:
                    report(final=True)
                    raise SetupError(f"the first {counts['failed']} users asked all failed and none was "
                                     f"answered, so the settings are probably wrong: "
                                     f"{format_reasons(counts['reasons'])}. Check --base-url or "
                                     f"$OPENAI_BASE_URL (now {cfg.base_url}), --model or $LLM_MODEL (now "
                                     f"{cfg.model}) and $OPENAI_API_KEY, then rerun the same command.")
                if time.time() - last_report >= progress_every:
                    report()
                    last_report = time.time()
        except BaseException:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            for fut in pending:  # answers that arrived while stopping are paid for: keep them too
                record(fut)
            raise
        pool.shutdown(wait=True)
    report(final=True)
    return counts

# ----------------------------------------------------------------------------------------------
# Batch mode (OpenAI Batch API, vllm run-batch)
# ----------------------------------------------------------------------------------------------
def batch_export(jobs: list, path, model: str, max_tokens: int = 1000, token_field: str = "max_tokens") -> int:
    """Write one request line per job (custom_id = user id, url /v1/chat/completions, body as
    request_body with the token limit under token_field): the input of the OpenAI Batch API and
    of `vllm run-batch`. The caller leaves out users that already have a final outcome (so no
    answer is paid twice). Written to a temporary name and renamed. Returns the lines written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for job in jobs:
            f.write(json.dumps({"custom_id": str(job.user), "method": "POST", "url": "/v1/chat/completions",
                                "body": request_body(job.messages, model, max_tokens, token_field)},
                               ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return len(jobs)


def batch_import(batch_output, jobs: list, answers_path, failures_path) -> dict:
    """Read a batch output JSONL (OpenAI Batch API or `vllm run-batch`: one line per request,
    {"custom_id", "response": {"status_code", "body"}, "error"}) into the answers file, each body
    read as infer reads a reply (read_reply): answered, refused and filtered records as
    run_inference writes them. An answer cut at the token limit cannot be asked again here: its
    trailing fragment is dropped and the record marked truncated (with no complete interest
    left it is an error). A line that cannot be read, an unknown custom_id, an error, a non-200
    response or a body with no outcome is counted and written to failures_path (with the output
    file's line number and the server's own message), never fatal. Users already in the
    answers file are skipped. Returns {"imported", "refused", "filtered", "truncated", "failed",
    "skipped", "usage"}. Raises DataError if batch_output does not exist or is a folder.
    """
    batch_output, answers_path = Path(batch_output), Path(answers_path)
    if not batch_output.is_file():
        raise DataError(batch_output, 0, "is a folder, not a file" if batch_output.is_dir() else "file not found")
    by_user = {j.user: j for j in jobs}
    answers_path.parent.mkdir(parents=True, exist_ok=True)
    repair_tail(answers_path)
    repair_tail(failures_path)
    done_users = set(read_answers(answers_path))
    counts = {"imported": 0, "refused": 0, "filtered": 0, "truncated": 0, "failed": 0, "skipped": 0,
              "usage": no_usage()}
    with open(batch_output, encoding="utf-8", errors="replace") as src, \
            open(answers_path, "a", encoding="utf-8") as answers, \
            open(failures_path, "a", encoding="utf-8") as failures:
        for no, line in enumerate(src, 1):
            if not line.strip():
                continue
            user, error, status, res = None, "", None, None
            try:
                obj = json.loads(line.lstrip("\ufeff"))  # a BOM is not part of the JSON
                user = int(obj["custom_id"])
                if not obj.get("error") and not isinstance(obj.get("response"), dict):
                    raise KeyError("no \"response\" object")
                response = obj.get("response") or {}
                status = response.get("status_code")
                body = response.get("body")
                if obj.get("error"):
                    error = f"batch error: {one_line(error_fields(obj)['message'] or json.dumps(obj['error']))}"
                elif user not in by_user:
                    error = f"custom_id {user} is not a user with a prompt in this dataset"
                elif status != 200:
                    error = f"HTTP {status}: {one_line(error_fields(body)['message'] or json.dumps(body))}"
                else:
                    reply = read_reply(body)
                    add_usage(counts["usage"], reply.usage)
                    error = (f"error in the response body: {reply.error}" if reply.error else reply.problem) \
                        if not reply.outcome else ""
                    res = outcome_result(reply, 1, reply.usage, None)
                    if res["truncated"] and not split_answer(reply.answer, truncated=True):
                        error = "the answer was cut at the token limit before one complete interest " \
                                f"(export with a larger --max-tokens; {THINKING_HINT})"
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                error = f"unreadable line ({e})"
            if not error and user in done_users:
                counts["skipped"] += 1
                continue
            if error:
                say(f"batch-import: {batch_output}, line {no}: {error}")
                append_jsonl(failures, {"user": user, "model": "", "time": now_iso(), "batch_line": no,
                                        "error": error, "status": status})
                counts["failed"] += 1
                continue
            rec = answer_record(by_user[user], str((body or {}).get("model", "")), res)
            append_jsonl(answers, {**rec, "batch_line": no})
            done_users.add(user)
            counts["imported"] += 1
            counts["truncated"] += res["truncated"]
            if res["outcome"] != "answered":
                counts[res["outcome"]] += 1
    return counts

# ----------------------------------------------------------------------------------------------
# Coverage: how much of the dataset the interest file speaks for (read by `cikgrec_cli.py train`, in cikgrec_cli.py)
# ----------------------------------------------------------------------------------------------
COVERAGE_SUFFIX = ".coverage.json"  # user_interest_clustered.txt -> user_interest_clustered.coverage.json


def coverage_record(interest_bytes: bytes, interest_name: str, users_with_interests: int, users_with_prompt: int,
                    users_answered: int, **more) -> dict:
    """The coverage file `cluster` writes beside its interest file (one JSON object):

        made_by               "llm_interests.py cluster"
        interest_file         the interest file's name ("user_interest_clustered.txt")
        interest_file_sha256  SHA-256 (hex) of its bytes: a reader ignores a coverage file
                              whose interest file has changed since
        users_with_prompt     the dataset's users with a prompt (at least one named training item)
        users_answered        of them, the users with a final outcome in the answers file
        users_with_interests  users linked to at least one kept interest node
        answered_share        users_answered / users_with_prompt (0..1)
    and what `more` adds (dataset, answers_file, time)."""
    return {"made_by": "llm_interests.py cluster", "interest_file": interest_name,
            "interest_file_sha256": hashlib.sha256(interest_bytes).hexdigest(),
            "users_with_prompt": users_with_prompt, "users_answered": users_answered,
            "users_with_interests": users_with_interests,
            "answered_share": round(users_answered / max(users_with_prompt, 1), 4), **more}


def read_coverage(interest_file) -> dict | None:
    """The coverage record of an interest file, or None when it has none (a published file) or
    it does not match (unreadable, or its SHA-256 differs from the file's: the interest file was
    replaced after `cluster`). Needs only json, hashlib and pathlib, so cikgrec_cli.py can hold the
    same few lines without importing this module: for P = .../user_interest_clustered.txt the
    record is P.with_name(P.stem + COVERAGE_SUFFIX)."""
    path = Path(interest_file)
    cov = path.with_name(path.stem + COVERAGE_SUFFIX)
    try:
        record = json.loads(cov.read_text(encoding="utf-8"))
        same = record["interest_file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        return record if same and record["users_with_prompt"] > 0 else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def coverage_warning(record: dict | None) -> str:
    """The warning `train` gives for a coverage record ('' for none): an interest file made from
    answers covering under half of the users with a prompt (after an `infer --limit` trial)."""
    if not record or record["users_answered"] >= 0.5 * record["users_with_prompt"]:
        return ""
    return (f"warning: this interest file was made from LLM answers of {record['users_answered']} of the "
            f"{record['users_with_prompt']} users with a prompt ({record['answered_share']:.0%}), as after an "
            f"`infer --limit` trial; run `llm_interests.py infer` for all users, then `cluster`, for a full one")


# ----------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------
def bench(n_phrases: int = 33000, n_users: int = 6616, k: int = 350, seed: int = 0, n_init: int = 3) -> dict:
    """Time TF-IDF and k-means on a synthetic corpus the size of the largest dataset's answers
    (about 5 phrases per user, 1-3 words from a Zipf-distributed vocabulary of 3,000 words, so
    phrases repeat as LLM answers do). Prints and returns the timings in seconds."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(3000)]
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    lengths = rng.choice([1, 2, 3], size=n_phrases, p=[0.3, 0.5, 0.2])
    words = rng.choice(len(vocab), size=int(lengths.sum()), p=p)
    cuts = np.cumsum(lengths)[:-1]
    all_phrases = [" ".join(vocab[i] for i in ws) for ws in np.split(words, cuts)]
    said = collections.Counter(all_phrases)
    phrases = sorted(said)
    weights = np.array([said[q] for q in phrases], dtype=float)
    t0 = time.time()
    x, terms = tfidf(phrases, weights)
    t_tfidf = time.time() - t0
    t0 = time.time()
    kmeans(x, k, weights, n_init=n_init, seed=seed)
    t_kmeans = time.time() - t0
    print(f"bench: {n_phrases} phrases ({len(phrases)} distinct, ~{n_phrases / n_users:.1f} per user for "
          f"{n_users} users), {len(terms)} terms, k = {k}, {n_init} seedings")
    print(f"bench: TF-IDF {t_tfidf:.2f} s, k-means {t_kmeans:.2f} s")
    return {"tfidf_s": t_tfidf, "kmeans_s": t_kmeans, "distinct": len(phrases), "terms": len(terms)}


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False, description="Infer user interests with an LLM (Eq. 1) and cluster "
                                            "them into interest nodes (Eq. 2).")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp_, out=True):
        sp_.add_argument("--dataset", required=True, help="dataset folder name under --data-dir")
        sp_.add_argument("--data-dir", default="data", help="folder holding one folder per dataset")
        sp_.add_argument("--out-dir", default="interests", help="outputs go to OUT_DIR/<dataset>/")
        sp_.add_argument("--split-seed", type=int, default=0, help="validation split seed (as cikgrec.py)")
        sp_.add_argument("--field", default="", help="item word in the prompt (default: movies/books)")

    def llm(sp_):
        sp_.add_argument("--model", default=os.environ.get("LLM_MODEL") or DEFAULT_MODEL,
                         help=f"model name (default $LLM_MODEL or {DEFAULT_MODEL})")
        sp_.add_argument("--max-tokens", type=int, default=1000,
                         help="completion budget per user (a thinking model needs more, e.g. 4000); an answer cut "
                              f"at it is asked again with up to {BUDGET_GROWTH}x")
        sp_.add_argument("--token-field", default="max_tokens", choices=TOKEN_FIELDS,
                         help="the body field of the budget (OpenAI's reasoning models: max_completion_tokens; "
                              "infer switches by itself when the server asks)")
        sp_.add_argument("--limit", type=int, default=0, help="ask only the first N users with a prompt (default 0: all)")
        sp_.add_argument("--price-in", type=float, default=None, help="USD per million prompt tokens (for the cost)")
        sp_.add_argument("--price-out", type=float, default=None, help="USD per million completion tokens")

    def client(q):
        q.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
                       help="OpenAI-compatible base URL (default $OPENAI_BASE_URL or the OpenAI API)")
        q.add_argument("--workers", type=int, default=8, help="concurrent requests")
        q.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
        q.add_argument("--max-attempts", type=int, default=6, help="attempts per user")
        q.add_argument("--backoff", type=float, default=1.0, help="first retry wait in seconds (doubles)")
        q.add_argument("--max-wait", type=float, default=60.0,
                       help="longest wait a server may ask for (Retry-After) in seconds; longer stops the run")
        q.add_argument("--dry-run", action="store_true", help="send nothing: print the users, tokens and cost")
        q.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines")

    q = sub.add_parser("infer", allow_abbrev=False, help="ask the LLM for every user (resumes an interrupted run)")
    common(q)
    llm(q)
    client(q)

    q = sub.add_parser("infer-new", allow_abbrev=False,
                       help="new users' interests from their histories, in the clusters of a run's `cluster`")
    q.add_argument("--history", required=True, help="one line per new user: a new id, then the items liked, in "
                                                    "order, as item_list.txt's org_id column names them (- reads standard input)")
    q.add_argument("--dataset", required=True, help="dataset folder name under --data-dir (item_list.txt is read)")
    q.add_argument("--data-dir", default="data", help="folder holding one folder per dataset")
    q.add_argument("--field", default="", help="item word in the prompt (default: movies/books)")
    q.add_argument("--clusters", required=True, help="the folder `cluster` wrote (interests/<dataset>) or its "
                                                     + CLUSTER_FILES[3])
    q.add_argument("--out", required=True, help="written: `new_id interest_id` lines")
    q.add_argument("--answers", default="", help="the new users' answers (resume); default OUT's name with "
                                                 ".answers.jsonl; failures go beside it (.failures.jsonl)")
    llm(q)
    client(q)

    q = sub.add_parser("batch-export", allow_abbrev=False, help="write an OpenAI Batch API input file")
    common(q)
    llm(q)
    q.add_argument("--out", default="", help="default OUT_DIR/<dataset>/batch_input.jsonl")

    q = sub.add_parser("batch-import", allow_abbrev=False, help="read a Batch API output file into the answers file")
    q.add_argument("file")
    common(q)

    q = sub.add_parser("cluster", allow_abbrev=False, help="answers -> user_interest_clustered.txt (Eq. 2)")
    common(q)
    q.add_argument("--k", type=int, default=0, help="clusters kappa (default per dataset: " +
                   ", ".join(f"{d} {k}" for d, k in DEFAULT_K.items()) + "; others 350)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--n-init", type=int, default=3, help="k-means++ seedings; the best is kept")
    q.add_argument("--max-iter", type=int, default=100)
    q.add_argument("--max-df", type=float, default=0.8)
    q.add_argument("--max-share", type=float, default=0.2, help="drop clusters held by this share of users")

    q = sub.add_parser("bench", allow_abbrev=False, help="time TF-IDF and k-means on a synthetic corpus")
    q.add_argument("--phrases", type=int, default=33000)
    q.add_argument("--users", type=int, default=6616)
    q.add_argument("--k", type=int, default=350)
    q.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def check_args(args) -> None:
    """Reject a numeric option the command cannot work with, in one line (InputError, exit code
    2), before any data is loaded: counts below 1, a negative --limit (0 means all users) or
    seed, a --progress-every that is not a positive number, cluster's --k/--max-share/--max-df
    out of range. infer's client settings are checked by check_config."""
    for name in ("workers", "max_attempts", "max_tokens", "n_init", "max_iter", "phrases", "users"):
        if getattr(args, name, 1) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("limit", "split_seed", "seed"):
        if getattr(args, name, 0) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("price_in", "price_out"):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise InputError(f"--{name.replace('_', '-')} must be a number of USD per million tokens >= 0, got {value:g}")
    every = getattr(args, "progress_every", 1.0)
    if not (math.isfinite(every) and every > 0):
        raise InputError(f"--progress-every must be a positive number of seconds, got {every:g}")
    if args.command == "bench" and args.k < 1:
        raise InputError(f"--k must be at least 1, got {args.k}")
    if args.command == "cluster" and (args.k < 0 or not 0 < args.max_share <= 1 or not 0 < args.max_df <= 1):
        raise InputError(f"--k must be >= 1 (0: the dataset default), --max-share and --max-df in (0, 1]; "
                         f"got {args.k}, {args.max_share}, {args.max_df}")


def check_outputs(paths, dataset_folder, hint: str = "see --out-dir") -> None:
    """Raise InputError (one line naming the path) unless every path can be written as a file,
    before any data is read or any request sent; creates nothing. Refused: a folder, a path
    under a file, a read-only file or folder, and a file anywhere inside the dataset folder (never
    written: --out-dir equal to --data-dir would overwrite its user_interest_clustered.txt)."""
    for path in map(Path, paths):
        parent = path.parent
        while not parent.exists():  # the nearest existing folder above (or a file in the way)
            parent = parent.parent
        if path.is_dir():
            problem = "it is a folder, not a file"
        elif not parent.is_dir():
            problem = f"{parent} is a file, not a folder"
        elif not (os.access(path, os.W_OK) if path.exists() else os.access(parent, os.W_OK | os.X_OK)):
            problem = "permission denied"
        elif path.resolve().is_relative_to(Path(dataset_folder).resolve()):
            problem = f"it is in the dataset folder, which is never written ({hint})"
        else:
            continue
        raise InputError(f"cannot write {path}: {problem}")


EDGE_LINE = re.compile(r"\S+[ \t]+[0-9]+")  # `new_id interest_id`, a line infer-new writes


def json_with(*keys: str):
    """A test of a first line: a JSON object holding every one of `keys`."""
    def test(line: str) -> bool:
        try:
            row = json.loads(line)
        except ValueError:
            return False
        return isinstance(row, dict) and all(key in row for key in keys)
    return test


def first_line(path: Path) -> str:
    """The first line of a file (at most 4096 bytes of it), stripped; bytes that are not UTF-8
    replaced. What check_own_file (and recommend --out) judge an existing output by."""
    with open(path, "rb") as f:
        return f.readline(4096).decode("utf-8", "replace").strip()


def check_own_file(path: Path, looks_right, what: str) -> None:
    """infer-new replaces or appends to only its own files: InputError (nothing written, nothing
    cut) unless `path` does not exist, or is a regular file that is empty or whose first line
    looks_right accepts (an earlier output of the same kind)."""
    if not path.exists():
        return
    if not path.is_file():
        raise InputError(f"cannot write {path}: it is not a regular file")
    first = first_line(path)
    if first and not looks_right(first):
        raise InputError(f"cannot write {path}: it exists and is not {what} (its first line: {first[:60]!r}); "
                         "give another name, or remove it")


def prompt_jobs(args) -> list:
    """The jobs of infer, batch-export and batch-import (--limit applied), from train.txt and
    item_list.txt alone. Raises DataError when no user has a prompt (nothing to ask)."""
    folder = Path(args.data_dir) / args.dataset
    jobs, skipped = make_jobs(load_prompt_data(folder), args.field or ITEM_WORD.get(args.dataset, "items"),
                              args.split_seed)
    if not jobs:
        raise DataError(folder / "item_list.txt", 0, f"none of the {len(skipped)} users of train.txt has a "
                                                     "training item with a name here, so no prompt can be built")
    if getattr(args, "limit", 0):
        jobs = jobs[:args.limit]
    say(f"{args.dataset}: {len(jobs)} users with a prompt, {len(skipped)} without a named item (skipped)")
    return jobs


def counted(c: dict, names=("refused", "filtered")) -> str:
    """", 2 refused, 1 filtered" for the outcomes that occurred ('' if none)."""
    return "".join(f", {c[n]} {n}" for n in names if c.get(n))


def dry_run(args, cfg: ClientConfig, jobs: list, answers: Path) -> int:
    """infer / infer-new --dry-run: say what asking the users without a final outcome costs, and
    show one prompt; send and write nothing."""
    todo = unanswered(jobs, answers)
    est = estimate(todo, cfg.max_tokens, args.price_in, args.price_out)
    say(f"dry run ({cfg.model}, {len(jobs) - len(todo)} users already answered in {answers}): "
        f"{format_estimate(est, cfg.max_tokens)}.")
    new_users = any(isinstance(j.user, str) for j in jobs)
    say(typical_estimate(est, read_answers(answers, new_users=new_users), args.price_in, args.price_out))
    if todo:
        say(f"the first prompt ({todo[0].user}'s):\n" + "\n".join(f"  [{m['role']}] {m['content']}"
                                                                  for m in todo[0].messages))
    say("Nothing was sent.")
    return 0


def run_notes(c: dict, args, failures: Path, name: str = "infer") -> int:
    """After run_inference: the usage, reasoning and failure lines of a summary. Returns the
    exit code: 1 when users failed (a rerun asks them again), else 0."""
    if c["total"]:
        say(f"{name} usage: {format_usage(c['usage'], args.price_in, args.price_out)}" if sum(c["usage"].values())
            else f"{name} usage: the server reported none")
    if c["thinking"]:
        say(f"{name}: {c['thinking']} answers came with reasoning (a thinking model): their reasoning is not used; "
            f"if answers are cut or fail at the token limit, {THINKING_HINT}")
    if c["failed"]:
        say(f"{name}: {c['failed']} users failed: {format_reasons(c['reasons'])} (details in {failures})")
        say(f"{name}: rerun the same command to ask the failed users again (answered users are kept)")
        return 1
    return 0


def cmd_infer(args, cfg: ClientConfig, jobs: list, answers: Path, failures: Path) -> int:
    """infer: ask every user without a final outcome; with --dry-run only say what that costs."""
    if args.dry_run:
        return dry_run(args, cfg, jobs, answers)
    say(f"infer: {cfg.base_url}/chat/completions, model {cfg.model}, {args.workers} workers -> {answers}")
    c = run_inference(jobs, answers, failures, cfg, args.workers, args.progress_every)
    truncated = f" ({c['truncated']} cut at the token limit, fragment dropped)" if c["truncated"] else ""
    say(f"infer summary: {c['answered']} answered now{truncated}{counted(c)}, {c['failed']} failed, "
        f"{c['skipped']} already answered, {len(read_answers(answers))} users in {answers}")
    return run_notes(c, args, failures)


# ----------------------------------------------------------------------------------------------
# infer-new: new users' interests, placed in a run's clusters (its interest ids)
# ----------------------------------------------------------------------------------------------
def source_path(out: Path) -> Path:
    """Beside infer-new's output, the record of the interest file whose ids it holds:
    {"interest_sha256": SHA-256 of user_interest_clustered.txt, "clusters": --clusters}. `recommend
    --new-interests` compares it with the run's interest file, so ids of another clustering are refused."""
    return out.with_name(out.name + ".source.json")


def clustering_folder(clusters) -> Path:
    """--clusters (the folder `cluster` wrote, or a file in it) -> that folder."""
    path = Path(clusters)
    return path.parent if path.is_file() else path


def run_state(clusters) -> ClusterState:
    """--clusters (the folder `cluster` wrote, its .model.npz, or the interest file beside it) ->
    the run's ClusterState. Raises InputError (one line) when there is none: the published
    interest files carry no clustering state; DataError when the file is not a state, or the
    interest file beside it is not the one written with it (a later `cluster` was cut short)."""
    path = Path(clusters)
    if not path.exists():
        raise DataError(path, 0, "not found (--clusters: the folder `llm_interests.py cluster` wrote, or its "
                                 f"{CLUSTER_FILES[3]})")
    if path.is_dir() or path.suffix != ".npz":
        path = clustering_folder(path) / CLUSTER_FILES[3]
        if not path.is_file():
            raise InputError(f"{clusters} holds no clustering state ({CLUSTER_FILES[3]}; published interest files "
                             f"carry none): run `llm_interests.py cluster` to make one, train on its "
                             f"{CLUSTER_FILES[0]}, and give its folder as --clusters")
    state = load_state(path)
    interests = path.parent / CLUSTER_FILES[0]
    if state.interest_sha256 and interests.is_file() and \
            hashlib.sha256(interests.read_bytes()).hexdigest() != state.interest_sha256:
        raise DataError(interests, 0, f"is not the interest file written with {path.name} (changed since, or a "
                                      "later `cluster` was cut short): rerun `llm_interests.py cluster`")
    return state


def open_input(path):
    """cikgrec.open_text for an input file, or standard input (left open) when path is "-"."""
    return contextlib.nullcontext(sys.stdin) if str(path) == "-" else cikgrec.open_text(Path(path))


def read_histories(path, what: str = "history") -> dict:
    """A file of new users (recommend --history, llm_interests.py infer-new): one line each, `new_id
    item item ...` in original item ids (tabs or spaces, no header; a new id is never matched against
    user_list.txt); with what="interests", `new_id interest_id` pairs, a user on several lines.
    Returns {new id: [ids as strings]} in file order ({} for an interest file without lines).
    Raises DataError naming file and line on a line without items, bytes that are not UTF-8, a
    control character (a tab separates), and a new id already on an earlier line of a history
    file; also on a history file without lines. path "-" reads standard input."""
    out, line_of = {}, {}
    with open_input(path) as text:  # DataError on a missing file, a folder or a byte-order mark
        path = "standard input" if str(path) == "-" else path  # (as error messages name it)
        f = text.buffer  # bytes: a byte that is not UTF-8 is named, not replaced (and a pipe is read once)
        for no, raw in enumerate(f, 1):
            if no == 1 and raw.startswith(b"\xef\xbb\xbf"):  # (open_text checks a file; this, standard input)
                raise DataError(path, 1, "starts with a byte-order mark (BOM): give plain UTF-8 without a BOM")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, no, f"byte 0x{raw[e.start]:02x} (byte {e.start + 1} of the line) is not UTF-8 text") from None
            fields = line.split()
            if not fields:
                continue
            bad = next((c for c in line.rstrip("\r\n") if c != "\t" and unicodedata.category(c) == "Cc"), None)
            if bad is not None:
                raise DataError(path, no, f"control character U+{ord(bad):04X} at column {line.index(bad) + 1}")
            if what == "interests" and (len(fields) != 2 or not (fields[1].isascii() and fields[1].isdigit())):
                raise DataError(path, no, f"expected `new_id interest_id` (an integer id of the run's interest "
                                          f"file), got {line.strip()[:80]!r}")
            if len(fields) < 2:
                raise DataError(path, no, f"expected a new user's id, then their items (original item ids, "
                                          f"item_list.txt), got {line.strip()[:80]!r}")
            if what == "history" and fields[0] in line_of:
                raise DataError(path, no, f"new user {fields[0]!r} is already on line {line_of[fields[0]]}")
            line_of.setdefault(fields[0], no)
            out.setdefault(fields[0], []).extend(fields[1:])
    if not out and what == "history":  # (an interest file without lines: infer-new placed no phrase)
        raise DataError(path, 0, "the file is empty")
    return out


def read_history(path, item_of: dict) -> tuple[list, list]:
    """infer-new's history file (read_histories: `new_id item item ...` lines) ->
    ([(new id, [item ids])], [unknown original ids, one per use]); item_of maps the original ids
    (item_list.txt's org_id column) to item ids. An unknown item is left out and listed."""
    histories = read_histories(path)
    unknown = [i for items in histories.values() for i in items if i not in item_of]
    return [(u, [item_of[i] for i in items if i in item_of]) for u, items in histories.items()], unknown


def new_user_jobs(args, folder: Path) -> list:
    """infer-new's jobs: one per new user of --history with a named known item, with the prompt
    of `infer` (history_jobs: the titles of the last N_LAST_ITEMS named items, the same field
    word), all of them (cmd_infer_new asks only the first --limit). Notes name the unknown items and
    the users left without a prompt."""
    items_path, rows = Path(folder) / "item_list.txt", read_item_rows(folder)
    titles, item_of = [item_title(name) for _, name in rows], {}
    for item, (org_id, _) in enumerate(rows):
        item_of.setdefault(org_id, item)
    histories, unknown = read_history(args.history, item_of)
    if unknown:
        first = ", ".join(list(dict.fromkeys(unknown))[:5])
        say(f"note: {len(set(unknown))} items of {args.history} are not in the org_id column of {items_path}, "
            f"left out: {first}{', ...' if len(set(unknown)) > 5 else ''}")
    jobs, skipped = history_jobs(histories, titles, args.field or ITEM_WORD.get(args.dataset, "items"))
    if skipped:
        say(f"note: {len(skipped)} new users have no known item with a name, not asked: "
            f"{', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''}")
    if not jobs:
        raise DataError(args.history, 0, f"no new user has an item of {items_path} with a name: nothing to ask "
                                         "(are the histories of this --dataset?)")
    say(f"infer-new: {len(histories)} new users in {args.history}, {len(jobs)} to place"
        + (f", the first {args.limit} of them asked (--limit)" if 0 < args.limit < len(jobs) else ""))
    return jobs


def cmd_infer_new(args, cfg: ClientConfig, jobs: list, state: ClusterState, out: Path, answers: Path,
                  failures: Path) -> int:
    """infer-new: ask the new users without a final outcome (run_inference: resume, failure
    records), place their phrases in the run's clusters (new_user_edges) and write `new_id
    interest_id` lines for every new user with an answer; --dry-run only says what asking costs."""
    asked = jobs[:args.limit] if args.limit else jobs  # --limit: who is asked; the output has all answered
    if args.dry_run:
        return dry_run(args, cfg, asked, answers)
    say(f"infer-new: {cfg.base_url}/chat/completions, model {cfg.model}, {args.workers} workers -> {answers}")
    c = run_inference(asked, answers, failures, cfg, args.workers, args.progress_every)
    recs = read_answers(answers, new_users=True)
    answered = {j.user: recs[j.user] for j in jobs if j.user in recs}
    changed = [j.user for j in jobs if j.user in recs and recs[j.user].get("items") not in (None, j.items)]
    if changed:
        say(f"note: the histories of {len(changed)} new users differ from those their answers in {answers} were "
            f"asked with; the old answers are kept: {', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''} "
            "(delete their lines there to ask again)")
    edges, n = new_user_edges(answered, state)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((source_path(out), json.dumps({"interest_sha256": state.interest_sha256, "clusters": str(
            args.clusters)}) + "\n"), (out, "".join(f"{u} {j}\n" for u, j in edges))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    bad = ", ".join(f"{k} {kind}" for kind, k in sorted(n["problems"].items()))
    say(f"infer-new summary: {c['total']} users asked now ({c['answered']} answered{counted(c)}, {c['failed']} "
        f"failed), {c['skipped']} answered before; {len(answered)} of {len(jobs)} users have an answer"
        f"{f' ({bad} without interests)' if bad else ''}; phrases: {n['assigned']} assigned, {n['dropped']} "
        f"in a dropped cluster, {n['unknown']} with no known term; {len(edges)} edges for {n['users']} users "
        f"-> {out}")
    return run_notes(c, args, failures, "infer-new")


def cmd_batch_export(args, jobs: list, answers: Path, batch_input: Path) -> int:
    """batch-export: one request per user without a final outcome (no answer is paid twice)."""
    todo = unanswered(jobs, answers)
    if len(todo) < len(jobs):
        say(f"batch-export: {len(jobs) - len(todo)} users already have an answer in {answers}: left out")
    n = batch_export(todo, batch_input, args.model, args.max_tokens, args.token_field)
    say(f"batch-export: {n} requests (model {args.model}, {args.token_field} {args.max_tokens}) -> {batch_input}")
    say(f"batch-export: {format_estimate(estimate(todo, args.max_tokens, args.price_in, args.price_out), args.max_tokens, batch=True)}"
        + (" (the Batch API bills half of the usual prices)" if args.price_in is not None else ""))
    return 0


def cmd_cluster(args, folder: Path, out: Path, answers: Path) -> int:
    """cluster: answers -> interest nodes, with the coverage written beside them."""
    k = args.k or DEFAULT_K.get(args.dataset, 350)
    # with_interests=False: the dataset's interest file is what cluster replaces, broken or not
    dataset = cikgrec.load_dataset(folder, name=args.dataset, with_interests=False)
    recs = read_answers(answers, dataset.n_users)
    if not recs:
        raise DataError(answers, 0, "no answers: run `llm_interests.py infer` (or batch-import) first")
    prompted = {j.user for j in make_jobs(dataset, "items", args.split_seed)[0]}
    r = cluster_answers(recs, dataset.n_entities, k, args.max_df, args.max_share, args.seed, args.n_init,
                        args.max_iter)
    coverage = {"users_with_prompt": len(prompted), "users_answered": len(prompted & set(recs)),
                "dataset": args.dataset, "answers_file": str(answers), "time": now_iso()}
    edges_path, tsv_path, cov_path = write_outputs(r, out, coverage)
    bad = ", ".join(f"{n} {kind}" for kind, n in sorted(r["problems"].items())) or "none"
    say(f"cluster summary: {r['n_answers']} answers ({bad} without interests; {r['n_truncated']} truncated, "
        f"their fragment dropped), {r['n_phrases']} phrases ({r['n_distinct']} distinct; {r['n_dropped']} more "
        f"dropped by cleaning: no Latin letters, or too long), k = {r['n_clusters']}, {r['n_kept']} interest nodes "
        f"kept, {len(r['edges'])} edges for {r['n_users_linked']} users -> {edges_path}, {tsv_path}")
    share = coverage["users_answered"] / max(coverage["users_with_prompt"], 1)
    say(f"cluster: the answers cover {coverage['users_answered']} of the {coverage['users_with_prompt']} users "
        f"with a prompt ({share:.0%}) -> {cov_path}")
    if share < 0.5:
        say(f"warning: under half of the users with a prompt have an answer (an `infer --limit` trial?); "
            f"`cikgrec_cli.py train` warns when it reads {edges_path.name}")
    return 0


def main(argv=None) -> int:
    """Run one command. Exit codes: 0 done; 1 `infer` or `infer-new` finished but some users
    failed (the summary says why; rerunning the same command asks only them again, and `make
    interests` stops before `cluster`); 2 a bad option or input, or `infer` stopped at once (HTTP
    401/403/404, a used-up quota, a server asking to wait past --max-wait, or its first users
    all failed: the answers so far are kept and a rerun continues); 130 interrupted."""
    args = parse_args(argv)
    jobs, answers = [], None
    try:
        check_args(args)
        if args.command in ("infer", "infer-new"):
            cfg = ClientConfig(args.base_url, os.environ.get("OPENAI_API_KEY", "").strip(), args.model,
                               args.max_tokens, args.timeout, args.max_attempts, args.backoff,
                               max_wait=args.max_wait, token_field=args.token_field)
            check_config(cfg)
        if args.command == "bench":
            bench(args.phrases, args.users, args.k, args.seed)
            return 0
        folder = Path(args.data_dir) / args.dataset
        if args.command == "infer-new":
            out = Path(args.out)
            answers = Path(args.answers) if args.answers else out.with_name(out.stem + ".answers.jsonl")
            failures = answers.with_name(answers.stem + ".failures.jsonl")
            if len({out.resolve(), answers.resolve(), failures.resolve()}) < 3:
                raise InputError(f"--out and --answers must be different files (both {out})")
            if Path(args.history).resolve() in {out.resolve(), answers.resolve(), failures.resolve()}:
                raise InputError(f"--out and --answers must not be the --history file {args.history}")
            clusters = Path(args.clusters)  # the folder `cluster` wrote, or a file in it: its files are read
            kept = {clustering_folder(clusters) / n for n in CLUSTER_FILES} | {clusters}
            hit = next((p for p in (out, source_path(out), answers, failures) if p.resolve() in
                        {k.resolve() for k in kept}), None)
            if hit:
                raise InputError(f"--out and --answers must not be files of --clusters {args.clusters}: {hit} "
                                 "is one (it would be overwritten)")
            check_outputs([out, out.with_name(out.name + ".tmp"), source_path(out), answers, failures], folder,
                          "give --out a path outside it")
            for path, looks_right, what in ((out, EDGE_LINE.fullmatch, "an interest file infer-new wrote"),
                                            (source_path(out), json_with("interest_sha256"), "infer-new's record"),
                                            (answers, json_with("user"), "an answers file"),
                                            (failures, json_with("user"), "a failures file")):
                check_own_file(path, looks_right, what)
            state = run_state(args.clusters)
            jobs = new_user_jobs(args, folder)
            return cmd_infer_new(args, cfg, jobs, state, out, answers, failures)
        out = Path(args.out_dir) / args.dataset
        answers, failures = out / "llm_answers.jsonl", out / "llm_failures.jsonl"
        batch_input = Path(args.out) if getattr(args, "out", "") else out / "batch_input.jsonl"
        check_outputs({"infer": [answers, failures], "batch-import": [answers, failures],
                       "batch-export": [batch_input, batch_input.with_name(batch_input.name + ".tmp")],
                       # and cluster's files with their temporary names:
                       "cluster": [out / (n + t) for n in CLUSTER_FILES for t in ("", ".tmp")]}[args.command],
                      folder)
        if args.command == "cluster":
            return cmd_cluster(args, folder, out, answers)
        jobs = prompt_jobs(args)
        if args.command == "infer":
            return cmd_infer(args, cfg, jobs, answers, failures)
        if args.command == "batch-export":
            return cmd_batch_export(args, jobs, answers, batch_input)
        c = batch_import(args.file, jobs, answers, failures)
        if not c["imported"] + c["failed"] + c["skipped"] + c["refused"] + c["filtered"]:
            say(f"warning: {args.file} holds no batch output line: nothing imported")
        truncated = f" ({c['truncated']} truncated, fragment dropped)" if c["truncated"] else ""
        say(f"batch-import summary: {c['imported']} imported{truncated}{counted(c)}, {c['failed']} errors "
            f"(in {failures.name}), {c['skipped']} already answered -> {answers}; "
            f"usage {format_usage(c['usage'])}")
        return 0
    except DataError as e:
        say(f"error: {e}")
    except SetupError as e:  # AuthError and QuotaError included
        say(f"error: stopped: {e} Answers written so far are kept.")
        if jobs and answers is not None:
            try:
                left = len(unanswered(jobs, answers))
                say(f"{args.command}: {len(jobs) - left} of {len(jobs)} users have an answer in {answers}, {left} left: "
                    f"rerun the same command to continue (answered users are not asked again)")
            except DataError:
                pass
    except InputError as e:
        say(f"error: {e}")
    except OSError as e:  # what check_outputs cannot foresee (a full disk, a race): still one line
        say(f"error: {e.filename}: {e.strerror}" if e.filename else f"error: {e}")
    except KeyboardInterrupt:
        say("interrupted: answers written so far are kept; rerun the same command to resume")
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
