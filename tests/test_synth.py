"""The synthetic phantom's anatomy lies where docs/synth.md says, its truth columns follow the rendered geometry and
the latents, and the outcomes depend on the imaging biomarkers as documented."""

from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from tipsprog.synth import CohortSpec, make_cohort
from tipsprog.synth.cohort import SARCOPENIA_CUT, anatomy_for, complete_clinical, imaging_findings, latents, outcomes_and_truth
from tipsprog.synth.phantom import (
    BODY_YX_MM,
    CANAL_RADII_MM,
    CANAL_YX_MM,
    CODE,
    KIDNEY_CENTRE_MM,
    KIDNEY_RADII_MM,
    LEVELS,
    Anatomy,
    Scanner,
    level_z_mm,
    render,
)

BASE = Anatomy(
    liver_scale=1.0,
    right_lobe_scale=1.0,
    caudate_ratio=0.6,
    nodularity_mm=1.5,
    texture_hu=6.0,
    liver_hu_shift=0.0,
    spleen_scale=1.0,
    portal_radius_mm=6.5,
    ascites_mm=0.0,
    muscle_mm=12.0,
    muscle_hu=45.0,
    fat_mm=20.0,
    bowel_fill=0.65,
    cyst_mm=0.0,
    cyst_side=1.0,
    cyst_z_mm=0.0,
    habitus=1.0,
)
SCANNER = Scanner(spacing_scale=1.0, hu_offset=0.0, noise_sd=10.0, blur_mm=1.0)
PATIENT = {
    "liver_dysfunction": 0.0,
    "portal_hypertension": 0.0,
    "sarcopenia": 0.0,
    "liver_texture": 0.0,
    "spleen_size": 0.0,
    "adiposity": 0.0,
    "myosteatosis": 0.0,
    "ascites_mm": 0.0,
    "caudate_noise": 0.0,
    "cyst_mm": 0.0,
    "cyst_side": 1.0,
    "cyst_z_mm": 0.0,
}


@cache
def _phantom(anatomy: Anatomy = BASE, size: str = "small"):
    return render(anatomy, SCANNER, size, np.random.default_rng(0))


def _varied(**changes) -> Anatomy:
    return dataclasses.replace(BASE, **changes)


def _patient(**changes) -> Anatomy:
    """The anatomy of a patient whose latents are all 0 but for `changes`."""
    return anatomy_for(pd.Series({**PATIENT, **changes}))


def _grid(phantom) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre positions (mm) along z, y and x."""
    image = phantom.image
    return tuple((np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(image.GetSize()[::-1], image.GetSpacing()[::-1]))


def _slice(phantom, z_mm: float) -> int:
    return int(np.argmin(np.abs(_grid(phantom)[0] - z_mm)))


def _at(phantom, z_mm: float, y_mm: float, x_mm: float) -> int:
    """The tissue code of the voxel nearest a point."""
    z, y, x = _grid(phantom)
    return int(phantom.tissue[np.argmin(np.abs(z - z_mm)), np.argmin(np.abs(y - y_mm)), np.argmin(np.abs(x - x_mm))])


@pytest.mark.parametrize("size", ["small", "full"])
def test_vertebrae_discs_and_canal_lie_at_the_stated_levels(size):
    phantom = _phantom(BASE, size)
    first, last = _grid(phantom)[0][[0, -1]]
    for level in LEVELS:
        centre = level_z_mm(level)
        if first <= centre <= last:
            assert _at(phantom, centre, *BODY_YX_MM) == CODE["marrow"], level
        for disc in (centre - 16.0, centre + 16.0):  # 25 mm body, 7 mm disc: discs centred half a pitch away
            if first <= disc <= last:
                assert _at(phantom, disc, *BODY_YX_MM) == CODE["disc"], (level, disc)
    assert _at(phantom, level_z_mm("L2"), CANAL_YX_MM[0], 0.0) == CODE["canal"]  # enclosed by the neural arch:
    assert _at(phantom, level_z_mm("L2"), CANAL_YX_MM[0], CANAL_RADII_MM[1] + 3.0) == CODE["cortex"]
    assert _at(phantom, level_z_mm("L2"), 101.0, 0.0) == CODE["cortex"]  # and the spinous process behind


def test_ribs_leave_only_t11_and_t12_and_descend_along_the_wall():
    """Bone beside the vertebral body (rib heads and necks, before their angle) lies within 4 mm (the rib's radius)
    of the T11 and T12 centres and at no lumbar level; the shafts descend laterally but never reach the L3 slice."""
    phantom = _phantom(BASE, "full")
    z, y, x = _grid(phantom)
    bone = np.isin(phantom.tissue, [CODE["cortex"], CODE["marrow"]])
    beside = bone & ((np.abs(x) > 24.0) & (np.abs(x) < 40.0))[None, None] & ((y > 65.0) & (y < 95.0))[None, :, None]
    with_heads = z[beside.any(axis=(1, 2))]
    near = [min(abs(zz - level_z_mm(level)) for level in ("T11", "T12")) for zz in with_heads]
    assert len(with_heads) and max(near) <= 4.0 + 1e-6
    lateral = bone & (np.abs(x) > 60.0)[None, None]
    assert lateral[_slice(phantom, level_z_mm("T12"))].any()
    assert not lateral[_slice(phantom, level_z_mm("L3"))].any()
    levels_with_lateral_bone = z[lateral.any(axis=(1, 2))]
    assert levels_with_lateral_bone.min() < level_z_mm("L1")  # the shafts descend along the wall


def test_psoas_grows_from_l1_to_l3_and_is_absent_above():
    phantom = _phantom()
    _, y, x = _grid(phantom)
    front_of_spine = ((y > 25.0) & (y < 60.0))[:, None] & (np.abs(x) < 75.0)[None]
    area = {
        level: int(((phantom.tissue[_slice(phantom, level_z_mm(level))] == CODE["muscle"]) & front_of_spine).sum())
        for level in ("T12", "L1", "L2", "L3")
    }
    assert area["T12"] == 0 < area["L1"] < area["L2"] < area["L3"]


def test_muscle_area_and_density_follow_sarcopenia_and_myosteatosis():
    areas = [_phantom(_patient(sarcopenia=s)).biomarkers["muscle_l3_area_cm2"] for s in (-1.0, 0.0, 1.0)]
    assert areas[0] > areas[1] > areas[2] > 0
    for myosteatosis in (-2.0, 0.0, 1.0, 3.0):
        measured = _phantom(_patient(myosteatosis=myosteatosis)).biomarkers["muscle_l3_hu"]
        assert measured == pytest.approx(np.clip(45.0 - 12.0 * myosteatosis, 15.0, 60.0), abs=1e-4)


def test_subcutaneous_and_visceral_fat_follow_adiposity():
    truths = [_phantom(_patient(adiposity=a)).biomarkers for a in (-1.5, 0.0, 1.5)]
    for key in ("sat_l3_area_cm2", "vat_l3_area_cm2"):
        assert truths[0][key] < truths[1][key] < truths[2][key], key


def test_truth_areas_are_the_voxels_of_the_l3_slice():
    phantom = _phantom()
    spacing = np.array(phantom.image.GetSpacing()[::-1])
    plane = phantom.tissue[_slice(phantom, level_z_mm("L3"))]
    for key, tissue in (("muscle_l3_area_cm2", "muscle"), ("sat_l3_area_cm2", "sat"), ("vat_l3_area_cm2", "vat")):
        assert phantom.biomarkers[key] == pytest.approx((plane == CODE[tissue]).sum() * spacing[1] * spacing[2] / 100)
    labels = sitk.GetArrayFromImage(phantom.labels)
    voxel_ml = float(np.prod(spacing)) / 1000
    assert phantom.biomarkers["liver_volume_ml"] == pytest.approx((labels == 1).sum() * voxel_ml)
    assert phantom.biomarkers["spleen_volume_ml"] == pytest.approx((labels == 2).sum() * voxel_ml)


def test_ascites_rises_with_its_amount_and_never_fills_an_organ():
    volumes = [_phantom(_varied(ascites_mm=a)).biomarkers["ascites_ml"] for a in (0.0, 4.0, 10.0, 20.0)]
    assert volumes[0] == 0 and volumes[1] < volumes[2] < volumes[3]
    phantom = _phantom(_varied(ascites_mm=10.0, cyst_mm=10.0, cyst_side=-1.0, cyst_z_mm=-10.0))
    spacing = np.array(phantom.image.GetSpacing()[::-1])
    fluid = phantom.tissue == CODE["ascites"]
    assert phantom.biomarkers["ascites_ml"] == pytest.approx(fluid.sum() * np.prod(spacing) / 1000)
    assert (sitk.GetArrayFromImage(phantom.labels)[fluid] == 0).all()
    _, _, x = _grid(phantom)
    at_l3 = fluid[_slice(phantom, level_z_mm("L3"))]
    assert at_l3[:, x < -60].any() and at_l3[:, x > 60].any()  # both paracolic gutters at L3


def test_gallbladder_and_renal_cyst_are_fluid_that_is_not_ascites():
    phantom = _phantom(_varied(ascites_mm=10.0, cyst_mm=10.0, cyst_side=-1.0, cyst_z_mm=-10.0))
    z, y, x = np.meshgrid(*_grid(phantom), indexing="ij")
    gallbladder, cyst = phantom.tissue == CODE["gallbladder"], phantom.tissue == CODE["cyst"]
    assert 15 < gallbladder.sum() * np.prod(phantom.image.GetSpacing()) / 1000 < 40  # 30 x 30 x 70 mm: 33 mL
    assert x[gallbladder].mean() < 0 and y[gallbladder].mean() < 0  # right, anterior
    liver_above = np.zeros_like(gallbladder)
    liver_above[:-1] = phantom.tissue[1:] == CODE["liver"]
    assert (gallbladder & liver_above).any()  # under the liver's inferior surface
    assert cyst.any() and x[cyst].max() < 0  # in the right kidney
    kidney_q = sum(
        ((c - m) / r) ** 2
        for c, m, r in zip((z, y, x), (KIDNEY_CENTRE_MM[0], KIDNEY_CENTRE_MM[1], -KIDNEY_CENTRE_MM[2]), KIDNEY_RADII_MM)
    )
    assert (kidney_q[cyst] < 1.0).all()
    without = _phantom(_varied(ascites_mm=10.0))
    assert phantom.biomarkers["ascites_ml"] == pytest.approx(without.biomarkers["ascites_ml"])


def test_caudate_ratio_nodularity_spleen_length_and_portal_vein_follow_their_parameters():
    ratios = [_phantom(_varied(caudate_ratio=r)).biomarkers["caudate_right_ratio"] for r in (0.4, 0.65, 0.9)]
    assert ratios[0] < ratios[1] < ratios[2]
    assert ratios == pytest.approx([0.4, 0.65, 0.9], abs=0.12)
    lengths = [_phantom(_varied(spleen_scale=s)).biomarkers["spleen_length_mm"] for s in (0.8, 1.0, 1.2)]
    assert lengths[0] < lengths[1] < lengths[2]
    truth = _phantom(_varied(nodularity_mm=5.0, portal_radius_mm=8.0)).biomarkers
    assert truth["nodularity"] == 5.0 and truth["pv_diameter_mm"] == 16.0
    assert _patient(liver_dysfunction=2.0).caudate_ratio > 0.65 > _patient(liver_dysfunction=-1.0).caudate_ratio


def test_ascites_amount_follows_the_clinical_grade():
    spec = CohortSpec(n=600, seed=2)
    full = complete_clinical(latents(spec), spec)
    amount = imaging_findings(full, spec)["ascites_mm"]
    by_grade = [amount[full["ascites"] == grade] for grade in (0, 1, 2)]
    assert (by_grade[0] == 0).mean() > 0.8 and by_grade[0].max() <= 3.5
    assert by_grade[0].median() < by_grade[1].median() < by_grade[2].median()


def test_outcomes_follow_muscle_below_its_cut_ascites_and_their_interaction():
    spec = CohortSpec(n=200, seed=1)
    lat = latents(spec)
    full = complete_clinical(lat, spec)
    findings = imaging_findings(full, spec)

    def truth(sarcopenia: float, ascites_mm: float, **latent) -> pd.DataFrame:
        changed = lat.assign(sarcopenia=sarcopenia, **latent)
        return outcomes_and_truth(changed, full, findings.assign(ascites_mm=ascites_mm), spec)[1]

    def hazard(s: float, a: float) -> np.ndarray:
        return truth(s, a)["linear_predictor"].to_numpy()

    np.testing.assert_allclose(hazard(SARCOPENIA_CUT - 1.0, 0.0), hazard(SARCOPENIA_CUT, 0.0))  # none below the cut
    dry = hazard(SARCOPENIA_CUT + 1.0, 0.0) - hazard(SARCOPENIA_CUT, 0.0)
    wet = hazard(SARCOPENIA_CUT + 1.0, 10.0) - hazard(SARCOPENIA_CUT, 10.0)
    assert (dry > 0).all() and (wet > dry).all()
    assert (hazard(0.0, 10.0) > hazard(0.0, 0.0)).all()
    ohe = [truth(s, 0.0, myosteatosis=m)["ohe_probability"] for s, m in ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0))]
    assert (ohe[1] > ohe[0]).all() and (ohe[2] > ohe[0]).all()
    ppg = [
        truth(0.0, 0.0, spleen_size=s, portal_hypertension=p)["ppg_post_expected"]
        for s, p in ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0))
    ]
    assert (ppg[0] < ppg[1]).all() and (ppg[1] < ppg[2]).all()


def test_without_imaging_signal_outcomes_follow_the_clinical_table_only():
    spec = CohortSpec(n=200, seed=1, imaging_signal=False)
    lat = latents(spec)
    full = complete_clinical(lat, spec)
    findings = imaging_findings(full, spec)
    imaging = dict(sarcopenia=1.5, myosteatosis=1.0, liver_texture=1.0, spleen_size=1.0, portal_hypertension=1.0)
    plain = outcomes_and_truth(lat, full, findings, spec)
    changed = outcomes_and_truth(lat.assign(**imaging), full, findings.assign(ascites_mm=15.0), spec)
    pd.testing.assert_frame_equal(plain[0], changed[0])
    with_signal = outcomes_and_truth(lat, full, findings, dataclasses.replace(spec, imaging_signal=True))[0]
    assert (with_signal["time"] != plain[0]["time"]).any()


def test_rendering_is_deterministic_and_the_cohort_writes_every_truth_column(tmp_path):
    again = render(BASE, SCANNER, "small", np.random.default_rng(0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again.image), sitk.GetArrayFromImage(_phantom().image))
    assert again.biomarkers == _phantom().biomarkers
    tables = [make_cohort(tmp_path / name, CohortSpec(n=3, centers=2, seed=9)) for name in ("a", "b")]
    pd.testing.assert_frame_equal(*tables)
    written = pd.read_csv(tmp_path / "a" / "truth.csv")
    assert {
        "linear_predictor",
        "ohe_probability",
        "ppg_post_expected",
        "adiposity",
        "myosteatosis",
        "liver_volume_ml",
        "spleen_volume_ml",
        "muscle_l3_area_cm2",
        "muscle_l3_hu",
        "sat_l3_area_cm2",
        "vat_l3_area_cm2",
        "ascites_ml",
        "spleen_length_mm",
        "caudate_right_ratio",
        "nodularity",
        "pv_diameter_mm",
    } <= set(written.columns)
    assert written.notna().all().all()
