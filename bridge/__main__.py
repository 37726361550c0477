"""Command line: `python -m bridge -c config.yaml [-g -r registration.yaml]`.

Exit status: 0 after a clean stop, 2 for a bad config or an unusable database (with a
one-line message and no traceback), 1 for any other failure.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from .config import group_readable_warning, load_config
from .errors import ConfigError, DatabaseError
from .log import setup_logging
from .sip.errors import SipError

EXIT_CONFIG = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bridge",
        description=(
            "Matrix ⇄ SIP bridge: a Matrix application service that lets Matrix users call and "
            "text companies' phone systems (PBX) by name."
        ),
        epilog="Exit status: 0 clean stop, 2 bad config or database, 1 other failure.",
    )
    p.add_argument(
        "-c",
        "--config",
        default="config.yaml",
        metavar="PATH",
        help="the bridge config file (default: %(default)s); see config.example.yaml",
    )
    p.add_argument(
        "-g",
        "--generate-registration",
        action="store_true",
        help="write the appservice registration file (see -r) and store newly generated "
        "as_token/hs_token in the config if they are 'generate', then exit; this is the "
        "only time the bridge writes to the config file",
    )
    p.add_argument(
        "-r",
        "--registration",
        default="registration.yaml",
        metavar="PATH",
        help="where -g writes the registration for the homeserver (default: %(default)s)",
    )
    p.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config and the database connection, then exit",
    )
    return p.parse_args(argv)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_CONFIG


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.generate_registration:
        from .registration import generate

        try:
            cfg = generate(args.config, args.registration)
        except ConfigError as e:
            return _fail(str(e))
        print(f"wrote {Path(args.registration).resolve()} for appservice '{cfg.appservice.id}'")
        print("add it to your homeserver (Synapse: app_service_config_files) and restart it")
        return 0
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        return _fail(str(e))
    setup_logging(cfg.logging, cfg.secrets())
    log = logging.getLogger("bridge")
    warning = group_readable_warning(cfg.path)
    if warning:
        log.warning(warning)

    from .app import Bridge

    bridge = Bridge(cfg)

    async def run() -> int:
        try:
            await bridge.open_database()
        except DatabaseError as e:
            return _fail(f"{cfg.path}: appservice.database: {e}")
        if args.check_config:
            await bridge.stop()
            print("config and database are fine")
            return 0
        try:
            await bridge.run()
        except SipError as e:
            return _fail(f"{cfg.path}: sip: {e}")
        except OSError as e:  # e.g. the appservice port is taken
            where = f"{cfg.appservice.hostname}:{cfg.appservice.port}"
            return _fail(f"{cfg.path}: appservice.hostname/port ({where}): {e.strerror or e}")
        return 0

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
