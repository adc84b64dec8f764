"""``constraints.txt`` pins every package the toolkit installs, at the versions this environment runs.

The README's install line (``pip install -c constraints.txt -e ".[dev]"``) resolves the same set as CI
only if every package the project pulls in, directly or not, has a pin there.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import tomllib

from conftest import ROOT
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

# what a virtual environment brings itself, before pip installs anything
ENVIRONMENT = {"pip", "setuptools"}


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not a pin (name==version)"
            pins[_name(name)] = version.strip()
    return pins


def test_every_package_installed_for_the_toolkit_is_pinned_at_the_version_installed() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    pins, seen, unpinned = _pins(), set(), []
    while wanted:  # the project's requirements, then theirs, as installed here
        requirement = wanted.pop()
        name = _name(requirement.name)
        if name in seen or name in ENVIRONMENT:
            continue
        seen.add(name)
        if name not in pins:
            unpinned.append(name)
        assert metadata.version(name) in SpecifierSet(f"=={pins.get(name, metadata.version(name))}"), name
        for needed in map(Requirement, metadata.requires(name) or []):
            extras = requirement.extras or {""}
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra}) for extra in extras):
                wanted.append(needed)
    assert unpinned == []
    assert len(seen) > 100  # the walk went through the dependencies, not just the first level
