"""Plumbing shared by the control plane and the executors: database engine set-up,
transactions and migrations (it knows no table of either), and structured logging."""
