"""The fake model server's APIs, one module each (devtools/fake_upstream.py assembles them)."""
