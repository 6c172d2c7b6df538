"""The real TotalSegmentator package (test extra) end to end, offline.

Its weights are not here, so the test writes a structurally real nnU-Net v2 results folder for the `fast` tasks (297,
and 298, the 6 mm model TotalSegmentator crops to `roi_subset` with) and replaces only the network's forward pass.
Everything else runs for real: tipsprog's NIfTI round trip, TotalSegmentator's reorientation, crop model, cropping,
resampling, nnU-Net's preprocessing (normalization, crop to non-zero), sliding window, export and argmax, the ROI
filter, and tipsprog's label mapping.

The forward pass cannot see where a patch lies in the scan, so the scan carries the answer: the real example CT with
the voxels of its reference liver, spleen and portal vein set to three code values, and the fake forward pass gives
each voxel the logits of the class whose code it holds (after undoing nnU-Net's normalization of the plans).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from conftest import invoke
from tipsprog.images import read_ct
from tipsprog.segment import foundation
from tipsprog.segment.masks import TOTALSEGMENTATOR_IDS, map_labels
from tipsprog.store import ROI_LABELS

TRAINER = "nnUNetTrainer_4000epochs_NoMirroring"  # TotalSegmentator's trainer for tasks 297 and 298
SPACING = {297: 3.0, 298: 6.0}  # the spacing TotalSegmentator resamples to before each model (mm)
INTENSITY = {
    "mean": 100.0,
    "std": 400.0,
    "percentile_00_5": -1024.0,
    "percentile_99_5": 3071.0,
    "min": -1024.0,
    "max": 3071.0,
    "median": 40.0,
}  # CTNormalization's statistics in the fake plans
CODES = {"liver": 60, "spleen": 50, "portal_vein": 170}  # HU written into each reference ROI; no other voxel holds one
TOLERANCE = 0.25  # HU either side of a code (float32 normalization and back)


def totalsegmentator_installed() -> None:
    """Skip without the package on a developer's machine; fail in CI, whose test extra installs it."""
    try:
        import totalsegmentator.python_api  # noqa: F401
    except ImportError as err:
        if os.environ.get("CI"):
            pytest.fail(f"TotalSegmentator is part of the test extra but cannot be imported: {err}")
        pytest.skip("TotalSegmentator is not installed (pip install -e '.[test]')")


def total_class_ids() -> dict[str, int]:
    """TotalSegmentator's 'total' class ids by tipsprog ROI name, from the installed package."""
    from totalsegmentator.map_to_binary import class_map

    ids = {name: index for index, name in class_map["total"].items()}
    return {"liver": ids["liver"], "spleen": ids["spleen"], "portal_vein": ids["portal_vein_and_splenic_vein"]}


def fake_plans(task: int, folder_name: str) -> dict:
    """nnU-Net v2 plans for a tiny U-Net at TotalSegmentator's spacing for the task (its input is already there)."""
    spacing = [SPACING[task]] * 3
    architecture = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 2,
            "features_per_stage": [2, 4],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * 2,
            "strides": [[1, 1, 1], [2, 2, 2]],
            "n_conv_per_stage": [1, 1],
            "n_conv_per_stage_decoder": [1],
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": [32, 32, 32],
        "median_image_size_in_voxels": [100, 100, 100],
        "spacing": spacing,
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resampling,
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
        "architecture": architecture,
        "batch_dice": False,
    }
    return {
        "dataset_name": folder_name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": [100, 100, 100],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": INTENSITY},
    }


def write_fake_weights(results: Path) -> None:
    """nnU-Net results folders for tasks 297 and 298 as TotalSegmentator's download unpacks them: dataset.json,
    plans.json and fold_0/checkpoint_final.pth (untrained weights of the planned network) per model."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from totalsegmentator.map_to_binary import class_map

    labels = {"background": 0, **{name: index for index, name in class_map["total"].items()}}
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    for task in SPACING:
        name = foundation.WEIGHT_FOLDERS[task]
        model = results / name / f"{TRAINER}__nnUNetPlans__3d_fullres"
        (model / "fold_0").mkdir(parents=True)
        plans = fake_plans(task, name)
        (model / "plans.json").write_text(json.dumps(plans))
        (model / "dataset.json").write_text(json.dumps(dataset))
        architecture = plans["configurations"]["3d_fullres"]["architecture"]
        network = get_network_from_plans(
            architecture["network_class_name"],
            architecture["arch_kwargs"],
            architecture["_kw_requires_import"],
            1,
            len(labels),
            deep_supervision=False,
        )
        torch.save(
            {
                "network_weights": network.state_dict(),
                "trainer_name": TRAINER,
                "init_args": {"configuration": "3d_fullres"},
                "inference_allowed_mirroring_axes": None,
            },
            model / "fold_0" / "checkpoint_final.pth",
        )


def coded_forward(classes: dict[str, int]):
    """A forward pass for PlainConvUNet: logits for the 'total' class whose code each voxel holds (else background)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hu = x[:, 0] * INTENSITY["std"] + INTENSITY["mean"]
        target = torch.zeros(hu.shape, dtype=torch.long)
        for roi, code in CODES.items():
            target[(hu - code).abs() < TOLERANCE] = classes[roi]
        heads = self.decoder.seg_layers[-1].out_channels
        return 10.0 * torch.nn.functional.one_hot(target, heads).permute(0, 4, 1, 2, 3).to(x.dtype)

    return forward


def coded_scan(example: Path, folder: Path) -> tuple[Path, Path]:
    """The example CT with each reference ROI set to its code (plausible HU: tipsprog's QC still reads the scan as an
    abdomen) and every other voxel that held a code moved by 1 HU; and the reference as tipsprog labels (1/2/3)."""
    ct = sitk.ReadImage(str(example / "example_ct_sm.nii.gz"))
    reference = map_labels(sitk.ReadImage(str(example / "example_seg.nii.gz")), total_class_ids())
    values = sitk.GetArrayFromImage(ct)
    values[np.isin(values, list(CODES.values()))] += 1
    roi = sitk.GetArrayViewFromImage(reference)
    for name, label in ROI_LABELS.items():
        values[roi == label] = CODES[name]
    coded = sitk.GetImageFromArray(values)
    coded.CopyInformation(ct)
    sitk.WriteImage(coded, str(folder / "coded_ct.nii.gz"))
    sitk.WriteImage(reference, str(folder / "reference.nii.gz"))
    return folder / "coded_ct.nii.gz", folder / "reference.nii.gz"


@pytest.fixture
def offline_totalseg(monkeypatch, tmp_path):
    """TotalSegmentator's home in tmp_path (no weights yet); any HTTP request fails the test and is recorded."""
    totalsegmentator_installed()
    import requests

    requested = []

    def no_network(self, method, url, *args, **kwargs):
        requested.append(f"{method} {url}")
        raise requests.ConnectionError(f"test is offline: {method} {url}")

    monkeypatch.setattr(requests.Session, "request", no_network)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "totalseg"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):  # TotalSegmentator sets these
        monkeypatch.setenv(variable, "unset-by-test")
    return requested


def test_tipsprog_ids_are_totalsegmentators(offline_totalseg):
    from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS

    assert TOTALSEGMENTATOR_IDS == total_class_ids()
    assert {task: TASK_ID_WEIGHTS_CONFIGS[task]["foldername"] for task in foundation.WEIGHT_FOLDERS} == foundation.WEIGHT_FOLDERS


@pytest.mark.slow
def test_totalsegmentator_api_end_to_end_with_only_the_forward_pass_replaced(offline_totalseg, monkeypatch, tmp_path, real_ct):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    write_fake_weights(tmp_path / "totalseg" / "nnunet" / "results")
    calls = []
    forward = coded_forward(total_class_ids())

    def counted(self, x):
        calls.append(self)  # kept, so that the two networks' ids stay distinct
        return forward(self, x)

    monkeypatch.setattr(PlainConvUNet, "forward", counted)
    ct_path, reference_path = coded_scan(real_ct, tmp_path)
    pd.DataFrame({"patient_id": ["EX1"], "ct": [ct_path], "label": [reference_path]}).to_csv(tmp_path / "cohort.csv", index=False)

    result = invoke(
        "segment",
        tmp_path / "cohort.csv",
        "--out",
        tmp_path / "seg.h5",
        "--backend",
        "totalseg",
        "--workers",
        1,
        "--device",
        "cpu",
        "--quiet",
    )

    assert result.exit_code == 0, result.output
    assert result.stdout == "", "TotalSegmentator's prints must not reach tipsprog's stdout"
    assert "usage statistics" not in result.output
    assert offline_totalseg == [], "nothing may be downloaded or reported"
    assert len({id(network) for network in calls}) == 2, "TotalSegmentator runs two networks: the 6 mm crop model (298), then 297"
    assert json.loads((tmp_path / "totalseg" / "config.json").read_text())["send_usage_stats"] is False
    reference = sitk.GetArrayFromImage(read_ct(reference_path))  # on tipsprog's canonical grid, as the masks are
    with h5py.File(tmp_path / "seg.h5") as store:
        labels = store["segment/masks/EX1"][()]
        dice = dict(zip([str(n) for n in store["segment/dice"].attrs["names"]], store["segment/dice"][0]))
        assert store["segment"].attrs["backend"] == "totalseg"
    assert labels.shape == reference.shape
    for roi, label in ROI_LABELS.items():
        assert (reference == label).sum() > 500, roi
    # The scan is on the fast model's 3 mm grid, so TotalSegmentator's resampling there and back is exact and only the
    # 6 mm crop model sees blurred codes (its crop adds 20 voxels around them): every voxel must come back.
    np.testing.assert_array_equal(labels, reference)
    assert dice == {roi: 1.0 for roi in ROI_LABELS}


def test_totalseg_without_weights_is_one_line_naming_the_download(offline_totalseg, tmp_path):
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkInt16), str(tmp_path / "ct.nii.gz"))
    pd.DataFrame({"patient_id": ["P1"], "ct": ["ct.nii.gz"]}).to_csv(tmp_path / "cohort.csv", index=False)
    result = invoke("segment", tmp_path / "cohort.csv", "--out", tmp_path / "seg.h5", "--backend", "totalseg", "--quiet")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "backend 'totalseg'" in lines[0] and "totalseg_download_weights -t total_fast" in lines[0]
    assert "tasks 297, 298" in lines[0] and "not installed" not in lines[0]
    assert not (tmp_path / "seg.h5").exists()
    assert offline_totalseg == []
