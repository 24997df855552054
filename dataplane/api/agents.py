"""AgentService on the executor."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from dataplane.api import auth
from dataplane.api._convert import event_to_proto, run_to_proto
from dataplane.config.watcher import ConfigWatcher
from dataplane.evals.cases import CaseRunner
from dataplane.orchestrator.admission import Admission
from dataplane.orchestrator.context import AdmissionError, Exhausted
from dataplane.orchestrator.runs import Runs
from dataplane.runstore.errors import IdempotencyConflict, RunNotFound
from dataplane.runstore.model import Run
from dataplane.runstore.store import RunStore
from dataplane.telemetry.otel import trace_headers
from pilothouse import jsonschemas, patterns
from pilothouse.clipping import clip
from pilothouse.v1 import eval_pb2, run_pb2_grpc
from pilothouse.v1 import run_pb2 as pb
from storekit.coalesce import Coalescer

log = logging.getLogger("pilothouse.executor.api")
Ctx = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")

DEFAULT_PAGE = 50
MAX_PAGE = 1000
REFUSAL_WINDOW = 10.0
"""Of one key's refusals in a tenant, by method, one audit record this often."""
USE_WINDOW = 3600.0
"""Of one key's calls, by method, one audit record this often."""


async def _abort(
    ctx: Ctx,
    code: grpc.StatusCode,
    message: str,
    field: str = "",
    *,
    retry_after: float | None = None,
    quota: tuple[str, str] | None = None,
) -> NoReturn:
    # The status travels in trailing metadata (16 KiB with every header): a message that
    # quotes a caller's multi-KB value would turn the refusal into RESOURCE_EXHAUSTED.
    message, field = clip(message, 1000), clip(field, 200)
    status = status_pb2.Status(code=code.value[0], message=message)
    if quota is not None:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=quota[0], description=f"{quota[1]}: {message}"
                    )
                ]
            )
        )
        status.details.append(detail)
    if retry_after is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromTimedelta(timedelta(seconds=retry_after))
        detail = any_pb2.Any()
        detail.Pack(retry)
        status.details.append(detail)
    if field:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
                ]
            )
        )
        status.details.append(detail)
    await ctx.abort(
        code, message, trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),)
    )
    raise AssertionError("unreachable")


async def _guard(
    ctx: Ctx,
    call: Callable[[], Awaitable[T]],
    refused: Callable[[auth.PermissionDenied], Awaitable[None]] | None = None,
) -> T:
    """Run a call, mapping refusals to their status codes (never UNKNOWN); ``refused``
    hears of a key refused in a tenant."""
    try:
        return await call()
    except auth.Unauthenticated as e:
        await _abort(ctx, grpc.StatusCode.UNAUTHENTICATED, str(e))
    except auth.PermissionDenied as e:
        if refused is not None:
            await refused(e)
        await _abort(ctx, grpc.StatusCode.PERMISSION_DENIED, str(e))
    except AdmissionError as e:
        if e.not_found:
            await _abort(ctx, grpc.StatusCode.NOT_FOUND, str(e))
        if not e.field:
            await _abort(ctx, grpc.StatusCode.UNAVAILABLE, str(e))
        await _abort(ctx, grpc.StatusCode.INVALID_ARGUMENT, f"{e.field}: {e}", e.field)
    except Exhausted as e:
        await _abort(
            ctx,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            str(e),
            retry_after=e.retry_after,
            quota=e.quota,
        )
    except RunNotFound as e:
        await _abort(ctx, grpc.StatusCode.NOT_FOUND, f"run {e} not found")
    except IdempotencyConflict as e:
        await _abort(ctx, grpc.StatusCode.FAILED_PRECONDITION, str(e))
    except grpc.aio.AbortError:
        raise
    except Exception:
        log.exception("request failed")
        await _abort(ctx, grpc.StatusCode.INTERNAL, "internal error; see the executor log")


def _tenant_of(name: str, collection: str, field: str) -> tuple[str, str]:
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "tenants"
        or parts[2] != collection
        or not _ID.match(parts[1])
        or not 0 < len(parts[3]) <= 63
    ):
        raise AdmissionError(field, f"{name[:200]!r} is not tenants/{{tenant}}/{collection}/{{id}}")
    return parts[1], parts[3]


class AgentServicer(run_pb2_grpc.AgentServiceServicer):
    def __init__(
        self, runs: Runs, store: RunStore, watcher: ConfigWatcher, *, executor: str = ""
    ) -> None:
        self._runs = runs
        self._store = store
        self._watcher = watcher
        self._executor = executor
        self._refusals = Coalescer(REFUSAL_WINDOW)
        self._uses = Coalescer(USE_WINDOW)
        self._recording: set[asyncio.Task[None]] = set()
        self._cases = CaseRunner(runs)

    async def _refused(self, e: auth.PermissionDenied, method: str) -> None:
        """A key refused in a tenant goes to that tenant's audit log (one record per key
        and method every ``REFUSAL_WINDOW`` seconds, counting the rest)."""
        if not e.tenant:
            return
        repeats = self._refusals.admit((e.key, e.tenant, method))
        if repeats is None:
            return
        details: dict[str, object] = {"code": "PERMISSION_DENIED", "reason": str(e), "key": e.key}
        if repeats:
            details["repeats_before"] = repeats
        try:
            await self._store.audit(
                e.tenant, "key.refused", method, details, executor=self._executor
            )
        except Exception:  # the refusal stands; only its record is lost, loudly
            log.exception("could not record a refused call", extra={"method": method})

    def _guarding(self, method: str) -> Callable[[auth.PermissionDenied], Awaitable[None]]:
        return lambda e: self._refused(e, f"/pilothouse.v1.AgentService/{method}")

    def _caller(self, ctx: Ctx, method: str) -> auth.Caller:
        metadata = dict(ctx.invocation_metadata() or ())
        value = metadata.get("authorization")
        caller = auth.authenticate(
            self._watcher, value.decode() if isinstance(value, bytes) else value
        )
        self._used(caller, method)
        return caller

    def _used(self, caller: auth.Caller, method: str) -> None:
        """Record a key's use in its tenant's audit log (once per key and method every
        ``USE_WINDOW`` seconds, counting the calls between), in the background."""
        full = f"/pilothouse.v1.AgentService/{method}"
        calls = self._uses.admit((caller.key, full))
        if calls is None:
            return

        async def record() -> None:
            try:
                await self._store.audit(
                    caller.tenant,
                    "key.used",
                    full,
                    {"key": caller.key, "calls_before": calls},
                    executor=self._executor,
                )
            except Exception:  # the call goes on; only its record is lost, loudly
                log.exception("could not record a key's use", extra={"method": full})

        task = asyncio.get_running_loop().create_task(record())
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    def _admission(self, ctx: Ctx, request: pb.RunAgentRequest | pb.StartRunRequest) -> Admission:
        caller = self._caller(
            ctx, "RunAgent" if isinstance(request, pb.RunAgentRequest) else "StartRun"
        )
        tenant, _ = _tenant_of(request.agent, "agents", "agent")
        auth.require_tenant(caller, tenant)
        _check_run_request(request)
        remaining = ctx.time_remaining()
        deadline = datetime.now(UTC) + timedelta(seconds=remaining) if remaining else None
        return Admission(
            tenant=tenant,
            agent=request.agent,
            input=request.input,
            variables=dict(request.variables),
            budget=request.budget,
            idempotency_key=request.idempotency_key or None,
            session_id=request.session_id,
            user_id=request.user_id,
            deadline_at=deadline if isinstance(request, pb.RunAgentRequest) else None,
            trace=trace_headers(ctx.invocation_metadata() or ()),
            key=caller.key,
            scopes=caller.scopes,
        )

    async def _run_for(self, ctx: Ctx, name: str, method: str) -> Run:
        caller = self._caller(ctx, method)
        tenant, run_id = _tenant_of(name, "runs", "name")
        auth.require_tenant(caller, tenant)
        run = await self._store.get(run_id)
        if run.tenant != tenant:
            raise RunNotFound(name)
        return run

    async def RunAgent(
        self, request: pb.RunAgentRequest, context: Ctx
    ) -> AsyncIterator[pb.RunAgentResponse]:
        admitted = await _guard(
            context,
            lambda: self._runs.admit(self._admission(context, request), run_now=True),
            self._guarding("RunAgent"),
        )
        run = admitted.run
        async for event in self._runs.watch(run.id, until_pause=True, known=admitted.events):
            yield pb.RunAgentResponse(event=event_to_proto(run, event))

    async def RunEvalCase(
        self, request: pb.RunEvalCaseRequest, context: Ctx
    ) -> pb.RunEvalCaseResponse:
        async def run_case() -> pb.RunEvalCaseResponse:
            caller = self._caller(context, "RunEvalCase")
            tenant, _ = _tenant_of(request.agent, "agents", "agent")
            auth.require_tenant(caller, tenant)
            _check_eval_case(request, tenant)
            remaining = context.time_remaining()
            admission = Admission(
                tenant=tenant,
                agent=request.agent,
                input="",
                variables={},
                budget=request.budget,
                deadline_at=datetime.now(UTC) + timedelta(seconds=remaining) if remaining else None,
                trace=trace_headers(context.invocation_metadata() or ()),
                prompt_version=request.prompt_version,
                key=caller.key,
                scopes=caller.scopes,
            )
            result = await self._cases.run(admission, request.report_id, request.case)
            return pb.RunEvalCaseResponse(result=result)

        return await _guard(context, run_case, self._guarding("RunEvalCase"))

    async def StartRun(self, request: pb.StartRunRequest, context: Ctx) -> pb.StartRunResponse:
        admitted = await _guard(
            context,
            lambda: self._runs.admit(self._admission(context, request), run_now=False),
            self._guarding("StartRun"),
        )
        return pb.StartRunResponse(run=run_to_proto(admitted.run), created=admitted.created)

    async def WatchRun(
        self, request: pb.WatchRunRequest, context: Ctx
    ) -> AsyncIterator[pb.WatchRunResponse]:
        run = await _guard(
            context,
            lambda: self._run_for(context, request.name, "WatchRun"),
            self._guarding("WatchRun"),
        )
        async for event in self._runs.watch(run.id, after=request.after_sequence):
            yield pb.WatchRunResponse(event=event_to_proto(run, event))

    async def GetRun(self, request: pb.GetRunRequest, context: Ctx) -> pb.GetRunResponse:
        run = await _guard(
            context,
            lambda: self._run_for(context, request.name, "GetRun"),
            self._guarding("GetRun"),
        )
        return pb.GetRunResponse(run=run_to_proto(run))

    async def ListRuns(self, request: pb.ListRunsRequest, context: Ctx) -> pb.ListRunsResponse:
        async def page() -> pb.ListRunsResponse:
            caller = self._caller(context, "ListRuns")
            parts = request.parent.split("/")
            if len(parts) != 2 or parts[0] != "tenants" or not parts[1]:
                raise AdmissionError("parent", f"{request.parent!r} is not tenants/{{tenant}}")
            auth.require_tenant(caller, parts[1])
            if request.page_size < 0:
                raise AdmissionError("page_size", "must not be negative")
            size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
            before = _decode_token(request.page_token, request.parent)
            runs = await self._store.list_runs(parts[1], before=before, limit=size + 1)
            token = ""
            if len(runs) > size:
                runs = runs[:size]
                token = _encode_token(request.parent, runs[-1])
            return pb.ListRunsResponse(runs=[run_to_proto(r) for r in runs], next_page_token=token)

        return await _guard(context, page, self._guarding("ListRuns"))

    async def CancelRun(self, request: pb.CancelRunRequest, context: Ctx) -> pb.CancelRunResponse:
        async def cancel() -> Run:
            run = await self._run_for(context, request.name, "CancelRun")
            return await self._runs.cancel(run.id)

        return pb.CancelRunResponse(
            run=run_to_proto(await _guard(context, cancel, self._guarding("CancelRun")))
        )


_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_KEY = 256
"""Characters of an idempotency key, a session id or a user id."""
MAX_VARIABLES = 64
MAX_VARIABLE_BYTES = 65_536
MAX_VARIABLES_BYTES = 262_144
"""A run's variables together, as UTF-8."""


def _check_run_request(request: pb.RunAgentRequest | pb.StartRunRequest) -> None:
    """Sizes a caller controls, bounded before anything is stored or scanned."""
    for field in ("idempotency_key", "session_id", "user_id"):
        value = getattr(request, field)
        if len(value) > MAX_KEY:
            raise AdmissionError(field, f"must be at most {MAX_KEY} characters (is {len(value)})")
    if len(request.variables) > MAX_VARIABLES:
        raise AdmissionError("variables", f"may hold at most {MAX_VARIABLES} variables")
    total = 0
    for name, value in request.variables.items():
        size = len(name.encode()) + len(value.encode())
        total += size
        if len(name) > 64:
            raise AdmissionError("variables", f"names at most 64 characters ({name[:64]!r}…)")
        if size > MAX_VARIABLE_BYTES:
            raise AdmissionError(
                f"variables[{name}]", f"is {size} bytes; at most {MAX_VARIABLE_BYTES}"
            )
    if total > MAX_VARIABLES_BYTES:
        raise AdmissionError(
            "variables", f"are {total} bytes together; at most {MAX_VARIABLES_BYTES}"
        )


_GRADERS = frozenset(eval_pb2.Grader.values()) - {eval_pb2.GRADER_UNSPECIFIED}


def _check_eval_case(request: pb.RunEvalCaseRequest, tenant: str) -> None:
    case = request.case
    if not request.prompt_version:
        raise AdmissionError("prompt_version", "is required")
    if not _ID.match(request.report_id):
        raise AdmissionError("report_id", "must be 1 to 63 lowercase letters, digits and hyphens")
    if not _ID.match(case.id):
        raise AdmissionError("case.id", "must be 1 to 63 lowercase letters, digits and hyphens")
    if not case.input.strip():
        raise AdmissionError("case.input", "is required")
    if not case.expectations:
        raise AdmissionError("case.expectations", "needs at least one expectation")
    for j, e in enumerate(case.expectations):
        field = f"case.expectations[{j}]"
        if e.grader not in _GRADERS:
            raise AdmissionError(f"{field}.grader", "is required (a known grader)")
        if e.grader == eval_pb2.GRADER_MODEL_JUDGED:
            judge_tenant, _ = _tenant_of(e.judge_agent, "agents", f"{field}.judge_agent")
            if judge_tenant != tenant:
                raise AdmissionError(f"{field}.judge_agent", f"is not an agent of {tenant!r}")
        elif e.grader == eval_pb2.GRADER_REGEX:
            why = patterns.problem(e.value)
            if why is not None:
                raise AdmissionError(f"{field}.value", why)
        elif e.grader == eval_pb2.GRADER_JSON_SCHEMA:
            try:
                schema = jsonschemas.parse_document(e.value)
            except ValueError as err:
                raise AdmissionError(f"{field}.value", f"is not JSON: {err}") from None
            why = (
                jsonschemas.problem(schema)
                if isinstance(schema, dict)
                else "must be a JSON object (a JSON Schema)"
            )
            if why is not None:
                raise AdmissionError(f"{field}.value", why)


def _encode_token(parent: str, last: Run) -> str:
    raw = json.dumps({"p": parent, "t": last.created_at.isoformat(), "i": last.id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, parent: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    if len(token) <= 1024:
        with contextlib.suppress(ValueError, KeyError, TypeError, binascii.Error, RecursionError):
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            after = datetime.fromisoformat(data["t"])
            if data["p"] == parent and after.tzinfo is not None and isinstance(data["i"], str):
                return after, data["i"]
    raise AdmissionError("page_token", "is not a token of this list")
