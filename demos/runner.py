"""Runs the scripted demos: step by step for the console, or headless (`syncwall demo NAME --headless`)."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from demos.scenarios import SCENARIOS, DemoContext, DemoError, Link, Scenario, Step
from netns.control import ControlClient, ControlError
from netns.record import RUN_ROOT
from netns.recorder import save_recording
from syncwall_errors import SyncwallError

log = logging.getLogger(__name__)

UP_TIMEOUT_S = 90.0
DOWN_TIMEOUT_S = 60.0

# Opens the console on a lab's control socket with a demo's panel; returns what the operator
# chose on leaving ("stop" asks to take the lab down). The app passes it in: demos never import app.
OpenConsole = Callable[[Path, str], str]


def list_demos() -> list[tuple[str, str]]:
    """(name, title) of every demo, in the order a lesson would take them."""
    return [(s.name, s.title) for s in SCENARIOS.values()]


def scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise DemoError(f"no demo {name!r}; demos are {', '.join(SCENARIOS)}") from None


@dataclass(slots=True)
class ExpectationResult:
    text: str
    ok: bool
    details: str


@dataclass(slots=True)
class StepResult:
    caption: str
    ok: bool
    details: str
    duration_s: float
    expectations: list[ExpectationResult] = field(default_factory=list)
    skipped: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DemoRun:
    """One run of a demo against a lab reached through `link` (anything with `request(msg)`).

    The console drives it with `run_next()` (one step per call); `run_all()` plays it through.
    A step blocks for seconds (it waits on real traffic): call it from a worker thread.
    A step whose action fails ends the run: the steps after it are reported as skipped.
    On a lab the demo did not start, call `restore()` at the end.
    """

    def __init__(self, name: str, link: Link | None, lab: str = "") -> None:
        self.scenario = scenario(name)
        if self.scenario.needs_lab and link is None:
            raise DemoError(f"demo {name!r} needs a running lab")
        # What to put back when the demo ran on somebody else's lab (see restore()).
        self.policy_before: dict[str, Any] = {}
        if self.scenario.needs_lab and link is not None:
            st = link.request({"cmd": "status"})
            if not st.get("ok"):
                raise DemoError(f"the lab does not answer: {st.get('error', 'no reason given')}")
            lab = lab or str(st.get("lab", ""))
            self.policy_before = {"policy": st.get("policy"), "interval_ms": st.get("interval_ms")}
        self.ctx = DemoContext(link, lab)
        self.results: list[StepResult] = []
        self.started = time.monotonic()
        self.aborted = False

    @property
    def name(self) -> str:
        return self.scenario.name

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.scenario.steps

    @property
    def index(self) -> int:
        """The step `run_next` will run."""
        return len(self.results)

    @property
    def done(self) -> bool:
        return self.aborted or self.index >= len(self.steps)

    @property
    def ok(self) -> bool:
        return self.done and len(self.results) == len(self.steps) and all(r.ok for r in self.results)

    @property
    def figures(self) -> dict[str, Any]:
        return self.ctx.figures

    def run_next(self) -> StepResult:
        if self.done:
            raise DemoError(f"demo {self.name!r} has no more steps")
        step = self.steps[self.index]
        t0 = time.monotonic()
        try:
            seen = step.action(self.ctx)
        except (DemoError, ControlError, subprocess.TimeoutExpired, OSError,
                KeyError, TypeError, ValueError) as e:
            # KeyError/TypeError/ValueError: a reply without the fields the step reads (a lab
            # from another version?): the run ends with that said, and the lab still goes down.
            log.info("demo %s: step %r failed: %r", self.name, step.caption, e)
            why = str(e) if isinstance(e, (DemoError, OSError)) else f"{type(e).__name__}: {e}"
            res = StepResult(step.caption, False, f"the step could not finish: {why}",
                             round(time.monotonic() - t0, 2))
            self.results.append(res)
            self.aborted = True
            for later in self.steps[self.index:]:
                self.results.append(StepResult(later.caption, False, "skipped: an earlier step failed", 0.0,
                                               skipped=True))
            return res
        checks = []
        for exp in step.expect:
            try:
                c = exp.check(self.ctx)
                checks.append(ExpectationResult(exp.text, c.ok, c.details))
            except (DemoError, ControlError, KeyError, TypeError, ValueError) as e:
                checks.append(ExpectationResult(exp.text, False, f"could not check: {e!r}"))
        res = StepResult(step.caption, all(c.ok for c in checks), seen, round(time.monotonic() - t0, 2),
                         checks)
        self.results.append(res)
        return res

    def run_all(self, on_step: Callable[[int, Step], None] | None = None,
                on_result: Callable[[StepResult], None] | None = None) -> bool:
        while not self.done:
            if on_step is not None:
                on_step(self.index, self.steps[self.index])
            res = self.run_next()
            if on_result is not None:
                on_result(res)
        return self.ok

    def restore(self) -> None:
        """Leave a lab the demo did not start as it was: stop the demo's traffic, put the sync
        policy back. Nodes the demo killed were revived by the demo itself."""
        if self.ctx.link is None:
            return
        for name in self.ctx.mem.get("workloads", []):
            with contextlib.suppress(Exception):
                self.ctx.link.request({"cmd": "traffic", "action": "stop", "name": name})
        if self.policy_before.get("policy"):
            with contextlib.suppress(Exception):
                self.ctx.link.request({"cmd": "policy", **self.policy_before})

    def report(self) -> dict[str, Any]:
        return {
            "demo": self.name,
            "title": self.scenario.title,
            "lab": self.ctx.lab or None,
            "ok": self.ok,
            "steps": [r.as_dict() for r in self.results],
            "headline": str(self.figures.get("headline", "")),
            "figures": self.figures,
            "spurious_failures": sorted(set(self.ctx.mem.get("spurious", []))),
            "duration_s": round(time.monotonic() - self.started, 2),
        }


# ---- a lab of the demo's own ------------------------------------------------------------------
def _cli(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True,
                          timeout=timeout_s, check=False)


@contextlib.contextmanager
def own_lab(name: str, settings: str = "") -> Iterator[str]:
    """Start lab `name` (the default lab under another name, plus `settings`: TOML lines) and
    always take it down again."""
    from netns.lab import daemon_pid

    if daemon_pid(name):
        raise DemoError(f"lab {name!r} already runs (another demo run?); stop it with "
                        f"`syncwall down --lab {name}` and try again")
    tmp = Path(tempfile.mkdtemp(prefix="syncwall-demo-"))
    lab_file = tmp / f"{name}.toml"
    lab_file.write_text(f'name = "{name}"\n' + settings)
    started = False
    try:
        started = True  # from here on a Ctrl-C may leave a half-built lab: always take it down
        p = _cli("up", str(lab_file), "--json", timeout_s=UP_TIMEOUT_S)
        if p.returncode != 0:
            raise DemoError(f"could not start lab {name!r}: {p.stderr.strip() or p.stdout.strip()}")
        yield name
    finally:
        if started:
            _take_down(name)
        shutil.rmtree(tmp, ignore_errors=True)


def _take_down(name: str) -> None:
    # Ctrl-C during the teardown would leave namespaces behind: finish it first.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    from netns.lab import daemon_pid

    try:
        p = _cli("down", "--lab", name, "--json", timeout_s=DOWN_TIMEOUT_S)
        if p.returncode != 0 and daemon_pid(name):
            # Interrupted while the lab was still being built: let the daemon finish, then stop it.
            deadline = time.monotonic() + UP_TIMEOUT_S
            while daemon_pid(name) and time.monotonic() < deadline and not any(
                    (RUN_ROOT / name / f).exists() for f in ("ready", "failed")):
                time.sleep(0.1)
            p = _cli("down", "--lab", name, "--json", timeout_s=DOWN_TIMEOUT_S)
        if p.returncode != 0:
            log.warning("down %s: %s", name, p.stderr.strip())
        if (RUN_ROOT / name / "record.json").exists():
            _cli("clean", "--lab", name, "--force", timeout_s=DOWN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _cli("clean", "--lab", name, "--force", timeout_s=DOWN_TIMEOUT_S)
    finally:
        signal.signal(signal.SIGINT, old)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# ---- `syncwall demo NAME` ------------------------------------------------------------------------
def _save_recording(lab: str, target: Path, say: Callable[[str], None]) -> None:
    """`demo --record FILE`: the lab's recording of the demo, also of a failed one."""
    try:
        doc = save_recording(RUN_ROOT / lab, target)
    except (SyncwallError, OSError) as e:
        say(f"could not save the recording to {target}: {e}")
        return
    say(f"recording of the demo saved to {target} ({doc['duration_s']:.0f} s, "
        f"{doc['bytes'] / 1e6:.1f} MB): `syncwall replay {target}` plays it, no root needed")


def run_demo(name: str, headless: bool, as_json: bool, lab: str | None,
             open_console: OpenConsole | None = None, record: Path | None = None) -> int:
    """Run a demo end to end; exit status 0 only if every expectation held.

    Without `lab` the demo starts a lab of its own and tears it down at the end, also on
    failure and Ctrl-C. Captions go to stdout, or to stderr with --json (stdout then holds
    one JSON object). Not headless on a terminal, given `open_console`: the console opens on
    the demo's panel (a demo that needs no lab, and no --lab given: Enter advances each step
    in the terminal).
    """
    out = sys.stderr if as_json else sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    try:
        sc = scenario(name)
    except DemoError as e:
        if as_json:
            print(json.dumps({"demo": name, "ok": False, "error": str(e)}))
        print(f"syncwall: {e}", file=sys.stderr)
        return 1
    if open_console is not None and not headless and not as_json and sys.stdout.isatty() \
            and sys.stdin.isatty() and (sc.needs_lab or lab):
        return _run_in_console(name, sc, lab, open_console, record)
    interactive = [not headless and sys.stdin.isatty() and not as_json]
    old_term = signal.signal(signal.SIGTERM, _sigterm)
    run: DemoRun | None = None
    error = ""
    try:
        say(f"== {sc.title} ==")
        with contextlib.ExitStack() as stack:
            client: ControlClient | None = None
            lab_name = ""
            if sc.needs_lab:
                if lab:
                    lab_name = lab
                else:
                    say(f"starting lab {sc.lab_name!r} for this demo ...")
                    lab_name = stack.enter_context(own_lab(sc.lab_name, sc.lab_settings))
                if record is not None:  # before the demo's own lab goes down (LIFO)
                    stack.callback(_save_recording, lab_name, record, say)
                client = ControlClient(RUN_ROOT / lab_name / "control.sock", timeout_s=15.0)
                stack.callback(client.close)
            run = DemoRun(name, client, lab_name)

            def before(i: int, step: Step) -> None:
                say(f"\n[{i + 1}/{len(sc.steps)}] {step.caption}")
                if interactive[0]:
                    try:
                        input("   (Enter to run this step) ")
                    except EOFError:  # input closed: play the rest through
                        interactive[0] = False

            def after(res: StepResult) -> None:
                if res.skipped:
                    return
                for line in res.details.splitlines():
                    say(f"   {line}")
                for c in res.expectations:
                    say(f"   {'ok  ' if c.ok else 'FAIL'} {c.text}: {c.details}")
                if not res.expectations and not res.ok:
                    say("   FAIL")

            if lab:
                stack.callback(run.restore)
            run.run_all(before, after)
            say("\n" + ("every expectation held" if run.ok else "SOME EXPECTATIONS FAILED")
                + (f" ({run.figures['headline']})" if run.figures.get("headline") else ""))
    except KeyboardInterrupt:
        error = "interrupted"
        say("\ninterrupted: the demo's lab was taken down")
    except (DemoError, ControlError, OSError, subprocess.TimeoutExpired) as e:
        error = str(e)
        print(f"syncwall: {e}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, old_term)
    ok = run is not None and run.ok and not error
    if as_json:
        report: dict[str, Any] = {"demo": name, "steps": [], "figures": {}}
        if run is not None:
            report = run.report()
        report["ok"] = ok
        if error:
            report["error"] = error
        print(json.dumps(report, default=str))
    return 0 if ok else (130 if error == "interrupted" else 1)


def _run_in_console(name: str, sc: Scenario, lab: str | None, open_console: OpenConsole,
                    record: Path | None = None) -> int:
    """`syncwall demo NAME` on a terminal: the console, opened on the demo's panel.

    The lab is started and always taken down as on the headless path; on a lab given with
    `--lab` the console puts it back when the demo closes, and stops it only if asked to.
    """
    old_term = signal.signal(signal.SIGTERM, _sigterm)
    try:
        with contextlib.ExitStack() as stack:
            if lab:
                lab_name = lab
            else:
                print(f"starting lab {sc.lab_name!r} for demo {name} ...", flush=True)
                lab_name = stack.enter_context(own_lab(sc.lab_name, sc.lab_settings))
            if record is not None:
                stack.callback(_save_recording, lab_name, record, print)
            choice = open_console(RUN_ROOT / lab_name / "control.sock", name)
            if lab and choice == "stop":
                _take_down(lab)
            elif not lab:
                print(f"taking lab {lab_name!r} down ...", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: the demo's lab was taken down", file=sys.stderr)
        return 130
    except (DemoError, ControlError, OSError, subprocess.TimeoutExpired) as e:
        print(f"syncwall: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, old_term)
    return 0
