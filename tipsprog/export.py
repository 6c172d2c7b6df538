"""`tipsprog export STORE --out DIR`: every segmented patient's ROI masks as NIfTI on the grid of its CT as stored
(orientation, spacing and origin of the file or DICOM series, not the LPS grid tipsprog works on), with label tables
for 3D Slicer and ITK-SNAP and, optionally, a QC montage PNG per patient.

With compartments (the default), the label image also holds what the biomarkers measured, recomputed from the CT
and the stored ROI masks by the same code (segment/biomarkers.py): skeletal muscle, subcutaneous and visceral fat on
the slices body composition was measured on, and ascites. With `dicom_seg`, a patient whose CT is a DICOM series
also gets its ROI masks as a DICOM SEG referencing that series (dicom_seg.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk
from matplotlib.colors import to_rgb

from tipsprog import store
from tipsprog.dicom_seg import write_dicom_seg
from tipsprog.errors import InputError
from tipsprog.images import canonical, read_image
from tipsprog.outputs import atomic_output, check_not_an_input, make_folder
from tipsprog.segment.biomarkers import COMPARTMENT_LABELS, compartment_labels
from tipsprog.segment.overlay import ROI_COLOURS, draw_overlay
from tipsprog.store import ROI_LABELS

LABEL_TABLE = "labels.csv"  # the folder's marker (outputs.OUTPUT_KINDS["export"])
COMPARTMENT_COLOURS = {
    "skeletal_muscle": "tab:green",
    "subcutaneous_fat": "gold",
    "visceral_fat": "tab:olive",
    "ascites": "tab:cyan",
}


def on_original_grid(labels: sitk.Image, ct: sitk.Image) -> sitk.Image:
    """Labels of the reoriented (LPS) CT on the CT's stored grid: the same voxels, reordered (nearest neighbour)."""
    return sitk.Resample(labels, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _rgb(colour: str) -> tuple[int, int, int]:
    """A matplotlib colour as 0-255 RGB."""
    red, green, blue = (int(round(255 * channel)) for channel in to_rgb(colour))
    return red, green, blue


def write_label_tables(folder: Path, compartments: bool) -> None:
    """labels.csv, a 3D Slicer colour table and an ITK-SNAP label description for the label values."""
    rows = [(label, roi, *_rgb(ROI_COLOURS[roi])) for roi, label in ROI_LABELS.items()]
    if compartments:
        rows += [(label, name, *_rgb(COMPARTMENT_COLOURS[name])) for name, label in COMPARTMENT_LABELS.items()]
    (folder / LABEL_TABLE).write_text(
        "label,name,red,green,blue\n" + "".join(f"{','.join(map(str, row))}\n" for row in rows), encoding="utf-8"
    )
    (folder / "slicer_labels.ctbl").write_text(
        "0 background 0 0 0 0\n" + "".join(f"{label} {roi} {r} {g} {b} 255\n" for label, roi, r, g, b in rows), encoding="utf-8"
    )
    (folder / "itksnap_labels.txt").write_text(
        '    0     0    0    0        0  0  0    "Clear Label"\n'
        + "".join(f'{label:>5} {r:>5} {g:>4} {b:>4}        1  1  1    "{roi}"\n' for label, roi, r, g, b in rows),
        encoding="utf-8",
    )


@dataclass
class Exported:
    """What an export wrote: the patients whose masks it holds, and those of them that got a DICOM SEG."""

    patients: list[str]
    dicom_seg: list[str]


def run_export(seg: Path, out: Path, montage: bool = True, compartments: bool = True, dicom_seg: bool = False) -> Exported:
    """Write every segmented patient's masks (with the biomarkers' compartments, a montage and, for DICOM inputs, a
    DICOM SEG) into `out`, all or nothing."""
    check_not_an_input(out, [seg])
    with store.open_store(seg) as h5:
        if "segment/masks" not in h5:
            raise InputError(f"{seg}: not a segment store (no /segment/masks): export reads what `tipsprog segment` wrote")
        patients, ct_paths, series = store.read_patients(h5), store.read_ct_paths(h5), store.read_series_uids(h5)
        exported = Exported([pid for pid in patients if pid in h5["segment/masks"]], [])
        with atomic_output(out, "export") as tmp:
            make_folder(tmp)
            write_label_tables(tmp, compartments)
            for pid, ct_path, series_uid in zip(patients, ct_paths, series):
                if pid not in exported.patients:
                    continue
                labels = store.patient_mask(h5, pid)
                try:
                    ct = read_image(ct_path, series_uid)
                except InputError as err:
                    raise InputError(f"{seg}: patient {pid}: {err} (export writes the masks on the CT's own grid)") from None
                working = canonical(sitk.Cast(ct, sitk.sitkFloat32))  # the grid segment measured on
                painted = compartment_labels(working, labels) if compartments else labels
                sitk.WriteImage(on_original_grid(painted, ct), str(tmp / f"{pid}_labels.nii.gz"), useCompression=True)
                if dicom_seg and Path(ct_path).is_dir():
                    if write_dicom_seg(on_original_grid(labels, ct), Path(ct_path), series_uid, tmp / f"{pid}_seg.dcm"):
                        exported.dicom_seg.append(pid)
                if montage:
                    draw_overlay(working, labels, tmp / f"{pid}_qc.png")
    return exported
