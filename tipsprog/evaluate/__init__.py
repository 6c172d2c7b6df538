"""evaluate stage: metrics with bootstrap CIs beside the clinical scores; report.html, report.md, metrics.json, plots."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tipsprog.clinical import score_notes
from tipsprog.devices import resolve_device
from tipsprog.errors import InputError
from tipsprog.evaluate import plots
from tipsprog.evaluate.render import html_page, markdown, setting_sections
from tipsprog.evaluate.report import METRICS_SCHEMA, evaluate_rows, evaluation_grid
from tipsprog.evaluate.rows import (
    Cohort,
    OutOfFold,
    PredictionRow,
    held_out_rows,
    prediction_rows,
    read_held_out,
    read_oof,
    read_truth,
)
from tipsprog.fusion.assembly import assemble_for_bundle, score_columns
from tipsprog.fusion.bundle import Bundle, load_bundle
from tipsprog.fusion.data import TrainingData
from tipsprog.fusion.ensemble import predict_cohort
from tipsprog.outputs import atomic_output, writes_output
from tipsprog.store import open_store
from tipsprog.transductive import exposure_report

TITLE = "tipsprog evaluation report"


def setting_figures(rows: list[PredictionRow], data: Cohort, document: dict, out: Path, prefix: str = "") -> dict[str, str]:
    """Every PNG of one setting (OHE and PPG figures when the cohort observed them), written into `out`;
    returns {figure key: path}."""
    time, event, outcomes = data.outcomes["time"], data.outcomes["event"], data.outcomes
    horizons = [h for h in document["horizons_days"] if h < np.nanmax(time)]
    named = {row.name: row for row in rows}
    keys = ["km", "forest", "td_roc", "calibration"]
    keys += ["ohe_roc", "ohe_calibration", "decision_curve"] if document["ohe"] else []
    keys += ["ppg"] if document["ppg_post"] else []
    paths = {key: str(out / f"{prefix}{key}.png") for key in keys}
    survival = document["survival"]
    plots.kaplan_meier_by_group(
        time, event, named["model"].high_risk.astype(float), survival["model"]["hazard_ratio"]["logrank_p"], Path(paths["km"])
    )
    plots.hazard_ratio_forest({name: v["hazard_ratio"] for name, v in survival.items()}, Path(paths["forest"]))
    plots.time_dependent_roc(time, event, {row.name: row.risk for row in rows}, horizons, Path(paths["td_roc"]))
    plots.survival_calibration(
        {
            name: {k: v["deciles"] for k, v in survival[name]["calibration"].items() if k.endswith("d")}
            for name in ("model", "clinical-cox")
            if name in survival
        },
        Path(paths["calibration"]),
    )
    if "ohe_roc" in paths:
        plots.roc(
            outcomes["ohe"],
            {row.name: row.ohe_probability for row in rows if row.ohe_probability is not None},
            Path(paths["ohe_roc"]),
        )
        plots.ohe_calibration(
            outcomes["ohe"],
            {row.name: row.ohe_probability for row in rows if row.ohe_threshold is not None and row.ohe_probability is not None},
            Path(paths["ohe_calibration"]),
        )
        plots.decision_curve(document["decision_curve_ohe"], Path(paths["decision_curve"]))
    if "ppg" in paths:
        plots.ppg_scatter(
            outcomes["ppg_post"], {row.name: row.ppg_post for row in rows if row.ppg_post is not None}, Path(paths["ppg"])
        )
    return paths


@dataclass
class ExternalCohort:
    """A cohort the bundle never saw (evaluate --test): feature stores, clinical table and outcomes."""

    stores: list[Path]
    clinical: Path
    outcomes: Path


def check_provenance(bundle: Bundle, stores: list[Path]) -> None:
    """Each external store's feature blocks come from the bundle's segmentation backend and model, radiomics settings
    and encoder weights (as fuse-train recorded them)."""
    blocks = bundle.manifest.blocks
    for path in stores:
        with open_store(path) as h5:
            for name, group in h5.get("features", {}).items():
                for key, expected in (blocks[name].provenance if name in blocks else {}).items():
                    found = str(group.attrs.get(key, ""))
                    if found != expected:
                        raise InputError(
                            f"{path}: feature block '{name}' has {key}={found!r}, the bundle was trained on "
                            f"{key}={expected!r}; extract the external cohort's features the same way"
                        )


def external_predictions(
    bundle: Bundle, training: OutOfFold, external: ExternalCohort, device_name: str
) -> tuple[Cohort, dict[str, np.ndarray], list[str]]:
    """Assemble an external cohort like the bundle's training data and predict it with the whole ensemble."""
    imaging = sorted(m for m in bundle.manifest.modalities if m != "clinical")
    if imaging and not external.stores:
        raise InputError(
            f"{bundle.path}: the bundle uses {' and '.join(imaging)} features; give the external cohort's "
            "feature stores with --test"
        )
    check_provenance(bundle, external.stores)
    assembled = assemble_for_bundle(bundle.manifest, external.stores, external.clinical, external.outcomes)
    data = assembled.data
    seen = sorted(set(data.patient_ids) & set(training.patient_ids))
    if seen:
        raise InputError(
            f"{external.outcomes}: patient {seen[0]} is in the bundle's training cohort "
            f"({len(seen)} such patients); an external cohort must be new patients"
        )
    predictions = predict_cohort(bundle.members, data.matrices, bundle.config, resolve_device(device_name), bundle.clinical_cox)
    cohort = Cohort(data.patient_ids, data.centers.tolist(), data.outcomes(), score_columns(assembled.clinical))
    notes = [*assembled.notes, *score_notes(assembled.clinical, str(external.clinical)), *ood_notes(bundle, data)]
    return cohort, predictions, [f"external cohort: {note}" for note in notes]


def _counted(flagged: list[list[str]]) -> str:
    """How often each name occurs over the rows, most often first, in brackets ('' when never)."""
    counts = Counter(name for names in flagged for name in names)
    return f" ({', '.join(f'{name} {k}' for name, k in counts.most_common())})" if counts else ""


def ood_notes(bundle: Bundle, data: TrainingData) -> list[str]:
    """How many patients of a cohort lie beyond the bundle's training cohort (fusion/ood.py), by modality, and how
    many of their scans were acquired unlike the training scans, by check."""
    if bundle.ood is None:
        return ["out-of-distribution check unavailable: the bundle predates it (no ood.json)"]
    flagged = bundle.ood.flagged(data.matrices)
    notes = [
        f"{sum(map(bool, flagged))} of {len(flagged)} patients lie beyond the training cohort in some modality "
        f"(out-of-distribution warning, docs/predict.md){_counted(flagged)}"
    ]
    if bundle.ood.acquisition and data.acquisition:
        unlike = bundle.ood.acquisition_flagged(data.acquisition)
        notes.append(
            f"{sum(map(bool, unlike))} of {len(unlike)} scans were acquired unlike the training scans "
            f"(spacing, HU calibration or contrast phase; docs/predict.md){_counted(unlike)}"
        )
    return notes


def _bundle_summary(bundle: Bundle) -> dict:
    """What the report says about the model it evaluates."""
    training = bundle.manifest.training
    return {
        "path": str(bundle.path),
        "model": bundle.config.model,
        "modalities": sorted(bundle.manifest.modalities),
        "cv": training.cv,
        "repeats": training.repeats,
        "folds": bundle.config.folds,
        "seeds": bundle.config.seeds,
        "members": len(bundle.members),
        "tipsprog_version": bundle.manifest.tipsprog_version,
    }


@dataclass(frozen=True)
class EvaluateOptions:
    """How `evaluate` runs: the synthetic truth tables (for the oracle), bootstrap draws and seed, workers, an
    external cohort to evaluate, and the device that predicts it."""

    truth_csvs: list[Path] | None = None
    draws: int = 1000
    seed: int = 0
    workers: int = 1
    external: ExternalCohort | None = None
    device: str = "auto"


@writes_output("report")
def run_evaluate(bundle_path: Path, out: Path, options: EvaluateOptions = EvaluateOptions()) -> dict:
    """Evaluate a bundle's out-of-fold predictions, its held-out patients (fuse-train --test) and an external cohort
    (evaluate --test), whichever exist; write report.html, report.md, metrics.json and plots into `out`."""
    bundle = load_bundle(bundle_path)
    data = read_oof(bundle.path / "oof.h5")
    horizons = np.array(bundle.config.horizons_days, dtype=float)
    truth = read_truth(options.truth_csvs) if options.truth_csvs else None
    _, grid = evaluation_grid(data.outcomes["time"], horizons)
    rows, notes = prediction_rows(data, grid, truth)
    absent_scores = bundle.manifest.score_notes  # scores fuse-train could not compute
    notes += absent_scores.get("out-of-fold", [])
    settings: dict[str, tuple[Cohort, list[PredictionRow]]] = {"out-of-fold": (data, rows)}
    unseen = []
    if (bundle.path / "held_out.h5").is_file():
        unseen.append(
            (
                "held-out",
                *read_held_out(bundle.path / "held_out.h5"),
                [f"held-out: {note}" for note in absent_scores.get("held-out", [])],
            )
        )
    if options.external is not None:
        unseen.append(("external", *external_predictions(bundle, data, options.external, options.device)))
    for name, cohort, predictions, cohort_notes in unseen:
        _, cohort_grid = evaluation_grid(cohort.outcomes["time"], horizons)
        cohort_rows, row_notes = held_out_rows(bundle, data, cohort, predictions, cohort_grid, truth)
        settings[name] = (cohort, cohort_rows)
        notes += cohort_notes + [f"{name}: {note}" for note in row_notes]
    documents = {
        name: evaluate_rows(setting_rows, cohort, horizons, options.draws, options.seed, options.workers)
        for name, (cohort, setting_rows) in settings.items()
    }
    transductive, seen_notes = exposure_report(
        bundle.manifest.training.cv,
        bundle.manifest.transductive,
        {name: (cohort.patient_ids, cohort.centers) for name, (cohort, _) in settings.items()},
    )
    notes = seen_notes + notes
    document = {
        "schema": METRICS_SCHEMA,
        "bundle": _bundle_summary(bundle),
        "settings": documents,
        "notes": notes,
        "transductive": transductive,
    }
    with atomic_output(out, "report") as tmp:
        tmp.mkdir(parents=True)
        sections = []
        for name, (cohort, setting_rows) in settings.items():
            figures = setting_figures(setting_rows, cohort, documents[name], tmp, "" if name == "out-of-fold" else f"{name}_")
            sections += setting_sections(name, documents[name], figures)
        (tmp / "metrics.json").write_text(json.dumps(document, indent=2, allow_nan=True), encoding="utf-8")
        (tmp / "report.md").write_text(markdown(TITLE, sections, notes), encoding="utf-8")
        (tmp / "report.html").write_text(html_page(TITLE, sections, notes), encoding="utf-8")
    return document
