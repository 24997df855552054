"""Persistence: SQLAlchemy 2 async over SQLite (aiosqlite) or PostgreSQL (asyncpg).

Nothing outside this package writes SQL. Repositories are functions over an
``AsyncConnection`` so that the domain decides what one transaction holds.
"""
