"""The sidecar's HTTP routes: model list, settings and dashboard APIs (served behind Envoy
or by the ASGI gateway). They authenticate with the same core as the metered route."""
