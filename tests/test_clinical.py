"""Clinical scores on worked examples, unit conversion and validation."""

import math

import numpy as np
import pandas as pd
import pytest

from tipsprog import clinical
from tipsprog.errors import InputError


def test_meld_worked_example_and_bounds():
    # 3.78·ln 2 + 11.2·ln 1.5 + 9.57·ln 1.2 + 6.43
    assert clinical.meld(np.array([2.0]), np.array([1.5]), np.array([1.2]))[0] == pytest.approx(15.3364, abs=1e-3)
    # inputs below 1 are set to 1; creatinine capped at 4; result within 6–40
    assert clinical.meld(np.array([0.4]), np.array([0.9]), np.array([0.5]))[0] == pytest.approx(6.43)
    capped = clinical.meld(np.array([1.0]), np.array([1.0]), np.array([9.0]))[0]
    assert capped == pytest.approx(9.57 * math.log(4.0) + 6.43)
    assert clinical.meld(np.array([50.0]), np.array([9.0]), np.array([9.0]))[0] == 40.0


def test_meld_na_worked_example_and_sodium_clamp():
    base = 15.3364
    expected = base + 1.32 * 7 - 0.033 * base * 7
    got = clinical.meld_na(np.array([2.0]), np.array([1.5]), np.array([1.2]), np.array([130.0]))[0]
    assert got == pytest.approx(expected, abs=1e-3)
    low = clinical.meld_na(np.array([2.0]), np.array([1.5]), np.array([1.2]), np.array([110.0]))[0]
    clamped = clinical.meld_na(np.array([2.0]), np.array([1.5]), np.array([1.2]), np.array([125.0]))[0]
    assert low == pytest.approx(clamped)


def test_child_pugh_points():
    # bili 1.5 (1) + albumin 30 (2) + INR 1.8 (2) + mild ascites (2) + no HE (1) = 8 (class B)
    assert clinical.child_pugh([1.5], [30.0], [1.8], [1], [0])[0] == 8
    assert clinical.child_pugh([0.8], [40.0], [1.0], [0], [0])[0] == 5
    assert clinical.child_pugh([4.0], [25.0], [2.5], [2], [1])[0] == 14


def test_albi_fips_and_malinchoc_worked_examples():
    # bilirubin 1 mg/dL = 17.1 µmol/L
    assert clinical.albi(np.array([1.0]), np.array([40.0]))[0] == pytest.approx(0.66 * math.log10(17.1) - 3.4)
    fips = clinical.fips(np.array([60.0]), np.array([2.0]), np.array([1.0]), np.array([30.0]))[0]
    assert fips == pytest.approx(1.43 * math.log10(2.0) - 1.71 + 1.2 - 0.6 + 0.8074)
    assert fips < clinical.FIPS_HIGH_RISK
    score = clinical.malinchoc(np.array([1.0]), np.array([1.0]), np.array([1.0]), np.array(["viral"]))
    assert score[0] == pytest.approx(0.643)
    assert clinical.malinchoc_survival(np.array([1.127]), 90)[0] == pytest.approx(0.707)


def test_scores_skip_missing_inputs():
    table = pd.DataFrame({name: [np.nan] for name in clinical.schema()})
    table["age"], table["bilirubin"], table["albumin"] = [50.0], [1.0], [35.0]
    scores = clinical.clinical_scores(table)
    assert list(scores.columns) == ["ALBI"]


def test_unit_conversion_and_validation(tmp_path):
    path = tmp_path / "clinical.csv"
    path.write_text("patient_id,bilirubin[umol/L],albumin[g/dL],age\nA,34.2,3.5,60\n")
    table = clinical.read_clinical(path)
    assert table.loc["A", "bilirubin"] == pytest.approx(2.0, rel=1e-3)
    assert table.loc["A", "albumin"] == pytest.approx(35.0)
    path.write_text("patient_id,bilirubin[furlongs]\nA,1\n")
    with pytest.raises(InputError, match=r"clinical.csv: column 'bilirubin\[furlongs\]': unknown unit"):
        clinical.read_clinical(path)
    path.write_text("patient_id,albumin\nA,35\nB,900\n")
    with pytest.raises(InputError, match=r"patient B: albumin=900"):
        clinical.read_clinical(path)
    path.write_text("patient_id,sex\nA,X\n")
    with pytest.raises(InputError, match="sex='X'"):
        clinical.read_clinical(path)
