"""The tool router and the kinds of tool: builtin, http (mcp to come)."""
