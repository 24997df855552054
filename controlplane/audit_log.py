"""Reading and verifying the audit log's chains."""

from __future__ import annotations

import dataclasses

from controlplane.auth.principal import Permission, Principal
from controlplane.errors import InvalidArgument, PermissionDenied
from controlplane.registry import names
from controlplane.registry.pagination import decode_token, page_size, paginate
from controlplane.store import audit as audit_store
from controlplane.store.database import Database
from pilothouse.auditchain import Record, Verdict, Verifier

SYSTEM = "system"
"""The parent naming the chain of records of no tenant."""
VERIFY_BATCH = 1000


def chain(caller: Principal, parent: str) -> str:
    """The chain ``parent`` names, if the caller may read it."""
    caller.require(Permission.AUDIT_READ)
    if parent == SYSTEM:
        if caller.tenant is not None:
            raise PermissionDenied("the control plane's own audit records need an unscoped key")
        return audit_store.NO_TENANT
    tenant = names.tenant_of(parent)
    if tenant is None or parent != names.tenant_name(tenant):
        raise InvalidArgument.of("parent", "must be tenants/{tenant} or system")
    caller.require_tenant(tenant)
    return tenant


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(
        self,
        caller: Principal,
        parent: str,
        *,
        size: int,
        token: str,
        action_prefix: str,
        after_sequence: int,
    ) -> tuple[list[Record], str]:
        name = chain(caller, parent)
        if after_sequence < 0:
            raise InvalidArgument.of("after_sequence", "must not be negative")
        limit = page_size(size)
        collection = f"audit:{name}:{action_prefix}"
        after = decode_token(token, collection)
        if after and not after.isdigit():
            raise InvalidArgument.of("page_token", "is not a token this API issued")
        start = max(int(after) if after else 0, after_sequence)
        async with self._db.snapshot() as conn:
            records = await audit_store.page(
                conn, name, after_seq=start, limit=limit + 1, action_prefix=action_prefix
            )
        return paginate(records, limit, collection, lambda r: str(r.sequence))

    async def verify(self, caller: Principal, parent: str) -> Verdict:
        """Check the chain from its first record (after those retention removed), in one
        consistent view; a head row ahead of the last record means records were removed
        from the end."""
        name = chain(caller, parent)
        async with self._db.snapshot() as conn:
            head = await audit_store.head(conn, name)
            verifier = Verifier(head.pruned_sequence, head.pruned_hash)
            after = head.pruned_sequence
            while batch := await audit_store.page(conn, name, after_seq=after, limit=VERIFY_BATCH):
                if not all(verifier.feed(r) for r in batch):
                    break
                after = batch[-1].sequence
        verdict = verifier.verdict()
        if verdict.intact and (verdict.head_sequence, verdict.head_hash) != (
            head.sequence,
            head.hash,
        ):
            return dataclasses.replace(
                verdict,
                broken_at=verdict.head_sequence + 1,
                problem=f"the chain's head is record {head.sequence}, but its records end at "
                f"{verdict.head_sequence}",
            )
        return verdict
