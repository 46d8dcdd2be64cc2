"""What an installed batchworks looks like to its users: an editable install that mypy sees,
and a wheel and an sdist that carry the migrations, py.typed and the console script."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = sorted(
    p.name for p in (ROOT / "batchworks/backends/postgres/migrations").glob("*.sql")
)

GOOD_APP = """
from __future__ import annotations

from batchworks import Job, MemoryBackend, RunReport, Runner


async def handle(job: Job) -> dict[str, int]:
    return {"attempt": job.attempt}


async def main() -> RunReport:
    backend = MemoryBackend()
    await backend.enqueue("q", {"n": 1})
    return await Runner(backend, {"q": handle}, concurrency=4).run_until_empty()
"""

# The same app with one mistake that only batchworks' own annotations can reveal.
BAD_APP = GOOD_APP.replace("concurrency=4", 'concurrency="four"')


def _run(*args: object, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def editable_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with nothing in it but batchworks, installed with ``pip install -e``.

    pip and the build backend come from this test run's environment, through PYTHONPATH for
    the install only (no download, no build isolation): the venv itself gets no path to it,
    so whatever finds batchworks later found it through the editable install.
    """
    venv = tmp_path_factory.mktemp("editable") / "venv"
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    made = _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv.parent, env=clean)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    tools = {**clean, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    installed = _run(
        *[python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"],
        *["--ignore-installed", "--no-index", "-e", ROOT],
        cwd=venv.parent,
        env=tools,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def _mypy(venv: Path, source: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    # Run outside the repository, so that mypy cannot find batchworks as a directory next to
    # the app, and against the venv's interpreter, so that it searches that venv's paths.
    return _run(
        *[sys.executable, "-m", "mypy", "--strict", "--no-error-summary"],
        *["--python-executable", venv / "bin" / "python", "--cache-dir", tmp_path / "cache"],
        app,
        cwd=tmp_path,
        env=env,
    )


class TestEditableInstall:
    def test_mypy_strict_type_checks_an_app_against_it(
        self, editable_venv: Path, tmp_path: Path
    ) -> None:
        result = _mypy(editable_venv, GOOD_APP, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_mypy_strict_finds_a_type_error_in_a_call_to_it(
        self, editable_venv: Path, tmp_path: Path
    ) -> None:
        result = _mypy(editable_venv, BAD_APP, tmp_path)
        assert result.returncode == 1, result.stdout + result.stderr
        # Runner.__init__ is overloaded (on sync_in_thread), so a bad argument is reported as
        # no overload matching, with the signatures that name the parameter's type.
        assert "[call-overload]" in result.stdout, result.stdout
        assert "concurrency: int" in result.stdout, result.stdout
        assert "import-not-found" not in result.stdout, "mypy did not find batchworks at all"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The wheel and the sdist, built by the project's build backend from the repository."""
    out = tmp_path_factory.mktemp("dist")
    script = (
        "import sys; from hatchling.build import build_sdist, build_wheel; "
        "print(build_wheel(sys.argv[1])); print(build_sdist(sys.argv[1]))"
    )
    result = _run(sys.executable, "-c", script, out, cwd=ROOT, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    wheel, sdist = result.stdout.split()
    return out / wheel, out / sdist


class TestDistributions:
    def test_the_wheel_holds_the_migrations_py_typed_and_the_command(
        self, built: tuple[Path, Path]
    ) -> None:
        with zipfile.ZipFile(built[0]) as wheel:
            names = set(wheel.namelist())
            [entry_points] = [name for name in names if name.endswith("entry_points.txt")]
            scripts = wheel.read(entry_points).decode()
        assert MIGRATIONS and len(MIGRATIONS) >= 4
        for migration in MIGRATIONS:
            assert f"batchworks/backends/postgres/migrations/{migration}" in names
        assert "batchworks/py.typed" in names
        assert "batchworks/cli.py" in names
        assert not any(name.startswith("tests/") for name in names)
        assert "batchworks = batchworks.cli:main" in scripts

    def test_the_wheel_holds_the_dashboards_templates_and_assets_and_its_extra(
        self, built: tuple[Path, Path]
    ) -> None:
        web = Path(__file__).resolve().parents[2] / "batchworks" / "web"
        shipped = sorted(
            str(path.relative_to(web.parent.parent))
            for folder in ("templates", "static")
            for path in (web / folder).iterdir()
        )
        with zipfile.ZipFile(built[0]) as wheel:
            names = set(wheel.namelist())
            [metadata] = [name for name in names if name.endswith(".dist-info/METADATA")]
            text = wheel.read(metadata).decode()
        assert {"batchworks/web/templates/job.html", "batchworks/web/static/live.js"} <= set(
            shipped
        )
        assert set(shipped) <= names
        assert "Provides-Extra: web" in text
        assert "Requires-Dist: starlette>=0.40; extra == 'web'" in text

    def test_the_sdist_holds_the_migrations_and_the_tests(self, built: tuple[Path, Path]) -> None:
        with tarfile.open(built[1]) as sdist:
            names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
        for migration in MIGRATIONS:
            assert f"batchworks/backends/postgres/migrations/{migration}" in names
        assert {"batchworks/py.typed", "pyproject.toml", "README.md"} <= names
        assert "tests/unit/test_packaging.py" in names
