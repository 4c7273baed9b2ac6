"""Background workers beside the request path (never on it): budget-notification delivery
(notify.py) and the CloudEvents usage push (usage_push.py). Each runs in the sidecar process
when configured (CRITIQUE_NOTIFY_WORKER, CRITIQUE_USAGE_PUSH_WORKER), or alone as a CLI command
(`critique-sidecar notify-worker`, `critique-sidecar usage push`). They reach Redis only through
the core's interfaces (core/stores.py); app.background_workers wires them."""

from __future__ import annotations
