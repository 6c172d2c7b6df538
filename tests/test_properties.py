"""Property-based tests (hypothesis): CSV readers, unit conversion, clinical scores and the store join."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tipsprog import store
from tipsprog.clinical import albi, child_pugh, fips, meld, meld_na, read_clinical, schema
from tipsprog.errors import InputError
from tipsprog.tables import DELIMITERS, MISSING_MARKERS, read_outcomes, read_table

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SAFE_ID = (
    st.text(alphabet=st.characters(codec="utf-8", categories=("L", "N"), include_characters="-_ "), min_size=1, max_size=12)
    .map(str.strip)
    .filter(lambda s: s and s not in MISSING_MARKERS)
)


def _write(path: Path, rows: list[list[str]], delimiter: str, bom: bool, quote_all: bool) -> None:
    """A CSV the way spreadsheets write them: any delimiter, optional BOM, optional quoting of every field."""
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as handle:
        csv.writer(handle, delimiter=delimiter, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL).writerows(rows)


@PROPERTY
@given(
    ids=st.lists(SAFE_ID, min_size=1, max_size=8, unique=True),
    values=st.lists(st.one_of(st.none(), st.floats(0.0, 60.0, allow_nan=False)), min_size=8, max_size=8),
    delimiter=st.sampled_from(DELIMITERS),
    bom=st.booleans(),
    quote_all=st.booleans(),
    decimal_comma=st.booleans(),
    marker=st.sampled_from(MISSING_MARKERS),
)
def test_outcomes_round_trip_through_any_csv_dialect(
    tmp_path_factory, ids, values, delimiter, bom, quote_all, decimal_comma, marker
):
    """Whatever the dialect, missing marker or decimal separator, ppg_post values come back as written."""
    path = tmp_path_factory.mktemp("csv") / "outcomes.csv"
    ppg = values[: len(ids)]

    def cell(value: float | None) -> str:
        if value is None:
            return marker
        text = repr(value)
        return text.replace(".", ",") if decimal_comma and delimiter != "," else text

    _write(path, [["patient_id", "ppg_post"], *([pid, cell(v)] for pid, v in zip(ids, ppg))], delimiter, bom, quote_all)
    table = read_outcomes(path)
    assert table["patient_id"].tolist() == ids
    expected = np.array([np.nan if v is None else v for v in ppg])
    np.testing.assert_array_equal(table["ppg_post"].to_numpy(), expected)


@PROPERTY
@given(content=st.binary(max_size=300))
def test_any_bytes_give_a_table_or_one_clear_error(tmp_path_factory, content):
    """Arbitrary bytes (non-UTF-8 text, stray quotes, NULs) never raise anything but InputError."""
    path = tmp_path_factory.mktemp("bytes") / "clinical.csv"
    path.write_bytes(b"patient_id,bilirubin,albumin\n" + content)
    try:
        table = read_clinical(path)
    except InputError as err:
        assert str(err).startswith(str(path))
    else:
        assert ((table["bilirubin"].dropna() >= 0.1) & (table["bilirubin"].dropna() <= 50)).all()


@PROPERTY
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["1e308", "-inf", "nan?", "12..5"])))
def test_huge_or_odd_numbers_are_range_errors_or_missing(tmp_path_factory, value):
    path = tmp_path_factory.mktemp("odd") / "clinical.csv"
    pd.DataFrame({"patient_id": ["A"], "sodium": [value]}).to_csv(path, index=False)
    try:
        table = read_clinical(path)
    except InputError as err:
        assert "sodium" in str(err)
    else:
        sodium = table["sodium"].iloc[0]
        assert np.isnan(sodium) or 100 <= sodium <= 170


@PROPERTY
@given(mg_dl=st.floats(0.2, 40.0), albumin_g_l=st.floats(15.0, 55.0), creatinine_mg_dl=st.floats(0.3, 12.0))
def test_unit_headers_convert_to_the_canonical_units(tmp_path_factory, mg_dl, albumin_g_l, creatinine_mg_dl):
    folder = tmp_path_factory.mktemp("units")
    pd.DataFrame(
        {
            "patient_id": ["A"],
            "bilirubin[umol/L]": [mg_dl / 0.05848],
            "albumin[g/dL]": [albumin_g_l / 10],
            "creatinine[µmol/L]": [creatinine_mg_dl / 0.01131],
        }
    ).to_csv(folder / "c.csv", index=False)
    table = read_clinical(folder / "c.csv")
    assert table["bilirubin"].iloc[0] == pytest.approx(mg_dl, rel=1e-9)
    assert table["albumin"].iloc[0] == pytest.approx(albumin_g_l, rel=1e-9)
    assert table["creatinine"].iloc[0] == pytest.approx(creatinine_mg_dl, rel=1e-9)


def _plausible(name: str) -> st.SearchStrategy[float]:
    variable = schema()[name]
    return st.floats(variable.low, variable.high)


@settings(max_examples=200, deadline=None)
@given(
    bili=st.tuples(_plausible("bilirubin"), _plausible("bilirubin")),
    inr=_plausible("inr"),
    creatinine=_plausible("creatinine"),
    sodium=_plausible("sodium"),
    albumin=_plausible("albumin"),
    age=_plausible("age"),
)
def test_scores_are_finite_and_rise_with_bilirubin(bili, inr, creatinine, sodium, albumin, age):
    """On the plausible range every score is finite and none falls when only bilirubin rises."""
    low, high = sorted(bili)
    pairs = [
        (meld(low, inr, creatinine), meld(high, inr, creatinine)),
        (meld_na(low, inr, creatinine, sodium), meld_na(high, inr, creatinine, sodium)),
        (albi(low, albumin), albi(high, albumin)),
        (fips(age, low, creatinine, albumin), fips(age, high, creatinine, albumin)),
        (child_pugh(low, albumin, inr, 0, 0), child_pugh(high, albumin, inr, 0, 0)),
    ]
    for before, after in pairs:
        assert np.isfinite(before) and np.isfinite(after)
        assert after >= before - 1e-12


@settings(max_examples=200, deadline=None)
@given(
    creatinine=st.tuples(_plausible("creatinine"), _plausible("creatinine")),
    inr=st.tuples(_plausible("inr"), _plausible("inr")),
    bilirubin=_plausible("bilirubin"),
    albumin=st.tuples(_plausible("albumin"), _plausible("albumin")),
    age=_plausible("age"),
)
def test_scores_move_the_right_way_with_each_input(creatinine, inr, bilirubin, albumin, age):
    (c_low, c_high), (i_low, i_high), (a_low, a_high) = sorted(creatinine), sorted(inr), sorted(albumin)
    assert meld(bilirubin, inr[0], c_high) >= meld(bilirubin, inr[0], c_low)
    assert meld(bilirubin, i_high, creatinine[0]) >= meld(bilirubin, i_low, creatinine[0])
    assert fips(age, bilirubin, c_high, albumin[0]) >= fips(age, bilirubin, c_low, albumin[0])
    assert fips(age, bilirubin, creatinine[0], a_high) <= fips(age, bilirubin, creatinine[0], a_low)
    assert albi(bilirubin, a_high) <= albi(bilirubin, a_low)
    assert child_pugh(bilirubin, a_high, inr[0], 0, 0) <= child_pugh(bilirubin, a_low, inr[0], 0, 0)


@PROPERTY
@given(ids=st.lists(SAFE_ID, min_size=2, max_size=10, unique=True), data=st.data())
def test_store_join_aligns_rows_by_patient_id(tmp_path_factory, ids, data):
    """Two stores with overlapping patients in different orders join row by row on the ID; the rest is reported."""
    folder = tmp_path_factory.mktemp("join")
    first = data.draw(st.permutations(ids)).copy()
    second = data.draw(st.lists(st.sampled_from(ids), min_size=1, max_size=len(ids), unique=True))
    value_of = {pid: float(i) for i, pid in enumerate(ids)}
    for path, members, block in ((folder / "a.h5", first, "radiomics"), (folder / "b.h5", second, "embed-ssl")):
        with store.create_store(path, members, ["C1"] * len(members)) as h5:
            values = np.array([[value_of[pid], -value_of[pid]] for pid in members])
            store.write_features(h5, block, store.FeatureBlock(values, [f"{block}/x", f"{block}/y"], ["g", "g"]))
    joined = store.join_features([folder / "a.h5", folder / "b.h5"])
    assert set(joined.patient_ids) == set(first) & set(second)
    for row, pid in enumerate(joined.patient_ids):
        assert joined.blocks["radiomics"].values[row, 0] == value_of[pid] == -joined.blocks["embed-ssl"].values[row, 1]
    assert set(joined.unmatched.get(str(folder / "a.h5"), [])) == set(first) - set(second)


def test_read_table_rejects_ids_that_name_other_folders(tmp_path):
    for bad in ("../x", "a/b", "a\\b", ".."):
        pd.DataFrame({"patient_id": [bad]}).to_csv(tmp_path / "t.csv", index=False)
        with pytest.raises(InputError, match="may not contain"):
            read_table(tmp_path / "t.csv", [])


def test_infinite_follow_up_is_an_error(tmp_path):
    pd.DataFrame({"patient_id": ["A"], "time": ["inf"], "event": [1]}).to_csv(tmp_path / "o.csv", index=False)
    with pytest.raises(InputError, match="'time' is not a finite number"):
        read_outcomes(tmp_path / "o.csv")
