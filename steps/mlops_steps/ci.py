"""Reporting to the CI host: GitHub Actions, Azure Pipelines, or a plain terminal.

Outputs, summaries, annotations, masks and log groups go where the host expects
them. Everything user-controlled that is echoed to the log is neutralised first
so it cannot forge a workflow command (`::set-output`, `##vso[...]`).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Iterator, TextIO

GITHUB = "github"
AZURE = "azure"
TERMINAL = "terminal"


def host() -> str:
    """The CI host this process runs under."""
    if os.environ.get("GITHUB_ACTIONS") == "true":
        return GITHUB
    if os.environ.get("TF_BUILD", "").lower() == "true":
        return AZURE
    return TERMINAL


def format_value(value: Any) -> str:
    """An output value as text: booleans lower-case, containers as JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return "" if value is None else str(value)


def neutralise(text: str) -> str:
    """Make a line of user-controlled text inert for both hosts' command parsers."""
    text = text.replace("##vso[", "#\u200b#vso[").replace("##[", "#\u200b#[")
    lines = text.split("\n")
    return "\n".join("\u200b" + ln if ln.lstrip().startswith("::") else ln for ln in lines)


def _escape_github(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def _escape_azure(text: str) -> str:
    return (
        text.replace("%", "%AZP25").replace("\r", "%0D").replace("\n", "%0A")
        .replace(";", "%3B").replace("]", "%5D")
    )


def _stdout(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def log(message: str, stream: TextIO | None = None) -> None:
    """A human-readable log line (stderr), neutralised."""
    out = stream or sys.stderr
    out.write(neutralise(message) + "\n")
    out.flush()


def set_output(name: str, value: Any) -> None:
    """Publish a step output to the host."""
    text = format_value(value)
    where = host()
    if where == GITHUB and os.environ.get("GITHUB_OUTPUT"):
        delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
        with open(os.environ["GITHUB_OUTPUT"], "a", encoding="utf-8") as fh:
            fh.write(f"{name}<<{delimiter}\n{text}\n{delimiter}\n")
    elif where == AZURE:
        _stdout(f"##vso[task.setvariable variable={name};isOutput=true]{_escape_azure(text)}")
    else:
        log(f"{name}: {text}")


def mask(secret: str) -> None:
    """Ask the host to redact a secret from all later log output."""
    if not secret:
        return
    where = host()
    if where == GITHUB:
        for line in secret.splitlines():
            _stdout(f"::add-mask::{_escape_github(line)}")
    elif where == AZURE:
        _stdout(f"##vso[task.setvariable variable=mlops_masked_{secrets.token_hex(4)};issecret=true]"
                f"{_escape_azure(secret)}")


def annotate(level: str, message: str, file: str | None = None, line: int | None = None) -> None:
    """An error or warning annotation (level: 'error' | 'warning')."""
    where = host()
    if where == GITHUB:
        props = []
        if file:
            props.append(f"file={_escape_github(file, prop=True)}")
        if line:
            props.append(f"line={line}")
        head = f"::{level} {','.join(props)}::" if props else f"::{level}::"
        _stdout(head + _escape_github(message))
    elif where == AZURE:
        props = f"type={level}"
        if file:
            props += f";sourcepath={_escape_azure(file)}"
        if line:
            props += f";linenumber={line}"
        _stdout(f"##vso[task.logissue {props}]{_escape_azure(message)}")
    else:
        log(f"{level}: {message}")


def error(message: str, file: str | None = None, line: int | None = None) -> None:
    annotate("error", message, file, line)


def warning(message: str, file: str | None = None, line: int | None = None) -> None:
    annotate("warning", message, file, line)


@contextlib.contextmanager
def group(title: str) -> Iterator[None]:
    """Fold the enclosed log lines under a title."""
    where = host()
    title = neutralise(title).replace("\n", " ")
    if where == GITHUB:
        _stdout(f"::group::{title}")
    elif where == AZURE:
        _stdout(f"##[group]{title}")
    else:
        log(f"── {title}")
    try:
        yield
    finally:
        if where == GITHUB:
            _stdout("::endgroup::")
        elif where == AZURE:
            _stdout("##[endgroup]")


def summary(markdown: str, name: str = "mlops-step") -> None:
    """Publish a Markdown summary (GitHub job summary / ADO build summary tab)."""
    if not markdown:
        return
    where = host()
    if where == GITHUB and os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as fh:
            fh.write(markdown.rstrip() + "\n\n")
    elif where == AZURE:
        folder = Path(os.environ.get("AGENT_TEMPDIRECTORY") or os.environ.get("RUNNER_TEMP") or ".")
        path = folder / f"{name}-summary-{secrets.token_hex(4)}.md"
        path.write_text(markdown, encoding="utf-8")
        _stdout(f"##vso[task.uploadsummary]{_escape_azure(str(path.resolve()))}")
    else:
        log(markdown.rstrip())


class Progress:
    """Progress display for long work: a live line in a terminal, periodic lines in CI logs."""

    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None):
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stderr
        self.live = host() == TERMINAL and self.stream.isatty()
        self._last = 0.0

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.monotonic()
        final = self.total is not None and self.done >= self.total
        if not final and now - self._last < (0.2 if self.live else 5.0):
            return
        self._last = now
        of = f"/{self.total}" if self.total is not None else ""
        pct = f" ({100 * self.done // self.total}%)" if self.total else ""
        text = f"{self.label}: {self.done}{of}{pct} {note}".rstrip()
        if self.live:
            self.stream.write("\r" + neutralise(text) + ("\n" if final else ""))
            self.stream.flush()
        else:
            log(text, self.stream)


def markdown_table(rows: list[dict[str, Any]], title: str = "") -> str:
    """Rows of dicts as a Markdown table (columns from the first row), with an optional heading."""
    if not rows:
        return f"### {title}\n\n(none)" if title else "(none)"
    cols = list(rows[0])
    cell = lambda v: format_value(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
