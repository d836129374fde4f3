# The default clock of the Cython hot paths, shared at C level (inline, no call overhead).
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC


cdef inline double mono() noexcept nogil:
    """CLOCK_MONOTONIC seconds read straight from C: no Python call on the hot path."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9
