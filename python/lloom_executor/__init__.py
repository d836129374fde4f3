"""lloom-executor: a Lloom network executor node.

The compiled parts (``_native`` in Rust, ``_fast`` in Cython) are required:
there is no pure-Python fallback, so a missing build fails here, loudly.
"""

from __future__ import annotations

__version__ = "0.1.0"

_BUILD_HINT = (
    "lloom_executor's compiled extensions are missing ({missing}). "
    "Build and install the package with `pip install .` from the source tree "
    "(needs a Rust toolchain and a C compiler), or for a development tree run "
    "`python setup.py build_ext --inplace`."
)

try:
    from . import _native  # noqa: F401
    from ._fast import ratelimit, scheduler  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(_BUILD_HINT.format(missing=exc)) from exc
