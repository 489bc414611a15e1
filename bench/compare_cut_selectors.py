"""Compare label-free ways of choosing the walker's cut, and what the candidates themselves allow
(docs/EXPERIMENTS.md, "Other selectors, and what the ladder allows").

Same protocol as ``bench/fit_cut_model.py`` (the labelled ``isic2017_256`` images outside ``isic_sample``, 5 folds
by ``sha256(id) % 5``, each fold scored by the cut model fitted on the other four; ``--check`` scored by the model
fitted on all of them). Prints, as mean Jaccard and the share below 0.65:

- the cut model (what stage 1 does);
- minimum Bayes risk: the candidates weighted by ``softmax(score / T)``, the one with the highest expected Jaccard
  against the others kept, for each T of ``--temperatures``;
- the best candidate chosen with the labels (the ceiling of any selector on these candidates);
- with ``--settings``, the same after pooling, per image, the ladders of the default seed setting and of each
  setting given (``key=value[,key=value]`` of ``SeedConfig``): the three relative measures recomputed over the
  pool, the model refitted, with and without a one-hot of the setting.

    python bench/compare_cut_selectors.py --data ../shared/data/isic2017_256 --exclude-from ../shared/data/isic_sample \\
        --check ../shared/data/isic_sample --settings otsu_shift=0.6 \\
        --settings otsu_shift=1.0,centre_sigma=0.35,border_penalty=16
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

from fit_cut_model import FIXED, _fit, candidates_of, ceiling, chosen, held_out_scores, report

from common.datasets import open_dataset
from pipeline.pseudomask.cut import model_from_sklearn, relative_measures


def _setting(text: str):
    values = dict(kv.split("=", 1) for kv in text.split(","))
    return dataclasses.replace(FIXED, seeds=dataclasses.replace(FIXED.seeds, **{k: float(v) for k, v in values.items()}))


def _rows(samples, config, jobs: int, pairs: bool) -> list[dict]:
    return Parallel(n_jobs=jobs, batch_size=8)(delayed(candidates_of)(s, config, pairs) for s in samples)


def pooled(ladders: list[list[dict]], one_hot: bool) -> list[dict]:
    """Per image, the candidates of every ladder together, the relative measures recomputed over the pool."""
    out = []
    for per_setting in zip(*ladders):
        xs, js = [], []
        for k, row in enumerate(per_setting):
            if len(row["j"]):
                x = row["x"]
                if one_hot:
                    x = np.column_stack([x, np.zeros((len(x), len(ladders)))])
                    x[:, x.shape[1] - len(ladders) + k] = 1.0
                xs.append(x)
                js.append(row["j"])
        first = per_setting[0]
        if not xs:
            out.append({"id": first["id"], "fixed": first["fixed"], "x": first["x"], "j": first["j"]})
            continue
        out.append({"id": first["id"], "fixed": first["fixed"], "x": relative_measures(np.concatenate(xs)),
                    "j": np.concatenate(js)})
    return out


def minimum_bayes_risk(rows: list[dict], scores, temperature: float) -> np.ndarray:
    """Jaccard of each image's candidate with the highest expected Jaccard against the others, the candidates
    weighted by ``softmax(score / temperature)`` (the fixed cut's when it has none)."""
    out = []
    for row, s in zip(rows, scores):
        if s is None:
            out.append(row["fixed"])
        else:
            w = np.exp((s - s.max()) / temperature)
            out.append(row["j"][int(np.argmax(row["pairs"] @ (w / w.sum())))])
    return np.asarray(out)


def _final_scores(train: list[dict], rows: list[dict], alpha: float) -> list[np.ndarray | None]:
    model = model_from_sklearn(_fit(train, alpha), "all folds")
    return [model.score(r["x"]) if len(r["j"]) else None for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="labelled dataset to fit on (isic2017_256)")
    ap.add_argument("--exclude-from", help="a dataset whose ids are left out (isic_sample)")
    ap.add_argument("--check", help="a held-out labelled dataset scored with the model fitted on all folds")
    ap.add_argument("--settings", action="append", default=[], help="another seed setting to pool (repeatable)")
    ap.add_argument("--temperatures", default="0.005,0.01,0.02,0.05,0.12", help="MBR temperatures")
    ap.add_argument("--alpha", type=float, default=10.0, help="ridge penalty")
    ap.add_argument("--limit", type=int, help="first N images only (a quick look)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()

    excluded = set(open_dataset(args.exclude_from).ids) if args.exclude_from else set()
    samples = [s for s in open_dataset(args.data).labelled if s.id not in excluded][:args.limit]
    check = list(open_dataset(args.check).labelled) if args.check else []
    print(f"{len(samples)} labelled images ({len(excluded)} ids excluded); check: {len(check)}")

    def show(name: str, folds: np.ndarray, held: np.ndarray) -> None:
        report(f"{name}, folds", folds)
        if check:
            report(f"{name}, {Path(args.check).name}", held)

    base = _rows(samples, FIXED, args.jobs, pairs=True)
    base_check = _rows(check, FIXED, args.jobs, pairs=True)
    scores = held_out_scores(base, args.alpha)
    check_scores = _final_scores(base, base_check, args.alpha)
    show("cut model (stage 1)", chosen(base, scores), chosen(base_check, check_scores))
    for t in (float(v) for v in args.temperatures.split(",")):
        show(f"minimum Bayes risk, T {t:g}", minimum_bayes_risk(base, scores, t),
             minimum_bayes_risk(base_check, check_scores, t))
    show("best candidate (with the labels)", ceiling(base), ceiling(base_check))

    ladders, ladders_check = [base], [base_check]
    for text in args.settings:
        print(f"ladder {len(ladders) + 1}: {text}")
        config = _setting(text)
        ladders.append(_rows(samples, config, args.jobs, pairs=False))
        ladders_check.append(_rows(check, config, args.jobs, pairs=False))
        for one_hot in (False, True):
            rows, rows_check = pooled(ladders, one_hot), pooled(ladders_check, one_hot)
            show(f"pooled, {len(ladders)} ladders" + (", one-hot" if one_hot else ""),
                 chosen(rows, held_out_scores(rows, args.alpha)),
                 chosen(rows_check, _final_scores(rows, rows_check, args.alpha)))
        show(f"best of {len(ladders)} pooled ladders (labels)", ceiling(pooled(ladders, False)),
             ceiling(pooled(ladders_check, False)))


if __name__ == "__main__":
    main()
