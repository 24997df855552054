"""The model gateway: route a call over the agent's model route (a weighted choice, then
the fallbacks in order), retry what may succeed later, skip endpoints whose breaker is
open, and price the result.

Retries: only for retryable failures (408, 409, 429, 5xx, timeouts, unreachable), with
exponential backoff and full jitter, never sooner than a ``retry-after`` asks, never past
the call's deadline, at most ``max_attempts`` per model, and within a retry budget shared
by all calls (a failing provider is not sent a multiple of its traffic). Any other
failure is final.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal

from dataplane.config.snapshot import ExecutorConfig
from dataplane.http1 import Http1Transport
from dataplane.models.breaker import Breakers
from dataplane.models.credentials import CredentialRefused, Credentials, scrub
from dataplane.models.estimate import estimated_usage
from dataplane.models.openai import OpenAIProvider
from dataplane.models.pricing import cost
from dataplane.models.retry_budget import RetryBudget
from dataplane.models.scripted import ScriptedProvider
from dataplane.models.types import ChatRequest, ChatResult, ProviderError
from pilothouse.v1 import model_pb2

DEFAULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    """Attempts per model, the first included."""
    initial_backoff: float = 0.2
    max_backoff: float = 5.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff, self.initial_backoff * 2**attempt))


@dataclass(frozen=True)
class GatewayResult:
    result: ChatResult
    model: model_pb2.Model
    cost: Decimal
    attempts: int
    """Calls made in all, failed ones included."""
    fallbacks_used: int


class NoModelAvailable(Exception):
    """Every model of the route failed or was skipped; ``last`` is the last failure."""

    def __init__(self, route: str, last: ProviderError | None) -> None:
        self.route = route
        self.last = last
        super().__init__(f"no model of {route} answered" + (f": {last}" if last else ""))


def weighted_pick(route: model_pb2.ModelRoute, key: str) -> str:
    """The target a key lands on: the same key always picks the same target."""
    total = sum(t.weight for t in route.targets)
    point = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % max(total, 1)
    for target in route.targets:
        if point < target.weight:
            return target.model
        point -= target.weight
    return route.targets[-1].model


class ModelGateway:
    def __init__(
        self,
        transport: Http1Transport,
        *,
        retry: RetryPolicy = RetryPolicy(),
        breakers: Breakers | None = None,
        env: Mapping[str, str] = os.environ,
        stream: bool = True,
        retry_budget: RetryBudget | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        """``transport``: what model calls go over (shared with the tools' client).
        ``stream``: ask OpenAI-compatible providers for server-sent events.
        ``credentials``: what models may name in ``credential`` (none by default)."""
        self._credentials = credentials or Credentials()
        self._transport = transport
        self._stream = stream
        self._budget = retry_budget or RetryBudget()
        self._retry = retry
        self._breakers = breakers or Breakers()
        self._env = env

    async def complete(
        self,
        config: ExecutorConfig,
        route_name: str,
        request: ChatRequest,
        *,
        deadline: float,
        pick_key: str,
    ) -> GatewayResult:
        """One model call over a route; ``deadline`` is in the event loop's clock."""
        route = config.get(model_pb2.ModelRoute, route_name)
        if route is None:
            raise NoModelAvailable(route_name, None)
        first = weighted_pick(route, pick_key)
        order = [first] + [m for m in route.fallbacks if m != first]
        attempts = 0
        last: ProviderError | None = None
        for index, model_name in enumerate(order):
            model = config.get(model_pb2.Model, model_name)
            if model is None:
                continue
            endpoint = self._endpoint(model)
            if not self._breakers.allow(endpoint):
                continue
            for attempt in range(self._retry.max_attempts):
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise last or ProviderError("deadline passed before the call", retryable=False)
                attempts += 1
                if attempt == 0:
                    self._budget.deposit()
                try:
                    result = await self._call(
                        model, request, timeout=min(remaining, DEFAULT_TIMEOUT)
                    )
                except ProviderError as e:
                    last = e
                    self._breakers.failure(endpoint)
                    if not e.retryable:
                        raise
                    wait = max(self._retry.delay(attempt), e.retry_after or 0.0)
                    if (
                        attempt + 1 >= self._retry.max_attempts
                        or asyncio.get_running_loop().time() + wait >= deadline
                        or not self._budget.withdraw()
                    ):
                        break  # on to the next model
                    await asyncio.sleep(wait)
                    continue
                self._breakers.success(endpoint)
                if result.usage.estimated:
                    # The provider did not say: bill the executor's own count, marked so.
                    result = replace(result, usage=estimated_usage(request, result.message))
                return GatewayResult(result, model, cost(model, result.usage), attempts, index)
        raise NoModelAvailable(route_name, last)

    def _endpoint(self, model: model_pb2.Model) -> str:
        if model.provider == model_pb2.MODEL_PROVIDER_SCRIPTED:
            return f"scripted:{model.name}"
        return self._base_url(model)

    def _base_url(self, model: model_pb2.Model) -> str:
        return model.endpoint or self._env.get("OPENAI_BASE_URL", "https://api.openai.com/v1")

    def _credential(self, model: model_pb2.Model, base_url: str) -> str:
        """The secret the call carries: the credential the model names, if the executor's
        operator granted it to the model's tenant for this endpoint."""
        if not model.credential:
            if model.api_key_env:  # a model stored before credentials: say what to change
                raise ProviderError(
                    f"{model.name} names api_key_env, which executors no longer honour: "
                    "name a credential granted by the executor's operator instead",
                    retryable=False,
                )
            return ""
        tenant = model.name.split("/", 2)[1] if model.name.count("/") >= 3 else ""
        try:
            return self._credentials.resolve(model.credential, tenant=tenant, endpoint=base_url)
        except CredentialRefused as e:
            raise ProviderError(f"{model.name}: {e}", retryable=False) from e

    async def _call(
        self, model: model_pb2.Model, request: ChatRequest, *, timeout: float
    ) -> ChatResult:
        if model.provider == model_pb2.MODEL_PROVIDER_SCRIPTED:
            try:
                return await asyncio.wait_for(ScriptedProvider(model).complete(request), timeout)
            except TimeoutError as e:
                raise ProviderError(f"timed out after {timeout:.1f}s", retryable=True) from e
        if model.provider == model_pb2.MODEL_PROVIDER_OPENAI:
            base_url = self._base_url(model)
            secret = self._credential(model, base_url)
            provider = OpenAIProvider(
                self._transport,
                base_url,
                secret,
                model.provider_model or model.name.rsplit("/", 1)[-1],
                stream=self._stream,
            )
            try:
                return await provider.complete(request, timeout=timeout)
            except ProviderError as e:
                # A provider may quote the key it was sent (a 401's "Incorrect API key
                # provided: …"); the message goes on to run events, logs and the store.
                if secret:
                    e.message = scrub(e.message, secret)
                raise
        raise ProviderError(f"unknown provider {model.provider}", retryable=False)
