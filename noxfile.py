"""Developer sessions: tests, lint, the built wheel in a fresh environment, benchmarks."""

from __future__ import annotations

import glob
import json

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (pass -m 'not slow' to skip the slow cases)."""
    # as .ci/run does: flcore first, so that the contrib packages' flcore requirement is met by this checkout
    session.install("-e", ".[test]")
    session.install(*[p.rsplit("/", 1)[0] for p in sorted(glob.glob("contrib/*/pyproject.toml"))])
    session.run("pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the core, the built-ins, the contrib packages and the tests."""
    session.install("ruff")
    session.run("ruff", "check", "flcore", "plugins", "contrib", "tests", "benchmarks", "noxfile.py")


@nox.session
def wheel(session: nox.Session) -> None:
    """Build the wheel, install it into a fresh environment, check the listed plugins."""
    session.install("build")
    session.run("python", "-m", "build", "--wheel", "--outdir", "dist/")
    wheels = sorted(glob.glob("dist/flcore-*.whl"))
    session.install(wheels[-1])
    output = session.run("flcore", "list-plugins", "--json", silent=True)
    listed = json.loads(output)
    assert any(c["name"] == "fedavg" and c["provided_by"] == "flcore" for c in listed["components"]), listed
    session.run("flcore", "run", "--set", "federation.rounds=2", "--out", session.create_tmp())


@nox.session
def release(session: nox.Session) -> None:
    """Build the sdist and the wheel into dist/ and check them with twine (what PyPI would accept)."""
    import shutil

    session.install("build>=1.0", "twine>=5")
    shutil.rmtree("dist", ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", "dist/")
    built = sorted(glob.glob("dist/flcore-*"))
    assert any(p.endswith(".whl") for p in built) and any(p.endswith(".tar.gz") for p in built), built
    session.run("twine", "check", "--strict", *built)


@nox.session
def docs(session: nox.Session) -> None:
    """Regenerate the config and CLI references, then build the site with warnings as errors."""
    session.install("-e", ".[docs]")
    session.run("python", "docs/gen_reference.py")
    session.run("mkdocs", "build", "--strict")


@nox.session
def bench(session: nox.Session) -> None:
    """The speed benchmarks (E1, E2, E3) with their plain-PyTorch baselines."""
    session.install("-e", ".")
    session.run("python", "benchmarks/run.py", *session.posargs)
    session.run("python", "benchmarks/partition.py")
