"""Out-of-distribution check (fusion/ood.py): about 1% of patients like the training cohort flagged, whatever the
number of modalities; a patient shifted in one modality flagged in that modality."""

from __future__ import annotations

import numpy as np

from tipsprog.fusion.ood import ModalityReference, OodReference, fit_ood


def _cohort(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Three correlated Gaussian modalities (a latent factor shared by their features), some values missing."""
    latent = rng.standard_normal((n, 3))
    matrices = {}
    for name, width in (("clinical", 8), ("radiomics", 40), ("biomarkers", 6)):
        loadings = np.random.default_rng(width).standard_normal((3, width))
        matrices[name] = 5.0 + latent @ loadings + 0.5 * rng.standard_normal((n, width))
    matrices["clinical"][rng.random((n, 8)) < 0.05] = np.nan
    return matrices


def test_patients_like_the_training_cohort_are_rarely_flagged_and_a_shifted_one_is():
    rng = np.random.default_rng(0)
    train = _cohort(rng, 300)
    reference = fit_ood(train, np.arange(300) % 5)
    new = _cohort(rng, 4000)
    flagged = reference.flagged(new)
    assert np.mean([bool(f) for f in flagged]) <= 0.025
    shifted = {**new, "biomarkers": new["biomarkers"] + 6.0 * np.nanstd(train["biomarkers"], axis=0)}
    flagged = reference.flagged(shifted)
    assert np.mean(["biomarkers" in f for f in flagged]) >= 0.95
    assert np.mean(["radiomics" in f for f in flagged]) <= 0.025


def test_a_direction_the_cohort_never_varies_in_is_seen():
    """A feature that is constant in training moves: the residual off the components (Q) flags it."""
    rng = np.random.default_rng(1)
    train = {"radiomics": np.column_stack([rng.standard_normal((200, 5)), np.zeros(200)])}
    reference = fit_ood(train, np.arange(200) % 5)
    patient = {"radiomics": np.array([[0.0, 0.0, 0.0, 0.0, 0.0, 5.0]])}
    assert reference.flagged(patient) == [["radiomics"]]


def test_the_reference_survives_its_json_form():
    rng = np.random.default_rng(2)
    train = _cohort(rng, 120)
    reference = fit_ood(train, np.arange(120) % 4)
    again = OodReference.from_dict(reference.to_dict())
    new = _cohort(rng, 50)
    for modality, distance in reference.distances(new).items():
        np.testing.assert_allclose(again.distances(new)[modality], distance)
    assert isinstance(again.modalities["clinical"], ModalityReference) and again.threshold == reference.threshold
