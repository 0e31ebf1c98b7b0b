"""Run the ``openai`` and ``anthropic`` SDKs' own offline test suites twice, plain and with agentguard
instrumented in shadow mode, and report every test whose outcome differs.

    python tests/sdk_suites/run.py [openai] [anthropic] [--timeout SECONDS] [--no-install] [-- PYTEST ARGS]

For each SDK: the installed version's source distribution is downloaded (``pip download --no-binary
:all: --no-deps``) into ``$TEST_TOOLS_DIR/sdk-suites`` (default ``<repo>/.cache``) and extracted; the
packages its tests need are installed into the running interpreter's environment, every package
already installed held at its version (a constraints file), so neither the SDK nor OpenTelemetry nor
anything else installed moves; then its suite runs from its own source tree, with its own pytest
configuration, once plain and once with ``-p shadow_plugin``. Both runs load ``-p offline_plugin``,
which deselects the tests that need the SDK's mock API server: a probe run (kept in the cache, keyed
by the SDK's tests, the installed packages and the plugin) finds them by their first connect to it.
Tests whose outcome differs are run again, alone, plain and shadow: a difference that does not
come back is reported as flaky and does not fail the run.

Each pytest run is bounded by ``--timeout`` (its process group is ended), uses ``-p no:cacheprovider
-q`` and, where the SDK's own addopts use xdist, ``-n 2``; its duration is printed. Results, logs
and junit XML are kept in ``$TEST_TOOLS_DIR/sdk-suites/results/<sdk>-<version>/``.

Exit status: 0 when every test has the same outcome in both runs, 1 when some differ, 2 when a run
could not be made (no tests in the sdist, a download or install failure, a timeout, pytest's own error).
"""

from __future__ import annotations

import argparse
import ast
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SDKS = ("openai", "anthropic")
MOCK_SERVER_TESTS = "mock-server-tests.txt"  # what the probe found: deselected in both compared runs
DEFAULT_TIMEOUT = 1800  # seconds per pytest run
XDIST_WORKERS = 2  # the machine has 2 cores, shared with other test runs
# The environment both runs start from lacks what would change what the SDKs or the guard do.
DROPPED_ENV_PREFIXES = ("AGENTGUARD_", "OTEL_", "OPENAI_", "ANTHROPIC_", "AWS_", "PYTEST_", "SDK_SUITES_")
DROPPED_ENV = ("TEST_API_BASE_URL", "PYTHONPATH")
# import name of a distribution, where it is not the distribution's name with "_" for "-"
MODULE_OF = {"pillow": "PIL", "pytest-xdist": "xdist", "google-auth": "google", "pyyaml": "yaml"}


def log(message: str) -> None:
    print(message, flush=True)


class Stop(Exception):
    """A run cannot be made: say why and exit 2."""


# -- source distribution ------------------------------------------------------------------------

def cache_dir() -> Path:
    base = Path(os.environ.get("TEST_TOOLS_DIR") or REPO / ".cache")
    return base / "sdk-suites"


def fetch_sdist(name: str, version: str, cache: Path) -> Path:
    dist = cache / "dist"
    dist.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{version}"
    found = sorted(p for p in dist.glob(f"{stem}.*") if p.name.endswith((".tar.gz", ".zip")))
    if not found:
        log(f"{name} {version}: downloading its source distribution")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
               f"{name}=={version}", "-d", str(dist)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise Stop(f"{name} {version}: `{shlex.join(cmd)}` failed:\n{done.stdout}{done.stderr}")
        found = sorted(p for p in dist.glob(f"{stem}.*") if p.name.endswith((".tar.gz", ".zip")))
        if not found:
            raise Stop(f"{name} {version}: pip download saved no {stem}.tar.gz in {dist}")
    return found[0]


def extract(sdist: Path, cache: Path, name: str, version: str) -> Path:
    """A fresh copy of the sdist's tree (a suite may write into its tree; each invocation starts clean)."""
    target = cache / "src"
    root = target / f"{name}-{version}"
    shutil.rmtree(root, ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    if not sdist.name.endswith(".tar.gz"):
        raise Stop(f"{name} {version}: {sdist.name} is not a .tar.gz sdist")
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
        top = {m.split("/", 1)[0] for m in members}
        if top != {root.name}:
            raise Stop(f"{name} {version}: {sdist.name} does not unpack to one {root.name}/ folder: {sorted(top)}")
        archive.extractall(target, filter="data")
    tests = root / "tests"
    test_files = sorted(tests.rglob("test_*.py")) if tests.is_dir() else []
    if not test_files:
        names = sorted({m.split("/")[1] for m in members if m.count("/") >= 1 and m.split("/")[1]})
        what = "a tests/ folder without any test_*.py file" if tests.is_dir() else "no tests/ folder"
        raise Stop(f"{name} {version}: the source distribution {sdist.name} ({len(members)} members) holds "
                   f"{what}; its top level is: {', '.join(names)}. Its own test suite cannot be run from it.")
    return root


# -- what the suite needs -------------------------------------------------------------------------

# calls whose first argument names a module the test imports or checks for
_IMPORTING_CALLS = ("importorskip", "import_module", "find_spec", "__import__")


def _imports(tree: ast.Module) -> set[str]:
    """Top-level names of the modules a test module imports or looks for, anywhere in it."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in _IMPORTING_CALLS):
            names.add(node.args[0].value.split(".")[0])
    return names


def scan_imports(tests: Path) -> set[str]:
    names: set[str] = set()
    for path in tests.rglob("*.py"):
        try:
            names |= _imports(ast.parse(path.read_bytes(), filename=str(path)))
        except SyntaxError:
            continue
    return names


def pytest_ini(root: Path) -> dict[str, Any]:
    return tomllib.loads((root / "pyproject.toml").read_text()).get("tool", {}).get("pytest", {}).get(
        "ini_options", {})


def addopts(root: Path) -> list[str]:
    value = pytest_ini(root).get("addopts", "")
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def uses_xdist(root: Path) -> bool:
    opts = addopts(root)
    return any(o in ("-n", "--numprocesses", "--dist") or o.startswith(("-n", "--numprocesses=", "--dist="))
               for o in opts)


def locked_versions(root: Path) -> dict[str, str]:
    """Versions the SDK's own lock files name (uv.lock, else requirements-dev.lock)."""
    versions: dict[str, str] = {}
    lock = root / "uv.lock"
    if lock.exists():
        for package in tomllib.loads(lock.read_text()).get("package", []):
            if "name" in package and "version" in package:
                versions.setdefault(canonicalize_name(package["name"]), str(package["version"]))
    dev_lock = root / "requirements-dev.lock"
    if dev_lock.exists():
        for line in dev_lock.read_text().splitlines():
            match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip())
            if match:
                versions.setdefault(canonicalize_name(match.group(1)), match.group(2))
    return versions


def installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class Needs:
    install: list[str] = field(default_factory=list)  # to pip install: at the SDK's locked versions
    declared: list[str] = field(default_factory=list)  # the same, at the SDK's declared ranges
    present: list[str] = field(default_factory=list)  # needed and already installed (kept as they are)
    mismatched: list[str] = field(default_factory=list)  # installed outside the SDK's declared range (kept)
    undeclared: list[str] = field(default_factory=list)  # imported by tests, declared nowhere, not importable


def test_needs(root: Path, sdk: str) -> Needs:
    """The SDK's dev dependencies and extras' dependencies that its tests import, look for
    (``importorskip``, ``find_spec``, ``import_module``) or that its pytest configuration loads."""
    project = tomllib.loads((root / "pyproject.toml").read_text())
    dev = [*project.get("dependency-groups", {}).get("dev", []),
           *project.get("tool", {}).get("rye", {}).get("dev-dependencies", [])]
    extras = [r for group in project.get("project", {}).get("optional-dependencies", {}).values() for r in group]
    every = [r for group in project.get("dependency-groups", {}).values() for r in group if isinstance(r, str)]
    declared_anywhere = {canonicalize_name(Requirement(r).name) for r in [*every, *extras]}
    anywhere = scan_imports(root / "tests")
    if uses_xdist(root):
        anywhere.add("xdist")
    if "asyncio_mode" in pytest_ini(root):
        anywhere.add("pytest_asyncio")
    locks = locked_versions(root)
    env = default_environment()
    needs = Needs()
    chosen: set[str] = set()
    for text in [*dev, *extras]:
        if not isinstance(text, str):
            continue  # an include-group table
        req = Requirement(text)
        key = canonicalize_name(req.name)
        if key in chosen or key == canonicalize_name(sdk):
            continue
        if req.marker is not None and not req.marker.evaluate(dict(env)):
            continue
        module = MODULE_OF.get(key, key.replace("-", "_"))
        if module not in anywhere:
            continue
        chosen.add(key)
        have = installed(req.name)
        if have is not None:
            needs.present.append(f"{req.name}=={have}")
            if not req.specifier.contains(have, prereleases=True):
                needs.mismatched.append(f"{req.name}=={have} (the SDK declares {req})")
            continue
        extra = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        declared = f"{req.name}{extra}{req.specifier}"
        pinned = locks.get(key)
        if pinned is not None and req.specifier.contains(pinned, prereleases=True):
            needs.install.append(f"{req.name}{extra}=={pinned}")
        else:
            needs.install.append(declared)
        needs.declared.append(declared)
    local = {p.stem for p in root.iterdir()}  # the source tree's own folders (tests/, examples/, ...)
    to_install = {MODULE_OF.get(k, k.replace("-", "_")) for k in map(canonicalize_name, (
        Requirement(r).name for r in needs.install))}
    for module in sorted(anywhere - set(sys.stdlib_module_names) - local - to_install - {sdk, "_pytest"}):
        if importlib.util.find_spec(module) is None and canonicalize_name(module) not in declared_anywhere:
            needs.undeclared.append(module)
    return needs


def install(needs: Needs, work: Path, sdk: str) -> None:
    if not needs.install:
        return
    # Everything installed stays at its version: the SDK, OpenTelemetry, pytest, the project's own deps.
    constraints = work / "constraints.txt"
    pinned = sorted({f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
                     if d.metadata["Name"] and canonicalize_name(d.metadata["Name"]) != "agentguard-otel"})
    constraints.write_text("\n".join(pinned) + "\n")
    attempt = list(needs.install)  # the SDK's locked versions; any the registry lacks: its declared range
    for _ in range(len(attempt) + 1):
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "-c", str(constraints), *attempt]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if done.returncode == 0:
            log(f"{sdk}: installed {' '.join(attempt)}")
            return
        # A locked version the registry lacks, or one that conflicts with a held package (another
        # version of a shared dependency): its declared range instead.
        found = re.search(r"No matching distribution found for (\S+)|Cannot install (\S+) because", done.stderr)
        pin = next((g for g in found.groups() if g), None) if found else None
        index = attempt.index(pin) if pin in attempt else None
        if index is None or attempt[index] == needs.declared[index]:
            log(f"{sdk}: `pip install {' '.join(attempt)}` (installed packages held) failed:\n{done.stderr.strip()}")
            break
        log(f"{sdk}: {attempt[index]} cannot be installed beside the held packages; taking {needs.declared[index]}")
        attempt[index] = needs.declared[index]
    raise Stop(f"{sdk}: could not install what its tests need without moving an installed package")


# -- the runs -----------------------------------------------------------------------------------

@dataclass
class Run:
    kind: str  # "plain" or "shadow"
    returncode: int | None
    seconds: float
    junit: Path
    log: Path
    timed_out: bool = False


def run_env(work: Path, kind: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(DROPPED_ENV_PREFIXES) and k not in DROPPED_ENV}
    env["PYTHONPATH"] = str(HERE)  # our plugins only: not the repo root, whose tests/ would shadow the SDK's
    env["DEFER_PYDANTIC_BUILD"] = "false"  # as the SDKs' scripts/test set it
    env["SDK_SUITES_TRIPWIRE"] = str(work / f"{kind}.mock-server-connects.tsv")
    env["SDK_SUITES_DESELECTED"] = str(work / f"{kind}.deselected.txt")
    if kind == "probe":
        env["SDK_SUITES_PROBE"] = "1"
        env["SDK_SUITES_CANDIDATES"] = str(work / "probe.candidates.txt")
    else:
        env["SDK_SUITES_DESELECT"] = str(work / MOCK_SERVER_TESTS)
    if kind.startswith("shadow"):
        env["SDK_SUITES_SHADOW_REPORT"] = str(work / f"{kind}.report")
    return env


def run_suite(root: Path, work: Path, kind: str, timeout: float, extra: list[str]) -> Run:
    junit = work / f"{kind}.xml"
    output = work / f"{kind}.log"
    for stale in [junit, output, *work.glob(f"{kind}.*")]:
        stale.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "offline_plugin"]
    if kind.startswith("shadow"):
        cmd += ["-p", "shadow_plugin"]
    if uses_xdist(root):
        cmd += ["-n", str(XDIST_WORKERS)]  # an -n in ``extra`` (a rerun's -n 0) comes later and wins
    cmd += [f"--junitxml={junit}", *extra]
    log(f"  {kind}: (cd {root} && {shlex.join(cmd)})")
    started = time.monotonic()
    with open(output, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=run_env(work, kind), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            rc = None
    seconds = time.monotonic() - started
    return Run(kind, rc, seconds, junit, output, timed_out)


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    """End the run we started, and the xdist workers it started (its own process group only)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _probe_key(root: Path, extra: list[str]) -> str:
    """What the probe's answer depends on: the SDK's tree, every installed package, the plugin, the args."""
    digest = hashlib.sha256()
    for path in sorted((root / "tests").rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    digest.update((HERE / "offline_plugin.py").read_bytes())
    digest.update(json.dumps(sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
                                    if d.metadata["Name"])).encode())
    digest.update(json.dumps(extra).encode())
    return digest.hexdigest()[:16]


def probe(root: Path, work: Path, cache: Path, timeout: float, extra: list[str]) -> None:
    """Run the candidates for the mock server (see offline_plugin) with a tripwire that ends a test
    at its first connect to the server; those that connect are the tests to deselect. The answer is
    kept in the cache, keyed by everything it depends on."""
    saved = cache / "probe" / f"{root.name}-{_probe_key(root, extra)}.txt"
    if saved.exists():
        shutil.copyfile(saved, work / MOCK_SERVER_TESTS)
        log(f"  probe: reusing {saved} ({len(_lines(saved))} tests need the mock server)")
        return
    # --tb=no: thousands of tests fail at their first connect; formatting each traceback would cost minutes
    run = run_suite(root, work, "probe", timeout, [*extra, "--tb=no"])
    if run.timed_out or run.returncode not in (0, 1, 5):
        raise Stop(f"{root.name}: the mock-server probe ended with "
                   f"{'a timeout' if run.timed_out else f'pytest exit status {run.returncode}'}; "
                   f"its output ends:\n{_tail(run.log)}")
    connects = _lines(work / "probe.mock-server-connects.tsv")
    tests = sorted({line.split("\t", 1)[0] for line in connects} - {"<outside a test>", "<between tests>"})
    (work / MOCK_SERVER_TESTS).write_text("".join(f"{t}\n" for t in tests), encoding="utf-8")
    saved.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(work / MOCK_SERVER_TESTS, saved)
    candidates = _lines(work / "probe.candidates.txt")
    log(f"  probe: {len(candidates)} tests take the root conftest's mock-server client without an HTTP mock; "
        f"{len(tests)} of them connect to the mock server and are deselected from both runs "
        f"({run.seconds:.1f} s)")


# -- outcomes -----------------------------------------------------------------------------------

@dataclass
class Outcome:
    kind: str  # passed / failed / error / skipped, or "failed+error" for a failing test whose teardown erred
    message: str = ""


def outcomes(junit: Path) -> dict[str, Outcome]:
    tree = ET.parse(junit)
    result: dict[str, Outcome] = {}
    for case in tree.iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds: list[str] = []
        texts: list[str] = []
        for child in case:
            tag = {"failure": "failed", "error": "error", "skipped": "skipped"}.get(child.tag)
            if tag is None:
                continue
            kinds.append(tag)
            texts.append(f"[{child.tag}] {child.get('message', '')}\n{(child.text or '').strip()}".strip())
        kind = "+".join(sorted(set(kinds))) if kinds else "passed"
        if test_id in result:  # the same id twice (a parametrisation pytest could not name apart)
            n = 2
            while f"{test_id}#{n}" in result:
                n += 1
            test_id = f"{test_id}#{n}"
        result[test_id] = Outcome(kind, "\n".join(texts))
    return result


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def _tail(path: Path, count: int = 30) -> str:
    return "\n".join(_lines(path)[-count:])


def _clip(text: str, count: int = 40) -> str:
    lines = text.splitlines()
    return "\n".join(lines[:count] + ([f"... ({len(lines) - count} more lines)"] if len(lines) > count else []))


def shadow_reports(work: Path, kind: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(work.glob(f"{kind}.report.*.json"))]


def nodeid_of(root: Path, test_id: str) -> str | None:
    """pytest's node id for a junit ``classname::name`` (None for a collection error's entry)."""
    classname, _, name = test_id.partition("::")
    parts = classname.split(".")
    for i in range(len(parts), 0, -1):
        if (root / Path(*parts[:i])).with_suffix(".py").is_file():
            return "::".join(["/".join(parts[:i]) + ".py", *parts[i:], name.split("#", 1)[0]])
    return None


def _failed_run(sdk: str, version: str, runs: Iterable[Run]) -> bool:
    failed = False
    for run in runs:
        if run.timed_out:
            log(f"{sdk} {version}: the {run.kind} run hit the timeout; its output ends:\n{_tail(run.log)}")
            failed = True
        elif run.returncode not in (0, 1) or not run.junit.exists():
            log(f"{sdk} {version}: the {run.kind} run ended with pytest exit status {run.returncode}; "
                f"its output ends:\n{_tail(run.log)}")
            failed = True
    return failed


def _kind(results: dict[str, Outcome], test_id: str) -> str:
    return results[test_id].kind if test_id in results else "absent"


def compare(sdk: str, version: str, root: Path, work: Path, plain: Run, shadow: Run,
            timeout: float) -> tuple[int, str]:
    """(exit status, summary line). A difference counts when a rerun of just the differing tests,
    plain and shadow, shows it again; one that does not is listed as flaky and does not count."""
    if _failed_run(sdk, version, (plain, shadow)):
        return 2, f"{sdk} {version}: NOT COMPARED"
    status = 0
    a, b = outcomes(plain.junit), outcomes(shadow.junit)
    deselected = {k: _lines(work / f"{k}.deselected.txt") for k in ("plain", "shadow")}
    if deselected["plain"] != deselected["shadow"]:
        log(f"{sdk} {version}: the runs deselected different tests ({len(deselected['plain'])} plain, "
            f"{len(deselected['shadow'])} shadow)")
        status = 2
    ids = sorted(set(a) | set(b))
    differ = [i for i in ids if _kind(a, i) != _kind(b, i)]
    flaky: set[str] = set()
    if differ:
        nodeids = {i: nodeid_of(root, i) for i in differ}
        argfile = work / "differing-tests.txt"
        argfile.write_text("".join(f"{n}\n" for n in dict.fromkeys(n for n in nodeids.values() if n)))
        serial = ["-n", "0"] if uses_xdist(root) else []
        log(f"  rerunning the {len(differ)} differing tests, plain and shadow, to tell flaky ones apart")
        reruns = [run_suite(root, work, kind, timeout, [*serial, f"@{argfile}"])
                  for kind in ("plain-rerun", "shadow-rerun")]
        if _failed_run(sdk, version, reruns):
            status = 2
        else:
            ra, rb = outcomes(reruns[0].junit), outcomes(reruns[1].junit)
            flaky = {i for i in differ if (_kind(ra, i), _kind(rb, i)) != (_kind(a, i), _kind(b, i))}
            for rerun in reruns:
                log(f"  {rerun.kind}: exit {rerun.returncode} in {rerun.seconds:.1f} s")
    for test_id in differ:
        label = "FLAKY (not on a rerun)" if test_id in flaky else "DIFFERS"
        after = b.get(test_id)
        log(f"{label} {test_id}: plain {_kind(a, test_id)}, shadow {_kind(b, test_id)}")
        if after is not None and after.message and test_id not in flaky:
            log("    " + _clip(after.message).replace("\n", "\n    "))
        elif test_id in flaky and test_id in a and a[test_id].message:
            log("    plain: " + _clip(a[test_id].message, 6).replace("\n", "\n    "))
    log(f"{sdk} {version}: deselected {len(deselected['plain'])} tests that need the mock API server, "
        f"the same in both runs (list: {work / MOCK_SERVER_TESTS})")
    for kind in ("plain", "shadow"):
        connects = _lines(work / f"{kind}.mock-server-connects.tsv")
        if connects:
            tests = sorted({line.split("\t", 1)[0] for line in connects})
            log(f"{sdk} {version}: {kind} run: {len(tests)} kept tests still connected to the mock server "
                f"address: {', '.join(tests[:20])}{' ...' if len(tests) > 20 else ''}")
    reports = shadow_reports(work, "shadow")
    for report in reports:
        if report["worker"] == "main" and len(reports) > 1:
            continue  # the xdist controller runs no test
        log(f"{sdk} {version}: shadow {report['worker']}: patched {report['patched_after_collection']}, "
            f"receipts {report['receipts']}, verify {report['receipts_verify']}"
            + (f", decided but never settled: {report['unsettled_calls']}" if report.get("unsettled_calls") else "")
            + (f" ({report['receipts_first_error']})" if report["receipts_first_error"] else "")
            + (f", SDK imported BEFORE instrument: {report['sdk_imported_before_instrument']}"
               if report["sdk_imported_before_instrument"] else ""))
    log(f"{sdk} {version}: plain {_tally(a)} in {plain.seconds:.1f} s; shadow {_tally(b)} in {shadow.seconds:.1f} s")
    real = len(differ) - len(flaky)
    line = f"{sdk} {version}: {len(ids)} tests, {real} differ" + (f" ({len(flaky)} flaky)" if flaky else "")
    log(line)
    return status or (1 if real else 0), line


def _tally(results: dict[str, Outcome]) -> str:
    tally: dict[str, int] = {}
    for outcome in results.values():
        tally[outcome.kind] = tally.get(outcome.kind, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(tally.items()))


# -- main ---------------------------------------------------------------------------------------

_LOCKS: list[Any] = []


def _lock(work: Path) -> None:
    """One invocation at a time per SDK version: two would clobber each other's results and tree."""
    handle = open(work / ".lock", "w")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise Stop(f"another run of the suites is using {work}: wait for it to end") from exc
    _LOCKS.append(handle)


def prepare(sdk: str, cache: Path, do_install: bool) -> tuple[str, Path, Path]:
    version = installed(sdk)
    if version is None:
        raise Stop(f"{sdk} is not installed in {sys.prefix}")
    work = cache / "results" / f"{sdk}-{version}"
    work.mkdir(parents=True, exist_ok=True)
    _lock(work)  # before the source tree is laid anew
    sdist = fetch_sdist(sdk, version, cache)
    root = extract(sdist, cache, sdk, version)
    needs = test_needs(root, sdk)
    log(f"{sdk} {version}: its tests need {', '.join(needs.present + needs.install) or 'nothing more'}"
        + (f" (to install: {' '.join(needs.install)})" if needs.install else ""))
    if needs.mismatched:
        log(f"{sdk} {version}: kept as installed, outside the SDK's declared range: {'; '.join(needs.mismatched)}")
    if needs.undeclared:
        log(f"{sdk} {version}: its tests import or look for {', '.join(needs.undeclared)}, which the SDK declares "
            "nowhere and which is not installed (not installed here: those tests skip or fail in both runs)")
    if do_install:
        install(needs, work, sdk)
    elif needs.install:
        log(f"{sdk}: --no-install: not installing {' '.join(needs.install)}")
    return version, root, work


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sdks", nargs="*", default=[], metavar="SDK", help=f"any of {', '.join(SDKS)} (default: all)")
    parser.add_argument("--timeout", type=float,
                        default=float(os.environ.get("SDK_SUITES_TIMEOUT", DEFAULT_TIMEOUT)),
                        help="seconds per pytest run (default %(default)s, or $SDK_SUITES_TIMEOUT)")
    parser.add_argument("--no-install", action="store_true", help="install nothing into the environment")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: extra pytest arguments")
    args = parser.parse_args(list(argv) if argv is not None else None)
    extra = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    unknown = [s for s in args.sdks if s not in SDKS]
    if unknown:
        parser.error(f"unknown SDK {', '.join(unknown)}: choose from {', '.join(SDKS)}")
    cache = cache_dir()
    status = 0
    summaries: list[str] = []
    for sdk in args.sdks or SDKS:
        try:
            version, root, work = prepare(sdk, cache, not args.no_install)
        except Stop as stop:
            log(str(stop))
            return 2
        log(f"{sdk} {version}: running its suite in {root} (results in {work})")
        try:
            probe(root, work, cache, args.timeout, extra)
        except Stop as stop:
            log(str(stop))
            return 2
        plain = run_suite(root, work, "plain", args.timeout, extra)
        log(f"  plain: exit {plain.returncode} in {plain.seconds:.1f} s")
        shadow = run_suite(root, work, "shadow", args.timeout, extra)
        log(f"  shadow: exit {shadow.returncode} in {shadow.seconds:.1f} s")
        result, line = compare(sdk, version, root, work, plain, shadow, args.timeout)
        status = max(status, result)
        summaries.append(f"{line}  [plain run {plain.seconds:.0f} s, shadow run {shadow.seconds:.0f} s]")
    for line in summaries:
        log(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
