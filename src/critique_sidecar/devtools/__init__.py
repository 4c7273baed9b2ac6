"""Development tools: the fake OpenAI-compatible upstream and the local stack runner."""
