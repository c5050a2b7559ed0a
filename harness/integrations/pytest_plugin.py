"""pytest plugin: behavior YAML files under an ``evals/`` directory become test items.

``pytest evals/`` collects each behavior file as one test item per method named in its
``expect:`` section (``expect.methods``, default every method but ``random``). An item
passes when the method meets the behavior's thresholds and its stored baseline (see
:mod:`harness.evaluation.expectations`). The sweep behind a behavior runs once, through
:func:`harness.evaluation.pipeline.run`, into ``--steer-out/<behavior>/`` with its full report.

Parallel runs: ``pytest evals/ -n auto`` loads the model once per worker (on a machine
with several GPUs and ``--steer-device cuda``, worker ``gwN`` takes GPU ``N mod count``).
Items of one behavior share an xdist group; with any distribution mode a file lock per
behavior makes a second worker wait and read the first one's cached cells instead of
computing the same vectors again.

Collection reads each behavior file without running code it names (a ``python`` scorer's
module is found and read, not imported); the import happens when the item runs. Nothing is
written outside ``--steer-out``: a behavior's name is a plain file name, and its run
directory is checked to resolve inside ``--steer-out``.

Fixtures for ``test_*.py`` files: ``steer_model`` (the loaded model), ``steer_behavior``
(load a behavior file) and ``steer_run`` (sweep a behavior file, cached per worker;
returns a :class:`harness.evaluation.pipeline.RunResult` with ``.results``, ``.sweeps`` and
``.run_dir``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.errors import PowersteerError
from harness.files import atomic_write_json

BASELINE_FILE = "baseline.json"
PARTS_DIR = ".baseline-parts"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("powersteer", "steering evals (powersteer)")
    group.addoption(
        "--steer-model",
        default="organism",
        help="model for behavior evals: catalogue name, hub id or path (default organism)",
    )
    group.addoption("--steer-device", default="cpu", help="cpu or cuda (default cpu)")
    group.addoption(
        "--steer-executor",
        default="local",
        metavar="local|ray[:ADDRESS]",
        help="where the sweeps' cell batches run (default local; ray: 2 Ray actors)",
    )
    group.addoption(
        "--steer-out",
        default="reports/evals",
        help="where each behavior's run directory and report go (default reports/evals)",
    )
    group.addoption(
        "--steer-baseline",
        default=None,
        metavar="FILE",
        help="baseline file (default: baseline.json beside each behavior file)",
    )
    group.addoption(
        "--steer-update-baseline",
        action="store_true",
        help="write the measured values as the new baseline",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "steering: a behavior eval collected by powersteer")
    config.stash[_STATE] = _State(config)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix in (".yaml", ".yml") and "evals" in file_path.parts:
        return BehaviorFile.from_parent(parent, path=file_path)
    return None


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On the controller (or a plain run): merge the baseline parts workers wrote."""
    config = session.config
    if hasattr(config, "workerinput") or not config.getoption("steer_update_baseline"):
        return
    from harness.evaluation.expectations import write_baseline

    state = config.stash[_STATE]
    by_file: dict[str, dict[str, dict[str, Any]]] = {}
    parts = sorted(state.parts_dir.glob("*.json")) if state.parts_dir.is_dir() else []
    for part in parts:
        if part.stat().st_mtime < state.started - 1:
            continue  # left over from an earlier session
        entry = json.loads(part.read_text())
        by_file.setdefault(entry["baseline"], {}).setdefault(entry["behavior"], {})[
            entry["method"]
        ] = entry["value"]
        part.unlink()
    for file, entries in by_file.items():
        path = write_baseline(file, entries)
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"powersteer: wrote baseline {path}")


class _State:
    """Per process (controller or xdist worker): the model and the finished sweeps."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.started = time.time()
        self.out = Path(config.getoption("steer_out"))
        self.parts_dir = self.out / PARTS_DIR
        self._model: Any = None
        self._runs: dict[Path, Any] = {}

    @property
    def model(self) -> Any:
        if self._model is None:
            from harness.engine.models import load_model

            self._model = load_model(self.config.getoption("steer_model"), device=self.device())
        return self._model

    def executor(self) -> Any:
        """None (local) or the Ray executor ``--steer-executor`` names, made once."""
        spec = self.config.getoption("steer_executor")
        if spec == "local":
            return None
        if getattr(self, "_executor", None) is None:
            from harness.evaluation.executors import ModelSpec
            from harness.integrations.ray_executor import make_executor

            model = ModelSpec(self.config.getoption("steer_model"), device=self.device())
            self._executor = make_executor(spec, model=model)
        return self._executor

    def device(self) -> str:
        device = self.config.getoption("steer_device")
        worker = getattr(self.config, "workerinput", {}).get("workerid", "")
        if device == "cuda" and worker.startswith("gw"):
            import torch

            device = f"cuda:{int(worker[2:]) % max(torch.cuda.device_count(), 1)}"
        return device

    def run(self, behavior_file: Path) -> Any:
        """The finished sweep of ``behavior_file`` (computed once, under a file lock)."""
        behavior_file = behavior_file.resolve()
        if behavior_file not in self._runs:
            from filelock import FileLock

            from harness.evaluation.behaviors import load_behavior
            from harness.evaluation.pipeline import run

            behavior = load_behavior(behavior_file)
            run_dir = behavior_run_dir(self.out, behavior.name)
            run_dir.mkdir(parents=True, exist_ok=True)
            with FileLock(str(run_dir / ".lock")):
                self._runs[behavior_file] = run(
                    [behavior],
                    model=self.model,
                    out=run_dir,
                    progress=False,
                    executor=self.executor(),
                )
        return self._runs[behavior_file]


_STATE = pytest.StashKey[_State]()


def behavior_run_dir(out: Path, name: str) -> Path:
    """``out/name``, verified to lie inside ``out``: the plugin writes nowhere else.

    The behavior schema already allows only plain file names; this refuses anything that
    still resolves elsewhere (``..``, a separator, a symlink out of ``out``).
    """
    root = out.resolve()
    run_dir = (root / name).resolve()
    if run_dir.parent != root:
        raise PowersteerError(
            f"behavior name {name!r} would put its run directory at {run_dir}, outside "
            f"--steer-out {root}; give the behavior a plain file name such as my_behavior"
        )
    return run_dir


class BehaviorFile(pytest.File):
    """A behavior YAML file: one item per method held to its ``expect:``."""

    def collect(self) -> Iterator[pytest.Item]:
        # Imported here: the behaviors import torch, which a session without evals skips.
        # load_behavior runs no user code, so collecting never imports a python scorer.
        from harness.evaluation.behaviors import load_behavior

        try:
            behavior = load_behavior(self.path)
        except PowersteerError as error:
            raise self.CollectError(str(error)) from None
        for method in behavior.expected_methods:
            item = SteeringItem.from_parent(self, name=method, behavior=behavior, method=method)
            item.add_marker(pytest.mark.steering)
            item.add_marker(pytest.mark.xdist_group(behavior.name))
            yield item


class SteeringFailure(Exception):
    """A behavior eval missed an expectation; the message says what and where."""


class SteeringItem(pytest.Item):
    def __init__(self, *, behavior: Any, method: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.behavior, self.method = behavior, method

    def runtest(self) -> None:
        from harness.evaluation.expectations import (
            baseline_check,
            expectation_checks,
            headline,
            read_baseline,
        )

        state = self.config.stash[_STATE]
        result = state.run(self.path)
        checks = expectation_checks(result.results, self.behavior, self.method)
        current = headline(result.results, self.behavior.name, self.method)
        baseline_path = self._baseline_path()
        stored = read_baseline(baseline_path).get(self.behavior.name, {}).get(self.method)
        if self.config.getoption("steer_update_baseline"):
            self._write_part(baseline_path, current)
        elif stored is not None:
            checks.append(baseline_check(current, stored))
        report = result.run_dir / "report.md"
        self.user_properties.append(
            (
                "steering",
                {
                    "behavior": self.behavior.name,
                    "method": self.method,
                    **current,
                    "checks": [c.__dict__ for c in checks],
                    "report": str(report),
                },
            )
        )
        failed = [c for c in checks if not c.passed]
        if failed:
            lines = [
                f"{self.behavior.name} / {self.method}: "
                f"{len(failed)} of {len(checks)} expectations missed"
            ]
            lines += [c.line() for c in checks]
            lines.append(f"report: {report}")
            raise SteeringFailure("\n".join(lines))

    def _baseline_path(self) -> Path:
        option = self.config.getoption("steer_baseline")
        return Path(option) if option else self.path.parent / BASELINE_FILE

    def _write_part(self, baseline_path: Path, current: dict[str, Any]) -> None:
        parts = self.config.stash[_STATE].parts_dir
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            parts / f"{self.behavior.name}__{self.method}.json",
            {
                "baseline": str(baseline_path.resolve()),
                "behavior": self.behavior.name,
                "method": self.method,
                "value": current,
            },
        )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:
        if isinstance(excinfo.value, SteeringFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.behavior.name}::{self.method}"


@pytest.fixture(scope="session")
def steer_model(pytestconfig: pytest.Config) -> Any:
    """The model named by ``--steer-model`` (one load per worker)."""
    return pytestconfig.stash[_STATE].model


@pytest.fixture(scope="session")
def steer_behavior() -> Callable[[str | os.PathLike[str]], Any]:
    """``steer_behavior(path)`` loads and validates a behavior file."""
    from harness.evaluation.behaviors import load_behavior

    return load_behavior


@pytest.fixture(scope="session")
def steer_run(pytestconfig: pytest.Config) -> Callable[[str | os.PathLike[str]], Any]:
    """``steer_run(path)`` sweeps a behavior file once per worker and returns the
    :class:`harness.evaluation.pipeline.RunResult` (``.results``, ``.sweeps[0].vectors``, ...)."""
    state = pytestconfig.stash[_STATE]
    return lambda path: state.run(Path(path))
