"""The paper-reproduction harness: Tables 1, 3 and 4 over seeds, the paper's numbers, the Fig. 3
sparsity groups, the Fig. 4 case study (`explain`) and the figures (`plots`, optional matplotlib).
It calls cikgrec_cli.fit and reads results files; the method and its training loop are in cikgrec.py.

    python experiments.py tables --table table1 --dataset book-crossing --seeds 5
    python experiments.py explain --run runs/book-crossing-seed2024.json --user 2362
    python experiments.py sweep --param lambda3 --values 0.005,0.01,0.03 --dataset book-crossing
    python experiments.py fidelity --run results/runs/book-crossing/fidelity/authors-testsel-seed2024.json
    python experiments.py plots --results-dir results
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cikgrec import (GRAPHS, DataError, Settings, SettingsError, Trainer, TrainingError,
                     add_settings_arguments, flatten, load_dataset, log, make_settings, mask_rate, open_text,
                     option, ranking_metrics)
from cikgrec_cli import (HELP, HEADLINE_METRICS, RUN_FREE, check_settings, data_changed, definition_changes, duration, exit_code, finite,
                 fit, group_ndcg, keep_freed_memory, load_run, load_trained, output_paths, read_results,
                 settings_differ, sparsity_groups, write_json)
from cikgrec_prepare import DATASETS, dataset_folder
from llm_interests import item_title

# ----------------------------------------------------------------------------------------------
# Tables: configurations, seeds, the paper's numbers, aggregation
# ----------------------------------------------------------------------------------------------
# `python experiments.py tables --table table1|ablation|lightgcn-variants --dataset NAME --seeds N`
# trains every configuration of a table over seeds 2024, 2025, ..., 2024 + N - 1 (one fit() each,
# results in runs/<dataset>/<table>/<config>-seed<seed>.json), then writes
# results/<dataset>/<table>.md and .csv (mean +- sample std over seeds beside the paper's value)
# and results/<dataset>/groups.md (Fig. 3). `explain` prints the case study of Fig. 4.
FIRST_SEED = 2024  # seed i of a sweep is FIRST_SEED + i
TABLE_METRICS = HEADLINE_METRICS
METRIC_NAMES = {"recall@50": "R@50", "recall@100": "R@100", "ndcg@50": "N@50", "ndcg@100": "N@100"}

# Each table: config name -> (row label, settings given on top of the dataset's defaults).
TABLES = {
    "table1": {  # Table 1: overall performance (our code's baselines)
        # Table 1's rows are refit on all of train.txt after validation selection (cikgrec --refit).
        # Every row holds off early stopping for 30 epochs: SimGCL (and LightGCN on dbbook2014's
        # CKG) peak on validation within their first epochs and dip before they climb, and one
        # protocol for all rows keeps them comparable
        "cikgrec": ("CIKGRec", {"refit": True, "min_epochs": 30}),
        "lightgcn": ("LightGCN", {"model": "lightgcn", "refit": True, "min_epochs": 30}),
        "simgcl": ("SimGCL", {"model": "simgcl", "min_epochs": 30, "refit": True}),
    },
    "interests": {  # Table 3's "w/o UIK" as Table 1 runs it: does the LLM's knowledge help?
        "cikgrec": ("CIKGRec", {"refit": True, "min_epochs": 30}),  # Table 1's row, the same runs
        "wo-uik": ("CIKGRec w/o UIK (no LLM interests)", {"interest_nodes": False, "refit": True, "min_epochs": 30}),
    },
    "variants": {  # Table 1's CIKGRec row takes the variant validation chooses (no refit here)
        "paper": ("CIKGRec, --variant paper", {"min_epochs": 30}),
        "authors": ("CIKGRec, --variant authors", {"variant": "authors", "min_epochs": 30}),
    },
    "ablation": {  # Table 3: ablations by flags on the full model (Table 1's protocol: --min-epochs 30)
        "full": ("CIKGRec (ours)", {"min_epochs": 30}),
        "wo-uik": ("w/o UIK", {"interest_nodes": False, "min_epochs": 30}),  # no interest nodes at all
        "wo-uir": ("w/o UIR", {"lambda2": 0.0, "min_epochs": 30}),  # no interest reconstruction
        "wo-cl": ("w/o CL", {"lambda3": 0.0, "min_epochs": 30}),  # no contrastive loss
        "wo-dmr": ("w/o DMR", {"schedule": "fixed", "min_epochs": 30}),  # mask rate = omega throughout
        "linear": ("w linear", {"schedule": "lin", "min_epochs": 30}),  # linear mask schedule (Eq. 3)
    },
    "lightgcn-variants": {  # Table 4: LightGCN on graphs with more auxiliary information
        "lightgcn-cg": ("LightGCN_CG", {"model": "lightgcn", "graph": "cg"}),
        "lightgcn-cig": ("LightGCN_CIG", {"model": "lightgcn", "graph": "cig"}),
        "lightgcn-ckg": ("LightGCN_CKG", {"model": "lightgcn", "graph": "ckg"}),
        "lightgcn-cikg": ("LightGCN_CIKG", {"model": "lightgcn", "graph": "cikg"}),
    },
}
# Baselines tuned on validation, as a fair comparison needs: Table 1's rows of a dataset take these
# settings on top of the dataset's (an option given on the command line wins). Chosen by
# `experiments.py sweep` on the validation split (results/<dataset>/sweep-<model>-<param>.md).
TUNED = {"book-crossing": {"lightgcn": {"l2": 1e-5},  # results/book-crossing/sweep-lightgcn-l2.md
                           # results/book-crossing/variants.md: validation chooses the authors' code
                           "cikgrec": {"variant": "authors"}, "wo-uik": {"variant": "authors"},
                           # results/book-crossing/sweep-simgcl-lambda3-eps.md: of 10 grid points (tau 0.2) and the
                           # setting before tuning, validation chooses the latter (the dataset's tau, lambda3, eps)
                           "simgcl": {"tau": 0.15, "lambda3": 0.01, "eps": 0.1}},
            "dbbook2014": {"lightgcn": {"l2": 1e-4},  # results/dbbook2014/sweep-lightgcn-l2.md
                           # results/dbbook2014/sweep-simgcl-lambda3-eps.md (tau 0.2, the dataset's own)
                           "simgcl": {"lambda3": 0.05, "eps": 0.2}}}
TUNED_TABLES = ("table1", "interests")  # the tables whose rows take TUNED (the interests table: the chosen variant)


def _paper(metrics, rows):
    return {ds: {cfg: dict(zip(metrics, vals)) for cfg, vals in by_cfg.items()} for ds, by_cfg in rows.items()}


# The paper's numbers (selected on TEST, mean of 10 seeds): PAPER[table][dataset][config][metric].
PAPER = {
    "table1": _paper(("recall@50", "recall@100", "ndcg@50", "ndcg@100"), {  # Table 1
        "dbbook2014": {"lightgcn": (0.4214, 0.5358, 0.2230, 0.2481), "simgcl": (0.4280, 0.5369, 0.2376, 0.2610),
                       "cikgrec": (0.4642, 0.5756, 0.2494, 0.2739)},
        "book-crossing": {"lightgcn": (0.1607, 0.2246, 0.0765, 0.0911), "simgcl": (0.1653, 0.2211, 0.0860, 0.0988),
                          "cikgrec": (0.1791, 0.2455, 0.0889, 0.1041)},
        "ml1m": {"lightgcn": (0.4086, 0.5574, 0.3977, 0.4432), "simgcl": (0.4131, 0.5560, 0.4048, 0.4482),
                 "cikgrec": (0.4250, 0.5718, 0.4162, 0.4609)}}),
    "ablation": _paper(("recall@100", "ndcg@100"), {  # Table 3 (its w/o DMR row is empty)
        "dbbook2014": {"full": (0.5756, 0.2739), "wo-uik": (0.5673, 0.2615), "wo-uir": (0.5701, 0.2704),
                       "wo-cl": (0.5732, 0.2659), "linear": (0.5733, 0.2716)},
        "book-crossing": {"full": (0.2455, 0.1041), "wo-uik": (0.2330, 0.0991), "wo-uir": (0.2081, 0.0843),
                          "wo-cl": (0.2291, 0.0917), "linear": (0.2452, 0.1036)},
        "ml1m": {"full": (0.5718, 0.4609), "wo-uik": (0.5662, 0.4527), "wo-uir": (0.5713, 0.4601),
                 "wo-cl": (0.5583, 0.4480), "linear": (0.5714, 0.4603)}}),
    "lightgcn-variants": _paper(("recall@50", "ndcg@50", "recall@100", "ndcg@100"), {  # Table 4
        "dbbook2014": {"lightgcn-cg": (0.4214, 0.2230, 0.5358, 0.2481),
                       "lightgcn-cig": (0.4240, 0.2283, 0.5395, 0.2537),
                       "lightgcn-ckg": (0.4273, 0.2276, 0.5394, 0.2524),
                       "lightgcn-cikg": (0.4272, 0.2279, 0.5428, 0.2534)},
        "book-crossing": {"lightgcn-cg": (0.1607, 0.0765, 0.2246, 0.0911),
                          "lightgcn-cig": (0.1611, 0.0773, 0.2247, 0.0916),
                          "lightgcn-ckg": (0.1602, 0.0790, 0.2197, 0.0928),
                          "lightgcn-cikg": (0.1603, 0.0759, 0.2231, 0.0901)},
        "ml1m": {"lightgcn-cg": (0.4086, 0.3977, 0.5574, 0.4432), "lightgcn-cig": (0.4079, 0.3982, 0.5571, 0.4439),
                 "lightgcn-ckg": (0.4097, 0.3985, 0.5584, 0.4441),
                 "lightgcn-cikg": (0.4096, 0.3995, 0.5574, 0.4446)}}),
}
PAPER["interests"] = {ds: {"cikgrec": rows["full"], "wo-uik": rows["wo-uik"]}  # Table 3's two rows (R@100, N@100)
                      for ds, rows in PAPER["ablation"].items()}


@dataclass
class PlannedRun:
    """One fit() of a sweep: its table, configuration, seed, settings and results file."""
    table: str
    config: str
    seed: int
    settings: Settings
    out: Path


def run_settings(base: dict, flags: dict, seed: int, out) -> Settings:
    """Settings as the command line would build them (make_settings): `base` (the options given,
    e.g. {"dataset": "ml1m", "data_dir": "data"}), then the configuration's flags, seed and out."""
    return make_settings(**{**{k: v for k, v in base.items() if v is not None}, **flags, "seed": seed, "out": str(out)})


def plan_runs(table: str, base: dict, n_seeds: int, runs_dir="runs") -> list:
    """Every run of a table, configuration by configuration, seeds FIRST_SEED.. in order."""
    dataset = base.get("dataset") or Settings.dataset
    runs = []
    for config, (_, flags) in TABLES[table].items():
        if table in TUNED_TABLES:
            flags = {**flags, **{k: v for k, v in TUNED.get(dataset, {}).get(config, {}).items() if base.get(k) is None}}
        for i in range(n_seeds):
            seed = FIRST_SEED + i
            out = Path(runs_dir) / dataset / table / f"{config}-seed{seed}.json"
            runs.append(PlannedRun(table, config, seed, run_settings(base, flags, seed, out), out))
    return runs


def run_data_changed(results: dict, settings: Settings) -> list:
    """The data files (names) that differ from those the run of `results` (read_results) was
    trained on, read as `settings` would read them (data_changed)."""
    return data_changed(results.get("provenance", {}).get("data_sha256", {}), settings)


def check_groups(g, path) -> dict:
    """Fig. 3 groups as group_ndcg returns them ({"bounds": [[lo, hi, users, interactions]...],
    "ndcg": [...]}, one value per group); DataError naming `path` otherwise."""
    ok = (isinstance(g, dict) and isinstance(g.get("bounds"), list) and isinstance(g.get("ndcg"), list)
          and len(g["bounds"]) == len(g["ndcg"]) > 0
          and all(isinstance(b, (list, tuple)) and len(b) == 4 for b in g["bounds"])
          and all(finite(v) for v in g["ndcg"]))
    if not ok:
        raise DataError(path, 0, "not Fig. 3 groups ({\"bounds\": [...], \"ndcg\": [...]}, one value per group)")
    return g


def time_limited(results: dict) -> bool:
    """True for the results (read_results) of a run stopped by --max-minutes before early stopping."""
    return str(results.get("stopped_by") or "").startswith("time limit")


def unrefit(results: dict, settings: Settings) -> bool:
    """True when the planned run asks for a refit (Table 1) and the results (read_results) have
    none yet: the sweep then adds it (cikgrec_cli.fit with --refit on a finished run trains only it)."""
    return settings.refit and not isinstance(results.get("refit"), dict)


def done_results(run: PlannedRun, need_refit: bool = True) -> Path | None:
    """The results file of a planned run if it exists: its own, or that of the same run made
    elsewhere when the settings agree (cikgrec_cli.settings_differ), so a CIKGRec run of hours is not
    trained twice: in another table or sweep under runs_dir/<dataset>/ (the ablation's "full" is
    Table 1's CIKGRec, a sweep's default value is that run too), or by `train` at its default
    --out (runs/<dataset>-seed<seed>.json, so `make train` counts as Table 1's CIKGRec row); a
    file that cannot be read is no candidate. None when the run is still to do. Raises
    SettingsError when the run's own file was made with other settings (e.g. a quick --epochs 1 trial) or on other data (the
    SHA-256 of its files): it is neither reused nor overwritten. A run stopped by --max-minutes is
    not done (the sweep resumes it), nor, with need_refit, one whose refit is still to do (Table 1;
    need_refit=False: a finished run counts, for the table's "selected" columns)."""
    if run.out.is_file():
        results = read_results(run.out)
        newer = definition_changes(results, run.settings)
        if newer:  # checked first: a changed model also shows as changed settings
            raise SettingsError(f"{run.out} was made under an older definition of the model ({'; '.join(newer)}): "
                                "move it out of --runs-dir (e.g. to results/runs-old/) and run it again")
        differ = settings_differ(results, run.settings)
        if differ:
            more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
            raise SettingsError(f"{run.out} was made with other settings ({', '.join(differ[:4])}{more}): "
                                "delete it or give another --runs-dir")
        changed = run_data_changed(results, run.settings)
        if changed:
            raise SettingsError(f"{run.out} was trained on other data (the SHA-256 of {', '.join(changed)} "
                                "differs from the run's): delete it or give another --runs-dir")
        return None if time_limited(results) or (need_refit and unrefit(results, run.settings)) else run.out
    runs_dir = run.out.parents[2]  # plan_runs writes runs_dir/<dataset>/<table>/<config>-seed<s>.json
    others = sorted(p for p in run.out.parent.parent.glob(f"*/*-seed{run.seed}.json") if p != run.out)
    others.append(runs_dir / output_paths(dataclasses.replace(run.settings, out=""))[0].name)
    for other in others:
        if other.is_file():
            try:
                results = read_results(other)
            except DataError:
                continue
            if not (definition_changes(results, run.settings) or settings_differ(results, run.settings)
                    or time_limited(results) or (need_refit and unrefit(results, run.settings))
                    or run_data_changed(results, run.settings)):
                return other
    return None


def train_planned(r: PlannedRun, log_file: str | None = None) -> bool:
    """fit() one planned run: its checkpoint continued where there is one, or, where the same run
    finished elsewhere (done_results), its refit added to a copy of that file. True when
    --max-minutes cut it. log_file: where its progress goes (a run in a worker of --jobs), else
    stderr. Raises what fit raises."""
    if log_file:
        sys.stderr = open(log_file, "a", buffering=1)
    other = None if r.out.is_file() else done_results(r, need_refit=False)
    if other is not None:  # e.g. a sweep's run at the value Table 1 takes: only its refit is left
        r.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(other, r.out)
        log(f"{r.out}: a copy of {other}, the same run, to add its refit to")
    resume = output_paths(r.settings)[2].is_file() or r.out.with_suffix(".refit.ckpt.pt").is_file()
    results = fit(dataclasses.replace(r.settings, resume=resume))
    return time_limited(results) or unrefit(results, r.settings)  # a refit cut by --max-minutes too


def run_sweep(runs: list, dry_run: bool = False, jobs: int = 1) -> int:
    """fit() every planned run whose results file does not exist yet (an interrupted sweep
    resumes: finished runs are skipped, a run cut mid-way continues from its checkpoint). Progress
    on stderr: "run i/n: config seed s (elapsed, ~time left)", the time left estimated from the
    runs finished so far. A run that fails (TrainingError) is reported and the sweep goes on.
    jobs > 1: that many runs at once, each in its own process with its log in <out>.log (a GPU
    shared by several runs, or one CPU thread each: --threads 0 becomes cores / jobs).
    Returns the number of failed runs."""
    todo = [r for r in runs if done_results(r) is None]
    log(f"{len(runs) - len(todo)} of {len(runs)} runs already done; {len(todo)} to run")
    if dry_run:
        for r in todo:
            left = " (its refit only: the run is finished)" if done_results(r, need_refit=False) else ""
            log(f"  to run: {r.config} seed {r.seed} -> {r.out}{left}")
        return 0
    if jobs > 1 and todo:
        return _run_at_once(todo, jobs)
    start, finished, failed, cut = time.perf_counter(), 0, 0, 0
    for n, r in enumerate(todo, 1):
        elapsed = time.perf_counter() - start
        left = f"~{duration(elapsed / finished * (len(todo) - n + 1))} left" if finished else "time left unknown yet"
        log(f"run {n}/{len(todo)}: {r.config} seed {r.seed} ({duration(elapsed)} elapsed, {left})")
        try:
            cut += train_planned(r)
            finished += 1
        except TrainingError as e:
            failed += 1
            log(f"run {n}/{len(todo)} failed: {e} (its checkpoint is kept; going on)")
    _say_cut(cut, len(todo))
    return failed


def _run_at_once(todo: list, jobs: int) -> int:
    """run_sweep's --jobs: the runs in `jobs` worker processes (spawned: each starts its own torch
    and CUDA), each logging to <out>.log; a line on stderr as each run ends."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    start, failed, cut = time.perf_counter(), 0, 0
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        running = {}
        for r in todo:
            s = r.settings if r.settings.threads else dataclasses.replace(r.settings, threads=threads)
            r = dataclasses.replace(r, settings=s)
            r.out.parent.mkdir(parents=True, exist_ok=True)
            running[pool.submit(train_planned, r, str(r.out.with_suffix(".log")))] = r
        log(f"{len(todo)} runs, {jobs} at a time; each run's progress is in its <out>.log, "
            f"e.g. {todo[0].out.with_suffix('.log')}")
        for n, done in enumerate(concurrent.futures.as_completed(running), 1):
            r, elapsed = running[done], duration(time.perf_counter() - start)
            try:
                was_cut = done.result()
                cut += was_cut
                log(f"run {n}/{len(todo)} {'cut by --max-minutes' if was_cut else 'done'}: {r.config} seed {r.seed} "
                    f"({elapsed} elapsed)")
            except Exception as e:  # what fit raised in the worker: the others go on
                failed += 1
                log(f"run {n}/{len(todo)} failed: {r.config} seed {r.seed}: {e} (its log: {r.out.with_suffix('.log')})")
    _say_cut(cut, len(todo))
    return failed


def _say_cut(cut: int, n: int) -> None:
    if cut:
        log(f"{cut} of {n} runs stopped at --max-minutes before early stopping: they are not in the "
            "tables yet; the same command continues them")


def _mean_std(values: list) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; None for a single value)."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def aggregate_table(table: str, dataset: str, files: dict) -> list:
    """One row per configuration of the table: {"config", "label", "n", "files", "minutes" (mean
    minutes per run; None without runs), "minutes_by_device" ({"cpu": mean, "cuda": mean} from
    each file's provenance), and for each metric m of TABLE_METRICS: m (mean),
    m+"_std" (sample std, None when n < 2), m+"_paper" (None where the paper has no value) and
    m+"_diff" (100 (ours - paper) / paper)}.

    Rows of refit configurations (Table 1) take the refit's test metrics, and add the selected
    model's as m+"_selected" and m+"_selected_std"; their minutes include the refit.

    files: {config: [results JSON paths]} (test metrics are read from each file's "test", or its
    "refit" "test")."""
    paper = PAPER.get(table, {}).get(dataset, {})
    rows = []
    for config, (label, flags) in TABLES[table].items():
        paths = files.get(config, [])
        everything = [read_results(p) for p in paths]
        refit = flags.get("refit", False)
        runs = [r for r in everything if not refit or isinstance(r.get("refit"), dict)]  # refit rows: refit runs
        tests = [r["refit"]["test"] if refit else r["test"] for r in runs]
        run_minutes = lambda r: r["minutes"] + (r["refit"]["seconds"] / 60 if refit else 0.0)
        minutes = [run_minutes(r) for r in runs if r.get("minutes") is not None]
        by_device = {}  # runs made on different machines (e.g. a lent GPU) are timed apart
        for r in runs:
            if r.get("minutes") is not None:
                by_device.setdefault(r.get("provenance", {}).get("device", "?"), []).append(run_minutes(r))
        row = {"config": config, "label": label, "n": len(tests), "files": [str(p) for p in paths],
               "minutes": _mean_std(minutes)[0] if minutes else None,
               "minutes_by_device": {d: _mean_std(v)[0] for d, v in sorted(by_device.items())}}
        for m in TABLE_METRICS:
            mean, std = _mean_std([t[m] for t in tests]) if tests else (None, None)
            ref = paper.get(config, {}).get(m)
            row.update({m: mean, m + "_std": std, m + "_paper": ref,
                        m + "_diff": 100.0 * (mean - ref) / ref if mean is not None and ref else None})
            if refit:  # every finished run, refit or not yet
                row[m + "_selected"], row[m + "_selected_std"] = (
                    _mean_std([r["test"][m] for r in everything]) if everything else (None, None))
        row["n_selected"] = len(everything)
        row["by_seed"] = {r.get("seed", r.get("settings", {}).get("seed")): t for r, t in zip(runs, tests)}
        rows.append(row)
    base = next((r for r in rows if r["config"] == PAIRED_WITH.get(table)), None)
    for row in rows:
        for m in PAIRED_METRICS:
            row[m + "_paired"] = None if base is None or row is base else paired_difference(
                {s: t[m] for s, t in row["by_seed"].items()}, {s: t[m] for s, t in base["by_seed"].items()})
    return rows


def variant_choice(rows: list) -> tuple[str, str]:
    """The variants table's choice: (variant, why). The mean validation R@50 + N@50 of each
    variant's selected runs over the seeds both have; the higher wins, a tie keeps paper."""
    score = {r["config"]: {} for r in rows}
    for r in rows:
        for path in r["files"]:
            res = read_results(path)
            if res.get("valid"):
                score[r["config"]][res.get("seed", res.get("settings", {}).get("seed"))] = (
                    res["valid"]["recall@50"] + res["valid"]["ndcg@50"])
    seeds = sorted(set(score.get("paper", {})) & set(score.get("authors", {})))
    if not seeds:
        return "paper", "no seed has runs of both variants yet: paper, the default"
    mean = {v: float(np.mean([score[v][s] for s in seeds])) for v in ("paper", "authors")}
    chosen = "authors" if mean["authors"] > mean["paper"] else "paper"
    return chosen, (f"mean validation R@50 + N@50 over seeds {', '.join(map(str, seeds))}: paper {mean['paper']:.4f}, "
                    f"authors {mean['authors']:.4f}")


PAIRED_WITH = {"table1": "cikgrec", "interests": "cikgrec"}  # the row every other row of the table is paired with, seed by seed
PAIRED_METRICS = ("recall@50", "ndcg@50")


def paired_difference(a: dict, b: dict) -> tuple | None:
    """a - b over the seeds both have ({seed: value} each): (mean, half-width of its 95%
    confidence interval by the t distribution with n - 1 degrees of freedom (None for n = 1), n);
    None without a common seed."""
    from scipy import stats
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else None
    return float(d.mean()), half, len(d)


def _paired_cell(p: tuple | None) -> str:
    """'+0.0017 ± 0.0019 (3)', '-0.0004 (1)' or '' (paired_difference)."""
    if p is None:
        return ""
    mean, half, n = p
    return f"{mean:+.4f}" + ("" if half is None else f" ± {half:.4f}") + f" ({n})"


_TABLE_TITLES = {"table1": "Table 1: overall performance", "ablation": "Table 3: ablation study",
                 "lightgcn-variants": "Table 4: LightGCN with more auxiliary information",
                 "variants": "the paper's CIKGRec against the authors' code, chosen on validation",
                 "interests": "do the LLM's interests help? CIKGRec with and without interest nodes"}


_TABLE_NOTES = {"ablation": " The paper's Table 3 reports R@100 and N@100 only, and no numbers for w/o DMR "
                            "(ours: the mask rate is omega throughout).",
                "table1": " Our LightGCN and SimGCL rows are trained by this code at their own papers' definitions "
                          "(README: Baselines) with the dataset's sizes, learning rate and L2.",
                "interests": " Under --variant authors, Eq. 8's view 2 is the interest graph alone; without interest "
                             "nodes it has no edges, and its self-loops make each user's view-2 embedding the user's "
                             "own layer-0 row, so the user-side InfoNCE pulls the noised CIKG embedding towards it. "
                             "The code keeps that, as the authors' code would do."}


def _tuned_note(table: str, dataset: str) -> str:
    """' Tuned on validation (...): LightGCN's l2 = 1e-05.' for Table 1's rows that TUNED sets."""
    tuned = [f"{TABLES[table][c][0]}'s " + ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}"
                                                     for k, v in flags.items())
             for c, flags in TUNED.get(dataset, {}).items() if c in TABLES[table]] if table == "table1" else []
    return (f" Tuned on validation (sweep-*.md in this folder), instead of the dataset's setting: {'; '.join(tuned)}."
            if tuned else "")


def _budget_note(table: str, dataset: str, results_dir) -> str:
    """' Tuning budget: LightGCN: l2 over 3 points (3 runs, sweep-lightgcn-l2.md); ...' from the
    sweep files in results/<dataset>/ of the models of Table 1's rows."""
    if table != "table1":
        return ""
    parts = []
    for config, (label, flags) in TABLES[table].items():
        model = flags.get("model", "cikgrec")
        if model == "cikgrec":
            parts.append(f"{label}: the authors' settings (chosen by them, on test)")
        for path in sorted((Path(results_dir) / dataset).glob(f"sweep-{model}-*.json")):
            try:
                sw = json.loads(path.read_text())
                names = " x ".join(p for p in (sw["param"], sw.get("param2")) if p)
                parts.append(f"{label}: {names} over {len(sw['rows'])} points ({sw.get('runs', len(sw['rows']))} runs, "
                             f"{path.with_suffix('.md').name})")
            except (OSError, ValueError, KeyError, TypeError):
                continue
        if config == "cikgrec" and (Path(results_dir) / dataset / "variants.md").is_file():
            parts.append(f"{label}: --variant paper or authors (variants.md)")
    return f" Tuning budget, all on validation with seed {FIRST_SEED}: {'; '.join(parts)}." if parts else ""


def _device_minutes(row: dict) -> str:
    """The min/run cell: '114 (cpu)', or '138 (cpu), 6.4 (cuda)' when the seeds ran on different machines."""
    return ", ".join(f"{v:.0f} ({d})" if v >= 10 else f"{v:.1f} ({d})"
                     for d, v in row.get("minutes_by_device", {}).items())


def _non_defaults(base: dict) -> str:
    """The options a tables command gave beyond the dataset and the run-independent ones, e.g.
    "--min-epochs 30", so a table says what it was made with."""
    skip = tuple(k for k in RUN_FREE if k != "interests") + ("dataset", "refit")
    return " ".join(f"{option(k)} {v}" for k, v in sorted(base.items()) if k not in skip and v is not None)


def _made_with(given: str) -> list:
    return [f"Made with `{given}` on top of the dataset's settings.", ""] if given else []


CSV_NAMES = {"": "mean", "_std": "std", "_paper": "paper", "_diff": "diff_pct", "_selected": "selected",
             "_selected_std": "selected_std"}


def write_table(rows: list, table: str, dataset: str, results_dir="results", given: str = "") -> tuple[Path, Path]:
    """results/<dataset>/<table>.md and .csv from aggregate_table's rows; `given`: the options the
    runs were made with beyond the dataset's settings (_non_defaults), stated under the title.
    Refit rows (Table 1) get a column "selected" per metric beside the refit's."""
    folder = Path(results_dir) / dataset
    folder.mkdir(parents=True, exist_ok=True)
    num = lambda x, fmt: "" if x is None else format(x, fmt)
    pm = lambda mean, std: "" if mean is None else f"{mean:.4f} ± " + ("-" if std is None else f"{std:.4f}")
    refit = any(m + "_selected" in r for r in rows for m in TABLE_METRICS)
    extra = ("selected",) if refit else ()
    paired = PAIRED_WITH.get(table)
    header = ["model", "n", "min/run"] + [h for m in TABLE_METRICS
                                          for h in (METRIC_NAMES[m] + (" refit" if refit else ""), "paper", "diff %") + extra]
    if paired:
        header += [f"{METRIC_NAMES[m]} - {TABLES[table][paired][0]} (paired)" for m in PAIRED_METRICS]
    what = ("Ours: test metrics of the refit (trained again from the same seed on all of train.txt for the "
            "epochs that validation selected, then tested once; it never saw the test set), and beside it "
            "(selected) those of the model selected on validation and trained on 7/8 of train.txt"
            if refit else "Ours: test metrics of the epoch selected on validation")
    md = [f"# {dataset}: {_TABLE_TITLES[table]}", "",
          f"{what}, mean ± sample std over n seeds "
          f"({FIRST_SEED}, {FIRST_SEED + 1}, ...; std '-' when n = 1). Paper: selected on test, "
          "mean of 10 seeds. diff % = 100 (ours - paper) / paper. min/run: mean minutes of training and "
          "evaluation per run, by device (each results file's provenance names the device and threads; "
          "the README says which machines and how many runs shared them)."
          + _TABLE_NOTES.get(table, "") + _tuned_note(table, dataset)
          + (" Validation chooses --variant {}: {}.".format(*variant_choice(rows)) if table == "variants" else "") + _budget_note(table, dataset, results_dir)
          + (f" (paired): the difference to {TABLES[table][paired][0]} over the seeds both rows have, mean ± "
             "half-width of its 95% confidence interval (t distribution), and in brackets the number of seeds; "
             "the split is fixed (split seed 0), so the interval covers training randomness, not the choice of "
             "test set." if paired else ""), ""] + _made_with(given) + [
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        n = str(r["n"]) + (f" ({r['n_selected']} selected)" if refit and r.get("n_selected", r["n"]) != r["n"] else "")
        cells = [r["label"], n, _device_minutes(r)]
        for m in TABLE_METRICS:
            diff = "" if r[m + "_diff"] is None else f"{r[m + '_diff']:+.1f}"
            cells += [pm(r[m], r[m + "_std"]), num(r[m + "_paper"], ".4f"), diff]
            if refit:
                cells.append(pm(r.get(m + "_selected"), r.get(m + "_selected_std")))
        if paired:
            cells += [_paired_cell(r.get(m + "_paired")) for m in PAIRED_METRICS]
        md.append("| " + " | ".join(cells) + " |")
    md_path, csv_path = folder / f"{table}.md", folder / f"{table}.csv"
    md_path.write_text("\n".join(md) + "\n")
    kinds = ("", "_std", "_paper", "_diff") + (("_selected", "_selected_std") if refit else ())
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["config", "model", "n", "minutes_per_run", "minutes_per_run_by_device"]
                   + [f"{m}_{CSV_NAMES[k]}" for m in TABLE_METRICS for k in kinds]
                   + [f"{m}_paired_{x}" for m in (PAIRED_METRICS if paired else ()) for x in ("mean", "ci95", "n")])
        for r in rows:
            pair = [x for m in (PAIRED_METRICS if paired else ()) for x in (r.get(m + "_paired") or (None,) * 3)]
            w.writerow([r["config"], r["label"], r["n"], num(r["minutes"], ".4g"),
                        ";".join(f"{d}:{v:.4g}" for d, v in r.get("minutes_by_device", {}).items())]
                       + [num(r.get(m + s), ".6g") for m in TABLE_METRICS for s in kinds]
                       + ["" if x is None else format(x, ".6g") for x in pair])
    return md_path, csv_path

# ----------------------------------------------------------------------------------------------
# Fig. 3 (sparsity groups), the sweep command, Fig. 4 (explain)
# ----------------------------------------------------------------------------------------------
def results_groups(results_path, data_dir: str | None = None) -> dict:
    """group_ndcg of a results file: its "groups" (written by fit), else computed from the model
    file <results>.pt and cached in <results>.groups.json (redone when the model is newer than
    the cache). Raises DataError for an older results file with neither model nor cache."""
    results_path = Path(results_path)
    results = read_results(results_path) if results_path.is_file() else {}
    saved = (results.get("refit") or {}).get("groups") or results.get("groups")  # the refit's, where there is one
    if saved is not None:
        return check_groups(saved, results_path)
    cache, model = results_path.with_suffix(".groups.json"), results_path.with_suffix(".pt")
    if cache.is_file() and (not model.is_file() or cache.stat().st_mtime_ns >= model.stat().st_mtime_ns):
        try:
            with open_text(cache) as f:
                return check_groups(json.loads(f.read()), cache)
        except ValueError as e:
            raise DataError(cache, 0, f"not a groups JSON ({type(e).__name__}: {e})") from None
    trainer, _ = load_trained(results_path, data_dir)
    out = group_ndcg(trainer)
    write_json(out, cache)
    return out


def write_groups(dataset: str, files: dict, results_dir="results", data_dir: str | None = None,
                 given: str = "") -> Path:
    """results/<dataset>/groups.md: Fig. 3 as a table, test NDCG@50 of each user group (sparse to
    dense) for every configuration with results, mean ± sample std over seeds; `given` as in
    write_table.

    files: {(table, config): [results paths]}."""
    rows, bounds, data = [], None, []
    for (table, config), paths in files.items():
        if not paths:
            continue
        per_seed = []
        for p in paths:
            try:
                g = results_groups(p, data_dir)
            except DataError as e:  # e.g. results copied without their model file
                log(f"warning: groups.md leaves out {p}: {e}")
                continue
            if bounds is not None and [list(b) for b in g["bounds"]] != [list(b) for b in bounds]:
                log(f"warning: groups.md leaves out {p}: its groups differ from the other runs' (other data?)")
                continue
            bounds = bounds or g["bounds"]
            per_seed.append(g)
        if not per_seed:
            continue
        cells, stats = [], [_mean_std([r["ndcg"][g] for r in per_seed]) for g in range(len(bounds))]
        for mean, std in stats:
            cells.append(f"{mean:.4f} ± " + ("-" if std is None else f"{std:.4f}"))
        data.append({"label": f"{TABLES[table][config][0]} ({table})", "n": len(per_seed),
                     "mean": [m for m, _ in stats], "std": [sd for _, sd in stats]})
        rows.append(f"| {TABLES[table][config][0]} ({table}) | {len(per_seed)} | " + " | ".join(cells) + " |")
    folder = Path(results_dir) / dataset
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "groups.md"
    if bounds is None:
        path.write_text(f"# {dataset}: sparsity groups (Fig. 3)\n\nNo results yet.\n")
        path.with_suffix(".json").write_text(json.dumps({"dataset": dataset, "groups": [], "rows": []}))
        return path
    heads = [f"{lo}-{hi} items ({u} users, {n} interactions)" for lo, hi, u, n in bounds]
    text = [f"# {dataset}: test NDCG@50 by user sparsity group (Fig. 3)", "",
            "Test users split by their number of train.txt interactions into groups holding about the "
            "same total number of interactions (KGAT's protocol), sparse to dense. Mean ± sample std "
            "over n seeds. Each run once, in the first row it belongs to.", ""] + _made_with(given)
    text += ["| model | n | " + " | ".join(heads) + " |", "|" + "---|" * (len(heads) + 2)]
    path.write_text("\n".join(text + rows) + "\n")
    path.with_suffix(".json").write_text(json.dumps({"dataset": dataset, "groups": heads, "rows": data}, indent=1))
    return path


def check_results_dir(results_dir, dataset: str) -> None:
    """Before anything is trained or written: <results_dir>/<dataset> is, or can become, a folder
    that takes a new file, and is not a dataset folder (one with a train.txt). Makes nothing (a dry
    run leaves no empty folder). Raises SettingsError."""
    folder = existing = Path(results_dir) / dataset
    if (folder / "train.txt").exists():
        raise SettingsError(f"--results-dir {results_dir}: {folder} is a dataset folder (it has train.txt); "
                            "the results go elsewhere")
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SettingsError(f"--results-dir {results_dir}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise SettingsError(f"--results-dir {results_dir}: cannot write into {existing} ({e.strerror})") from None


def tables(table: str, base: dict, n_seeds: int, runs_dir="runs", results_dir="results",
           dry_run: bool = False, only: str | None = None, jobs: int = 1) -> int:
    """Run a table's sweep (unless dry_run; only the configurations named in `only`, comma
    separated, when given), then write its .md/.csv and groups.md from every results file there
    is. Returns the number of failed runs. Raises SettingsError on an unknown configuration."""
    dataset = base.get("dataset") or Settings.dataset
    planned = plan_runs(table, base, n_seeds, runs_dir)
    for r in planned:
        check_settings(r.settings)
    dataset_folder(Path(planned[0].settings.data_dir) / dataset)
    wanted = [c.strip() for c in (only or "").split(",") if c.strip()]
    unknown = [c for c in wanted if c not in TABLES[table]]
    if only is not None and not wanted:
        raise SettingsError(f"--only {only!r} names no configuration: {table} has {', '.join(TABLES[table])}")
    if unknown:
        raise SettingsError(f"--only {','.join(unknown)}: {table} has the configurations "
                            f"{', '.join(TABLES[table])}")
    todo = [r for r in planned if not wanted or r.config in wanted]
    by_rows = sorted({"model", "graph"} | {k for _, flags in TABLES[table].values() for k in flags})
    clash = [k for k in by_rows if k in base]
    if clash:  # e.g. --model simgcl would run SimGCL in the row labelled CIKGRec
        raise SettingsError(f"{option(clash[0])}: the rows of {table} set {', '.join(map(option, by_rows))} "
                            "themselves")
    check_results_dir(results_dir, dataset)  # before hours of training, not after
    failed = run_sweep(todo, dry_run, jobs)
    files = {}  # (table, config) -> results files found, for every table of the dataset
    for t in TABLES:
        for r in plan_runs(t, base, n_seeds, runs_dir):
            try:
                found = done_results(r, need_refit=False)  # finished runs count; refit rows show what has one
            except SettingsError:  # another table's run with other settings (e.g. no --min-epochs):
                if t == table:     # not one of these runs; only this table's own files must agree
                    raise
                found = None
            files.setdefault((t, r.config), []).extend([found] if found else [])
    if not any(files.values()):  # e.g. --dry-run in a fresh clone: keep the committed tables
        log(f"no results made with these settings under {Path(runs_dir) / dataset} yet: "
            f"{Path(results_dir) / dataset} left as it is")
        return failed
    rows = aggregate_table(table, dataset, {c: p for (t, c), p in files.items() if t == table})
    md, csv_path = write_table(rows, table, dataset, results_dir, _non_defaults(base))
    # groups: each results file once, in the first row that has it (rows of the same
    # run share files: the ablation's full model is Table 1's CIKGRec)
    unique, seen = {}, set()
    for key, paths in files.items():
        mine = [p for p in paths if p not in seen]
        seen.update(mine)
        if mine:
            unique[key] = mine
    groups = write_groups(dataset, unique, results_dir, base.get("data_dir"), _non_defaults(base))
    print(md.read_text())
    log(f"wrote {md}, {csv_path}, {groups}")
    return failed


def read_cluster_terms(path) -> dict:
    """interest_clusters.tsv (llm_interests.py cluster) -> {interest id: "top terms"} of the kept
    clusters (rows whose interest_id column is a number)."""
    terms = {}
    with open_text(Path(path)) as f:
        next(f, None)  # header: cluster users interest_id top_terms example_phrases
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) >= 4 and cols[2].isdigit():
                terms[int(cols[2])] = cols[3]
    return terms


@torch.no_grad()
def explain(trainer: Trainer, user: int, top: int = 10, answers: dict | None = None,
            terms: dict | None = None) -> dict:
    """The case study of Fig. 4 for one user: training items, interests, top recommendations and,
    for each, the strongest path user -> interest -> another user who has the item in training.

    Path strength = mean cosine similarity of the final (propagated) embeddings along its three
    edges, (cos(u, j) + cos(j, v) + cos(v, i)) / 3, in [-1, 1]: the space the model scores in,
    independent of embedding norms. Edges are the run's training interactions (validation items
    excluded) and the dataset's user-interest edges. Returns a dict (printed by print_explain)."""
    ds, model = trainer.ds, trainer.model
    e0, j0 = model.e0, model.j0
    if not 0 <= user < ds.n_users:
        raise SettingsError(f"--user must be in 0..{ds.n_users - 1}, got {user}")
    model.eval()
    raw = model.encode(model.graphs.main.adjacency())  # f_G(Z, G): [n_nodes, D]
    z = F.normalize(raw, dim=1)
    scores = raw[user] @ raw[e0:e0 + ds.n_items].t()
    scores[torch.as_tensor(ds.train[user], dtype=torch.long)] = float("-inf")  # train.txt items
    recs = torch.topk(scores, min(top, int(torch.isfinite(scores).sum()))).indices.tolist()
    edges = ds.interest_edges
    mine = edges[edges[:, 0] == user, 1]  # interest indices of the user
    title = lambda i: item_title(ds.item_names[i]) if i < len(ds.item_names) and ds.item_names[i] else f"item {i}"
    raw_id = lambda j: int(ds.interest_ids[j])
    out = {"user": user, "train": [(int(i), title(i)) for i in ds.train[user]],
           "interests": [(raw_id(j), (terms or {}).get(raw_id(j), "")) for j in mine],
           "answer": (answers or {}).get(user), "recommendations": [],
           "graph_has_interests": "uj" in GRAPHS[trainer.s.graph]}
    share = edges[np.isin(edges[:, 1], mine) & (edges[:, 0] != user)]  # (other user, shared interest)
    if not out["graph_has_interests"]:  # the interest embeddings of such a model were never trained
        share = share[:0]
    has_item = np.zeros((ds.n_users, ds.n_items), dtype=bool) if len(share) else None
    if has_item is not None:
        rows, cols = flatten(trainer.train)
        has_item[rows, cols] = True
    test = set(ds.test[user].tolist())
    for i in recs:
        best = None
        if has_item is not None:
            cand = share[has_item[share[:, 0], i]]  # (v, j) with v holding item i in training
            if len(cand):
                v, j = torch.as_tensor(cand[:, 0]), torch.as_tensor(cand[:, 1])
                strength = ((z[user] * z[j0 + j]).sum(1) + (z[j0 + j] * z[v]).sum(1)
                            + (z[v] * z[e0 + i]).sum(1)) / 3
                b = int(strength.argmax())
                best = (int(cand[b, 1]), raw_id(int(cand[b, 1])), int(cand[b, 0]), float(strength[b]))
        out["recommendations"].append({"item": i, "title": title(i), "score": float(scores[i]),
                                       "in_test": i in test, "path": best})
    return out


def print_explain(ex: dict) -> None:
    """Print explain()'s dict for a reader (stdout)."""
    u = ex["user"]
    print(f"user {u}: {len(ex['train'])} training items")
    for i, t in ex["train"]:
        print(f"  item {i}: {t}")
    print(f"interests of user {u}: {len(ex['interests'])}" + ("" if ex["graph_has_interests"] else
                                                             " (not in this model's graph)"))
    for j, t in ex["interests"]:
        print(f"  interest {j}" + (f": {t}" if t else ""))
    if ex["answer"] is not None:
        print(f"LLM answer: {ex['answer']}")
    print(f"top-{len(ex['recommendations'])} recommendations (train.txt items excluded; * = in test.txt):")
    for r, rec in enumerate(ex["recommendations"], 1):
        print(f"  {r:2d}. item {rec['item']}{' *' if rec['in_test'] else ''}: {rec['title']} "
              f"(score {rec['score']:.3f})")
        if rec["path"]:
            j_idx, j, v, s = rec["path"]
            print(f"      path: user {u} -> interest {j} -> user {v} -> item {rec['item']} (strength {s:.3f})")
        elif not ex["graph_has_interests"]:
            print("      no path: this model's graph has no interest nodes")
        else:
            print("      no path through a shared interest")


def explain_command(run: str, user: int, answers_path: str | None = None, clusters_path: str | None = None,
                    data_dir: str | None = None, top: int = 10) -> dict:
    """`explain`: load the run's model and print the case study for one user. The answers and
    clusters files default to those beside the run's interest file (interests/<dataset>/), since
    cluster terms and answers only fit the interest file they were made with (a run on the
    dataset's published file has neither unless given). Raises DataError, SettingsError."""
    if top < 1:
        raise SettingsError(f"--top must be at least 1, got {top}")
    trainer, results = load_trained(run, data_dir)
    s = trainer.s
    folder = Path(s.interests).parent if s.interests else None
    if answers_path is None and folder and (folder / "llm_answers.jsonl").is_file():
        answers_path = str(folder / "llm_answers.jsonl")  # only answers that made the run's interests
    if clusters_path is None and folder and (folder / "interest_clusters.tsv").is_file():
        clusters_path = str(folder / "interest_clusters.tsv")
    answers = {}
    if answers_path:
        with open_text(Path(answers_path)) as f:
            lines = f.read().splitlines()
        for line in lines:
            try:
                rec = json.loads(line)
                answers.setdefault(int(rec["user"]), rec.get("answer"))
            except (ValueError, KeyError, TypeError):
                continue  # a torn or foreign line: this is only a display
        if not answers:
            raise DataError(answers_path, 0, 'no line of llm_interests.py\'s answers ({"user": ..., "answer": ...})')
    terms = read_cluster_terms(Path(clusters_path)) if clusters_path else {}
    if clusters_path and not terms:
        raise DataError(clusters_path, 0, "no kept cluster row of llm_interests.py's interest_clusters.tsv")
    if terms and set(terms) != set(int(j) for j in trainer.ds.interest_ids):
        log(f"warning: {clusters_path} does not describe the run's interest nodes; terms may not match")
    ex = explain(trainer, user, top, answers, terms)
    print_explain(ex)
    return ex

# ----------------------------------------------------------------------------------------------
# Sensitivity on validation (Fig. 5 and the appendix's Fig. 7): one setting at a time
# ----------------------------------------------------------------------------------------------
# `python experiments.py sweep --param lambda3 --values 0.005,0.01,0.03 --dataset NAME` trains one
# run per value (one seed, validation selection, in runs/<dataset>/sweep-<model>-<param>/) and
# writes results/<dataset>/sweep-<model>-<param>.md/.csv/.json (and .png with matplotlib): the
# validation metrics per value and the value validation chooses. The test set plays no part.
SWEEP_FIXED = tuple(k for k in RUN_FREE if k != "interests") + ("dataset", "seed", "refit", "model", "select_on")


def setting_kind(param: str, refusal: str) -> type:
    """int or float: the type of the numeric Settings field `param` that a sweep may vary;
    SettingsError(refusal) for any other name."""
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    if param not in fields or param in SWEEP_FIXED or fields[param].type in ("bool", bool, "str", str):
        raise SettingsError(refusal)
    return {"int": int, "float": float}[fields[param].type if isinstance(fields[param].type, str)
                                        else fields[param].type.__name__]


def sweep_values(param: str, text: str) -> list:
    """The values of a --values list, typed as the Settings field `param` is. Raises SettingsError
    naming the parameter or value."""
    kind = setting_kind(param, f"--param {param!r}: give a numeric setting of a run, e.g. lambda3, l2, lr, tau, layers")
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SettingsError(f"--values {text!r}: expected comma-separated {kind.__name__} values of --{param}") from None
    if len(values) < 2 or len(set(values)) != len(values):
        raise SettingsError(f"--values {text!r}: give at least two distinct values")
    return values


EARLY_EPOCH = 10  # a sweep run that peaked before this epoch and ran past it measured its transient, not the point


def peaked_early(results: dict) -> bool:
    """True for the results of a run that peaked on validation before EARLY_EPOCH though it ran
    past it (a run cut by --epochs before EARLY_EPOCH measured what it was asked to)."""
    return results["best_epoch"] < EARLY_EPOCH < results["epochs_run"]


def plan_sweep(param: str, values: list, base: dict, runs_dir="runs", param2: str | None = None,
               values2=(), candidates=(), rerun_min_epochs: int = 0) -> list:
    """One PlannedRun per point of the grid `values` (x `values2` of param2, a second setting):
    seed FIRST_SEED (or base's), validation selection, in runs_dir/<dataset>/sweep-<model>-<param>
    [-<param2>]/<param>-<v>[-<param2>-<w>]-seed<seed>.json. candidates: more points off the grid,
    each a dict of settings on top of base (e.g. today's setting), named candidate-<k>-<v>-....
    rerun_min_epochs M > 0: each point also plans its rerun with --min-epochs M (...-min<M>-...;
    PlannedRun.config ends in " rerun"), which the sweep trains where the point peaked before
    EARLY_EPOCH."""
    dataset, model = base.get("dataset") or Settings.dataset, base.get("model") or Settings.model
    seed = base.get("seed") or FIRST_SEED
    names = [param] + ([param2] if param2 else [])
    table = f"sweep-{model}-{'-'.join(names)}"
    folder = Path(runs_dir) / dataset / table
    points = [{param: v, **({param2: w} if param2 else {})} for v in values for w in (values2 if param2 else [None])]
    runs = []
    for point, off_grid in [(p, False) for p in points] + [(c, True) for c in candidates]:
        stem = ("candidate-" if off_grid else "") + "-".join(f"{k}-{v:g}" for k, v in point.items())
        label = ", ".join(f"{k}={v:g}" for k, v in point.items()) + (" (candidate)" if off_grid else "")
        flags = {**point, "select_on": "valid", "refit": False}
        runs.append(PlannedRun(table, label, seed, run_settings(base, flags, seed, folder / f"{stem}-seed{seed}.json"),
                               folder / f"{stem}-seed{seed}.json"))
        if rerun_min_epochs:
            out = folder / f"{stem}-min{rerun_min_epochs}-seed{seed}.json"
            flags = {**flags, "min_epochs": rerun_min_epochs}
            runs.append(PlannedRun(table, label + " rerun", seed, run_settings(base, flags, seed, out), out))
    return runs


def early_peak(run: PlannedRun) -> bool:
    """True when the run is finished (done_results) and peaked_early."""
    found = done_results(run)
    return found is not None and peaked_early(read_results(found))


def sweep_rows(runs: list) -> list:
    """The table's rows: per point, the run that measures it (its rerun with a larger --min-epochs
    where the first run peaked before EARLY_EPOCH and the rerun is done), with its settings,
    best epoch and validation metrics; points not finished are left out."""
    reruns = {r.config[:-len(" rerun")]: r for r in runs if r.config.endswith(" rerun")}
    rows = []
    for r in runs:
        if r.config.endswith(" rerun"):
            continue
        rerun = reruns.get(r.config)
        used = rerun if rerun is not None and early_peak(r) and done_results(rerun) else r
        found = done_results(used)  # its own file, or the same run's elsewhere (Table 1's at the default)
        if found is None:
            continue
        res = read_results(found)
        v = res["valid"] or {}
        rows.append({"config": r.config, "candidate": r.config.endswith("(candidate)"),
                     "min_epochs": used.settings.min_epochs, "rerun": used is not r, "first_best_epoch":
                     read_results(done_results(r))["best_epoch"] if used is not r else None,
                     "best_epoch": res["best_epoch"], "epochs_run": res["epochs_run"], "minutes": res.get("minutes"),
                     **{m: v.get(m) for m in ("recall@50", "ndcg@50", "recall@100", "ndcg@100")}})
    return rows


def write_sweep(param: str, runs: list, results_dir="results", given: str = "", param2: str | None = None) -> Path:
    """The sweep's table (.md, .csv), its rows (.json) and, with matplotlib, its plot (.png) under
    results/<dataset>/: per point, the best epoch and the validation metrics at it; the point with
    the highest validation R@50 + N@50 (what early stopping selects on) is the one chosen. A point
    whose run peaked before EARLY_EPOCH is not measured: its rerun with a larger --min-epochs
    stands in (marked), or, while there is none, it is marked and not chosen."""
    s0 = runs[0].settings
    names = [param] + ([param2] if param2 else [])
    rows = sweep_rows(runs)
    for x in rows:
        x["value"] = getattr(next(r for r in runs if r.config == x["config"]).settings, param)
        if param2:
            x["value2"] = getattr(next(r for r in runs if r.config == x["config"]).settings, param2)
        x["unmeasured"] = peaked_early(x)
    folder = Path(results_dir) / s0.dataset
    folder.mkdir(parents=True, exist_ok=True)
    name = folder / f"sweep-{s0.model}-{'-'.join(names)}"
    measured = [x for x in rows if not x["unmeasured"]]
    best = max(measured, key=lambda x: x["recall@50"] + x["ndcg@50"]) if measured else None
    n_points = len([r for r in runs if not r.config.endswith(" rerun")])
    missing = n_points - len(rows)
    chosen = None if missing or best is None else best
    what = f"--{param.replace('_', '-')}" + (f" and --{param2.replace('_', '-')}" if param2 else "")
    md = [f"# {s0.dataset}: {s0.model}, validation metrics by {what}", "",
          f"One run per {'point' if param2 else 'value'} (seed {runs[0].seed}, validation split seed {s0.split_seed}), "
          "each selected on validation R@50 + N@50; the metrics are those of the validation split at the selected "
          "epoch. The test set plays no part here." + (f" Made with `{given}`." if given else ""), ""]
    head = f"| {param} |" + (f" {param2} |" if param2 else "")
    md += [head + " best epoch (of) | valid R@50 | valid N@50 | valid R@100 | valid N@100 | minutes |",
           "|---|" + ("---|" if param2 else "") + "---|---|---|---|---|---|"]
    for x in rows:
        mark = " (chosen)" if x is chosen else ""
        mark += (f" (rerun with --min-epochs {x['min_epochs']}: the first run peaked at epoch "
                 f"{x['first_best_epoch']})" if x["rerun"] else "")
        mark += f" (peaked at epoch {x['best_epoch']}, before {EARLY_EPOCH}: not measured)" if x["unmeasured"] else ""
        cells = f"| {x['value']:g}{'' if param2 else mark} |" + (f" {x['value2']:g}{mark} |" if param2 else "")
        if x["candidate"]:  # off the grid: its own settings
            cells = f"| {x['config']}{mark} |" + (" |" if param2 else "")
        md.append(f"{cells} {x['best_epoch']} ({x['epochs_run']}) | {x['recall@50']:.4f} | "
                  f"{x['ndcg@50']:.4f} | {x['recall@100']:.4f} | {x['ndcg@100']:.4f} | "
                  + ("" if x["minutes"] is None else f"{x['minutes']:.0f}") + " |")
    point = lambda x: (f"{param} = {x['value']:g}" + (f", {param2} = {x['value2']:g}" if param2 else "")
                       if not x["candidate"] else x["config"])
    if missing:  # no choice before every point has run
        md += ["", f"{missing} of {n_points} runs are not finished yet: "
                   + ("no value is chosen" if not param2 else "no point is chosen")
                   + (f" (best so far: {point(best)})." if best is not None else ".")]
    elif chosen is None:
        md += ["", "Every run peaked before epoch 10: none is measured, nothing is chosen."]
    else:
        md += ["", f"Validation chooses {point(chosen)}."]
        grid = sorted({x["value"] for x in rows if not x["candidate"]})
        if not chosen["candidate"] and len(grid) > 2 and chosen["value"] in (grid[0], grid[-1]):
            md.append(f"{param} = {chosen['value']:g} lies on the grid's edge: the grid should go one step past it.")
    md.append(f"Budget: {len(rows)} points, {sum(1 for x in rows if x['rerun']) + len(rows)} runs "
              f"(reruns included), seed {runs[0].seed}.")
    name.with_suffix(".md").write_text("\n".join(md) + "\n")
    with open(name.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([param] + ([param2] if param2 else []) + ["candidate", "min_epochs", "best_epoch", "epochs_run",
                    "minutes", "valid_recall@50", "valid_ndcg@50", "valid_recall@100", "valid_ndcg@100", "chosen"])
        for x in rows:
            w.writerow([x["value"]] + ([x["value2"]] if param2 else []) + [
                x["config"] if x["candidate"] else "", x["min_epochs"], x["best_epoch"], x["epochs_run"], x["minutes"],
                x["recall@50"], x["ndcg@50"], x["recall@100"], x["ndcg@100"], x is chosen])
    keep = ("value", "value2", "best_epoch", "epochs_run", "minutes", "recall@50", "ndcg@50", "recall@100",
            "ndcg@100", "config", "candidate", "min_epochs", "rerun", "unmeasured")
    out_rows = [{k: x[k] for k in keep if k in x} for x in rows]
    if param2:
        chosen_value = None if chosen is None else ({"config": chosen["config"]} if chosen["candidate"]
                                                    else {param: chosen["value"], param2: chosen["value2"]})
    else:
        chosen_value = None if chosen is None else chosen["value"]
    name.with_suffix(".json").write_text(json.dumps({"param": param, **({"param2": param2} if param2 else {}),
                                                     "model": s0.model, "dataset": s0.dataset,
                                                     "chosen": chosen_value, "runs": len(rows) + sum(x["rerun"] for x in rows),
                                                     "rows": out_rows}, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log(f"note: no {name.with_suffix('.png')} (plots need matplotlib, an optional extra)")
        return name.with_suffix(".md")
    grid_rows = [x for x in rows if not x["candidate"]]
    if grid_rows:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for w2 in sorted({x.get("value2") for x in grid_rows}, key=lambda v: (v is None, v)):
            part = [x for x in grid_rows if x.get("value2") == w2]
            xs = [x["value"] for x in part]
            for m, style in (("recall@50", "o-"), ("ndcg@50", "s--")):
                ax.plot(xs, [x[m] for x in part], style,
                        label=f"valid {METRIC_NAMES[m]}" + (f", {param2} {w2:g}" if param2 else ""))
        xs = [x["value"] for x in grid_rows]
        if min(xs) > 0 and max(xs) / min(xs) >= 10:
            ax.set_xscale("log")
        ax.set(xlabel=param, title=f"{s0.dataset}: {s0.model} by {param} (validation)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(name.with_suffix(".png"), dpi=120)
        plt.close(fig)
    return name.with_suffix(".md")


def parse_candidate(text: str) -> dict:
    """'tau=0.15,lambda3=0.01' -> {"tau": 0.15, "lambda3": 0.01}, typed as the Settings fields.
    Raises SettingsError naming the part that is not a numeric setting."""
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        out[key.strip()] = _typed(key.strip(), value.strip(), text)
    return out


def _typed(param: str, value: str, text: str):
    kind = setting_kind(param, f"--candidate {text!r}: {param!r} is not a numeric setting of a run")
    try:
        return kind(value)
    except ValueError:
        raise SettingsError(f"--candidate {text!r}: expected {kind.__name__} for {param}, got {value!r}") from None


def sweep(param: str, values_text: str, base: dict, runs_dir="runs", results_dir="results", dry_run=False,
          jobs: int = 1, param2: str | None = None, values2_text: str | None = None, candidates=(),
          rerun_min_epochs: int = 0) -> int:
    """`sweep`: train what is left of a sweep over one setting or a grid over two (param2), with
    the candidate points off the grid, then the rerun with --min-epochs rerun_min_epochs of each
    point that peaked before EARLY_EPOCH, then write its table. Returns the number of failed
    runs. Raises SettingsError, DataError."""
    values = sweep_values(param, values_text)
    values2 = sweep_values(param2, values2_text or "") if param2 else ()
    for p in (param, param2):
        if p and p in base:
            raise SettingsError(f"{option(p)}: the sweep sets it itself (--values)")
    if param2 == param:
        raise SettingsError(f"--param2 {param2}: give a second setting, not --param again")
    if rerun_min_epochs and rerun_min_epochs <= (base.get("min_epochs") or 0):
        raise SettingsError(f"--rerun-early {rerun_min_epochs}: give more than --min-epochs")
    points = [parse_candidate(c) for c in candidates]
    runs = plan_sweep(param, values, base, runs_dir, param2, values2, points, rerun_min_epochs)
    for r in runs:
        check_settings(r.settings)
    dataset_folder(Path(runs[0].settings.data_dir) / runs[0].settings.dataset)
    check_results_dir(results_dir, runs[0].settings.dataset)
    first = [r for r in runs if not r.config.endswith(" rerun")]
    failed = run_sweep(first, dry_run, jobs)
    reruns = [r for r in runs if r.config.endswith(" rerun")
              and early_peak(next(f for f in first if f.config == r.config[:-len(" rerun")]))]
    if reruns:
        log(f"{len(reruns)} runs peaked before epoch {EARLY_EPOCH}: their reruns with --min-epochs {rerun_min_epochs}")
        failed += run_sweep(reruns, dry_run, jobs)
    md = write_sweep(param, runs, results_dir, _non_defaults({k: v for k, v in base.items() if k != "model"}), param2)
    print(md.read_text())
    return failed


# ----------------------------------------------------------------------------------------------
# Fidelity: our --variant authors --select-on test against the authors' own run
# ----------------------------------------------------------------------------------------------
# The authors' code on book-crossing, seed 2024, selected on test (../shared/REFERENCE.md):
# epoch -> test (R@50, N@50, R@100, N@100).
AUTHORS_CURVE = {"book-crossing": {3: (0.0992, 0.0565, 0.1317, 0.0642), 20: (0.1502, 0.0704, 0.2163, 0.0854),
                                   40: (0.1669, 0.0792, 0.2360, 0.0947), 60: (0.1761, 0.0859, 0.2461, 0.1017),
                                   80: (0.1816, 0.0896, 0.2472, 0.1045)},
                 "dbbook2014": {3: (0.2378, 0.1091, None, None)}}  # R@50 and N@50 only (REFERENCE.md)
# ----------------------------------------------------------------------------------------------
# cold-start: users the model never saw, folded in (RecPack's "strong generalization")
# ----------------------------------------------------------------------------------------------
# `python experiments.py cold-start --dataset book-crossing --data-dir DIR --draws 3` holds out a
# seeded 10% of the users entirely (draw d: numpy seed d), writes the dataset without them
# (runs/cold-start-data/<dataset>/draw<d>/<dataset>/: their train.txt lines emptied, their interest
# edges gone; the same item, entity and interest ids), trains LightGCN, SimGCL and CIKGRec on it as
# Table 1 does (validation selection on the warm users, refit, TUNED; model seed FIRST_SEED + d - 1,
# results in runs/<dataset>/cold-start-draw<d>/), folds the held-out users in from their train.txt
# items (CIKGRec with and without their interest edges from the dataset's interest file) and tests
# them once on their test.txt items, beside a popularity ranking of the warm users' items.
COLD_SHARE = 0.1
COLD_MODELS = {"lightgcn": {"model": "lightgcn"}, "simgcl": {"model": "simgcl"}, "cikgrec": {}}
COLD_ROWS = {"popularity": "popularity (warm users' train.txt counts)", "lightgcn": "LightGCN",
             "simgcl": "SimGCL", "cikgrec-items": "CIKGRec, folded in without interest edges",
             "cikgrec": "CIKGRec, folded in with interest edges"}
COLD_FIXED = ("model", "graph", "contrast", "select_on", "interests", "interest_nodes")  # what defines the rows
COLD_PAIRS = (("cikgrec", "cikgrec-items"), ("cikgrec", "simgcl"), ("cikgrec-items", "simgcl"))


def cold_users(ds, draw: int, share: float = COLD_SHARE) -> np.ndarray:
    """The held-out users of draw `draw`: round(share x n) of the n users with train.txt and test.txt
    items, drawn without replacement by numpy's default_rng(draw); sorted int64 ids."""
    eligible = np.array([u for u in range(ds.n_users) if len(ds.train[u]) and len(ds.test[u])], dtype=np.int64)
    n = max(1, int(math.floor(share * len(eligible) + 0.5)))
    return np.sort(np.random.default_rng(draw).choice(eligible, size=n, replace=False))


def write_cold_dataset(src: Path, dst: Path, held: np.ndarray) -> None:
    """dst: the dataset folder src without the users `held`: their train.txt lines keep only the
    user id (no item, so no edge, no validation item, no evaluation), their lines of the interest
    file are left out; every other file (test.txt included) is copied as it is, so all ids stay."""
    dst.mkdir(parents=True, exist_ok=True)
    gone = set(held.tolist())
    for f in sorted(src.iterdir()):
        if not f.is_file() or f.suffix not in (".txt", ".tsv"):
            continue
        lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
        if f.name == "train.txt":
            lines = [(line.split()[0] + "\n" if line.split() and int(line.split()[0]) in gone else line) for line in lines]
        elif f.name == "user_interest_clustered.txt":
            lines = [line for line in lines if not (line.split() and int(line.split()[0]) in gone)]
        tmp = dst / (f.name + ".tmp")
        tmp.write_text("".join(lines), encoding="utf-8")
        os.replace(tmp, dst / f.name)


def plan_cold(base: dict, draws: int, runs_dir="runs") -> list:
    """The cold-start runs: for each draw, each of COLD_MODELS as Table 1 trains it (refit,
    --min-epochs 30, TUNED), on that draw's dataset without its held-out users."""
    dataset = base.get("dataset") or Settings.dataset
    runs = []
    for draw in range(1, draws + 1):
        data_dir = Path(runs_dir) / "cold-start-data" / dataset / f"draw{draw}"
        for config, flags in COLD_MODELS.items():
            flags = {**flags, "refit": True, "min_epochs": 30, "data_dir": str(data_dir),
                     **{k: v for k, v in TUNED.get(dataset, {}).get(config, {}).items() if base.get(k) is None}}
            seed = FIRST_SEED + draw - 1
            out = Path(runs_dir) / dataset / f"cold-start-draw{draw}" / f"{config}-seed{seed}.json"
            runs.append(PlannedRun(f"cold-start-draw{draw}", config, seed, run_settings(base, flags, seed, out), out))
    return runs


def per_user(scores: torch.Tensor, exclude: list, truth: list) -> list:
    """[(R@50, N@50)] of each row of scores [n, n_items] (ranking_metrics, one user at a time)."""
    out = []
    for b in range(len(truth)):
        m = ranking_metrics(scores[b:b + 1], [exclude[b]], [truth[b]], [50])
        out.append((m["recall@50"], m["ndcg@50"]))
    return out


@torch.no_grad()
def cold_evaluate(src, held: np.ndarray, runs: dict) -> dict:
    """Per-user test metrics of the held-out users: {row of COLD_ROWS: [(R@50, N@50)] aligned with
    held}. src: the full dataset (load_dataset); runs: {config: results JSON} of the draw. Every
    user is folded in from their train.txt items (CIKGRec.fold_in); "cikgrec" adds their interest
    edges of src's interest file (interests held by no warm user are not in the run's graph)."""
    items, truth = [src.train[u] for u in held], [src.test[u] for u in held]
    warm = np.setdiff1d(np.arange(src.n_users), held)
    popular = np.bincount(flatten([src.train[u] for u in warm])[1], minlength=src.n_items).astype(np.float32)
    rows = {"popularity": per_user(torch.from_numpy(popular)[None].expand(len(held), -1), items, truth)}
    for config, path in runs.items():
        run = load_run(path)
        model, index = run.trainer.model, {int(j): n for n, j in enumerate(run.trainer.ds.interest_ids)}
        _, item_emb = model.user_item_embeddings()
        folds = {config: None}
        if config == "cikgrec":
            raw = {u: [int(src.interest_ids[j]) for j in src.interest_edges[src.interest_edges[:, 0] == u, 1]] for u in held}
            folds = {"cikgrec-items": None, "cikgrec": [[index[j] for j in raw[u] if j in index] for u in held]}
        for row, links in folds.items():
            rows[row] = per_user(model.fold_in(items, links) @ item_emb.T, items, truth)
    return rows


def cold_table(dataset: str, draws: dict, bounds: list, minutes: dict, warm: dict | None = None) -> str:
    """The cold-start page: draws {draw: {"held": [...], "counts": [...], "rows": cold_evaluate()}};
    bounds: Table 1's sparsity groups (sparsity_groups' bounds); minutes {config: [per run]}; warm
    (warm_reference): Table 1's refit runs of the same configurations, shown as the warm reference."""
    keyed = {row: {} for row in COLD_ROWS}  # row -> {(draw, user): (R@50, N@50)}
    group = {}
    for d, x in draws.items():
        for i, u in enumerate(x["held"]):
            group[(d, u)] = next(g for g, b in enumerate(bounds) if b[0] <= x["counts"][i] <= b[1])
            for row in COLD_ROWS:
                keyed[row][(d, u)] = x["rows"][row][i]
    n = len(group)
    names = [f"{b[0]}-{b[1]} items" for b in bounds]
    mean = lambda row, m, g=None: float(np.mean([v[m] for k, v in keyed[row].items() if g is None or group[k] == g]))
    lines = [f"# Cold start on {dataset}: users the model never saw, folded in", "",
             f"{n:,} held-out users ({len(draws)} draw{'s' * (len(draws) > 1)} of {COLD_SHARE:.0%} of the users with train and test items, "
             f"seeds {', '.join(map(str, draws))}; pooled). Group sizes: "
             + ", ".join(f"{names[g]}: {sum(1 for v in group.values() if v == g)}" for g in range(len(bounds))) + ".", "",
             "| row | R@50 | N@50 | " + " | ".join(f"N@50 {x}" for x in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for row, label in COLD_ROWS.items():
        lines.append(f"| {label} | {mean(row, 0):.4f} | {mean(row, 1):.4f} | "
                     + " | ".join(f"{mean(row, 1, g):.4f}" for g in range(len(bounds))) + " |")
    lines += ["", "Paired differences over the same users (mean ± half-width of the 95% CI by the t "
              "distribution over users; the count in brackets):", "",
              "| difference | R@50 | N@50 | " + " | ".join(f"N@50 {x}" for x in names) + " |",
              "|---|---|---|" + "---|" * len(names)]
    for a, b in COLD_PAIRS:
        cell = lambda m, g=None: _paired_cell(paired_difference(
            {k: v[m] for k, v in keyed[a].items() if g is None or group[k] == g},
            {k: v[m] for k, v in keyed[b].items() if g is None or group[k] == g}))
        lines.append(f"| {COLD_ROWS[a]} − {COLD_ROWS[b]} | {cell(0)} | {cell(1)} | "
                     + " | ".join(cell(1, g) for g in range(len(bounds))) + " |")
    if warm:
        lines += ["", "Warm reference: Table 1's refit runs of the same configurations (trained with every user; "
                  "all test users, mean over seeds " + ", ".join(map(str, next(iter(warm.values()))["seeds"])) + "):", "",
                  "| row | R@50 | N@50 | " + " | ".join(f"N@50 {x}" for x in names) + " |",
                  "|---|---|---|" + "---|" * len(names)]
        for config, w in warm.items():
            lines.append(f"| {'CIKGRec' if config == 'cikgrec' else COLD_ROWS[config]} (warm) | {w['recall@50']:.4f} | {w['ndcg@50']:.4f} | "
                         + " | ".join(f"{x:.4f}" for x in w["groups"]) + " |")
    absent = [c for c in COLD_MODELS if c not in (warm or {})]
    if absent:
        lines += ["", f"No warm reference for {', '.join(absent)}: Table 1's refit runs of the same seeds are not "
                  "all done."]
    lines += ["", "The held-out users are a uniform draw, so their numbers compare in expectation with Table 1's "
              "(the warm reference, overall and by the same groups). Caveat: the dataset's interest clusters "
              "were fit on all users, the held-out ones included, and its interest file came from the "
              "train.txt items that are folded in here."]
    lines += ["", "Training minutes per run (validation selection and refit): " + "; ".join(
        f"{c} {np.mean(v):.0f} (over {len(v)})" for c, v in minutes.items()) + ".", ""]
    return "\n".join(lines)


def warm_reference(base: dict, seeds: int, runs_dir, bounds: list) -> dict:
    """{config: {"seeds", "recall@50", "ndcg@50", "groups"}} of Table 1's refit runs (plan_runs,
    done_results) for the configurations of COLD_MODELS, over seeds FIRST_SEED.. (as many as the
    draws), means of the refit's test metrics and its N@50 by group; a configuration with a seed
    still missing, or groups on other bounds, is left out."""
    out, planned = {}, plan_runs("table1", base, seeds, runs_dir)
    for config in COLD_MODELS:
        done = [done_results(r) for r in planned if r.config == config]
        if not done or None in done:
            continue
        refits = [read_results(p)["refit"] for p in done]
        if any([list(b[:2]) for b in f.get("groups", {}).get("bounds", [])] != [list(b[:2]) for b in bounds] for f in refits):
            continue
        out[config] = {"seeds": [FIRST_SEED + i for i in range(seeds)],
                       **{m: float(np.mean([f["test"][m] for f in refits])) for m in ("recall@50", "ndcg@50")},
                       "groups": np.mean([f["groups"]["ndcg"] for f in refits], axis=0).tolist()}
    return out


def cold_start(base: dict, draws: int, runs_dir="runs", results_dir="results", dry_run=False, jobs: int = 1,
               prepare_only: bool = False) -> int:
    """The cold-start evaluation: prepare each draw's dataset, train what is missing (run_sweep),
    then fold in, test and write results/<dataset>/cold-start.md and cold-start.json (per-user
    metrics). Returns the number of failed runs (the table waits for every run)."""
    dataset = base.get("dataset") or Settings.dataset
    src_folder = dataset_folder(Path(base.get("data_dir") or Settings.data_dir) / dataset)
    check_results_dir(results_dir, dataset)  # before hours of training, not after
    src = load_dataset(src_folder, base.get("interests") or None, dataset)
    runs = plan_cold(base, draws, runs_dir)
    for draw in range(1, draws + 1):
        folder = Path(runs[3 * (draw - 1)].settings.data_dir) / dataset
        if not (folder / "train.txt").is_file() and not dry_run:
            write_cold_dataset(src_folder, folder, cold_users(src, draw))
            log(f"draw {draw}: {folder} (without {len(cold_users(src, draw))} held-out users)")
    if prepare_only:
        return 0
    failed = run_sweep(runs, dry_run, jobs)
    missing = [r for r in runs if done_results(r) is None]
    if failed or missing:
        log(f"cold-start: {len(missing)} runs still to do; the table waits for them")
        return failed
    users = [u for u in range(src.n_users) if len(src.train[u]) and len(src.test[u])]
    _, bounds = sparsity_groups([len(src.train[u]) for u in users])  # Table 1's groups
    results, minutes = {}, {}
    for draw in range(1, draws + 1):
        held = cold_users(src, draw)
        done = {r.config: r.out for r in runs[3 * (draw - 1): 3 * draw]}
        rows = cold_evaluate(src, held, done)
        results[FIRST_SEED + draw - 1] = {"held": held.tolist(), "counts": [len(src.train[u]) for u in held],
                                          "rows": {k: [[round(a, 6), round(b, 6)] for a, b in v] for k, v in rows.items()}}
        for config, path in done.items():
            r = read_results(path)
            minutes.setdefault(config, []).append(r["minutes"] + r["refit"]["seconds"] / 60)
    out = Path(results_dir) / dataset
    out.mkdir(parents=True, exist_ok=True)
    warm = warm_reference(base, draws, runs_dir, bounds)
    absent = [c for c in COLD_MODELS if c not in warm]
    if absent:
        log(f"note: no warm reference for {', '.join(absent)}: Table 1's refit runs of seeds {FIRST_SEED}.."
            f"{FIRST_SEED + draws - 1} are not all in {runs_dir} (`experiments.py tables --table table1 --seeds "
            f"{draws}` trains them)")
    page = cold_table(dataset, results, bounds, minutes, warm)
    write_json({"bounds": bounds, "draws": results, "warm": warm}, out / "cold-start.json")
    (out / "cold-start.md").write_text(page)
    print(page)
    return 0


CURVE_METRICS = ("recall@50", "ndcg@50", "recall@100", "ndcg@100")


def fidelity(run, results_dir="results") -> Path:
    """results/<dataset>/fidelity.md for a `--variant authors --select-on test` run: its test
    metrics at the epochs where the authors' run is known (AUTHORS_CURVE), and at its early stop
    beside the paper's Table 1. Labelled as the authors' protocol: selected on test, not an honest
    estimate. Raises DataError for another kind of run."""
    run = Path(run)
    r = read_results(run)
    s = r.get("settings", {})
    if r.get("selected_on") != "test" or s.get("variant") != "authors" or not r.get("history"):
        raise DataError(run, 0, "not the results of a --variant authors --select-on test run with its history")
    dataset = r["dataset"]
    check_results_dir(results_dir, dataset)
    theirs = AUTHORS_CURVE.get(dataset, {})
    by_epoch = {h["epoch"]: h["test"] for h in r["history"]}
    fmt = lambda vals: " | ".join("" if v is None else f"{v:.4f}" for v in vals)
    md = [f"# {dataset}: fidelity to the authors' code (the authors' protocol)", "",
          "`--variant authors --select-on test`: the authors' views, losses and protocol, with the test set "
          "evaluated after every epoch and the best test epoch kept, patience 10. This is the authors' "
          "protocol, selected on test: NOT an honest estimate (the honest counterpart is Table 1's refit). "
          f"Seed {r['seed']}; results file `{run}` (its `history` has every epoch).", "",
          "| epoch | ours R@50 | N@50 | R@100 | N@100 | authors' code R@50 | N@50 | R@100 | N@100 |",
          "|---|---|---|---|---|---|---|---|---|"] if theirs else [
          f"The authors' own per-epoch curve is known here for {', '.join(AUTHORS_CURVE)} only: {dataset} is "
          "compared with the paper's Table 1 alone."]
    for e in sorted(theirs):
        # epochs counted from 0, as in our history; REFERENCE.md's epoch numbers are read the same way
        ours = [by_epoch[e][m] for m in CURVE_METRICS] if e in by_epoch else [None] * 4
        md.append(f"| {e} | {fmt(ours)} | {fmt(theirs[e])} |")
    best = by_epoch[r["best_epoch"]]
    paper = PAPER["table1"].get(dataset, {}).get("cikgrec", {})
    stop = (r.get("stopped_by") or "early stop").split(":")[0]
    md += ["", f"At its {stop}: best test epoch {r['best_epoch']} of {r['epochs_run']} run, {r.get('minutes', 0):.0f} min.", "",
           "| | R@50 | N@50 | R@100 | N@100 |", "|---|---|---|---|---|",
           f"| ours, best test epoch | {fmt([best[m] for m in CURVE_METRICS])} |",
           f"| paper's Table 1 (mean of 10 seeds) | {fmt([paper.get(m) for m in CURVE_METRICS])} |"]
    folder = Path(results_dir) / dataset
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fidelity.md"
    path.write_text("\n".join(md) + "\n")
    return path


# ----------------------------------------------------------------------------------------------
# Figures (optional: matplotlib)
# ----------------------------------------------------------------------------------------------
def plots(datasets: list, results_dir="results") -> list:
    """make plots (optional, needs matplotlib): Fig. 3 as bars from each results/<dataset>/groups.json
    (test NDCG@50 per sparsity group, one bar per model, sample std as error bars) and the mask
    rate curves of Eq. 3 (exp and lin, alpha in {0.02, 0.1, 0.3}, omega 0.95, Lambda 150; the
    appendix's Fig. 6) in results/mask_schedules.png. Returns the PNG paths written. Raises
    SettingsError when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SettingsError("plots needs matplotlib, an optional extra: pip install matplotlib") from None
    written = []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    q = np.arange(0, 301)
    for alpha, color in ((0.02, "C0"), (0.1, "C1"), (0.3, "C2")):
        for schedule, style in (("exp", "-"), ("lin", "--")):
            ax.plot(q, [mask_rate(int(t), schedule, alpha, 0.95, 150) for t in q], style, color=color,
                    label=f"{schedule}, alpha={alpha}")
    ax.set(xlabel="epoch q", ylabel="mask rate p^q (Eq. 3)", title="Mask rate schedules (omega 0.95, Lambda 150)")
    ax.legend(fontsize=7)
    path = Path(results_dir) / "mask_schedules.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    for dataset in datasets:
        src = Path(results_dir) / dataset / "groups.json"
        if not src.is_file():
            log(f"note: no {src} (run a table first): no Fig. 3 for {dataset}")
            continue
        g = json.loads(src.read_text())
        if not g.get("rows"):
            log(f"note: {src} has no results yet: no Fig. 3 for {dataset}")
            continue
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.8 / max(len(g["rows"]), 1)
        for n, row in enumerate(g["rows"]):
            x = np.arange(len(g["groups"])) + (n - (len(g["rows"]) - 1) / 2) * width
            err = [e or 0.0 for e in row["std"]]
            ax.bar(x, row["mean"], width, yerr=err, label=f"{row['label']}, n={row['n']}")
        ax.set_xticks(np.arange(len(g["groups"])), [h.split(" (")[0] for h in g["groups"]])
        ax.set(xlabel="training items per user", ylabel="test NDCG@50", title=f"{dataset}: sparsity groups (Fig. 3)")
        ax.legend(fontsize=7)
        path = Path(results_dir) / dataset / "groups.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written

# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
JOBS_HELP = ("runs at once, each in its own process, its log in <out>.log (default 1): several runs on one "
             "GPU, or on a CPU one thread each (--threads 0 becomes cores / jobs)")


def check_jobs(jobs: int) -> int:
    if not 1 <= jobs <= 64:
        raise SettingsError(f"--jobs must be between 1 and 64, got {jobs}")
    return jobs


def build_parser() -> argparse.ArgumentParser:
    """The command line: tables, sweep, fidelity, explain, plots."""
    p = argparse.ArgumentParser(prog="experiments.py", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    tp = sub.add_parser("tables", allow_abbrev=False, help="run a paper table's configurations over seeds, write results/<dataset>/")
    add_settings_arguments(tp, skip=("seed", "out", "resume", "refit"), notes=HELP)  # the sweep sets these (refit: Table 1 only)
    tp.add_argument("--table", required=True, choices=list(TABLES))
    tp.add_argument("--seeds", type=int, default=1, help=f"number of seeds: {FIRST_SEED}, {FIRST_SEED + 1}, ...")
    tp.add_argument("--only", default=None, help="run only these configurations (comma separated; "
                    "the tables still show every finished run)")
    tp.add_argument("--runs-dir", default="runs")
    tp.add_argument("--results-dir", default="results")
    tp.add_argument("--dry-run", "--aggregate-only", dest="dry_run", action="store_true",
                    help="train nothing: list the runs still to do, aggregate the existing results")
    tp.add_argument("--jobs", type=int, default=1, help=JOBS_HELP)
    ep = sub.add_parser("explain", allow_abbrev=False, help="case study (Fig. 4): a user's interests, recommendations, paths")
    ep.add_argument("--run", required=True, help="results JSON of a finished run (its .pt beside it)")
    ep.add_argument("--user", type=int, required=True)
    ep.add_argument("--answers", default=None, help="llm_answers.jsonl (default: beside the run's interests)")
    ep.add_argument("--clusters", default=None, help="interest_clusters.tsv (default: beside the run's interests)")
    ep.add_argument("--data-dir", default=None, help="default: the run's")
    ep.add_argument("--top", type=int, default=10)
    sp = sub.add_parser("sweep", allow_abbrev=False, help="one setting at a time on validation (Fig. 5 style)")
    add_settings_arguments(sp, skip=("out", "resume", "refit", "select_on"), notes=HELP)
    sp.add_argument("--param", required=True, help="the setting to vary, e.g. lambda3, l2")
    sp.add_argument("--values", required=True, help="comma separated, e.g. 0.005,0.01,0.03")
    sp.add_argument("--param2", help="a second setting: the sweep is then the grid --values x --values2")
    sp.add_argument("--values2", help="the values of --param2, comma separated")
    sp.add_argument("--candidate", action="append", default=[],
                    help="a point off the grid, e.g. today's setting: tau=0.15,lambda3=0.01 (repeatable)")
    sp.add_argument("--rerun-early", type=int, default=0, metavar="M",
                    help=f"rerun with --min-epochs M each point whose best epoch is below {EARLY_EPOCH} "
                         "(its transient: not a measurement)")
    sp.add_argument("--runs-dir", default="runs")
    sp.add_argument("--results-dir", default="results")
    sp.add_argument("--dry-run", action="store_true", help="train nothing: list the runs left, tabulate the rest")
    sp.add_argument("--jobs", type=int, default=1, help=JOBS_HELP)
    cp = sub.add_parser("cold-start", allow_abbrev=False, help="hold out 10% of users, fold them in, test them (issue 20)")
    add_settings_arguments(cp, skip=("seed", "out", "resume", "refit"), notes=HELP)
    for action in cp._actions:  # accepted only to be refused with the reason (main), so not listed by -h
        if action.dest in COLD_FIXED:
            action.help = argparse.SUPPRESS
    cp.add_argument("--draws", type=int, default=3, help="held-out draws (each with its own model seed)")
    cp.add_argument("--runs-dir", default="runs")
    cp.add_argument("--results-dir", default="results")
    cp.add_argument("--dry-run", action="store_true", help="train nothing: list the runs left")
    cp.add_argument("--prepare-only", action="store_true", help="write the draws' datasets and stop")
    cp.add_argument("--jobs", type=int, default=1, help=JOBS_HELP)
    fp = sub.add_parser("fidelity", allow_abbrev=False, help="a --variant authors --select-on test run against the authors' curve")
    fp.add_argument("--run", required=True, help="results JSON of the run")
    fp.add_argument("--results-dir", default="results")
    pp = sub.add_parser("plots", allow_abbrev=False, help="Fig. 3 bars and the Eq. 3 mask-rate curves as PNG (needs matplotlib)")
    pp.add_argument("--dataset", nargs="+", default=list(DATASETS))
    pp.add_argument("--results-dir", default="results")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # as cikgrec's command line does
    return exit_code(lambda: command(args), "interrupted: the finished runs are kept and a run cut mid-way "
                     "continues from its checkpoint: the same tables (or sweep) command continues from it.", own=False)


def command(args: argparse.Namespace) -> int:
    """Run the command the parsed command line names; its exit code when it ends normally."""
    if args.command == "tables":
        base = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
                if getattr(args, f.name, None) is not None}
        if args.seeds < 1:
            raise SettingsError(f"--seeds must be at least 1, got {args.seeds}")
        return 1 if tables(args.table, base, args.seeds, args.runs_dir, args.results_dir, args.dry_run,
                           args.only, check_jobs(args.jobs)) else 0
    if args.command == "sweep":
        base = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
                if getattr(args, f.name, None) is not None}
        if bool(args.param2) != bool(args.values2):
            raise SettingsError("--param2 and --values2 go together")
        return 1 if sweep(args.param, args.values, base, args.runs_dir, args.results_dir, args.dry_run,
                          check_jobs(args.jobs), args.param2, args.values2, args.candidate, args.rerun_early) else 0
    if args.command == "cold-start":
        base = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
                if getattr(args, f.name, None) is not None}
        if args.draws < 1:
            raise SettingsError(f"--draws must be at least 1, got {args.draws}")
        fixed = [name for name in COLD_FIXED if name in base]
        if fixed:
            raise SettingsError(f"cold-start takes no {', '.join(option(n) for n in fixed)}: its rows are LightGCN, "
                                "SimGCL and CIKGRec as Table 1 trains them, selected on validation, with the "
                                "dataset's own interest file (the one the held-out users are removed from)")
        return 1 if cold_start(base, args.draws, args.runs_dir, args.results_dir, args.dry_run, check_jobs(args.jobs),
                               args.prepare_only) else 0
    if args.command == "fidelity":
        print(fidelity(args.run, args.results_dir).read_text())
        return 0
    if args.command == "explain":
        explain_command(args.run, args.user, args.answers, args.clusters, args.data_dir, args.top)
        return 0
    for path in plots(args.dataset, args.results_dir):
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
