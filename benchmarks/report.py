"""One way for a benchmark to keep what it measured: ``results.md`` and ``results.json`` written after every phase
(``report``) and once more at the end, whatever ended it (an error, SIGTERM), so a failure keeps the figures."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def reported(out: Path, state: dict[str, Any], markdown: Callable[[dict[str, Any]], str],
             measure: Callable[[Callable[[], None]], None], finish: Callable[[], None] = lambda: None) -> None:
    """Run ``measure(report)``; an error is recorded in the results (``state["error"]``) and raised again.
    ``finish`` adds to ``state`` before the last write (the code version after the run, say)."""

    def report() -> None:
        state["markdown"] = markdown(state)
        (out / "results.md").write_text(state["markdown"])
        (out / "results.json").write_text(json.dumps({k: v for k, v in state.items() if k != "markdown"}, indent=1,
                                                     default=str))

    signal.signal(signal.SIGTERM, _terminate)
    try:
        measure(report)
    except BaseException as exc:
        state["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        finish()
        report()
        print()
        print(state["markdown"])
        print(f"results in {out}")
