"""Built-in local OpenAI-compatible endpoint for `agentguard demo`, benchmarks and tests."""
