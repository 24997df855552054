"""Approval requests and decisions."""
