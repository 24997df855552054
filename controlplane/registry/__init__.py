"""The registry: tools, models, model routes, prompts, agents and tenants, with their rules."""
