"""One node on every core: a supervisor, N worker processes and the state they share (docs/workers.md)."""
