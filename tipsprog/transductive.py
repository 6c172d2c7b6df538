"""Transductive feature steps: which patients' scans the fitted steps (ssl encoder pre-training, semi-supervised
segmentation) learned from, recorded in weights, stores and bundles, and what evaluate says about it per setting."""

from __future__ import annotations

import json

from tipsprog.store import FeatureBlock

UNKNOWN = "unknown"
STEPS = {  # step: (its description, the verb of its fit, the block attr of its patients, that of its labeled ones)
    "encoder": ("the ssl encoder", "was pre-trained on", "encoder_fitted_on", None),
    "segment": ("the semi segmentation model", "was trained on", "segment_fitted_on", "segment_fitted_labeled"),
}


def fitted_attr(patient_ids: list[str] | None) -> str:
    """A store attr of the patients a step was fitted on: a JSON list, or 'unknown' where it was not recorded."""
    return UNKNOWN if patient_ids is None else json.dumps(list(patient_ids))


def parse_fitted(text: object) -> list[str] | None:
    """The patient list of a fitted-on attr (None: absent or 'unknown')."""
    if text is None or str(text) == UNKNOWN:
        return None
    try:
        value = json.loads(str(text))
    except json.JSONDecodeError:
        return None
    return [str(pid) for pid in value] if isinstance(value, list) else None


def _steps_of(block: FeatureBlock) -> list[str]:
    """The fitted steps a feature block depends on."""
    steps = ["segment"] if block.attrs.get("segment_backend") == "semi" else []
    return steps + (["encoder"] if block.attrs.get("encoder") == "ssl" else [])


def fitted_steps(blocks: dict[str, FeatureBlock]) -> dict[str, dict]:
    """For the bundle manifest: each fitted step behind the blocks, its blocks and patients ('unknown' if unrecorded)."""
    steps: dict[str, dict] = {}
    for name, block in blocks.items():
        for step in _steps_of(block):
            _, _, attr, labeled_attr = STEPS[step]
            entry = steps.setdefault(step, {"blocks": [], "fitted_on": UNKNOWN})
            entry["blocks"].append(name)
            if entry["fitted_on"] == UNKNOWN and parse_fitted(block.attrs.get(attr)) is not None:
                entry["fitted_on"] = parse_fitted(block.attrs.get(attr))
                if labeled_attr:
                    entry["labeled"] = parse_fitted(block.attrs.get(labeled_attr)) or UNKNOWN
    return steps


def _step_exposure(entry: dict, patient_ids: list[str], centers: list[str]) -> dict:
    """How many of a setting's patients (and centers) a fitted step saw; None where its patients are unknown."""
    fitted = entry.get("fitted_on")
    if not isinstance(fitted, list):
        return {"blocks": entry.get("blocks", []), "seen": None, "centers_seen": None}
    fitted_set = set(fitted)
    seen = [pid in fitted_set for pid in patient_ids]
    result = {"blocks": entry.get("blocks", []), "seen": sum(seen), "centers_seen": len({c for c, s in zip(centers, seen) if s})}
    if "labeled" in entry:
        labeled = entry["labeled"]
        result["seen_labeled"] = sum(pid in set(labeled) for pid in patient_ids) if isinstance(labeled, list) else None
    return result


def _sentence(label: str, step: str, exposure: dict, patients: int, centers: int, cv: str, setting: str) -> str:
    """One report line: what a fitted step saw of one setting's patients."""
    what, verb, _, _ = STEPS[step]
    seen = exposure["seen"]
    if seen is None:
        return (
            f"{label}: unknown whether {what} saw these {patients} patients' scans (its file does not record the "
            "patients it was fitted on)"
        )
    if seen == 0:
        return f"{label}: 0 of {patients} patients' scans were seen by {what}"
    labeled = exposure.get("seen_labeled")
    detail = (
        "unlabeled"
        if labeled == 0 or step == "encoder"
        else f"{labeled} with reference labels, {seen - labeled} unlabeled"
        if labeled is not None
        else "labeled or not"
    )
    suffix = ""
    if setting == "out-of-fold":
        suffix = (
            f", the left-out centers included ({exposure['centers_seen']} of {centers} centers)"
            if cv == "center"
            else ", test folds included"
        )
    return f"{label}: {what} {verb} the scans of {seen} of these {patients} patients ({detail}){suffix}"


def exposure_report(cv: str, recorded: dict | None, settings: dict[str, tuple[list[str], list[str]]]) -> tuple[dict, list[str]]:
    """metrics.json's `transductive` entry and the report's notes: per setting (its patient IDs and centers), how
    many patients' scans each fitted step of the bundle's feature pipeline (`recorded`, the manifest's
    `transductive`; None for a bundle that predates it) saw; `cv` is the bundle's cross-validation."""
    document, notes = {}, []
    for setting, (patient_ids, centers) in settings.items():
        label = "leave-one-center-out" if setting == "out-of-fold" and cv == "center" else setting
        entry: dict = {"patients": len(patient_ids), "recorded": recorded is not None, "steps": {}}
        if recorded is None:
            notes.append(
                f"{label}: unknown whether a fitted feature step saw these {len(patient_ids)} patients' scans "
                "(the bundle predates that record)"
            )
        elif not recorded:
            notes.append(
                f"{label}: no feature step was fitted on scans; none of these {len(patient_ids)} patients' "
                "scans was seen before evaluation"
            )
        for step, fitted in (recorded or {}).items():
            exposure = _step_exposure(fitted, patient_ids, centers)
            entry["steps"][step] = exposure
            notes.append(_sentence(label, step, exposure, len(patient_ids), len(set(centers)), cv, setting))
        document[setting] = entry
    return document, notes
