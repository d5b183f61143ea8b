"""`fabtier dashboard --config F [--host H] [--port P]`: the operators' dashboard, a process of
its own beside the instance (registered by fabtier/cli.py)."""

from __future__ import annotations

import argparse
import logging


def add_parser(sub, settings_of) -> None:
    """Add the `dashboard` command to the subcommands `sub`; `settings_of(args)` loads the
    configuration as every other command does."""
    parser = sub.add_parser("dashboard", help="the operators' dashboard (web pages, live) for a running instance")
    parser.add_argument("--config", help="TOML file of the instance (its [api] and [broker] are used)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=None,
                        help="port to listen on (0: any free port; default: [api] dashboard_port, 8090)")

    def run(args: argparse.Namespace) -> int:
        from dashboard.server import serve
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
        settings = settings_of(args)
        port = settings.api.dashboard_port if args.port is None else args.port
        return serve(settings, host=args.host, port=port,
                     announce=lambda line: print(line, flush=True))
    parser.set_defaults(func=run)
