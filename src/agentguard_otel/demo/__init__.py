"""`agentguard demo`: the guarded agent loop, its built-in local OpenAI-compatible endpoint, and an
OpenRouter client routed to that endpoint (also used by the ``openrouter_team`` example)."""
