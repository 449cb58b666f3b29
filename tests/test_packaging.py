"""An installed wheel must hold every file the code reads at run time: templates, static assets, data tables.

package-data globs are easy to forget when a capability adds a templates folder (compute, retention and the
airlock's pages were once missing from the wheel); this checks every non-Python file under the package
against the globs in pyproject.toml, as setuptools expands them.
"""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "strongroom"


def test_every_non_python_file_of_the_package_is_package_data():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["strongroom"]
    shipped = {p for pattern in globs for p in PACKAGE.glob(pattern) if p.is_file()}
    files = {p for p in PACKAGE.rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert files, "the package has templates and static files"
    assert sorted(str(p.relative_to(PACKAGE)) for p in files - shipped) == []
