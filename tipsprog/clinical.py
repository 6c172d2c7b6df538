"""Clinical schema, unit conversion, validation and the clinical prognostic scores."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tipsprog.errors import InputError
from tipsprog.tables import normal_name, numbers, read_table, rename_columns

HEADER_UNIT = re.compile(r"^(.+?)\s*(?:\[(.+)\]|\((.+)\))$")
LOOKALIKE_CUTOFF = 0.85  # difflib ratio from which an unknown column counts as a misspelt schema variable
BILIRUBIN_UMOL_PER_MGDL = 17.1
RESERVED = {"patient_id", "center"}
OUTCOMES = ("time", "event", "ohe", "ppg_post")  # never features: a model would be handed the answer


@dataclass(frozen=True)
class Variable:
    """One clinical variable of the schema."""

    name: str
    kind: str
    unit: str = ""
    low: float = -np.inf
    high: float = np.inf
    log: bool = False
    units: tuple[tuple[str, float], ...] = ()
    levels: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()


@lru_cache(maxsize=1)
def schema() -> dict[str, Variable]:
    """Load the packaged clinical schema (names, units, ranges, types)."""
    text = resources.files("tipsprog").joinpath("clinical_schema.yaml").read_text(encoding="utf-8")
    variables = {}
    for name, spec in yaml.safe_load(text).items():
        low, high = spec.get("range", [-np.inf, np.inf])
        variables[name] = Variable(
            name=name,
            kind=spec["kind"],
            unit=str(spec.get("unit", "")),
            low=float(low),
            high=float(high),
            log=bool(spec.get("log", False)),
            units=tuple(spec.get("units", {}).items()),
            levels=tuple(spec.get("levels", [])),
            aliases=tuple(spec.get("aliases", {}).items()),
        )
    return variables


def _factor(variable: Variable, unit: str, column: str, path: Path) -> float:
    """The factor from a header's unit (any case) to the variable's canonical unit."""
    factors = {variable.unit.casefold(): 1.0, **{u.casefold(): f for u, f in variable.units}}
    if unit.strip().casefold() not in factors:
        known = ", ".join([variable.unit, *(u for u, _ in variable.units)])
        raise InputError(f"{path}: column '{column}': unknown unit '{unit.strip()}' for {variable.name} (known: {known})")
    return factors[unit.strip().casefold()]


def _reject_lookalike(column: str, name: str, path: Path) -> None:
    """Fail on an unknown column named like a schema variable (a misspelt header would silently be imputed); a
    variable's name with a suffix (albumin_2, inr2, bilirubin_d7) is a deliberate extra column."""
    normal = normal_name(name)
    derived = any(re.fullmatch(rf"{re.escape(variable)}[_0-9].*", normal) for variable in schema())  # albumin_2, inr2
    close = difflib.get_close_matches(normal, list(schema()), n=1, cutoff=LOOKALIKE_CUTOFF)
    if close and not derived:
        variable = schema()[close[0]]
        hint = f" (units go in brackets: {variable.name}[{variable.units[0][0]}])" if variable.units else ""
        raise InputError(
            f"{path}: column '{column}' looks like the schema variable '{variable.name}' but does not match it; rename it{hint}"
        )


def _reject_outcome(column: str, name: str, path: Path, outcome_headers: set[str], outcomes: Path | None) -> None:
    """Fail on a column named like an outcome (time, event, ohe, ppg_post or a column of the outcomes file): as an
    extra column it would become a feature."""
    if normal_name(name) in OUTCOMES or normal_name(column) in OUTCOMES:
        raise InputError(
            f"{path}: column '{column}' is an outcome, not a clinical variable; remove it (outcomes go in "
            f"{outcomes or 'outcomes.csv'})"
        )
    if normal_name(name) in outcome_headers or normal_name(column) in outcome_headers:
        raise InputError(
            f"{path}: column '{column}' is also a column of the outcomes file {outcomes}; remove it (an "
            "outcome may not be a feature)"
        )


def _header_units(table: pd.DataFrame, path: Path, outcomes: Path | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """Rename headers to schema and reserved names (any case, spacing, unit in [] or ()); return unit factors."""
    renamed, factors_used = {}, {}
    outcome_headers = {normal_name(c) for c in read_table(outcomes, []).columns} - RESERVED if outcomes else set()
    for column in table.columns:
        match = HEADER_UNIT.match(column)
        name, unit = (match.group(1), match.group(2) or match.group(3)) if match else (column, None)
        variable = schema().get(normal_name(name))
        if variable is not None:
            renamed[column] = variable.name
            if unit is not None:
                factors_used[variable.name] = _factor(variable, unit, column, path)
        elif normal_name(column) in RESERVED:
            renamed[column] = normal_name(column)
        else:
            _reject_outcome(column, name, path, outcome_headers, outcomes)
            _reject_lookalike(column, name, path)
            renamed[column] = name if column.endswith("]") else column  # an extra column's [unit] is dropped
    return rename_columns(table, renamed, path), factors_used


def _validate_numeric(table: pd.DataFrame, variable: Variable, path: Path, factor: float) -> pd.Series:
    """Coerce one schema column to float in the canonical unit and check its plausible range."""
    raw = table[variable.name]
    values = numbers(raw)
    unparsable = raw.notna() & values.isna()
    if unparsable.any():
        pid = unparsable.idxmax()
        raise InputError(f"{path}: patient {pid}: {variable.name}={raw[pid]!r} is not a number")
    values = values * factor
    outside = values.notna() & ((values < variable.low) | (values > variable.high))
    if outside.any():
        pid = outside.idxmax()
        raise InputError(
            f"{path}: patient {pid}: {variable.name}={values[pid]:g} {variable.unit} outside plausible range "
            f"{variable.low:g}–{variable.high:g}"
        )
    return values.astype(float)


def _validate_categorical(table: pd.DataFrame, variable: Variable, path: Path) -> pd.Series:
    """Normalise one categorical column to the schema's levels."""
    aliases = {k.lower(): v for k, v in variable.aliases} | {level.lower(): level for level in variable.levels}
    raw = table[variable.name]
    values = raw.map(lambda v: aliases.get(str(v).strip().lower()) if pd.notna(v) else None)
    unknown = raw.notna() & values.isna()
    if unknown.any():
        pid = unknown.idxmax()
        raise InputError(f"{path}: patient {pid}: {variable.name}={raw[pid]!r} not one of {list(variable.levels)}")
    return values


def read_clinical(path: str | Path, outcomes: Path | None = None) -> pd.DataFrame:
    """Read clinical.csv: convert units, validate ranges and levels, keep extra columns; a column named like an
    outcome (or like a column of the `outcomes` file) is an error."""
    path = Path(path)
    table, factors = _header_units(read_table(path, []), path, outcomes)
    for name, variable in schema().items():
        if name not in table.columns:
            table[name] = np.nan if variable.kind == "numeric" else None
        elif variable.kind == "numeric":
            table[name] = _validate_numeric(table, variable, path, factors.get(name, 1.0))
        else:
            table[name] = _validate_categorical(table, variable, path)
    return table


def extra_columns(table: pd.DataFrame) -> list[str]:
    """Columns of a clinical table that are not in the schema (used as extra features)."""
    return [c for c in table.columns if c not in schema() and c not in RESERVED]


def _clip_low(values: pd.Series | np.ndarray, low: float) -> np.ndarray:
    return np.maximum(np.asarray(values, dtype=float), low)


def meld(bilirubin: np.ndarray, inr: np.ndarray, creatinine: np.ndarray) -> np.ndarray:
    """MELD (UNOS, pre-2016): inputs below 1 set to 1, creatinine capped at 4, result 6–40."""
    bili, ratio = _clip_low(bilirubin, 1.0), _clip_low(inr, 1.0)
    creat = np.minimum(_clip_low(creatinine, 1.0), 4.0)
    score = 3.78 * np.log(bili) + 11.2 * np.log(ratio) + 9.57 * np.log(creat) + 6.43
    return np.clip(score, 6.0, 40.0)


def meld_na(bilirubin: np.ndarray, inr: np.ndarray, creatinine: np.ndarray, sodium: np.ndarray) -> np.ndarray:
    """MELD-Na (Kim 2008): MELD + 1.32·(137−Na) − 0.033·MELD·(137−Na), Na clamped to 125–137."""
    base = meld(bilirubin, inr, creatinine)
    deficit = 137.0 - np.clip(np.asarray(sodium, dtype=float), 125.0, 137.0)
    return np.clip(base + 1.32 * deficit - 0.033 * base * deficit, 6.0, 40.0)


def _points(values: np.ndarray, cut_low: float, cut_high: float, increasing: bool) -> np.ndarray:
    """Child-Pugh style 1/2/3 points from two cut-offs (NaN stays NaN)."""
    values = np.asarray(values, dtype=float)
    if increasing:
        points = np.where(values < cut_low, 1.0, np.where(values <= cut_high, 2.0, 3.0))
    else:
        points = np.where(values > cut_high, 1.0, np.where(values >= cut_low, 2.0, 3.0))
    return np.where(np.isnan(values), np.nan, points)


def child_pugh(bilirubin, albumin, inr, ascites, he_history) -> np.ndarray:
    """Child-Pugh points 5–15 (bili mg/dL, albumin g/L, INR, ascites grade 0–2, HE 0/1)."""
    return (
        _points(bilirubin, 2.0, 3.0, increasing=True)
        + _points(albumin, 28.0, 35.0, increasing=False)
        + _points(inr, 1.7, 2.3, increasing=True)
        + (np.asarray(ascites, dtype=float) + 1.0)
        + (np.asarray(he_history, dtype=float) + 1.0)
    )


def albi(bilirubin: np.ndarray, albumin: np.ndarray) -> np.ndarray:
    """ALBI (Johnson 2015): 0.66·log10(bili µmol/L) − 0.085·albumin g/L."""
    return 0.66 * np.log10(np.asarray(bilirubin, dtype=float) * BILIRUBIN_UMOL_PER_MGDL) - 0.085 * np.asarray(
        albumin, dtype=float
    )


def fips(age: np.ndarray, bilirubin: np.ndarray, creatinine: np.ndarray, albumin: np.ndarray) -> np.ndarray:
    """FIPS (Bettinger et al., J Hepatol 2021;74:1362): bili and creatinine mg/dL, albumin g/L.

    1.43·log10(bili) − 1.71·(1/creat) + 0.02·age − 0.02·albumin + 0.8074; high risk ≥ 0.92.
    The albumin unit is g/L as in the Freiburg publication and its online calculator.
    """
    return (
        1.43 * np.log10(np.asarray(bilirubin, dtype=float))
        - 1.71 / np.asarray(creatinine, dtype=float)
        + 0.02 * np.asarray(age, dtype=float)
        - 0.02 * np.asarray(albumin, dtype=float)
        + 0.8074
    )


FIPS_HIGH_RISK = 0.92


def clif_c_ad(age, creatinine, inr, wbc, sodium) -> np.ndarray:
    """CLIF-C AD (Jalan 2015): 10·(0.03·age + 0.66·ln creat + 1.71·ln INR + 0.88·ln WBC − 0.05·Na + 8)."""
    return 10.0 * (
        0.03 * np.asarray(age, dtype=float)
        + 0.66 * np.log(np.asarray(creatinine, dtype=float))
        + 1.71 * np.log(np.asarray(inr, dtype=float))
        + 0.88 * np.log(np.asarray(wbc, dtype=float))
        - 0.05 * np.asarray(sodium, dtype=float)
        + 8.0
    )


def malinchoc(bilirubin, inr, creatinine, etiology) -> np.ndarray:
    """Malinchoc TIPS score R (Hepatology 2000;31:864): the original MELD built for TIPS."""
    other_cause = np.where(
        pd.isna(np.asarray(etiology, dtype=object)), np.nan, ~pd.Series(etiology).isin(["alcohol", "cholestatic"]).to_numpy()
    )
    return (
        0.957 * np.log(np.asarray(creatinine, dtype=float))
        + 0.378 * np.log(np.asarray(bilirubin, dtype=float))
        + 1.12 * np.log(np.asarray(inr, dtype=float))
        + 0.643 * other_cause.astype(float)
    )


MALINCHOC_S0 = {1: 0.990, 7: 0.966, 30: 0.860, 90: 0.707, 183: 0.621, 365: 0.551, 730: 0.428}


def malinchoc_survival(score: np.ndarray, day: int) -> np.ndarray:
    """Malinchoc survival probability S(t) = S0(t)^exp(R − 1.127) at a tabulated day."""
    return MALINCHOC_S0[day] ** np.exp(np.asarray(score, dtype=float) - 1.127)


SCORE_INPUTS = {
    "FIPS": ("age", "bilirubin", "creatinine", "albumin"),
    "MELD": ("bilirubin", "inr", "creatinine"),
    "MELD-Na": ("bilirubin", "inr", "creatinine", "sodium"),
    "Child-Pugh": ("bilirubin", "albumin", "inr", "ascites", "he_history"),
    "ALBI": ("bilirubin", "albumin"),
    "CLIF-C AD": ("age", "creatinine", "inr", "wbc", "sodium"),
    "Malinchoc": ("bilirubin", "inr", "creatinine", "etiology"),
}
SCORE_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "FIPS": fips,
    "MELD": meld,
    "MELD-Na": meld_na,
    "Child-Pugh": child_pugh,
    "ALBI": albi,
    "CLIF-C AD": clif_c_ad,
    "Malinchoc": malinchoc,
}


def missing_score_inputs(table: pd.DataFrame) -> dict[str, list[str]]:
    """Each clinical score that cannot be computed and the inputs the table lacks (known for no patient)."""
    lacking = {name: [column for column in inputs if table[column].isna().all()] for name, inputs in SCORE_INPUTS.items()}
    return {name: columns for name, columns in lacking.items() if columns}


def score_notes(table: pd.DataFrame, source: str) -> list[str]:
    """One line per clinical score left out because `source` (the clinical table) lacks its inputs."""
    return [f"{name} not shown: {source} lacks {', '.join(columns)}" for name, columns in missing_score_inputs(table).items()]


def clinical_scores(table: pd.DataFrame) -> pd.DataFrame:
    """All clinical scores whose inputs exist in the table (NaN where a patient lacks an input)."""
    missing = missing_score_inputs(table)
    scores = {
        name: SCORE_FUNCTIONS[name](*(table[column].to_numpy() for column in inputs))
        for name, inputs in SCORE_INPUTS.items()
        if name not in missing
    }
    return pd.DataFrame(scores, index=table.index)
