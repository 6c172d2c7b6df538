"""Synthetic multi-center TIPS cohort: latents → clinical table, outcomes, CT phantoms, truth."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from tipsprog.errors import InputError
from tipsprog.outputs import atomic_output, writes_output
from tipsprog.parallel import map_ordered
from tipsprog.synth.phantom import Anatomy, Scanner, render

FOLLOW_UP_DAYS = 3 * 365.0
WEIBULL_SHAPE = 1.1
WEIBULL_SCALE = 1.3e-4
DROPOUT_PER_DAY = 0.08 / 365.0
MISSING_RATE = 0.05
MISSING_COLUMNS = ["bilirubin", "albumin", "creatinine", "inr", "sodium", "platelets", "wbc", "ppg_pre", "etiology"]
MYOSTEATOSIS_NOISE_SD = float(np.sqrt(1 - 0.322))  # 0.4 sarcopenia + 0.3 dysfunction (correlated 0.3) explain 0.322
ASCITES_MEDIAN_MM = (0.0, 5.0, 12.0)  # fluid layer per clinical ascites grade 0, 1, 2
ASCITES_SPREAD = 0.35  # log-normal spread of the fluid around its grade's median
ASCITES_MAX_MM = 18.0
TRACE_ASCITES_SHARE = 0.1  # grade 0 patients with a trace of fluid on CT (1.5-3.5 mm)
CYST_SHARE = 0.2  # patients with a simple renal cyst
SARCOPENIA_CUT = 0.25  # hazard rises only with sarcopenia above this (L3 muscle below about its 40th percentile)


@dataclass(frozen=True)
class CohortSpec:
    """What `tipsprog synth` generates."""

    n: int = 200
    centers: int = 3
    seed: int = 0
    size: str = "small"
    prefix: str = ""
    imaging_signal: bool = True  # False: outcomes depend on the clinical table only (the images stay the same)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]*", self.prefix):
            raise InputError(f"--prefix {self.prefix!r}: use letters, digits, '-' and '_' only (it becomes part of file names)")

    def center_name(self, index: int) -> str:
        """Name of the center with this 0-based index (the prefix keeps an external cohort's centers distinct)."""
        return f"{self.prefix}C{index + 1}"


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def center_scanners(spec: CohortSpec) -> list[Scanner]:
    """Acquisition effects per center (spacing, HU offset, noise, blur)."""
    rng = np.random.default_rng([spec.seed, 7919])
    return [
        Scanner(
            spacing_scale=float(rng.uniform(0.92, 1.08)),
            hu_offset=float(rng.uniform(-12, 12)),
            noise_sd=float(rng.uniform(8, 20)),
            blur_mm=float(rng.uniform(0.5, 2.0)),
        )
        for _ in range(spec.centers)
    ]


def latents(spec: CohortSpec) -> pd.DataFrame:
    """Patient-level latent variables (standardised) and center membership."""
    rng = np.random.default_rng([spec.seed, 1])
    center = rng.integers(0, spec.centers, spec.n)
    case_mix = np.linspace(-0.25, 0.25, spec.centers)[center] if spec.centers > 1 else np.zeros(spec.n)
    dysfunction = rng.standard_normal(spec.n) + case_mix
    portal_ht = 0.4 * dysfunction + np.sqrt(1 - 0.16) * rng.standard_normal(spec.n)
    sarcopenia = 0.3 * dysfunction + np.sqrt(1 - 0.09) * rng.standard_normal(spec.n)
    texture = 0.3 * dysfunction + np.sqrt(1 - 0.09) * rng.standard_normal(spec.n)
    spleen = 0.7 * portal_ht + np.sqrt(1 - 0.49) * rng.standard_normal(spec.n)
    body = np.random.default_rng([spec.seed, 5])
    return pd.DataFrame(
        {
            "patient_id": [f"{spec.prefix}P{i:04d}" for i in range(spec.n)],
            "center": [spec.center_name(c) for c in center],
            "liver_dysfunction": dysfunction,
            "portal_hypertension": portal_ht,
            "sarcopenia": sarcopenia,
            "liver_texture": texture,
            "spleen_size": spleen,
            "adiposity": -0.2 * dysfunction + np.sqrt(1 - 0.04) * body.standard_normal(spec.n),
            "myosteatosis": 0.4 * sarcopenia + 0.3 * dysfunction + MYOSTEATOSIS_NOISE_SD * body.standard_normal(spec.n),
        }
    )


def complete_clinical(lat: pd.DataFrame, spec: CohortSpec) -> pd.DataFrame:
    """Clinical variables with realistic marginals driven by the latents (no missing values)."""
    rng = np.random.default_rng([spec.seed, 2])
    n = len(lat)

    def noise() -> np.ndarray:
        return rng.standard_normal(n)

    d, p, s = lat["liver_dysfunction"], lat["portal_hypertension"], lat["spleen_size"]
    ascites_drive = 0.8 * p + 0.5 * d + 0.7 * noise()
    ascites = np.digitize(ascites_drive, [0.0, 1.2])
    indication = np.where((ascites == 2) & (rng.random(n) < 0.75), "ascites", np.where(rng.random(n) < 0.85, "bleeding", "other"))
    etiology = rng.choice(["alcohol", "viral", "cholestatic", "other"], size=n, p=[0.5, 0.25, 0.07, 0.18])
    table = pd.DataFrame(
        {
            "patient_id": lat["patient_id"],
            "center": lat["center"],
            "age": np.clip(57 + 10 * noise(), 25, 85).round(0),
            "sex": np.where(rng.random(n) < 0.68, "M", "F"),
            "bilirubin": np.clip(np.exp(np.log(1.4) + 0.55 * d + 0.4 * noise()), 0.2, 30).round(2),
            "albumin": np.clip(33 - 3.5 * d + 4 * noise(), 20, 50).round(1),
            "creatinine": np.clip(np.exp(np.log(0.9) + 0.15 * d + 0.1 * ascites + 0.3 * noise()), 0.3, 8).round(2),
            "inr": np.clip(np.exp(np.log(1.3) + 0.12 * d + 0.08 * noise()), 0.9, 4).round(2),
            "sodium": np.clip(136 - 1.5 * p - 1.0 * d + 3 * noise(), 118, 148).round(0),
            "platelets": np.clip(np.exp(np.log(110) - 0.3 * s + 0.35 * noise()), 20, 500).round(0),
            "wbc": np.clip(np.exp(np.log(5) - 0.15 * s + 0.3 * noise()), 1, 25).round(1),
            "ascites": ascites,
            "he_history": (rng.random(n) < _sigmoid(-1.8 + 0.6 * d)).astype(int),
            "indication": indication,
            "etiology": etiology,
            "ppg_pre": np.clip(20 + 3.5 * p + 2.5 * noise(), 12, 35).round(1),
        }
    )
    return table


def with_missing(table: pd.DataFrame, spec: CohortSpec) -> pd.DataFrame:
    """A copy of the clinical table with ~5% of the lab cells missing at random."""
    rng = np.random.default_rng([spec.seed, 4])
    observed = table.copy()
    for column in MISSING_COLUMNS:
        observed.loc[rng.random(len(observed)) < MISSING_RATE, column] = None
    return observed


def imaging_findings(full: pd.DataFrame, spec: CohortSpec) -> pd.DataFrame:
    """Per-patient imaging parameters that are not latents: free fluid (mm, from the clinical ascites grade plus
    noise), the caudate's deviation, and a renal cyst in some patients."""
    rng = np.random.default_rng([spec.seed, 6])
    n = len(full)
    grade = full["ascites"].to_numpy(int)
    fluid = np.array(ASCITES_MEDIAN_MM)[grade] * np.exp(ASCITES_SPREAD * rng.standard_normal(n))
    trace = (grade == 0) & (rng.random(n) < TRACE_ASCITES_SHARE)
    fluid = np.where(trace, rng.uniform(1.5, 3.5, n), np.minimum(fluid, ASCITES_MAX_MM))
    cyst = rng.random(n) < CYST_SHARE
    return pd.DataFrame(
        {
            "ascites_mm": fluid,
            "caudate_noise": rng.standard_normal(n),
            "cyst_mm": np.where(cyst, rng.uniform(6.0, 13.0, n), 0.0),
            "cyst_side": rng.choice([-1.0, 1.0], size=n),
            "cyst_z_mm": rng.uniform(-25.0, 15.0, n),
        },
        index=full.index,
    )


def portal_radius_mm(portal_hypertension: np.ndarray | float) -> np.ndarray | float:
    """Main portal vein radius (mm) for a portal hypertension latent."""
    return np.clip(6.5 + 1.5 * portal_hypertension, 4.0, 12.0)


def outcomes_and_truth(
    lat: pd.DataFrame, full: pd.DataFrame, findings: pd.DataFrame, spec: CohortSpec
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Survival (PH Weibull), OHE (logistic) and ppg_post from the complete clinical table, latents and imaging
    findings (equations: docs/synth.md); without imaging signal the imaging terms are left out (same draws)."""
    rng = np.random.default_rng([spec.seed, 3])
    imaging = 1.0 if spec.imaging_signal else 0.0
    n = len(lat)
    age, bili, alb, creat = full["age"], full["bilirubin"], full["albumin"], full["creatinine"]
    sarc, myo, tex, spleen = lat["sarcopenia"], lat["myosteatosis"], lat["liver_texture"], lat["spleen_size"]
    low_muscle = np.maximum(sarc - SARCOPENIA_CUT, 0.0)
    fluid = findings["ascites_mm"] / 10.0
    linear_predictor = (
        0.035 * (age - 57)
        + 0.55 * np.log(bili / 1.4)
        - 0.05 * (alb - 33)
        + 0.6 * np.log(creat / 0.9)
        + imaging * (0.9 * low_muscle + 0.3 * myo + 0.3 * fluid + 0.4 * low_muscle * fluid + 0.45 * tex + 0.2 * spleen)
    )
    event_time = (rng.exponential(size=n) / (WEIBULL_SCALE * np.exp(linear_predictor))) ** (1 / WEIBULL_SHAPE)
    dropout = rng.exponential(1 / DROPOUT_PER_DAY, size=n)
    censor = np.minimum(dropout, FOLLOW_UP_DAYS)
    time = np.maximum(np.minimum(event_time, censor), 1.0).round(0)
    event = (event_time <= censor).astype(int)
    ohe_probability = _sigmoid(
        -1.4
        + 0.8 * full["he_history"]
        + 0.45 * lat["liver_dysfunction"]
        + 0.35 * (age - 57) / 10
        + imaging * (0.45 * sarc + 0.35 * myo + 0.2 * tex)
    )
    pv_diameter = 2.0 * portal_radius_mm(lat["portal_hypertension"])
    ppg_expected = 0.3 * full["ppg_pre"] + 2.5 + imaging * (1.0 * spleen + 0.25 * (pv_diameter - 13.0))
    outcomes = pd.DataFrame(
        {
            "patient_id": lat["patient_id"],
            "time": time,
            "event": event,
            "ohe": (rng.random(n) < ohe_probability).astype(int),
            "ppg_post": np.clip(ppg_expected + 1.5 * rng.standard_normal(n), 1, 40).round(1),
        }
    )
    truth = lat.assign(linear_predictor=linear_predictor, ohe_probability=ohe_probability, ppg_post_expected=ppg_expected)
    return outcomes, truth


def anatomy_for(row: pd.Series) -> Anatomy:
    """Map one patient's latents and imaging findings to phantom anatomy."""
    d, p = row["liver_dysfunction"], row["portal_hypertension"]
    return Anatomy(
        liver_scale=float(np.clip(1.0 - 0.06 * d, 0.8, 1.15)),
        right_lobe_scale=float(np.clip(1.0 - 0.05 * d, 0.85, 1.1)),
        caudate_ratio=float(np.clip(0.6 + 0.13 * d + 0.06 * row["caudate_noise"], 0.3, 1.1)),
        nodularity_mm=float(np.clip(1.5 + 3.0 * max(d, 0.0), 1.0, 12.0)),
        texture_hu=float(np.clip(6.0 + 5.0 * row["liver_texture"], 1.5, 22.0)),
        liver_hu_shift=float(-5.0 * d),
        spleen_scale=float(np.clip(1.0 + 0.16 * row["spleen_size"], 0.7, 1.6)),
        portal_radius_mm=float(portal_radius_mm(p)),
        ascites_mm=float(row["ascites_mm"]),
        muscle_mm=float(np.clip(10.0 - 2.5 * row["sarcopenia"], 4.0, 16.0)),
        muscle_hu=float(np.clip(45.0 - 12.0 * row["myosteatosis"], 15.0, 60.0)),
        fat_mm=float(np.clip(20.0 + 8.0 * row["adiposity"], 8.0, 40.0)),
        bowel_fill=float(np.clip(0.65 - 0.15 * row["adiposity"], 0.3, 0.85)),
        cyst_mm=float(row["cyst_mm"]),
        cyst_side=float(row["cyst_side"]),
        cyst_z_mm=float(row["cyst_z_mm"]),
        habitus=1.0,
    )


def _render_patient(args: tuple[int, pd.Series, Scanner, CohortSpec, Path]) -> dict[str, float]:
    """Render and write one patient's CT and labels; return its imaging biomarkers' truth."""
    index, row, scanner, spec, out = args
    rng = np.random.default_rng([spec.seed, 100 + index])
    phantom = render(anatomy_for(row), scanner, spec.size, rng)
    sitk.WriteImage(phantom.image, str(out / "images" / f"{row['patient_id']}.nii.gz"), useCompression=True)
    sitk.WriteImage(phantom.labels, str(out / "labels" / f"{row['patient_id']}.nii.gz"), useCompression=True)
    return phantom.biomarkers


@writes_output("cohort")
def make_cohort(out: Path, spec: CohortSpec, workers: int = 1, progress: Callable[[], None] | None = None) -> pd.DataFrame:
    """Write images/, labels/, cohort.csv, clinical.csv, outcomes.csv and truth.csv into `out`."""
    lat = latents(spec)
    full = complete_clinical(lat, spec)
    findings = imaging_findings(full, spec)
    outcomes, truth = outcomes_and_truth(lat, full, findings, spec)
    scanners = {spec.center_name(c): scanner for c, scanner in enumerate(center_scanners(spec))}
    patients = pd.concat([lat, findings], axis=1)
    with atomic_output(out, "cohort") as tmp:
        (tmp / "images").mkdir(parents=True)
        (tmp / "labels").mkdir()
        jobs = [(i, row, scanners[row["center"]], spec, tmp) for i, row in patients.iterrows()]
        biomarkers = []
        for result in map_ordered(_render_patient, jobs, workers):
            biomarkers.append(result)
            if progress:
                progress()
        truth = pd.concat([truth, pd.DataFrame(biomarkers, index=truth.index)], axis=1)
        pd.DataFrame(
            {
                "patient_id": lat["patient_id"],
                "ct": [f"images/{p}.nii.gz" for p in lat["patient_id"]],
                "center": lat["center"],
                "label": [f"labels/{p}.nii.gz" for p in lat["patient_id"]],
            }
        ).to_csv(tmp / "cohort.csv", index=False)
        with_missing(full, spec).to_csv(tmp / "clinical.csv", index=False)
        outcomes.to_csv(tmp / "outcomes.csv", index=False)
        truth.round(6).to_csv(tmp / "truth.csv", index=False)
    return truth
