"""Fusion model zoo on a synthetic cohort: accuracy of every model, modality ablations, batched training speed.

Prints
  1. Harrell's C (95% CI), OHE AUC and ppg_post MAE of every `--model`, 5-fold CV, beside the lifelines clinical Cox,
     FIPS and the oracle (the generating model's own linear predictor);
  2. modality ablations (clinical, radiomics, embed, pairs, all three) for multitips and tmiclnet;
  3. seconds to train 5 folds × 5 seeds as one batched ensemble, one member after another with the same code,
     and as DeepSurv models trained one at a time in minibatches (pycox/torchsurv style) on the same features;
  4. module ablations of the seed models (#23): each paper module switched off in turn (MODULE_SWITCHES), the
     network trained alone (`clinical_offset: false`, so the module is not hidden behind the clinical Cox), with
     the paired bootstrap difference in C from the full model (95% CI).

The cohort goes through the real pipeline once (synth → segment → radiomics → embed --fit) into --work, which is
reused by later runs. Usage: python benchmarks/fusion_models.py [--n 500] [--work DIR] [--device cpu]
       [--tables accuracy,ablation,timing,modules] [--models concat,late] [--ablation-seeds 1] [--module-seeds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tipsprog.bootstrap import bootstrap_samples, interval, with_bootstrap
from tipsprog.clinical import clinical_scores
from tipsprog.evaluate.metrics import auc, mae
from tipsprog.fusion.assembly import assemble
from tipsprog.fusion.config import load_config
from tipsprog.fusion.crossval import cross_validate
from tipsprog.fusion.data import TrainingData, fit_preprocessors
from tipsprog.fusion.losses import SurvivalIndex, cox_efron_nll
from tipsprog.fusion.splits import cv_splits, plan_members
from tipsprog.fusion.training import train_ensemble
from tipsprog.registry import FUSION_MODELS
from tipsprog.survival import harrell_c, harrell_c_with_ci


def build_cohort(work: Path, n: int) -> None:
    """Run the pipeline CLI once; steps whose output exists are skipped."""
    steps = [
        ("cohort/cohort.csv", ["synth", "--out", "cohort", "--n", str(n), "--centers", "3", "--seed", "11"]),
        ("seg.h5", ["segment", "cohort/cohort.csv", "--out", "seg.h5", "--quiet"]),
        ("radiomics.h5", ["radiomics", "seg.h5", "--out", "radiomics.h5", "--quiet"]),
        ("embed.h5", ["embed", "seg.h5", "--out", "embed.h5", "--fit", "--quiet"]),
    ]
    work.mkdir(parents=True, exist_ok=True)
    for output, command in steps:
        if not (work / output).exists():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "tipsprog", *command], cwd=work, check=True)
            print(f"  {command[0]}: {time.perf_counter() - start:.0f} s", flush=True)


def load(work: Path, modalities: tuple[str, ...] | None = None) -> tuple[TrainingData, pd.DataFrame, pd.DataFrame]:
    """Training data, clinical table and truth rows of the cohort."""
    assembled = assemble(
        [work / "seg.h5", work / "radiomics.h5", work / "embed.h5"],
        work / "cohort/clinical.csv",
        work / "cohort/outcomes.csv",
        modalities,
    )
    truth = pd.read_csv(work / "cohort/truth.csv", dtype={"patient_id": str}).set_index("patient_id")
    return assembled.data, assembled.clinical, truth.loc[assembled.data.patient_ids]


def _c(data: TrainingData, risk: np.ndarray) -> str:
    value = harrell_c_with_ci(data.time, data.event, risk)
    return f"{value['estimate']:.3f} ({value['low']:.3f}–{value['high']:.3f})"


def score_row(data: TrainingData, risk: np.ndarray, ohe: np.ndarray | None, ppg: np.ndarray | None) -> str:
    """C-index with CI, OHE AUC and ppg_post MAE as table cells."""
    ohe_cell = f"{auc(data.ohe, ohe):.3f}" if ohe is not None else "–"
    ppg_cell = f"{mae(data.ppg_post, ppg):.2f}" if ppg is not None else "–"
    return f"{_c(data, risk):>22} {ohe_cell:>8} {ppg_cell:>8}"


MODULE_SWITCHES = {
    "multitips": {"MGRA": {"mgra": False}, "POD": {"orthogonality_weight": 0.0}, "CGPE": {"cgpe": False}},
    "graph": {"SGCM": {"sgcm": False}, "MMDFM": {"mmdfm": False}},
    "tmiclnet": {"TMFF": {"alignment_weight": 0.0}},
}


def run_model(data: TrainingData, model: str, device: torch.device, seeds: int | None = None, **settings) -> tuple[dict, float]:
    """5-fold CV of one model (the config's seeds per fold unless given; settings replace config keys, a model
    section's keys one by one): out-of-fold predictions and seconds."""
    config = load_config(model=model, seeds=seeds)
    config = dataclasses.replace(
        config,
        **{key: {**getattr(config, key), **value} if isinstance(value, dict) else value for key, value in settings.items()},
    )
    start = time.perf_counter()
    cv = cross_validate(data, config, "kfold", device, seed=0)
    return cv.oof, time.perf_counter() - start


def accuracy_table(work: Path, device: torch.device, models: list[str]) -> None:
    """Every model beside clinical Cox, FIPS and the oracle."""
    data, clinical, truth = load(work)
    print(
        f"\n1. Models, 5-fold CV on {len(data.patient_ids)} patients ({int(np.nansum(data.event))} deaths): "
        "Harrell's C (95% CI), OHE AUC, ppg_post MAE (mmHg)"
    )
    print(f"{'row':<28}{'C-index':>22} {'OHE AUC':>8} {'PPG MAE':>8} {'seconds':>8}")
    baseline = None
    for model in models:
        oof, seconds = run_model(data, model, device)
        print(f"{model:<28}{score_row(data, oof['risk'], oof['ohe_probability'], oof['ppg_post'])} {seconds:>8.0f}", flush=True)
        baseline = oof["clinical_cox_risk"]
    print(f"{'clinical Cox (lifelines)':<28}{score_row(data, baseline, None, None)}")
    fips = clinical_scores(clinical)["FIPS"].to_numpy(float)
    print(f"{'FIPS':<28}{score_row(data, fips, None, None)}")
    print(
        f"{'oracle':<28}{score_row(data, truth['linear_predictor'].to_numpy(float), truth['ohe_probability'].to_numpy(float), truth['ppg_post_expected'].to_numpy(float))}"
    )


def ablation_table(work: Path, device: torch.device, seeds: int) -> None:
    """multitips and tmiclnet on every non-empty subset of the three modalities."""
    subsets = [c for k in (1, 2, 3) for c in itertools.combinations(("clinical", "radiomics", "embed"), k)]
    print(f"\n2. Modality ablations: Harrell's C (95% CI), 5-fold CV, {seeds} seed(s) per fold")
    print(f"{'modalities':<28}" + "".join(f"{m:>24}" for m in ("multitips", "tmiclnet")))
    for subset in subsets:
        data, _, _ = load(work, subset)
        cells = [_c(data, run_model(data, model, device, seeds)[0]["risk"]) for model in ("multitips", "tmiclnet")]
        print(f"{'+'.join(subset):<28}" + "".join(f"{c:>24}" for c in cells), flush=True)


def paired_c_difference(data: TrainingData, risk: np.ndarray, reference: np.ndarray, draws: int = 200) -> str:
    """C(risk) − C(reference) on the same patients with its paired bootstrap 95% CI, as a table cell."""

    def difference(rows: np.ndarray) -> float:
        return harrell_c(data.time[rows], data.event[rows], risk[rows]) - harrell_c(
            data.time[rows], data.event[rows], reference[rows]
        )

    value = interval(*with_bootstrap(difference, len(risk), bootstrap_samples(len(risk), draws, 0)))
    return f"{value['estimate']:+.3f} ({value['low']:+.3f} to {value['high']:+.3f})"


def module_table(work: Path, device: torch.device, seeds: int, models: list[str]) -> None:
    """Each seed model's (of `models`) paper modules switched off one at a time, the network trained alone."""
    data, _, _ = load(work)
    print(
        f"\n4. Module ablations, network alone (clinical_offset: false), 5-fold CV, {seeds} seeds per fold: "
        "Harrell's C (95% CI) and C minus the full model's (paired bootstrap 95% CI)"
    )
    print(f"{'model':<12}{'switched off':<14}{'C-index':>22}{'ΔC vs full':>28}{'seconds':>9}")
    for model, switches in ((m, s) for m, s in MODULE_SWITCHES.items() if m in models):
        full, seconds = run_model(data, model, device, seeds, clinical_offset=False)
        print(f"{model:<12}{'(none)':<14}{_c(data, full['risk']):>22}{'':>28}{seconds:>9.0f}", flush=True)
        for module, change in switches.items():
            ablated, seconds = run_model(data, model, device, seeds, clinical_offset=False, **{model: change})
            print(
                f"{'':<12}{module:<14}{_c(data, ablated['risk']):>22}"
                f"{paired_c_difference(data, ablated['risk'], full['risk']):>28}{seconds:>9.0f}",
                flush=True,
            )


def deepsurv_one_at_a_time(
    data: TrainingData, plans: list, config, device: torch.device, epochs: int, batch_size: int = 64
) -> float:
    """Seconds to train one DeepSurv MLP per member, one after another, in minibatches (pycox/torchsurv style)."""
    start = time.perf_counter()
    for plan in plans:
        preprocessors = fit_preprocessors(data.matrices, data.feature_groups, plan.train_rows, config.imaging_width)
        features = torch.from_numpy(
            np.concatenate([p.transform_flat(data.matrices[m]) for m, p in preprocessors.items()], axis=1)
        ).to(device)
        torch.manual_seed(plan.seed)
        network = torch.nn.Sequential(
            torch.nn.Linear(features.shape[1], config.hidden),
            torch.nn.GELU(),
            torch.nn.Dropout(config.dropout),
            torch.nn.Linear(config.hidden, 1, bias=False),
        ).to(device)
        optimiser = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        generator = np.random.default_rng(plan.seed)
        for _ in range(epochs):
            for batch in np.array_split(generator.permutation(plan.fit_rows), max(1, len(plan.fit_rows) // batch_size)):
                index = SurvivalIndex.build(data.time[batch], data.event[batch], device)
                loss = cox_efron_nll(network(features[batch]).squeeze(1), index)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            network.eval()
            with torch.no_grad():
                network(features[plan.val_rows])
            network.train()
    return time.perf_counter() - start


def timing_table(work: Path, device: torch.device, epochs: int) -> None:
    """5 folds × 5 seeds: batched ensemble vs one member after another vs DeepSurv one at a time."""
    data, _, _ = load(work)
    print(f"\n3. Training time, 5 folds × 5 seeds = 25 members, {epochs} epochs each (no early stop), {device}")
    print(f"{'model':<16}{'batched s':>12}{'one by one s':>14}{'ratio':>8}{'DeepSurv s':>12}{'ratio':>8}")
    for model in ("concat", "multitips"):
        config = load_config(model=model)
        config = dataclasses.replace(
            config, seeds=5, stages=[{**s, "max_epochs": epochs // len(config.stages), "patience": epochs} for s in config.stages]
        )
        plans = plan_members(data, cv_splits(data.event, data.centers, 5, "kfold", 0), config, seed=0)
        start = time.perf_counter()
        train_ensemble(data, plans, config, device)
        batched = time.perf_counter() - start
        start = time.perf_counter()
        for plan in plans:
            train_ensemble(data, [plan], config, device)
        one_by_one = time.perf_counter() - start
        deepsurv = deepsurv_one_at_a_time(data, plans, config, device, epochs // 10)
        deepsurv_full = deepsurv * 10
        print(
            f"{model:<16}{batched:>12.1f}{one_by_one:>14.1f}{one_by_one / batched:>7.1f}×{deepsurv_full:>12.1f}"
            f"{deepsurv_full / batched:>7.1f}×",
            flush=True,
        )
    print(f"  DeepSurv: MLP on the same preprocessed features, minibatches of 64, {epochs // 10} epochs timed and scaled ×10.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.fusion-work"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timing-epochs", type=int, default=300)
    parser.add_argument("--tables", default="accuracy,ablation,timing,modules", help="Which tables to print, in this order.")
    parser.add_argument("--models", default=",".join(FUSION_MODELS), help="Models of the accuracy and module tables.")
    parser.add_argument("--ablation-seeds", type=int, default=1, help="Seeds per fold in the ablation table.")
    parser.add_argument("--module-seeds", type=int, default=3, help="Seeds per fold in the module ablation table.")
    args = parser.parse_args()
    device = torch.device(args.device)
    build_cohort(args.work, args.n)
    tables = {
        "accuracy": lambda: accuracy_table(args.work, device, args.models.split(",")),
        "ablation": lambda: ablation_table(args.work, device, args.ablation_seeds),
        "timing": lambda: timing_table(args.work, device, args.timing_epochs),
        "modules": lambda: module_table(args.work, device, args.module_seeds, args.models.split(",")),
    }
    for name in args.tables.split(","):
        tables[name]()


if __name__ == "__main__":
    main()
