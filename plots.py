"""make plots: the paper's figures as PNG from the results cikgrec.py writes. An optional extra
kept out of cikgrec.py, whose only runtime dependencies are numpy, scipy, torch and requests:
it needs matplotlib (pip install matplotlib) and says so when it is missing.

    python plots.py [--dataset NAME ...] [--results-dir results]
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

import cikgrec as C


def plots(datasets: list, results_dir="results") -> list:
    """make plots (optional, needs matplotlib): Fig. 3 as bars from each results/<dataset>/groups.json
    (test NDCG@50 per sparsity group, one bar per model, sample std as error bars) and the mask
    rate curves of Eq. 3 (exp and lin, alpha in {0.02, 0.1, 0.3}, omega 0.95, Lambda 150; the
    appendix's Fig. 6) in results/mask_schedules.png. Returns the PNG paths written. Raises
    C.SettingsError when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise C.SettingsError("plots needs matplotlib, an optional extra: pip install matplotlib") from None
    written = []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    q = np.arange(0, 301)
    for alpha, color in ((0.02, "C0"), (0.1, "C1"), (0.3, "C2")):
        for schedule, style in (("exp", "-"), ("lin", "--")):
            ax.plot(q, [C.mask_rate(int(t), schedule, alpha, 0.95, 150) for t in q], style, color=color,
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
            C.log(f"note: no {src} (run a table first): no Fig. 3 for {dataset}")
            continue
        g = json.loads(src.read_text())
        if not g.get("rows"):
            C.log(f"note: {src} has no results yet: no Fig. 3 for {dataset}")
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="plots.py", description="Fig. 3 bars and the Eq. 3 mask-rate curves as PNG",
                                allow_abbrev=False)
    p.add_argument("--dataset", nargs="+", default=list(C.DATASETS))
    p.add_argument("--results-dir", default="results")
    args = p.parse_args(argv)
    try:
        for path in plots(args.dataset, args.results_dir):
            C.log(f"wrote {path}")
    except C.SettingsError as e:
        C.log(f"error: {e}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
