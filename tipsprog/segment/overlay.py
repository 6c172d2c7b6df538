"""A PNG of the ROI masks drawn over three CT slices through the liver, for checking a segmentation by eye."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from tipsprog.outputs import make_folder  # noqa: E402
from tipsprog.store import ROI_LABELS  # noqa: E402

ROI_COLOURS = {"liver": "tab:orange", "spleen": "tab:blue", "portal_vein": "tab:red"}
WINDOW_HU = (-160.0, 240.0)


def _slice_centre(labels: np.ndarray) -> np.ndarray:
    """Voxel index (z, y, x) through the liver's centre, or the volume's centre without a liver."""
    liver = np.argwhere(labels == ROI_LABELS["liver"])
    return (liver.mean(axis=0) if len(liver) else (np.array(labels.shape) - 1) / 2.0).round().astype(int)


def draw_overlay(ct: sitk.Image, labels: sitk.Image, out: Path) -> None:
    """Axial, coronal and sagittal slices (abdominal window, physical aspect) with each ROI's outline."""
    hu, label_array = sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(labels)
    z, y, x = _slice_centre(label_array)
    sx, sy, sz = ct.GetSpacing()
    views = [
        ("axial", hu[z], label_array[z], sy / sx),
        ("coronal", hu[:, y][::-1], label_array[:, y][::-1], sz / sx),
        ("sagittal", hu[:, :, x][::-1], label_array[:, :, x][::-1], sz / sy),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for axis, (title, image, mask, aspect) in zip(axes, views):
        axis.imshow(image, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], aspect=aspect, interpolation="nearest")
        for roi, label in ROI_LABELS.items():
            if (mask == label).any():
                axis.contour(mask == label, levels=[0.5], colors=ROI_COLOURS[roi], linewidths=1.2)
        axis.set_title(title)
        axis.axis("off")
    handles = [plt.Line2D([], [], color=colour, label=roi.replace("_", " ")) for roi, colour in ROI_COLOURS.items()]
    figure.legend(handles=handles, loc="lower center", ncol=3, frameon=False)
    figure.tight_layout(rect=(0, 0.06, 1, 0.96))
    make_folder(out.parent)
    figure.savefig(out, dpi=100)
    plt.close(figure)
