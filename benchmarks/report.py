"""One way for a benchmark to keep what it measured: ``results.md`` and ``results.json`` written after every phase
(``report``) and once more at the end, whatever ended it (an error, SIGTERM), so a failure keeps the figures."""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks import services

ROOT = Path(__file__).resolve().parent.parent


def add_run_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The options every service-backed benchmark takes: where the services' state is and whether to keep them,
    the gateways' log level, where results and work files go."""
    parser.add_argument("--services-state", type=Path,
                        default=Path(os.environ.get("GATEWAY_SERVICES_STATE") or services.DEFAULT_STATE),
                        help="scripts/services state dir (default $GATEWAY_SERVICES_STATE, else "
                             f"{services.DEFAULT_STATE}); services it starts there are stopped afterwards only in "
                             f"{services.DEFAULT_STATE}, a shared set keeps them")
    parser.add_argument("--keep-services", action="store_true", help="leave services this run started running")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING"], default="WARNING",
                        help="the gateways' log level (their logs are in the work dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dicom-gateway-bench" / name)


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
