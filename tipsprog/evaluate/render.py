"""The report as sections of tables and figures, rendered to Markdown and to one self-contained HTML page."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SETTING_TITLES = {
    "out-of-fold": "Cross-validation (out-of-fold predictions)",
    "held-out": "Held-out patients (fuse-train --test)",
    "external": "External cohort (evaluate --test)",
}


@dataclass
class Section:
    """A heading with an optional paragraph, table and figures."""

    title: str
    text: str = ""
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)
    level: int = 2


def ci(entry: dict | None, digits: int = 3) -> str:
    """'estimate (low–high)', the estimate alone without an interval, or '–'."""
    if not entry or not np.isfinite(entry.get("estimate", np.nan)):
        return "–"
    if not np.isfinite(entry.get("low", np.nan)):
        return f"{entry['estimate']:.{digits}f}"
    return f"{entry['estimate']:.{digits}f} ({entry['low']:.{digits}f}–{entry['high']:.{digits}f})"


def _number(value: float | None, digits: int = 3) -> str:
    return (
        "–" if value is None or not np.isfinite(value) else f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits}f}"
    )


def _ohe_section(document: dict, figures: dict[str, str]) -> Section:
    """OHE discrimination, calibration and threshold metrics with their figures."""
    return Section(
        "Overt hepatic encephalopathy",
        "Threshold metrics use the threshold fixed on the training folds.",
        ["row", "AUC", "Brier", "accuracy", "sensitivity", "specificity", "F1"],
        [
            [row, *(ci(v.get(k)) for k in ("auc", "brier", "accuracy", "sensitivity", "specificity", "f1"))]
            for row, v in document["ohe"].items()
        ],
        [
            (figures[k], t)
            for k, t in (("ohe_roc", "OHE ROC"), ("ohe_calibration", "OHE calibration"), ("decision_curve", "OHE decision curve"))
            if k in figures
        ],
        level=3,
    )


def _ppg_section(document: dict, figures: dict[str, str]) -> Section:
    """ppg_post error and agreement with its scatter plot."""
    return Section(
        "Portal pressure gradient after TIPS",
        "",
        ["row", "MAE (mmHg)", "RMSE (mmHg)", "R²", "Pearson r"],
        [
            [row, ci(v["mae_mmhg"], 2), ci(v["rmse_mmhg"], 2), ci(v["r2"]), ci(v["pearson_r"])]
            for row, v in document["ppg_post"].items()
        ],
        [(figures[k], t) for k, t in (("ppg", "ppg_post predicted vs observed"),) if k in figures],
        level=3,
    )


def setting_sections(name: str, document: dict, figures: dict[str, str]) -> list[Section]:
    """Tables and figures of one evaluation setting."""
    horizons = [int(h) for h in document["horizons_days"]]
    survival = document["survival"]
    sections = [
        Section(
            SETTING_TITLES.get(name, name),
            (
                f"{document['patients']} patients, {document['events']} deaths. 95% CIs from {document['bootstrap_draws']} "
                f"bootstrap resamples of patients. Uno's C truncated at {document['tau_days']:.0f} days; risk groups are cut "
                "at the training-fold median (FIPS at its published 0.92)."
            ),
        )
    ]
    sections.append(
        Section(
            "Discrimination",
            "Harrell's C is shown plain (tied risks count ½) and with ties broken at "
            "random, which removes the advantage discrete clinical scores get from ties.",
            ["row", "Harrell's C", "C (random ties)", "Uno's C", *(f"AUC {h} d" for h in horizons)],
            [
                [row, ci(v["harrell_c"]), ci(v["harrell_c_random_ties"]), ci(v["uno_c"]), *(ci(v[f"auc_{h}d"]) for h in horizons)]
                for row, v in survival.items()
            ],
            level=3,
        )
    )
    sections.append(
        Section(
            "Prediction error and calibration",
            "Integrated and time-point Brier scores (IPCW; lower is "
            "better); calibration slope of the predicted log hazard ratio (1 is ideal); observed/expected "
            "deaths at each horizon; D-calibration p (small p: predicted survival is miscalibrated).",
            ["row", "IBS", *(f"Brier {h} d" for h in horizons), "slope", *(f"O/E {h} d" for h in horizons), "D-cal p"],
            [
                [
                    row,
                    ci(v["integrated_brier"]),
                    *(ci(v[f"brier_{h}d"]) for h in horizons),
                    _number(v["calibration"]["slope"]),
                    *(_number(v["calibration"].get(f"{h}d", {}).get("observed_expected")) for h in horizons),
                    _number(v["calibration"]["d_calibration"]["p_value"]),
                ]
                for row, v in survival.items()
            ],
            [(figures[k], t) for k, t in (("calibration", "Survival calibration by decile"),) if k in figures],
            level=3,
        )
    )
    sections.append(
        Section(
            "Risk groups",
            "Hazard ratio of the high vs low risk group (Cox) and log-rank p.",
            ["row", "HR (95% CI)", "log-rank p"],
            [[row, ci(v["hazard_ratio"], 2), _number(v["hazard_ratio"]["logrank_p"])] for row, v in survival.items()],
            [
                (figures[k], t)
                for k, t in (
                    ("km", "Kaplan–Meier by model risk group"),
                    ("forest", "Hazard ratios"),
                    ("td_roc", "Time-dependent ROC"),
                )
                if k in figures
            ],
            level=3,
        )
    )
    sections.append(
        Section(
            "Model minus each row (paired bootstrap)",
            "Positive C differences and negative IBS "
            "differences favour the model; an interval excluding 0 is a clear difference.",
            ["row", "Δ Harrell's C", "Δ Uno's C", "Δ IBS"],
            [[row, ci(d["harrell_c"]), ci(d["uno_c"]), ci(d["integrated_brier"])] for row, d in document["model_minus"].items()],
            level=3,
        )
    )
    nri = document.get("reclassification")
    if nri:
        sections.append(
            Section(
                "Reclassification against FIPS",
                (
                    f"Two-category net reclassification at {nri['horizon_days']:.0f} days: FIPS high risk is FIPS ≥ {nri['fips_cut']}; "
                    f"the model flags the same fraction ({nri['flagged_fraction']:.0%}) of highest-risk patients."
                ),
                ["NRI", "events", "non-events"],
                [[ci(nri["nri"]), ci(nri["events"]), ci(nri["nonevents"])]],
                level=3,
            )
        )
    if document["ohe"]:
        sections.append(_ohe_section(document, figures))
    if document["ppg_post"]:
        sections.append(_ppg_section(document, figures))
    if document["centers"]:
        rows = list(next(iter(document["centers"].values()))["harrell_c"])
        sections.append(
            Section(
                "By center",
                "Harrell's C within each center (centers with at least 5 deaths); under "
                "leave-one-center-out training each center was predicted by models that never saw it.",
                ["center", "patients", "deaths", *rows],
                [
                    [center, str(v["patients"]), str(v["events"]), *(ci(v["harrell_c"][r]) for r in rows)]
                    for center, v in document["centers"].items()
                ],
                level=3,
            )
        )
    return sections


def markdown(title: str, sections: list[Section], notes: list[str]) -> str:
    """report.md with figures referenced by file name."""
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"{'#' * section.level} {section.title}", ""]
        if section.text:
            lines += [section.text, ""]
        if section.header:
            lines += ["| " + " | ".join(section.header) + " |", "|" + "---|" * len(section.header)]
            lines += ["| " + " | ".join(row) + " |" for row in section.rows] + [""]
        lines += [f"![{caption}]({Path(path).name})" for path, caption in section.figures]
        if section.figures:
            lines.append("")
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    return "\n".join(lines)


STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1em;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}th{background:#f2f2f2}figure{display:inline-block;margin:0.5em}
img{max-width:100%;border:1px solid #eee}figcaption{font-size:0.85em;color:#555}.wide{overflow-x:auto}p{line-height:1.45}"""


def _image(path: str) -> str:
    """A PNG inlined as a data URI (the page needs no other file and no network)."""
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{encoded}"


def html_page(title: str, sections: list[Section], notes: list[str]) -> str:
    """report.html: one self-contained page, figures inlined."""
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    for section in sections:
        parts.append(f"<h{section.level}>{html.escape(section.title)}</h{section.level}>")
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        if section.header:
            head = "".join(f"<th>{html.escape(cell)}</th>" for cell in section.header)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in section.rows)
            parts.append(f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
        for path, caption in section.figures:
            parts.append(
                f"<figure><img src='{_image(path)}' alt='{html.escape(caption)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(note)}</li>" for note in notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
