"""Foundation-model backend: TotalSegmentator (optional extra), offline, ROI subset only."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import SimpleITK as sitk

from tipsprog.errors import InputError
from tipsprog.io import read_mask
from tipsprog.segment.masks import TOTALSEGMENTATOR_IDS, map_labels

ROI_SUBSET = ["liver", "spleen", "portal_vein_and_splenic_vein"]
TASK_IDS = {True: (297, 298), False: (291, 292, 293, 294, 295, 298)}
DOWNLOAD_TASK = {True: "total_fast", False: "total"}


def weights_dir() -> Path:
    """Where TotalSegmentator keeps its nnU-Net weights (TOTALSEG_WEIGHTS_PATH or TOTALSEG_HOME_DIR)."""
    if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    home = Path(os.environ.get("TOTALSEG_HOME_DIR", Path.home() / ".totalsegmentator"))
    return home / "nnunet" / "results"


def missing_requirements(fast: bool) -> list[str]:
    """What is missing to run TotalSegmentator offline, each with the command that provides it."""
    missing = []
    if importlib.util.find_spec("totalsegmentator") is None:
        missing.append("the TotalSegmentator package is not installed (pip install 'tipsprog[totalseg]')")
    folder = weights_dir()
    absent = [task for task in TASK_IDS[fast] if not any(folder.glob(f"Dataset{task}_*"))]
    if absent:
        missing.append(f"weights for tasks {', '.join(map(str, absent))} are not in {folder} (on a machine with internet: "
                       f"totalseg_download_weights -t {DOWNLOAD_TASK[fast]}, then copy the folder here or set TOTALSEG_HOME_DIR)")
    return missing


def labels_from_totalsegmentator(path: Path, ct: sitk.Image) -> sitk.Image:
    """A TotalSegmentator multi-label file as tipsprog labels on the CT grid."""
    return map_labels(read_mask(path, ct), TOTALSEGMENTATOR_IDS)


def segment_totalseg(ct: sitk.Image, fast: bool = True, device: str = "cpu") -> sitk.Image:
    """Label liver, spleen and portal vein with TotalSegmentator; never downloads anything."""
    missing = missing_requirements(fast)
    if missing:
        raise InputError("backend 'totalseg': " + "; ".join(missing))
    from totalsegmentator.config import set_config_key
    from totalsegmentator.python_api import totalsegmentator

    set_config_key("send_usage_stats", False)
    with tempfile.TemporaryDirectory() as folder:
        source, result = Path(folder) / "ct.nii.gz", Path(folder) / "labels.nii.gz"
        sitk.WriteImage(sitk.Cast(ct, sitk.sitkInt16), str(source))
        totalsegmentator(source, result, ml=True, fast=fast, roi_subset=ROI_SUBSET, quiet=True,
                         device="gpu" if device == "cuda" else "cpu")
        return labels_from_totalsegmentator(result, ct)
