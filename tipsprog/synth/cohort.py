"""Synthetic multi-center TIPS cohort: latents → clinical table, outcomes, CT phantoms, truth."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import SimpleITK as sitk

from tipsprog.errors import InputError
from tipsprog.parallel import map_ordered
from tipsprog.store import atomic_output, writes_output
from tipsprog.synth.phantom import Anatomy, Scanner, render

FOLLOW_UP_DAYS = 3 * 365.0
WEIBULL_SHAPE = 1.1
WEIBULL_SCALE = 1.8e-4
DROPOUT_PER_DAY = 0.08 / 365.0
MISSING_RATE = 0.05
MISSING_COLUMNS = ["bilirubin", "albumin", "creatinine", "inr", "sodium", "platelets", "wbc", "ppg_pre", "etiology"]


@dataclass(frozen=True)
class CohortSpec:
    """What `tipsprog synth` generates."""

    n: int = 200
    centers: int = 3
    seed: int = 0
    size: str = "small"
    prefix: str = ""

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
        Scanner(spacing_scale=float(rng.uniform(0.92, 1.08)), hu_offset=float(rng.uniform(-12, 12)),
                noise_sd=float(rng.uniform(8, 20)), blur_mm=float(rng.uniform(0.5, 2.0)))
        for _ in range(spec.centers)
    ]


def latents(spec: CohortSpec) -> pd.DataFrame:
    """Patient-level latent variables (standardised) and center membership."""
    rng = np.random.default_rng([spec.seed, 1])
    center = rng.integers(0, spec.centers, spec.n)
    case_mix = np.linspace(-0.25, 0.25, spec.centers)[center] if spec.centers > 1 else np.zeros(spec.n)
    dysfunction = rng.standard_normal(spec.n) + case_mix
    portal_ht = 0.4 * dysfunction + np.sqrt(1 - 0.16) * rng.standard_normal(spec.n)
    return pd.DataFrame({
        "patient_id": [f"{spec.prefix}P{i:04d}" for i in range(spec.n)],
        "center": [spec.center_name(c) for c in center],
        "liver_dysfunction": dysfunction,
        "portal_hypertension": portal_ht,
        "sarcopenia": 0.3 * dysfunction + np.sqrt(1 - 0.09) * rng.standard_normal(spec.n),
        "liver_texture": 0.3 * dysfunction + np.sqrt(1 - 0.09) * rng.standard_normal(spec.n),
        "spleen_size": 0.7 * portal_ht + np.sqrt(1 - 0.49) * rng.standard_normal(spec.n),
    })


def complete_clinical(lat: pd.DataFrame, spec: CohortSpec) -> pd.DataFrame:
    """Clinical variables with realistic marginals driven by the latents (no missing values)."""
    rng = np.random.default_rng([spec.seed, 2])
    n = len(lat)

    def noise() -> np.ndarray:
        return rng.standard_normal(n)

    d, p, s = lat["liver_dysfunction"], lat["portal_hypertension"], lat["spleen_size"]
    ascites_drive = 0.8 * p + 0.5 * d + 0.7 * noise()
    ascites = np.digitize(ascites_drive, [0.0, 1.2])
    indication = np.where((ascites == 2) & (rng.random(n) < 0.75), "ascites",
                          np.where(rng.random(n) < 0.85, "bleeding", "other"))
    etiology = rng.choice(["alcohol", "viral", "cholestatic", "other"], size=n, p=[0.5, 0.25, 0.07, 0.18])
    table = pd.DataFrame({
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
    })
    return table


def with_missing(table: pd.DataFrame, spec: CohortSpec) -> pd.DataFrame:
    """A copy of the clinical table with ~5% of the lab cells missing at random."""
    rng = np.random.default_rng([spec.seed, 4])
    observed = table.copy()
    for column in MISSING_COLUMNS:
        observed.loc[rng.random(len(observed)) < MISSING_RATE, column] = None
    return observed


def outcomes_and_truth(lat: pd.DataFrame, full: pd.DataFrame, spec: CohortSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Survival (PH Weibull), OHE (logistic) and ppg_post from the complete clinical table and latents."""
    rng = np.random.default_rng([spec.seed, 3])
    n = len(lat)
    age, bili, alb, creat = full["age"], full["bilirubin"], full["albumin"], full["creatinine"]
    sarc, tex, spleen = lat["sarcopenia"], lat["liver_texture"], lat["spleen_size"]
    linear_predictor = (0.035 * (age - 57) + 0.55 * np.log(bili / 1.4) - 0.05 * (alb - 33) + 0.6 * np.log(creat / 0.9)
                        + 0.5 * sarc + 0.6 * tex + 0.5 * spleen)
    event_time = (rng.exponential(size=n) / (WEIBULL_SCALE * np.exp(linear_predictor))) ** (1 / WEIBULL_SHAPE)
    dropout = rng.exponential(1 / DROPOUT_PER_DAY, size=n)
    censor = np.minimum(dropout, FOLLOW_UP_DAYS)
    time = np.maximum(np.minimum(event_time, censor), 1.0).round(0)
    event = (event_time <= censor).astype(int)
    ohe_probability = _sigmoid(-1.4 + 0.8 * full["he_history"] + 0.45 * lat["liver_dysfunction"]
                               + 0.35 * (age - 57) / 10 + 0.5 * sarc + 0.3 * tex)
    ppg_expected = 0.3 * full["ppg_pre"] + 2.5 + 1.5 * spleen
    outcomes = pd.DataFrame({
        "patient_id": lat["patient_id"], "time": time, "event": event,
        "ohe": (rng.random(n) < ohe_probability).astype(int),
        "ppg_post": np.clip(ppg_expected + 1.5 * rng.standard_normal(n), 1, 40).round(1),
    })
    truth = lat.assign(linear_predictor=linear_predictor, ohe_probability=ohe_probability,
                       ppg_post_expected=ppg_expected)
    return outcomes, truth


def anatomy_for(row: pd.Series, ascites_grade: int) -> Anatomy:
    """Map one patient's latents to phantom anatomy."""
    d, p = row["liver_dysfunction"], row["portal_hypertension"]
    return Anatomy(
        liver_scale=float(np.clip(1.0 - 0.06 * d, 0.8, 1.15)),
        nodularity=float(np.clip(0.03 + 0.04 * max(d, 0.0), 0.0, 0.2)),
        texture_hu=float(np.clip(6.0 + 5.0 * row["liver_texture"], 1.5, 22.0)),
        liver_hu_shift=float(-5.0 * d),
        spleen_scale=float(np.clip(1.0 + 0.16 * row["spleen_size"], 0.7, 1.6)),
        portal_radius_mm=float(np.clip(6.5 + 1.5 * p, 4.0, 12.0)),
        ascites_mm=float(8.0 * ascites_grade),
        muscle_mm=float(np.clip(14.0 - 4.0 * row["sarcopenia"], 4.0, 24.0)),
        fat_mm=18.0,
        habitus=1.0,
    )


def _render_patient(args: tuple[int, pd.Series, int, Scanner, CohortSpec, Path]) -> tuple[float, float]:
    """Render and write one patient's CT and labels; return liver and spleen volumes in mL."""
    index, row, ascites_grade, scanner, spec, out = args
    rng = np.random.default_rng([spec.seed, 100 + index])
    image, labels = render(anatomy_for(row, ascites_grade), scanner, spec.size, rng)
    sitk.WriteImage(image, str(out / "images" / f"{row['patient_id']}.nii.gz"), useCompression=True)
    sitk.WriteImage(labels, str(out / "labels" / f"{row['patient_id']}.nii.gz"), useCompression=True)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    label_array = sitk.GetArrayViewFromImage(labels)
    return float((label_array == 1).sum() * voxel_ml), float((label_array == 2).sum() * voxel_ml)


@writes_output("cohort")
def make_cohort(out: Path, spec: CohortSpec, workers: int = 1, progress: Callable[[], None] | None = None) -> pd.DataFrame:
    """Write images/, labels/, cohort.csv, clinical.csv, outcomes.csv and truth.csv into `out`."""
    lat = latents(spec)
    full = complete_clinical(lat, spec)
    outcomes, truth = outcomes_and_truth(lat, full, spec)
    scanners = {spec.center_name(c): scanner for c, scanner in enumerate(center_scanners(spec))}
    with atomic_output(out, "cohort") as tmp:
        (tmp / "images").mkdir(parents=True)
        (tmp / "labels").mkdir()
        jobs = [(i, row, int(full.at[i, "ascites"]), scanners[row["center"]], spec, tmp)
                for i, row in lat.iterrows()]
        volumes = []
        for result in map_ordered(_render_patient, jobs, workers):
            volumes.append(result)
            if progress:
                progress()
        truth = truth.assign(liver_volume_ml=[v[0] for v in volumes], spleen_volume_ml=[v[1] for v in volumes])
        pd.DataFrame({
            "patient_id": lat["patient_id"], "ct": [f"images/{p}.nii.gz" for p in lat["patient_id"]],
            "center": lat["center"], "label": [f"labels/{p}.nii.gz" for p in lat["patient_id"]],
        }).to_csv(tmp / "cohort.csv", index=False)
        with_missing(full, spec).to_csv(tmp / "clinical.csv", index=False)
        outcomes.to_csv(tmp / "outcomes.csv", index=False)
        truth.round(6).to_csv(tmp / "truth.csv", index=False)
    return truth
