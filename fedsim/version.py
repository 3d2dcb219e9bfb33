"""fedsim's version and the name pip knows it by; a leaf, so a module reads them without importing
the package's lazy facade (``fedsim/__init__.py`` re-exports both). The version is written only here:
pyproject.toml reads it (``[tool.setuptools.dynamic]``)."""

__version__ = "0.1.0"
# The name pip knows (pyproject.toml): "fedsim" on PyPI is an unrelated project. Import name and command: fedsim.
DISTRIBUTION = "fedsim-lab"
