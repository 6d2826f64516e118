"""One self-contained report.html per run directory: figures embedded as base64 PNGs, metrics.json tables
(accuracy with its standard error), the data splits, induction heads, timings and the config (once, as a
table). No external resources, opens from the file system.

    path = write_report("runs/sst2-abft-...")     # also writes figures/<name>.png next to it

A small inline script marks each image with its decoded size (data-rendered="WxH") once the page has
loaded; the headless-browser test reads it.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from ..data.splits import splits_summary, splits_warning
from ..errors import UserError
from ..rundir import EXAMPLE_FILE, SHIFT_FILE, RunDir, atomic_write, read_config_json
from .figures import RUN_FIGURES, Figure, _number, before_after, flatten, read_log, run_figures

REPORT_FILE = "report.html"
FIGURES_DIR = "figures"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
#summary td.num, #data td.num, #metrics-other td.num, #config td.num { text-align: left; }  /* key: value */
td table { font-size: 1em; margin: 0; }
th { background: #f3f3f3; }
.up { color: #1a7f37; } .down { color: #c62828; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; }
.meta { color: #555; }
"""

_SCRIPT = """
window.addEventListener("load", function () {
  for (const img of document.images) {
    img.setAttribute("data-rendered", img.naturalWidth + "x" + img.naturalHeight);
  }
  document.body.setAttribute("data-loaded", "1");
});
"""


def fmt(value) -> str:
    """A cell's text: floats with 4 decimals from 0.01 to 1e5 (and 0), else 4 significant digits (3e-04)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value) or value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:.4f}"
        if abs(value) >= 1e5:
            return f"{value:.4g}"
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"  # 3e-04, 2.973e-04
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def config_text(value) -> str:
    """A config value as config.json and the command line have it: 0.0003, 32.0, "0.03 0.005 0.005", none."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return " ".join(map(config_text, value))
    return "none" if value is None else str(value)


def seconds_text(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else fmt(value)


def _cell(value, text=fmt, nest: bool = True) -> str:
    records = isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
    if nest and records:  # a table in the cell, one level deep (deeper records are text: a crafted file nests)
        keys = list(dict.fromkeys(k for record in value for k in record))
        return f"<td>{table('', keys, [[record.get(k, '') for k in keys] for record in value], nest=False)}</td>"
    cls = ' class="num"' if _number(value) else ""
    return f"<td{cls}>{html.escape(text(value))}</td>"


def table(table_id: str, header: list[str] | None, rows: list[list], text=fmt, nest: bool = True) -> str:
    """An HTML table (no header row when `header` is None); `text` writes a cell's value; `nest`: a list of
    records in a cell becomes a table in it."""
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header or ())
    head = "" if header is None else f"<thead><tr>{cells}</tr></thead>\n"
    body = "\n".join("<tr>" + "".join(_cell(v, text, nest) for v in row) + "</tr>" for row in rows)
    attr = f' id="{table_id}"' if table_id else ""
    return f"<table{attr}>\n{head}<tbody>\n{body}\n</tbody>\n</table>"


def _change(key: str, before, after):
    """after - before, except for counts and standard errors (whose difference means nothing)."""
    last = key.rsplit(".", 1)[-1]
    if not (_number(before) and _number(after)) or last.endswith("_se") or last in ("prompts", "queries", "sets"):
        return ""
    return after - before


def metrics_tables(metrics: dict) -> str:
    """before/after/change for every metric of metrics.json's before and after; every other entry below."""
    parts = []
    rows = [[key, b, a, _change(key, b, a)] for key, b, a in before_after(metrics, "")]
    if rows:
        parts.append(table("metrics", ["metric", "before", "after", "after - before"], rows))
    other = flatten({k: v for k, v in metrics.items() if k not in ("before", "after", "data_splits")})
    if other:
        parts.append(table("metrics-other", ["entry", "value"], [[k, v] for k, v in other.items()]))
    return "\n".join(parts)


def heads_table(heads: dict) -> str:
    rows = []
    for side in ("before", "after"):
        if side in heads:
            s = heads[side]
            listing = "; ".join(
                f"L{layer}: {', '.join(map(str, h))}" for layer, h in s.get("induction_heads", {}).items()
            )
            rows.append([side, s.get("mean_heads_per_prompt", ""), s.get("min_rate", ""), listing or "none"])
    return table("heads", ["", "induction heads / prompt", "min rate", "heads passing on >= min rate of prompts"], rows)


def _figure_html(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (
        f'<figure id="fig-{fig.name}">\n<img alt="{html.escape(fig.title)}" src="data:image/png;base64,{data}">\n'
        f"<figcaption><b>{html.escape(fig.title)}.</b> {html.escape(fig.caption)}</figcaption>\n</figure>"
    )


def title_of(config: dict, metrics: dict) -> str:
    """ "abft report: ABFT training on sst2", "... E2E training on ...", "... evaluation of ..."."""
    dataset = metrics.get("dataset", config.get("data", {}).get("dataset", ""))
    if config.get("command") == "run":
        return f"abft report: {str(config.get('train', {}).get('method', '')).upper()} training on {dataset}"
    return f"abft report: evaluation of {dataset}"


def device_and_dtype(config: dict) -> list[list]:
    """What ran: config.json "runtime" {"device", "dtype"} where the run recorded it, else what was asked
    for (--device / --dtype), else "auto" (abft's choice: cuda if available, fp32 on CPU / bf16 on GPU)."""
    runtime, asked = config.get("runtime") or {}, config.get("model") or {}
    runtime = runtime if isinstance(runtime, dict) else {}
    return [[key, runtime.get(key) or asked.get(key) or "auto"] for key in ("device", "dtype")]


def _accuracy_rows(metrics: dict, splits: dict | None) -> list[list]:
    """`accuracy before | 0.6250 ± 0.1210 (one standard error, 16 prompts)` per stage with an accuracy."""
    rows = []
    for side in ("before", "after"):
        m = metrics.get(side, {})
        if not _number(m.get("accuracy")):
            continue
        if not _number(m.get("accuracy_se")):
            rows.append([f"accuracy {side}", m["accuracy"]])
            continue
        where = f", {m['prompts']} prompts" if _number(m.get("prompts")) else ""
        if splits and _number(splits.get("test_prompt_queries")) and splits.get("test_prompts") == m.get("prompts"):
            where += f" over {splits['test_prompt_queries']} distinct queries"
        rows.append([f"accuracy {side}", f"{fmt(m['accuracy'])} ± {fmt(m['accuracy_se'])} (one standard error{where})"])
    return rows


def data_section(splits: dict) -> str:
    """The split sizes and distinct test queries (metrics.json "data_splits", data.splits.describe_splits)."""
    keys = ("made_by", "calibration", "demonstration", "test", "test_distinct_queries",
            "test_queries_in_other_splits", "test_prompts", "test_prompt_queries", "prompts_per_query")  # fmt: skip
    parts = [table("data", None, [[key, splits[key]] for key in keys if key in splits])]
    try:
        summary, warning = splits_summary(splits), splits_warning(splits)
    except (KeyError, TypeError, ValueError):  # a record of another shape: the table is all there is
        return parts[0]
    parts.insert(0, f"<p>{html.escape(summary)}</p>")
    if warning:
        parts.append(f'<p class="down">warning: {html.escape(warning)}</p>')
    return "\n".join(parts)


def render_report(
    run_dir: str | Path,
    figures: list[Figure],
    config: dict,
    metrics: dict,
    heads: dict,
    timings: dict,
    status: dict,
) -> str:
    """report.html of `run_dir` from its files' contents (write_report reads them)."""
    run = Path(run_dir)
    method = config.get("train", {}).get("method", "") if config.get("command") == "run" else "evaluation"
    title = title_of(config, metrics)
    splits = metrics.get("data_splits") or config.get("data_splits")
    splits = splits if isinstance(splits, dict) else None
    summary = [
        ["run directory", str(run.resolve())],
        ["state", status.get("state", "unknown")],
        ["model", config.get("model", {}).get("model", "")],
        ["dataset", metrics.get("dataset", config.get("data", {}).get("dataset", ""))],
        ["method", method],
        ["k", config.get("data", {}).get("k", "")],
        *device_and_dtype(config),
        *_accuracy_rows(metrics, splits),
    ]
    body = [f"<h1>{html.escape(title)}</h1>", table("summary", None, summary)]
    if status.get("error"):
        body.append(f'<p class="down">error: {html.escape(str(status["error"]))}</p>')
    if splits:
        body += ["<h2>Data</h2>", data_section(splits)]
    body.append("<h2>Metrics</h2>")
    body.append(metrics_tables(metrics) or "<p>no metrics.json</p>")
    if heads:
        body += ["<h2>Induction heads</h2>", heads_table(heads)]
    body.append("<h2>Figures</h2>")
    body += [_figure_html(f) for f in figures] or ["<p>no figures (no inputs in this run directory)</p>"]
    if timings:
        rows = [[k, v] for k, v in timings.items()]
        body += ["<h2>Timings</h2>", table("timings", ["phase", "seconds"], rows, seconds_text)]
    body.append("<h2>Configuration</h2>")
    body.append(f'<p class="meta">config.json of {html.escape(str(run.name))}, flattened:</p>')
    rows = [
        [k, "auto" if v is None and k in ("model.device", "model.dtype") else v] for k, v in flatten(config).items()
    ]
    body.append(table("config", ["option", "value"], rows, config_text))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n<script>{_SCRIPT}</script>\n</head>\n"
        "<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def write_report(run_dir: str | Path) -> Path:
    """Write report.html and figures/*.png into `run_dir`; returns the report's path."""
    run = Path(run_dir)
    config = read_config_json(run)
    files = RunDir(run)
    metrics = files.read_json("metrics.json") or {}
    heads = files.read_json("heads.json") or {}
    log = read_log(run / "train_log.jsonl")
    figures = run_figures(metrics, heads, files.read_json(EXAMPLE_FILE), files.read_json(SHIFT_FILE), log)
    (run / FIGURES_DIR).mkdir(exist_ok=True)
    for name in RUN_FIGURES - {fig.name for fig in figures}:
        (run / FIGURES_DIR / f"{name}.png").unlink(missing_ok=True)  # stale from an earlier report
    for fig in figures:
        atomic_write(run / FIGURES_DIR / f"{fig.name}.png", fig.png)
    path = run / REPORT_FILE
    timings, status = files.read_json("timings.json") or {}, files.read_json("status.json") or {}
    atomic_write(path, render_report(run, figures, config, metrics, heads, timings, status))
    return path


def report_run(run_dir: str | Path) -> Path:
    """`abft report`: write_report with a UserError for a missing directory or JSON files of another shape."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist")
    try:
        return write_report(run)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError, RecursionError) as exc:  # edited files
        raise UserError(
            f"cannot write the report of {run}: its JSON files are not shaped as abft writes them "
            f"({type(exc).__name__}: {exc}); restore them or rerun"
        ) from exc
