"""Tenants' quotas: leases of their limits to executors, and their balances."""
