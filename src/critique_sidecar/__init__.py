"""critique-sidecar: prepaid, per-key metering for OpenAI-compatible inference APIs."""

__version__ = "0.1.0"
