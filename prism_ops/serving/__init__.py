"""prism-run's long-running service: `openai_api` (request and response shapes), `engine` (the
ranks' loop), `http` (the OpenAI-style HTTP routes on rank 0), `service` (signals, stdin lines)."""
