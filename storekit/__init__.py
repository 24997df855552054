"""Database plumbing shared by the control plane's store and the executors' run store:
engine set-up, transactions and migrations. It knows no table of either."""
