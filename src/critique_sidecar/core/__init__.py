"""Transport-free core: keys, catalog, pricing, policy and the metering use cases.

Nothing under this package imports grpc, Envoy protos, ASGI or Redis types.
"""
