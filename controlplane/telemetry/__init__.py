"""What executors report about runs: ingestion, the usage ledger, the run index."""
