"""The status page: one self-contained HTML page (no scripts, no external assets), served at `/` by the
daemon and written by `backupd status --html FILE` in timer mode. It refreshes itself, reads on a phone,
shows no secrets and escapes every value. `[http] status_page = "public"` shows job names, states, ages and
next runs only.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime

from backupd import __version__
from backupd.daemon.status import JobStatus, NotifyStatus
from backupd.humanize import human_age, human_bytes

REFRESH = 60

CSS = """
body{font:15px/1.4 system-ui,-apple-system,sans-serif;margin:0;padding:1rem;background:#f6f7f9;color:#1d2228}
h1{font-size:1.3rem;margin:0 0 .2rem}.sub{color:#5b6470;margin:0 0 1rem;font-size:.9rem}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0002}
th,td{padding:.45rem .6rem;text-align:left;border-bottom:1px solid #e4e7eb;vertical-align:top}
th{font-size:.8rem;text-transform:uppercase;color:#5b6470;background:#fafbfc}
.state{font-weight:600;padding:.1rem .5rem;border-radius:.8rem;white-space:nowrap}
.ok{background:#dcf5e3;color:#11602c}.failing{background:#fde0e0;color:#8a1111}
.overdue{background:#fff0cc;color:#7a4b00}.never-run,.disabled{background:#e9ecef;color:#444}
.err{color:#8a1111;font-size:.85rem;word-break:break-word}.muted{color:#5b6470;font-size:.85rem}
.warn{background:#fff0cc;padding:.5rem .8rem;margin:0 0 1rem;border-radius:.3rem}
svg{vertical-align:middle}
@media (max-width:700px){thead{display:none}tr{display:block;margin:0 0 .8rem;background:#fff}
td{display:flex;justify-content:space-between;gap:1rem;border:0;border-bottom:1px solid #eee}
td::before{content:attr(data-label);font-weight:600;color:#5b6470}}
"""


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(dt: datetime | None) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if dt else "-"


def sparkline(sizes: list[int], width: int = 100, height: int = 22) -> str:
    """The sizes of the recent backups as a small inline SVG polyline (oldest left)."""
    if len(sizes) < 2:
        return '<span class="muted">-</span>'
    lo, hi = min(sizes), max(sizes)
    span = (hi - lo) or 1
    step = (width - 4) / (len(sizes) - 1)
    pts = " ".join(
        f"{2 + i * step:.1f},{height - 2 - (s - lo) / span * (height - 4):.1f}" for i, s in enumerate(sizes)
    )
    last_x, last_y = pts.rsplit(" ", 1)[1].split(",")
    label = f"size of the last {len(sizes)} backups: {human_bytes(lo)} to {human_bytes(hi)}"
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img"'
        f' aria-label="{esc(label)}"><title>{esc(label)}</title>'
        f'<polyline fill="none" stroke="#3b6fd8" stroke-width="1.5" points="{pts}"/>'
        f'<circle cx="{last_x}" cy="{last_y}" r="2" fill="#3b6fd8"/></svg>'
    )


def _s3(st: JobStatus) -> str:
    if not st.s3_enabled:
        return "-"
    if st.s3_pending:
        text = f"{st.s3_pending} pending"
        if st.s3_error:
            text += f": {st.s3_error}"
        return text
    return f"in sync (last copy {_when(st.s3_last_copy_at)})" if st.s3_last_copy_at else "in sync"


def _row(st: JobStatus, public: bool) -> str:
    state = st.state
    cells: list[tuple[str, str]] = [
        ("Job", f'<strong>{esc(st.job)}</strong>'),
        ("State", f'<span class="state {esc(state.replace(" ", "-"))}">{esc(state)}</span>'),
        ("Last good backup", f"{esc(_when(st.last_success_at))}"
                             + ("" if public else f'<br><span class="muted">{esc(st.last_backup_id or "")}</span>')),
        ("Age", esc(human_age(st.last_success_age_seconds))),
    ]
    if not public:
        size = human_bytes(st.last_backup_bytes)
        drill = "-"
        if st.last_drill_outcome:
            drill = f"{st.last_drill_outcome} {_when(st.last_drill_at)}"
            if st.last_drill_restore_seconds is not None:
                drill += f" (restore {st.last_drill_restore_seconds:.1f}s)"
        cells += [
            ("Size trend", f"{sparkline(st.recent_sizes)} <span class=\"muted\">{esc(size)}</span>"
                           if st.last_backup_bytes is not None else "-"),
            ("Last drill", esc(drill)),
            ("S3", esc(_s3(st))),
        ]
    cells.append(("Next run", esc(_when(st.next_run)) + (" (running)" if st.running and not public else "")))
    tds = "".join(f'<td data-label="{esc(label)}">{value}</td>' for label, value in cells)
    out = f'<tr id="job-{esc(st.job)}" data-state="{esc(state)}">{tds}</tr>'
    if not public and state == "failing" and st.last_run_error:
        since = f" (failing since {_when(st.failing_since)})" if st.failing_since else ""
        out += (
            f'<tr class="error-row" id="error-{esc(st.job)}"><td colspan="{len(cells)}" class="err">'
            f"{esc(st.last_run_error)}{esc(since)}</td></tr>"
        )
    return out


def render_page(
    jobs: list[JobStatus], mode: str, host: str, notify: NotifyStatus | None = None, now: datetime | None = None
) -> str:
    """The page; `mode` is "full" or "public"."""
    now = now or datetime.now(UTC)
    public = mode == "public"
    heads = ["Job", "State", "Last good backup", "Age"]
    if not public:
        heads += ["Size trend", "Last drill", "S3"]
    heads.append("Next run")
    counts: dict[str, int] = {}
    for st in jobs:
        counts[st.state] = counts.get(st.state, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no jobs configured"
    bad = counts.get("failing", 0) + counts.get("overdue", 0)
    warn = ""
    if not public and notify is not None and notify.undeliverable:
        total = sum(notify.undeliverable.values())
        warn = (f'<p class="warn" id="notify-undeliverable">{total} notification(s) could not be delivered: '
                f"{esc(notify.recent[0]) if notify.recent else ''}</p>")
    rows = "".join(_row(st, public) for st in jobs)
    title = f"{'⚠ ' if bad else ''}backupd on {host}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH}">
<meta name="robots" content="noindex">
<title>{esc(title)}</title><style>{CSS}</style></head>
<body><main>
<h1>backupd on {esc(host)}</h1>
<p class="sub" id="summary">{esc(summary)} &middot; as of {esc(_when(now))} &middot; backupd {esc(__version__)}</p>
{warn}<table id="jobs"><thead><tr>{"".join(f"<th>{esc(h)}</th>" for h in heads)}</tr></thead>
<tbody>{rows}</tbody></table>
</main></body></html>
"""
