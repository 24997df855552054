"""The guardrails on a tool's output: the pattern screen (``screen_tool_output``), then,
for output the tool does not vouch for, the agent's injection classifier. Output either
reads as prompt injection ends the run; the call is journaled first, as it happened."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any

from dataplane.guardrails import classifier, pii
from dataplane.guardrails.injection import screen
from dataplane.guardrails.taint import trusted_output
from dataplane.models.gateway import NoModelAvailable
from dataplane.models.pricing import cost as price
from dataplane.models.types import ChatMessage, ChatRequest, ProviderError
from dataplane.models.types import Usage as CallUsage
from dataplane.orchestrator.account import RunAccount
from dataplane.orchestrator.intercept.chain import (
    ModelInvocation,
    ModelNext,
    ToolAnswer,
    ToolInvocation,
    ToolNext,
)
from dataplane.quota.leases import QuotaExceeded
from dataplane.runstore.model import NewEvent
from pilothouse.v1 import agent_pb2, model_pb2

Audit = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Records an audit event of the run: its action and details."""
Classify = Callable[[ToolInvocation, str], Awaitable[tuple[classifier.Verdict, list[NewEvent]]]]


class OutputGuard:
    def __init__(self, policy: agent_pb2.GuardrailPolicy, classify: Classify | None = None) -> None:
        self._screen = policy.screen_tool_output
        self._classify = classify

    @property
    def active(self) -> bool:
        """It has something to check (the screen, or a classifier to ask)."""
        return self._screen or self._classify is not None

    async def call_tool(self, call: ToolInvocation, proceed: ToolNext) -> ToolAnswer:
        answer = await proceed(call)
        if answer.outcome.unknown:
            return answer  # no output to judge
        content = json.dumps(answer.outcome.result)
        tripped = screen(content) if self._screen else []
        guardrail = "screen_tool_output"
        if not tripped and self._classify is not None and not trusted_output(call.tool):
            verdict, events = await self._classify(call, content)
            answer.events.extend(events)
            if verdict.injection:
                tripped = [verdict.reason or "judged an injection"]
                guardrail = "injection_classifier"
        if tripped:
            answer.tripped = (
                f"{guardrail}: the output of {call.name} reads as prompt injection "
                f"({', '.join(tripped)})"
            )
        return answer


class InjectionClassifier:
    """Asks the agent's injection classifier about a tool's output, billed to the run and
    its tenant like the agent's own calls (through the same interceptors). Its verdict is
    an audit record. A classifier that cannot answer (an error, the run's budget spent,
    the tenant's quota) is a verdict of no injection, recorded as unreadable."""

    def __init__(
        self,
        *,
        route: str,
        models: Sequence[model_pb2.Model],
        call_model: ModelNext,
        account: RunAccount,
        max_usd: Decimal | None,
        tenant: str,
        run_id: str,
        audit: Audit,
    ) -> None:
        self._route = route
        self._models = models
        self._call_model = call_model
        self._account = account
        self._max_usd = max_usd
        self._tenant = tenant
        self._run_id = run_id
        self._audit = audit

    async def __call__(
        self, call: ToolInvocation, content: str
    ) -> tuple[classifier.Verdict, list[NewEvent]]:
        judged = content[: classifier.MAX_JUDGED_CHARS]
        messages = (ChatMessage("system", classifier.INSTRUCTIONS), ChatMessage("user", judged))
        bound = sum(len(m.content.encode()) + 16 for m in messages)
        worst = max(
            (price(m, CallUsage(bound, classifier.MAX_VERDICT_TOKENS)) for m in self._models),
            default=Decimal(0),
        )
        events: list[NewEvent] = []
        spent = self._account.usage.cost_usd
        try:
            if self._max_usd is not None and spent + worst > self._max_usd:
                raise _NoClassifier("the run's budget leaves nothing for it")
            started = time.perf_counter()
            result = await self._call_model(
                ModelInvocation(
                    ChatRequest(
                        messages=messages,
                        max_output_tokens=classifier.MAX_VERDICT_TOKENS,
                        step=call.step,
                        run_input=judged,
                    ),
                    self._route,
                    self._models,
                    self._tenant,
                    pick_key=f"{self._run_id}:{call.step}:classifier",
                    deadline=call.deadline,
                    worst_usd=worst,
                    token_bound=bound + classifier.MAX_VERDICT_TOKENS,
                )
            )
        except (ProviderError, NoModelAvailable, QuotaExceeded, _NoClassifier) as e:
            verdict = classifier.Verdict(
                False, f"the classifier could not answer: {e}"[:300], False
            )
        else:
            verdict = classifier.read(result.result.message.content)
            seconds = time.perf_counter() - started
            events.append(self._account.model_call(result, call.step, seconds))
        await self._audit(
            "guardrail.classifier",
            {
                "agent": call.agent,
                "step": call.step,
                "tool": call.name,
                "route": self._route,
                "injection": verdict.injection,
                "readable": verdict.readable,
                "reason": pii.redact(verdict.reason),
            },
        )
        return verdict, events


class _NoClassifier(Exception):
    """The injection classifier cannot be asked."""
