"""CSV headers match the schema and the reserved columns in any case, spacing and unit notation."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tipsprog.clinical import SCORE_INPUTS, clinical_scores, extra_columns, read_clinical, schema
from tipsprog.errors import InputError
from tipsprog.synth.cohort import CohortSpec, complete_clinical, latents
from tipsprog.tables import read_outcomes, read_table

SAMPLE = {"age": 60, "sex": "F", "bilirubin": 2.0, "inr": 1.5, "he_history": 1, "ppg_pre": 20.0, "etiology": "viral"}


def _clinical(tmp_path: Path, header: str, value: object) -> Path:
    """A one-patient clinical.csv with `patient_id` and one more column."""
    path = tmp_path / "clinical.csv"
    path.write_text(f"patient_id,{header}\nA,{value}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "header, name",
    [
        ("Age", "age"),
        ("AGE", "age"),
        ("  Bilirubin ", "bilirubin"),
        ("INR", "inr"),
        ("He History", "he_history"),
        ("he-history", "he_history"),
        ("HE_HISTORY", "he_history"),
        ("Ppg Pre", "ppg_pre"),
        ("Sex", "sex"),
        ("Etiology", "etiology"),
    ],
)
def test_header_spellings_match_the_schema(tmp_path, header, name):
    table = read_clinical(_clinical(tmp_path, header, SAMPLE[name]))
    assert table.loc["A", name] == SAMPLE[name]
    assert header.strip() not in table.columns and extra_columns(table) == []


def test_reserved_columns_match_in_any_spelling_and_ids_stay_text(tmp_path):
    path = tmp_path / "clinical.csv"
    path.write_text("Patient ID,Center,Age\n007,C1,60\n")
    table = read_clinical(path)
    assert table.index.tolist() == ["007"] and table.loc["007", "center"] == "C1" and table.loc["007", "age"] == 60
    assert extra_columns(table) == []


@pytest.mark.parametrize(
    "header, raw, name, expected",
    [
        ("bilirubin (mg/dL)", 2.0, "bilirubin", 2.0),
        ("Bilirubin(MG/DL)", 2.0, "bilirubin", 2.0),
        ("bilirubin (umol/L)", 34.2, "bilirubin", 34.2 * 0.05848),
        ("BILIRUBIN [UMOL/L]", 34.2, "bilirubin", 34.2 * 0.05848),
        ("Albumin (g/dL)", 3.5, "albumin", 35.0),
        ("Creatinine (µmol/L)", 88.4, "creatinine", 88.4 * 0.01131),
        ("Creatinine (µmol/L)".upper(), 88.4, "creatinine", 88.4 * 0.01131),
        ("Platelets (10^3/uL)", 150, "platelets", 150.0),
        ("PPG-Pre (cmH2O)", 27.2, "ppg_pre", 27.2 * 0.7356),
    ],
)
def test_units_in_brackets_or_parentheses_are_converted(tmp_path, header, raw, name, expected):
    table = read_clinical(_clinical(tmp_path, header, raw))
    assert table.loc["A", name] == pytest.approx(expected, rel=1e-12)
    assert extra_columns(table) == []


def test_unknown_unit_in_parentheses_is_an_error(tmp_path):
    path = _clinical(tmp_path, "bilirubin (furlongs)", 1)
    with pytest.raises(
        InputError,
        match=r"clinical.csv: column 'bilirubin \(furlongs\)': unknown unit 'furlongs' "
        r"for bilirubin \(known: mg/dL, umol/L, µmol/L\)",
    ):
        read_clinical(path)


def test_a_misspelt_schema_variable_is_an_error_that_says_how_to_fix_it(tmp_path):
    path = _clinical(tmp_path, "bilirubn", 2.0)
    with pytest.raises(InputError) as error:
        read_clinical(path)
    assert str(error.value) == (
        f"{path}: column 'bilirubn' looks like the schema variable 'bilirubin' but does not "
        "match it; rename it (units go in brackets: bilirubin[umol/L])"
    )


@pytest.mark.parametrize(
    "header, name",
    [
        ("albumine", "albumin"),
        ("creatinin", "creatinine"),
        ("Bilirubn (mg/dL)", "bilirubin"),
        ("platelet", "platelets"),
        ("He_Histroy", "he_history"),
        ("Aetiology", "etiology"),
        ("sodiumm", "sodium"),
    ],
)
def test_lookalike_headers_are_errors(tmp_path, header, name):
    with pytest.raises(
        InputError,
        match=rf"column '{re.escape(header)}' looks like the schema variable '{name}' "
        "but does not match it; rename it",
    ):
        read_clinical(_clinical(tmp_path, header, 1))


@pytest.mark.parametrize(
    "header",
    [
        "bmi",
        "hvpg",
        "meld_lab",
        "Child Pugh class",
        "bilirubin_direct",
        "ascites_volume",
        "platelet_count",
        "sodium_urine",
        "center_size",
        "BMI (kg/m2)",
        "albumin_2",
        "inr2",
        "bilirubin_d7",
        "ppg_post_day7",
        "event_count",
    ],
)
def test_genuine_extra_columns_are_kept_as_written(tmp_path, header):
    assert extra_columns(read_clinical(_clinical(tmp_path, header, 1))) == [header]


@pytest.mark.parametrize("header", ["ppg_post", "time", "ohe", "event", "Event", "PPG Post", "Time (days)", "ppg-post[mmHg]"])
def test_an_outcome_column_in_the_clinical_table_is_an_error(tmp_path, header):
    """An outcome must never become a feature (an extra column), whatever its spelling."""
    path = _clinical(tmp_path, header, 1)
    with pytest.raises(InputError) as error:
        read_clinical(path)
    assert str(error.value) == (
        f"{path}: column '{header}' is an outcome, not a clinical variable; remove it (outcomes go in outcomes.csv)"
    )


def test_a_column_of_the_outcomes_file_in_the_clinical_table_is_an_error(tmp_path):
    (tmp_path / "outcomes.csv").write_text("patient_id,time,event,Death Date,center\nA,100,1,2020-01-01,C1\n")
    path = _clinical(tmp_path, "death_date", "2020-01-01")
    with pytest.raises(InputError) as error:
        read_clinical(path, tmp_path / "outcomes.csv")
    assert str(error.value) == (
        f"{path}: column 'death_date' is also a column of the outcomes file "
        f"{tmp_path / 'outcomes.csv'}; remove it (an outcome may not be a feature)"
    )
    assert extra_columns(read_clinical(path)) == ["death_date"]  # without an outcomes file it is an ordinary extra
    center = tmp_path / "center.csv"
    center.write_text("patient_id,Center,bmi\nA,C1,22\n")
    assert extra_columns(read_clinical(center, tmp_path / "outcomes.csv")) == ["bmi"]


@pytest.mark.parametrize("first, second", [("Age", "age"), ("bilirubin", "Bilirubin [umol/L]"), ("He History", "he-history")])
def test_two_headers_for_one_variable_are_an_error(tmp_path, first, second):
    path = tmp_path / "clinical.csv"
    path.write_text(f"patient_id,{first},{second}\nA,1,1\n")
    with pytest.raises(InputError, match=rf"clinical.csv: columns '{first}' and '{re.escape(second)}' both mean"):
        read_clinical(path)


def test_two_patient_id_headers_are_an_error(tmp_path):
    (tmp_path / "t.csv").write_text("patient_id,Patient ID\nA,B\n")
    with pytest.raises(InputError, match="t.csv: columns 'patient_id' and 'Patient ID' both mean 'patient_id'"):
        read_table(tmp_path / "t.csv", [])


def test_outcome_headers_match_in_any_spelling(tmp_path):
    (tmp_path / "outcomes.csv").write_text("Patient_ID, Time ,EVENT,Ohe,PPG-Post\n007,100,1,0,8.5\n")
    outcomes = read_outcomes(tmp_path / "outcomes.csv")
    assert outcomes.loc["007"].tolist() == ["007", 100.0, 1.0, 0.0, 8.5]
    (tmp_path / "outcomes.csv").write_text("patient_id,time,Time,event\nA,1,2,0\n")
    with pytest.raises(InputError, match="outcomes.csv: columns 'time' and 'Time' both mean 'time'"):
        read_outcomes(tmp_path / "outcomes.csv")


def test_capitalised_synthetic_clinical_table_gives_every_clinical_score(tmp_path):
    """The user's report end to end: a synthetic cohort's clinical.csv with capitalised headers loses nothing."""
    spec = CohortSpec(n=20, centers=2)
    full = complete_clinical(latents(spec), spec)
    full.to_csv(tmp_path / "plain.csv", index=False)
    special = {"patient_id": "Patient_ID", "inr": "INR", "wbc": "WBC", "bilirubin": "Bilirubin (mg/dL)"}
    full.rename(columns=lambda c: special.get(c, c.replace("_", " ").title())).to_csv(tmp_path / "clinical.csv", index=False)
    plain, table = read_clinical(tmp_path / "plain.csv"), read_clinical(tmp_path / "clinical.csv")
    assert extra_columns(table) == [] and list(table.columns) == list(plain.columns)
    assert table.equals(plain)
    scores = clinical_scores(table)
    assert list(scores.columns) == list(SCORE_INPUTS) and np.isfinite(scores.to_numpy(dtype=float)).all()


PAD = st.sampled_from(["", " ", "  "])


@st.composite
def header_variant(draw: st.DrawFn, name: str, units: list[tuple[str, float]]) -> tuple[str, float]:
    """A header for `name` as a spreadsheet might hold it, and the factor its unit converts by: any case per
    character, surrounding spaces, each '_' as '_', ' ' or '-', optionally a unit in [] or () of any case."""

    def any_case(text: str) -> str:
        return "".join(draw(st.sampled_from([c.lower(), c.upper()])) for c in text)

    spelled = "".join(draw(st.sampled_from("_ -")) if c == "_" else any_case(c) for c in name)
    unit = draw(st.sampled_from([None, *units]))
    if unit is None:
        return draw(PAD) + spelled + draw(PAD), 1.0
    opening, closing = draw(st.sampled_from(["[]", "()"]))
    return f"{draw(PAD)}{spelled}{draw(PAD)}{opening}{draw(PAD)}{any_case(unit[0])}{draw(PAD)}{closing}{draw(PAD)}", unit[1]


def _inside(low: float, high: float) -> st.SearchStrategy[float]:
    """Values strictly inside a range, so that a unit round trip (÷ then × the factor) cannot leave it."""
    return st.floats(0.001, 0.999).map(lambda u: low + u * (high - low))


def _write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *rows])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), n=st.integers(1, 4))
def test_any_header_spelling_reads_as_the_canonical_table(tmp_path_factory, data, n):
    """Every schema variable (and patient_id, center) under a random header spelling and unit reads exactly like
    the plain-header CSV, values converted to the canonical units."""
    folder = tmp_path_factory.mktemp("headers")
    plain_header, variant_header = ["patient_id", "center"], []
    for name in plain_header:
        variant_header.append(data.draw(header_variant(name, []))[0])
    plain_rows = [[f"P{i}", f"C{i % 2}"] for i in range(n)]
    variant_rows = [list(row) for row in plain_rows]
    for name, variable in schema().items():
        units = [(variable.unit, 1.0), *variable.units] if variable.kind == "numeric" else []
        header, factor = data.draw(header_variant(name, units))
        plain_header.append(name)
        variant_header.append(header)
        for plain_row, variant_row in zip(plain_rows, variant_rows):
            if variable.kind == "numeric":
                value = data.draw(_inside(variable.low, variable.high))
                plain_row.append(repr(value))
                variant_row.append(repr(value / factor))
            else:
                level = data.draw(st.sampled_from(variable.levels))
                plain_row.append(level)
                variant_row.append(level)
    _write(folder / "plain.csv", plain_header, plain_rows)
    _write(folder / "clinical.csv", variant_header, variant_rows)
    plain, variant = read_clinical(folder / "plain.csv"), read_clinical(folder / "clinical.csv")
    assert list(variant.columns) == list(plain.columns) and extra_columns(variant) == []
    assert variant.index.tolist() == plain.index.tolist() and variant["center"].tolist() == plain["center"].tolist()
    for name, variable in schema().items():
        if variable.kind == "numeric":
            np.testing.assert_allclose(variant[name].to_numpy(), plain[name].to_numpy(), rtol=1e-12)
        else:
            assert variant[name].tolist() == plain[name].tolist()
