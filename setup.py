"""Build glue: the Rust extension via setuptools-rust, the Cython modules via cythonize.

maturin cannot compile Cython, so both kinds of extension are built here and
land in one wheel. For a quick Rust-only loop: `python setup.py build_rust --inplace --release`.
"""
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools_rust import Binding, RustExtension

HERE = Path(__file__).parent
FAST = Path("python/lloom_executor/_fast")

cython_modules = [
    Extension(
        f"lloom_executor._fast.{pyx.stem}",
        [str(FAST / pyx.name)],
        extra_compile_args=["-O3"],
    )
    for pyx in sorted((HERE / FAST).glob("*.pyx"))
]

setup(
    rust_extensions=[
        RustExtension(
            "lloom_executor._native",
            path="native/Cargo.toml",
            binding=Binding.PyO3,
            debug=False,
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
