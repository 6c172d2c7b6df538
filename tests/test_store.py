"""The HDF5 store: round trip, schema versions, atomic writes, joins."""

import h5py
import numpy as np
import pytest

from tipsprog import store
from tipsprog.errors import InputError


def _write(path, ids, name="radiomics", values=None):
    values = np.arange(len(ids) * 2, dtype=np.float32).reshape(len(ids), 2) if values is None else values
    block = store.FeatureBlock(values, [f"{name}/a", f"{name}/b"], ["liver/original/glcm"] * 2, {"extractor": name})
    with store.create_store(path, ids, ["C1"] * len(ids)) as h5:
        store.write_features(h5, name, block)
        store.write_qc(h5, ["ok"] * len(ids), [""] * len(ids))


def test_round_trip(tmp_path):
    path = tmp_path / "s.h5"
    _write(path, ["p1", "p2"])
    with store.open_store(path) as h5:
        assert store.read_patients(h5) == ["p1", "p2"]
        blocks = store.read_features(h5)
        assert blocks["radiomics"].names == ["radiomics/a", "radiomics/b"]
        assert blocks["radiomics"].groups[0] == "liver/original/glcm"
        np.testing.assert_array_equal(blocks["radiomics"].values, [[0, 1], [2, 3]])
        assert h5.attrs["schema_version"] == store.SCHEMA_VERSION


def test_other_schema_version_is_rejected(tmp_path):
    path = tmp_path / "s.h5"
    _write(path, ["p1"])
    with h5py.File(path, "a") as h5:
        h5.attrs["schema_version"] = 99
    with pytest.raises(InputError, match="schema_version 99"):
        store.open_store(path)


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError):
        with store.create_store(path, ["p1"], ["C1"]):
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_join_reports_unmatched_and_aligns_rows(tmp_path):
    _write(tmp_path / "a.h5", ["p1", "p2", "p3"], "radiomics")
    _write(tmp_path / "b.h5", ["p3", "p1"], "embed-ssl", np.array([[30, 31], [10, 11]], dtype=np.float32))
    joined = store.join_features([tmp_path / "a.h5", tmp_path / "b.h5"])
    assert joined.patient_ids == ["p1", "p3"]
    assert joined.unmatched == {str(tmp_path / "a.h5"): ["p2"]}
    np.testing.assert_array_equal(joined.blocks["embed-ssl"].values, [[10, 11], [30, 31]])
    np.testing.assert_array_equal(joined.blocks["radiomics"].values, [[0, 1], [4, 5]])
