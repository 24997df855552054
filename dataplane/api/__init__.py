"""The executor's gRPC edge: AgentService, authentication, conversion, status codes."""
