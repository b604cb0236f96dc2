"""The LLM engine (see README: Engine)."""
