"""What the self-test did, as data (cases, steps, timings, messages exchanged) and as the JSON and HTML files an
organisation attaches to its deployment report. Every value is the synthetic study's: test identities only."""

from __future__ import annotations

import enum
import html
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson


class Verdict(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    NOT_RUN = "not run"


class StepFailed(Exception):
    """What the gateway did differently from what the case expects, in words an integration engineer reads."""


@dataclass
class Message:
    protocol: str
    direction: str
    """``sent`` by the self-test or ``received`` from the gateway (or the registry)."""
    summary: str
    at: float = field(default_factory=time.time)
    fields: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"at": _iso(self.at), "protocol": self.protocol, "direction": self.direction,
                "summary": self.summary, **({"fields": self.fields} if self.fields else {})}


@dataclass
class Step:
    name: str
    started: float = field(default_factory=time.time)
    seconds: float = 0.0
    verdict: Verdict = Verdict.PASSED
    detail: str = ""
    messages: list[Message] = field(default_factory=list)

    def sent(self, protocol: str, summary: str, **fields: Any) -> None:
        self.messages.append(Message(protocol, "sent", summary, fields=fields))

    def received(self, protocol: str, summary: str, **fields: Any) -> None:
        self.messages.append(Message(protocol, "received", summary, fields=fields))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "verdict": self.verdict.value, "started_at": _iso(self.started),
                "seconds": round(self.seconds, 3), "detail": self.detail,
                "messages": [message.to_dict() for message in self.messages]}


@dataclass
class Case:
    """One case of the national deployment test: its steps run in order and the first failure ends it."""

    id: str
    title: str
    group: str
    """archiving, reading or correction."""
    steps: list[Step] = field(default_factory=list)
    verdict: Verdict = Verdict.PASSED
    reason: str = ""

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        step = Step(name)
        self.steps.append(step)
        began = time.monotonic()
        try:
            yield step
        except StepFailed as exc:
            step.verdict, step.detail = Verdict.FAILED, str(exc)
            raise
        except Exception as exc:  # a peer that did not answer as a DICOM, HTTP or HL7 peer should
            step.verdict, step.detail = Verdict.FAILED, f"{type(exc).__name__}: {exc}"
            raise StepFailed(step.detail) from exc
        finally:
            step.seconds = time.monotonic() - began

    def not_run(self, reason: str) -> None:
        self.verdict, self.reason = Verdict.NOT_RUN, reason

    @property
    def seconds(self) -> float:
        return sum(step.seconds for step in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "group": self.group, "verdict": self.verdict.value,
                "reason": self.reason, "seconds": round(self.seconds, 3),
                "steps": [step.to_dict() for step in self.steps]}


@dataclass
class Report:
    target: dict[str, Any]
    cases: list[Case] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    finished: float = 0.0

    @property
    def passed(self) -> bool:
        """Every case that ran passed, and the archiving cases all ran."""
        return all(case.verdict is not Verdict.FAILED for case in self.cases) and all(
            case.verdict is Verdict.PASSED for case in self.cases if case.group == "archiving" and case.id in
            REQUIRED)

    def to_dict(self) -> dict[str, Any]:
        counts = {verdict.value: sum(case.verdict is verdict for case in self.cases) for verdict in Verdict}
        return {"report": "dicom-gateway national deployment self-test", "result": "passed" if self.passed
                else "failed", "started_at": _iso(self.started), "finished_at": _iso(self.finished),
                "seconds": round(self.finished - self.started, 3), "cases_by_verdict": counts,
                "target": self.target, "cases": [case.to_dict() for case in self.cases]}

    def write(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        json_path, html_path = directory / "selftest-report.json", directory / "selftest-report.html"
        json_path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        html_path.write_text(render_html(data), encoding="utf-8")
        return json_path, html_path


REQUIRED = ("echo", "store", "commitment")
"""Archiving cases a deployment cannot pass without: connecting, C-STORE, storage commitment."""


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
.passed{color:#176f2c}.failed{color:#b00020;font-weight:bold}.not-run{color:#777}
details{margin:.25em 0 .75em}code{font-size:12px;white-space:pre-wrap}h2{margin-top:1.5em}"""


def render_html(data: dict[str, Any]) -> str:
    """One self-contained page (no script, no outside resource): the summary, then each case with its steps and
    the messages each step exchanged."""
    e = html.escape
    out = ["<!doctype html><html lang=en><head><meta charset=utf-8>",
           "<title>dicom-gateway self-test report</title>", f"<style>{_STYLE}</style></head><body>",
           "<h1>dicom-gateway national deployment self-test</h1>",
           f"<p>Result: <span class={_css(data['result'])}>{e(data['result'])}</span>, "
           f"{e(data['started_at'])} to {e(data['finished_at'])} ({data['seconds']} s)</p>",
           "<h2>Target</h2><table>"]
    out += [f"<tr><th>{e(str(key))}</th><td>{e(_text(value))}</td></tr>" for key, value in data["target"].items()]
    out.append("</table><h2>Cases</h2><table><tr><th>case</th><th>group</th><th>verdict</th><th>seconds</th>"
               "<th>reason</th></tr>")
    out += [f"<tr><td><a href='#{e(case['id'])}'>{e(case['title'])}</a></td><td>{e(case['group'])}</td>"
            f"<td class={_css(case['verdict'])}>{e(case['verdict'])}</td><td>{case['seconds']}</td>"
            f"<td>{e(case['reason'])}</td></tr>" for case in data["cases"]]
    out.append("</table>")
    for case in data["cases"]:
        out.append(f"<h2 id='{e(case['id'])}'>{e(case['title'])} <span class={_css(case['verdict'])}>"
                   f"({e(case['verdict'])})</span></h2>")
        if case["reason"]:
            out.append(f"<p>{e(case['reason'])}</p>")
        if not case["steps"]:
            continue
        out.append("<table><tr><th>step</th><th>verdict</th><th>seconds</th><th>detail and messages</th></tr>")
        for step in case["steps"]:
            messages = "".join(
                f"<tr><td>{e(m['at'][11:23])}</td><td>{e(m['protocol'])}</td><td>{e(m['direction'])}</td>"
                f"<td>{e(m['summary'])}{_fields(m.get('fields'))}</td></tr>" for m in step["messages"])
            exchanged = (f"<details><summary>{len(step['messages'])} messages</summary><table>{messages}</table>"
                         "</details>") if step["messages"] else ""
            out.append(f"<tr><td>{e(step['name'])}</td><td class={_css(step['verdict'])}>{e(step['verdict'])}</td>"
                       f"<td>{step['seconds']}</td><td>{e(step['detail'])}{exchanged}</td></tr>")
        out.append("</table>")
    out.append("</body></html>\n")
    return "\n".join(out)


def _css(verdict: str) -> str:
    return verdict.replace(" ", "-")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _fields(fields: dict[str, Any] | None) -> str:
    if not fields:
        return ""
    return f"<br><code>{html.escape(orjson.dumps(fields, option=orjson.OPT_INDENT_2).decode())}</code>"
