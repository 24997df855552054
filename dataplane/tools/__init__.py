"""The tool router and the kinds of tool: builtin, http and mcp."""
