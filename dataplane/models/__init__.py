"""The model gateway: providers (scripted, OpenAI-compatible), routing, retries, breakers,
pricing."""
