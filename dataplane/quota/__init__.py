"""Tenants' quota on an executor: leases from the control plane, spent locally."""
