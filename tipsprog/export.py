"""`tipsprog export STORE --out DIR`: every segmented patient's ROI masks as NIfTI on the grid of its CT as stored
(orientation, spacing and origin of the file or DICOM series, not the LPS grid tipsprog works on), with label tables
for 3D Slicer and ITK-SNAP and, optionally, a QC montage PNG per patient."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk
from matplotlib.colors import to_rgb

from tipsprog import store
from tipsprog.errors import InputError
from tipsprog.images import canonical, read_image
from tipsprog.outputs import atomic_output, check_not_an_input, make_folder
from tipsprog.segment.overlay import ROI_COLOURS, draw_overlay
from tipsprog.store import ROI_LABELS

LABEL_TABLE = "labels.csv"  # the folder's marker (outputs.OUTPUT_KINDS["export"])


def on_original_grid(labels: sitk.Image, ct: sitk.Image) -> sitk.Image:
    """Labels of the reoriented (LPS) CT on the CT's stored grid: the same voxels, reordered (nearest neighbour)."""
    return sitk.Resample(labels, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _rgb(roi: str) -> tuple[int, int, int]:
    """An ROI's overlay colour as 0-255 RGB."""
    red, green, blue = (int(round(255 * channel)) for channel in to_rgb(ROI_COLOURS[roi]))
    return red, green, blue


def write_label_tables(folder: Path) -> None:
    """labels.csv, a 3D Slicer colour table and an ITK-SNAP label description for the label values."""
    rows = [(label, roi, *_rgb(roi)) for roi, label in ROI_LABELS.items()]
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


def run_export(seg: Path, out: Path, montage: bool = True) -> list[str]:
    """Write every segmented patient's masks (and montage) into `out`, all or nothing; the patients exported."""
    check_not_an_input(out, [seg])
    with store.open_store(seg) as h5:
        if "segment/masks" not in h5:
            raise InputError(f"{seg}: not a segment store (no /segment/masks): export reads what `tipsprog segment` wrote")
        patients, ct_paths, series = store.read_patients(h5), store.read_ct_paths(h5), store.read_series_uids(h5)
        exported = [pid for pid in patients if pid in h5["segment/masks"]]
        with atomic_output(out, "export") as tmp:
            make_folder(tmp)
            write_label_tables(tmp)
            for pid, ct_path, series_uid in zip(patients, ct_paths, series):
                if pid not in exported:
                    continue
                labels = store.patient_mask(h5, pid)
                try:
                    ct = read_image(ct_path, series_uid)
                except InputError as err:
                    raise InputError(f"{seg}: patient {pid}: {err} (export writes the masks on the CT's own grid)") from None
                sitk.WriteImage(on_original_grid(labels, ct), str(tmp / f"{pid}_labels.nii.gz"), useCompression=True)
                if montage:
                    draw_overlay(canonical(sitk.Cast(ct, sitk.sitkFloat32)), labels, tmp / f"{pid}_qc.png")
    return exported
