"""Local servers speaking the providers' wire protocols (OpenAI and OpenRouter, Anthropic, Bedrock)
for the tests, on one HTTP base with shared response-shape controls (see ``base``)."""
