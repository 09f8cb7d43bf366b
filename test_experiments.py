"""Tests of experiments.py: table aggregation, sweep resume, that each
variant flag removes its component, sparsity groups and the case study. Tiny fixtures only: no
test trains on a published dataset. Run with `python -m pytest -q test_experiments.py`.
"""
import json
import re
import statistics

import numpy as np
import pytest
import torch

import cikgrec as C
import cikgrec_cli as T
import experiments as E
from test_cikgrec import small_dataset, tiny_settings


def fake_results(path, test, settings=None, minutes=None, device="cpu", selected=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    made = T.definition(C.Settings(**settings)) if settings else 1  # as fit records it
    r = {"test": selected or test, "settings": settings or {}, "definition": made, "minutes": minutes, "provenance": {"device": device}}
    if (settings or {}).get("refit"):  # Table 1's runs: the refit's test is what the table shows
        r["refit"] = {"epochs": 1, "test": test, "seconds": 6.0}
    path.write_text(json.dumps(r))
    return path


def metrics(r50, r100, n50, n100):
    return {"recall@50": r50, "recall@100": r100, "ndcg@50": n50, "ndcg@100": n100}


# ---------------------------------------------------------------------------------------------
# Aggregation: mean and sample std over seeds, the paper's value and the difference
# ---------------------------------------------------------------------------------------------
def test_table_aggregation_mean_sample_std_and_paper(tmp_path):
    r50 = [0.17, 0.18, 0.19]
    refit = {"refit": True}  # Table 1 shows the refit's test metrics, the selected model's beside them
    files = {"cikgrec": [fake_results(tmp_path / f"c{i}.json", metrics(v, 0.25, 0.09, 0.10), refit, minutes=60 + 10 * i,
                                      device="cuda" if i == 2 else "cpu", selected=metrics(v - 0.02, 0.2, 0.08, 0.09))
                         for i, v in enumerate(r50)],
             "lightgcn": [fake_results(tmp_path / "l.json", metrics(0.16, 0.22, 0.08, 0.09), refit)]}
    rows = {r["config"]: r for r in E.aggregate_table("table1", "book-crossing", files)}
    c = rows["cikgrec"]
    assert c["n"] == 3
    assert c["recall@50"] == pytest.approx(0.18)
    assert c["recall@50_std"] == pytest.approx(statistics.stdev(r50))  # ddof = 1
    assert c["recall@50_std"] == pytest.approx(0.01)
    assert c["recall@50_paper"] == 0.1791
    assert c["recall@50_diff"] == pytest.approx(100 * (0.18 - 0.1791) / 0.1791)
    assert rows["lightgcn"]["n"] == 1 and rows["lightgcn"]["recall@50_std"] is None
    assert rows["simgcl"]["n"] == 0 and rows["simgcl"]["recall@50"] is None
    md, csv_path = E.write_table(list(rows.values()), "table1", "book-crossing", tmp_path / "results")
    text = md.read_text()
    assert c["minutes"] == pytest.approx(70.1) and rows["lightgcn"]["minutes"] is None  # with the refit's 6 s
    assert c["minutes_by_device"] == {"cpu": pytest.approx(65.1), "cuda": pytest.approx(80.1)}
    assert c["recall@50_selected"] == pytest.approx(0.16) and c["recall@50_selected_std"] == pytest.approx(0.01)
    assert "| CIKGRec | 3 | 65 (cpu), 80 (cuda) | 0.1800 ± 0.0100 | 0.1791 | +0.5 | 0.1600 ± 0.0100 |" in text
    assert "| LightGCN | 1 |  | 0.1600 ± - | 0.1607 | -0.4 | 0.1600 ± - |" in text and "R@50 refit" in text
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("config,model,n,minutes_per_run,minutes_per_run_by_device,recall@50_mean,"
                               "recall@50_std,recall@50_paper,recall@50_diff_pct")
    assert lines[1].startswith("cikgrec,CIKGRec,3,70.1,cpu:65.1;cuda:80.1,0.18,0.01,0.1791,0.502513,0.16,0.01,")


def test_ablation_and_variant_tables_have_the_papers_values():
    assert E.PAPER["ablation"]["ml1m"]["wo-cl"] == {"recall@100": 0.5583, "ndcg@100": 0.4480}
    assert "wo-dmr" not in E.PAPER["ablation"]["dbbook2014"]  # the paper prints no numbers
    assert E.PAPER["lightgcn-variants"]["book-crossing"]["lightgcn-ckg"]["ndcg@50"] == 0.0790
    assert E.PAPER["table1"]["dbbook2014"]["simgcl"]["recall@100"] == 0.5369
    for table in E.PAPER:  # every paper value belongs to a configuration of its table
        for by_config in E.PAPER[table].values():
            assert set(by_config) <= set(E.TABLES[table])


# ---------------------------------------------------------------------------------------------
# Sweep: settings per configuration, resume
# ---------------------------------------------------------------------------------------------
def test_run_settings_follow_the_command_line(tmp_path, monkeypatch):
    base = {"dataset": "book-crossing", "data_dir": "d"}
    assert E.plan_runs("table1", base, 1, tmp_path)[0].settings.variant == "authors"  # chosen on validation
    monkeypatch.setattr(E, "TUNED", {"book-crossing": {"lightgcn": {"l2": 1e-5}}})  # the paper variant below
    runs = {(r.config, r.seed): r for r in E.plan_runs("table1", base, 2, tmp_path)}
    assert len(runs) == 6
    s = runs[("lightgcn", 2025)].settings
    assert (s.model, s.graph, s.seed, s.layers, s.lr) == ("lightgcn", "cg", 2025, 4, 8e-4)  # dataset's
    assert s.l2 == 1e-5 != runs[("cikgrec", 2025)].settings.l2 == 5e-5  # LightGCN's L2 chosen on validation
    assert s.out == str(tmp_path / "book-crossing" / "table1" / "lightgcn-seed2025.json")
    assert runs[("simgcl", 2024)].settings.graph == "cg" and runs[("simgcl", 2024)].settings.tau == 0.15
    assert runs[("simgcl", 2024)].settings.min_epochs == 30 == s.min_epochs  # every Table 1 row: one protocol
    abl = {r.config: r.settings for r in E.plan_runs("ablation", base, 1, tmp_path)}
    assert not abl["wo-uik"].interest_nodes and abl["wo-uir"].lambda2 == 0 and abl["wo-cl"].lambda3 == 0
    assert abl["wo-dmr"].schedule == "fixed" and abl["linear"].schedule == "lin"
    assert abl["full"] == C.dataclasses.replace(runs[("cikgrec", 2024)].settings, out=abl["full"].out, refit=False)
    assert all(r.settings.refit for r in runs.values()) and not any(s.refit for s in abl.values())
    graphs = [r.settings.graph for r in E.plan_runs("lightgcn-variants", base, 1, tmp_path)]
    assert graphs == ["cg", "cig", "ckg", "cikg"]


def test_resume_skips_done_runs_and_continues_checkpoints(tmp_path, monkeypatch, capsys):
    small_dataset(tmp_path)
    base = {"dataset": "fx", "data_dir": str(tmp_path), "epochs": 1}
    runs = E.plan_runs("table1", base, 2, tmp_path / "runs")
    done = runs[1]  # cikgrec seed 2025
    fake_results(done.out, metrics(0.1, 0.2, 0.1, 0.2), C.dataclasses.asdict(done.settings))
    half = runs[2]  # lightgcn seed 2024: interrupted, a checkpoint is left
    T.output_paths(half.settings)[2].write_text("checkpoint")
    calls = []

    def spy(s):
        calls.append((s.model, s.seed, s.resume))
        fake_results(C.Path(s.out), metrics(0.1, 0.2, 0.1, 0.2), C.dataclasses.asdict(s))
        return {}

    monkeypatch.setattr(E, "fit", spy)
    assert E.run_sweep(runs) == 0
    assert calls == [("cikgrec", 2024, False), ("lightgcn", 2024, True), ("lightgcn", 2025, False),
                     ("simgcl", 2024, False), ("simgcl", 2025, False)]
    err = capsys.readouterr().err
    assert "1 of 6 runs already done; 5 to run" in err
    assert "run 1/5: cikgrec seed 2024" in err and "run 5/5: simgcl seed 2025" in err
    took = r"(\d+h\d\dm|\d+m\d\ds|\d+(\.\d)?s)"  # cikgrec.duration
    assert re.search(rf"run 2/5: lightgcn seed 2024 \({took} elapsed, ~{took} left\)", err)
    calls.clear()
    assert E.run_sweep(runs) == 0 and calls == []  # everything done: nothing runs again
    # the ablation's "full" is table1's "cikgrec" (same settings): reused, not trained again
    abl = E.plan_runs("ablation", base, 2, tmp_path / "runs")
    assert E.done_results(abl[0]) == runs[0].out
    E.run_sweep(abl, dry_run=True)
    assert calls == []
    # a `train` run at its default --out with the same settings is Table 1's CIKGRec row too
    more = E.plan_runs("table1", base, 3, tmp_path / "runs")
    assert E.done_results(more[2]) is None  # cikgrec seed 2026
    plain = tmp_path / "runs" / "fx-seed2026.json"
    fake_results(plain, metrics(0.1, 0.2, 0.1, 0.2), C.dataclasses.asdict(more[2].settings))
    assert E.done_results(more[2]) == plain
    # a run stopped by --max-minutes is not done (the sweep resumes it); its limit is no setting
    cut = {**C.dataclasses.asdict(more[2].settings), "max_minutes": 8.0}
    plain.write_text(json.dumps({"test": metrics(0.1, 0.2, 0.1, 0.2), "settings": cut,
                                 "stopped_by": "time limit: --max-minutes 8 reached after epoch 3"}))
    assert E.done_results(more[2]) is None
    fake_results(plain, metrics(0.1, 0.2, 0.1, 0.2), cut)  # finished within the limit: done
    assert E.done_results(more[2]) == plain
    fake_results(plain, metrics(0.1, 0.2, 0.1, 0.2),
                 C.dataclasses.asdict(C.dataclasses.replace(more[2].settings, lr=0.5)))
    assert E.done_results(more[2]) is None  # other settings: not the same run


def test_a_run_made_elsewhere_with_the_same_settings_is_reused(tmp_path, monkeypatch, capsys):
    # Table 1's CIKGRec is the lambda3 sweep's run at the default value; the L2 sweep's run at the
    # value TUNED gives Table 1's LightGCN is that row's run, whose refit is added to a copy
    small_dataset(tmp_path)
    monkeypatch.setattr(E, "TUNED", {"fx": {"lightgcn": {"l2": 1e-3}}})
    base, runs_dir = {"dataset": "fx", "data_dir": str(tmp_path), "epochs": 1}, tmp_path / "runs"
    table = {r.config: r for r in E.plan_runs("table1", base, 1, runs_dir)}
    assert table["lightgcn"].settings.l2 == 1e-3 and table["cikgrec"].settings.l2 == C.Settings.l2
    assert table["simgcl"].settings.l2 == C.Settings.l2
    given = {r.config: r for r in E.plan_runs("table1", {**base, "l2": 0.5}, 1, runs_dir)}
    assert given["lightgcn"].settings.l2 == 0.5  # an option given on the command line wins
    assert E.plan_runs("lightgcn-variants", base, 1, runs_dir)[0].settings.l2 == C.Settings.l2  # Table 1 only
    fake_results(table["cikgrec"].out, metrics(0.3, 0.4, 0.1, 0.2), C.dataclasses.asdict(table["cikgrec"].settings))
    (runs_dir / "fx" / "broken").mkdir()
    (runs_dir / "fx" / "broken" / "x-seed2024.json").write_text("{not json")  # no candidate, no error
    swept_base = {**base, "min_epochs": 30}  # a sweep holds off early stopping as every Table 1 row does
    lam = {r.config: r for r in E.plan_sweep("lambda3", [0.01, C.Settings.lambda3], swept_base, runs_dir)}
    assert E.done_results(lam["lambda3=0.03"]) == table["cikgrec"].out
    assert E.done_results(lam["lambda3=0.01"]) is None
    saved = json.loads(table["cikgrec"].out.read_text())  # the sweep's table shows the reused run
    saved.update(valid=metrics(0.25, 0.35, 0.12, 0.15), best_epoch=0, epochs_run=1)
    table["cikgrec"].out.write_text(json.dumps(saved))
    E.write_sweep("lambda3", list(lam.values()), tmp_path / "res")
    rows = json.loads((tmp_path / "res" / "fx" / "sweep-cikgrec-lambda3.json").read_text())["rows"]
    assert [(x["value"], x["recall@50"]) for x in rows] == [(0.03, 0.25)]
    l2 = {r.config: r for r in E.plan_sweep("l2", [1e-4, 1e-3], {**swept_base, "model": "lightgcn"}, runs_dir)}
    swept = fake_results(l2["l2=0.001"].out, metrics(0.2, 0.3, 0.1, 0.2), C.dataclasses.asdict(l2["l2=0.001"].settings))
    before = swept.read_text()
    lg = table["lightgcn"]
    assert E.done_results(lg) is None and E.done_results(lg, need_refit=False) == swept
    calls = []

    def spy(s):
        calls.append((s.out, s.refit, json.loads(C.Path(s.out).read_text())["settings"]["l2"]))
        return {}

    monkeypatch.setattr(E, "fit", spy)
    assert E.run_sweep([lg]) == 0
    assert calls == [(str(lg.out), True, 1e-3)] and swept.read_text() == before  # the refit goes to the copy
    assert f"{lg.out}: a copy of {swept}, the same run, to add its refit to" in capsys.readouterr().err
    rows = E.aggregate_table("table1", "fx", {})
    md, _ = E.write_table(rows, "table1", "fx", tmp_path / "res")
    assert "Tuned on validation (sweep-*.md in this folder), instead of the dataset's setting: LightGCN's l2 = 0.001." \
        in md.read_text()


def test_min_epochs_is_no_difference_when_the_early_stop_came_after_it():
    # --min-epochs M only holds off stopping before epoch M: a run (M = 0) whose patience ran out
    # at epoch 40 ran the epochs it would have run with M = 30, but not those of M = 60
    s0 = C.make_settings(dataset="fx")
    saved = {"settings": C.dataclasses.asdict(s0), "best_epoch": 30, "epochs_run": 41, "stopped_by": None}
    at = lambda m: T.settings_differ(saved, C.dataclasses.replace(s0, min_epochs=m))
    assert at(0) == [] and at(30) == [] and at(41) == [] and at(42) == ["min_epochs"] and at(60) == ["min_epochs"]
    cut = {**saved, "stopped_by": "time limit: --max-minutes 8 reached after epoch 40"}
    assert T.settings_differ(cut, C.dataclasses.replace(s0, min_epochs=30)) == ["min_epochs"]
    capped = {**saved, "best_epoch": 35}  # 41 epochs but 5 without improvement: the --epochs cap, not patience
    assert T.settings_differ(capped, C.dataclasses.replace(s0, min_epochs=30)) == ["min_epochs"]
    held = {**saved, "settings": {**saved["settings"], "min_epochs": 30}}  # its own M may have held a stop off
    assert T.settings_differ(held, s0) == ["min_epochs"]


def test_tables_command_aggregates_existing_results_only(tmp_path, monkeypatch, capsys):
    small_dataset(tmp_path)
    monkeypatch.setattr(E, "fit", lambda s: pytest.fail("--aggregate-only must not train"))
    monkeypatch.setattr(E, "results_groups", lambda p, d=None: {"bounds": [(1, 3, 4, 8), (4, 9, 2, 8)],
                                                                  "ndcg": [0.1, 0.3]})
    planned = E.plan_runs("table1", {"dataset": "fx", "data_dir": str(tmp_path)}, 2, tmp_path / "runs")
    for r, m in zip(planned[:2], (metrics(0.2, 0.3, 0.1, 0.2), metrics(0.4, 0.3, 0.1, 0.2))):
        fake_results(r.out, m, C.dataclasses.asdict(r.settings))
    rc = E.main(["tables", "--table", "table1", "--dataset", "fx", "--data-dir", str(tmp_path), "--seeds", "3",
                 "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res"), "--aggregate-only"])
    assert rc == 0
    text = (tmp_path / "res" / "fx" / "table1.md").read_text()
    assert "| CIKGRec | 2 |  | 0.3000 ± 0.1414 |" in text
    groups = (tmp_path / "res" / "fx" / "groups.md").read_text()
    assert "1-3 items (4 users, 8 interactions)" in groups and "| CIKGRec (table1) | 2 | 0.1000 ± 0.0000 |" in groups
    # found by a fresh user: groups.md showed Table 1's LightGCN seeds again as Table 4's CG row
    # (SAME_RUN) when Table 4's own file had other settings; each file now appears once
    lg = [r for r in planned if r.config == "lightgcn"]
    for r in lg:
        fake_results(r.out, metrics(0.2, 0.3, 0.1, 0.2), C.dataclasses.asdict(r.settings))
    cg = E.plan_runs("lightgcn-variants", {"dataset": "fx", "data_dir": str(tmp_path), "min_epochs": 30}, 1,
                     tmp_path / "runs")[0]
    fake_results(cg.out, metrics(0.2, 0.3, 0.1, 0.2), C.dataclasses.asdict(cg.settings))
    common = ["--dataset", "fx", "--data-dir", str(tmp_path), "--seeds", "3", "--runs-dir", str(tmp_path / "runs"),
              "--results-dir", str(tmp_path / "res"), "--dry-run"]
    assert E.main(["tables", "--table", "table1"] + common) == 0
    groups = (tmp_path / "res" / "fx" / "groups.md").read_text()
    assert "| LightGCN (table1) | 2 |" in groups and "LightGCN_CG" not in groups and "Made with" not in groups
    assert E.main(["tables", "--table", "lightgcn-variants", "--min-epochs", "30"] + common) == 0
    groups = (tmp_path / "res" / "fx" / "groups.md").read_text()
    assert "| LightGCN_CG (lightgcn-variants) | 1 |" in groups and "Made with `--min-epochs 30`" in groups
    assert "Made with `--min-epochs 30` on top of the dataset's settings." in (
        tmp_path / "res" / "fx" / "lightgcn-variants.md").read_text()
    with pytest.raises(SystemExit):  # the sweep sets --seed and --out itself: not options of tables
        E.main(["tables", "--table", "table1", "--dataset", "fx", "--seed", "1"])
    capsys.readouterr()
    # found by a fresh user: a --dry-run took any setting and any dataset name, and made results/nosuch/
    base = ["tables", "--table", "table1", "--data-dir", str(tmp_path), "--results-dir", str(tmp_path / "res2"),
            "--dry-run"]
    assert E.main(base + ["--dataset", "fx", "--lr", "nan"]) == 2
    assert "--lr must be a finite number" in capsys.readouterr().err
    assert E.main(base + ["--dataset", "nosuch"]) == 2
    assert "nosuch: dataset folder not found" in capsys.readouterr().err
    assert E.main(base + ["--dataset", "fx", "--seeds", "0"]) == 2 and not (tmp_path / "res2").exists()


@pytest.mark.parametrize("table, option, expect", [
    ("table1", ["--model", "simgcl"], "--model: the rows of table1 set --graph, --min-epochs, --model, --refit themselves"),
    ("table1", ["--min-epochs", "5"], "--min-epochs: the rows of table1 set"),
    ("ablation", ["--lambda3", "0"], "--lambda3: the rows of ablation set"),
    ("lightgcn-variants", ["--graph", "cg"], "--graph: the rows of lightgcn-variants set --graph, --model themselves"),
])
def test_tables_refuse_options_their_rows_set(tmp_path, capsys, table, option, expect):
    """Found by a fresh user: `tables --model simgcl` ran SimGCL in the row labelled CIKGRec."""
    small_dataset(tmp_path)
    args = ["tables", "--table", table, "--dataset", "fx", "--data-dir", str(tmp_path), "--seeds", "1",
            "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res"), "--dry-run"]
    assert E.main(args + option) == 2
    assert expect in capsys.readouterr().err
    assert E.main(["tables", "--table", "lightgcn-variants", "--min-epochs", "30"] + args[3:]) == 0  # the README's


def test_tables_refuse_a_results_file_made_with_other_settings(tmp_path, capsys):
    """Found in use: a quick --epochs 1 trial's files were later counted as the real sweep's."""
    small_dataset(tmp_path)
    args = ["tables", "--table", "table1", "--dataset", "fx", "--data-dir", str(tmp_path), "--seeds", "1",
            "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res"), "--dry-run"]
    trial = E.plan_runs("table1", {"dataset": "fx", "data_dir": str(tmp_path), "epochs": 1}, 1, tmp_path / "runs")
    fake_results(trial[0].out, metrics(0.2, 0.3, 0.1, 0.2), C.dataclasses.asdict(trial[0].settings))
    assert E.main(args + ["--epochs", "1"]) == 0 and "1 of 3 runs already done" in capsys.readouterr().err
    assert E.main(args) == 2
    err = capsys.readouterr().err
    assert "cikgrec-seed2024.json was made with other settings (epochs): delete it or give another --runs-dir" in err
    fake_results(trial[0].out, metrics(0.2, 0.3, 0.1, 0.2))  # no settings at all
    assert E.main(args) == 2 and " more): delete it" in capsys.readouterr().err
    # found by a fresh user: a run trained on other data (another train.txt) was counted as done
    fake_results(trial[0].out, metrics(0.2, 0.3, 0.1, 0.2), C.dataclasses.asdict(trial[0].settings))
    made = json.loads(trial[0].out.read_text())
    made["provenance"]["data_sha256"] = {"train.txt": "0" * 64}
    trial[0].out.write_text(json.dumps(made))
    assert E.main(args + ["--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert f"cikgrec-seed2024.json was trained on other data (the SHA-256 of {tmp_path / 'fx' / 'train.txt'} differs" in err
    made["provenance"]["data_sha256"] = {"train.txt": T._sha256(str(tmp_path / "fx" / "train.txt"))}
    trial[0].out.write_text(json.dumps(made))
    assert E.main(args + ["--epochs", "1"]) == 0 and "1 of 3 runs already done" in capsys.readouterr().err
    older = C.dataclasses.asdict(E.plan_runs("table1", {"dataset": "fx", "data_dir": str(tmp_path)}, 1,
                                             tmp_path / "runs")[0].settings)
    del older["min_epochs"]  # made before --min-epochs existed: counts as its default, 0
    fake_results(trial[0].out, metrics(0.2, 0.3, 0.1, 0.2), older)
    assert E.main(args) == 2 and "other settings (min_epochs)" in capsys.readouterr().err  # Table 1 holds off 30
    made = json.loads(trial[0].out.read_text())
    made.update(best_epoch=50, epochs_run=61)  # ... but its early stop came after epoch 30: the same run
    made["refit"]["epochs"] = 51
    trial[0].out.write_text(json.dumps(made))
    assert E.main(args) == 0 and "1 of 3 runs already done" in capsys.readouterr().err
    older["min_epochs"] = 40
    fake_results(trial[0].out, metrics(0.2, 0.3, 0.1, 0.2), older)
    assert E.main(args) == 2 and "other settings (min_epochs)" in capsys.readouterr().err
    # another table run with other settings is only aggregated without that file, not refused
    other = ["tables", "--table", "lightgcn-variants", "--dataset", "fx", "--data-dir", str(tmp_path), "--seeds", "1",
             "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res"), "--dry-run"]
    assert E.main(other + ["--min-epochs", "30"]) == 0 and "0 of 4 runs already done" in capsys.readouterr().err


OK = b'"test": {"recall@50": 0.5, "recall@100": 0.5, "ndcg@50": 0.1, "ndcg@100": 0.2}'  # the test metrics of a results file


@pytest.mark.parametrize("content, expect", [
    (b'{"test": {"recall@50": 0.1', "not a results JSON (JSONDecodeError"),
    (b"[]", 'not the results JSON of a run (no "test" metrics)'),
    (b'{"settings": {}}', 'not the results JSON of a run (no "test" metrics)'),
    (b"\xff\xfe", "not a results JSON (JSONDecodeError"),
    (b'{"test": {"recall@50": 0.5, "ndcg@50": 0.1, "ndcg@100": 0.2}}', "no test recall@100 in it"),
    (b'{"test": {"recall@50": "0.5", "recall@100": 0.5, "ndcg@50": 0.1, "ndcg@100": 0.2}}',
     "test recall@50 = '0.5' is not a finite number"),
    (b'{"test": {"recall@50": NaN, "recall@100": 0.5, "ndcg@50": 0.1, "ndcg@100": 0.2}}',
     "test recall@50 = nan is not a finite number"),
    (b'{"test": {"recall@50": 0.5, "recall@100": 0.5, "ndcg@50": 0.1, "ndcg@100": 0.2}, "minutes": "abc"}',
     "minutes = 'abc' is not a finite number"),
    (b'{"test": {"recall@50": 7.5, "recall@100": 0.5, "ndcg@50": 0.1, "ndcg@100": 0.2}}',
     "test recall@50 = 7.5 is not between 0 and 1"),
    (b'{"test": {"recall@50": 0.5, "recall@100": 0.5, "ndcg@50": -0.1, "ndcg@100": 0.2}}',
     "test ndcg@50 = -0.1 is not between 0 and 1"),
    (b'{"test": {"recall@50": 0.5, "recall@100": 0.5, "ndcg@50": 0.1, "ndcg@100": 0.2}, "provenance": []}',
     "provenance is not an object"),
    # found by a fresh user: a hand-edited epoch or setting became a traceback or a wrong refit
    (b"{%s, \"best_epoch\": \"5\"}" % OK, "best_epoch = '5' is not an epoch (a whole number from 0)"),
    (b"{%s, \"best_epoch\": 4.5}" % OK, "best_epoch = 4.5 is not an epoch (a whole number from 0)"),
    (b"{%s, \"best_epoch\": -1}" % OK, "best_epoch = -1 is not an epoch (a whole number from 0)"),
    (b"{%s, \"best_epoch\": 500, \"epochs_run\": 10}" % OK, "best_epoch 500 is not below epochs_run 10"),
    (b"{%s, \"best_epoch\": 2, \"refit\": {%s, \"epochs\": 999, \"seconds\": 1, \"model_sha256\": \"ab\"}}"
     % (OK, OK), "refit epochs = 999, not best_epoch + 1 = 3"),
    (b"{%s, \"best_epoch\": 2, \"refit\": {%s, \"epochs\": \"3\", \"seconds\": 1}}" % (OK, OK),
     "refit is not a finished refit"),
    (b"{%s, \"settings\": {\"dim\": \"64\"}}" % OK, "settings dim = '64' is not a whole number"),
    (b"{%s, \"settings\": {\"lr\": true}}" % OK, "settings lr = True is not a finite number"),
])
def test_tables_name_a_broken_results_file(tmp_path, capsys, content, expect):
    """Found by a fresh user: each was a traceback or a wrong number ("0.5", "nan") in a table."""
    small_dataset(tmp_path)
    bad = tmp_path / "runs" / "fx" / "table1" / "cikgrec-seed2024.json"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(content)
    args = ["tables", "--table", "table1", "--dataset", "fx", "--data-dir", str(tmp_path), "--seeds", "1",
            "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res"), "--dry-run"]
    assert E.main(args) == 2
    err = capsys.readouterr().err
    assert f"{bad}: {expect}" in err and err.count("\n") == 1, err


def test_tables_refuse_a_results_dir_they_cannot_write(tmp_path, capsys):
    small_dataset(tmp_path)
    args = ["tables", "--table", "table1", "--dataset", "fx", "--data-dir", str(tmp_path), "--seeds", "1",
            "--runs-dir", str(tmp_path / "runs"), "--dry-run", "--results-dir"]
    (tmp_path / "afile").write_text("x")
    assert E.main(args + [str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert f"--results-dir {tmp_path / 'afile'}: {tmp_path / 'afile'} is a file, not a folder" in err, err
    assert err.count("\n") == 1
    # found by a fresh user: a --dry-run without results left an empty results folder behind
    assert E.main(args[:-1] + ["--results-dir", str(tmp_path / "new")]) == 0 and not (tmp_path / "new").exists()
    # found by a fresh user: root passed the os.access check for /sys and /proc, and the sweep then
    # ended in a traceback after training (the tests run as root: /proc refuses even root)
    assert E.main(args + ["/proc/cikgrec-test/res"]) == 2
    assert "--results-dir /proc/cikgrec-test/res: cannot write into /proc (" in capsys.readouterr().err
    # found by a fresh user: fidelity --results-dir <the data folder> wrote into the dataset's folder
    assert E.main(args + [str(tmp_path)]) == 2
    assert f"--results-dir {tmp_path}: {tmp_path / 'fx'} is a dataset folder" in capsys.readouterr().err


def test_a_refit_cut_by_max_minutes_counts_as_cut_and_ctrl_c_names_the_sweep(tmp_path, monkeypatch, capsys):
    """Found by a fresh user: --max-minutes did not limit the refit; now a refit it cuts leaves
    the run unfinished for the sweep. And Ctrl-C in a sweep said to use --resume, which tables
    does not take."""
    small_dataset(tmp_path)
    base = {"dataset": "fx", "data_dir": str(tmp_path), "epochs": 2, "dim": 8}
    run = next(r for r in E.plan_runs("table1", base, 1, str(tmp_path / "runs")) if r.config == "cikgrec")
    assert run.settings.refit
    selected = {"test": {m: 0.1 for m in T.HEADLINE_METRICS}, "best_epoch": 0, "stopped_by": None}
    monkeypatch.setattr(E, "fit", lambda s: selected)
    assert E.train_planned(run) is True  # no refit yet: not done
    monkeypatch.setattr(E, "fit", lambda s: {**selected, "refit": {"epochs": 1}})
    assert E.train_planned(run) is False

    def interrupted(s):
        raise T.Interrupted("interrupted in epoch 3: ... the same command with --resume continues from it")
    monkeypatch.setattr(E, "fit", interrupted)
    args = ["tables", "--table", "table1", "--dataset", "fx", "--data-dir", str(tmp_path), "--seeds", "1",
            "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res")]
    assert E.main(args) == 130
    err = capsys.readouterr().err
    assert "the same tables (or sweep) command continues from it" in err and "--resume" not in err, err


def test_tables_without_any_results_leave_the_committed_tables(tmp_path, capsys):
    small_dataset(tmp_path)
    committed = tmp_path / "res" / "fx" / "table1.md"
    fake_results(committed, {})  # stands for a table committed from earlier runs
    before = committed.read_text()
    assert E.main(["tables", "--table", "table1", "--dataset", "fx", "--data-dir", str(tmp_path), "--seeds", "3",
                   "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res"), "--dry-run"]) == 0
    assert committed.read_text() == before and sorted(p.name for p in committed.parent.iterdir()) == ["table1.md"]
    assert "left as it is" in capsys.readouterr().err


def test_tables_only_runs_the_named_configurations(tmp_path, monkeypatch, capsys):
    small_dataset(tmp_path)
    calls = []

    def spy(s):
        calls.append((s.model, s.seed))
        fake_results(C.Path(s.out), metrics(0.1, 0.2, 0.1, 0.2), C.dataclasses.asdict(s))
        return {}

    monkeypatch.setattr(E, "fit", spy)
    monkeypatch.setattr(E, "results_groups", lambda p, d=None: {"bounds": [(1, 9, 8, 20)], "ndcg": [0.1]})
    args = ["tables", "--table", "table1", "--dataset", "fx", "--data-dir", str(tmp_path), "--seeds", "2",
            "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res")]
    assert E.main(args + ["--only", "simgcl, lightgcn"]) == 0
    assert calls == [("lightgcn", 2024), ("lightgcn", 2025), ("simgcl", 2024), ("simgcl", 2025)]
    table = (tmp_path / "res" / "fx" / "table1.md").read_text()
    assert "| LightGCN | 2 |" in table and "| CIKGRec | 0 |" in table  # the table shows every row
    capsys.readouterr()
    assert E.main(args + ["--only", "cikgrec,lightgnc"]) == 2 and len(calls) == 4
    assert "--only lightgnc: table1 has the configurations cikgrec, lightgcn, simgcl" in capsys.readouterr().err
    assert E.main(args + ["--only", " , "]) == 2 and len(calls) == 4  # found by a fresh user: it ran them all
    assert "--only ' , ' names no configuration: table1 has cikgrec, lightgcn, simgcl" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Each variant flag removes its component
# ---------------------------------------------------------------------------------------------
def trainer_for(tmp_path, **kw):
    s = tiny_settings(tmp_path, **kw)
    return C.Trainer(s, *C.read_data(s), torch.device("cpu"))


def test_simgcl_infonce_is_in_batch_over_distinct_users_and_items(tmp_path):
    """SimGCL (Yu et al. 2022) contrasts the batch's distinct users (items) with each other, not
    with every user as CIKGRec's Eq. 9 does. With eps = 0 both views are the plain LightGCN
    output, so the term is a by-hand softmax over the batch's cosine similarities."""
    small_dataset(tmp_path)
    t = trainer_for(tmp_path, model="simgcl", eps=0.0, lambda1=0.0, l2=0.0, lambda3=1.0, tau=0.5)
    u, i, j = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 4, 4, 1]), torch.tensor([5, 5, 5, 5])
    loss, parts = t.model.loss((u, i, j), 0.0)
    z = t.model.encode(t.model.graphs.views[0].adjacency()).detach()

    def by_hand(rows):
        a = torch.nn.functional.normalize(z[rows], dim=1)
        logits = a @ a.t() / 0.5
        return float(-(torch.diag(logits) - torch.logsumexp(logits, dim=1)).mean())

    expect = by_hand(torch.tensor([0, 1, 2])) + by_hand(t.model.e0 + torch.tensor([0, 1, 4]))
    assert float(parts["cl"]) == pytest.approx(expect, rel=1e-5)
    assert float(loss) == pytest.approx(expect, rel=1e-5)  # BPR and L2 weighted 0


def test_without_cl_has_no_contrastive_term(tmp_path):
    small_dataset(tmp_path)
    t = trainer_for(tmp_path, lambda3=0.0)
    assert not t.model.graphs.views and "cl" not in t.train_epoch(0)
    assert "cl" in trainer_for(tmp_path).train_epoch(0)


def test_without_uir_and_without_uik(tmp_path):
    small_dataset(tmp_path)
    t = trainer_for(tmp_path, lambda2=0.0)
    assert t.model.graphs.recon is None and "rec" not in t.train_epoch(0)
    s = tiny_settings(tmp_path, interest_nodes=False)
    ds, tr, va = C.read_data(s)
    assert ds.n_interests == 0 and len(ds.interest_edges) == 0 and ds.interest_file == ""
    t = C.Trainer(s, ds, tr, va, torch.device("cpu"))
    assert t.model.graphs.recon is None and t.model.graphs.main.n_edges == len(C.cikg_edges(ds, tr, ("ui", "kg")))
    assert C.node_counts(ds)[2] == ds.n_users + ds.n_entities  # no interest node at all
    parts = t.train_epoch(0)
    assert "rec" not in parts and "cl" in parts


def test_mask_schedule_flags(tmp_path):
    small_dataset(tmp_path)
    t = trainer_for(tmp_path, schedule="fixed")
    assert t.train_epoch(0)["mask_rate"] == t.s.omega
    t = trainer_for(tmp_path, schedule="lin")
    assert t.train_epoch(1)["mask_rate"] == pytest.approx(C.mask_rate(1, "lin", t.s.alpha, t.s.omega, 5))


@pytest.mark.parametrize("graph, allowed", [("cg", {"ui"}), ("cig", {"ui", "uj"}), ("ckg", {"ui", "kg"}),
                                            ("cikg", {"ui", "uj", "kg"})])
def test_graph_flag_keeps_only_its_edges(tmp_path, graph, allowed):
    small_dataset(tmp_path)
    t = trainer_for(tmp_path, model="lightgcn", graph=graph)
    assert not t.model.graphs.views and t.model.graphs.recon is None
    e0, j0, n = C.node_counts(t.ds)
    kind = lambda a: "u" if a < e0 else ("e" if a < j0 else "j")
    a = t.model.graphs.main.adjacency().to_dense().numpy()
    found = set()
    for x, y in zip(*np.nonzero(a)):
        if x < y:
            found.add({"ue": "ui", "ee": "kg", "uj": "uj"}["".join(sorted(kind(x) + kind(y), key="uej".index))])
    assert found == allowed


# ---------------------------------------------------------------------------------------------
# Sparsity groups (Fig. 3)
# ---------------------------------------------------------------------------------------------
def test_sparsity_groups_equal_interactions():
    counts = np.array([1] * 40 + [2] * 20 + [5] * 8 + [10] * 4)  # 40 interactions per count level
    group, bounds = T.sparsity_groups(counts)
    assert bounds == [(1, 1, 40, 40), (2, 2, 20, 40), (5, 5, 8, 40), (10, 10, 4, 40)]
    assert (group[:40] == 0).all() and (group[-4:] == 3).all()
    group, bounds = T.sparsity_groups(np.array([3, 3, 3]))  # one count level: one group
    assert bounds == [(3, 3, 3, 9)] and (group == 0).all()


def test_group_ndcg_matches_the_whole(tmp_path):
    small_dataset(tmp_path)
    t = trainer_for(tmp_path)
    g = T.group_ndcg(t)
    n_users = [b[2] for b in g["bounds"]]
    assert sum(n_users) == len(t.eval_sets["test"][0])
    whole = t.evaluate("test")["ndcg@50"]
    assert sum(n * v for n, v in zip(n_users, g["ndcg"])) / sum(n_users) == pytest.approx(whole, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Case study (Fig. 4)
# ---------------------------------------------------------------------------------------------
def test_explain_gives_no_interest_path_for_a_model_without_interest_nodes(tmp_path, capsys):
    """Found by a fresh user: a LightGCN on the user-item graph was shown paths through interest
    nodes whose embeddings it never trained."""
    small_dataset(tmp_path)
    s = tiny_settings(tmp_path, model="lightgcn", graph="cg")
    T.fit(s)
    capsys.readouterr()
    ex = E.explain_command(s.out, 0)
    out = capsys.readouterr().out
    assert ex["recommendations"] and all(rec["path"] is None for rec in ex["recommendations"])
    assert "(not in this model's graph)" in out and "no path: this model's graph has no interest nodes" in out
    assert "path: user" not in out


def test_explain_prints_a_path_that_exists_in_the_graph(tmp_path, capsys):
    folder = small_dataset(tmp_path)
    (tmp_path / "interests").mkdir()
    (tmp_path / "interests" / "llm_answers.jsonl").write_text(
        json.dumps({"user": 0, "answer": "comic fiction, dark saga"}) + "\n")
    (tmp_path / "interests" / "interest_clusters.tsv").write_text(
        "cluster\tusers\tinterest_id\ttop_terms\texample_phrases\n0\t3\t8\tcomic fiction, comic\tcomic fiction\n"
        "1\t3\t9\tdark saga\tdark saga\n2\t2\t10\tspace\tspace opera\n3\t1\tdropped: one user\tx\tx\n")
    (tmp_path / "interests" / "user_interest_clustered.txt").write_text(
        (folder / "user_interest_clustered.txt").read_text())
    s = tiny_settings(tmp_path, interests=str(tmp_path / "interests" / "user_interest_clustered.txt"))
    r = T.fit(s)
    capsys.readouterr()
    ex = E.explain_command(s.out, 0)
    out = capsys.readouterr().out
    assert "item 0: Item 0" in out  # training item titles from item_list.txt's DBpedia URIs
    assert "interest 8: comic fiction, comic" in out and "LLM answer: comic fiction, dark saga" in out
    # user 0 (train 0 1 2 3, interest 8) can be recommended items 4 and 5 only; users 1 and 6 share
    # interest 8 and have item 4 in train.txt, nobody with interest 8 has item 5
    assert sorted(rec["item"] for rec in ex["recommendations"]) == [4, 5]
    paths = re.findall(r"path: user (\d+) -> interest (\d+) -> user (\d+) -> item (\d+)", out)
    assert paths, out
    trainer, _ = T.load_trained(s.out)
    a = trainer.model.graphs.main.adjacency().to_dense().numpy()
    e0, j0, _ = C.node_counts(trainer.ds)
    for u, j, v, i in (tuple(map(int, p)) for p in paths):
        j_node = j0 + int(np.flatnonzero(trainer.ds.interest_ids == j)[0])
        assert a[u, j_node] > 0 and a[j_node, v] > 0 and a[v, e0 + i] > 0 and u != v
        assert i in trainer.train[v]
    assert re.search(r"item 5.*\n\s+no path through a shared interest", out)
    with pytest.raises(C.SettingsError, match="--user"):
        E.explain(trainer, 99)
    assert r["test"]  # the run is a real tiny training, not a mock
    assert E.main(["explain", "--run", str(tmp_path / "none.json"), "--user", "0"]) == 2
    # found by a fresh user: each of these was a traceback
    run = C.Path(s.out)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    (tmp_path / "bad.pt").write_bytes(run.with_suffix(".pt").read_bytes())
    no_settings = tmp_path / "nos.json"
    no_settings.write_text("{}")
    (tmp_path / "nos.pt").write_bytes(b"")
    truncated = tmp_path / "cut.json"  # a model file cut short (its SHA-256 recorded as it is)
    (tmp_path / "cut.pt").write_bytes(run.with_suffix(".pt").read_bytes()[:100])
    cut = json.loads(run.read_text())
    cut["provenance"]["model_sha256"] = T._sha256(str(tmp_path / "cut.pt"))
    truncated.write_text(json.dumps(cut))
    unchecked = tmp_path / "old.json"  # no model_sha256: whether the model is the run's cannot be checked
    del cut["provenance"]["model_sha256"]
    unchecked.write_text(json.dumps(cut))
    (tmp_path / "old.pt").write_bytes(run.with_suffix(".pt").read_bytes())
    replaced = tmp_path / "rep.json"  # found by a fresh user: another run's model of the same shape
    replaced.write_text(run.read_text())
    (tmp_path / "rep.pt").write_bytes(run.with_suffix(".pt").read_bytes()[:100])
    other = tmp_path / "other"  # the same data without its interest file: the model does not fit
    other.mkdir()
    import shutil
    shutil.copytree(folder, other / "fx")
    cases = [(["--run", str(run.with_suffix(".pt"))], "give the run's results JSON"),
             (["--run", str(bad_json)], "bad.json: not a results JSON (JSONDecodeError"),
             (["--run", str(no_settings)], 'nos.json: not the results JSON of a run (no "test" metrics)'),
             (["--run", str(truncated)], "cut.pt: cannot load the model for this data"),
             (["--run", str(unchecked)], "old.json: its provenance (the SHA-256 of its model and data files) is missing"),
             (["--run", str(replaced)], "rep.pt: not the model this run saved (SHA-256"),
             (["--run", str(run), "--data-dir", str(tmp_path / "nosuch")], "not found"),
             (["--run", str(run), "--answers", str(tmp_path / "missing.jsonl")], "missing.jsonl: file not found"),
             (["--run", str(run), "--answers", str(tmp_path)], "is a folder, not a file"),
             (["--run", str(run), "--clusters", str(tmp_path / "missing.tsv")], "missing.tsv: file not found"),
             (["--run", str(run), "--top", "-3"], "--top must be at least 1, got -3"),
             (["--run", str(run), "--answers", str(bad_json)], "bad.json: no line of llm_interests.py's answers"),
             (["--run", str(run), "--clusters", str(bad_json)], "bad.json: no kept cluster row")]
    edited = tmp_path / "edited"  # found by a fresh user: explained on other data without a word
    shutil.copytree(folder, edited / "fx")
    (edited / "fx" / "train.txt").write_text((folder / "train.txt").read_text().replace("0 0 1", "0 0", 1))
    cases.append((["--run", str(run), "--data-dir", str(edited)],
                  f"fx.json: the run was trained on other data (the SHA-256 of {edited / 'fx' / 'train.txt'} differs"))
    s_no = C.dataclasses.replace(s, interests="", out=str(tmp_path / "noint.json"))
    T.fit(s_no)
    (other / "fx" / "user_interest_clustered.txt").unlink()
    cases.append((["--run", s_no.out, "--data-dir", str(other)],
                  "noint.json: the run was trained on other data (the SHA-256 of user_interest_clustered.txt (not found)"))
    for args, expect in cases:
        capsys.readouterr()
        assert E.main(["explain", "--user", "0"] + args) == 2, args
        err = capsys.readouterr().err
        assert expect in err and err.count("\n") <= 2, (args, err)


def test_tables_end_to_end_on_the_fixture(tmp_path, capsys):
    small_dataset(tmp_path)
    tiny = ["--dim", "8", "--layers", "2", "--enc-layers", "1", "--batch-size", "4", "--mask-epochs", "5",
            "--eval-batch", "3", "--epochs", "1", "--lr", "0.01"]
    args = ["tables", "--table", "table1", "--dataset", "fx", "--data-dir", str(tmp_path), "--seeds", "1",
            "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res")] + tiny
    assert E.main(args) == 0
    runs = tmp_path / "runs" / "fx" / "table1"
    assert sorted(p.name for p in runs.glob("*.json") if "groups" not in p.name) == [
        "cikgrec-seed2024.json", "lightgcn-seed2024.json", "simgcl-seed2024.json"]
    saved = json.loads((runs / "simgcl-seed2024.json").read_text())["settings"]
    assert (saved["model"], saved["graph"], saved["dim"], saved["seed"]) == ("simgcl", "cg", 8, 2024)
    cik_results = json.loads((runs / "cikgrec-seed2024.json").read_text())
    assert [b[2] for b in cik_results["groups"]["bounds"]]  # fit keeps Fig. 3's groups in the results
    groups = (tmp_path / "res" / "fx" / "groups.md").read_text()
    assert all(f"| {m} (table1) | 1 |" in groups for m in ("CIKGRec", "LightGCN", "SimGCL"))
    assert "| SimGCL | 1 |" in (tmp_path / "res" / "fx" / "table1.md").read_text()
    g = json.loads((tmp_path / "res" / "fx" / "groups.json").read_text())  # what make plots draws
    cik = cik_results["refit"]["groups"]["ndcg"]  # Fig. 3 uses the refit model where there is one
    assert g["rows"][0]["label"] == "CIKGRec (table1)" and g["rows"][0]["mean"] == pytest.approx(cik)
    assert g["rows"][0]["std"] == [None] * len(cik) and len(g["groups"]) == len(cik)
    capsys.readouterr()
    older = json.loads((runs / "lightgcn-seed2024.json").read_text())  # an older results file
    del older["groups"], older["refit"]["groups"]  # (no groups in it), copied without its model: left out of groups.md
    (runs / "lightgcn-seed2024.json").write_text(json.dumps(older))
    (runs / "lightgcn-seed2024.pt").unlink()
    (runs / "lightgcn-seed2024.refit.pt").unlink()
    assert not (runs / "lightgcn-seed2024.groups.json").exists()
    (runs / "cikgrec-seed2024.pt").unlink()  # a new one without its model (e.g. from a GPU lease) keeps its groups
    assert E.main(args) == 0  # everything done: nothing is trained again
    err = capsys.readouterr().err
    assert "3 of 3 runs already done; 0 to run" in err and "groups.md leaves out" in err
    groups = (tmp_path / "res" / "fx" / "groups.md").read_text()
    assert "LightGCN (table1)" not in groups and "| CIKGRec (table1) | 1 |" in groups


def test_jobs_train_runs_at_once_with_the_numbers_of_one_at_a_time(tmp_path, capsys):
    small_dataset(tmp_path)
    tiny = ["--dim", "8", "--layers", "2", "--enc-layers", "1", "--batch-size", "4", "--mask-epochs", "5",
            "--eval-batch", "3", "--epochs", "2", "--lr", "0.01", "--threads", "1"]

    def table(runs_dir, *more):
        return ["tables", "--table", "table1", "--only", "cikgrec,lightgcn", "--dataset", "fx", "--data-dir",
                str(tmp_path), "--seeds", "1", "--runs-dir", str(tmp_path / runs_dir), "--results-dir",
                str(tmp_path / "res")] + tiny + list(more)
    assert E.main(table("one")) == 0
    assert E.main(table("two", "--jobs", "2")) == 0
    err = capsys.readouterr().err
    assert "2 runs, 2 at a time; each run's progress is in its <out>.log" in err
    assert re.search(r"run 2/2 done: (cikgrec|lightgcn) seed 2024 \(", err)
    for name in ("cikgrec-seed2024", "lightgcn-seed2024"):
        one, two = (json.loads((tmp_path / d / "fx" / "table1" / f"{name}.json").read_text()) for d in ("one", "two"))
        assert two["test"] == one["test"] and two["refit"]["test"] == one["refit"]["test"]
        assert [h["bpr"] for h in two["history"]] == [h["bpr"] for h in one["history"]]
        assert "refit epoch" in (tmp_path / "two" / "fx" / "table1" / f"{name}.log").read_text()
    assert E.main(table("two", "--jobs", "0")) == 2 and "--jobs must be between 1 and 64, got 0" in capsys.readouterr().err


def test_plots_is_optional_and_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    real_import = __import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("builtins.__import__", no_matplotlib)
    assert E.main(["plots", "--results-dir", str(tmp_path)]) == 2
    assert "plots needs matplotlib, an optional extra: pip install matplotlib" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_plots_skip_a_dataset_without_group_results(tmp_path, capsys):
    """Found by a fresh user: an empty groups.json gave a blank groups.png and a matplotlib warning."""
    pytest.importorskip("matplotlib")
    (tmp_path / "fx").mkdir()
    (tmp_path / "fx" / "groups.json").write_text(json.dumps({"dataset": "fx", "groups": [], "rows": []}))
    assert E.main(["plots", "--dataset", "fx", "--results-dir", str(tmp_path)]) == 0
    assert not (tmp_path / "fx" / "groups.png").exists()
    assert "has no results yet: no Fig. 3 for fx" in capsys.readouterr().err


def test_tables_columns_exist_whatever_ks(tmp_path):
    """Found by a fresh user: a sweep with --ks 20 trained, then failed on 'recall@100'."""
    small_dataset(tmp_path)
    r = T.fit(tiny_settings(tmp_path, ks="20", epochs=1))
    assert {"recall@20", "recall@50", "recall@100", "ndcg@50", "ndcg@100"} <= set(r["test"])


@pytest.mark.parametrize("cache", ['{"bounds": [[1, 3, 4, 8]]', '{"bounds": [[1, 3, 4, 8]], "ndcg": []}',
                                   '{"bounds": [[1, 3, 4, 8], [4, 9, 2, 8]], "ndcg": [0.1]}', "[]"])
def test_a_broken_groups_cache_is_named_not_a_traceback(tmp_path, cache):
    run = fake_results(tmp_path / "r.json", metrics(0.1, 0.2, 0.1, 0.2))  # older file: no "groups"
    (tmp_path / "r.groups.json").write_text(cache)
    with pytest.raises(C.DataError, match="r.groups.json: not"):
        E.results_groups(run)


def test_groups_md_leaves_out_a_run_with_other_groups(tmp_path, monkeypatch, capsys):
    """Found by a fresh user: a groups file with fewer groups than the others was an IndexError."""
    two = {"bounds": [[1, 3, 4, 8], [4, 9, 2, 8]], "ndcg": [0.1, 0.3]}
    one = {"bounds": [[1, 9, 6, 16]], "ndcg": [0.2]}
    monkeypatch.setattr(E, "results_groups", lambda p, d=None: two if p.endswith("a") else one)
    path = E.write_groups("fx", {("table1", "cikgrec"): ["a", "b"]}, tmp_path)
    assert "| CIKGRec (table1) | 1 | 0.1000 ± - | 0.3000 ± - |" in path.read_text()
    assert "groups.md leaves out b: its groups differ from the other runs'" in capsys.readouterr().err


def test_an_interrupted_sweep_says_how_to_continue(tmp_path, monkeypatch, capsys):
    """Found by a fresh user: Ctrl-C in a sweep advised `--resume`, which `tables` does not take."""
    small_dataset(tmp_path)
    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(E, "fit", interrupt)
    monkeypatch.setattr(T, "fit", interrupt)
    args = ["--dataset", "fx", "--data-dir", str(tmp_path)]
    assert E.main(["tables", "--table", "table1", "--runs-dir", str(tmp_path / "runs"),
                   "--results-dir", str(tmp_path / "res")] + args) == 130
    assert "the same tables (or sweep) command continues from it." in capsys.readouterr().err
    assert T.main(["train", "--out", str(tmp_path / "r.json")] + args) == 130
    assert "the same command with --resume continues from it." in capsys.readouterr().err


def test_a_sweep_cut_by_the_time_limit_says_so(tmp_path, capsys):
    """Found by a fresh user: a sweep whose runs hit --max-minutes ended without a word."""
    small_dataset(tmp_path)
    tiny = ["--dim", "8", "--layers", "2", "--batch-size", "4", "--eval-batch", "3", "--epochs", "5"]
    args = ["tables", "--table", "table1", "--only", "lightgcn", "--dataset", "fx", "--data-dir", str(tmp_path),
            "--seeds", "1", "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res")] + tiny
    assert E.main(args + ["--max-minutes", "0.00001"]) == 0
    err = capsys.readouterr().err
    assert "1 of 1 runs stopped at --max-minutes before early stopping" in err, err
    assert E.main(args + ["--dry-run"]) == 0 and "0 of 1 runs already done; 1 to run" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Sweeps on validation, and the fidelity table
# ---------------------------------------------------------------------------------------------
def test_sweep_trains_one_run_per_value_and_chooses_on_validation(tmp_path, capsys):
    small_dataset(tmp_path)
    tiny = ["--dim", "8", "--layers", "2", "--enc-layers", "1", "--batch-size", "4", "--mask-epochs", "5",
            "--eval-batch", "3", "--epochs", "2", "--lr", "0.01"]
    args = ["sweep", "--param", "l2", "--values", "1e-5,1e-3", "--model", "lightgcn", "--dataset", "fx",
            "--data-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res")]
    assert E.main(args + tiny) == 0
    folder = tmp_path / "runs" / "fx" / "sweep-lightgcn-l2"
    assert sorted(p.name for p in folder.glob("*.json")) == ["l2-0.001-seed2024.json", "l2-1e-05-seed2024.json"]
    saved = json.loads((folder / "l2-0.001-seed2024.json").read_text())
    assert saved["settings"]["l2"] == 1e-3 and saved["settings"]["model"] == "lightgcn" and saved["selected_on"] == "valid"
    table = json.loads((tmp_path / "res" / "fx" / "sweep-lightgcn-l2.json").read_text())
    best = max(table["rows"], key=lambda x: x["recall@50"] + x["ndcg@50"])
    assert table["chosen"] == best["value"] and len(table["rows"]) == 2
    for row in table["rows"]:  # the validation metrics of the selected epoch, never test
        res = json.loads((folder / f"l2-{row['value']:g}-seed2024.json").read_text())
        assert row["recall@50"] == res["valid"]["recall@50"]
    md = (tmp_path / "res" / "fx" / "sweep-lightgcn-l2.md").read_text()
    assert f"Validation chooses l2 = {best['value']:g}." in md and "(chosen)" in md
    capsys.readouterr()
    assert E.main(args + tiny) == 0 and "2 of 2 runs already done" in capsys.readouterr().err  # resumes
    (folder / "l2-0.001-seed2024.json").unlink()  # a sweep not yet finished chooses nothing
    assert E.main(args + tiny + ["--dry-run"]) == 0
    md = (tmp_path / "res" / "fx" / "sweep-lightgcn-l2.md").read_text()
    assert "1 of 2 runs are not finished yet: no value is chosen (best so far: l2 = 1e-05)." in md
    assert "(chosen)" not in md and json.loads((tmp_path / "res" / "fx" / "sweep-lightgcn-l2.json").read_text())["chosen"] is None
    for bad, expect in ((["--param", "out"], "--param 'out'"), (["--values", "0.1"], "at least two distinct"),
                        (["--values", "a,b"], "expected comma-separated float"), (["--l2", "0.1"], "--l2: the sweep sets it")):
        argv = list(args)
        for flag, value in zip(bad[::2], bad[1::2]):
            if flag in argv:
                argv[argv.index(flag) + 1] = value
            else:
                argv += [flag, value]
        assert E.main(argv + tiny) == 2
        assert expect in capsys.readouterr().err, bad


def test_fidelity_sets_our_curve_beside_the_authors(tmp_path):
    # R@50, R@100, N@50, N@100 at epoch e: 0.001 e, 0.002 e, 0.003 e, 0.0005 e
    history = [{"epoch": e, "test": metrics(0.001 * e, 0.002 * e, 0.003 * e, 0.0005 * e)} for e in range(90)]
    run = tmp_path / "f.json"
    run.write_text(json.dumps({"dataset": "book-crossing", "settings": {"variant": "authors"}, "selected_on": "test",
                               "seed": 2024, "best_epoch": 80, "epochs_run": 90, "minutes": 75.0,
                               "test": history[80]["test"], "history": history}))
    text = E.fidelity(run, tmp_path / "res").read_text()
    assert "| 20 | 0.0200 | 0.0600 | 0.0400 | 0.0100 | 0.1502 | 0.0704 | 0.2163 | 0.0854 |" in text
    assert "| ours, best test epoch | 0.0800 | 0.2400 | 0.1600 | 0.0400 |" in text
    assert "| paper's Table 1 (mean of 10 seeds) | 0.1791 | 0.0889 | 0.2455 | 0.1041 |" in text
    assert "NOT an honest estimate" in text and "best test epoch 80 of 90" in text
    valid_run = fake_results(tmp_path / "v.json", metrics(0.1, 0.2, 0.1, 0.2), {"variant": "paper"})
    with pytest.raises(C.DataError, match="not the results of a --variant authors --select-on test run"):
        E.fidelity(valid_run, tmp_path / "res")


def test_table1_counts_finished_runs_without_their_refit_in_the_selected_columns(tmp_path, capsys):
    """Found by a fresh user: the committed validation-selected runs (made before --refit) vanished
    from Table 1, without a word on why. They count in "selected"; the refit columns wait for them."""
    small_dataset(tmp_path)
    planned = [r for r in E.plan_runs("table1", {"dataset": "fx", "data_dir": str(tmp_path)}, 3, tmp_path / "runs")
               if r.config == "cikgrec"]
    for i, r in enumerate(planned):
        s = C.dataclasses.asdict(r.settings)
        fake_results(r.out, metrics(0.1 + 0.1 * i, 0.3, 0.1, 0.2), {**s, "refit": i == 0}, selected=metrics(0.1, 0.2, 0.1, 0.2))
    args = ["tables", "--table", "table1", "--dataset", "fx", "--data-dir", str(tmp_path), "--seeds", "3",
            "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res"), "--dry-run"]
    assert E.main(args) == 0
    assert "cikgrec-seed2025.json (its refit only: the run is finished)" in capsys.readouterr().err
    text = (tmp_path / "res" / "fx" / "table1.md").read_text()
    # R@50: the refit's (one run) and, beside it, the selected model's over all three
    assert "| CIKGRec | 1 (3 selected) |  | 0.1000 ± - |  |  | 0.1000 ± 0.0000 |" in text


def test_a_grid_sweep_over_two_settings_reruns_early_peaks_and_weighs_a_candidate(tmp_path, monkeypatch, capsys):
    """The claim issue's SimGCL grid: lambda3 x eps in one command, one table, one file set; a
    point that peaked before epoch 10 and ran on is its transient, not a measurement: its rerun
    with a larger --min-epochs stands in; today's setting (off the grid) is a candidate too."""
    small_dataset(tmp_path)
    base = {"dataset": "fx", "data_dir": str(tmp_path), "model": "simgcl", "tau": 0.2, "min_epochs": 3}
    runs_dir = tmp_path / "runs"
    runs = E.plan_sweep("lambda3", [0.01, 0.5], base, runs_dir, "eps", [0.1, 0.2], [{"tau": 0.15, "lambda3": 0.01}], 40)
    names = sorted(r.out.name for r in runs)
    assert "lambda3-0.5-eps-0.2-seed2024.json" in names and "lambda3-0.5-eps-0.2-min40-seed2024.json" in names
    assert "candidate-tau-0.15-lambda3-0.01-seed2024.json" in names and len(runs) == 10
    assert all(r.out.parent.name == "sweep-simgcl-lambda3-eps" for r in runs)
    first = {r.config: r for r in runs if not r.config.endswith(" rerun")}
    rerun = {r.config[:-len(" rerun")]: r for r in runs if r.config.endswith(" rerun")}
    assert rerun["lambda3=0.5, eps=0.2"].settings.min_epochs == 40 and first["lambda3=0.5, eps=0.2"].settings.min_epochs == 3
    score = {"lambda3=0.01, eps=0.1": (0.15, 20), "lambda3=0.01, eps=0.2": (0.16, 25), "lambda3=0.5, eps=0.1": (0.10, 30),
             "lambda3=0.5, eps=0.2": (0.30, 2), "tau=0.15, lambda3=0.01 (candidate)": (0.155, 40)}
    for config, (r50, best) in score.items():  # the 0.5/0.2 point peaked at epoch 2 and ran to 13
        r = first[config]
        path = fake_results(r.out, metrics(0.5, 0.5, 0.5, 0.5), C.dataclasses.asdict(r.settings))
        saved = json.loads(path.read_text())
        saved.update(best_epoch=best, epochs_run=best + 11, valid=metrics(r50, 0.3, 0.05, 0.06))
        path.write_text(json.dumps(saved))
    md = E.write_sweep("lambda3", runs, tmp_path / "res", param2="eps").read_text()
    assert "| 0.5 | 0.2 (peaked at epoch 2, before 10: not measured) | 2 (13) |" in md
    assert "Validation chooses lambda3 = 0.01, eps = 0.2." in md  # never the unmeasured 0.30
    assert "| tau=0.15, lambda3=0.01 (candidate) (candidate) |" not in md and "(candidate) | |" in md
    trained = []
    def fake_fit(s):  # the rerun: the same point under --min-epochs 40 peaks at epoch 35
        trained.append(s.min_epochs)
        path = fake_results(C.Path(s.out), metrics(0.5, 0.5, 0.5, 0.5), C.dataclasses.asdict(s))
        saved = json.loads(path.read_text())
        saved.update(best_epoch=35, epochs_run=46, valid=metrics(0.12, 0.3, 0.05, 0.06))
        path.write_text(json.dumps(saved))
        return saved
    monkeypatch.setattr(E, "fit", fake_fit)
    grid = ["sweep", "--param", "lambda3", "--values", "0.01,0.5", "--param2", "eps", "--values2", "0.1,0.2",
            "--candidate", "tau=0.15,lambda3=0.01", "--rerun-early", "40", "--model", "simgcl", "--tau", "0.2",
            "--min-epochs", "3", "--dataset", "fx", "--data-dir", str(tmp_path), "--runs-dir", str(runs_dir),
            "--results-dir", str(tmp_path / "res")]
    assert E.main(grid) == 0 and trained == [40]  # only the early peak is rerun
    md = (tmp_path / "res" / "fx" / "sweep-simgcl-lambda3-eps.md").read_text()
    assert "| 0.5 | 0.2 (rerun with --min-epochs 40: the first run peaked at epoch 2) | 35 (46) | 0.1200 |" in md
    assert "Validation chooses lambda3 = 0.01, eps = 0.2." in md and "Budget: 5 points, 6 runs" in md
    chosen = json.loads((tmp_path / "res" / "fx" / "sweep-simgcl-lambda3-eps.json").read_text())["chosen"]
    assert chosen == {"lambda3": 0.01, "eps": 0.2}
    for bad, expect in ((["--param2", "lambda3"], "give a second setting"), (["--candidate", "out=3"], "not a numeric"),
                        (["--rerun-early", "2"], "give more than --min-epochs")):
        argv = list(grid)
        argv[argv.index(bad[0]) + 1] = bad[1]
        assert E.main(argv) == 2 and expect in capsys.readouterr().err


def test_paired_difference_by_hand_and_table1_column(tmp_path):
    """Table 1's paired column: baseline - CIKGRec over the seeds both rows have, mean ± the 95%
    half-width by the t distribution (n - 1 = 2 degrees of freedom: t = 4.3027)."""
    a, b = {2024: 0.18, 2025: 0.17, 2026: 0.19}, {2024: 0.17, 2025: 0.16, 2026: 0.17, 2027: 0.20}
    mean, half, n = E.paired_difference(a, b)
    assert n == 3 and mean == pytest.approx(0.04 / 3)
    assert half == pytest.approx(4.302653 * statistics.stdev([0.01, 0.01, 0.02]) / 3 ** 0.5, rel=1e-5)
    one = E.paired_difference({2024: 0.2}, {2024: 0.1})
    assert one[0] == pytest.approx(0.1) and one[1:] == (None, 1)  # one seed: no interval
    assert E.paired_difference({2024: 0.2}, {2025: 0.1}) is None
    refit = {"refit": True}
    files = {"cikgrec": [fake_results(tmp_path / f"c{s}.json", metrics(v, 0.2, 0.08, 0.1), {**refit, "seed": s})
                         for s, v in b.items()],
             "simgcl": [fake_results(tmp_path / f"s{s}.json", metrics(v, 0.2, 0.08, 0.1), {**refit, "seed": s})
                        for s, v in a.items()]}
    rows = E.aggregate_table("table1", "book-crossing", files)
    simgcl = next(r for r in rows if r["config"] == "simgcl")
    assert simgcl["recall@50_paired"][0] == pytest.approx(0.04 / 3) and simgcl["ndcg@50_paired"][0] == pytest.approx(0.0)
    md = E.write_table(rows, "table1", "book-crossing", tmp_path / "res")[0].read_text()
    assert "R@50 - CIKGRec (paired) | N@50 - CIKGRec (paired) |" in md
    assert "| +0.0133 ± 0.0143 (3) | +0.0000 ± 0.0000 (3) |" in md
    assert "the split is fixed (split seed 0), so the interval covers training randomness" in md


def test_validation_chooses_the_variant_over_the_seeds_both_have(tmp_path):
    def run(name, seed, valid_r50):
        path = fake_results(tmp_path / f"{name}{seed}.json", metrics(0.3, 0.4, 0.1, 0.2), {"seed": seed})
        saved = json.loads(path.read_text())
        saved["valid"] = metrics(valid_r50, 0.3, 0.05, 0.06)
        path.write_text(json.dumps(saved))
        return path
    rows = [{"config": "paper", "files": [run("p", 2024, 0.16), run("p", 2025, 0.16), run("p", 2026, 0.30)]},
            {"config": "authors", "files": [run("a", 2024, 0.17), run("a", 2025, 0.17)]}]
    chosen, why = E.variant_choice(rows)  # seed 2026 has no authors run: left out of both means
    assert chosen == "authors" and "over seeds 2024, 2025: paper 0.2100, authors 0.2200" in why
    rows[1]["files"] = [run("b", 2024, 0.16), run("b", 2025, 0.16)]
    assert E.variant_choice(rows)[0] == "paper"  # a tie keeps paper
    assert E.variant_choice([rows[0], {"config": "authors", "files": []}])[0] == "paper"


# ---------------------------------------------------------------------------------------------
# Cold start (issue 20): held-out users folded in
# ---------------------------------------------------------------------------------------------
def test_cold_users_and_the_dataset_without_them(tmp_path):
    folder = small_dataset(tmp_path)
    ds = C.load_dataset(folder)
    held = E.cold_users(ds, 1)
    assert len(held) == 1 and np.array_equal(held, E.cold_users(ds, 1))  # round(0.1 x 8) = 1, seeded
    assert len({tuple(E.cold_users(ds, d, share=0.5)) for d in range(1, 6)}) > 1  # draws differ
    held = E.cold_users(ds, 3, share=0.25)  # 2 users
    E.write_cold_dataset(folder, tmp_path / "cold" / "fx", held)
    cold = C.load_dataset(tmp_path / "cold" / "fx")
    for u in range(ds.n_users):
        assert list(cold.train[u]) == ([] if u in held else list(ds.train[u]))
        assert list(cold.test[u]) == list(ds.test[u])
    assert not set(cold.interest_edges[:, 0].tolist()) & set(held.tolist())
    kept = {(u, int(ds.interest_ids[j])) for u, j in ds.interest_edges if u not in held}
    assert {(u, int(cold.interest_ids[j])) for u, j in cold.interest_edges} == kept
    assert (cold.n_users, cold.n_items, cold.n_entities) == (ds.n_users, ds.n_items, ds.n_entities)
    assert np.array_equal(cold.kg, ds.kg)


def test_cold_start_end_to_end_and_its_table(tmp_path, capsys):
    small_dataset(tmp_path)
    common = ["--dataset", "fx", "--data-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs"),
              "--results-dir", str(tmp_path / "res"), "--draws", "2", "--epochs", "2", "--dim", "8", "--layers", "2",
              "--enc-layers", "1", "--batch-size", "4", "--lr", "0.01", "--mask-epochs", "5", "--threads", "1"]
    assert E.main(["cold-start", *common, "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "0 of 6 runs already done; 6 to run" in err and "cold-start-draw2/cikgrec-seed2025.json" in err
    assert not (tmp_path / "runs" / "cold-start-data").exists()  # --dry-run writes nothing; --prepare-only does
    assert E.main(["cold-start", *common, "--prepare-only"]) == 0
    assert (tmp_path / "runs" / "cold-start-data" / "fx" / "draw2" / "fx" / "train.txt").is_file()
    assert E.main(["cold-start", *common]) == 0
    page = (tmp_path / "res" / "fx" / "cold-start.md").read_text()
    for label in E.COLD_ROWS.values():
        assert f"| {label} | " in page
    saved = json.loads((tmp_path / "res" / "fx" / "cold-start.json").read_text())
    ds = C.load_dataset(tmp_path / "fx")
    for seed, draw in zip(("2024", "2025"), (1, 2)):
        assert saved["draws"][seed]["held"] == E.cold_users(ds, draw).tolist()
        assert set(saved["draws"][seed]["rows"]) == set(E.COLD_ROWS)
    # popularity by hand for draw 1's held-out user: items ranked by the warm users' train.txt counts
    held = saved["draws"]["2024"]["held"][0]
    counts = np.bincount(np.concatenate([ds.train[u] for u in range(ds.n_users) if u != held]), minlength=ds.n_items)
    scores = torch.tensor(counts, dtype=torch.float32)[None]
    expect = C.ranking_metrics(scores, [ds.train[held]], [ds.test[held]], [50])
    assert saved["draws"]["2024"]["rows"]["popularity"][0] == [round(expect["recall@50"], 6), round(expect["ndcg@50"], 6)]
    # the models' rows are the fold-in of each run: the refit model, the held-out user's own items
    run = E.load_run(tmp_path / "runs" / "fx" / "cold-start-draw1" / "lightgcn-seed2024.json")
    _, ie = run.trainer.model.user_item_embeddings()
    scores = run.trainer.model.fold_in([ds.train[held]]) @ ie.T
    expect = C.ranking_metrics(scores, [ds.train[held]], [ds.test[held]], [50])
    assert saved["draws"]["2024"]["rows"]["lightgcn"][0] == [round(expect["recall@50"], 6), round(expect["ndcg@50"], 6)]
    assert run.results["refit"] and run.trainer.s.min_epochs == 30
    assert "Warm reference" not in page  # Table 1 has no runs yet: the page and a note say so
    assert "No warm reference for lightgcn, simgcl, cikgrec: Table 1's refit runs" in page
    assert "note: no warm reference for lightgcn, simgcl, cikgrec" in capsys.readouterr().err
    # found by review (issue 20): --results-dir DATA wrote cold-start.md into the dataset folder
    i = common.index("--results-dir")
    assert E.main(["cold-start", *common[:i + 1], str(tmp_path), *common[i + 2:]]) == 2
    assert "is a dataset folder (it has train.txt)" in capsys.readouterr().err
    assert not (tmp_path / "fx" / "cold-start.md").exists()
    # with Table 1's refit runs of the same seeds, their mean is the warm reference
    at = common.index("--draws")
    table_args = common[:at] + common[at + 2:]
    assert E.main(["tables", "--table", "table1", "--seeds", "2", *table_args]) == 0
    assert E.main(["cold-start", *common]) == 0
    page = (tmp_path / "res" / "fx" / "cold-start.md").read_text()
    warm = json.loads((tmp_path / "res" / "fx" / "cold-start.json").read_text())["warm"]
    assert set(warm) == set(E.COLD_MODELS) and warm["simgcl"]["seeds"] == [2024, 2025]
    refits = [json.loads((tmp_path / "runs" / "fx" / "table1" / f"simgcl-seed{s}.json").read_text())["refit"] for s in (2024, 2025)]
    assert warm["simgcl"]["ndcg@50"] == pytest.approx((refits[0]["test"]["ndcg@50"] + refits[1]["test"]["ndcg@50"]) / 2)
    assert warm["simgcl"]["groups"] == pytest.approx(np.mean([f["groups"]["ndcg"] for f in refits], axis=0).tolist())
    assert f"| SimGCL (warm) | {warm['simgcl']['recall@50']:.4f} | {warm['simgcl']['ndcg@50']:.4f} | " in page
    assert f"| CIKGRec (warm) | {warm['cikgrec']['recall@50']:.4f} | " in page  # the trained model, not a fold-in


@pytest.mark.parametrize("given", [["--model", "lightgcn"], ["--select-on", "test"], ["--interests", "x.txt"],
                                   ["--no-interest-nodes"], ["--graph", "cg"]])
def test_cold_start_refuses_options_that_change_its_rows(tmp_path, capsys, given):
    """Found by review (issue 20): --model lightgcn made the "CIKGRec" row a LightGCN, --select-on
    test selected on test, and --interests trained on a file the held-out users were not removed from."""
    small_dataset(tmp_path)
    rc = E.main(["cold-start", "--dataset", "fx", "--data-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs"),
                 "--dry-run", *given])
    err = capsys.readouterr().err
    assert rc == 2 and f"cold-start takes no {given[0].replace('no-', '')}" in err and "Traceback" not in err
