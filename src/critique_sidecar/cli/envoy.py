"""`envoy-config` (generate the Envoy config or its fragment) and `envoy-merge`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..config import Config
from .common import CliError


def _envoy_options(args: argparse.Namespace) -> Any:
    from ..envoy.options import EnvoyOptions, SidecarTls

    tls = None
    if args.sidecar_tls_ca:
        tls = SidecarTls(args.sidecar_tls_ca, args.sidecar_tls_cert, args.sidecar_tls_key, args.sidecar_tls_sni)
    elif args.sidecar_tls_cert or args.sidecar_tls_key or args.sidecar_tls_sni:
        raise CliError("--sidecar-tls-cert/-key/-sni need --sidecar-tls-ca")
    extra = {}
    if args.command == "envoy-config":
        extra = {
            "listen": args.listen,
            "admin": args.admin,
            "stat_prefix": args.stat_prefix,
            "virtual_host": args.virtual_host,
        }
    return EnvoyOptions(
        sidecar_grpc=tuple(args.sidecar_grpc or ["127.0.0.1:9001"]),
        sidecar_http=args.sidecar_http,
        chat_auth=args.chat_auth,
        sidecar_tls=tls,
        path_prefix=args.path_prefix,
        max_response_bytes=args.max_response_bytes,
        **extra,
    )


def _catalog(args: argparse.Namespace, config: Config) -> Any:
    """--catalog, else CRITIQUE_CATALOG_PATH, else (None) the built-in catalog."""
    from ..core.catalog import load_catalog

    return load_catalog(args.catalog or config.catalog_path)


def _envoy_config(args: argparse.Namespace, config: Config) -> int:
    from ..envoy.config import render, render_fragment

    opts = _envoy_options(args)
    catalog = _catalog(args, config)
    sys.stdout.write(render_fragment(catalog, opts) if args.fragment else render(catalog, opts))
    return 0


def _envoy_merge(args: argparse.Namespace, config: Config) -> int:
    from ..envoy.config import build_fragment, to_yaml
    from ..envoy.merge import merge, read_bootstrap

    opts = _envoy_options(args)  # bad options first: they need no file
    try:
        existing = read_bootstrap(args.bootstrap)
    except OSError as exc:
        raise CliError(f"cannot read {args.bootstrap}: {exc.strerror}") from None
    fragment = build_fragment(_catalog(args, config), opts)
    sys.stdout.write(to_yaml(merge(existing, fragment, args.listener, args.virtual_host)))
    if not (args.catalog or config.catalog_path):
        print(
            "critique-sidecar: used the built-in model catalog (its model servers are at 127.0.0.1:8100); "
            "pass --catalog FILE or set CRITIQUE_CATALOG_PATH for yours",
            file=sys.stderr,
        )
    return 0
