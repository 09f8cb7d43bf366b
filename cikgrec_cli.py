"""Runs and commands: the tool layer around cikgrec.py (which it imports; never the reverse).

cikgrec.py is the method and a plain loop. This file holds what a practitioner needs around it:

    fit             a run with its results file: the output lock, a checkpoint after every epoch
                    and --resume, --max-minutes, --refit (the same loop, cikgrec.train_loop), the
                    memory check, provenance (SHA-256 of the data and model, git commit)
    results         read_results (checked), settings_differ, definition_changes, output_paths
    a saved run     load_trained, load_run(...).recommend, .recommend_new (fold-in of new users),
                    write_recommendations, Fig. 3 groups
    bench           seconds per epoch and evaluation, peak memory, a breakdown by part
    command line    train, recommend, prepare, stats, bench, download, export (cikgrec_prepare.py: datasets)

    python cikgrec_cli.py train --dataset book-crossing --data-dir ../shared/data --refit
    python cikgrec_cli.py recommend --run runs/book-crossing-seed2024.json --k 20 --out recs.tsv
    python cikgrec_cli.py bench --dataset book-crossing --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import dataclasses
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cikgrec import (DATASET_DEFAULTS, GRAPHS, DataError, Dataset, Progress, Settings, SettingsError, check,
                     Trainer, TrainingError, add_settings_arguments, evaluate_ranking, id_pairs, log,
                     make_settings, node_counts, open_text, option, parse_ks, read_id_list, train_loop)
from cikgrec import read_data as read_method_data
from cikgrec_prepare import (DATASETS, SEPARATORS, dataset_folder, dataset_stats, download, export_recbole, load_checked,
                             prepare, recbole_files, stats_markdown)
from llm_interests import first_line, item_title, json_with, open_input, read_histories, source_path

# ----------------------------------------------------------------------------------------------
# Settings: their checks, and the versions of the computation results files record
# ----------------------------------------------------------------------------------------------
# Changes to the computation since results files were first written, as (version, what, runs it
# changes). fit records definition(s) in every results file; experiments.py refuses a file made
# under another definition. Runs that no change touches (e.g. CIKGRec on book-crossing) stay at 1.
DEFINITION_CHANGES = (
    (2, "baselines at their own papers' definitions (no self-loops, no dropout, BPR weight 1; SimGCL "
        "without layer 0)", lambda s: s.model != "cikgrec"),
    (2, "GMAE replacement donors drawn from the interest rows",
     lambda s: s.replace_rate > 0 and s.lambda2 > 0 and s.interest_nodes),
    (2, "node dropout once on the layer-0 table", lambda s: s.node_drop > 0),
    (2, "--variant authors: self-loops under edge dropout, KGAT's head-first TransE batches",
     lambda s: s.variant == "authors" and (s.edge_drop > 0 or s.recon_edge_drop > 0 or s.transe)),
)


def definition(s: Settings) -> int:
    """The version of the computation a run with settings s performs (DEFINITION_CHANGES)."""
    return max([v for v, _, changes in DEFINITION_CHANGES if changes(s)], default=1)


MAX_THREADS = 4 * (os.cpu_count() or 16)  # torch crashes on absurd thread counts
MAX_K = 100_000  # largest cut-off of --ks


def check_settings(s: Settings) -> Settings:
    """cikgrec.check (each setting that cannot work, named with its value), and what only a run of
    the tool layer meets: --threads at most MAX_THREADS, cut-offs at most MAX_K. Raises SettingsError."""
    check(s)
    if s.threads > MAX_THREADS:  # torch crashes on absurd thread counts
        raise SettingsError(f"--threads must be at most {MAX_THREADS} (4 per CPU of this machine), got {s.threads}")
    if max(parse_ks(s.ks)) > MAX_K:  # a cut-off is a length of a ranked list; the metrics hold K columns per user
        raise SettingsError(f"--ks {max(parse_ks(s.ks))}: a cut-off must be at most {MAX_K:,}")
    return s

# ----------------------------------------------------------------------------------------------
# fit: a run with its results file, checkpoints, --resume, --refit, --max-minutes
# ----------------------------------------------------------------------------------------------
# Settings that never change a run's numbers (a resumed or refit run may differ in them).
RUN_FREE = ("max_minutes", "resume", "device", "threads", "out", "data_dir", "interests", "eval_batch")
# Settings --resume lets change: they only say how long a run goes on, or whether a refit follows.
RESUME_FREE = ("epochs", "patience", "min_epochs", "refit")


def settings_differ(results: dict, s: Settings) -> list:
    """The settings (names) in which the run of `results` (read_results; its "settings") differs
    from s, leaving out RUN_FREE and refit, which never change a run's numbers, and min_epochs where
    the run's early stop came after s's min_epochs anyway. A setting newer than
    the file counts as its default, which keeps the old behaviour; a file without settings differs
    in all."""
    saved = results.get("settings", {})
    if saved:
        saved = {**{f.name: f.default for f in dataclasses.fields(Settings)}, **saved}
    differ = [k for k, v in dataclasses.asdict(s).items() if k not in RUN_FREE + ("refit",) and saved.get(k) != v]
    # --min-epochs M only holds off early stopping before epoch M: a run whose patience ran out
    # after M epochs, under a smaller M of its own, ran exactly the epochs it would have run with M
    ran, best = results.get("epochs_run"), results.get("best_epoch")
    if ("min_epochs" in differ and saved and saved["min_epochs"] <= s.min_epochs and not results.get("stopped_by")
            and isinstance(ran, int) and isinstance(best, int) and ran - 1 - best >= saved["patience"]
            and ran >= s.min_epochs):
        differ.remove("min_epochs")
    return differ


def fit(s: Settings, force: bool = False) -> dict:
    """Train with early stopping on validation Recall@50 + NDCG@50, evaluate the selected model
    on test once, write the results JSON and the best model's state. With select_on="test"
    (the authors' protocol) there is no validation split and epochs are selected on test.

    A checkpoint after every epoch lets resume=True continue exactly. With max_minutes, training
    stops after the epoch in which that many minutes (wall clock, this call) have passed; the
    results of the best epoch so far are written with stopped_by "time limit: ..." (a sweep counts
    such a run as unfinished and resumes it).

    The run holds a lock on its --out while it trains (output_lock: a second run on it is
    refused, naming the holder's PID). Results already at --out are never replaced unless
    force=True (--force); --resume continues their checkpoint and --refit adds a refit to them.
    The best model is kept in memory and in the checkpoint, never read back from a file that
    another run could have replaced. Raises DataError, SettingsError, TrainingError, and
    Interrupted (Ctrl-C) saying what the checkpoint holds.
    """
    check_settings(s)
    deadline = time.perf_counter() + 60 * s.max_minutes if s.max_minutes else None  # both phases
    if s.refit and s.select_on == "test":
        raise SettingsError("--refit needs validation selection: with --select-on test the model was chosen "
                            "on test and there is nothing to refit")
    device = pick_device(s.device)
    if s.threads:
        torch.set_num_threads(s.threads)
    ds, train_part, valid = read_data(s)  # bad input stops here, before anything is written
    check_memory(s, ds, device)
    out, best_path, ckpt_path = output_paths(s)
    check_writable(out, best_path, ckpt_path, dataset_folder=Path(s.data_dir) / s.dataset)
    with output_lock(out):
        done = finished_results(out, s) if s.refit and not force else None
        if done is not None:  # a finished validation-selected run: only its refit is left to do
            return add_refit(s, done, out, device, deadline)
        done = finished_run(out, s) if s.resume and not force else None
        if done is not None:  # its checkpoint would only be rewritten, and its refit lost
            log(f"{out} is finished: --resume has nothing to continue (--refit adds a refit, --force trains it again)")
            return done
        if out.exists() and not (s.resume and ckpt_path.is_file()):
            if not force:
                raise SettingsError(existing_results(out, s))
            log(f"note: --force: the results in {out} will be replaced")
        if ckpt_path.is_file() and not s.resume and not force:  # e.g. after Ctrl-C: an hour may be in it
            try:
                after = f" (after epoch {torch.load(ckpt_path, map_location='cpu', weights_only=False)['epoch']})"
            except Exception:  # unreadable: --force replaces it all the same
                after = ""
            raise SettingsError(f"{ckpt_path} holds the checkpoint of an unfinished run{after}: --resume continues it, "
                                "--force starts afresh")
        return _train(s, ds, train_part, valid, device, out, best_path, ckpt_path, deadline)


def _train(s: Settings, ds: Dataset, train_part: list, valid: list | None, device, out: Path, best_path: Path,
           ckpt_path: Path, deadline: float | None) -> dict:
    """fit's training, under its output lock: cikgrec.train_loop with a checkpoint after every
    epoch, --resume, --max-minutes and Ctrl-C around it; then the test evaluation and the results
    file."""
    trainer = Trainer(s, ds, train_part, valid, device)
    if s.lambda2 > 0 and trainer.model.graphs.recon is None:  # a weight that cannot act is said, not ignored silently
        why = f"the {s.graph.upper()} graph holds no interest edges" if ds.n_interests else "no interest nodes"
        trainer.notes.append(f"--lambda2 {s.lambda2:g} has no effect: {why}, so there is no reconstruction loss")
    for note in trainer.notes:
        log(f"note: {note}")
    sel = "valid" if s.select_on == "valid" else "test"
    p = Progress(s.patience)
    data_sha256 = {p.name: _sha256(str(p)) for p in data_files(s)}
    if s.dataset not in DATASET_DEFAULTS:
        log(f"note: no per-dataset defaults for {s.dataset!r}: the Settings defaults apply")
    if s.resume and ckpt_path.is_file():
        try:
            ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        except Exception as e:  # a truncated or foreign file: say which, not a traceback
            raise SettingsError(f"--resume: cannot read {ckpt_path} ({e}); delete it to start afresh") from None
        changed = {k for k, v in ck["settings"].items() if k not in RUN_FREE + RESUME_FREE and getattr(s, k, v) != v}
        changed |= {name for name, sha in ck.get("data_sha256", {}).items() if data_sha256.get(name) != sha}
        if changed:
            raise SettingsError(f"--resume: {ckpt_path} was made with other settings or data "
                                f"({', '.join(sorted(changed))})")
        try:  # a checkpoint from older code may lack data hashes or keys: check before training
            load_trainer_state(trainer, ck["trainer"])
            missing = {k for h in ck["history"] for k in ("seconds", "eval_seconds") if k not in h}
            if missing:
                raise KeyError(f"history without {', '.join(sorted(missing))}")
        except (RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().strip("'").splitlines()[-1].strip()
            raise SettingsError(f"--resume: {ckpt_path} does not fit this code, graph or model ({first}); "
                                "was it made by older code, with other data or another interest file?") from None
        p.best_state = ck.get("best_model")
        if p.best_state is None:  # a checkpoint written before the best model was kept in it
            try:
                p.best_state = read_model(best_path, device)[1]
            except Exception as e:
                raise SettingsError(f"--resume: {ckpt_path} was written by older code, which kept the best model "
                                    f"only in {best_path}, and that cannot be read ({type(e).__name__}); "
                                    "delete the checkpoint to start afresh") from None
        p.best, p.best_epoch, p.bad = (ck["stopper"][k] for k in ("best", "best_epoch", "bad"))
        p.history, p.epoch = ck["history"], ck["epoch"]
        log(f"resuming {ckpt_path} after epoch {ck['epoch']}")
    elif s.resume:
        log(f"note: --resume: no checkpoint at {ckpt_path}, starting afresh")
    elif ckpt_path.is_file():
        log(f"note: starting afresh: the checkpoint {ckpt_path} will be replaced (--resume continues it)")
    for line in interest_lines(ds, s, data_sha256):
        log(line)
    unused = "" if "uj" in GRAPHS[s.graph] else f" (not in the {s.graph.upper()} graph)"
    log(f"{s.dataset}: {ds.n_users} users, {ds.n_items} items, {ds.n_entities} entities, "
        f"{ds.n_interests} interest nodes{unused}, {trainer.model.graphs.main.n_edges} undirected {s.graph.upper()} edges, "
        f"{len(trainer.pair_u)} training pairs; model {s.model}, variant {s.variant}, "
        f"selection on {sel}, device {device}")
    start, failure, limit = p.epoch + 1, None, None
    started = time.perf_counter()
    before = sum(h["seconds"] + h["eval_seconds"] for h in p.history)  # of the calls before a --resume
    trainer.on_batch = BatchProgress(s, device, start)

    def after_epoch(p: Progress, more: bool) -> bool:  # a checkpoint, a progress line, the deadline
        nonlocal limit
        if p.best_epoch == p.epoch:
            save_model(p.best_state, s, best_path)
        _save({"trainer": trainer_state(trainer), "stopper": {"best": p.best, "best_epoch": p.best_epoch,
                                                              "bad": p.bad},
               "history": p.history, "epoch": p.epoch, "best_model": p.best_state, "data_sha256": data_sha256,
               "settings": dataclasses.asdict(s)}, ckpt_path)
        log(f"{epoch_line(p.history[-1], sel, p.best_epoch == p.epoch)} | "
            f"{duration(before + time.perf_counter() - started)} elapsed")
        if deadline and time.perf_counter() >= deadline and more:
            limit = (f"time limit: --max-minutes {s.max_minutes:g} reached after epoch {p.epoch}, before early "
                     f"stopping; --resume (in a sweep: the same tables command) continues from {ckpt_path}")
            log(limit)
        return limit is not None

    try:
        train_loop(trainer, s.epochs, sel, s.min_epochs, p, after_epoch)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(p.epoch + 1, start, p.history, ckpt_path)) from None
    except TrainingError as e:
        if not p.history:
            raise TrainingError(f"{e}; no epoch finished, so there is no checkpoint and no result") from None
        failure = f"{e}; the checkpoint of epoch {p.epoch} is kept ({ckpt_path})"
    history, epoch = p.history, p.epoch
    trainer.model.load_state_dict(p.best_state)  # this run's own best, never a file another run wrote
    save_model(p.best_state, s, best_path)
    t1 = time.perf_counter()
    test = trainer.evaluate("test")  # the one and only look at test (valid selection)
    eval_seconds = time.perf_counter() - t1
    groups = group_ndcg(trainer)  # Fig. 3, kept in the results so tables need no model file
    best = next(h for h in history if h["epoch"] == p.best_epoch)
    results = {
        "dataset": s.dataset, "settings": dataclasses.asdict(s), "definition": definition(s), "seed": s.seed,
        "split_seed": s.split_seed if sel == "valid" else None, "selected_on": sel,
        "best_epoch": p.best_epoch, "epochs_run": epoch + 1,
        "valid": best["valid"] if sel == "valid" else None, "test": test, "groups": groups,
        "epoch_seconds": [h["seconds"] for h in history], "eval_seconds": round(eval_seconds, 4),
        "minutes": round(sum(h["seconds"] + h["eval_seconds"] for h in history) / 60, 2),
        "history": history, "notes": ds.warnings + trainer.notes, "stopped_by": failure or limit,
        "provenance": {"data_sha256": data_sha256, "interest_file": ds.interest_file or None,
                       "interest_sha256": data_sha256.get(Path(ds.interest_file).name) if ds.interest_file
                       else None, "model_sha256": _sha256(str(best_path)), "git_commit": _git_commit(),
                       "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "device": str(device), "python": platform.python_version()},
    }
    write_json(results, out)
    log(f"selected epoch {p.best_epoch} on {sel}; results in {out}, model in {best_path}")
    if failure:  # the results of the epochs before the failure are written; the run still failed
        raise TrainingError(f"{failure}; the results of the best epoch before it ({p.best_epoch}) are in {out}")
    if s.refit and not limit:
        return add_refit(s, results, out, device, deadline)
    return results


def epoch_line(r: dict, select: str | None, best: bool = False) -> str:
    """One epoch r of train_loop's history as a progress line: the losses, the mask rate, the
    metrics on `select` (marked * when best) and the seconds of training (+ evaluation)."""
    text = f"epoch {r['epoch']:4d} | " + " ".join(f"{k} {v:.4f}" for k, v in r.items()
                                                 if k in ("bpr", "cl", "rec", "transe") and v is not None)
    text += f" | mask {r['mask_rate']:.3f}" if r.get("mask_rate") is not None else ""
    if select:
        text += f" | {select} R@50 {r[select]['recall@50']:.4f} N@50 {r[select]['ndcg@50']:.4f}{' *' if best else ''}"
    return text + f" | {r['seconds']:.1f}s" + (f" + eval {r['eval_seconds']:.2f}s" if select else "")


def trainer_state(trainer: Trainer) -> dict:
    """Everything a checkpoint needs to continue a Trainer exactly: model, optimisers, random
    states (torch's global generator, the Trainer's numpy generator, CUDA's where present)."""
    st = {"model": trainer.model.state_dict(), "opt": trainer.opt.state_dict(),
          "torch_rng": torch.get_rng_state(), "numpy_rng": trainer.rng.bit_generator.state}
    if trainer.transe:
        st["opt_transe"] = trainer.opt_transe.state_dict()
    if torch.cuda.is_available():
        st["cuda_rng"] = torch.cuda.get_rng_state_all()
    return st


def load_trainer_state(trainer: Trainer, st: dict) -> None:
    """Put back what trainer_state saved. Raises what load_state_dict raises on a foreign state."""
    trainer.model.load_state_dict(st["model"])
    trainer.opt.load_state_dict(st["opt"])
    if trainer.transe:
        trainer.opt_transe.load_state_dict(st["opt_transe"])
    torch.set_rng_state(st["torch_rng"].cpu())
    trainer.rng.bit_generator.state = st["numpy_rng"]
    if "cuda_rng" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in st["cuda_rng"]])


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training, with a message saying what the checkpoint holds."""


def interrupted_message(epoch: int, start: int, history: list, ckpt_path: Path) -> str:
    """What a Ctrl-C in epoch `epoch` of a call that began at epoch `start` leaves behind."""
    saved = history[-1]["epoch"] if history else -1
    if saved >= start:
        return (f"interrupted in epoch {epoch}: every finished epoch (up to {saved}) is in the checkpoint {ckpt_path}; "
                "the same command with --resume continues from it")
    if start > 0:
        return (f"interrupted in epoch {epoch}: the checkpoint {ckpt_path} is as it was (after epoch {start - 1}); "
                "the same command with --resume continues from it")
    return (f"interrupted in epoch {epoch}, before the first epoch ended: no checkpoint was written, "
            "so run the command again (without --resume)")


# Epochs that full runs (early stopping on validation, patience 10) took here, by dataset:
# results/runs*/ (CIKGRec, its ablations, LightGCN, SimGCL). ml1m: never run to the end here.
TYPICAL_EPOCHS = {"book-crossing": (60, 240), "dbbook2014": (80, 300), "ml1m": (60, None)}


def duration(seconds: float) -> str:
    """4.26 -> "4.3s", 12.3 -> "12s", 754 -> "12m34s", 7380 -> "2h03m"."""
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class BatchProgress:
    """Trainer.on_batch of a run: the estimate line (epoch_estimate) once, after the first 5
    batches or 10 seconds of the run's first epoch, then `epoch E: batch b/n` every 30 seconds."""

    def __init__(self, s: Settings, device, first_epoch: int):
        self.s, self.device, self.epoch, self.estimated, self.last = s, device, first_epoch, False, time.perf_counter()

    def __call__(self, done: int, n_batches: int, seconds: float) -> None:
        if not self.estimated and (done >= min(5, n_batches) or seconds > 10):
            log(epoch_estimate(self.s, done, n_batches, seconds, self.device))
            self.estimated = True
        if time.perf_counter() - self.last > 30:
            log(f"  epoch {self.epoch}: batch {done}/{n_batches}")
            self.last = time.perf_counter()
        self.epoch += done == n_batches  # the next call is in the next epoch


def epoch_estimate(s: Settings, done: int, n_batches: int, seconds: float, device) -> str:
    """The line train prints after the first batches of its first epoch: the seconds per epoch
    they imply and what that means for a full run (TYPICAL_EPOCHS; other datasets: the range of
    the published ones)."""
    per_epoch = seconds / max(done, 1) * n_batches
    low, high = TYPICAL_EPOCHS.get(s.dataset, (60, 300))
    where = f"full runs of {s.dataset} here take" if s.dataset in TYPICAL_EPOCHS else "full runs of the published datasets take"
    span = (f"{low}-{high} epochs: about {duration(low * per_epoch)} to {duration(high * per_epoch)}" if high
            else f"more than {low} epochs: over {duration(low * per_epoch)}")
    if s.epochs < (high or low):
        span += f"; this one stops by --epochs {s.epochs}: at most {duration(s.epochs * per_epoch)}"
    return (f"  {done} of {n_batches} batches in {seconds:.1f}s: about {duration(per_epoch)} per epoch on {device} "
            f"(training, without evaluation); {where} {span}")


def finished_results(out: Path, s: Settings) -> dict | None:
    """The results at `out` of a finished validation-selected run with settings s (all but those
    that do not change its numbers), or None when there is none to add a refit to. Raises
    SettingsError when the file holds a run with other settings: it is not overwritten."""
    if not out.is_file():
        return None
    results = read_results(out)
    if results.get("selected_on") != "valid" or results.get("best_epoch") is None or results.get("stopped_by"):
        return None
    differ = settings_differ(results, s)
    if differ:
        raise SettingsError(f"{out} holds a run with other settings ({', '.join(differ[:4])}): give another --out")
    changed = data_changed(results.get("provenance", {}).get("data_sha256", {}), s)
    if changed:
        raise SettingsError(f"{out} was trained on other data ({', '.join(changed)}): give another --out")
    return results


def finished_run(out: Path, s: Settings) -> dict | None:
    """finished_results, with None instead of an error for a torn or foreign file, or a run with
    other settings or data (for --resume, which then goes on as before)."""
    try:
        return finished_results(out, s)
    except (DataError, SettingsError):
        return None


def add_refit(s: Settings, results: dict, out: Path, device, deadline: float | None = None) -> dict:
    """The refit: train again from the same seed on all of train.txt (validation items back in)
    for exactly best_epoch + 1 epochs, with no selection, then evaluate on test once. Adds
    "refit" {"epochs", "test", "groups", "seconds", "model", "model_sha256"} to the results and
    rewrites them; the model goes to <out>.refit.pt. A checkpoint after every epoch
    (<out>.refit.ckpt.pt, which names the run it refits) lets --resume continue it. With a
    deadline (time.perf_counter(); fit's --max-minutes) it stops after the epoch in which that time
    passes and returns the results without a refit. The refit model never saw the test set."""
    if isinstance(results.get("refit"), dict) and "test" in results["refit"]:
        log(f"{out} already has its refit")
        return results
    log(f"{out}: selected epoch {results['best_epoch']} on validation; refitting on all of train.txt")
    epochs = results["best_epoch"] + 1
    run = {"settings": {k: v for k, v in results.get("settings", {}).items() if k not in RUN_FREE + ("refit",)},
           "data_sha256": results.get("provenance", {}).get("data_sha256"), "best_epoch": results["best_epoch"]}
    everything = dataclasses.replace(s, select_on="test")  # no validation split: all of train.txt
    ds, train_all, _ = read_data(everything)
    model_path, ckpt_path = out.with_suffix(".refit.pt"), out.with_suffix(".refit.ckpt.pt")
    trainer, p, seconds = Trainer(everything, ds, train_all, None, device), Progress(s.patience), 0.0
    if s.resume and ckpt_path.is_file():
        try:
            ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        except Exception as e:  # a truncated or foreign file: say which, not a traceback
            raise SettingsError(f"--resume: cannot read {ckpt_path} ({e}); delete it to start the refit afresh") from None
        if ck.get("run") != run or ck.get("epochs") != epochs:  # e.g. left by a run that --force replaced
            log(f"note: {ckpt_path} is the refit of another run (other settings, data or selected epoch): "
                "starting the refit afresh")
        else:
            load_trainer_state(trainer, ck["trainer"])
            p.epoch, seconds = ck["epoch"], ck["seconds"]
            log(f"resuming the refit {ckpt_path} after epoch {ck['epoch']}")
    cut = False

    def after_epoch(p: Progress, more: bool) -> bool:  # a checkpoint, a progress line, the deadline
        nonlocal seconds, cut
        seconds += p.history[-1]["seconds"]
        _save({"trainer": trainer_state(trainer), "epoch": p.epoch, "epochs": epochs, "seconds": seconds, "run": run},
              ckpt_path)
        log(f"refit {epoch_line(p.history[-1], None)} of {epochs} | {seconds / 60:.1f} min")
        if deadline and time.perf_counter() >= deadline and more:
            log(f"time limit: --max-minutes {s.max_minutes:g} reached after refit epoch {p.epoch} of {epochs}; "
                f"--resume (in a sweep: the same tables command) continues the refit from {ckpt_path}")
            cut = True
        return cut

    try:
        train_loop(trainer, epochs, None, progress=p, after_epoch=after_epoch)
    except KeyboardInterrupt:
        epoch = p.epoch + 1
        raise Interrupted(f"interrupted in refit epoch {epoch}: " + (
            f"refit epochs up to {epoch - 1} are in {ckpt_path}; the same command with --resume continues it"
            if epoch > 0 else "no refit epoch finished; the selected run's results are kept, and the same "
                              "command adds the refit")) from None
    if cut:
        return results
    save_model(trainer.model.state_dict(), s, model_path)
    test = trainer.evaluate("test")  # the refit's one look at test
    results["refit"] = {"epochs": epochs, "test": test, "groups": group_ndcg(trainer),
                        "seconds": round(seconds, 1), "model": str(model_path),
                        "model_sha256": _sha256(str(model_path))}
    write_json(results, out)
    log(f"refit of {epochs} epochs on all of train.txt: test R@50 {test['recall@50']:.4f} N@50 "
        f"{test['ndcg@50']:.4f}; results in {out}, model in {model_path}")
    return results


def memory_needed(s: Settings, ds: Dataset) -> int:
    """A rough estimate in bytes of a run's largest tensors: the embeddings, the propagated layers
    kept for the backward and Adam's moments, the batch's rows, the InfoNCE [N, B] matrices, and a
    chunk of evaluation scores."""
    n_nodes = node_counts(ds)[2]
    passes = 1 + 3 * (s.lambda3 > 0) + 2 * (s.lambda2 > 0)  # full-graph encodes per batch
    candidates = max(ds.n_users, ds.n_items) if s.contrast == "cross-domain" else s.batch_size
    return (4 * s.dim * (n_nodes * (2 * (s.layers + 1) * passes + 4) + 12 * s.batch_size)
            + 16 * s.batch_size * candidates * (s.lambda3 > 0)
            + 9 * min(s.eval_batch, ds.n_users) * ds.n_items)  # scores, relevance, hits


MEMORY_KNOBS = ("dim", "layers", "batch_size", "eval_batch")  # the settings check_memory can blame


def free_memory(device) -> int | None:
    """Bytes free on the device (CUDA: torch's count; CPU: MemAvailable of /proc/meminfo), or None
    where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def check_memory(s: Settings, ds: Dataset, device, free: int | None = None) -> None:
    """SettingsError when the run would not fit in `free` bytes (default: free_memory(device)),
    before anything is trained. It names the setting of MEMORY_KNOBS whose return to its default
    (the dataset's, else Settings') saves the most memory."""
    need = memory_needed(s, ds)
    free = free_memory(device) if free is None else free
    if free is None or need <= free:
        return
    default = lambda k: DATASET_DEFAULTS.get(s.dataset, {}).get(k, getattr(Settings, k))
    saved = {k: need - memory_needed(dataclasses.replace(s, **{k: default(k)}), ds) for k in MEMORY_KNOBS}
    name = max(saved, key=saved.get)
    gb = lambda b: f"{b / 2**30:.1f} GB"
    raise SettingsError(f"{option(name)} {getattr(s, name)}: this run needs about {gb(need)} of memory, but "
                        f"{device} has {gb(free)} free; lower {option(name)} (at {default(name)} it would need "
                        f"{gb(need - saved[name])})")


# Settings saved with a model file, so that a results file edited by hand cannot change what it means
MODEL_FREE = RUN_FREE + RESUME_FREE + ("refit",)


def save_model(state: dict, s: Settings, path: Path) -> None:
    """A model file: {"settings": s less MODEL_FREE, "model": the state_dict}."""
    _save({"settings": {k: v for k, v in dataclasses.asdict(s).items() if k not in MODEL_FREE}, "model": state}, path)


def read_model(path: Path, device) -> tuple[dict | None, dict]:
    """(the settings saved with it, or None for a file written before they were, the state_dict)."""
    obj = torch.load(path, map_location=device, weights_only=True)
    return (obj["settings"], obj["model"]) if isinstance(obj, dict) and set(obj) == {"settings", "model"} else (None, obj)


def _save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: an interrupted save never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def pick_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu. Raises SettingsError for cuda without a GPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SettingsError("--device cuda: no CUDA GPU is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available())
                        else "cpu")


# Settings a default --out name leaves out: those that never change a run's numbers, those
# --resume lets change (epochs, patience, min_epochs, refit), and those the name spells already.
NAME_FREE = RESUME_FREE + ("dataset", "seed", "model", "graph", "variant", "select_on", "interest_nodes")


def settings_tag(s: Settings) -> str:
    """A short hash (8 hex digits) of the settings that differ from the defaults of the dataset and
    model (make_settings) and that --resume compares; "" at the defaults. `--lambda2 0.1` and
    `--lambda2 0.2` get different tags."""
    base = make_settings(dataset=s.dataset, model=s.model)
    differ = {f.name: getattr(s, f.name) for f in dataclasses.fields(Settings)
              if f.name not in RUN_FREE + NAME_FREE and getattr(s, f.name) != getattr(base, f.name)}
    return hashlib.sha256(json.dumps(differ, sort_keys=True).encode()).hexdigest()[:8] if differ else ""


def output_paths(s: Settings) -> tuple[Path, Path, Path]:
    """(results JSON, best model state, checkpoint). Default runs/<dataset>-seed<seed>.json; a
    baseline, graph, variant or test selection adds its name, and any other non-default setting
    that --resume compares a short hash of them (settings_tag), so runs never share a name."""
    if s.out:
        out = Path(s.out)
    else:
        tags = [t for t in (s.model if s.model != "cikgrec" else "",
                            s.graph if s.graph != "cikg" else "",
                            s.variant if s.variant != "paper" else "",
                            "testsel" if s.select_on == "test" else "",
                            "nointerests" if not s.interest_nodes else "", settings_tag(s)) if t]
        out = Path("runs") / f"{'-'.join([s.dataset] + tags)}-seed{s.seed}.json"
    return out, out.with_suffix(".pt"), out.with_suffix(".ckpt.pt")


class output_lock:
    """Holds <out>.lock (fcntl.flock, the holder's PID inside) while a run writes to --out.

    A second run on the same --out raises SettingsError at once, naming the holder's PID. The
    kernel drops the lock when its holder dies, so a lock file left by a killed run is taken over
    (with a note). Released, and the file removed, on exit."""

    def __init__(self, out: Path):
        self.path = Path(str(out) + ".lock")
        self.fd = None

    def __enter__(self):
        import fcntl
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise SettingsError(f"another run (PID {holder}) is training to {self.path.with_suffix('')} "
                                    f"and holds {self.path}; wait for it to end, or give another --out") from None
            try:  # the file may have been removed by a holder that ended in between: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = os.read(fd, 64).decode(errors="replace").strip()
        if stale:
            log(f"note: took over the lock {self.path} of PID {stale}, which no longer holds it (killed?)")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc):
        try:
            os.unlink(self.path)  # while still holding it, so no one locks a removed file
        except OSError:
            pass
        os.close(self.fd)
        return False


def existing_results(out: Path, s: Settings) -> str:
    """Why a new run does not replace the results at `out`: which run they hold and the options
    in which it differs from `s` (--force replaces it)."""
    try:
        r = read_results(out)
    except DataError as e:
        return f"{out} exists and is not a run's results ({e.message}): give --force to replace it, or another --out"
    saved = {**{f.name: f.default for f in dataclasses.fields(Settings)}, **r.get("settings", {})}
    differ = [f"{option(k)} {saved.get(k)} there, {getattr(s, k)} here" for k in settings_differ(r, s)]
    what = ("the results of a finished run" if not r.get("stopped_by") else
            f"the results of a run that stopped early ({str(r['stopped_by']).split(';')[0]})")
    options = f"; the options that differ: {', '.join(differ[:6])}" if differ else "; the same options as this run"
    return (f"{out} holds {what} (best epoch {r.get('best_epoch')} of {r.get('epochs_run')}){options}. A new run "
            "would replace them: give --force to do so, or another --out"
            + (", or --resume to continue it" if r.get("stopped_by") else ""))


def check_writable(out: Path, *beside: Path, dataset_folder: Path | None = None) -> None:
    """Before anything is written: --out names a file (not a folder, not a .pt, which is where a model
    goes) in a folder that exists or can be made and that takes a new file; neither it nor a file
    beside it lies in dataset_folder, where given (not even with --force: the dataset's own files
    could be replaced). Raises SettingsError."""
    if out.suffix == ".pt":
        raise SettingsError(f"--out {out}: give the results file (e.g. .json); the model is saved beside "
                            "it as .pt")
    for path in (out, *beside):
        if dataset_folder and path.resolve().is_relative_to(dataset_folder.resolve()):
            raise SettingsError(f"--out {out}: {path} would be written into the dataset folder "
                                f"{dataset_folder.resolve()}; give the run a path outside it (e.g. runs/<dataset>/name.json)")
        if path.is_dir():
            raise SettingsError(f"--out {out}: {path} is a folder")
        if path.exists() and not path.is_file():  # e.g. /dev/null: a rename over it would replace it
            raise SettingsError(f"--out {out}: {path} exists and is not a regular file")
    for parent in reversed(out.parents):
        if parent.exists() and not parent.is_dir():
            raise SettingsError(f"--out {out}: {parent} is a file, not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as e:
        raise SettingsError(f"--out {out}: cannot write in {out.parent} ({e.strerror})") from None


def _sha256(path: str) -> str | None:
    if not path:
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _git_commit() -> str | None:
    """HEAD of the code's repository, with "+changes" when its tracked files differ from it."""
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, timeout=5,
                                    cwd=Path(__file__).parent).stdout.strip()
    try:
        head = git("rev-parse", "HEAD")
        return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "") if head else None
    except (OSError, subprocess.SubprocessError):
        return None


def read_data(s: Settings) -> tuple[Dataset, list, list | None]:
    """cikgrec.read_data with the strict loader (cikgrec_prepare.load_checked)."""
    return read_method_data(s, load_checked)


def data_files(s: Settings) -> list:
    """The files a run with settings s reads (train, test, KG and interest files that exist, and the
    id lists that name its users and items in recommendations), for provenance: fit records their
    SHA-256 by file name. A check compares only the files a run recorded (older runs have no lists)."""
    folder = Path(s.data_dir) / s.dataset
    files = [folder / f for f in ("train.txt", "test.txt", "kg_final.txt", "user_list.txt", "item_list.txt")
             if (folder / f).is_file()]
    interests = Path(s.interests) if s.interests else folder / "user_interest_clustered.txt"
    return files + ([interests] if s.interest_nodes and interests.is_file() else [])


def data_changed(saved_sha256: dict, s: Settings) -> list:
    """The files (data_files) that differ from the SHA-256 a run or checkpoint recorded
    (`saved_sha256`, file name -> hex digest): their paths, or "<name> (not found)" for those that
    no longer exist. Empty when the data is the same."""
    now = {p.name: p for p in data_files(s)}
    return [str(now[name]) if name in now else f"{name} (not found)"
            for name, sha in sorted(saved_sha256.items()) if name not in now or _sha256(str(now[name])) != sha]


def interest_lines(ds: Dataset, s: Settings, data_sha256: dict) -> list:
    """What train says of its interest file: which file, how many users have interests, and a
    warning when llm_interests.py cluster made it from answers of under half of the users with a
    prompt (its <file>.coverage.json, as after an `infer --limit` trial). Published files have no
    coverage file and are not judged. data_sha256: the digests fit has computed (data_files)."""
    if not s.interest_nodes:
        return ["interests: none (--no-interest-nodes)"]
    if not ds.interest_file:
        return ["interests: none (no user_interest_clustered.txt)"]
    path = Path(ds.interest_file)
    users = len(np.unique(ds.interest_edges[:, 0]))
    lines = [f"interests: {path} ({users} of {ds.n_users} users have interests, {ds.n_interests} interest nodes)"]
    try:
        cov = json.loads(path.with_name(path.stem + ".coverage.json").read_text())
        share, asked = cov["users_answered"] / cov["users_with_prompt"], cov["users_with_prompt"]
        fits = cov["interest_file_sha256"] == data_sha256.get(path.name)
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return lines
    if fits and share < 0.5:
        lines.append(f"warning: {path} was made by llm_interests.py cluster from LLM answers of "
                     f"{cov['users_answered']} of the {asked} users with a prompt ({share:.0%}), as after an "
                     "`infer --limit` trial; run infer for all users, then cluster, for a full one (make train "
                     "uses interests/<dataset>/user_interest_clustered.txt whenever it exists)")
    return lines


# ----------------------------------------------------------------------------------------------
# A saved run: its results, its model, recommendations, its Fig. 3 groups
# ----------------------------------------------------------------------------------------------
HEADLINE_METRICS = ("recall@50", "recall@100", "ndcg@50", "ndcg@100")  # what every results file has


def finite(v) -> bool:
    """A finite int or float (not a bool, a string or None), as read from a JSON file."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_results(path) -> dict:
    """A run's results JSON, checked: an object with a "test" dict of numbers in [0, 1] and, where
    present, whole-number epochs (best_epoch below epochs_run), a finished refit of best_epoch + 1
    epochs, and a "settings" dict whose values have the types of Settings'. Raises DataError naming
    the file (a torn, foreign or hand-edited file must not become a traceback or a wrong number)."""
    path = Path(path)
    try:
        with open_text(path) as f:
            r = json.loads(f.read())
    except (UnicodeDecodeError, ValueError) as e:
        raise DataError(path, 0, f"not a results JSON ({type(e).__name__}: {e})") from None
    if not isinstance(r, dict) or not isinstance(r.get("test"), dict):
        raise DataError(path, 0, "not the results JSON of a run (no \"test\" metrics)")
    missing = [m for m in HEADLINE_METRICS if m not in r["test"]]
    if missing:
        raise DataError(path, 0, f"no test {missing[0]} in it")
    epoch = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0
    for key in ("best_epoch", "epochs_run"):
        if r.get(key) is not None and not epoch(r[key]):
            raise DataError(path, 0, f"{key} = {r[key]!r} is not an epoch (a whole number from 0)")
    if r.get("best_epoch") is not None and r.get("epochs_run") is not None and r["best_epoch"] >= r["epochs_run"]:
        raise DataError(path, 0, f"best_epoch {r['best_epoch']} is not below epochs_run {r['epochs_run']}")
    refit = r.get("refit")
    if refit is not None and not (isinstance(refit, dict) and isinstance(refit.get("test"), dict)
                                  and all(m in refit["test"] for m in HEADLINE_METRICS) and finite(refit.get("seconds"))
                                  and epoch(refit.get("epochs"))):
        raise DataError(path, 0, "refit is not a finished refit ({\"epochs\", \"test\", \"seconds\", ...})")
    if refit is not None and r.get("best_epoch") is not None and refit["epochs"] != r["best_epoch"] + 1:
        raise DataError(path, 0, f"refit epochs = {refit['epochs']!r}, not best_epoch + 1 = {r['best_epoch'] + 1}")
    for name, test in (("test", r["test"]), ("refit test", (refit or {}).get("test", {}))):
        bad = [k for k, v in test.items() if not finite(v)]
        if bad:
            raise DataError(path, 0, f"{name} {bad[0]} = {test[bad[0]]!r} is not a finite number")
        bad = [k for k, v in test.items() if not 0 <= v <= 1]  # Recall, NDCG, precision, hit rate
        if bad:
            raise DataError(path, 0, f"{name} {bad[0]} = {test[bad[0]]!r} is not between 0 and 1")
    if r.get("minutes") is not None and not finite(r["minutes"]):
        raise DataError(path, 0, f"minutes = {r['minutes']!r} is not a finite number")
    for key in ("settings", "provenance"):
        if not isinstance(r.get(key, {}), dict):
            raise DataError(path, 0, f"{key} is not an object")
    kinds = {bool: ("True or False", lambda v: isinstance(v, bool)),
             int: ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
             float: ("a finite number", finite), str: ("a string", lambda v: isinstance(v, str))}
    for f in dataclasses.fields(Settings):
        v = r.get("settings", {}).get(f.name)
        what, ok = kinds[type(f.default)]
        if v is not None and not ok(v):
            raise DataError(path, 0, f"settings {f.name} = {v!r} is not {what}")
    if not isinstance(r.get("provenance", {}).get("data_sha256", {}), dict):
        raise DataError(path, 0, "provenance data_sha256 is not an object")
    return r

def definition_changes(results: dict, s: Settings) -> list:
    """What changed in the computation of a run with settings s since its results (read_results)
    were made: the DEFINITION_CHANGES newer than their "definition" (1 when absent) that apply to
    s. [] when the results are still what this code computes."""
    made = results.get("definition", 1)
    return [what for version, what, changes in DEFINITION_CHANGES if version > made and changes(s)]


def load_trained(results_path, data_dir: str | None = None, device: str = "cpu",
                 refit: bool = True) -> tuple[Trainer, dict]:
    """The Trainer of a finished run with its model: the refit model (<results>.refit.pt, trained
    on all of train.txt) where the run has one and refit is True, else the selected model
    (<results>.pt); settings from the results JSON (fields this version does not know are
    ignored). data_dir overrides the saved data folder. Raises DataError on a missing or foreign
    file, a model of an older definition, a model file other than the one the run saved (SHA-256),
    and when the data files differ from those the run was trained on."""
    results_path = Path(results_path)
    if results_path.suffix == ".pt":
        raise DataError(results_path, 0, "give the run's results JSON; its model .pt is found beside it")
    if results_path.is_dir():
        raise DataError(results_path, 0, "is a folder: give the run's results JSON")
    if not results_path.is_file():
        raise DataError(results_path, 0, "not found (a finished run writes <out>.json and <out>.pt)")
    results = read_results(results_path)
    if "settings" not in results:
        raise DataError(results_path, 0, "not the results JSON of a run (no \"settings\")")
    use_refit = refit and isinstance(results.get("refit"), dict)
    model_path = results_path.with_suffix(".refit.pt" if use_refit else ".pt")
    provenance = results.get("provenance")
    model_sha256 = (results["refit"] if use_refit else provenance if isinstance(provenance, dict) else {}).get("model_sha256")
    if use_refit and not isinstance(model_sha256, str):  # which .refit.pt is the run's cannot be told
        raise DataError(results_path, 0, "its refit has no model_sha256: which model file is its refit cannot be told")
    if not (isinstance(provenance, dict) and isinstance(provenance.get("data_sha256"), dict)
            and isinstance(model_sha256, str)):  # found by a new user: deleting it turned every check off
        raise DataError(results_path, 0, "its provenance (the SHA-256 of its model and data files) is missing or "
                                         "incomplete: whether the model and data are the run's cannot be checked")
    if not model_path.is_file():
        raise DataError(model_path, 0, "not found (a finished run writes <out>.json and <out>.pt"
                                       + (", its refit <out>.refit.pt)" if use_refit else ")"))
    known = {f.name for f in dataclasses.fields(Settings)}
    s = Settings(**{k: v for k, v in results["settings"].items() if k in known})
    given = s  # the results file's settings, before this machine's
    s = dataclasses.replace(s, resume=False, device=device, **({"data_dir": data_dir} if data_dir else {}))
    if use_refit:
        s = dataclasses.replace(s, select_on="test")  # the refit's graph holds all of train.txt
    ds, train_part, valid = read_data(s)  # a missing folder or file is named here
    newer = definition_changes(results, s)
    if newer:
        raise DataError(results_path, 0, f"made under an older definition of the model; since then: {'; '.join(newer)}. "
                                         "Train it again")
    changed = data_changed(provenance["data_sha256"], s)
    if changed:
        raise DataError(results_path, 0, f"the run was trained on other data (the SHA-256 of {', '.join(changed)} "
                                         "differs from the run's); give its --data-dir or --interests")
    if _sha256(str(model_path)) != model_sha256:
        raise DataError(model_path, 0, "not the model this run saved (SHA-256; replaced by a later run to the "
                                       "same --out?)")
    try:
        saved, state = read_model(model_path, "cpu")
    except Exception as e:  # truncated or foreign
        first = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
        raise DataError(model_path, 0, f"cannot load the model for this data ({first})") from None
    edited = [k for k, v in (saved or {}).items() if k in known and getattr(given, k) != v]
    if edited:  # e.g. --layers edited in the JSON: the numbers would be those of another model
        raise DataError(results_path, 0, "its settings differ from those saved with its model " + ", ".join(
            f"{option(k)} {getattr(given, k)} (the model's: {saved[k]})" for k in edited) + "; was the file edited?")
    trainer = Trainer(s, ds, train_part, valid, pick_device(device))
    try:
        trainer.model.load_state_dict({k: v.to(trainer.device) for k, v in state.items()})
    except Exception as e:  # truncated, foreign, or made for another graph (e.g. other interests)
        first = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
        raise DataError(model_path, 0, f"cannot load the model for this data ({first})") from None
    return trainer, results


def top_items(user_emb: torch.Tensor, item_emb: torch.Tensor, users: np.ndarray, exclude, k: int,
              chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The k best items of each user by score u . i, scored in chunks of `chunk` users as in
    evaluate_ranking. users: int [n] rows of user_emb; exclude: one list of item ids per user
    (never ranked; None: nothing excluded). Returns (items int64 [n, k'], scores float32 [n, k'])
    with k' = min(k, n_items), best first; a rank past the items left has item -1, score -inf."""
    n_items = item_emb.shape[0]
    k = min(k, n_items)
    ex = id_pairs(exclude, n_items) if exclude is not None else None
    item_t = item_emb.t().contiguous()
    out_items, out_scores = np.zeros((len(users), k), np.int64), np.zeros((len(users), k), np.float32)
    for start in range(0, len(users), chunk):
        sel = torch.as_tensor(np.asarray(users[start:start + chunk], dtype=np.int64), device=user_emb.device)
        scores = user_emb[sel] @ item_t
        if ex is not None:
            e0, e1 = np.searchsorted(ex[0], [start, start + chunk])
            scores[torch.as_tensor(ex[0][e0:e1] - start, device=scores.device),
                   torch.as_tensor(ex[1][e0:e1], device=scores.device)] = float("-inf")
        top_scores, top = torch.topk(scores, k, dim=1)
        top[top_scores == float("-inf")] = -1
        out_items[start:start + len(sel)] = top.cpu().numpy()
        out_scores[start:start + len(sel)] = top_scores.cpu().numpy()
    return out_items, out_scores


class Recommendations(list):
    """recommend's rows (dicts with user, rank, item, title, score), best first per user, plus
    `unknown`: the requested users that are not in the dataset (left out, not an error)."""

    def __init__(self, rows=(), unknown=()):
        super().__init__(rows)
        self.unknown = list(unknown)


@dataclass
class Run:
    """A finished run loaded for use (load_run): its trainer (model, dataset, settings), its
    results, and the original ids of users and items (user_list.txt, item_list.txt; the dense
    ids as strings where a list is missing) with the items' titles ("" where unnamed)."""
    trainer: Trainer
    results: dict
    model_file: str
    user_ids: list
    item_ids: list
    titles: list

    def recommend(self, users=None, k: int = 10, original: bool = False, include_seen: bool = False,
                  chunk: int = 1024) -> Recommendations:
        """The top-k items of each user, with rank (1 = best) and score (the model's u . i).

        users: dense ids 0..n_users-1, or original ids (user_list.txt) with original=True; None:
        every user. A user's train.txt items are never recommended unless include_seen. Rows use
        the same kind of ids as the request (item ids too: dense ints, or original strings).
        Unknown users are left out and listed in `.unknown`; a user asked twice counts once.
        Raises SettingsError unless k is a whole number from 1."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise SettingsError(f"k must be a whole number from 1, got {k!r}")
        ds = self.trainer.ds
        users = None if users is None else list(dict.fromkeys([users] if isinstance(users, (str, int)) else users))
        if users is None:
            dense, unknown = list(range(ds.n_users)), []
        elif original:
            index = {u: n for n, u in enumerate(self.user_ids)}
            dense = [index[str(u)] for u in users if str(u) in index]
            unknown = [u for u in users if str(u) not in index]
        else:
            ok = lambda u: isinstance(u, (int, np.integer)) and not isinstance(u, bool) and 0 <= u < ds.n_users
            dense, unknown = [int(u) for u in users if ok(u)], [u for u in users if not ok(u)]
        model = self.trainer.model
        model.eval()
        with torch.no_grad():
            ue, ie = model.user_item_embeddings()
            items, scores = top_items(ue, ie, np.array(dense, dtype=np.int64),
                                      None if include_seen else [ds.train[u] for u in dense], k, chunk)
        rows = Recommendations(unknown=unknown)
        if unknown:
            shown = ", ".join(map(str, unknown[:20])) + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else "")
            where = "(user_list.txt)" if original else f"(dense ids 0..{ds.n_users - 1}; original=True takes user_list.txt's)"
            log(f"note: {len(unknown)} of {len(users)} users are not in {ds.name} {where}, left out: {shown}")
        for row, u in enumerate(dense):
            for rank, (i, sc) in enumerate(zip(items[row].tolist(), scores[row].tolist()), 1):
                if i < 0:
                    break
                rows.append({"user": self.user_ids[u] if original else u, "rank": rank,
                             "item": self.item_ids[i] if original else i, "title": self.titles[i], "score": sc})
        return rows


    def recommend_new(self, histories: dict, k: int = 10, interests: dict | None = None,
                      include_seen: bool = False) -> Recommendations:
        """The top-k items of users the model never saw, by fold-in (CIKGRec.fold_in: the trained
        model frozen, each user added alone, so one user's list never depends on the others).

        histories: {new id: [original item ids (item_list.txt)]}; interests: {new id: [interest ids
        as in the run's interest file]} (used where the run's graph has interest nodes). A new id is
        never matched against user_list.txt. Unknown items and interest ids are named in a note and
        left out; a user with no known item is left out and listed in `.unknown`. A user's own
        history is never recommended unless include_seen. Rows: user (the new id), rank, item
        (original id), title, score. Raises SettingsError unless k is a whole number from 1, on
        histories or interests that are not such dicts of lists, and on an interest id that is not
        an integer."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise SettingsError(f"k must be a whole number from 1, got {k!r}")
        example = {"histories": "{'alice': ['B001', 'B007']} (original item ids)",
                   "interests": "{'alice': [1587, 1590]} (interest ids of the run's interest file)"}
        for what, given in (("histories", histories), ("interests", interests or {})):
            if not isinstance(given, dict) or any(isinstance(v, (str, bytes)) or not hasattr(v, "__iter__")
                                                  for v in given.values()):
                raise SettingsError(f"{what} must be a dict {{new id: [ids]}}, e.g. {example[what]}; "
                                    f"got {str(given)[:80]}")
        bad = [j for v in (interests or {}).values() for j in v if not (str(j).strip().isascii() and str(j).strip().isdigit())]
        if bad:
            raise SettingsError(f"interest ids are integers of the run's interest file, got {bad[0]!r}")
        ds, model = self.trainer.ds, self.trainer.model
        item_index = {i: n for n, i in enumerate(self.item_ids)}
        interest_index = {int(j): n for n, j in enumerate(ds.interest_ids)}
        uses_interests = bool(interests) and "uj" in GRAPHS[self.trainer.s.graph] and ds.n_interests > 0
        if interests and not uses_interests:
            log(f"note: interests are not used: the run's graph ({self.trainer.s.graph}) has no interest nodes")
        unknown_items, unknown_interests, users, items, links = [], [], [], [], []
        for user, history in histories.items():
            known = [item_index[str(i)] for i in history if str(i) in item_index]
            unknown_items += [i for i in history if str(i) not in item_index]
            if known:
                users.append(user)
                items.append(known)
                asked = (interests or {}).get(user, []) if uses_interests else []
                links.append([interest_index[int(j)] for j in asked if int(j) in interest_index])
                unknown_interests += [j for j in asked if int(j) not in interest_index]
        for what, ids, where in (("items", unknown_items, "item_list.txt"), ("interest ids", unknown_interests,
                                                                             "its interest file")):
            if ids:
                log(f"note: {len(set(map(str, ids)))} {what} of the new users are not in {ds.name} ({where}), left "
                    "out: " + ", ".join(map(str, list(dict.fromkeys(ids))[:20])))
        asked = set(users)
        rows = Recommendations(unknown=[u for u in histories if u not in asked])
        strays = [u for u in (interests or {}) if u not in histories]
        if strays:
            log(f"note: interests of {len(strays)} users not among the new users are not used: "
                + ", ".join(map(str, strays[:20])) + " (the interest file of other users?)")
        if rows.unknown:
            log(f"note: {len(rows.unknown)} new users have no item of {ds.name}, left out: "
                + ", ".join(map(str, rows.unknown[:20])))
        if not users:
            return rows
        model.eval()
        with torch.no_grad():
            _, ie = model.user_item_embeddings()
            ue = model.fold_in(items, links if uses_interests else None)
        edgeless = [u for u, e in zip(users, ue.abs().sum(dim=1).tolist()) if e == 0]  # nothing to fold in from
        if edgeless:
            log(f"note: {len(edgeless)} new users have no item or interest with an edge in the run's graph "
                "(the items were never trained on), left out: " + ", ".join(map(str, edgeless[:20])))
            gone = set(edgeless)
            keep = [b for b, u in enumerate(users) if u not in gone]
            users, items, ue = [users[b] for b in keep], [items[b] for b in keep], ue[keep]
            rows.unknown += edgeless
            if not users:
                return rows
        with torch.no_grad():
            top, scores = top_items(ue, ie, np.arange(len(users)), None if include_seen else items, k)
        for row, u in enumerate(users):
            for rank, (i, sc) in enumerate(zip(top[row].tolist(), scores[row].tolist()), 1):
                if i < 0:
                    break
                rows.append({"user": u, "rank": rank, "item": self.item_ids[i], "title": self.titles[i], "score": sc})
        full = [u for row, u in enumerate(users) if top[row, 0] < 0]
        if full:
            log(f"note: {len(full)} new users have every item of {ds.name} in their history, nothing left to "
                "recommend (--include-seen ranks them all): " + ", ".join(map(str, full[:20])))
        return rows


def load_run(results_path, data_dir: str | None = None, device: str = "cpu") -> Run:
    """A finished run ready to recommend: the refit model where the run has one, else the
    selected model (load_trained, which refuses a model or data that is not the run's). Raises
    DataError as load_trained."""
    trainer, results = load_trained(results_path, data_dir, device)
    folder = Path(trainer.s.data_dir) / trainer.s.dataset
    ds = trainer.ds

    def original(name, n, fields):
        path = folder / name
        ids = [org for org, _ in read_id_list(path, fields)] if path.is_file() else []
        return ids if len(ids) >= n else [str(x) for x in range(n)]
    user_ids = original("user_list.txt", ds.n_users, "org_id remap_id")
    item_ids = original("item_list.txt", ds.n_items, "org_id remap_id name")
    titles = [item_title(n) for n in ds.item_names] + [""] * (ds.n_items - len(ds.item_names))
    use_refit = isinstance(results.get("refit"), dict)
    return Run(trainer, results, str(Path(results_path).with_suffix(".refit.pt" if use_refit else ".pt")),
               user_ids, item_ids, titles)


def write_recommendations(rows: list, out, fmt: str = "tsv") -> None:
    """rows (Run.recommend) as TSV with a header (user, rank, item, title, score) or JSONL, to
    the file `out` (written whole, then renamed) or to stdout (out None or "-")."""
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    else:
        flat = lambda v: " ".join(str(v).split())  # a tab or line break inside a title
        text = "user\trank\titem\ttitle\tscore\n" + "".join(
            f"{flat(r['user'])}\t{r['rank']}\t{flat(r['item'])}\t{flat(r['title'])}\t{r['score']:.6g}\n" for r in rows)
    if out in (None, "", "-"):
        sys.stdout.write(text)
        return
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)


def is_recommendations(path) -> bool:
    """Whether the file starts as write_recommendations writes (the TSV header, or a JSONL row with
    user, rank and item): what recommend --out may replace; a dataset file, an interest file or a
    results file may not be."""
    first = first_line(path)
    return first == "user\trank\titem\ttitle\tscore" or json_with("user", "rank", "item")(first)


def read_user_ids(path) -> list:
    """Original user ids for recommend --users: one per non-blank line, the whole line (whitespace
    inside written as `_`, as prepare writes such ids in user_list.txt); a first line `user`,
    `user_id` or `org_id` is a header and skipped; path "-" reads standard input. Raises DataError on a
    missing or empty file."""
    with open_input(path) as f:
        ids = ["_".join(line.split()) for line in f if line.strip()]
    if not ids:
        raise DataError(path, 0, "the file is empty")
    return ids[1:] if ids[0].lower() in ("user", "user_id", "user_id:token", "org_id") else ids


def sparsity_groups(counts: np.ndarray, n_groups: int = 4) -> tuple[np.ndarray, list]:
    """Fig. 3's user groups (KGAT protocol, Wang et al. 2019): users sorted by their number of
    training interactions are cut into groups holding about the same total number of
    interactions; users with the same count stay in one group, so there can be fewer groups.

    counts: int [n] training interactions per user. Returns (group index int [n], bounds: one
    (lowest count, highest count, users, interactions) per group, sparse to dense)."""
    counts = np.asarray(counts, dtype=np.int64)
    levels, per_level = np.unique(counts, return_counts=True)
    share = counts.sum() / n_groups
    level_group, g, acc = np.zeros(len(levels), dtype=np.int64), 0, 0
    for i, (c, k) in enumerate(zip(levels, per_level)):
        level_group[i] = g
        acc += c * k
        if acc >= share * (g + 1) and g < n_groups - 1:
            g += 1
    group = level_group[np.searchsorted(levels, counts)]
    bounds = [(int(counts[group == b].min()), int(counts[group == b].max()), int((group == b).sum()),
               int(counts[group == b].sum())) for b in np.unique(group)]
    return group, bounds


@torch.no_grad()
def group_ndcg(trainer: Trainer, k: int = 50, n_groups: int = 4) -> dict:
    """Test NDCG@k of each sparsity group (Fig. 3) for a trained model. Groups split the test
    users by their number of train.txt interactions. Returns {"bounds": [...], "ndcg": [...]}."""
    users, exclude, truth = trainer.eval_sets["test"]
    group, bounds = sparsity_groups([len(trainer.ds.train[u]) for u in users], n_groups)
    trainer.model.eval()
    ue, ie = trainer.model.user_item_embeddings()
    ndcg = []
    for g in range(len(bounds)):
        sel = np.flatnonzero(group == g)
        m = evaluate_ranking(ue, ie, users[sel], [exclude[i] for i in sel], [truth[i] for i in sel],
                             [k], trainer.s.eval_batch)
        ndcg.append(m[f"ndcg@{k}"])
    return {"bounds": bounds, "ndcg": ndcg}


# ----------------------------------------------------------------------------------------------
# bench: seconds per epoch and per evaluation, peak memory, a breakdown by part
# ----------------------------------------------------------------------------------------------
# bench's breakdown: torch.profiler's names of the kernels (forward and backward) and of the
# model's methods (bench wraps them in record_function from outside; their forward only).
PROFILED = {"propagation": ("SymmetricSpMM", "SymmetricSpMMBackward"),
            "infonce": ("MeanLogSumExp", "MeanLogSumExpBackward")}
WRAPPED = ("contrastive_loss", "simgcl_loss", "reconstruction_loss")


def profile_batches(trainer: Trainer, batches: int = 8) -> dict:
    """Shares of the CPU time of `batches` training batches, by part: "propagation" (every sparse
    product, forward and backward), "infonce" (the InfoNCE denominators, forward and backward),
    the forward of each method of WRAPPED that ran, and "rest"; measured with torch.profiler."""
    from torch.profiler import ProfilerActivity, profile, record_function
    model = trainer.model
    for name in WRAPPED:  # wrapped on the instance: the model's code holds no timing
        method = getattr(model, name)
        setattr(model, name, lambda *a, _m=method, _n=name: _run_recorded(record_function, _n, _m, *a))
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            trainer.train_epoch(0, max_batches=batches)
            wall = time.perf_counter() - t0
    finally:
        for name in WRAPPED:
            delattr(model, name)
    totals = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages()}
    share = {part: sum(totals.get(k, 0.0) for k in keys) / wall for part, keys in PROFILED.items()}
    share.update({f"{n} forward": totals[n] / wall for n in WRAPPED if n in totals})
    return share


def _run_recorded(record_function, name, method, *args):
    with record_function(name):
        return method(*args)


def bench(s: Settings, epochs: int = 3, evals: int = 5) -> dict:
    """Seconds per training epoch (median of `epochs`), per full evaluation (median of `evals`),
    peak memory, and a breakdown of an epoch by part (profile_batches, scaled to the median
    epoch). The timed epochs run unprofiled. Prints the figures and writes them to
    runs/<dataset>-bench.json. Raises SettingsError, DataError."""
    import resource
    check_settings(s)
    if epochs < 1:
        raise SettingsError(f"--bench-epochs must be at least 1, got {epochs}")
    device = pick_device(s.device)
    if s.threads:
        torch.set_num_threads(s.threads)
    ds, train_part, valid = read_data(s)
    check_memory(s, ds, device)
    out = Path("runs") / f"{s.dataset}-bench.json"
    check_writable(out)
    trainer = Trainer(s, ds, train_part, valid, device)
    seconds = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        trainer.train_epoch(epoch)
        seconds.append(time.perf_counter() - t0)
        log(f"epoch {epoch}: {seconds[-1]:.1f}s")
    eval_times = []
    for _ in range(evals):
        t0 = time.perf_counter()
        trainer.evaluate("valid" if valid is not None else "test")
        eval_times.append(time.perf_counter() - t0)
    median = lambda v: float(np.median(v))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the profiler's own memory
    breakdown = {k: v * median(seconds) for k, v in profile_batches(trainer).items()}
    result = {"dataset": s.dataset, "device": str(device), "threads": torch.get_num_threads(),
              "epochs": epochs, "batches_per_epoch": math.ceil(len(trainer.pair_u) / s.batch_size),
              "epoch_seconds": median(seconds), "breakdown_seconds": breakdown,
              "eval_seconds": median(eval_times),
              "peak_rss_mb": peak_mb}
    print(f"{s.dataset}: {result['epoch_seconds']:.1f} s per training epoch (median of {epochs}; "
          f"{result['batches_per_epoch']} batches); of it, by torch.profiler over 8 batches: "
          + ", ".join(f"{k} {v:.1f}" for k, v in breakdown.items())
          + f"\n{s.dataset}: {result['eval_seconds']:.3f} s per full evaluation (median of {evals})"
          + f"\n{s.dataset}: peak resident memory {result['peak_rss_mb']:.0f} MB"
          + f" ({result['threads']} threads, {device})")
    out.write_text(json.dumps({**result, "per_epoch_seconds": seconds, "settings": dataclasses.asdict(s)}, indent=1))
    log(f"wrote {out}")
    return result


# -- command line -----------------------------------------------------------------------------
HELP = {"interests": "default: <data-dir>/<dataset>/user_interest_clustered.txt",
        "out": "results JSON; default runs/<dataset>[-model-graph-...]-seed<seed>.json (model and "
               "checkpoint beside it)",
        "model": "a preset of the settings (MODELS): the baselines at their own papers' definitions"}


def resolve_settings(args: argparse.Namespace) -> Settings:
    """make_settings from the options given on the command line (those not None)."""
    return make_settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
                            if getattr(args, f.name, None) is not None})


MOVED = {"tables": "python experiments.py tables", "explain": "python experiments.py explain"}


def build_parser() -> argparse.ArgumentParser:
    """The command line: train, bench, recommend, prepare, stats, download, export."""
    p = argparse.ArgumentParser(prog="cikgrec_cli.py", description=__doc__.split("\n")[0], allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("train", "train, select on validation, evaluate on test"),
                       ("bench", "time a few training epochs and evaluations")):
        sp = sub.add_parser(name, allow_abbrev=False, help=text)
        add_settings_arguments(sp, ("out", "resume", "refit", "epochs", "patience") if name == "bench" else (), HELP)
        if name == "bench":
            sp.add_argument("--bench-epochs", type=int, default=3)
        else:
            sp.add_argument("--force", action="store_true", help="replace the results of an earlier run at --out")
    rp = sub.add_parser("recommend", allow_abbrev=False, help="top-K items per user from a trained run")
    rp.add_argument("--run", required=True, help="the run's results JSON (its model .pt beside it)")
    rp.add_argument("--k", type=int, default=20, help="items per user (default 20)")
    rp.add_argument("--users", help="file of original user ids, one a line, - reads standard input (default: every user)")
    rp.add_argument("--history", help="new users (never trained on): a file of lines `new_id item item ...`, "
                                      "original item ids; they are folded in (- reads standard input)")
    rp.add_argument("--new-interests", help="with --history: `new_id interest_id` lines (llm_interests.py infer-new)")
    rp.add_argument("--out", help="output file (default: stdout)")
    rp.add_argument("--format", choices=("tsv", "jsonl"), default="tsv")
    rp.add_argument("--include-seen", action="store_true", help="do not exclude the user's train.txt items")
    rp.add_argument("--data-dir", help="the data folder, where it moved since the run")
    rp.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    pp = sub.add_parser("prepare", allow_abbrev=False, help="your own data: raw files -> a dataset folder")
    pp.add_argument("--interactions", help="CSV/TSV/'::' file: user, item[, rating[, timestamp]] (or --recbole)")
    pp.add_argument("--recbole", metavar="DIR/NAME", help="RecBole atomic files: NAME.inter and, where they exist, "
                                                          "NAME.item, NAME.kg, NAME.link (typed headers, tabs)")
    pp.add_argument("--name", required=True, help="the dataset's name: it goes to <data-dir>/<name>/")
    pp.add_argument("--data-dir", default="data", help="where the dataset folder goes (default data)")
    pp.add_argument("--items", help="optional CSV/TSV: item, name (a column named title or name)")
    pp.add_argument("--kg", help="optional CSV/TSV of triples: head, relation, tail")
    pp.add_argument("--link", help="optional CSV/TSV: item, entity; KG heads and tails that are linked entities are "
                                   "those items, any other value an entity")
    for role, default, text in (("user", "user", ""), ("item", "item", ""),
                                ("rating", "rating", "; --rating-col none ignores ratings, e.g. empty ones"),
                                ("time", "timestamp", "; --time-col none: no timestamps, a random split"), ("name", "name", ""),
                                ("head", "head", ""), ("relation", "relation", ""), ("tail", "tail", "")):
        of = " in the --kg file" if role in ("head", "relation", "tail") else ""
        pp.add_argument(f"--{role}-col", default=default,
                        help=f"header name or 1-based position{of} (default {default}{text})")
    pp.add_argument("--header", choices=("auto", "yes", "no"), default="auto",
                    help="the --interactions file only, where its line 1 cannot be told from data (a line naming "
                         "the columns is always a header): auto guesses and says so in a note. The other files "
                         "always guess so (a header line naming their columns settles it)")
    pp.add_argument("--sep", default="auto", help=f"auto, {', '.join(SEPARATORS)}, or a literal such as '::' or '|' "
                                                  "(ids with spaces need a separator other than space)")
    pp.add_argument("--encoding", default="utf-8", help="the files' encoding (default utf-8; e.g. latin-1 for "
                                                        "MovieLens' movies.dat)")
    pp.add_argument("--min-rating", type=float, help="keep only pairs rated at least this (positive feedback)")
    pp.add_argument("--min-user-interactions", type=int, default=5, help="drop users with fewer (paper: 10 for "
                                                                          "MovieLens, 5 otherwise; default 5)")
    pp.add_argument("--split-seed", type=int, default=0, help="the random 8:2 split without timestamps")
    pp.add_argument("--force", action="store_true", help="replace a dataset folder of that name")
    tp = sub.add_parser("stats", allow_abbrev=False, help="the paper's Table 2 for a dataset folder")
    tp.add_argument("--dataset", required=True)
    tp.add_argument("--data-dir", default="data")
    dp = sub.add_parser("download", allow_abbrev=False, help="fetch datasets from the authors' repository (verified)")
    dp.add_argument("--dataset", nargs="+", default=list(DATASETS), choices=DATASETS)
    dp.add_argument("--data-dir", default="data")
    ep = sub.add_parser("export", allow_abbrev=False, help="our split as RecBole benchmark files (docs/reproducing.md)")
    ep.add_argument("--format", choices=("recbole",), required=True)
    ep.add_argument("--dataset", required=True)
    ep.add_argument("--data-dir", default="data")
    ep.add_argument("--out", required=True, help="writes <out>/<dataset>/<dataset>.{train,valid,test}.inter, ...")
    ep.add_argument("--split-seed", type=int, default=0, help="the validation split's seed (default 0, as train)")
    ep.add_argument("--force", action="store_true", help="replace the files of a non-empty <out>/<dataset>/")
    return p


def keep_freed_memory() -> None:
    """Ask glibc to reuse freed memory instead of returning it to the system (the command line
    only: a library import leaves the process's allocator alone).

    Every training step allocates and frees tens of MB (InfoNCE logits, propagated layers). With
    glibc's defaults each such block is a fresh mmap whose pages the kernel must zero again, which
    doubles the run time on small CPUs. Raising the mmap and trim thresholds keeps those pages.
    """
    if platform.system() == "Linux":
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: 1 GiB
            libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD: never trim
        except (OSError, AttributeError):  # not glibc: keep the allocator's defaults
            pass


def check_interest_source(path, run: Run) -> None:
    """--new-interests FILE against the run: llm_interests.py infer-new writes FILE.source.json with
    the SHA-256 of the interest file whose ids FILE holds, and ids of another clustering mean other
    interests: DataError. A file without that record (written by hand) gets a note."""
    source, theirs = source_path(Path(path)), run.results.get("provenance", {}).get("interest_sha256")
    if not source.exists():
        log(f"note: {path} has no record {source} beside it (llm_interests.py infer-new writes one): whether its "
            "ids are those of the run's interest file cannot be checked")
        return
    try:
        record = json.loads(source.read_text(encoding="utf-8"))
        mine = record["interest_sha256"]
        if not isinstance(mine, str):
            raise TypeError(mine)
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(source, 0, "not the record infer-new writes ({\"interest_sha256\": ...})") from None
    if mine and theirs and mine != theirs:
        raise DataError(path, 0, f"its interest ids are those of another clustering ({record.get('clusters')}) "
                                 f"than the run's interest file ({run.results['provenance'].get('interest_file')}): "
                                 "run llm_interests.py infer-new with --clusters of the folder the run's interest "
                                 "file came from")


def recommend_command(args) -> int:
    """recommend: load the run, score every requested user, write the rows; unknown users in a note."""
    if args.k < 1:
        raise SettingsError(f"--k must be at least 1, got {args.k}")
    if args.out not in (None, "", "-"):  # before the run is loaded; never over the run's own files
        out = Path(args.out)
        if out.suffix == ".pt":
            raise SettingsError(f"--out {out}: .pt is where runs keep their models; give the recommendations "
                                "a file of their own (e.g. recs.tsv)")
        if out.resolve() == Path(args.run).resolve():
            raise SettingsError(f"--out {out}: that is the run's own results file; give the recommendations "
                                "a file of their own (e.g. recs.tsv)")
        for given in (args.history, args.new_interests, args.users):
            if given and out.resolve() == Path(given).resolve():
                raise SettingsError(f"--out {out} is the input file {given}; give the recommendations a file "
                                    "of their own (e.g. recs.tsv)")
        check_writable(out)
        if out.is_file() and out.stat().st_size and not is_recommendations(out):
            raise SettingsError(f"--out {out} exists and is not a file of recommendations (its first line is not "
                                "recommend's TSV header or JSONL row): not replaced; give another name, or remove it")
    if args.history and args.users or args.new_interests and not args.history:
        raise SettingsError("--history (new users) and --users (trained users) go alone; --new-interests needs --history")
    if args.new_interests == "-":
        raise SettingsError("--new-interests must be a file: the record of its clustering is read beside it")
    users = list(dict.fromkeys(read_user_ids(args.users))) if args.users else None
    histories = read_histories(args.history) if args.history else None
    interests = read_histories(args.new_interests, "interests") if args.new_interests else None
    if interests == {}:
        log(f"note: {args.new_interests} holds no interest edge: the new users are folded in from their items alone")
    t0 = time.perf_counter()
    run = load_run(args.run, args.data_dir, args.device)
    t1 = time.perf_counter()
    if interests is not None:
        check_interest_source(args.new_interests, run)
    if histories is not None:
        known = set(run.user_ids)
        trained = [u for u in histories if u in known]
        if trained:
            log(f"note: {len(trained)} ids of {args.history} are also trained users (e.g. {trained[0]!r}): they are "
                "folded in as new users from the items given; --users gives a trained user's own list")
        rows = run.recommend_new(histories, k=args.k, interests=interests, include_seen=args.include_seen)
        if len(rows.unknown) == len(histories):
            raise SettingsError(f"none of the {len(histories)} new users of {args.history} has an item of "
                                f"{run.trainer.s.dataset} (item_list.txt); --history takes original item ids")
    else:
        rows = run.recommend(users, k=args.k, original=True, include_seen=args.include_seen)
    t2 = time.perf_counter()
    if users and len(rows.unknown) == len(users):
        raise SettingsError(f"none of the {len(users)} users of {args.users} is in {run.trainer.s.dataset} "
                            f"(user_list.txt), e.g. {users[0]!r}; --users takes original user ids")
    write_recommendations(rows, args.out, args.format)
    per_user = collections.Counter(r["user"] for r in rows)
    n_users, short = len(per_user), sum(n < args.k for n in per_user.values())
    if short:
        log(f"note: {short} users get fewer than {args.k} items: fewer are left outside their history")
    log(f"{n_users} users x top {args.k} from {run.model_file}: loaded in {t1 - t0:.1f}s, scored in {t2 - t1:.2f}s"
        + (f"; written to {args.out}" if args.out not in (None, "-") else ""))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in MOVED:
        log(f"error: `{argv[0]}` moved to experiments.py: {MOVED[argv[0]]} {' '.join(argv[1:])}".rstrip())
        return 2
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    return exit_code(lambda: command(args), "interrupted outside the training epochs; where a checkpoint "
                     "exists beside --out, the same command with --resume continues from it.")


def command(args: argparse.Namespace) -> int:
    """Run the command the parsed command line names; its exit code when it ends normally."""
    if args.command == "download":
        download(args.dataset, args.data_dir)
        return 0
    if args.command == "prepare":
        return prepare_command(args)
    if args.command == "stats":
        st = dataset_stats(dataset_folder(Path(args.data_dir) / args.dataset))
        for note in st["warnings"]:
            log(f"note: {note}")
        print(stats_markdown(args.dataset, st), end="")
        return 0
    if args.command == "recommend":
        return recommend_command(args)
    if args.command == "export":
        r = export_recbole(args.dataset, args.data_dir, args.out, args.split_seed, args.force)
        for note in r["warnings"]:
            log(f"note: {note}")
        log(f"wrote {r['folder']}/: " + ", ".join(f"{k} {v:,}" for k, v in r["counts"].items())
            + (f"; {r['items_in_kg']:,} of {r['n_items']:,} items are in the KG (.link)" if "link" in r["counts"] else
               "; no kg_final.txt: no .kg/.link, so only RecBole's general models run")
            + f"; config {r['folder']}/{args.dataset}.yaml")
        return 0
    s = resolve_settings(args)
    if args.command == "bench":
        bench(s, args.bench_epochs)
        return 0
    r = fit(s, force=args.force)
    print(json.dumps({"dataset": r["dataset"], "selected_on": r["selected_on"],
                      "best_epoch": r["best_epoch"], "test": r["test"]}, indent=2))
    return 0


def prepare_command(args) -> int:
    """prepare: the files (--interactions etc., or --recbole's), the dataset folder, its Table 2."""
    files = {"interactions": args.interactions, "items": args.items, "kg": args.kg, "link": args.link}
    if args.recbole:
        given = [f"--{k}" for k, v in files.items() if v]
        if given:
            raise SettingsError(f"--recbole finds its files itself: give it or {', '.join(given)}, not both")
        files = recbole_files(args.recbole)
    elif not args.interactions:
        raise SettingsError("prepare needs --interactions FILE (or --recbole DIR/NAME)")
    st = prepare(files["interactions"], args.name, args.data_dir, files["items"], files["kg"], args.user_col,
                 args.item_col, args.rating_col, args.time_col, args.name_col, args.header, args.sep,
                 args.min_rating, args.min_user_interactions, args.split_seed, args.force, link=files["link"],
                 encoding=args.encoding, head_col=args.head_col, relation_col=args.relation_col,
                 tail_col=args.tail_col, recbole=bool(args.recbole))
    for note in st["warnings"]:
        log(f"note: {note}")
    print(stats_markdown(args.name, st), end="")
    log(f"wrote {Path(args.data_dir) / args.name}/ (train.txt, test.txt, the id lists, "
        f"{'kg_final.txt, ' if files['kg'] else ''}stats.md)")
    return 0


def exit_code(action, interrupted: str, own: bool = True) -> int:
    """The command line's exit codes around `action` (a function returning one): 2 with one line
    for bad input or settings (or a file that cannot be written), 1 for a failed training, 130 for Ctrl-C (saying what the checkpoint
    holds, or `interrupted` when no epoch was running or `own` is False: a sweep's own words)."""
    try:
        return action()
    except (DataError, SettingsError) as e:
        log(f"error: {e}")
        return 2
    except OSError as e:  # a folder that cannot be written, a full disk: one line, never a traceback
        log(f"error: {e.filename + ': ' if e.filename else ''}{e.strerror or e}")
        return 2
    except TrainingError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt as e:
        log(str(e) if isinstance(e, Interrupted) and own else interrupted)
        return 130


if __name__ == "__main__":
    sys.exit(main())
