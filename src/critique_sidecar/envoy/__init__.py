"""The Envoy front door: ext_authz and ext_proc servicers and gRPC health. Thin: protocol
messages in, core calls, protocol messages out."""
