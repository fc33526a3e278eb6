"""Ordered handling per key: events of one key one at a time, in publish order; keys in parallel.

Pure core: `partitions` (which partition a key falls in), `gate` (whether a key's event runs,
waits its turn, or steps aside while its key is held) and `repartition` (what a change of
`partitions` moves). Thin I/O shell: `partitioner` (the subscriber's queue -> its partition
queues) and `intake` (a partition's deliveries through the gate).
"""
