"""What wraps every model and tool call of a run: tracing and metrics, quota reservation
and settlement, content capture, and the guardrails on tool output. Each is a small module
of its own with an interceptor class; ``compose.py`` puts them in order, in one place.
"""
