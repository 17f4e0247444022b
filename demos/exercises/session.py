"""One student's session on one exercise: when it started, each check, the hints used, the
answers given, when it passed; kept as JSON and written out as a Markdown and an HTML report.

The lab's own run folder (/run/syncwall/LAB) is removed when the lab goes down, so sessions are
kept beside the labs, in /run/syncwall/exercises/, where `exercise report` still finds them."""

from __future__ import annotations

import html
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from netns.record import RUN_ROOT

EX_ROOT = RUN_ROOT / "exercises"


@dataclass(slots=True)
class Session:
    exercise: str
    lab: str
    lab_file: str
    started: float = field(default_factory=time.time)
    built_hash: str = ""  # the lab file the running lab was built from
    facts: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    hints: list[dict[str, Any]] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    resets: int = 0
    passed_at: float | None = None
    stopped: float | None = None

    # ---- storage -----------------------------------------------------------------------------
    @staticmethod
    def path_for(exercise: str, root: Path = EX_ROOT) -> Path:
        return root / f"{exercise}.json"

    def save(self, root: Path = EX_ROOT) -> Path:
        root.mkdir(parents=True, exist_ok=True, mode=0o755)
        p = self.path_for(self.exercise, root)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(p)
        (root / "current").write_text(self.exercise)
        return p

    @classmethod
    def load(cls, exercise: str, root: Path = EX_ROOT) -> Session:
        d = json.loads(cls.path_for(exercise, root).read_text())
        return cls(**d)

    # ---- what happened -------------------------------------------------------------------------
    def add_check(self, results: list[dict[str, Any]], passed: bool, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.checks.append({"t": now, "passed": passed, "results": results})
        if passed and self.passed_at is None:
            self.passed_at = now

    def add_hint(self, criterion: str, now: float | None = None) -> None:
        self.hints.append({"t": time.time() if now is None else now, "criterion": criterion})

    def add_answer(self, value: str, ok: bool, now: float | None = None) -> None:
        self.answers.append({"t": time.time() if now is None else now, "value": value, "ok": ok})

    @property
    def answer(self) -> str | None:
        return str(self.answers[-1]["value"]) if self.answers else None

    @property
    def time_to_pass_s(self) -> float | None:
        return None if self.passed_at is None else round(self.passed_at - self.started, 1)

    @property
    def last_results(self) -> list[dict[str, Any]]:
        return list(self.checks[-1]["results"]) if self.checks else []


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def report_rows(s: Session, title: str) -> dict[str, Any]:
    ttp = s.time_to_pass_s
    return {
        "title": title,
        "facts": [
            ("exercise", s.exercise), ("lab", s.lab), ("started", _when(s.started)),
            ("passed", _when(s.passed_at) if s.passed_at else "not yet"),
            ("time to pass", f"{ttp:.0f} s" if ttp is not None else "-"),
            ("checks", str(len(s.checks))), ("hints used", str(len(s.hints))),
            ("answers given", ", ".join(str(a["value"]) for a in s.answers) or "-"),
            ("resets", str(s.resets)),
        ],
        "criteria": [(r["text"], bool(r["ok"]), str(r["details"])) for r in s.last_results],
        "hints": [(_when(h["t"]), str(h["criterion"])) for h in s.hints],
    }


def markdown(s: Session, title: str) -> str:
    r = report_rows(s, title)
    out = [f"# Exercise report: {r['title']}", ""]
    out += [f"- **{k}**: {v}" for k, v in r["facts"]]
    out += ["", "## Criteria (last check)", ""]
    if not r["criteria"]:
        out.append("No check was run.")
    out += [f"- [{'x' if ok else ' '}] {text}: {details}" for text, ok, details in r["criteria"]]
    out += ["", "## Hints used", ""]
    out += [f"- {t}: {c}" for t, c in r["hints"]] or ["None."]
    return "\n".join(out) + "\n"


def html_page(s: Session, title: str) -> str:
    r = report_rows(s, title)
    e = html.escape
    facts = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in r["facts"])
    crit = "".join(f"<li class=\"{'ok' if ok else 'fail'}\">{'&#10003;' if ok else '&#10007;'} "
                   f"{e(text)}: {e(details)}</li>" for text, ok, details in r["criteria"]) \
        or "<li>No check was run.</li>"
    hints = "".join(f"<li>{e(t)}: {e(c)}</li>" for t, c in r["hints"]) or "<li>None.</li>"
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>Exercise report: {e(r['title'])}</title>"
            "<style>body{font-family:sans-serif;max-width:50em;margin:2em auto}"
            "th{text-align:left;padding-right:1em}.ok{color:#070}.fail{color:#a00}</style></head><body>"
            f"<h1>Exercise report: {e(r['title'])}</h1><table>{facts}</table>"
            f"<h2>Criteria (last check)</h2><ul>{crit}</ul><h2>Hints used</h2><ul>{hints}</ul>"
            "</body></html>\n")


def write_report(s: Session, title: str, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(s.started))
    md = out_dir / f"exercise-{s.exercise}-{stamp}.md"
    page = out_dir / f"exercise-{s.exercise}-{stamp}.html"
    md.write_text(markdown(s, title))
    page.write_text(html_page(s, title))
    return md, page
