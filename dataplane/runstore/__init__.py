"""The run store: runs, their checkpoints, the tool-call journal, leases and the queue.

A database the executors of a pool share (a SQLite file on one machine, PostgreSQL for a
pool). Every write of an executor that holds a run is fenced: it carries the run's
fencing token and is refused once another executor has claimed the run since.
"""
