"""The ``sidkeyd`` command. The only place that picks exit codes and configures logging.

Exit codes: 0 success; 1 a negative answer (invalid signature, unhealthy, request refused);
2 a bad config or usage; 3 the daemon cannot be reached, or cannot start (socket in use or
unsafe, a hardening step the config asks for failed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from sidkeyd import __version__
from sidkeyd.client import Client
from sidkeyd.config import Config
from sidkeyd.defaults import DEFAULT_CONFIG_PATH, DEFAULT_SOCKET_PATH
from sidkeyd.errors import (
    ConfigError,
    DaemonUnavailableError,
    RequestFailedError,
    StartupError,
)
from sidkeyd.status import EnvironmentStatus

EXIT_OK, EXIT_NEGATIVE, EXIT_CONFIG, EXIT_UNAVAILABLE = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidkeyd",
        description="Serve Smile ID request signatures over a Unix socket; keys stay in memory.",
        epilog="Exit codes: 0 ok, 1 negative answer, 2 bad config or usage, 3 daemon unreachable "
        "or unable to start.",
    )
    parser.add_argument("--version", action="version", version=f"sidkeyd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c",
            "--config",
            type=Path,
            default=None,
            help=f"config file (default: $SIDKEYD_CONFIG, else {DEFAULT_CONFIG_PATH})",
        )

    def with_socket(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--socket",
            default=None,
            help=f"daemon socket (default: $SIDKEYD_SOCKET, else {DEFAULT_SOCKET_PATH})",
        )

    serve = commands.add_parser(
        "serve",
        help="run the daemon",
        description="Run the daemon. SIGTERM/SIGINT stop it gracefully; SIGHUP checks every "
        "environment's key now (the config is read only at start).",
    )
    with_config(serve)
    check = commands.add_parser(
        "check-config",
        help="validate a config file and exit",
        description="Validate the config (exit 2 naming every problem). With --online, also log "
        "in to each source and read each secret once, never printing it (exit 1 if any fails).",
    )
    with_config(check)
    check.add_argument(
        "--online", action="store_true", help="also authenticate and read each secret once"
    )

    sign = commands.add_parser("sign", help="print a signature as JSON")
    sign.add_argument("--env", required=True, help="environment name, e.g. sandbox")
    sign.add_argument("--timestamp", help="sign this ISO 8601 timestamp instead of now")
    with_socket(sign)

    verify = commands.add_parser("verify", help="exit 0 if a signature is valid, 1 if not")
    verify.add_argument("--env", required=True)
    verify.add_argument("--timestamp", required=True)
    verify.add_argument("--signature", required=True)
    with_socket(verify)

    status = commands.add_parser("status", help="show each environment's key state")
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    status.add_argument("--env", help="only this environment")
    status.add_argument(
        "--expect-version",
        metavar="VERSION",
        help="with --env: exit 1 unless the key in use has this version (fleet rollout checks)",
    )
    with_socket(status)

    health = commands.add_parser("health", help="exit 0 if every environment can sign")
    with_socket(health)

    token = commands.add_parser("token", help="print a Smile ID V3 token as JSON")
    token.add_argument("--env", required=True, help="environment name, e.g. sandbox")
    with_socket(token)

    refresh = commands.add_parser("refresh", help="check the backend now (admin)")
    refresh.add_argument("--env", help="only this environment")
    with_socket(refresh)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(_config_path(args))
        if args.command == "check-config":
            return _check_config(_config_path(args), online=args.online)
        return _client_command(args)
    except KeyboardInterrupt:
        return 130


def _config_path(args: argparse.Namespace) -> Path:
    if args.config is not None:
        return Path(args.config)
    return Path(os.environ.get("SIDKEYD_CONFIG") or DEFAULT_CONFIG_PATH)


def _load(path: Path) -> Config | None:
    """The validated config, or None after printing every problem."""
    from sidkeyd.config_loader import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem.key}: {problem.reason}", file=sys.stderr)
        return None


def _check_config(path: Path, *, online: bool = False) -> int:
    from sidkeyd.config_loader import missing_files
    from sidkeyd.namespaces import namespace_warnings

    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    missing = missing_files(config)
    if missing:
        print(f"{path}: {len(missing)} problem(s)", file=sys.stderr)
        for problem in missing:
            print(f"  {problem.key}: {problem.reason}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{path}: ok ({len(config.environments)} environments, {len(config.sources)} sources)")
    for warning in [*config.warnings(), *namespace_warnings(config)]:
        print(f"  warning: {warning}")
    return _check_online(config) if online else EXIT_OK


def _check_online(config: Config) -> int:
    from dataclasses import replace

    from sidkeyd.log import configure_logging
    from sidkeyd.online import probe

    read_keys: list[str] = []  # what the sources' own log lines must not show
    configure_logging(replace(config.log, level="warning"), lambda: read_keys, sys.stderr)
    results = probe(config, read_keys)
    for result in results:
        if result.ok:
            print(f"  {result.environment}: ok, key version {result.key_version}")
        else:
            print(f"  {result.environment}: {result.error_code}: {result.reason}")
    return EXIT_OK if all(r.ok for r in results) else EXIT_NEGATIVE


def _serve(path: Path) -> int:
    from sidkeyd.keystore import KeyStore
    from sidkeyd.log import configure_logging, get_logger
    from sidkeyd.server import Server

    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    store = KeyStore()
    configure_logging(config.log, store.secrets)
    try:
        Server(config, store).run()
    except StartupError as exc:
        get_logger().error("daemon.failed", reason=str(exc))
        return EXIT_UNAVAILABLE
    except OSError as exc:  # e.g. the socket's folder cannot be created or written
        get_logger().error("daemon.failed", reason=f"{type(exc).__name__}: {exc}")
        return EXIT_UNAVAILABLE
    return EXIT_OK


def _client_command(args: argparse.Namespace) -> int:
    client = Client(args.socket)
    try:
        if args.command == "sign":
            _print_json(client.sign(args.env, args.timestamp))
            return EXIT_OK
        if args.command == "verify":
            result = client.verify(args.env, args.timestamp, args.signature)
            _print_json(result)
            return EXIT_OK if result["valid"] else EXIT_NEGATIVE
        if args.command == "status":
            return _status(client, args)
        if args.command == "health":
            healthy, payload = client.health()
            _print_json(payload)
            return EXIT_OK if healthy else EXIT_NEGATIVE
        if args.command == "token":
            _print_json(client.token(args.env))
            return EXIT_OK
        if args.command == "refresh":
            _print_json(client.refresh(args.env))
            return EXIT_OK
    except DaemonUnavailableError as exc:
        print(f"sidkeyd: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except RequestFailedError as exc:
        print(f"sidkeyd: {exc}", file=sys.stderr)
        return EXIT_NEGATIVE
    finally:
        client.close()
    raise AssertionError(f"unhandled command {args.command}")


def _status(client: Client, args: argparse.Namespace) -> int:
    status = client.status()
    if args.expect_version is not None and args.env is None:
        print("sidkeyd: --expect-version needs --env", file=sys.stderr)
        return EXIT_CONFIG
    if args.env is not None:
        if args.env not in status["environments"]:
            print(f"sidkeyd: no environment {args.env!r}", file=sys.stderr)
            return EXIT_NEGATIVE
        status = {"environments": {args.env: status["environments"][args.env]}}
    if args.json:
        _print_json(status)
    else:
        print(format_status(status))
    if args.expect_version is not None:
        held = status["environments"][args.env]["key_version"]
        if held != args.expect_version:
            print(
                f"sidkeyd: {args.env} uses {held!r}, not {args.expect_version!r}", file=sys.stderr
            )
            return EXIT_NEGATIVE
    return EXIT_OK


def _print_json(payload: object) -> None:
    print(json.dumps(payload, indent=2))


def format_status(status: dict[str, Any]) -> str:
    """A human-readable view of ``GET /v1/status``."""
    return "\n".join(
        line
        for name, data in status["environments"].items()
        for line in EnvironmentStatus.from_json(name, data).lines()
    )


if __name__ == "__main__":
    sys.exit(main())
