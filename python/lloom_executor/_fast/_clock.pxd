# Default clocks of the Cython hot paths, shared at C level (inline, no call overhead).
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

cdef extern from "<time.h>" nogil:
    enum: CLOCK_MONOTONIC_COARSE


cdef inline double mono() noexcept nogil:
    """CLOCK_MONOTONIC seconds read straight from C: no Python call on the hot path."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline double mono_coarse() noexcept nogil:
    """CLOCK_MONOTONIC_COARSE: same epoch as mono(), resolution of one kernel tick
    (1-4 ms), several times cheaper to read. Fine for per-minute rate limits."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9
