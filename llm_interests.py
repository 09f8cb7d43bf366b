"""CIKGRec, first half: infer user interests with an LLM (Eq. 1) and structure them into
interest nodes by text clustering (Eq. 2). Paper section "LLM-based CIKG Construction".

One readable file, in the order the data flows:
prompts -> client with retries -> runner (thread pool, answers file, resume, progress)
-> batch export/import -> cleaning -> TF-IDF -> k-means -> filtering and writing -> command line.

    python llm_interests.py infer   --dataset book-crossing --data-dir ../shared/data
    python llm_interests.py cluster --dataset book-crossing --data-dir ../shared/data
    python llm_interests.py batch-export --dataset ml1m      (OpenAI Batch API input)
    python llm_interests.py batch-import FILE --dataset ml1m (Batch API output -> answers file)
    python llm_interests.py bench                            (TF-IDF and k-means timing)

Everything is written under interests/<dataset>/ (--out-dir), never into the dataset folder.
The LLM is any OpenAI-compatible chat-completions server: $OPENAI_BASE_URL (default
https://api.openai.com/v1), $OPENAI_API_KEY (may be unset for a local server), $LLM_MODEL.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import email.utils
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
import scipy.sparse as sp

import cikgrec  # shared: load_dataset, split_validation, DataError

DataError = cikgrec.DataError
item_title = cikgrec.item_title  # DBpedia URI -> readable title, shared with explain

# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------
ITEM_WORD = {"ml1m": "movies", "dbbook2014": "books", "book-crossing": "books"}  # --field overrides
# kappa, the number of clusters of Eq. (2). book-crossing: 350, the authors' script. ml1m and
# dbbook2014: their published interest ids span 550 and 544 values, so their kappa was at least
# that; we use 550 for both.
DEFAULT_K = {"ml1m": 550, "dbbook2014": 550, "book-crossing": 350}
N_LAST_ITEMS = 30  # items per prompt: the user's last 30 named training items
DEFAULT_MODEL = "gpt-3.5-turbo-0125"  # the authors' model; --model or $LLM_MODEL override
DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_ANSWER_CHARS = 600  # an answer longer than this is not "at most five short interests"
MIN_PHRASE_CHARS, MAX_PHRASE_CHARS = 2, 50  # cleaned phrases outside this range are dropped
CLUSTER_FILES = ("user_interest_clustered.txt", "interest_clusters.tsv")  # what `cluster` writes
EARLY_STOP_USERS = 8  # infer stops when its first min(8, to ask) finished users all failed

SYSTEM_PROMPT = (
    "You are shown the {field} that an anonymous user liked. Infer the user's interests from "
    "them. Answer with at most five short interests of a few words each, separated by commas, "
    "and nothing else: no numbering, no explanation.")


def say(*parts) -> None:
    """Progress and summaries go to stderr, so stdout stays clean for data (bench prints there)."""
    print(*parts, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Prompts (the P_u of Eq. 1)
# ----------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One user's request: the user id, the item ids in the prompt and the chat messages."""
    user: int
    items: list
    messages: list


def build_messages(titles: list, field: str) -> list:
    """The chat messages for one user: our system instruction, then the titles in brackets
    joined by ', ' (the authors' format, REFERENCE "Interest inference")."""
    liked = ", ".join(f"[{t}]" for t in titles)
    return [{"role": "system", "content": SYSTEM_PROMPT.format(field=field)},
            {"role": "user", "content": f"The {field} this user liked: {liked}"}]


@dataclass
class PromptData:
    """What the prompts are made of (load_prompt_data): training item ids per user, item names."""
    train: list
    item_names: list


def load_prompt_data(folder) -> PromptData:
    """Read what the prompts need and nothing more: train.txt and item_list.txt of a dataset
    folder, checked as cikgrec.load_dataset checks them (item ids against item_list.txt, user
    ids against user_list.txt). kg_final.txt, test.txt and user_interest_clustered.txt are not
    read, so a broken one does not stop `infer` or the batch commands (which regenerate the
    interest file). Raises DataError naming the file, also when item_list.txt is missing."""
    folder = cikgrec.dataset_folder(folder)
    names_path = folder / "item_list.txt"
    if not names_path.exists():
        raise DataError(names_path, 0, "not found: the prompts name each user's items by the titles this file holds")
    names = cikgrec.read_item_names(names_path)
    listed_users = cikgrec.list_size(folder / "user_list.txt")
    train = cikgrec.read_user_items(folder / "train.txt", len(names), listed_users)
    if listed_users is None:  # a stray huge user id would make a huge list below
        cikgrec.check_dense(folder / "train.txt", "user", set(train))
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
    titles = [cikgrec.item_title(n) for n in dataset.item_names]
    jobs, skipped = [], []
    for user, items in enumerate(train_part):
        named = [int(i) for i in items if i < len(titles) and titles[i]][-n_last:]
        if not named:
            skipped.append(user)
            continue
        jobs.append(Job(user, named, build_messages([titles[i] for i in named], field)))
    return jobs, skipped


# ----------------------------------------------------------------------------------------------
# Client: one request, with retries (Eq. 1, A_u = LLM(P_u, E_u+))
# ----------------------------------------------------------------------------------------------
class InputError(Exception):
    """A setting or an input the command cannot work with (reported in one line, exit code 2)."""


class SetupError(Exception):
    """The settings are wrong for every user, so `infer` stops at once (exit code 2): HTTP
    401/403/404 (see ask_llm), a request that cannot be sent, or the first users all failing
    (see run_inference)."""


class AuthError(SetupError):
    """HTTP 401/403: the key or the server is wrong for every user."""


@dataclass
class ClientConfig:
    """Where and how to send chat-completion requests."""
    base_url: str = DEFAULT_BASE_URL  # .../v1; the request goes to {base_url}/chat/completions
    api_key: str = ""  # sent as a Bearer token when not empty
    model: str = DEFAULT_MODEL
    max_tokens: int = 1000  # the authors' setting
    timeout: float = 60.0  # seconds per request
    max_attempts: int = 6  # attempts per user, the first included
    backoff: float = 1.0  # first wait in seconds; doubled after each failed attempt, with jitter
    max_backoff: float = 60.0  # the longest computed wait (a server's Retry-After is honoured)


def check_config(cfg: ClientConfig) -> None:
    """Raise InputError (one line) for a setting no request can work with: a base URL that is
    not http(s)://HOST[:PORT]/..., a timeout that is not a positive number, attempts below 1, a
    negative or infinite backoff, an empty model name, or an API key with spaces, line breaks or
    non-ASCII characters (a header cannot carry them; a copied key often ends in a newline)."""
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
    if not (math.isfinite(cfg.backoff) and cfg.backoff >= 0 and math.isfinite(cfg.max_backoff)
            and cfg.max_backoff >= 0):
        raise InputError(f"--backoff must be a number of seconds >= 0, got {cfg.backoff:g}")
    if not cfg.model.strip():
        raise InputError("--model (or $LLM_MODEL) is empty")
    if cfg.api_key and not (cfg.api_key.isascii() and cfg.api_key.isprintable() and " " not in cfg.api_key):
        raise InputError("$OPENAI_API_KEY contains spaces, line breaks or non-ASCII characters")


def server_message(r) -> str:
    """The error text of an HTTP reply, on one line and at most 300 characters: the "message" of
    an OpenAI-style {"error": {"message": ...}} body, a plain {"error": "..."}, {"detail": ...}
    or {"message": ...}, else the body itself."""
    text = r.text
    try:
        data = r.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            text = str(error["message"])
        elif isinstance(error, str) and error:
            text = error
        elif data.get("detail") or data.get("message"):
            text = str(data.get("detail") or data.get("message"))
    text = " ".join(text.split())
    return (text[:300] + "...") if len(text) > 300 else (text or "(empty body)")


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


def request_body(messages: list, model: str, max_tokens: int) -> dict:
    """The chat-completions JSON body (also the `body` of a Batch API line)."""
    return {"model": model, "messages": messages, "max_tokens": max_tokens}


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


def parse_completion(data) -> tuple[str | None, str, str]:
    """Read a chat-completions response body: returns (content, finish_reason, problem).

    problem is '' for a usable answer; otherwise content is None and problem says why:
    a body without choices/message ("malformed"), or content null (a refusal).
    """
    try:
        choice = data["choices"][0]
        message = choice["message"]
        finish = choice.get("finish_reason") or ""
        content = message.get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None, "", "malformed response: no choices[0].message"
    if content is None:
        refusal = message.get("refusal") or ""
        return None, finish, f"no content (refusal: {refusal[:100]!r})" if refusal else "no content (null)"
    if not isinstance(content, str):
        return None, finish, "malformed response: content is not text"
    return content, finish, ""


_thread_state = threading.local()


def _session() -> requests.Session:
    """One requests.Session per worker thread (keeps connections open, never shared)."""
    if not hasattr(_thread_state, "session"):
        _thread_state.session = requests.Session()
    return _thread_state.session


def ask_llm(cfg: ClientConfig, messages: list, stop: threading.Event | None = None,
            rng: random.Random | None = None) -> dict:
    """Send one chat-completions request, retrying what can succeed later.

    Retried (up to cfg.max_attempts attempts): HTTP 429 and 5xx (waiting Retry-After when the
    server sends it), timeouts, dropped connections, malformed JSON, and an empty answer cut at
    max_tokens (finish_reason "length"). Waits grow as backoff * 2^(attempt-1), capped at
    max_backoff, times a random factor in [0.5, 1] (jitter, so workers do not retry in step).
    Returns {"answer", "finish_reason", "attempts"} on success, or {"error", "reason", "status",
    "attempts"} for a failure (other 4xx at once, null content at once, retries exhausted,
    or `stop` set while waiting); "reason" is the cause alone, in words with the URL (the same
    for every user that fails the same way), "error" adds how it ended ("gave up after ...").

    Raises AuthError on 401/403 and SetupError on 404 and on a request that cannot be sent:
    they are wrong for every user, so retrying or going on would only spend time. A 404 from
    {base_url}/chat/completions means a wrong model name (OpenAI, vLLM and Ollama answer 404
    "model ... not found/does not exist") or a base URL without the right path; it is never
    about one user's prompt. Other 4xx (400 "context too long") can be, so they are recorded.
    """
    rng = rng or random.Random()
    url = cfg.base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    body = request_body(messages, cfg.model, cfg.max_tokens)
    reason, status = "", None
    for attempt in range(1, cfg.max_attempts + 1):
        wait = None
        try:
            r = _session().post(url, json=body, headers=headers, timeout=cfg.timeout)
        except requests.Timeout:
            reason, status = f"no reply from {url} within {cfg.timeout:g} s (timeout)", None
        except requests.ConnectionError as e:
            reason, status = connection_reason(e, url), None
        except (requests.RequestException, ValueError) as e:  # invalid URL or header: never sent
            raise SetupError(f"cannot send a request to {url}: {e}") from None
        else:
            status = r.status_code
            if status in (401, 403):
                raise AuthError(f"HTTP {status} from {url}: {server_message(r)}. Check $OPENAI_API_KEY "
                                f"and $OPENAI_BASE_URL.")
            if status == 404:
                raise SetupError(f"HTTP 404 from {url}: {server_message(r)}. Check the model name (--model "
                                 f"or $LLM_MODEL, now {cfg.model!r}) and --base-url or $OPENAI_BASE_URL "
                                 f"(usually ending in /v1).")
            if status == 429 or status >= 500:
                reason, wait = f"HTTP {status} from {url}: {server_message(r)}", \
                    retry_after_seconds(r.headers.get("Retry-After"))
            elif status >= 400:
                reason = f"HTTP {status} from {url}: {server_message(r)}"
                return {"error": reason, "reason": reason, "status": status, "attempts": attempt}
            else:
                try:
                    content, finish, problem = parse_completion(r.json())
                except ValueError:
                    start = " ".join(r.text.split())[:80]
                    content, finish, problem = None, "", f"malformed JSON in the reply from {url}: {start!r}"
                if problem.startswith("no content"):
                    return {"error": problem, "reason": problem, "status": status, "attempts": attempt}
                if not problem and not content.strip() and finish == "length":
                    problem = "empty answer cut at max_tokens (finish_reason length)"
                if not problem:
                    return {"answer": content, "finish_reason": finish, "attempts": attempt}
                reason = problem
        if attempt == cfg.max_attempts:
            break
        if wait is None:
            wait = min(cfg.max_backoff, cfg.backoff * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.0)
        if stop is not None and stop.wait(wait):
            return {"error": f"stopped while retrying ({reason})", "reason": reason, "status": status,
                    "attempts": attempt}
        if stop is None:
            time.sleep(wait)
    return {"error": f"gave up after {cfg.max_attempts} attempts: {reason}", "reason": reason,
            "status": status, "attempts": cfg.max_attempts}


# ----------------------------------------------------------------------------------------------
# Runner: thread pool, answers file, resume, progress
# ----------------------------------------------------------------------------------------------
def read_answers(path, n_users: int | None = None) -> dict:
    """Read an answers file (JSON lines, one object per user): returns {user id: record}.

    A torn last line (the process was killed while writing it) is ignored with a note; any other
    unreadable line, a record without an integer "user", or a user id >= n_users raises DataError
    naming the file and line, and so does a folder in its place. A user found twice keeps its
    first record. A missing file is {}.
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
            if not isinstance(user, int) or isinstance(user, bool) or user < 0:
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


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def format_reasons(reasons: collections.Counter, top: int = 3) -> str:
    """The most common failure reasons, for a summary: "3 x connection refused to URL; 1 x ..."
    (the count is left out when there is one reason only), then how many other reasons."""
    common = reasons.most_common(top)
    if len(common) == 1:
        return common[0][0]
    text = "; ".join(f"{n} x {reason}" for reason, n in common)
    others = len(reasons) - len(common)
    return text + (f"; and {others} other reason(s)" if others else "")


def run_inference(jobs: list, answers_path, failures_path, cfg: ClientConfig, workers: int = 8,
                  progress_every: float = 5.0) -> dict:
    """Ask the LLM for every job whose user is not yet in the answers file (Eq. 1 for all users).

    Answers are appended to answers_path as they arrive (one JSON line per user: user, model,
    items, answer, finish_reason, attempts, time) and failures to failures_path (user, model,
    error, status, attempts, time); a failed user is asked again by the next run. A progress
    line (done / failed / total, requests per second, ETA) goes to stderr every progress_every
    seconds. Returns counts {"answered", "failed", "skipped", "total", "reasons"}: reasons is a
    Counter of the failure causes (ask_llm's "reason") over the failed users.

    Stops early, raising SetupError, when the first min(EARLY_STOP_USERS, users to ask) users
    that finish have all failed and none was answered: the base URL, model or key is then almost
    surely wrong, and going on would spend hours failing every user. Raises SetupError or
    AuthError from ask_llm, and KeyboardInterrupt, likewise: the other workers are stopped first
    and what was written stays. Raises InputError for a ClientConfig check_config rejects.
    """
    check_config(cfg)
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    answers_path, failures_path = Path(answers_path), Path(failures_path)
    answers_path.parent.mkdir(parents=True, exist_ok=True)
    repair_tail(answers_path)
    repair_tail(failures_path)
    done_users = set(read_answers(answers_path))
    todo = [j for j in jobs if j.user not in done_users]
    counts = {"answered": 0, "failed": 0, "skipped": len(jobs) - len(todo), "total": len(todo),
              "reasons": collections.Counter()}
    if counts["skipped"]:
        say(f"resume: {counts['skipped']} users already in {answers_path}, {len(todo)} to ask")
    if not todo:
        return counts
    stop = threading.Event()
    start = last_report = time.time()
    early_stop_after = min(EARLY_STOP_USERS, len(todo))

    def report(final=False):
        n = counts["answered"] + counts["failed"]
        rate = n / max(time.time() - start, 1e-9)
        eta = (len(todo) - n) / rate if rate > 0 else float("inf")
        say(f"infer: {counts['answered']} done, {counts['failed']} failed, {len(todo)} total | "
            f"{rate:.1f} req/s | " + ("finished" if final else f"ETA {_fmt_seconds(eta)}"))

    def work(job):
        if stop.is_set():  # another worker hit a setup error: send nothing more
            return job, {"error": "stopped", "reason": "stopped", "status": None, "attempts": 0}
        try:
            return job, ask_llm(cfg, job.messages, stop, random.Random(job.user * 7919 + time.time_ns()))
        except SetupError:
            stop.set()  # at once, from the worker, not when the main thread gets to its result
            raise

    with open(answers_path, "a", encoding="utf-8") as answers, \
            open(failures_path, "a", encoding="utf-8") as failures:
        pool = cf.ThreadPoolExecutor(max_workers=workers)
        try:
            pending = {pool.submit(work, j) for j in todo}
            while pending:
                finished, pending = cf.wait(pending, timeout=progress_every, return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    job, res = fut.result()  # re-raises AuthError from the worker
                    rec = {"user": job.user, "model": cfg.model, "time": now_iso(), "attempts": res["attempts"]}
                    if "answer" in res:
                        append_jsonl(answers, {**rec, "items": job.items, "answer": res["answer"],
                                               "finish_reason": res["finish_reason"]})
                        counts["answered"] += 1
                    else:
                        append_jsonl(failures, {**rec, "error": res["error"], "status": res["status"]})
                        counts["failed"] += 1
                        counts["reasons"][res.get("reason") or res["error"]] += 1
                if counts["answered"] == 0 and counts["failed"] >= early_stop_after:
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
            raise
        pool.shutdown(wait=True)
    report(final=True)
    return counts


# ----------------------------------------------------------------------------------------------
# Batch mode (OpenAI Batch API)
# ----------------------------------------------------------------------------------------------
def batch_export(jobs: list, path, model: str, max_tokens: int = 1000) -> int:
    """Write one Batch API request per job (custom_id = user id, url /v1/chat/completions).
    Returns the number of lines written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for job in jobs:
            f.write(json.dumps({"custom_id": str(job.user), "method": "POST", "url": "/v1/chat/completions",
                                "body": request_body(job.messages, model, max_tokens)},
                               ensure_ascii=False) + "\n")
    return len(jobs)


def batch_import(batch_output, jobs: list, answers_path, failures_path) -> dict:
    """Read a Batch API output JSONL into the answers file (records as run_inference writes).

    A line that cannot be read, an unknown custom_id, a non-200 response or an unusable body is
    counted and written to failures_path (with the output file's line number), never fatal.
    Users already in the answers file are skipped. Returns {"imported", "failed", "skipped"}.
    Raises DataError if batch_output does not exist or is a folder.
    """
    batch_output, answers_path = Path(batch_output), Path(answers_path)
    if not batch_output.is_file():
        raise DataError(batch_output, 0, "is a folder, not a file" if batch_output.is_dir() else "file not found")
    by_user = {j.user: j for j in jobs}
    answers_path.parent.mkdir(parents=True, exist_ok=True)
    repair_tail(answers_path)
    repair_tail(failures_path)
    done_users = set(read_answers(answers_path))
    counts = {"imported": 0, "failed": 0, "skipped": 0}
    with open(batch_output, encoding="utf-8", errors="replace") as src, \
            open(answers_path, "a", encoding="utf-8") as answers, \
            open(failures_path, "a", encoding="utf-8") as failures:
        for no, line in enumerate(src, 1):
            if not line.strip():
                continue
            user, error, status = None, "", None
            try:
                obj = json.loads(line)
                user = int(obj["custom_id"])
                response = obj.get("response") or {}
                status = response.get("status_code")
                if obj.get("error"):
                    error = f"batch error: {json.dumps(obj['error'])[:300]}"
                elif user not in by_user:
                    error = f"custom_id {user} is not a user with a prompt in this dataset"
                elif status != 200:
                    error = f"HTTP {status}: {json.dumps(response.get('body'))[:300]}"
                else:
                    content, finish, problem = parse_completion(response.get("body"))
                    error = problem
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                error = f"unreadable line ({e})"
            if not error and user in done_users:
                counts["skipped"] += 1
                continue
            rec = {"user": user, "model": "", "time": now_iso(), "batch_line": no}
            if error:
                say(f"batch-import: {batch_output}, line {no}: {error}")
                append_jsonl(failures, {**rec, "error": error, "status": status})
                counts["failed"] += 1
                continue
            rec["model"] = (response.get("body") or {}).get("model", "")
            append_jsonl(answers, {**rec, "items": by_user[user].items, "answer": content,
                                   "finish_reason": finish, "attempts": 1})
            done_users.add(user)
            counts["imported"] += 1
    return counts


# ----------------------------------------------------------------------------------------------
# Cleaning: answer text -> interest phrases
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
REFUSAL = re.compile(r"\b(i'?m sorry|i am sorry|i apologi[sz]e|i can'?t|i cannot|i am unable|i'?m unable|"
                     r"as an ai)\b", re.IGNORECASE)


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


def answer_phrases(text) -> tuple[list, str]:
    """An LLM answer (the A_u of Eq. 1) -> (its distinct cleaned phrases, problem).

    The answer is split on commas and line breaks; a JSON array of strings (also inside a
    ```json fence) is read as a list. problem is '' for a usable answer, else one of "empty",
    "too long" (over MAX_ANSWER_CHARS), "refusal" (an apology or "I can't"), "not a list" (one
    piece longer than a phrase, e.g. a sentence), "no phrases" (nothing left after cleaning);
    then the phrase list is empty.
    """
    if text is None or not str(text).strip():
        return [], "empty"
    text = str(text).strip()
    if len(text) > MAX_ANSWER_CHARS:
        return [], "too long"
    if REFUSAL.search(text):
        return [], "refusal"
    text = re.sub(r"^```[a-zA-Z]*\s*|\s*```$", "", text).strip()
    pieces = None
    if text.startswith("["):
        try:
            parsed = json.loads(text)
            if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed):
                pieces = parsed
        except ValueError:
            pass
    if pieces is None:
        pieces = re.split(r"[,\n]", text)
    if len([p for p in pieces if p.strip()]) == 1 and len(pieces[0].strip()) > MAX_PHRASE_CHARS:
        return [], "not a list"
    phrases = list(dict.fromkeys(p for p in map(clean_phrase, pieces) if p))
    return phrases, ("" if phrases else "no phrases")


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
    phrase).

    phrases: n strings; weights: n occurrence counts (default 1 each), so that a phrase said by
    many users is one row but counts that many documents. Terms are sorted alphabetically.
    tf = count of the term in the phrase; df = documents holding it; terms with df > max_df * N
    are dropped (N = documents); idf = ln((1 + N) / (1 + df)) + 1; rows scaled to unit L2 norm.
    Fallback (documented): when max_df would drop every term (a tiny or uniform corpus, e.g.
    ["sci fi", "sci fi"]), all terms are kept, with a note. A phrase with no terms left is an
    all-zero row (never NaN). Returns (X: scipy.sparse.csr_matrix [n, n_terms], terms: list).
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
    counts, df = counts[:, keep], df[keep]
    terms = [t for t, k in zip(terms, keep) if k]
    idf = np.log((1 + n_docs) / (1 + df)) + 1
    x = (counts @ sp.diags(idf)).tocsr()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    x = (sp.diags(1 / np.where(norms > 0, norms, 1.0)) @ x).tocsr()
    return x, terms


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
    """Which clusters become interest nodes (the authors' rule, REFERENCE).

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

    Each user's answer becomes distinct cleaned phrases; every distinct phrase is one TF-IDF row
    weighted by the number of users who said it; k-means groups the rows into k clusters; a user
    links to the clusters of its phrases; `filter_clusters` keeps the informative ones. Returns a
    dict with "edges" [(user, interest id)], "clusters" (one row per cluster for the TSV),
    "problems" (Counter of bad answers by kind) and counts. Raises InputError when no answer
    gives a phrase or no cluster survives the filtering (an empty interest file helps nobody).
    """
    problems = collections.Counter()
    user_phrases = {}
    for user, rec in sorted(answers.items()):
        phrases, problem = answer_phrases(rec.get("answer"))
        if problem:
            problems[problem] += 1
        else:
            user_phrases[user] = phrases
    said = collections.Counter(p for ps in user_phrases.values() for p in ps)
    if not said:
        raise InputError(f"none of the {len(answers)} answers gives an interest phrase "
                         f"(bad answers: {dict(problems) or 'none'})")
    phrases = sorted(said)
    weights = np.array([said[p] for p in phrases], dtype=float)
    t0 = time.time()
    x, terms = tfidf(phrases, weights, max_df)
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
    rows = []
    for c in range(len(centres)):
        top = [terms[t] for t in np.argsort(-centres[c])[:5] if centres[c][t] > 0]
        examples = sorted((p for p, cc in cluster_of.items() if cc == c), key=lambda p: (-said[p], p))[:5]
        status = str(interest_id[c]) if c in interest_id else "dropped: " + dropped.get(c, "no users")
        rows.append((c, held[c], status, top, examples))
    return {"edges": edges, "clusters": rows, "problems": problems, "n_answers": len(answers),
            "n_users_with_phrases": len(user_phrases), "n_phrases": int(weights.sum()),
            "n_distinct": len(phrases), "n_clusters": len(centres), "n_kept": len(kept),
            "n_users_linked": len({u for u, _ in edges})}


def write_outputs(result: dict, out_dir) -> tuple[Path, Path]:
    """Write user_interest_clustered.txt (`user_id interest_id` lines, the published format)
    and interest_clusters.tsv (what each cluster means) into out_dir. Each file is written to a
    temporary name and renamed, so an interruption never leaves half a file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    edges_path, tsv_path = (out_dir / name for name in CLUSTER_FILES)
    lines = [f"{u} {j}\n" for u, j in result["edges"]]
    tsv = ["cluster\tusers\tinterest_id\ttop_terms\texample_phrases\n"]
    tsv += [f"{c}\t{n}\t{status}\t{', '.join(top)}\t{' | '.join(ex)}\n" for c, n, status, top, ex in result["clusters"]]
    for path, content in ((edges_path, lines), (tsv_path, tsv)):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("".join(content), encoding="utf-8")
        os.replace(tmp, path)
    return edges_path, tsv_path


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
        sp_.add_argument("--max-tokens", type=int, default=1000)
        sp_.add_argument("--limit", type=int, default=0, help="only the first N users with a prompt")

    q = sub.add_parser("infer", allow_abbrev=False, help="ask the LLM for every user (resumes an interrupted run)")
    common(q)
    llm(q)
    q.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL,
                   help="OpenAI-compatible base URL (default $OPENAI_BASE_URL or the OpenAI API)")
    q.add_argument("--workers", type=int, default=8, help="concurrent requests")
    q.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    q.add_argument("--max-attempts", type=int, default=6, help="attempts per user")
    q.add_argument("--backoff", type=float, default=1.0, help="first retry wait in seconds (doubles)")
    q.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines")

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
    every = getattr(args, "progress_every", 1.0)
    if not (math.isfinite(every) and every > 0):
        raise InputError(f"--progress-every must be a positive number of seconds, got {every:g}")
    if args.command == "bench" and args.k < 1:
        raise InputError(f"--k must be at least 1, got {args.k}")
    if args.command == "cluster" and (args.k < 0 or not 0 < args.max_share <= 1 or not 0 < args.max_df <= 1):
        raise InputError(f"--k must be >= 1 (0: the dataset default), --max-share and --max-df in (0, 1]; "
                         f"got {args.k}, {args.max_share}, {args.max_df}")


def check_outputs(paths, dataset_folder) -> None:
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
            problem = "it is in the dataset folder, which is never written (see --out-dir)"
        else:
            continue
        raise InputError(f"cannot write {path}: {problem}")


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


def main(argv=None) -> int:
    """Run one command. Exit codes: 0 done; 1 `infer` finished but some users failed (the
    summary says why; rerunning the same command asks only them again, and `make interests`
    stops before `cluster`); 2 a bad option or input, or `infer` stopped at once because the
    settings are wrong (HTTP 401/403/404, or its first users all failed); 130 interrupted."""
    args = parse_args(argv)
    try:
        check_args(args)
        if args.command == "infer":
            cfg = ClientConfig(args.base_url, os.environ.get("OPENAI_API_KEY", "").strip(), args.model,
                               args.max_tokens, args.timeout, args.max_attempts, args.backoff)
            check_config(cfg)
        if args.command == "bench":
            bench(args.phrases, args.users, args.k, args.seed)
            return 0
        folder, out = Path(args.data_dir) / args.dataset, Path(args.out_dir) / args.dataset
        answers, failures = out / "llm_answers.jsonl", out / "llm_failures.jsonl"
        batch_input = Path(args.out) if getattr(args, "out", "") else out / "batch_input.jsonl"
        check_outputs({"infer": [answers, failures], "batch-import": [answers, failures],
                       "batch-export": [batch_input],  # and cluster's files with their temporary names:
                       "cluster": [out / (n + t) for n in CLUSTER_FILES for t in ("", ".tmp")]}[args.command],
                      folder)
        if args.command != "cluster":
            jobs = prompt_jobs(args)
        if args.command == "infer":
            say(f"infer: {cfg.base_url}/chat/completions, model {cfg.model}, {args.workers} workers -> {answers}")
            c = run_inference(jobs, answers, failures, cfg, args.workers, args.progress_every)
            say(f"infer summary: {c['answered']} answered now, {c['failed']} failed, {c['skipped']} already "
                f"answered, {len(read_answers(answers))} users in {answers}")
            if c["failed"]:
                say(f"infer: {c['failed']} users failed: {format_reasons(c['reasons'])} (details in {failures})")
                say("infer: rerun the same command to ask the failed users again (answered users are kept)")
                return 1
        elif args.command == "batch-export":
            say(f"batch-export: {batch_export(jobs, batch_input, args.model, args.max_tokens)} requests -> "
                f"{batch_input}")
        elif args.command == "batch-import":
            c = batch_import(args.file, jobs, answers, failures)
            say(f"batch-import summary: {c['imported']} imported, {c['failed']} errors (in {failures.name}), "
                f"{c['skipped']} already answered -> {answers}")
        elif args.command == "cluster":
            k = args.k or DEFAULT_K.get(args.dataset, 350)
            # with_interests=False: the dataset's interest file is what cluster replaces, broken or not
            dataset = cikgrec.load_dataset(folder, name=args.dataset, with_interests=False)
            recs = read_answers(answers, dataset.n_users)
            if not recs:
                raise DataError(answers, 0, "no answers: run `llm_interests.py infer` (or batch-import) first")
            r = cluster_answers(recs, dataset.n_entities, k, args.max_df, args.max_share, args.seed, args.n_init,
                                args.max_iter)
            edges_path, tsv_path = write_outputs(r, out)
            bad = ", ".join(f"{n} {kind}" for kind, n in sorted(r["problems"].items())) or "none"
            say(f"cluster summary: {r['n_answers']} answers ({bad} without interests), {r['n_phrases']} phrases "
                f"({r['n_distinct']} distinct), k = {r['n_clusters']}, {r['n_kept']} interest nodes kept, "
                f"{len(r['edges'])} edges for {r['n_users_linked']} users -> {edges_path}, {tsv_path}")
        return 0
    except DataError as e:
        say(f"error: {e}")
    except SetupError as e:  # AuthError included
        say(f"error: stopped: {e} Answers written so far are kept.")
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
