"""Build glue: the Rust extension via setuptools-rust, the Cython modules via cythonize.

maturin cannot compile Cython, so both kinds of extension are built here and
land in one wheel. For a quick Rust-only loop: `python setup.py build_rust --inplace --release`.

The version is read from `__version__` in python/lloom_executor/__init__.py, the
one place it is written (pyproject.toml declares it dynamic), so the wheel's
metadata and `lloom-executor --version` cannot disagree.

The Rust extension targets CPython's stable ABI (PyO3 `abi3-py311`): its
compiled code is the same for 3.11, 3.12 and 3.13, so a release build
(scripts/build_wheelhouse.py) compiles it once and reuses it for every
Python's wheel (measured: no difference in codec call times against a
version-specific build). The Cython modules are compiled per Python version
(the limited API was not tried for them), so each wheel is tagged per Python.
"""

import re
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools_rust import Binding, RustExtension

HERE = Path(__file__).parent
FAST = Path("python/lloom_executor/_fast")
VERSION_FILE = HERE / "python/lloom_executor/__init__.py"


def package_version() -> str:
    """The `__version__ = "..."` literal of the package, without importing it (its extensions are not built yet)."""
    match = re.search(r'^__version__ = "([^"]+)"$', VERSION_FILE.read_text(encoding="utf-8"), re.MULTILINE)
    if match is None:
        raise RuntimeError(f'no `__version__ = "..."` line in {VERSION_FILE}')
    return match.group(1)


cython_modules = [
    Extension(
        f"lloom_executor._fast.{pyx.stem}",
        [str(FAST / pyx.name)],
        extra_compile_args=["-O3"],
    )
    for pyx in sorted((HERE / FAST).glob("*.pyx"))
]

setup(
    version=package_version(),
    # MANIFEST.in puts the .pyx sources in the sdist; the wheel holds their compiled modules instead.
    exclude_package_data={"lloom_executor._fast": ["*.pyx"]},
    rust_extensions=[
        RustExtension(
            "lloom_executor._native",
            path="native/Cargo.toml",
            binding=Binding.PyO3,
            debug=False,
            features=["pyo3/abi3-py311"],
        )
    ],
    ext_modules=cythonize(
        cython_modules,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
