"""`[clustering]`: several machines (members) serving as one executor (docs/clustering.md).

Built: the exact state the members share, in Redis, behind the interfaces the workers of one
node already share through SQLite (`pipeline.replay.ReplayStore`, `pipeline.ratelimits.Limiter`,
`backends.usage_book.NodeLimits`). Not built: etcd membership, leader election, epoch fencing.
"""
