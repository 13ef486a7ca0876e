"""HTTP: webhook intake and its verification, the analyst API, OpenAPI, the dashboard, probes
and metrics, and the uvicorn protocol that serves them."""
