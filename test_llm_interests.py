"""Tests of llm_interests.py (run: python -m pytest -q test_llm_interests.py).

No network: the LLM is FakeLLM, a chat-completions server on 127.0.0.1 started by the test.
It can also be started by hand for a demo run of `llm_interests.py infer`:

    python test_llm_interests.py serve --port 8011 --delay 0.2
    OPENAI_BASE_URL=http://127.0.0.1:8011/v1 python llm_interests.py infer --dataset book-crossing ...
"""
from __future__ import annotations

import collections
import email.utils
import hashlib
import inspect
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import cikgrec
import llm_interests as L

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("CIKGREC_DATA", HERE / ".." / "shared" / "data"))


# ----------------------------------------------------------------------------------------------
# A fake OpenAI-compatible server
# ----------------------------------------------------------------------------------------------
def ok(text, finish="stop", delay=0.0, usage=None, headers=None, **message):
    """A chat-completions reply: (status, body, headers, delay). message: more fields of the
    message (refusal, reasoning_content, ...); usage: the body's usage object."""
    body = {"object": "chat.completion", "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, **message},
                         "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return 200, body, headers or {}, delay


def http(status, body="", headers=None, delay=0.0):
    return status, body, headers or {}, delay


POOL = ["space opera", "gothic horror", "cozy mystery", "military history", "romantic comedy", "epic fantasy",
        "true crime", "cooking", "jazz music", "ancient rome", "baseball", "poetry"]


PER_USER = 4  # training items per fixture user: one goes to validation, three to the prompt


def user_of(user_message: str) -> int:
    """The fixture user a prompt belongs to (user u's items are "Title 4u" .. "Title 4u+3"), or -1."""
    m = re.search(r"\[Title (\d+)\]", user_message)
    return int(m.group(1)) // PER_USER if m else -1


DEMO_POOL = [f"{a} {b}" for a in ("historical", "romantic", "dark", "comic", "literary", "young adult",
                                    "scientific", "spiritual") for b in ("fiction", "memoir", "thriller", "essay",
                                                                          "saga")]


def fixture_answer(user_message: str):
    """Canned answer of the fixture: user u likes POOL[u % 12] and POOL[(u + 5) % 12]; user 25
    gets a refusal. Text that is not a fixture prompt: interests picked by a hash."""
    u = user_of(user_message)
    if u >= 0:
        if u == 25:
            return "I'm sorry, I can't infer interests from this."
        return f"{POOL[u % 12].title()}, {POOL[(u + 5) % 12]}"
    h = zlib.crc32(user_message.encode())
    return ", ".join(DEMO_POOL[(h >> s) % len(DEMO_POOL)] for s in (0, 8, 16))


class FakeLLM:
    """A chat-completions server on 127.0.0.1 (a free port) in a background thread.

    script(user_message, call_number) -> (status, body, headers, delay); call_number counts the
    calls with that user message from 1. A script with a third parameter also gets the request
    body (a dict). body: a dict (sent as JSON), a str, or bytes (sent as they are); a
    "Content-Type" in headers replaces application/json. Default: fixture_answer. .calls
    counts calls per user message; .bodies lists (user, request body) in arrival order; .url
    is the base URL (.../v1).
    """

    def __init__(self, script=None, delay=0.0, port=0):
        self.script = script or (lambda msg, n: ok(fixture_answer(msg), delay=delay))
        self.calls = collections.Counter()
        self.bodies = []
        self.lock = threading.Lock()
        wants_body = len(inspect.signature(self.script).parameters) >= 3
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self.path.endswith("/chat/completions"):
                    return self.reply(404, {"error": "not found"}, {})
                try:
                    request = json.loads(raw)
                    msg = next(m["content"] for m in request["messages"] if m["role"] == "user")
                except (ValueError, KeyError, StopIteration):
                    return self.reply(400, {"error": "bad request"}, {})
                with fake.lock:
                    fake.calls[msg] += 1
                    fake.bodies.append((user_of(msg), request))
                    n = fake.calls[msg]
                status, body, headers, delay = fake.script(msg, n, request) if wants_body else fake.script(msg, n)
                if delay:
                    time.sleep(delay)
                self.reply(status, body, headers)

            def reply(self, status, body, headers):
                data = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    if not any(k.lower() == "content-type" for k in headers):
                        self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def calls_for(self, user: int) -> int:
        return sum(n for msg, n in self.calls.items() if user_of(msg) == user)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def make_fixture(folder: Path, n_users: int = 24, extras: bool = True) -> Path:
    """A small dataset: user u has items 4u .. 4u+3 named "Title i" in train.txt and one test
    item "Test Item u". With extras: user n_users has only unnamed items (skipped), user
    n_users + 1 gets a refusal from fixture_answer (needs n_users = 24). Two extra KG entities."""
    folder.mkdir(parents=True, exist_ok=True)
    total = n_users + (2 if extras else 0)
    n_train = PER_USER * total
    names = [f"Title {i}" for i in range(n_train)] + [f"Test Item {u}" for u in range(total)]
    if extras:
        for i in range(PER_USER * n_users, PER_USER * n_users + PER_USER):
            names[i] = "None"
    (folder / "item_list.txt").write_text("org_id remap_id item_name\n" +
                                          "".join(f"x{i} {i} {n}\n" for i, n in enumerate(names)))
    (folder / "train.txt").write_text("".join(f"{u} " + " ".join(str(PER_USER * u + i) for i in range(PER_USER))
                                              + "\n" for u in range(total)))
    (folder / "test.txt").write_text("".join(f"{u} {n_train + u}\n" for u in range(total)))
    n_items = len(names)
    (folder / "kg_final.txt").write_text(f"0 0 {n_items}\n1 0 {n_items + 1}\n2 1 {n_items}\n")
    return folder


ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0}
NO_COUNTS = {"answered": 0, "refused": 0, "filtered": 0, "truncated": 0, "failed": 0, "skipped": 0, "total": 0,
             "reasons": {}, "usage": ZERO_USAGE, "thinking": 0}  # run_inference's counts when nothing happened


def config(url, **kw) -> L.ClientConfig:
    return L.ClientConfig(**{"base_url": url, "model": "fake", "timeout": 5.0, "max_attempts": 4,
                             "backoff": 0.01, "max_backoff": 0.05, **kw})


def jobs_for(folder, **kw):
    return L.make_jobs(cikgrec.load_dataset(folder), "books", **kw)


def lines_of(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


# ----------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------
def test_item_title_decodes_dbpedia_uris_and_keeps_titles():
    assert L.item_title("http://dbpedia.org/resource/Where's_My_Cow%3F") == "Where's My Cow?"
    assert L.item_title("http://dbpedia.org/resource/Killing_Yourself_to_Live:_85%25_of_a_True_Story") == \
        "Killing Yourself to Live: 85% of a True Story"
    assert L.item_title("Clara Callan ") == "Clara Callan"
    assert L.item_title("") == ""


def test_messages_system_instruction_and_bracketed_titles():
    msgs = L.build_messages(["Dune", "Emma"], "movies")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "movies" in msgs[0]["content"] and "five" in msgs[0]["content"] and "commas" in msgs[0]["content"]
    assert msgs[1]["content"] == "The movies this user liked: [Dune], [Emma]"


def test_prompt_holds_last_30_named_training_items_never_validation_or_test(tmp_path):
    # T3: user 0 has 40 training items (5 go to validation: round(40/8)), items 3 and 7 have
    # no name; user 1 has one item and one test item; user 2's only item is unnamed.
    folder = tmp_path / "d"
    folder.mkdir()
    names = [("None" if i in (3, 7) else f"Book {i}") for i in range(45)]
    (folder / "item_list.txt").write_text("org remap name\n" + "".join(f"o{i} {i} {n}\n" for i, n in enumerate(names)))
    order = list(range(39, -1, -1))  # train.txt order differs from id order
    (folder / "train.txt").write_text("0 " + " ".join(map(str, order)) + "\n1 40\n2 7\n")
    (folder / "test.txt").write_text("0 41\n1 42\n2 43\n")
    ds = cikgrec.load_dataset(folder)
    jobs, skipped = L.make_jobs(ds, "books", split_seed=0)
    assert skipped == [2]
    train_part, valid = cikgrec.split_validation(ds.train, 0)
    assert len(valid[0]) == 5
    expected = [int(i) for i in train_part[0] if i not in (3, 7)][-30:]
    assert jobs[0].items == expected and len(expected) == 30
    assert not set(jobs[0].items) & set(valid[0].tolist())
    assert jobs[1].user == 1 and jobs[1].items == [40]
    for job in jobs:
        text = job.messages[1]["content"]
        assert "Book 41" not in text and "Book 42" not in text and "Book 43" not in text
        assert not any(f"[Book {v}]" in text for v in valid[0])
    # another split seed carves other validation items, as cikgrec.py does for that seed
    assert L.make_jobs(ds, "books", split_seed=1)[0][0].items == \
        [int(i) for i in cikgrec.split_validation(ds.train, 1)[0][0] if i not in (3, 7)][-30:]


def test_prompts_on_real_book_crossing():
    folder = DATA / "book-crossing"
    if not (folder / "train.txt").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{folder} is missing (set CIKGREC_DATA)")
        pytest.skip(f"{folder} not found (set CIKGREC_DATA)")
    ds = cikgrec.load_dataset(folder)
    jobs, skipped = L.make_jobs(ds, "books")
    assert len(jobs) + len(skipped) == ds.n_users == 6616
    train_part, _ = cikgrec.split_validation(ds.train, 0)
    for job in jobs[::97]:
        named = [int(i) for i in train_part[job.user] if ds.item_names[i]]
        assert job.items == named[-30:]
        assert not set(job.items) & set(ds.test[job.user].tolist())
    assert max(len(j.items) for j in jobs) == 30


# ----------------------------------------------------------------------------------------------
# Client: retries, stop, record (I1, I2)
# ----------------------------------------------------------------------------------------------
def test_I2_429_with_retry_after_is_honoured_and_loses_no_user(tmp_path):
    folder = make_fixture(tmp_path / "d", n_users=3, extras=False)
    jobs, _ = jobs_for(folder)

    def script(msg, n):
        if user_of(msg) == 1 and n <= 2:
            return http(429, {"error": "rate limited"}, {"Retry-After": "1"})
        return ok("science fiction, drama")

    with FakeLLM(script) as srv:
        t0 = time.time()
        counts = L.run_inference(jobs, tmp_path / "a.jsonl", tmp_path / "f.jsonl", config(srv.url), workers=3)
        waited = time.time() - t0
    assert counts == {**NO_COUNTS, "answered": 3, "total": 3}
    assert [srv.calls_for(u) for u in range(3)] == [1, 3, 1]
    assert waited >= 2.0
    recs = {r["user"]: r for r in lines_of(tmp_path / "a.jsonl")}
    assert sorted(recs) == [0, 1, 2] and recs[1]["attempts"] == 3
    assert recs[1]["items"] == jobs[1].items and len(jobs[1].items) == 3 and recs[1]["answer"] == "science fiction, drama"
    assert recs[1]["model"] == "fake" and recs[1]["time"]


def test_I2_retries_exhausted_give_an_explicit_failure_record(tmp_path):
    folder = make_fixture(tmp_path / "d", n_users=3, extras=False)
    jobs, _ = jobs_for(folder)
    script = lambda msg, n: http(429, "{}") if user_of(msg) == 2 else ok("drama")
    with FakeLLM(script) as srv:
        counts = L.run_inference(jobs, tmp_path / "a.jsonl", tmp_path / "f.jsonl",
                                 config(srv.url, max_attempts=3), workers=2)
    assert counts["answered"] == 2 and counts["failed"] == 1
    assert srv.calls_for(2) == 3
    (fail,) = lines_of(tmp_path / "f.jsonl")
    assert fail["user"] == 2 and fail["status"] == 429 and fail["attempts"] == 3
    assert "gave up after 3 attempts" in fail["error"]
    assert counts["reasons"] == {f"HTTP 429 from {srv.url}/chat/completions: {{}}": 1}
    assert sorted(r["user"] for r in lines_of(tmp_path / "a.jsonl")) == [0, 1]
    # the next run asks only the failed user again
    with FakeLLM(lambda msg, n: ok("drama")) as srv:
        counts = L.run_inference(jobs, tmp_path / "a.jsonl", tmp_path / "f.jsonl", config(srv.url))
    assert counts == {**NO_COUNTS, "answered": 1, "skipped": 2, "total": 1}
    assert sum(srv.calls.values()) == 1
    assert sorted(r["user"] for r in lines_of(tmp_path / "a.jsonl")) == [0, 1, 2]


def answered(answer, attempts=1, max_tokens=1000, **kw):
    """What ask_llm returns for an answer (ok() replies carry no usage)."""
    return {"outcome": "answered", "answer": answer, "finish_reason": "stop", "truncated": False, "refusal": "",
            "reasoning_chars": 0, "max_tokens": max_tokens, "attempts": attempts, "usage": ZERO_USAGE, **kw}


def test_500_slow_reply_and_malformed_json_are_retried(tmp_path):
    msgs = L.build_messages(["A"], "books")
    for first in (http(500, "oops"), ok("late answer", delay=1.0), http(200, "{not json")):
        with FakeLLM(lambda msg, n: first if n == 1 else ok("horror, drama")) as srv:
            res = L.ask_llm(config(srv.url, timeout=0.4), msgs)
            assert res == answered("horror, drama", attempts=2)
            assert sum(srv.calls.values()) == 2


def test_always_malformed_json_is_recorded_after_bounded_attempts(tmp_path):
    with FakeLLM(lambda msg, n: http(200, "{not json")) as srv:
        res = L.ask_llm(config(srv.url, max_attempts=3), L.build_messages(["A"], "books"))
    assert res["attempts"] == 3 and "malformed JSON" in res["error"] and "answer" not in res


def test_I1_null_content_refusal_is_a_final_refused_outcome_without_retry(tmp_path):
    refusal = (200, {"choices": [{"message": {"role": "assistant", "content": None, "refusal": "no"},
                                  "finish_reason": "stop"}]}, {}, 0)
    with FakeLLM(lambda msg, n: refusal) as srv:
        res = L.ask_llm(config(srv.url), L.build_messages(["A"], "books"))
        assert sum(srv.calls.values()) == 1
    assert res == answered("", outcome="refused", refusal="no")


def test_other_4xx_is_recorded_and_the_run_goes_on(tmp_path):
    folder = make_fixture(tmp_path / "d", n_users=3, extras=False)
    jobs, _ = jobs_for(folder)
    script = lambda msg, n: http(400, {"error": "context too long"}) if user_of(msg) == 0 else ok("drama")
    with FakeLLM(script) as srv:
        counts = L.run_inference(jobs, tmp_path / "a.jsonl", tmp_path / "f.jsonl", config(srv.url))
        assert srv.calls_for(0) == 1
    assert counts["answered"] == 2 and counts["failed"] == 1
    (fail,) = lines_of(tmp_path / "f.jsonl")
    assert fail["user"] == 0 and fail["status"] == 400 and "context too long" in fail["error"]


def test_401_stops_the_run_at_once_with_a_clear_message(tmp_path, capsys):
    folder = make_fixture(tmp_path / "d")
    with FakeLLM(lambda msg, n: http(401, {"error": "invalid api key"})) as srv:
        rc = L.main(["infer", "--dataset", "d", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"),
                     "--base-url", srv.url, "--workers", "2", "--model", "fake"])
        n_calls = sum(srv.calls.values())
    err = capsys.readouterr().err
    assert rc == 2 and "HTTP 401" in err and "OPENAI_API_KEY" in err and "Traceback" not in err
    assert "invalid api key" in err
    assert n_calls <= 3  # of 25 users: the workers stop at once
    assert not (tmp_path / "o" / "d" / "llm_answers.jsonl").read_text()


def infer_args(tmp_path, url, *more):
    """`infer` on the fixture "d" under tmp_path, with fast retries (2 attempts, 10 ms waits)."""
    return ["infer", "--dataset", "d", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"),
            "--base-url", url, "--model", "fake", "--max-attempts", "2", "--backoff", "0.01", *more]


def closed_port_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens (connection refused)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_404_wrong_model_stops_the_run_at_once_with_the_servers_message(tmp_path, capsys):
    make_fixture(tmp_path / "d")
    body = {"error": {"message": "model 'fake' not found", "type": "not_found_error"}}
    with FakeLLM(lambda msg, n: http(404, body)) as srv:
        rc = L.main(infer_args(tmp_path, srv.url, "--workers", "2"))
        n_calls = sum(srv.calls.values())
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"HTTP 404 from {srv.url}/chat/completions: model 'fake' not found" in err
    assert "--model" in err and "$LLM_MODEL" in err
    assert n_calls <= 3  # no retry, no other user


@pytest.mark.parametrize("case", ["unreachable", "not json", "HTTP 500"])
def test_a_run_whose_first_users_all_fail_stops_early_naming_the_cause(tmp_path, capsys, case):
    # 25 users, every request fails: the run stops after the first 8 finished users (plus what the
    # 2 workers finished at the same time) with exit code 2 and the cause in full words
    make_fixture(tmp_path / "d")
    replies = {"not json": http(200, "<html>Welcome to nginx</html>"),
               "HTTP 500": http(500, {"error": {"message": "model overloaded"}})}
    with FakeLLM(lambda msg, n: replies.get(case, ok("x"))) as srv:
        url = closed_port_url() if case == "unreachable" else srv.url
        t0 = time.time()
        rc = L.main(infer_args(tmp_path, url, "--workers", "2"))
        took = time.time() - t0
    err = capsys.readouterr().err
    expected = {"unreachable": f"connection refused to {url}/chat/completions",
                "not json": f"malformed JSON in the reply from {url}/chat/completions: '<html>Welcome to nginx</html>'",
                "HTTP 500": f"HTTP 500 from {url}/chat/completions: model overloaded"}[case]
    assert rc == 2 and "Traceback" not in err and took < 10
    assert "error: stopped: the first" in err and "none was answered" in err and expected in err
    assert "--base-url" in err and "rerun the same command" in err
    failures = lines_of(tmp_path / "o" / "d" / "llm_failures.jsonl")
    # 8, plus what the 2 workers had in flight (let finish, and recorded, when the run stops)
    assert 8 <= len(failures) <= 10 and all(expected in f["error"] for f in failures)
    assert not (tmp_path / "o" / "d" / "llm_answers.jsonl").read_text()


def test_some_failed_users_exit_1_with_the_reasons_and_a_rerun_asks_only_them(tmp_path, capsys):
    make_fixture(tmp_path / "d")

    def script(msg, n):
        if user_of(msg) in (3, 4):
            return http(400, {"error": {"message": "context length exceeded"}})
        if user_of(msg) == 5:
            return http(200, "<html>proxy error</html>")
        return ok(fixture_answer(msg))

    with FakeLLM(script) as srv:
        rc = L.main(infer_args(tmp_path, srv.url, "--workers", "2"))
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "21 answered now, 1 refused, 3 failed" in err  # user 25 apologises: refused, final
    assert f"2 x HTTP 400 from {srv.url}/chat/completions: context length exceeded" in err
    assert f"1 x malformed JSON in the reply from {srv.url}/chat/completions: '<html>proxy error</html>'" in err
    assert "rerun the same command to ask the failed users again" in err
    with FakeLLM() as srv:
        assert L.main(infer_args(tmp_path, srv.url)) == 0
        assert sorted(user_of(msg) for msg in srv.calls) == [3, 4, 5]
    assert "0 failed" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--timeout", "0"], ["--timeout", "nan"], ["--base-url", "notaurl"],
                                    ["--base-url", "http://host:port/v1"], ["--workers", "0"],
                                    ["--max-attempts", "0"], ["--backoff", "-1"], ["--limit", "-1"],
                                    ["--progress-every", "0"], ["--split-seed", "-1"], ["--model", " "]])
def test_bad_infer_options_are_one_clear_message(tmp_path, capsys, option):
    make_fixture(tmp_path / "d", n_users=3, extras=False)
    rc = L.main(infer_args(tmp_path, "http://127.0.0.1:9/v1", *option))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and option[0] in err and err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1  # checked before the dataset is even loaded


def test_bad_key_and_other_commands_options_are_one_clear_message(tmp_path, capsys, monkeypatch):
    make_fixture(tmp_path / "d", n_users=3, extras=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-abc def")
    assert L.main(infer_args(tmp_path, "http://127.0.0.1:9/v1")) == 2
    assert "$OPENAI_API_KEY contains spaces" in capsys.readouterr().err
    common = ["--dataset", "d", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")]
    for argv, name in ((["cluster", *common, "--seed", "-1"], "--seed"), (["bench", "--k", "0"], "--k"),
                       (["batch-export", *common, "--limit", "-2"], "--limit")):
        assert L.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {name} must") and "Traceback" not in err
    with pytest.raises(L.InputError, match="--timeout"):  # the library call checks too
        L.run_inference([], tmp_path / "a.jsonl", tmp_path / "f.jsonl", config("http://127.0.0.1:9/v1", timeout=0))


def test_retry_after_header_forms():
    assert L.retry_after_seconds("1") == 1.0
    assert L.retry_after_seconds(None) is None and L.retry_after_seconds("soon") is None
    assert 0 <= L.retry_after_seconds("Thu, 01 Jan 1970 00:00:00 GMT") == 0.0


# ----------------------------------------------------------------------------------------------
# Nothing lost: resume after a kill, torn last line
# ----------------------------------------------------------------------------------------------
def wait_until(condition, what: str, timeout: float = 60.0) -> None:
    """Poll condition() until it is true; fail naming `what` after timeout seconds (a deadline
    for a broken run, never a timing the test relies on)."""
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_resume_after_a_kill_mid_run_no_user_twice_none_missing(tmp_path):
    # Deterministic (was: killed after "at least 6 answers" under a 0.15 s delay, so under load the
    # run could finish first): the server answers the first 6 requests and holds every later one,
    # so the killed run has exactly 6 answers and 2 requests in flight (2 workers) when it dies.
    make_fixture(tmp_path / "d")
    answers = tmp_path / "o" / "d" / "llm_answers.jsonl"
    args = ["infer", "--dataset", "d", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"),
            "--workers", "2", "--model", "fake", "--progress-every", "0.5"]
    release, lock, seen = threading.Event(), threading.Lock(), [0]

    def script(msg, n):
        with lock:
            seen[0] += 1
            held = seen[0] > 6
        if held:
            release.wait(60)  # until the client is dead (then the reply goes nowhere)
        return ok(fixture_answer(msg))

    with FakeLLM(script) as srv:
        proc = subprocess.Popen([sys.executable, str(HERE / "llm_interests.py"), *args, "--base-url", srv.url],
                                cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_until(lambda: answers.is_file() and answers.read_text().count("\n") == 6 and seen[0] == 8,
                       "6 answers written and 2 requests held")
        finally:
            proc.kill()  # SIGKILL: no cleanup at all
            proc.wait()
            release.set()
        assert len(lines_of(answers)) == 6, proc.stderr.read().decode()[-2000:]
        killed_users = {r["user"] for r in lines_of(answers)}
        seen[0] = -10 ** 9  # the resumed run is never held
        assert L.main([*args, "--base-url", srv.url]) == 0
    recs = lines_of(answers)
    users = [r["user"] for r in recs]
    assert len(users) == len(set(users)) == 25  # users 0..25 but 24 has no named item
    assert set(users) == set(range(26)) - {24}
    asked_after = [u for u, _ in srv.bodies[8:]]
    assert sorted(asked_after) == sorted(set(range(26)) - {24} - killed_users)  # 19 users, each once
    assert sum(srv.calls.values()) == 8 + 19  # only the 2 requests in flight at the kill were repeated


def test_torn_last_line_is_tolerated_and_repaired(tmp_path, capsys):
    folder = make_fixture(tmp_path / "d", n_users=3, extras=False)
    jobs, _ = jobs_for(folder)
    path = tmp_path / "a.jsonl"
    path.write_text('{"user": 0, "answer": "drama"}\n{"user": 1, "answer": "x"}\n{"user": 2, "ans')
    assert sorted(L.read_answers(path)) == [0, 1]
    assert "torn last line" in capsys.readouterr().err
    with FakeLLM(lambda msg, n: ok("poetry")) as srv:
        counts = L.run_inference(jobs, path, tmp_path / "f.jsonl", config(srv.url))
    assert counts["answered"] == 1 and counts["skipped"] == 2
    assert [r["user"] for r in lines_of(path)] == [0, 1, 2]  # every line parses: the torn one was cut


def test_a_bad_line_inside_the_answers_file_names_file_and_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"user": 0, "answer": "drama"}\nnot json\n{"user": 1, "answer": "x"}\n')
    with pytest.raises(cikgrec.DataError, match=r"a\.jsonl, line 2"):
        L.read_answers(path)
    path.write_text('{"user": 9, "answer": "drama"}\n')
    with pytest.raises(cikgrec.DataError, match="line 1: user id 9 out of range"):
        L.read_answers(path, n_users=5)


# ----------------------------------------------------------------------------------------------
# Batch mode
# ----------------------------------------------------------------------------------------------
def test_batch_export_import_round_trip(tmp_path, capsys):
    folder = make_fixture(tmp_path / "d", n_users=4, extras=False)
    jobs, _ = jobs_for(folder)
    n = L.batch_export(jobs, tmp_path / "in.jsonl", "gpt-test", max_tokens=1000)
    requests_ = lines_of(tmp_path / "in.jsonl")
    assert n == 4 and [r["custom_id"] for r in requests_] == ["0", "1", "2", "3"]
    assert all(r["method"] == "POST" and r["url"] == "/v1/chat/completions" for r in requests_)
    assert requests_[1]["body"] == {"model": "gpt-test", "messages": jobs[1].messages, "max_tokens": 1000,
                                    "stream": False}
    # what the Batch API returns: user 2 failed, one line is garbage, one custom_id is unknown
    out = []
    for r in requests_:
        u = int(r["custom_id"])
        if u == 2:
            out.append({"id": "b2", "custom_id": "2", "response": {"status_code": 500, "body": {}}, "error": None})
        else:
            body = ok(f"{POOL[u]}, poetry")[1]
            out.append({"id": f"b{u}", "custom_id": str(u), "response": {"status_code": 200, "body": body},
                        "error": None})
    text = "".join(json.dumps(o) + "\n" for o in out) + "garbage\n"
    text += json.dumps({"custom_id": "77", "response": {"status_code": 200, "body": ok("x")[1]}}) + "\n"
    (tmp_path / "out.jsonl").write_text(text)
    counts = L.batch_import(tmp_path / "out.jsonl", jobs, tmp_path / "a.jsonl", tmp_path / "f.jsonl")
    assert counts == {"imported": 3, "refused": 0, "filtered": 0, "truncated": 0, "failed": 3, "skipped": 0,
                      "usage": ZERO_USAGE}
    recs = {r["user"]: r for r in lines_of(tmp_path / "a.jsonl")}
    assert sorted(recs) == [0, 1, 3] and recs[1]["answer"] == "gothic horror, poetry"
    assert recs[1]["items"] == jobs[1].items and recs[1]["model"] == "fake"
    errors = lines_of(tmp_path / "f.jsonl")
    assert [e["batch_line"] for e in errors] == [3, 5, 6]
    # importing again adds nothing twice
    assert L.batch_import(tmp_path / "out.jsonl", jobs, tmp_path / "a.jsonl", tmp_path / "f.jsonl")["skipped"] == 3
    assert len(lines_of(tmp_path / "a.jsonl")) == 3


# ----------------------------------------------------------------------------------------------
# Cleaning (I1)
# ----------------------------------------------------------------------------------------------
def test_I1_answers_that_are_not_a_clean_comma_list():
    assert L.answer_phrases("Science fiction, Space opera, Time travel") == \
        (["science fiction", "space opera", "time travel"], "", 0)
    assert L.answer_phrases("sci-fi, , drama,") == (["sci fi", "drama"], "", 0)
    assert L.answer_phrases('```json\n["sci-fi","drama"]\n```') == (["sci fi", "drama"], "", 0)
    assert L.answer_phrases("Mysteries\nThrillers") == (["mystery", "thriller"], "", 0)


def test_bad_answers_give_no_interests_and_say_why():
    assert L.answer_phrases("") == ([], "empty", 0)
    assert L.answer_phrases(None) == ([], "empty", 0)
    assert L.answer_phrases("drama, " * 200) == ([], "too long", 0)
    assert L.answer_phrases("I'm sorry, but I can't help with that.") == ([], "refused", 0)
    assert L.answer_phrases("This user clearly enjoys long historical novels about sailing") == ([], "not a list", 0)
    assert L.answer_phrases("!!!, 123, a") == ([], "no phrases", 2)  # "!!!" is no piece; "123", "a" clean to ''

    assert L.answer_phrases("Drama") == (["drama"], "", 0)  # one short interest is a list


def test_clean_phrase_letters_stopwords_plural_and_length():
    assert L.clean_phrase("The Lord of the Rings") == "lord ring"
    assert L.clean_phrase("Café Culture") == "cafe culture"
    assert L.clean_phrase("Mysteries & Witches") == "mystery witch"
    assert L.clean_phrase("TV series, movies") == "tv series movie"
    assert L.clean_phrase("x") == "" and L.clean_phrase("a " + "b" * 60) == ""
    assert L.lemma("classes") == "class" and L.lemma("physics") == "physics" and L.lemma("bus") == "bus"


# ----------------------------------------------------------------------------------------------
# TF-IDF (I3)
# ----------------------------------------------------------------------------------------------
def test_tfidf_by_hand_on_three_phrases():
    x, terms = L.tfidf(["sci fi", "sci fi horror", "space opera"], max_df=0.8)
    assert terms == ["fi", "fi horror", "horror", "opera", "sci", "sci fi", "space", "space opera"]
    # N = 3; df 2 -> idf ln(4/3) + 1 = 1.287682; df 1 -> ln(2) + 1 = 1.693147 (no term has df > 2.4)
    # row 0: three terms of idf 1.287682 -> 1/sqrt(3) each
    # row 1: sqrt(3 * 1.287682^2 + 2 * 1.693147^2) = 3.272288 -> 0.393511 and 0.517420
    a = 1 / math.sqrt(3)
    expected = np.array([[a, 0, 0, 0, a, a, 0, 0],
                         [0.393511, 0.517420, 0.517420, 0, 0.393511, 0.393511, 0, 0],
                         [0, 0, 0, a, 0, 0, a, a]])
    np.testing.assert_allclose(x.toarray(), expected, atol=1e-6)


def test_tfidf_max_df_and_weights_count_documents():
    # "novel" is in 3 of 4 documents (0.75 <= 0.8: kept); with weight 2 on "crime novel" it is in
    # 4 of 5 (0.8: kept) and with weight 3 in 5 of 6 (0.83 > 0.8: dropped)
    docs = ["crime novel", "war novel", "love novel", "poetry"]
    assert "novel" in L.tfidf(docs)[1]
    assert "novel" in L.tfidf(docs, weights=[2, 1, 1, 1])[1]
    x, terms = L.tfidf(docs, weights=[3, 1, 1, 1])
    assert "novel" not in terms and "crime novel" in terms
    # weights = repeating the phrase: same idf as the corpus written out
    x_w, _ = L.tfidf(["sci fi", "horror"], weights=[2, 1])
    x_r, _ = L.tfidf(["sci fi", "sci fi", "horror"])
    np.testing.assert_allclose(x_w.toarray(), x_r.toarray()[[0, 2]])


def test_I3_tiny_and_degenerate_corpora(capsys):
    x, terms = L.tfidf(["sci fi", "sci fi"], max_df=0.8)  # every term pruned -> documented fallback
    assert terms == ["fi", "sci", "sci fi"] and "keeping them all" in capsys.readouterr().err
    np.testing.assert_allclose(x.toarray(), np.full((2, 3), 1 / math.sqrt(3)))
    x, terms = L.tfidf(["sci fi"])
    np.testing.assert_allclose(x.toarray(), [[1 / math.sqrt(3)] * 3])
    x, terms = L.tfidf(["", "drama"])  # a phrase with no letters has no terms: a zero row, not NaN
    assert np.isfinite(x.toarray()).all() and x.toarray()[0].sum() == 0 and x.toarray()[1].tolist() == [1.0]
    assert L.answer_phrases("123, ???") == ([], "no phrases", 2)  # cleaning removes them before TF-IDF


# ----------------------------------------------------------------------------------------------
# k-means (I4)
# ----------------------------------------------------------------------------------------------
def test_kmeans_recovers_well_separated_groups():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=float)
    truth = np.repeat(np.arange(4), 30)
    x = centres[truth] + rng.normal(scale=0.5, size=(120, 2))
    labels, c, inertia = L.kmeans(x, 4, seed=1)
    groups = {tuple(sorted(set(labels[truth == g]))) for g in range(4)}
    assert len(groups) == 4 and all(len(g) == 1 for g in groups)  # one cluster per group, none shared
    np.testing.assert_allclose(np.sort(c, axis=0), np.sort(centres, axis=0), atol=0.3)
    # sparse input gives the same clusters
    import scipy.sparse as sp
    labels_sp, _, _ = L.kmeans(sp.csr_matrix(x), 4, seed=1)
    assert len({(a, b) for a, b in zip(labels, labels_sp)}) == 4


def test_kmeans_weights_equal_repeated_points():
    x = np.array([[0.0], [1.0], [10.0]])
    _, c, inertia = L.kmeans(x, 2, weights=[3, 1, 1], seed=0)
    np.testing.assert_allclose(np.sort(c.ravel()), [0.25, 10.0])
    assert inertia == pytest.approx(3 * 0.25 ** 2 + 0.75 ** 2)


def test_I4_kmeans_degenerate_input(capsys):
    x = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=float)
    labels, c, inertia = L.kmeans(x, 3, seed=0)
    assert "using k = 2" in capsys.readouterr().err
    assert len(set(labels)) == 2 and labels[0] == labels[1] == labels[2] != labels[3]
    d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    assert (labels == d.argmin(1)).all() and inertia == 0.0  # labels = nearest final centre
    # 3 distinct phrases, k = 5: clamped to 3
    xs, _ = L.tfidf(["horror", "drama", "poetry"])
    labels, c, _ = L.kmeans(xs, 5)
    assert len(c) == 3 and sorted(labels) == [0, 1, 2]
    with pytest.raises(ValueError):
        L.kmeans(np.zeros((0, 2)), 2)


def test_I4_interest_ids_are_renumbered_without_gaps():
    # clusters 0 and 7 survive: ids n_entities and n_entities + 1, nothing in between
    users = {u: {0} for u in range(2)} | {u: {7} for u in range(2, 4)} | {u: {3} for u in range(4, 14)}
    kept, dropped = L.filter_clusters(users)
    assert kept == [0, 7] and 3 in dropped
    edges = L.interest_edges(users, kept, n_entities=100)
    assert edges == [(0, 100), (1, 100), (2, 101), (3, 101)]


# ----------------------------------------------------------------------------------------------
# Filtering and writing (I5)
# ----------------------------------------------------------------------------------------------
def test_filter_rules_common_and_single_user_clusters():
    # 20 users: cluster 0 held by 1 user (dropped), 1 by 2 and 2 by 3 (kept), 3 by exactly 4 = 1/5 of
    # the users (dropped), 4 by all 20 (dropped)
    users = {u: {4} for u in range(20)}
    users[0] |= {0}
    for u in (1, 2):
        users[u] |= {1}
    for u in (3, 4, 5):
        users[u] |= {2}
    for u in (6, 7, 8, 9):
        users[u] |= {3}
    kept, dropped = L.filter_clusters(users, max_share=0.2, min_users=2)
    assert kept == [1, 2] and sorted(dropped) == [0, 3, 4]
    assert "held by 4 of 20" in dropped[3] and "held by 1 user" in dropped[0]
    edges = L.interest_edges(users, kept, n_entities=50)
    assert edges == [(1, 50), (2, 50), (3, 51), (4, 51), (5, 51)]


def test_I5_a_user_links_to_a_cluster_once():
    user_clusters = L.link_users({0: ["sci fi", "science fiction", "drama"], 1: ["sci fi"]},
                                 {"sci fi": 4, "science fiction": 4, "drama": 2})
    assert user_clusters == {0: {2, 4}, 1: {4}}
    assert L.interest_edges(user_clusters, [2, 4], 10) == [(0, 10), (0, 11), (1, 11)]


def test_cluster_answers_counts_bad_answers_and_writes_readable_files(tmp_path):
    answers = {u: {"answer": f"{POOL[u % 12].title()}, {POOL[(u + 5) % 12]}"} for u in range(24)}
    answers[24] = {"answer": "I'm sorry, I cannot do that."}
    answers[25] = {"answer": ""}
    answers[26] = {"answer": "x" * 700}
    r = L.cluster_answers(answers, n_entities=1000, k=12, seed=0)
    assert r["problems"] == {"refused": 1, "empty": 1, "too long": 1}
    assert r["n_kept"] == 12 and r["n_users_linked"] == 24 and len(r["edges"]) == 48
    assert sorted({j for _, j in r["edges"]}) == list(range(1000, 1012))
    edges_path, tsv_path, cov_path = L.write_outputs(r, tmp_path)
    assert cov_path is None and not (tmp_path / L.CLUSTER_FILES[2]).exists()  # no coverage given, none written
    assert edges_path.read_text().splitlines()[0] == f"0 {r['edges'][0][1]}"
    rows = [line.split("\t") for line in tsv_path.read_text().splitlines()]
    assert rows[0] == ["cluster", "users", "interest_id", "top_terms", "example_phrases"]
    assert {row[4] for row in rows[1:]} == set(POOL) and all(row[1] == "4" for row in rows[1:])
    with pytest.raises(L.InputError, match="none of the 1 answers"):
        L.cluster_answers({0: {"answer": "I'm sorry, I can't."}}, 10, 3)
    with pytest.raises(L.InputError, match="no interest node is left"):  # 3 users share everything
        L.cluster_answers({u: {"answer": "poetry, cooking"} for u in range(3)}, 10, 2)


# ----------------------------------------------------------------------------------------------
# Command line: bad input, end to end, bench
# ----------------------------------------------------------------------------------------------
def test_missing_or_malformed_dataset_is_one_clear_message(tmp_path, capsys):
    rc = L.main(["infer", "--dataset", "nope", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "nope" in err and "not found" in err and "Traceback" not in err
    folder = make_fixture(tmp_path / "bad", n_users=3, extras=False)
    (folder / "train.txt").write_text("0 0 1\n1 x 4\n")
    rc = L.main(["cluster", "--dataset", "bad", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "train.txt, line 2" in err and "'x'" in err and "Traceback" not in err
    folder = make_fixture(tmp_path / "ok", n_users=3, extras=False)
    rc = L.main(["cluster", "--dataset", "ok", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")])
    assert rc == 2 and "no answers" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["infer", "batch-export"])
def test_no_item_names_is_an_error_not_zero_prompts(tmp_path, capsys, command):
    # was: exit code 0 with "0 users with a prompt"
    folder = make_fixture(tmp_path / "d", n_users=3, extras=False)
    (folder / "item_list.txt").unlink()
    argv = infer_args(tmp_path, "http://127.0.0.1:9/v1") if command == "infer" else \
        ["batch-export", "--dataset", "d", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")]
    assert L.main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"error: {folder / 'item_list.txt'}: not found: the prompts name each user's items by the " \
                  "titles this file holds\n"
    (folder / "item_list.txt").write_text("org_id remap_id item_name\n" + "".join(f"x{i} {i} None\n" for i in range(15)))
    assert L.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {folder / 'item_list.txt'}: none of the 3 users") and "no prompt" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


def test_prompt_data_is_checked_as_load_dataset_checks_it(tmp_path):
    folder = make_fixture(tmp_path / "d", n_users=3, extras=False)
    (folder / "train.txt").write_text("0 0 1\n2000000000 2\n")  # a stray huge user id: no huge list
    with pytest.raises(L.DataError, match=r"train.txt, line 2: user id 2000000000 but only 2 distinct user ids"):
        L.load_prompt_data(folder)
    (folder / "user_list.txt").write_text("org_id remap_id\nu0 0\nu1 1\n")
    with pytest.raises(L.DataError, match=r"train.txt, line 2: user id 2000000000 out of range"):
        L.load_prompt_data(folder)
    (folder / "train.txt").write_text("0 0 1\n1 99\n")
    with pytest.raises(L.DataError, match=r"train.txt, line 2: item id 99 out of range"):
        L.load_prompt_data(folder)
    (folder / "item_list.txt").unlink()
    (folder / "item_list.txt").mkdir()
    with pytest.raises(L.DataError, match=r"item_list.txt: is a folder, not a file"):
        L.load_prompt_data(folder)


def test_infer_and_batch_export_read_only_train_and_item_list(tmp_path, capsys):
    # a broken kg_final.txt, test.txt or published interest file must not block regenerating it
    folder = make_fixture(tmp_path / "d", n_users=24, extras=False)
    kept = {name: (folder / name).read_text() for name in ("kg_final.txt", "test.txt")}
    for name in ("kg_final.txt", "test.txt", "user_interest_clustered.txt"):
        (folder / name).write_text("0 x\n")
    common = ["--dataset", "d", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")]
    assert L.main(["batch-export", *common]) == 0
    assert len(lines_of(tmp_path / "o" / "d" / "batch_input.jsonl")) == 24
    with FakeLLM() as srv:
        assert L.main(["infer", *common, "--base-url", srv.url, "--model", "fake"]) == 0
    assert len(lines_of(tmp_path / "o" / "d" / "llm_answers.jsonl")) == 24
    assert "Traceback" not in capsys.readouterr().err
    # cluster needs test.txt and the KG (interest ids follow the entity ids), not the interest
    # file it replaces
    (folder / "test.txt").write_text(kept["test.txt"])
    assert L.main(["cluster", *common, "--k", "12"]) == 2
    assert f"{folder / 'kg_final.txt'}, line 1: expected 3 fields" in capsys.readouterr().err
    (folder / "kg_final.txt").write_text(kept["kg_final.txt"])
    assert L.main(["cluster", *common, "--k", "12"]) == 0
    assert "12 interest nodes kept" in capsys.readouterr().err
    assert (folder / "user_interest_clustered.txt").read_text() == "0 x\n"


def tree(root: Path) -> dict:
    """Every path under root: file contents (None for a folder), to check that nothing was written."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", ["infer out-dir is a file", "infer failures file is a folder",
                                  "batch-export out is a folder", "batch-export out under a file",
                                  "batch-import out-dir is a file", "cluster tsv is a folder",
                                  "cluster temporary file is a folder", "infer out-dir is the data dir",
                                  "infer out-dir inside the dataset folder", "infer out-dir is the dataset folder"])
def test_an_output_path_that_cannot_be_written_is_one_line_before_any_work(tmp_path, capsys, case):
    # was: NotADirectoryError, IsADirectoryError, FileExistsError tracebacks (after the requests, for infer)
    make_fixture(tmp_path / "d", n_users=3, extras=False)
    file, o = tmp_path / "file", tmp_path / "o" / "d"
    file.write_text("keep me\n")
    (o / "sub").mkdir(parents=True)
    (o / "llm_answers.jsonl").write_text('{"user": 0, "answer": "poetry"}\n')
    (tmp_path / "out.jsonl").write_text('{"custom_id": "0"}\n')
    made_folder = {"infer failures file is a folder": o / "llm_failures.jsonl",
                   "cluster tsv is a folder": o / "interest_clusters.tsv",
                   "cluster temporary file is a folder": o / "user_interest_clustered.txt.tmp"}.get(case)
    if made_folder:
        made_folder.mkdir()
    common = ["--dataset", "d", "--data-dir", str(tmp_path), "--out-dir"]
    folder_problem = "it is a folder, not a file"
    argv, path, problem = {
        "infer out-dir is a file": (["infer", *common, str(file)], file / "d" / "llm_answers.jsonl",
                                    f"{file} is a file, not a folder"),
        "infer failures file is a folder": (["infer", *common, str(tmp_path / "o")], made_folder, folder_problem),
        "batch-export out is a folder": (["batch-export", *common, str(o), "--out", str(o / "sub")], o / "sub",
                                         folder_problem),
        "batch-export out under a file": (["batch-export", *common, str(o), "--out", str(file / "x.jsonl")],
                                          file / "x.jsonl", f"{file} is a file, not a folder"),
        "batch-import out-dir is a file": (["batch-import", str(tmp_path / "out.jsonl"), *common, str(file)],
                                           file / "d" / "llm_answers.jsonl", f"{file} is a file, not a folder"),
        "cluster tsv is a folder": (["cluster", *common, str(tmp_path / "o")], made_folder, folder_problem),
        "cluster temporary file is a folder": (["cluster", *common, str(tmp_path / "o")], made_folder,
                                               folder_problem),
        "infer out-dir is the data dir": (["infer", *common, str(tmp_path)], tmp_path / "d" / "llm_answers.jsonl",
                                          "it is in the dataset folder, which is never written (see --out-dir)"),
        # found by a fresh user: a folder below the dataset folder was written
        "infer out-dir inside the dataset folder": (["infer", *common, str(tmp_path / "d" / "x")],
                                                    tmp_path / "d" / "x" / "d" / "llm_answers.jsonl",
                                                    "it is in the dataset folder, which is never written (see --out-dir)"),
        "infer out-dir is the dataset folder": (["infer", *common, str(tmp_path / "d")],
                                                tmp_path / "d" / "d" / "llm_answers.jsonl",
                                                "it is in the dataset folder, which is never written (see --out-dir)"),
    }[case]
    before = tree(tmp_path)
    with FakeLLM() as srv:
        rc = L.main(argv + (["--base-url", srv.url, "--model", "fake"] if argv[0] == "infer" else []))
    assert rc == 2 and capsys.readouterr().err == f"error: cannot write {path}: {problem}\n"
    assert tree(tmp_path) == before and not srv.calls  # nothing written, no request sent


def test_a_read_only_output_folder_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    make_fixture(tmp_path / "d", n_users=3, extras=False)
    (tmp_path / "ro").mkdir(mode=0o500)
    real_access = os.access  # root (as in CI) may write anywhere: let os.access answer as for a user
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if "ro" in Path(p).parts and mode & os.W_OK
                        else real_access(p, mode, **kw))
    try:
        rc = L.main(["batch-export", "--dataset", "d", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "ro")])
        assert rc == 2 and capsys.readouterr().err == \
            f"error: cannot write {tmp_path / 'ro' / 'd' / 'batch_input.jsonl'}: permission denied\n"
        assert not list((tmp_path / "ro").iterdir())
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_an_input_folder_where_a_file_goes_is_named_as_a_folder(tmp_path, capsys):
    # was: batch-import of a folder said "file not found"; cluster with a folder for answers said "no answers"
    make_fixture(tmp_path / "d", n_users=3, extras=False)
    (tmp_path / "o" / "d" / "llm_answers.jsonl").mkdir(parents=True)
    before = tree(tmp_path)
    common = ["--dataset", "d", "--data-dir", str(tmp_path), "--out-dir"]
    assert L.main(["batch-import", str(tmp_path / "d"), *common, str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"\nerror: {tmp_path / 'd'}: is a folder, not a file\n") and "Traceback" not in err
    assert L.main(["cluster", *common, str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'o' / 'd' / 'llm_answers.jsonl'}: is a folder, not a file\n"
    assert tree(tmp_path) == before


@pytest.mark.parametrize("how", ["same folder", "through a link"])
def test_cluster_never_overwrites_the_datasets_own_interest_file(tmp_path, capsys, how):
    # was: `cluster --data-dir X --out-dir X` replaced X/<dataset>/user_interest_clustered.txt
    folder = make_fixture(tmp_path / "d", n_users=24, extras=False)
    (folder / "user_interest_clustered.txt").write_text("0 200\n1 200\n")
    (folder / "llm_answers.jsonl").write_text("".join(json.dumps({"user": u, "answer": fixture_answer(
        f"[Title {PER_USER * u}]")}) + "\n" for u in range(24)))
    out_dir = tmp_path
    if how == "through a link":
        out_dir = tmp_path / "link"
        out_dir.symlink_to(tmp_path)
    before = tree(folder)
    rc = L.main(["cluster", "--dataset", "d", "--data-dir", str(tmp_path), "--out-dir", str(out_dir), "--k", "12"])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"error: cannot write {out_dir / 'd' / 'user_interest_clustered.txt'}: it is in the " \
                              "dataset folder, which is never written (see --out-dir)\n"
    assert tree(folder) == before


def test_end_to_end_infer_cluster_then_cikgrec_loads_and_trains(tmp_path, capsys):
    folder = make_fixture(tmp_path / "fx")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    out = tmp_path / "interests"
    common = ["--dataset", "fx", "--data-dir", str(tmp_path), "--out-dir", str(out)]
    with FakeLLM() as srv:
        assert L.main(["infer", *common, "--base-url", srv.url, "--model", "fake", "--limit", "10"]) == 0
        assert len(lines_of(out / "fx" / "llm_answers.jsonl")) == 10
        assert L.main(["infer", *common, "--base-url", srv.url, "--model", "fake", "--workers", "3"]) == 0
    err = capsys.readouterr().err
    assert "1 without a named item (skipped)" in err and "resume: 10 users already" in err
    assert L.main(["cluster", *common, "--k", "12"]) == 0
    err = capsys.readouterr().err
    assert "1 refused without interests" in err and "12 interest nodes kept" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the dataset folder is untouched
    ds = cikgrec.load_dataset(folder, interests_file=out / "fx" / "user_interest_clustered.txt")
    assert ds.n_interests == 12 and len(ds.interest_edges) == 48
    assert ds.interest_ids.tolist() == list(range(ds.n_entities, ds.n_entities + 12))
    assert sorted(set(ds.interest_edges[:, 0].tolist())) == list(range(24))
    run = subprocess.run([sys.executable, "cikgrec_cli.py", "train", "--help"], cwd=HERE, capture_output=True)
    if run.returncode != 0:
        return  # cikgrec_cli.py has no train command yet: loading the file is the check
    run = subprocess.run([sys.executable, "cikgrec_cli.py", "train", *common[:4], "--interests",
                          str(out / "fx" / "user_interest_clustered.txt"), "--epochs", "1",
                          "--out", str(tmp_path / "run.json"), "--device", "cpu", "--batch-size", "16"],
                         cwd=HERE, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "run.json").is_file()
    interest_file = out / "fx" / "user_interest_clustered.txt"
    assert f"interests: {interest_file} (24 of 26 users have interests, 12 interest nodes)" in run.stderr
    assert "warning:" not in run.stderr  # answers of every user with a prompt: no coverage warning


def test_train_warns_when_the_interest_file_came_from_a_limit_trial(tmp_path):
    make_fixture(tmp_path / "fx")
    out = tmp_path / "interests"
    common = ["--dataset", "fx", "--data-dir", str(tmp_path), "--out-dir", str(out)]
    with FakeLLM() as srv:
        assert L.main(["infer", *common, "--base-url", srv.url, "--model", "fake", "--limit", "12"]) == 0
    assert L.main(["cluster", *common, "--k", "6", "--max-share", "0.5"]) == 0
    interest_file = out / "fx" / "user_interest_clustered.txt"
    run = subprocess.run([sys.executable, "cikgrec_cli.py", "train", *common[:4], "--interests", str(interest_file),
                          "--epochs", "1", "--out", str(tmp_path / "run.json"), "--device", "cpu"],
                         cwd=HERE, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"warning: {interest_file} was made by llm_interests.py cluster from LLM answers of 12 of the 25 users" in run.stderr


def test_bench_runs_on_a_small_synthetic_corpus(capsys):
    r = L.bench(n_phrases=2000, n_users=400, k=20, n_init=1)
    assert r["tfidf_s"] >= 0 and r["kmeans_s"] >= 0 and 0 < r["distinct"] <= 2000
    assert "TF-IDF" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Servers as people run them (issue 11): reasoning, truncation, refusals, quota, waits, bytes,
# list shapes, newer OpenAI parameters, batch, dry run, coverage
# ----------------------------------------------------------------------------------------------
def ask(script, **kw):
    """ask_llm for one prompt against FakeLLM(script): (result, server)."""
    with FakeLLM(script) as srv:
        res = L.ask_llm(config(srv.url, **kw), L.build_messages(["A"], "books"))
    return res, srv


def budgets(srv) -> list:
    """The token limit of each request the server got, in order (whichever field carried it)."""
    return [b.get("max_tokens", b.get("max_completion_tokens")) for _, b in srv.bodies]


# 1. Reasoning text never becomes an interest
@pytest.mark.parametrize("content, answer", [
    ("<think>The user reads horror, so maybe: gothic, ghosts.</think>\n\nSci-fi, drama", "Sci-fi, drama"),
    ("The user reads horror, so maybe: gothic, ghosts.\n</think>\nSci-fi, drama", "Sci-fi, drama"),  # no opening tag
    ("<thinking>hmm, horror</thinking>Sci-fi, drama", "Sci-fi, drama"),
    ("<|channel|>analysis<|message|>horror, ghosts<|end|><|start|>assistant<|channel|>final<|message|>Sci-fi, drama",
     "Sci-fi, drama"),
    ("Sci-fi, drama", "Sci-fi, drama"),
])
def test_reasoning_in_the_content_is_stripped_before_the_answer_is_read(content, answer):
    res, srv = ask(lambda msg, n: ok(content))
    assert res["outcome"] == "answered" and res["answer"] == answer and res["attempts"] == 1
    assert (res["reasoning_chars"] > 0) == (content != answer)
    assert L.record_phrases({"answer": res["answer"]}) == (["sci fi", "drama"], "", 0)
    # an old answers file may hold the raw content: cluster strips it the same way
    assert L.record_phrases({"answer": content}) == (["sci fi", "drama"], "", 0)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_a_separate_reasoning_field_is_ignored(field):
    res, _ = ask(lambda msg, n: ok("Poetry, jazz music", **{field: "Let me think: horror, ghosts, war, sci-fi"}))
    assert res["answer"] == "Poetry, jazz music" and res["reasoning_chars"] == 41
    assert L.answer_phrases(res["answer"]).phrases == ["poetry", "jazz music"]


def test_reasoning_cut_off_mid_thought_is_asked_again_with_twice_the_budget_then_fails_with_the_hint(tmp_path):
    # no closing tag and finish_reason length: no answer at 1000, 2000 and 4000 tokens -> a failure
    # that says a thinking model needs a larger --max-tokens; never a set of phrases
    res, srv = ask(lambda msg, n: ok("<think>The user likes horror, ghosts, war", finish="length"))
    assert budgets(srv) == [1000, 2000, 4000] and res["attempts"] == 3 and "outcome" not in res
    assert "cut at the token limit" in res["error"] and "at 4000 tokens (4x --max-tokens)" in res["error"]
    assert "thinking model" in res["error"] and "--max-tokens" in res["error"]
    # the same with the reasoning in its own field and content null (vLLM's reasoning parser)
    res, srv = ask(lambda msg, n: ok(None, finish="length", reasoning_content="horror, ghosts"))
    assert budgets(srv) == [1000, 2000, 4000] and "thinking model" in res["error"]
    # and cut mid-thought at 1000 but answered at 2000: answered, with the larger budget recorded
    res, srv = ask(lambda msg, n: ok("<think>horror" if n == 1 else "<think>ok</think>Horror, war",
                                     finish="length" if n == 1 else "stop"))
    assert budgets(srv) == [1000, 2000] and res == answered("Horror, war", attempts=2, max_tokens=2000,
                                                              reasoning_chars=2)


def test_reasoning_with_no_answer_is_a_failed_attempt_never_phrases():
    res, srv = ask(lambda msg, n: ok("<think>horror, ghosts</think>") if n < 3 else ok("Horror, ghosts"))
    assert res == answered("Horror, ghosts", attempts=3) and budgets(srv) == [1000, 1000, 1000]
    res, _ = ask(lambda msg, n: ok("", reasoning="horror, ghosts"), max_attempts=2)
    assert res["attempts"] == 2 and "reasoning and no answer" in res["error"] and "--max-tokens" in res["error"]
    assert L.answer_phrases("<think>horror, ghosts") == ([], "reasoning only", 0)
    assert L.answer_phrases("horror, ghosts</think>") == ([], "reasoning only", 0)


# 2. Truncated answers are not trusted
def test_a_truncated_answer_is_asked_again_with_twice_the_budget():
    res, srv = ask(lambda msg, n: ok("Sci-fi, horror, photog", finish="length") if n == 1 else
                   ok("Sci-fi, horror, photography"))
    assert budgets(srv) == [1000, 2000]
    assert res == answered("Sci-fi, horror, photography", attempts=2, max_tokens=2000)


def test_still_truncated_at_4x_the_fragment_is_dropped_and_the_record_marked(tmp_path, capsys):
    folder = make_fixture(tmp_path / "d", n_users=3, extras=False)
    jobs, _ = jobs_for(folder)
    with FakeLLM(lambda msg, n: ok("Sci-fi, horror, photog" if user_of(msg) != 2 else "Photog", finish="length")) as srv:
        counts = L.run_inference(jobs, tmp_path / "a.jsonl", tmp_path / "f.jsonl", config(srv.url, max_tokens=50))
    assert [b for u, b in zip([u for u, _ in srv.bodies], budgets(srv)) if u == 0] == [50, 100, 200]
    assert counts["answered"] == 2 and counts["truncated"] == 2 and counts["failed"] == 1
    recs = {r["user"]: r for r in lines_of(tmp_path / "a.jsonl")}
    assert recs[0]["truncated"] is True and recs[0]["answer"] == "Sci-fi, horror, photog"
    assert recs[0]["max_tokens"] == 200 and recs[0]["finish_reason"] == "length"
    assert L.record_phrases(recs[0]) == (["sci fi", "horror"], "", 0)  # "photog" is not an interest
    (fail,) = lines_of(tmp_path / "f.jsonl")  # user 2: nothing complete is left: asked again by a rerun
    assert fail["user"] == 2 and "before one complete interest" in fail["error"]
    # the cluster summary counts them (7 of 24 here)
    answers = {u: {"answer": f"{POOL[u % 12]}, {POOL[(u + 5) % 12]}, phot", "truncated": u < 7} for u in range(24)}
    r = L.cluster_answers(answers, 100, 12)
    assert r["n_truncated"] == 7 and r["n_users_with_phrases"] == 24


@pytest.mark.parametrize("text, truncated, pieces", [
    ("Sci-fi, horror, photog", True, ["Sci-fi", "horror"]),
    ("Sci-fi, horror,", True, ["Sci-fi", "horror"]),  # cut right after a separator: nothing lost
    ("- Sci-fi\n- Horror\n", True, ["Sci-fi", "Horror"]),
    ("- Sci-fi\n- Horror\n- Phot", True, ["Sci-fi", "Horror"]),
    ('["Sci-fi", "Horror", "Pho', True, ["Sci-fi", "Horror"]),
    ("Photog", True, []),
    ("Sci-fi, horror, photog", False, ["Sci-fi", "horror", "photog"]),
])
def test_split_answer_drops_only_the_trailing_fragment_of_a_truncated_answer(text, truncated, pieces):
    assert L.split_answer(text, truncated) == pieces


def test_an_answers_file_from_before_the_truncated_flag_is_judged_by_finish_reason():
    assert L.record_phrases({"answer": "Drama, poe", "finish_reason": "length"}) == (["drama"], "", 0)
    assert L.record_phrases({"answer": "Drama, poe", "finish_reason": "stop"}) == (["drama", "poe"], "", 0)
    assert L.record_phrases({"answer": "Poe", "truncated": True}) == ([], "truncated", 0)


# 3. Refusals and filtered answers are named, and final
def test_refused_and_filtered_are_final_outcomes_named_in_the_summaries(tmp_path, capsys):
    folder = make_fixture(tmp_path / "d", n_users=24, extras=False)
    replies = {0: ok(None, finish="content_filter"),  # filtered, null content
               1: ok("partial text", finish="content_filter"),  # filtered, with content
               2: ok(None, refusal="I can't help with profiling people."),  # refused, refusal field
               3: ok(""),  # empty content, finish_reason stop: refused
               4: ok("I'm sorry, I cannot infer interests."),  # an apology: refused
               5: http(400, {"error": {"message": "The response was filtered due to the prompt triggering Azure "
                                                  "OpenAI's content management policy.", "code": "content_filter"}}),
               6: ok("Cozy mystery, gothic horror, phot", finish="length"),  # truncated at 1x, 2x, 4x
               7: ok("Cozy mystery, Ελληνική ποίηση, poetry")}  # one phrase that cleaning empties
    script = lambda msg, n: replies.get(user_of(msg), ok(fixture_answer(msg)))
    common = ["--dataset", "d", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")]
    with FakeLLM(script) as srv:
        assert L.main(["infer", *common, "--base-url", srv.url, "--model", "fake"]) == 0
        assert all(srv.calls_for(u) == 1 for u in range(6))  # none retried
    err = capsys.readouterr().err
    assert "infer summary: 18 answered now (1 cut at the token limit, fragment dropped), 3 refused, 3 filtered, " \
           "0 failed" in err
    recs = {r["user"]: r for r in lines_of(tmp_path / "o" / "d" / "llm_answers.jsonl")}
    assert [recs[u]["outcome"] for u in range(7)] == ["filtered"] * 2 + ["refused"] * 3 + ["filtered", "answered"]
    assert recs[2]["refusal"] == "I can't help with profiling people." and recs[3]["refusal"] == ""
    assert recs[4]["refusal"] == "I'm sorry, I cannot infer interests."
    assert "content management policy" in recs[5]["refusal"]
    assert not (tmp_path / "o" / "d" / "llm_failures.jsonl").read_text()
    with FakeLLM() as srv:  # final: a rerun asks nobody again
        assert L.main(["infer", *common, "--base-url", srv.url, "--model", "fake"]) == 0
        assert not srv.calls
    assert "resume: 24 users already" in capsys.readouterr().err
    assert L.main(["cluster", *common, "--k", "12"]) == 0
    err = capsys.readouterr().err
    assert "cluster summary: 24 answers (3 filtered, 3 refused without interests; 1 truncated, their fragment " \
           "dropped), 36 phrases (" in err and "; 1 more dropped by cleaning: no Latin letters, or too long)" in err


# 4. Quota is not rate limit
QUOTA_429 = {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                       "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}


@pytest.mark.parametrize("status, body, quota", [
    (429, QUOTA_429, True),
    (429, {"error": {"message": "Rate limit reached for gpt-4o-mini in organization org-x on requests per min "
                                "(RPM): Limit 3, Used 3, Requested 1.", "type": "requests",
                     "code": "rate_limit_exceeded"}}, False),
    (402, {"error": {"message": "Insufficient credits. Add more using https://example.invalid/credits",
                     "code": 402}}, True),
    (429, {"error": "Your credit balance is too low"}, True),
    (429, {"error": {"message": "Quota exceeded for quota metric 'Generate requests' per minute"}}, False),
    (429, {"error": {"message": "Too many requests, please slow down"}}, False),
    (429, {"detail": "Daily limit reached: 200 requests per day"}, True),
])
def test_quota_and_rate_limit_are_told_apart(status, body, quota):
    assert L.is_quota(status, L.error_fields(body)) is quota


def test_quota_used_up_after_many_answers_stops_the_run_keeps_them_and_says_how_many_are_left(tmp_path, capsys):
    make_fixture(tmp_path / "d")
    lock, seen = threading.Lock(), [0]

    def script(msg, n):
        with lock:
            seen[0] += 1
            answered_yet = seen[0] <= 10
        return ok(fixture_answer(msg)) if answered_yet else http(429, QUOTA_429)

    with FakeLLM(script) as srv:
        rc = L.main(infer_args(tmp_path, srv.url, "--workers", "2", "--max-attempts", "5"))
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "You exceeded your current quota, please check your plan and billing details." in err
    assert "not a rate limit" in err
    assert max(srv.calls.values()) == 1  # never retried per user
    assert seen[0] <= 12  # the 10 answered, and what the 2 workers had in flight
    assert len(lines_of(tmp_path / "o" / "d" / "llm_answers.jsonl")) == 10
    assert "infer: 10 of 25 users have an answer" in err and "15 left: rerun the same command to continue" in err
    with FakeLLM() as srv:  # topped up: the rerun asks exactly the 15 left
        assert L.main(infer_args(tmp_path, srv.url)) == 0
        assert sum(srv.calls.values()) == 15


# 5. Waits are bounded
def test_retry_after_ms_and_an_http_date_are_honoured():
    t0 = time.time()
    res, srv = ask(lambda msg, n: http(429, {}, {"retry-after-ms": "300"}) if n == 1 else ok("Drama"),
                   backoff=5.0, max_backoff=5.0)  # the computed wait would be 2.5-5 s: the header wins
    took = time.time() - t0
    assert res["answer"] == "Drama" and 0.3 <= took < 2.5  # the computed wait is at least 2.5 s
    date = email.utils.formatdate(time.time() + 2, usegmt=True)  # about 1-2 s from now (whole seconds)
    t0 = time.time()
    res, _ = ask(lambda msg, n: http(503, {}, {"Retry-After": date}) if n == 1 else ok("Drama"))
    assert res["answer"] == "Drama" and 0.9 <= time.time() - t0 < 4.0
    assert L.asked_wait({"retry-after-ms": "1500", "Retry-After": "9"}) == (1.5, "retry-after-ms: 1500")
    assert L.asked_wait({"Retry-After": "9"}) == (9.0, "Retry-After: 9")
    assert L.asked_wait({"Retry-After": "later"}) == (None, "")


def test_a_server_asking_to_wait_past_max_wait_stops_the_run_with_when_to_rerun(tmp_path, capsys):
    make_fixture(tmp_path / "d")
    with FakeLLM(lambda msg, n: http(429, {"error": {"message": "slow down"}}, {"Retry-After": "86400"})) as srv:
        t0 = time.time()
        rc = L.main(infer_args(tmp_path, srv.url, "--workers", "2"))
        took = time.time() - t0
        n_calls = sum(srv.calls.values())
    err = capsys.readouterr().err
    assert rc == 2 and took < 10 and n_calls <= 2 and "Traceback" not in err
    assert "asks to wait 24h00m (Retry-After: 86400), more than --max-wait 60 s" in err
    assert "rerun the same command after 20" in err  # ... after YYYY-MM-DD HH:MM:SS (local time)
    assert "0 of 25 users have an answer" in err and "25 left" in err
    with FakeLLM(lambda msg, n: http(429, {}, {"Retry-After": "2"}) if n == 1 else ok("Drama")) as srv:
        with pytest.raises(L.SetupError, match=r"asks to wait 0m02s \(Retry-After: 2\), more than --max-wait 1 s"):
            L.ask_llm(config(srv.url, max_wait=1.0), L.build_messages(["A"], "books"))


# 6. Bytes are decoded as what they are
def test_a_json_reply_is_decoded_as_utf8_whatever_the_content_type(tmp_path, capsys):
    folder = make_fixture(tmp_path / "d", n_users=3, extras=False)
    jobs, _ = jobs_for(folder)
    text = "Café culture, Ελληνική ποίηση, Sci-fi"
    body = json.dumps(ok(text)[1], ensure_ascii=False).encode("utf-8")
    with FakeLLM(lambda msg, n: http(200, body, {"Content-Type": "text/plain"})) as srv:
        L.run_inference(jobs, tmp_path / "a.jsonl", tmp_path / "f.jsonl", config(srv.url))
    recs = lines_of(tmp_path / "a.jsonl")
    assert [r["answer"] for r in recs] == [text] * 3  # not "CafÃ© culture"
    assert L.record_phrases(recs[0]) == (["cafe culture", "sci fi"], "", 1)  # the Greek phrase: dropped, counted
    with FakeLLM(lambda msg, n: http(400, json.dumps({"error": {"message": "modèle inconnu"}},
                                                     ensure_ascii=False).encode(), {"Content-Type": "text/plain"})) as srv:
        res = L.ask_llm(config(srv.url), L.build_messages(["A"], "books"))
    assert res["error"] == f"HTTP 400 from {srv.url}/chat/completions: modèle inconnu"


def test_phrases_that_cleaning_empties_are_counted_in_the_cluster_summary(tmp_path):
    answers = {u: {"answer": f"{POOL[u % 12]}, {POOL[(u + 5) % 12]}, 科幻小说"} for u in range(24)}
    answers[24] = {"answer": "ファンタジー, 推理小説"}  # nothing Latin at all: no phrases
    r = L.cluster_answers(answers, 1000, 12)
    assert r["n_dropped"] == 24 + 2 and r["problems"] == {"no phrases": 1} and r["n_users_linked"] == 24


# 7. Lists in the shapes models write them
SHAPES = ["Science fiction, Space opera, Time travel",
          "Science fiction; Space opera; Time travel",
          "Science fiction / Space opera / Time travel",
          "- Science fiction\n- Space opera\n- Time travel",
          "* Science fiction\n* Space opera\n* Time travel",
          "• Science fiction\n• Space opera\n• Time travel",
          "1. Science fiction\n2. Space opera\n3. Time travel",
          "1. Science fiction 2. Space opera 3. Time travel",
          "1) Science fiction 2) Space opera 3) Time travel",
          "Here are the interests: Science fiction, Space opera, Time travel",
          "Here are the user's likely interests:\n\n1. **Science fiction**\n2. **Space opera**\n3. **Time travel**",
          "Interests: Science fiction, Space opera, Time travel.",
          '["Science fiction", "Space opera", "Time travel"]',
          "<think>maybe horror, too</think>\nScience fiction, Space opera, Time travel"]


def test_every_list_shape_gives_the_same_phrases_through_the_server(tmp_path):
    folder = make_fixture(tmp_path / "d", n_users=len(SHAPES), extras=False)
    jobs, _ = jobs_for(folder)
    with FakeLLM(lambda msg, n: ok(SHAPES[user_of(msg)])) as srv:
        L.run_inference(jobs, tmp_path / "a.jsonl", tmp_path / "f.jsonl", config(srv.url))
    recs = {r["user"]: r for r in lines_of(tmp_path / "a.jsonl")}
    for u, shape in enumerate(SHAPES):
        assert L.record_phrases(recs[u]) == (["science fiction", "space opera", "time travel"], "", 0), shape


def test_a_colon_inside_a_title_is_not_a_preamble():
    assert L.answer_phrases("Star Wars: The Clone Wars, Horror").phrases == ["star war clone war", "horror"]
    assert L.answer_phrases("The user enjoys:\nHorror\nPoetry").phrases == ["horror", "poetry"]


# 8. Newer OpenAI parameters
UNSUPPORTED_MAX_TOKENS = {"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this "
                                               "model. Use 'max_completion_tokens' instead.",
                                    "type": "invalid_request_error", "param": "max_tokens",
                                    "code": "unsupported_parameter"}}


def test_max_tokens_rejected_switches_to_max_completion_tokens_once_also_for_requests_in_flight(tmp_path, capsys):
    folder = make_fixture(tmp_path / "d", n_users=12, extras=False)
    jobs, _ = jobs_for(folder)
    together = threading.Barrier(4, timeout=30)  # the first 4 requests are in flight at the same time

    def script(msg, n, body):
        if "max_tokens" in body:
            try:
                together.wait()
            except threading.BrokenBarrierError:
                pass
            return http(400, UNSUPPORTED_MAX_TOKENS)
        return ok(fixture_answer(msg))

    with FakeLLM(script) as srv:
        cfg = config(srv.url)
        counts = L.run_inference(jobs, tmp_path / "a.jsonl", tmp_path / "f.jsonl", cfg, workers=4)
    err = capsys.readouterr().err
    assert counts["answered"] == 12 and counts["failed"] == 0
    assert err.count("note: the server does not take 'max_tokens'") == 1 and "max_completion_tokens" in err
    rejected = [u for u, b in srv.bodies if "max_tokens" in b]
    assert len(rejected) == 4 and all(srv.calls_for(u) == 2 for u in rejected)  # each sent again, once
    assert all(b["max_completion_tokens"] == 1000 for _, b in srv.bodies if "max_tokens" not in b)
    assert cfg.token_field == "max_completion_tokens"
    assert all(b["stream"] is False for _, b in srv.bodies)


def test_both_token_fields_rejected_is_a_recorded_failure_not_a_loop():
    body = {"error": {"message": "Unrecognized request argument supplied: max_tokens, max_completion_tokens"}}
    res, srv = ask(lambda msg, n: http(400, body))
    assert sum(srv.calls.values()) == 2 and res["status"] == 400 and "Unrecognized request argument" in res["error"]


def test_an_error_object_in_a_200_reply_shows_the_servers_message(tmp_path, capsys):
    make_fixture(tmp_path / "d", n_users=3, extras=False)
    body = {"error": {"message": "Provider returned error", "code": 502, "metadata": {"raw": "upstream down"}}}
    script = lambda msg, n: http(200, body) if user_of(msg) == 1 else ok(fixture_answer(msg))
    with FakeLLM(script) as srv:
        assert L.main(infer_args(tmp_path, srv.url)) == 1
        assert srv.calls_for(1) == 2  # retried (--max-attempts 2)
    err = capsys.readouterr().err
    assert f"error in a 200 reply from {srv.url}/chat/completions: Provider returned error" in err
    assert "malformed" not in err
    (fail,) = lines_of(tmp_path / "o" / "d" / "llm_failures.jsonl")
    assert "Provider returned error" in fail["error"]


# 9. Batch mode re-pays nobody; vllm run-batch output is read
def test_batch_export_leaves_out_users_with_a_final_outcome_and_takes_the_token_field(tmp_path, capsys):
    make_fixture(tmp_path / "d", n_users=4, extras=False)
    out = tmp_path / "o" / "d"
    out.mkdir(parents=True)
    (out / "llm_answers.jsonl").write_text(
        json.dumps({"user": 0, "outcome": "answered", "answer": "drama"}) + "\n" +
        json.dumps({"user": 2, "outcome": "refused", "answer": "", "refusal": "no"}) + "\n")
    (out / "llm_failures.jsonl").write_text(json.dumps({"user": 1, "error": "HTTP 500"}) + "\n")  # asked again
    common = ["--dataset", "d", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")]
    assert L.main(["batch-export", *common, "--model", "Qwen/Qwen3-8B", "--token-field", "max_completion_tokens",
                   "--max-tokens", "4000"]) == 0
    err = capsys.readouterr().err
    lines = lines_of(out / "batch_input.jsonl")
    assert [r["custom_id"] for r in lines] == ["1", "3"]
    assert "2 users already have an answer" in err and "batch-export: 2 requests" in err
    assert lines[0]["body"]["max_completion_tokens"] == 4000 and "max_tokens" not in lines[0]["body"]
    assert lines[0]["body"]["model"] == "Qwen/Qwen3-8B" and lines[0]["body"]["stream"] is False
    assert not (out / "batch_input.jsonl.tmp").exists()


def test_batch_import_reads_vllm_run_batch_output_with_reasoning_truncation_refusal(tmp_path, capsys):
    folder = make_fixture(tmp_path / "d", n_users=5, extras=False)
    jobs, _ = jobs_for(folder)

    def line(user, message, finish="stop"):  # what `vllm run-batch -o out.jsonl` writes
        return json.dumps({"id": f"vllm-{user}", "custom_id": str(user), "response": {
            "status_code": 200, "request_id": f"vllm-batch-{user}", "body": {
                "id": "chatcmpl-1", "object": "chat.completion", "model": "Qwen/Qwen3-8B",
                "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}}, "error": None})

    text = "\n".join([line(0, {"content": "Horror, war", "reasoning_content": "thinking..."}),
                      line(1, {"content": "<think>x</think>Sci-fi, dra"}, "length"),
                      line(2, {"content": None, "refusal": "No."}),
                      line(3, {"content": "<think>still thinking"}, "length"),
                      line(4, {"content": "Poetry"}, "content_filter")]) + "\n"
    (tmp_path / "out.jsonl").write_text(text)
    c = L.batch_import(tmp_path / "out.jsonl", jobs, tmp_path / "a.jsonl", tmp_path / "f.jsonl")
    assert (c["imported"], c["truncated"], c["refused"], c["filtered"], c["failed"]) == (4, 1, 1, 1, 1)
    assert c["usage"] == {"prompt_tokens": 500, "completion_tokens": 100, "reasoning_tokens": 0}
    recs = {r["user"]: r for r in lines_of(tmp_path / "a.jsonl")}
    assert recs[0]["answer"] == "Horror, war" and recs[0]["model"] == "Qwen/Qwen3-8B"
    assert recs[1]["truncated"] is True and L.record_phrases(recs[1]) == (["sci fi"], "", 0)
    assert recs[2]["outcome"] == "refused" and recs[2]["refusal"] == "No."
    assert recs[4]["outcome"] == "filtered"
    (fail,) = lines_of(tmp_path / "f.jsonl")
    assert fail["user"] == 3 and "cut at the token limit" in fail["error"] and fail["batch_line"] == 4



def test_batch_import_a_bom_a_line_without_response_and_an_empty_file(tmp_path, capsys):
    """Found by a fresh user: a BOM made the first line "unreadable", a line without "response"
    was recorded as "HTTP None: null", and an empty output file said nothing."""
    folder = make_fixture(tmp_path / "d", n_users=3, extras=False)
    jobs, _ = jobs_for(folder)
    ok = {"status_code": 200, "body": {"choices": [{"message": {"role": "assistant", "content": "Horror, war"},
                                                    "finish_reason": "stop"}]}}
    (tmp_path / "out.jsonl").write_text("\ufeff" + json.dumps({"custom_id": "0", "response": ok}) + "\n"
                                        + json.dumps({"custom_id": "1"}) + "\n")
    c = L.batch_import(tmp_path / "out.jsonl", jobs, tmp_path / "a.jsonl", tmp_path / "f.jsonl")
    assert (c["imported"], c["failed"]) == (1, 1)
    (fail,) = lines_of(tmp_path / "f.jsonl")
    assert fail["user"] == 1 and 'no "response" object' in fail["error"] and "HTTP None" not in fail["error"]
    (tmp_path / "empty.jsonl").write_text("")
    common = ["--dataset", "d", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")]
    assert L.main(["batch-import", str(tmp_path / "empty.jsonl"), *common]) == 0
    assert "holds no batch output line: nothing imported" in capsys.readouterr().err
    assert L.main(["batch-export", *common]) == 0
    err = capsys.readouterr().err
    assert "kept without its last fragment" in err and "asked again with up to" not in err


# 10. Cost and size known first
def tiny_dataset(folder: Path) -> Path:
    """3 users with one training item each (so no validation item): Dune, Emma, Ulysses."""
    folder.mkdir(parents=True)
    (folder / "item_list.txt").write_text("org remap name\na 0 Dune\nb 1 Emma\nc 2 Ulysses\nd 3 Other\n")
    (folder / "train.txt").write_text("0 0\n1 1\n2 2\n")
    (folder / "test.txt").write_text("0 3\n1 3\n2 3\n")
    return folder


def test_dry_run_sends_nothing_and_prints_users_tokens_and_cost(tmp_path, capsys):
    tiny_dataset(tmp_path / "t")
    # by hand: the system prompt is 222 characters and "The books this user liked: " 27; user 0 adds
    # "[Dune]" (6): 255 characters -> ceil(255 / 4) = 64, + 4 per message = 72; user 1 "[Emma]": 72;
    # user 2 "[Ulysses]" (9): 258 -> 65 + 8 = 73. Prompts 217 tokens; completions 3 x 1000.
    assert len(L.SYSTEM_PROMPT.format(field="books")) == 222
    common = ["--dataset", "t", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")]
    with FakeLLM() as srv:
        before = tree(tmp_path)
        assert L.main(["infer", *common, "--base-url", srv.url, "--dry-run", "--price-in", "1000",
                       "--price-out", "2000"]) == 0
        assert not srv.calls and tree(tmp_path) == before  # nothing sent, nothing written
    err = capsys.readouterr().err
    assert "0 users already answered" in err and "3 users to ask; prompts about 217 tokens" in err
    assert "completions at most 3,000 tokens (1,000 per user" in err
    # cost: 217 x 1000 / 1e6 = 0.217 in, 3000 x 2000 / 1e6 = 6 out
    assert "cost at most $6.2170 ($0.2170 in + $6.0000 out)" in err and "Nothing was sent." in err
    # issue 19: beside the upper bound, a typical estimate and one sample prompt. No answers yet:
    # 150 tokens per user, 3 x 150 = 450; cost 0.217 + 450 x 2000 / 1e6 = 1.117
    assert "typical: completions about 450 tokens (150 per user, a typical answer without reasoning" in err
    assert "cost about $1.1170" in err
    assert "the first prompt (0's):\n  [system] " in err and "[user] The items this user liked: [Dune]" in err
    # after resume: only the users left are counted
    (tmp_path / "o" / "t").mkdir(parents=True)
    (tmp_path / "o" / "t" / "llm_answers.jsonl").write_text('{"user": 2, "answer": "drama", "usage": '
                                                            '{"completion_tokens": 37}}\n')
    assert L.main(["infer", *common, "--base-url", "http://127.0.0.1:9/v1", "--dry-run", "--max-tokens", "10"]) == 0
    err = capsys.readouterr().err
    assert "1 users already answered" in err and "2 users to ask; prompts about 144 tokens" in err
    assert "completions at most 20 tokens" in err and "give --price-in and --price-out" in err
    assert "typical: completions about 74 tokens (37 per user, the median of the 1 answers so far)" in err


def test_a_real_run_reports_the_usage_the_server_returned(tmp_path, capsys):
    tiny_dataset(tmp_path / "t")
    usage = {"prompt_tokens": 70, "completion_tokens": 12, "completion_tokens_details": {"reasoning_tokens": 5}}
    common = ["--dataset", "t", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")]
    with FakeLLM(lambda msg, n: ok("Drama, poetry", usage=usage)) as srv:
        assert L.main(["infer", *common, "--base-url", srv.url, "--price-in", "0.15", "--price-out", "0.6"]) == 0
    err = capsys.readouterr().err
    # 3 users: 210 prompt, 36 completion tokens; 210 x 0.15 / 1e6 + 36 x 0.6 / 1e6 = 0.0000531
    assert "infer usage: 210 prompt + 36 completion tokens (15 of them reasoning), $0.0001 at $0.15 / $0.6" in err
    assert lines_of(tmp_path / "o" / "t" / "llm_answers.jsonl")[0]["usage"] == \
        {"prompt_tokens": 70, "completion_tokens": 12, "reasoning_tokens": 5}


# 11. The interests file a run uses is visible: coverage beside cluster's output
def test_cluster_writes_the_coverage_and_warns_after_a_limit_trial(tmp_path, capsys):
    make_fixture(tmp_path / "fx")
    common = ["--dataset", "fx", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")]
    out = tmp_path / "o" / "fx"
    with FakeLLM() as srv:
        assert L.main(["infer", *common, "--base-url", srv.url, "--model", "fake", "--limit", "12"]) == 0
        assert L.main(["cluster", *common, "--k", "6", "--max-share", "0.5"]) == 0
        err = capsys.readouterr().err
        assert "the answers cover 12 of the 25 users with a prompt (48%)" in err
        assert "warning: under half of the users with a prompt have an answer" in err
        interests = out / "user_interest_clustered.txt"
        cov = json.loads((out / "user_interest_clustered.coverage.json").read_text())
        assert cov["users_with_prompt"] == 25 and cov["users_answered"] == 12 and cov["answered_share"] == 0.48
        assert cov["made_by"] == "llm_interests.py cluster" and cov["interest_file"] == interests.name
        assert cov["interest_file_sha256"] == hashlib.sha256(interests.read_bytes()).hexdigest()
        assert cov["users_with_interests"] == len({line.split()[0] for line in interests.read_text().splitlines()})
        assert L.read_coverage(interests) == cov
        assert L.coverage_warning(cov).startswith("warning: this interest file was made from LLM answers of 12 of "
                                                  "the 25 users with a prompt (48%)")
        assert L.main(["infer", *common, "--base-url", srv.url, "--model", "fake"]) == 0
    assert L.main(["cluster", *common, "--k", "12"]) == 0
    assert "cover 25 of the 25 users" in capsys.readouterr().err
    cov = L.read_coverage(interests)
    assert cov["users_answered"] == 25 and L.coverage_warning(cov) == ""
    interests.write_text(interests.read_text() + "0 999\n")  # changed after cluster: the record no longer counts
    assert L.read_coverage(interests) is None and L.coverage_warning(None) == ""
    assert L.read_coverage(tmp_path / "fx" / "user_interest_clustered.txt") is None  # a published file: none


# Options of issue 11 are checked like the others
@pytest.mark.parametrize("option", [["--max-wait", "-1"], ["--max-wait", "inf"], ["--price-in", "-1"],
                                    ["--price-out", "nan"], ["--max-tokens", "0"]])
def test_bad_new_options_are_one_clear_message(tmp_path, capsys, option):
    make_fixture(tmp_path / "d", n_users=3, extras=False)
    rc = L.main(infer_args(tmp_path, "http://127.0.0.1:9/v1", *option))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {option[0]} must") and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------
# The fake server from the command line (for a demo run of `llm_interests.py infer`)
# ----------------------------------------------------------------------------------------------
def serve(port: int, delay: float) -> None:
    """Serve canned answers (fixture_answer) on 127.0.0.1:port until Ctrl-C or kill."""
    srv = FakeLLM(delay=delay, port=port)
    print(f"fake LLM at {srv.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.__exit__()


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description="a fake OpenAI-compatible chat-completions server")
    p.add_argument("command", choices=["serve"])
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--delay", type=float, default=0.0, help="seconds before each reply")
    a = p.parse_args()
    serve(a.port, a.delay)
