"""A regular (non-editable) install ships every package: pyproject.toml lists them one by one."""

from __future__ import annotations

import tomllib

from conftest import REPO


def test_every_package_folder_is_listed_in_pyproject():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = setuptools["package-dir"]  # installed name -> folder of the repository
    found = set()
    for name, folder in folders.items():
        for init in (REPO / folder).rglob("__init__.py"):
            inner = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name, *inner)))
    assert found == set(setuptools["packages"])
