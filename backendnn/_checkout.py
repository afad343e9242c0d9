"""Lets `import backendnn` work from a source checkout that was never installed.

The wheel maps the top-level `backends/` folder to `backendnn.backends`. In a plain
checkout (pytest from a clean clone) that mapping does not exist yet, so the folder
above this package joins the package path and `backendnn.backends` resolves to it.
"""
import os


def extend_path(path: list[str], here: str) -> None:
    if os.path.isdir(os.path.join(here, "backends")):
        return
    root = os.path.dirname(here)
    if os.path.isfile(os.path.join(root, "backends", "__init__.py")) and os.path.isfile(
        os.path.join(root, "pyproject.toml")
    ):
        path.append(root)
