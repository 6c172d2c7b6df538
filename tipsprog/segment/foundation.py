"""Foundation-model backend: TotalSegmentator (optional extra), offline, ROI subset only."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import SimpleITK as sitk

from tipsprog.errors import InputError
from tipsprog.images import read_mask
from tipsprog.segment.masks import TOTALSEGMENTATOR_IDS, map_labels

ROI_SUBSET = ["liver", "spleen", "portal_vein_and_splenic_vein"]
# TotalSegmentator's weight folders (map_tasks_config.TASK_ID_WEIGHTS_CONFIGS): it downloads a task whose folder is
# not there under exactly this name, and deletes some older names (e.g. Dataset297_..._v204), so a glob is not enough.
# With roi_subset it first runs the 6 mm model (298) to crop, in both modes.
WEIGHT_FOLDERS = {
    291: "Dataset291_TotalSegmentator_part1_organs_1559subj",
    292: "Dataset292_TotalSegmentator_part2_vertebrae_1532subj",
    293: "Dataset293_TotalSegmentator_part3_cardiac_1559subj",
    294: "Dataset294_TotalSegmentator_part4_muscles_1559subj",
    295: "Dataset295_TotalSegmentator_part5_ribs_1559subj",
    297: "Dataset297_TotalSegmentator_total_3mm_1559subj",
    298: "Dataset298_TotalSegmentator_total_6mm_1559subj",
}
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
    absent = [task for task in TASK_IDS[fast] if not (folder / WEIGHT_FOLDERS[task]).is_dir()]
    if absent:
        missing.append(
            f"weights for tasks {', '.join(map(str, absent))} are not in {folder} (on a machine with internet: "
            f"totalseg_download_weights -t {DOWNLOAD_TASK[fast]}, then copy the folder here or set TOTALSEG_HOME_DIR)"
        )
    return missing


def labels_from_totalsegmentator(path: Path, ct: sitk.Image) -> sitk.Image:
    """A TotalSegmentator multi-label file as tipsprog labels on the CT grid."""
    return map_labels(read_mask(path, ct), TOTALSEGMENTATOR_IDS)


def _register_total_trainers() -> None:
    """Hand TotalSegmentator's 'total' trainers to its trainer registry, so nnU-Net need not import every trainer
    module to find them: one (primus) imports timm and so torchvision, and PyPI's torchvision fails to import beside a
    CPU-only torch ('operator torchvision::nms does not exist')."""
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import nnUNetTrainerNoMirroring
    from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs_NoMirroring import (
        nnUNetTrainer_4000epochs_NoMirroring,
    )
    from totalsegmentator import nnunet

    registry: dict[str, type] = getattr(nnunet, "custom_trainers", {})  # TotalSegmentator 2.4+: searched first
    for trainer in (nnUNetTrainerNoMirroring, nnUNetTrainer_4000epochs_NoMirroring):
        registry.setdefault(trainer.__name__, trainer)


def segment_totalseg(ct: sitk.Image, fast: bool = True, device: str = "cpu") -> sitk.Image:
    """Label liver, spleen and portal vein with TotalSegmentator; never downloads or reports anything."""
    missing = missing_requirements(fast)
    if missing:
        raise InputError("backend 'totalseg': " + "; ".join(missing))
    from totalsegmentator.config import set_config_key, setup_totalseg
    from totalsegmentator.python_api import totalsegmentator

    # Its prints (usage-statistics notice, warnings) would mix into tipsprog's stdout, e.g. `predict --json`.
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(sys.stderr):
        setup_totalseg()  # creates config.json; before that, set_config_key changes nothing and usage is reported
        set_config_key("send_usage_stats", False)
        set_config_key("statistics_disclaimer_shown", True)  # its notice that usage is reported: no longer true
        _register_total_trainers()
        source, result = Path(folder) / "ct.nii.gz", Path(folder) / "labels.nii.gz"
        sitk.WriteImage(sitk.Cast(ct, sitk.sitkInt16), str(source))
        totalsegmentator(
            source,
            result,
            ml=True,
            fast=fast,
            roi_subset=ROI_SUBSET,
            quiet=True,
            nr_thr_saving=1,
            device="gpu" if device == "cuda" else "cpu",
        )
        return labels_from_totalsegmentator(result, ct)
