"""The run report: one self-contained HTML page per run date, written by the DAG's last task.

Per partner over the last 30 run dates: rows received, quarantined by rule, matched, match rate;
segment sizes over time; what activation sent; the night's seed sets (audit.seed_exports: status,
seeds sent, location or the reason one was refused). Figures are inline SVG (matplotlib), so the page
needs no CDN or server: it opens offline, from object storage or inside the Airflow UI (served by
plugins/partner_report_plugin.py). Each data point is an SVG group with an id, a `data-value`
and a `<title>` (the browser's tooltip), so a reader and a test can read the exact numbers.

Data comes from the analysts' published copy (safe to read at any time), and segment sizes over
time from the model segment_size_history, which dbt keeps in the warehouse (the marts file is
built fresh every night); the report only reads (an exposure of the dbt project, `run_report`).
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import logging
import os
import re
from pathlib import Path

from partner_pipeline.settings import load_settings

log = logging.getLogger(__name__)
RUNS = 30  # run dates shown in the figures
_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f4f4}figure{margin:1em 0}
figcaption{color:#555;font-size:.9em}summary{cursor:pointer;margin:.6em 0}.note{color:#8a5a00}svg{max-width:100%;height:auto}"""


def write_report(day: dt.date, run_id: str) -> dict:
    """Store the report in s3://<PIPELINE_REPORTS_BUCKET>/: <day>/report.html, latest.html (the newest
    date's) and runs.json (run id -> date, for the report tab of a DAG run), which the Airflow UI serves
    (stored_page, on any machine); and a local copy, data/reports/<day>.html. Runs after every run,
    also a failed one; runs of the DAG end one after the other (sequencing.py), so no two update runs.json at once."""
    from partner_pipeline.storage import client_from_settings, ensure_buckets
    from partner_pipeline.warehouse import warehouse

    settings = load_settings()
    with warehouse(settings, read_only=True) as con:
        recorded = bool(con.execute("SELECT count(*) FROM audit.model_builds WHERE run_id = ?", [run_id]).fetchone()[0])
        segment_history = segment_sizes(con, day)
        seed_sets = seed_exports(con, day)
        published_at = con.execute("SELECT max(published_at) FROM audit.publications").fetchone()[0]
    data = read_published(settings, day)
    if data is not None:
        data["published_at"] = published_at
    page = render(day, run_id, data, segment_history, recorded, seed_sets)
    path = settings.reports_dir / f"{day}.html"
    _write_atomic(path, page)
    client = client_from_settings(settings)
    ensure_buckets(client, [settings.reports_bucket])
    key = f"{day}/report.html"
    _put(client, settings.reports_bucket, key, page)
    if max(stored_days(settings)) == day.isoformat():
        _put(client, settings.reports_bucket, LATEST, page)
    _put(client, settings.reports_bucket, RUNS_INDEX, json.dumps({**stored_runs(settings), run_id: day.isoformat()}, indent=1, sort_keys=True))
    summary = {"report": str(path), "uri": f"s3://{settings.reports_bucket}/{key}", "segment_sizes_recorded": recorded, "bytes": len(page)}
    log.info("run report: %s", summary)
    return summary


LATEST, RUNS_INDEX = "latest.html", "runs.json"


def stored_page(settings, day: str | None = None) -> str | None:
    """The stored report of run date `day` (YYYY-MM-DD), or the latest one; None if there is none."""
    return _get(settings, LATEST if day is None else f"{dt.date.fromisoformat(day)}/report.html")


def stored_days(settings) -> list[str]:
    """The run dates with a stored report, oldest first."""
    from botocore.exceptions import ClientError

    from partner_pipeline.storage import client_from_settings, list_objects

    try:
        keys = [o.key for o in list_objects(client_from_settings(settings), settings.reports_bucket, "")]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
            return []
        raise
    return sorted(key.removesuffix("/report.html") for key in keys if _REPORT_KEY.fullmatch(key))


def stored_runs(settings) -> dict[str, str]:
    """Run id -> run date of every run that stored its report."""
    return json.loads(_get(settings, RUNS_INDEX) or "{}")


_REPORT_KEY = re.compile(r"\d{4}-\d{2}-\d{2}/report\.html")


def _get(settings, key: str) -> str | None:
    from botocore.exceptions import ClientError

    from partner_pipeline.storage import client_from_settings

    try:
        return client_from_settings(settings).get_object(Bucket=settings.reports_bucket, Key=key)["Body"].read().decode()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "NoSuchBucket", "404"):
            return None
        raise


def _put(client, bucket: str, key: str, text: str) -> None:
    kind = "text/html; charset=utf-8" if key.endswith(".html") else "application/json"
    client.put_object(Bucket=bucket, Key=key, Body=text.encode(), ContentType=kind)


def segment_sizes(con, day: dt.date) -> list[tuple]:
    """(run date, segment, members) of the last RUNS run dates up to `day` (model segment_size_history;
    none before the first build)."""
    if not con.execute("""SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database()
                          AND schema_name = 'history' AND table_name = 'segment_size_history'""").fetchone()[0]:
        return []
    return con.execute(
        """SELECT run_date, segment_name, members FROM history.segment_size_history WHERE run_date IN (
               SELECT DISTINCT run_date FROM history.segment_size_history WHERE run_date <= ? ORDER BY run_date DESC LIMIT ?)
           ORDER BY 1, 2""", [day, RUNS]).fetchall()


def seed_exports(con, day: dt.date) -> list[dict]:
    """Each partner's seed set for `day` as its latest run left it (audit.seed_exports: counts, never an
    identifier): status sent / refused / failed, seeds sent, the location or the reason."""
    cursor = con.execute("""SELECT partner_id, agreement_id, status, seeds_sent, location, details->>'reason' AS reason
                            FROM audit.seed_exports WHERE seed_date = ?
                            QUALIFY row_number() OVER (PARTITION BY partner_id, agreement_id ORDER BY exported_at DESC) = 1
                            ORDER BY 1, 2""", [day])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]


def read_published(settings, day: dt.date) -> dict | None:
    """What the figures and tables need from the published marts, for the last RUNS dates up to `day`."""
    from partner_pipeline.transform import published_marts, published_summary

    with published_marts(settings) as con:
        if con is None:
            return None

        def rows(sql, params=()):
            cursor = con.execute(sql, list(params))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, r)) for r in cursor.fetchall()]

        dates = [r["drop_date"] for r in rows(
            "SELECT DISTINCT drop_date FROM drop_audit WHERE drop_date <= ? ORDER BY 1 DESC LIMIT ?", [day, RUNS])][::-1]
        first = dates[0] if dates else day
        return {
            "drop_dates": dates,
            "match_report": rows("""SELECT partner_id, drop_date, rows_received, rows_quarantined, rows_valid, matched,
                                           ambiguous, unmatched, match_rate, email_match_rate
                                    FROM match_report WHERE drop_date BETWEEN ? AND ? ORDER BY 1, 2""", [first, day]),
            "drops": rows("""SELECT partner_id, drop_date, state AS event, reasons FROM drop_states
                             WHERE drop_date BETWEEN ? AND ? ORDER BY 1, 2""", [first, day]),
            "activation_history": rows("""
                SELECT run_date, destination_id, segment_name,
                       coalesce(sum(adds) FILTER (WHERE status = 'sent'), 0) AS adds,
                       coalesce(sum(removes) FILTER (WHERE status = 'sent'), 0) AS removes
                FROM activation_log WHERE run_date IN (
                    SELECT DISTINCT run_date FROM activation_log WHERE run_date <= ? ORDER BY 1 DESC LIMIT ?)
                GROUP BY ALL ORDER BY 1, 2, 3""", [day, RUNS]),
            "activation": published_summary(con, day)["activation"],
        }


# --- the page ----------------------------------------------------------------------------------


def render(day: dt.date, run_id: str, data: dict | None, segment_history: list[tuple], recorded: bool,
           seed_sets: list[dict] | None = None) -> str:
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Run report {day}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Partner pipeline: run report for {day}</h1>",
             f"<p>Airflow run <code>{e(run_id)}</code>, written {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC."]
    if data is None:
        parts.append(" <span class='note'>No published marts yet: this run (or every run so far) built no models; "
                     "see its transform task.</span></p></body></html>")
        return "".join(parts)
    if data["published_at"]:  # none recorded by a warehouse published before audit.publications
        parts.append(f" From the analysts' published marts as of {data['published_at']:%Y-%m-%d %H:%M} UTC.")
    if not recorded:
        parts.append(" <span class='note'>This run built no models (see its transform task): the figures show the "
                     "last published state, and no segment sizes were recorded for this date.</span>")
    parts.append("</p><nav><a href='#partners'>Partners</a> · <a href='#segments'>Segments</a> · "
                 "<a href='#activation'>Activation</a> · <a href='#seed-sets'>Seed sets</a></nav>")
    parts += _partners_section(day, data)
    parts += _segments_section(day, segment_history)
    parts += _activation_section(day, data)
    parts += _seed_sets_section(day, seed_sets or [])
    parts.append("</body></html>")
    return "\n".join(parts)


def _partners_section(day: dt.date, data: dict) -> list[str]:
    e = html.escape
    out = ["<section id='partners'><h2>Partners</h2>"]
    today = [r for r in data["match_report"] if r["drop_date"] == day]
    if today:
        out.append("<table id='match-today'><tr><th>partner</th><th>received</th><th>quarantined</th><th>valid</th>"
                   "<th>matched</th><th>match rate</th><th>email match rate</th></tr>")
        for r in today:
            out.append(f"<tr data-partner='{e(r['partner_id'])}' data-date='{day}'><td>{e(r['partner_id'])}</td>"
                       + "".join(f"<td class='num' data-field='{f}'>{_fmt(r[f])}</td>" for f in
                                 ("rows_received", "rows_quarantined", "rows_valid", "matched"))
                       + f"<td class='num' data-field='match_rate'>{_pct(r['match_rate'])}</td>"
                       f"<td class='num' data-field='email_match_rate'>{_pct(r['email_match_rate'])}</td></tr>")
        out.append("</table>")
    else:
        out.append(f"<p>No drop of {day} was loaded.</p>")
    if data["match_report"]:
        out.append(_figure("match-rate", _match_rate_chart(data), f"Match rate per partner over the last {RUNS} run dates: "
                           "matched valid rows (by email, else phone) / valid rows."))
    for partner in sorted({r["partner_id"] for r in data["match_report"]}):
        out.append(_figure(f"rows-{partner}", _rows_chart(partner, data),
                           f"{partner}, per drop date. Above: rows received, split into matched, valid but not matched "
                           "and quarantined. Below: quarantined rows by the rule they broke (a row that broke several "
                           "rules counts under each)."))
    problems = [(d["partner_id"], p) for d in data["drops"] if d["drop_date"] == day
                for p in json.loads(d["reasons"] or "null") or []]
    if problems:  # every rule a row broke, and every problem of a drop rejected whole or incomplete, with its fix
        out.append(f"<details id='problems-today'><summary>{len(problems)} quarantine rules and drop problems on {day}, "
                   "each with its fix</summary><table><tr><th>partner</th><th>rule or problem</th><th>rows</th><th>fix</th></tr>")
        for partner, p in problems:
            out.append(f"<tr><td>{e(partner)}</td><td>{e(p.get('rule') or p.get('code'))}</td><td class='num'>"
                       f"{_fmt(p.get('rows'))}</td><td>{e(p.get('fix') or p.get('message') or '')}</td></tr>")
        out.append("</table></details>")
    out.append("</section>")
    return out


def _segments_section(day: dt.date, history: list[tuple]) -> list[str]:
    out = ["<section id='segments'><h2>Segments</h2>"]
    if not history:
        return out + ["<p>No segment sizes recorded yet.</p></section>"]
    dates = sorted({d for d, _, _ in history})
    sizes = {(d, s): n for d, s, n in history}
    segments = sorted({s for _, s, _ in history})
    previous = dates[-2] if len(dates) > 1 else None
    out.append(f"<table id='segments-today'><tr><th>segment</th><th>members on {dates[-1]}</th>"
               f"<th>change since {previous or '-'}</th></tr>")
    for s in segments:
        now, before = sizes.get((dates[-1], s)), sizes.get((previous, s))
        change = "" if now is None or before is None else f"{now - before:+,}"
        out.append(f"<tr data-segment='{html.escape(s)}'><td>{html.escape(s)}</td><td class='num' data-field='members'>"
                   f"{_fmt(now)}</td><td class='num'>{change}</td></tr>")
    out.append("</table>")

    def draw(ax, points):
        for s in segments:
            xs = [i for i, d in enumerate(dates) if (d, s) in sizes]
            color = ax.plot(xs, [sizes[dates[i], s] for i in xs], label=s)[0].get_color()
            for i in xs:
                n = sizes[dates[i], s]
                points[f"segment-{s}-{dates[i]}"] = (ax.plot([i], [n], "o", ms=4, color=color)[0], f"{s} on {dates[i]}: {n:,} members", n)
        _date_axis(ax, dates)
        ax.set_ylabel("members")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))

    out.append(_figure("segment-sizes", _chart(draw), f"Members per segment at each of the last {RUNS} run dates "
                       "(model segment_size_history: each date as its last successful build counted it)."))
    return out + ["</section>"]


def _activation_section(day: dt.date, data: dict) -> list[str]:
    e = html.escape
    out = ["<section id='activation'><h2>Activation</h2>"]
    if data["activation"]:
        out.append("<table id='activation-today'><tr><th>destination</th><th>segment</th><th>status</th><th>added</th>"
                   "<th>removed</th><th>members held</th></tr>")
        for r in data["activation"]:
            out.append(f"<tr data-destination='{e(r['destination_id'])}' data-segment='{e(r['segment_name'])}'>"
                       f"<td>{e(r['destination_id'])}</td><td>{e(r['segment_name'])}</td><td>{e(r['status'])}</td>"
                       f"<td class='num'>{_fmt(r['adds'])}</td><td class='num'>{_fmt(r['removes'])}</td>"
                       f"<td class='num'>{_fmt(r['members_held'])}</td></tr>")
        out.append("</table>")
    else:
        out.append(f"<p>Nothing was synced for {day}.</p>")
    history = data["activation_history"]
    if history:
        dates = sorted({r["run_date"] for r in history})
        pairs = sorted({(r["destination_id"], r["segment_name"]) for r in history})
        by = {(r["run_date"], r["destination_id"], r["segment_name"]): r for r in history}

        def draw(ax, points):
            import matplotlib

            colors = matplotlib.colormaps["tab10"]
            width = 0.8 / len(pairs)
            for k, (dest, seg) in enumerate(pairs):  # one bar per pair and date, side by side
                rows = [(i, by[d, dest, seg]) for i, d in enumerate(dates) if (d, dest, seg) in by]
                xs = [i - 0.4 + width * (k + 0.5) for i, _ in rows]
                for sign, field in ((1, "adds"), (-1, "removes")):
                    bars = ax.bar(xs, [sign * r[field] for _, r in rows], width, color=colors(k % 10),
                                  alpha=1 if sign > 0 else 0.5, label=f"{seg} -> {dest}" if sign > 0 else None)
                    for bar, (i, r) in zip(bars, rows):
                        points[f"activation-{dest}-{seg}-{field}-{dates[i]}"] = (
                            bar, f"{seg} -> {dest} on {dates[i]}: {r[field]:,} {field}", r[field])
            ax.axhline(0, color="#333", lw=0.6)
            _date_axis(ax, dates)
            ax.set_ylabel("members added (up) / removed (down)")
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))

        out.append(_figure("activation", _chart(draw), "Members sent to each destination per run date: added above the "
                           "axis, removed below (only batches the destination accepted)."))
    return out + ["</section>"]


def _seed_sets_section(day: dt.date, seed_sets: list[dict]) -> list[str]:
    """Per partner with a seed set: its status, seeds sent, and where it went or why it was not sent."""
    e = html.escape
    out = ["<section id='seed-sets'><h2>Seed sets</h2>"]
    if not seed_sets:
        return out + [f"<p>No seed set was due for {day}.</p></section>"]
    out.append("<table id='seed-sets-today'><tr><th>partner</th><th>agreement</th><th>status</th><th>seeds sent</th>"
               "<th>location or reason</th></tr>")
    for r in seed_sets:
        where = e(r["location"] or "") if r["status"] == "sent" else f"<span class='note'>{e(r['reason'] or '')}</span>"
        out.append(f"<tr data-partner='{e(r['partner_id'])}' data-status='{e(r['status'])}'><td>{e(r['partner_id'])}</td>"
                   f"<td>{e(r['agreement_id'])}</td><td>{e(r['status'])}</td><td class='num'>{_fmt(r['seeds_sent'])}</td>"
                   f"<td>{where}</td></tr>")
    return out + ["</table></section>"]


def _match_rate_chart(data: dict) -> str:
    dates = data["drop_dates"]

    def draw(ax, points):
        for partner in sorted({r["partner_id"] for r in data["match_report"]}):
            rows = [r for r in data["match_report"] if r["partner_id"] == partner and r["match_rate"] is not None]
            line = ax.plot([dates.index(r["drop_date"]) for r in rows], [float(r["match_rate"]) * 100 for r in rows], label=partner)[0]
            for r in rows:
                points[f"match-rate-{partner}-{r['drop_date']}"] = (
                    ax.plot([dates.index(r["drop_date"])], [float(r["match_rate"]) * 100], "o", ms=4, color=line.get_color())[0],
                    f"{partner} on {r['drop_date']}: match rate {_pct(r['match_rate'])}", float(r["match_rate"]))
        _date_axis(ax, dates)
        ax.set_ylim(0, 100)
        ax.set_ylabel("match rate (%)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))

    return _chart(draw)


def _rows_chart(partner: str, data: dict) -> str:
    import matplotlib

    dates = data["drop_dates"]
    report = {r["drop_date"]: r for r in data["match_report"] if r["partner_id"] == partner}
    rules: dict[str, dict] = {}
    for d in data["drops"]:
        if d["partner_id"] == partner and d["event"] == "loaded":
            for p in json.loads(d["reasons"] or "null") or []:
                if p.get("code") == "rows_quarantined":
                    rules.setdefault(p["rule"], {})[d["drop_date"]] = p["rows"]
    outcome = [("matched", "matched", "#2e7d32", {d: r["matched"] for d, r in report.items()}),
               ("valid_not_matched", "valid, not matched", "#b0bec5", {d: r["rows_valid"] - r["matched"] for d, r in report.items()}),
               ("quarantined", "quarantined", "#c62828", {d: r["rows_quarantined"] for d, r in report.items()})]
    colors = matplotlib.colormaps["tab20"]
    by_rule = [(rule, rule, colors(k % 20), by_date) for k, (rule, by_date) in enumerate(sorted(rules.items()))]

    def stack(ax, series, points):
        bottom = [0] * len(dates)
        for key, label, color, values in series:
            xs = [i for i, d in enumerate(dates) if values.get(d)]
            bars = ax.bar(xs, [values[dates[i]] for i in xs], 0.8, bottom=[bottom[i] for i in xs], color=color, label=label)
            for i, bar in zip(xs, bars):
                bottom[i] += values[dates[i]]
                points[f"rows-{partner}-{key}-{dates[i]}"] = (bar, f"{partner} on {dates[i]}: {values[dates[i]]:,} rows {label}",
                                                              values[dates[i]])
        _date_axis(ax, dates)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), ncol=1 if len(series) < 10 else 2)

    def draw(fig, points):
        fig.suptitle(partner, x=0.02, ha="left", fontsize=11)
        received, quarantined = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
        stack(received, outcome, points)
        received.set_ylabel("rows received")
        stack(quarantined, by_rule, points)
        quarantined.set_ylabel("quarantined\nby rule")

    return _chart(draw, height=5.2, whole_figure=True)


def _chart(draw, height: float = 3.2, whole_figure: bool = False) -> str:
    """Render draw(ax, points) (or draw(figure, points)) to inline SVG; `points` maps an id to
    (artist, tooltip, value): each becomes `<g id=... class="point" data-value=...><title>tooltip</title>`."""
    import matplotlib
    from matplotlib.figure import Figure

    points: dict[str, tuple] = {}
    fig = Figure(figsize=(9, height), layout="constrained")
    draw(fig if whole_figure else fig.add_subplot(), points)
    for gid, (artist, _, _) in points.items():
        artist.set_gid(gid)
    buffer = io.StringIO()
    # a fixed salt: the same data gives the same bytes; text stays text (searchable, small)
    with matplotlib.rc_context({"svg.hashsalt": "run-report", "svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    for gid, (_, tooltip, value) in points.items():
        svg = svg.replace(f'<g id="{gid}">', f'<g id="{gid}" class="point" data-value="{value}">'
                          f"<title>{html.escape(tooltip)}</title>", 1)
    return svg


def _figure(figure_id: str, svg: str, caption: str) -> str:
    return f"<figure id='{html.escape(figure_id)}'>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _date_axis(ax, dates: list) -> None:
    step = max(1, len(dates) // 10)
    ax.set_xticks(range(0, len(dates), step), [f"{d:%m-%d}" for d in dates[::step]], fontsize=8)
    ax.set_xlim(-0.6, len(dates) - 0.4)
    ax.grid(axis="y", color="#eee")


def _fmt(value) -> str:
    return "" if value is None else f"{value:,}"


def _pct(value) -> str:
    return "" if value is None else f"{float(value) * 100:.1f}%"


def _write_atomic(path: Path, text: str) -> None:
    """Readers (the plugin) never see a half-written page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
