"""One self-contained HTML page for a run: figures embedded as base64 PNG data URIs.

:func:`build_report` looks through a run folder for what the other commands wrote:

* evaluation folders (any ``metrics.json`` written by ``cryomap evaluate`` or the demo): the
  metrics table, one FSC plot with every curve, and the maps they name (``pred_path`` or the
  aligned ``scored_map.mrc``, and ``truth_path``) for slices, projections,
  maximum-intensity projections and shaded isosurfaces;
* Lightning CSV logs (``metrics.csv``): the loss curves;
* other PNG figures (e.g. preprocessing figures): shown as they are;
* ``run_summary.json`` when present (the demo's stage timings and settings).

The page references nothing outside itself, so it can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path

import numpy as np

from cryomap.errors import BadInputError
from cryomap.io.atomic import atomic_path

REPORT_FIGURE_NAMES = {"fsc.png"}


def png_data_uri(path: str | Path) -> str:
    """``data:image/png;base64,...`` for a PNG file."""
    data = Path(path).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def find_evaluations(run_dir: Path) -> list[tuple[Path, dict]]:
    """(folder, metrics) for every ``metrics.json`` under ``run_dir`` that an evaluation wrote."""
    found = []
    for p in sorted(run_dir.rglob("metrics.json")):
        try:
            info = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and "fsc" in info and "metrics" in info:
            found.append((p.parent, info))
    return found


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _res(fsc_info: dict | None, t: str) -> str | None:
    """Resolution text; ``≤ x*`` when the curve never fell below the threshold (x = Nyquist)."""
    if not fsc_info or fsc_info.get(f"resolution_fsc{t}_A") is None:
        return None
    r = float(fsc_info[f"resolution_fsc{t}_A"])
    return f"{r:.1f}" if fsc_info.get(f"crossed_fsc{t}", True) else f"≤ {r:.1f}*"


def metrics_table(evaluations: list[tuple[Path, dict]]) -> str:
    """HTML table: one row per evaluation with resolutions, CC, SSIM, Dice, IoU, alignment."""
    cols = [
        ("map", lambda i: i.get("name")),
        ("vs", lambda i: i.get("reference", "truth")),
        ("FSC 0.5 (Å)", lambda i: _res(i["fsc"], "0.5")),
        ("FSC 0.143 (Å)", lambda i: _res(i["fsc"], "0.143")),
        ("masked FSC 0.143 (Å)", lambda i: _res(i.get("fsc_masked_corrected"), "0.143")),
        ("CC", lambda i: i["metrics"].get("cc")),
        ("CC about mean", lambda i: i["metrics"].get("cc_mean")),
        ("MSE", lambda i: i["metrics"].get("mse")),
        ("MSE (z-scored)", lambda i: i["metrics"].get("mse_zscored")),
        ("SSIM", lambda i: i["metrics"].get("ssim")),
        ("Dice", lambda i: i["metrics"].get("dice")),
        ("IoU", lambda i: i["metrics"].get("iou")),
        ("Dice eq. vol.", lambda i: i["metrics"].get("dice_equal_volume")),
        ("IoU eq. vol.", lambda i: i["metrics"].get("iou_equal_volume")),
        ("contour", lambda i: i["metrics"].get("contour")),
        ("aligned", lambda i: i.get("aligned")),
    ]
    head = "".join(f"<th>{html.escape(c)}</th>" for c, _ in cols)
    rows = []
    for _, info in evaluations:
        cells = []
        for c, get in cols:
            try:
                v = get(info)
            except (KeyError, TypeError):
                v = None
            digits = 1 if "Å" in c else (4 if c.startswith("MSE") else 3)
            cells.append(f"<td>{_fmt(v, digits)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _load_map(path: Path) -> np.ndarray | None:
    from cryomap.io.mrc import read_map

    try:
        return read_map(path, apix=1.0).data
    except Exception:  # a map that moved away is skipped, the report still renders
        return None


def _collect_maps(evaluations: list[tuple[Path, dict]], max_maps: int = 6) -> dict[str, np.ndarray]:
    maps: dict[str, np.ndarray] = {}
    truth_done = False
    for folder, info in evaluations:
        if not truth_done and info.get("truth_path") and info.get("reference", "truth") == "truth":
            t = _load_map(Path(info["truth_path"]))
            if t is not None:
                maps["truth"] = t
                truth_done = True
        if info.get("reference", "truth") != "truth":
            continue
        src = folder / info["scored_map"] if info.get("scored_map") else (Path(info["pred_path"]) if info.get("pred_path") else None)
        if src is not None and len(maps) < max_maps:
            m = _load_map(src)
            if m is not None and (not maps or m.shape == next(iter(maps.values())).shape):
                maps[str(info.get("name", folder.name))] = m
    if "truth" in maps:  # truth first
        maps = {"truth": maps.pop("truth"), **maps}
    return maps


def headline_section(summ: dict) -> str:
    """The seen and the unseen molecule side by side, with what each row means (``run_summary.json``'s
    ``seen``/``unseen``/``notes``); empty when the summary has neither."""
    blocks = []
    notes = summ.get("notes", {}) or {}
    for key, title in (("seen", "Seen molecule (trained on; held-out particles)"),
                       ("unseen", "Unseen molecule (in no training set)")):
        rows = summ.get(key) or {}
        if not rows:
            continue
        body = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{_fmt(m.get('fsc0.5_A'), 1)}</td><td>{_fmt(m.get('fsc0.143_A'), 1)}</td>"
            f"<td>{_fmt(m.get('cc'))}</td><td>{_fmt(m.get('dice'))}</td><td>{_fmt(m.get('aligned'))}</td></tr>"
            for name, m in rows.items())
        note = notes.get(key, "")
        blocks.append(f"<div style='display:inline-block;vertical-align:top;margin-right:24px'><h3>{html.escape(title)}</h3>"
                      "<table><thead><tr><th>map</th><th>FSC 0.5 (Å)</th><th>FSC 0.143 (Å)</th><th>CC</th><th>Dice</th>"
                      f"<th>aligned</th></tr></thead><tbody>{body}</tbody></table><p class='note'>{html.escape(note)}</p></div>")
    if not blocks:
        return ""
    extra = ("<p class='note'>Against the truth label of each molecule, on the label grid. On the seen molecule a model "
             "can recognise a target it was trained on, so beating the physics map there says nothing about new "
             "molecules; the unseen column is the test that matters. "
             + html.escape(notes.get("mean training label", "")) + "</p>")
    return _section("Headline: seen and unseen", "".join(blocks) + extra)


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _img(uri: str, caption: str) -> str:
    return f'<figure><img src="{uri}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;color:#222}
h1{font-size:1.6em;margin-bottom:0}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;font-size:0.85em;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:8px;vertical-align:top}
figure img{max-width:100%;border:1px solid #ddd}details{margin:6px 0;font-size:0.9em}summary{cursor:pointer;font-weight:600}figcaption{font-size:0.8em;color:#555}.note{font-size:0.85em;color:#555}
"""


def build_report(run_dir: str | Path, out_html: str | Path, *, force: bool = False, title: str | None = None) -> Path:
    """Write one self-contained HTML report for ``run_dir``; returns the path."""
    from cryomap.evaluate.figures import fsc_figure, isosurface_figure, loss_figure, views_figure
    from cryomap.evaluate.score import FSC_CSV, read_fsc_csv

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BadInputError("run folder not found", run_dir)
    out_html = Path(out_html)
    evaluations = find_evaluations(run_dir)
    log_csvs = sorted(p for p in run_dir.rglob("metrics.csv"))
    parts: list[str] = []
    summary_path = next(iter(sorted(run_dir.rglob("run_summary.json"))), None)

    with tempfile.TemporaryDirectory(prefix="cryomap-report-") as tmpd:
        tmp = Path(tmpd)
        # run summary
        if summary_path is not None:
            try:
                summ = json.loads(summary_path.read_text())
                headline = headline_section(summ)
                if headline:
                    parts.append(headline)
                rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{_fmt(v)}</td></tr>" for k, v in summ.items() if not isinstance(v, (dict, list)))
                parts.append(_section("Run", f"<table>{rows}</table>"))
                for k, v in summ.items():
                    if isinstance(v, dict) and not any(isinstance(b, dict) for b in v.values()):
                        rows = "".join(f"<tr><td>{html.escape(str(a))}</td><td>{_fmt(b)}</td></tr>" for a, b in v.items())
                        parts.append(f"<details{' open' if k == 'stage seconds' else ''}><summary>{html.escape(str(k))}</summary><table>{rows}</table></details>")
            except (OSError, ValueError):
                pass
        # metrics
        if evaluations:
            note = ("<p class='note'>FSC resolutions use the first shell where the curve falls below the threshold, "
                    "linearly interpolated; ‘–’ where not defined; ‘≤ x*’: the curve never fell below the threshold, x is Nyquist. Dice/IoU: maps binarised at the stated contour "
                    "(truth units); ‘eq. vol.’ binarises each map at the contour enclosing the truth's volume "
                    "(scale-free, fair to maps in other units). The half-set row is the gold-standard FSC between "
                    "the two half reconstructions (no truth involved). A mean of labels that include the truth "
                    "(the mean training label when the split is by particles) keeps FSC near 1/√(number of labels) "
                    "at every frequency, so its FSC resolution says little: judge it by CC and Dice, or by "
                    "the mean label of the other targets.</p>")
            parts.append(_section("Metrics", metrics_table(evaluations) + note))
            curves = {}
            for folder, info in evaluations:
                if (folder / FSC_CSV).exists():
                    curves[str(info.get("name", folder.name))] = read_fsc_csv(folder / FSC_CSV)
            if curves:
                p = fsc_figure(curves, tmp / "fsc_all.png", title="FSC of every map (vs truth unless stated)")
                parts.append(_section("Fourier shell correlation", _img(png_data_uri(p), "FSC curves of all compared maps")))
            groups: dict[str, list] = {}  # one set of views per truth (a seen and an unseen molecule apart)
            for folder, info in evaluations:
                groups.setdefault(str(info.get("truth_path", "")), []).append((folder, info))
            for g, (truth_key, group) in enumerate(groups.items()):
                maps = _collect_maps(group)
                if not maps:
                    continue
                figs = []
                for kind, cap in (("slice", "central slices"), ("sum", "projections (sum along the axis)"), ("max", "maximum-intensity projections")):
                    p = views_figure(maps, kind, tmp / f"views_{g}_{kind}.png")
                    figs.append(_img(png_data_uri(p), cap))
                contour = next((i["metrics"].get("contour") for _, i in group if i.get("reference", "truth") == "truth"), None)
                p = isosurface_figure(maps, tmp / f"isosurfaces_{g}.png", reference="truth" if "truth" in maps else None, contour=contour)
                figs.append(_img(png_data_uri(p), "isosurfaces (each map contoured to enclose the truth's volume at the Dice contour)"))
                where = Path(truth_key).parent.name if truth_key else ""
                parts.append(_section(f"Maps{' (' + where + ')' if where else ''}: " + ", ".join(maps), "".join(figs)))
        else:
            parts.append(_section("Metrics", "<p>No evaluation (metrics.json) found in this run folder.</p>"))
        # loss curves
        if log_csvs:
            p = loss_figure(log_csvs, tmp / "loss.png")
            if p is not None:
                parts.append(_section("Training", _img(png_data_uri(p), "loss curves from " + ", ".join(str(c.relative_to(run_dir)) for c in log_csvs))))
        # other figures (preprocessing etc.)
        eval_dirs = {f for f, _ in evaluations}
        others = [p for p in sorted(run_dir.rglob("*.png")) if p.parent not in eval_dirs and p.resolve() != out_html.resolve()]
        if others:
            figs = "".join(_img(png_data_uri(p), str(p.relative_to(run_dir))) for p in others[:24])
            parts.append(_section("Other figures", figs))

    heading = html.escape(title or f"cryomap report: {run_dir.resolve().name}")
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{heading}</title><style>{_CSS}</style></head><body>"
        f"<h1>{heading}</h1><p class='note'>Run folder: {html.escape(str(run_dir.resolve()))}</p>"
        + "".join(parts)
        + "</body></html>\n"
    )
    with atomic_path(out_html, force=force) as tmp_html:
        tmp_html.write_text(page, encoding="utf-8")
    return out_html
