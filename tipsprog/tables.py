"""CSV reading with validation: delimiters, missing-value markers, column names, patient IDs, the cohort table
(paths resolved from its folder) and the outcomes table; a bad value is one line naming the file, row and column."""

from __future__ import annotations

import csv
from pathlib import Path, PureWindowsPath

import numpy as np
import pandas as pd

from tipsprog.errors import InputError

MISSING_MARKERS = ["", "NA", "N/A", "na", "NaN", "nan", ".", "null", "NULL"]
DELIMITERS = ",;\t|"


def _delimiter(path: Path) -> str:
    """The CSV's delimiter among comma, semicolon, tab and bar (comma for a one-column file)."""
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        sample = handle.read(65536)
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","


def _unsafe_id(patient_id: str) -> bool:
    """Whether a patient ID could escape the folder or HDF5 group it names a file or group in."""
    return patient_id in (".", "..") or any(c in patient_id for c in "/\\") or any(ord(c) < 32 for c in patient_id)


def _number(value: object) -> float:
    """One cell as a float (decimal comma allowed), NaN when missing or not a number; correctly rounded."""
    if isinstance(value, (int, float, np.number)):
        return float(value)
    try:
        return float(str(value).strip().replace(",", "."))
    except ValueError:
        return np.nan


def numbers(raw: pd.Series) -> pd.Series:
    """A column as floats, a decimal comma read as a point; what cannot be parsed becomes NaN."""
    return raw.map(_number).where(raw.notna()).astype(float)


def normal_name(header: str) -> str:
    """A header as compared with known column names: case-folded, each run of spaces, '-' and '_' one '_', none at the ends."""
    return "_".join(header.casefold().replace("-", " ").replace("_", " ").split())


def rename_columns(table: pd.DataFrame, renames: dict[str, str], path: Path) -> pd.DataFrame:
    """Rename columns (header → name); two headers given one name are an error naming both."""
    first: dict[str, str] = {}
    for column, name in renames.items():
        if first.setdefault(name, column) != column:
            raise InputError(f"{path}: columns '{first[name]}' and '{column}' both mean '{name}'")
    return table.rename(columns=renames)


def canonical_columns(table: pd.DataFrame, names: set[str], path: Path) -> pd.DataFrame:
    """Rename each column whose normal_name is one of `names` to that name."""
    return rename_columns(table, {c: normal_name(c) for c in table.columns if normal_name(c) in names}, path)


COHORT_PATH_COLUMNS = ("ct", "label", "liver_mask", "spleen_mask", "portal_vein_mask")
TEXT_COLUMNS = ("patient_id", "center", "series_uid", *COHORT_PATH_COLUMNS)  # read as written: '007', '1.20' stay so


def read_table(path: str | Path, required: list[str]) -> pd.DataFrame:
    """Read a CSV with a unique `patient_id` column (header in any case and spacing) and the required columns."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        options = {"sep": _delimiter(path), "encoding": "utf-8-sig"}
        texts = [c for c in pd.read_csv(path, nrows=0, **options).columns if normal_name(str(c)) in TEXT_COLUMNS]
        table = pd.read_csv(
            path,
            dtype=dict.fromkeys(texts, str),
            na_values=MISSING_MARKERS,
            keep_default_na=False,
            float_precision="round_trip",
            **options,
        )
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise InputError(f"{path}: cannot parse CSV ({str(err).splitlines()[0]})") from None
    table.columns = [str(c).strip() for c in table.columns]
    table = canonical_columns(table, {"patient_id"}, path)
    for column in ["patient_id", *required]:
        if column not in table.columns:
            raise InputError(f"{path}: missing required column '{column}'")
    table["patient_id"] = table["patient_id"].astype(str).str.strip()
    empty = table.index[table["patient_id"].isin(["", "nan"])]
    if len(empty):
        raise InputError(f"{path}: row {int(empty[0]) + 2}: missing patient_id (empty or a missing-value marker such as NA)")
    unsafe = table["patient_id"][table["patient_id"].map(_unsafe_id)]
    if len(unsafe):
        row = int(unsafe.index[0]) + 2
        raise InputError(
            f"{path}: row {row}: patient_id {unsafe.iloc[0]!r} may not contain '/', '\\', control "
            "characters or be '.' or '..' (it names files and store groups)"
        )
    duplicated = table["patient_id"][table["patient_id"].duplicated()]
    if len(duplicated):
        raise InputError(f"{path}: duplicate patient_id '{duplicated.iloc[0]}'")
    return table.set_index("patient_id", drop=False)


def read_id_list(path: str | Path, known: list[str], source: str) -> list[str]:
    """The patient IDs of a CSV with a patient_id column (e.g. --fit-ids), each one of `known` (the patients of `source`)."""
    listed = read_table(path, []).index.tolist()
    if not listed:
        raise InputError(f"{path}: lists no patient")
    known_ids = set(known)
    unknown = [pid for pid in listed if pid not in known_ids]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise InputError(f"{path}: patient {unknown[0]} is not in {source}{more}")
    return listed


def _cohort_path(base: Path, value: str) -> str:
    """A cohort path resolved against the CSV's folder; Windows separators ('images\\P1.nii.gz') read as '/'."""
    given = base / value
    if "\\" in value and not given.exists():
        given = base / PureWindowsPath(value).as_posix()
    return str(given.resolve())


def read_cohort(path: str | Path) -> pd.DataFrame:
    """Read cohort.csv; CT and mask paths resolve against the CSV's folder; an empty 'series_uid' is None (no choice)."""
    path = Path(path)
    cohort = read_table(path, ["ct"])
    base = path.resolve().parent
    for column in COHORT_PATH_COLUMNS:
        if column in cohort.columns:
            cohort[column] = [
                None if pd.isna(value) or str(value).strip() == "" else _cohort_path(base, str(value).strip())
                for value in cohort[column]
            ]
    if cohort["ct"].isna().any():
        row = int(np.flatnonzero(cohort["ct"].isna().to_numpy())[0]) + 2
        raise InputError(f"{path}: row {row}: empty 'ct' path")
    if "series_uid" in cohort.columns:
        cohort["series_uid"] = [
            None if pd.isna(value) or str(value).strip() == "" else str(value).strip() for value in cohort["series_uid"]
        ]
    if "center" not in cohort.columns:
        cohort["center"] = "unknown"
    cohort["center"] = cohort["center"].fillna("unknown").astype(str)
    return cohort


def read_outcomes(path: str | Path) -> pd.DataFrame:
    """Read outcomes.csv (headers in any case and spacing) and check time ≥ 0, event and ohe in {0, 1}."""
    path = Path(path)
    columns = ["time", "event", "ohe", "ppg_post"]
    outcomes = canonical_columns(read_table(path, []), set(columns), path)
    for column in columns:
        if column not in outcomes.columns:
            outcomes[column] = np.nan
        values = numbers(outcomes[column])
        bad = (outcomes[column].notna() & values.isna()) | np.isinf(values)
        if bad.any():
            raise InputError(
                f"{path}: patient {bad.idxmax()}: '{column}' is not a finite number: {outcomes.at[bad.idxmax(), column]!r}"
            )
        outcomes[column] = values.astype(float)
    checks = {
        "time": (outcomes["time"] < 0, "negative survival time"),
        "event": (~outcomes["event"].isin([0, 1]) & outcomes["event"].notna(), "event must be 0 or 1"),
        "ohe": (~outcomes["ohe"].isin([0, 1]) & outcomes["ohe"].notna(), "ohe must be 0 or 1"),
        "ppg_post": ((outcomes["ppg_post"] < 0) | (outcomes["ppg_post"] > 60), "ppg_post outside 0–60 mmHg"),
    }
    for column, (bad, message) in checks.items():
        if bad.any():
            pid = bad.idxmax()
            raise InputError(f"{path}: patient {pid}: {column}={outcomes.at[pid, column]:g}: {message}")
    if outcomes["time"].isna().ne(outcomes["event"].isna()).any():
        pid = outcomes["time"].isna().ne(outcomes["event"].isna()).idxmax()
        raise InputError(f"{path}: patient {pid}: 'time' and 'event' must be given together")
    return outcomes[["patient_id", "time", "event", "ohe", "ppg_post"]]
