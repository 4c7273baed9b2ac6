"""Provisioning: the operator actions (service), their HTTP API on the admin listener (api,
openapi, server) and the request/response models (schemas)."""
