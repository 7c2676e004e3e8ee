"""The ``sidkeyd`` command. The only place that picks exit codes and configures logging.

Exit codes: 0 success; 1 a negative answer (invalid signature, unhealthy, request refused);
2 a bad config or usage; 3 the daemon cannot be reached, or cannot start (socket in use or
unsafe, a hardening step the config asks for failed).
"""

from __future__ import annotations

import argparse
import io
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
        description="Run the daemon. SIGTERM/SIGINT/SIGQUIT stop it gracefully; SIGHUP reopens "
        "the audit file, reloads the config file (as 'sidkeyd reload' does) and checks every "
        "environment's key.",
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

    imports = commands.add_parser(
        "import-key",
        help="import a key into an environment's remote signer (never printed)",
        description="Read the key from stdin (or --key-file) and import it into the Transit key "
        "of --env: a new key, or its next version (a rotation). Prints the version, never the key.",
    )
    with_config(imports)
    imports.add_argument("--transit", action="store_true", required=True, help="into Transit")
    imports.add_argument("--env", required=True, help="an environment with signer = 'transit'")
    imports.add_argument("--key-file", type=Path, help="read the key from this file, not stdin")

    refresh = commands.add_parser("refresh", help="check the backend now (admin)")
    refresh.add_argument("--env", help="only this environment")
    with_socket(refresh)

    reload = commands.add_parser(
        "reload",
        help="re-read the daemon's config file and apply it (admin)",
        description="Ask the daemon to re-read and apply the config file it was started with. "
        "Prints what changed; exit 1 naming every problem if the file is invalid or a change "
        "needs a restart (then nothing changed).",
    )
    with_socket(reload)
    _add_audit_commands(commands)
    return parser


def _add_audit_commands(commands: Any) -> None:
    audit = commands.add_parser("audit", help="check or search audit trail files (docs/audit.md)")
    tools = audit.add_subparsers(dest="audit_command", required=True, metavar="TOOL")
    verify = tools.add_parser(
        "verify",
        help="exit 0 if the files' chain is whole, 1 naming the first broken record",
        description="Recompute the chain over FILE... in the order given (oldest first) and "
        "name the first modified, deleted, inserted, reordered or truncated record.",
    )
    verify.add_argument("files", nargs="+", type=Path, metavar="FILE")
    verify.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="SEQ:CHAIN",
        help="an audit.checkpoint from the operational log that the files must match",
    )
    query = tools.add_parser(
        "query",
        help="the records matching every filter given, or their --summary",
        description="Filter audit records (all filters must match) and print them, or with "
        "--summary the signatures per peer and key version and the refusals per reason.",
    )
    query.add_argument("files", nargs="+", type=Path, metavar="FILE")
    query.add_argument("--env", help="environment")
    query.add_argument("--event", help="event, e.g. signature.issued")
    query.add_argument("--uid", type=int, help="peer uid")
    query.add_argument("--user", help="peer user name")
    query.add_argument("--exe", help="peer executable")
    query.add_argument("--key-version", help="key version")
    query.add_argument(
        "--since", help="from this ISO 8601 time (inclusive), e.g. 2026-12-01T10:00Z"
    )
    query.add_argument("--until", help="before this ISO 8601 time (exclusive)")
    query.add_argument("--summary", action="store_true", help="counts instead of records")
    query.add_argument("--json", action="store_true", help="JSON (records: one per line)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(_config_path(args))
        if args.command == "check-config":
            return _check_config(_config_path(args), online=args.online)
        if args.command == "import-key":
            return _import_key(_config_path(args), args.env, args.key_file)
        if args.command == "audit":
            return _audit(args)
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


def _import_key(path: Path, environment: str, key_file: Path | None) -> int:
    from sidkeyd.errors import SourceError
    from sidkeyd.import_key import read_key, transit_target

    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    try:
        source = transit_target(config, environment)
        key = read_key(key_file, sys.stdin)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"sidkeyd: {problem.key}: {problem.reason}", file=sys.stderr)
        return EXIT_CONFIG
    from sidkeyd.sources.vault.byok import import_transit_key

    try:
        imported = import_transit_key(source, config.environments[environment], key)
    except SourceError as exc:
        exc.scrub([key.reveal()])
        print(f"sidkeyd: {exc.code}: {exc.reason}", file=sys.stderr)
        return EXIT_NEGATIVE
    _print_json(
        {
            "environment": environment,
            "transit_key": imported.transit_key,
            "key_version": str(imported.version),
            "created": imported.created,
        }
    )
    return EXIT_OK


def _serve(path: Path) -> int:
    from sidkeyd.keystore import KeyStore
    from sidkeyd.log import configure_logging, get_logger, set_log_level
    from sidkeyd.server import Server

    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    store = KeyStore()
    configure_logging(config.log, store.secrets)
    try:
        Server(config, store, set_log_level=set_log_level).run()
    except StartupError as exc:
        get_logger().error("daemon.failed", reason=str(exc))
        return EXIT_UNAVAILABLE
    except OSError as exc:  # e.g. the socket's folder cannot be created or written
        get_logger().error("daemon.failed", reason=f"{type(exc).__name__}: {exc}")
        return EXIT_UNAVAILABLE
    return EXIT_OK


def _audit(args: argparse.Namespace) -> int:
    from sidkeyd.audit_verify import parse_checkpoint, report, verify

    # A peer's executable name need not be UTF-8 (a record holds it as \udcXX): print it
    # escaped rather than die on it under a strict UTF-8 locale.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    if args.audit_command == "query":
        return _audit_query(args)
    try:
        checkpoints = dict(parse_checkpoint(text) for text in args.checkpoint)
        verdict = verify(args.files, checkpoints)
    except ValueError as exc:
        print(f"sidkeyd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"sidkeyd: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    print(report(verdict))
    return EXIT_OK if verdict.ok else EXIT_NEGATIVE


def _audit_query(args: argparse.Namespace) -> int:
    from sidkeyd import audit_query

    try:
        filters = audit_query.Filters(
            environment=args.env,
            event=args.event,
            uid=args.uid,
            user=args.user,
            exe=args.exe,
            key_version=args.key_version,
            since=audit_query.parse_time(args.since) if args.since else None,
            until=audit_query.parse_time(args.until) if args.until else None,
        )
        matched = audit_query.query(args.files, filters)
    except ValueError as exc:
        print(f"sidkeyd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"sidkeyd: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    if args.summary:
        summarized = audit_query.summary(matched)
        print(
            json.dumps(summarized, indent=2)
            if args.json
            else audit_query.format_summary(summarized)
        )
    else:
        for record in matched:
            print(json.dumps(record) if args.json else audit_query.format_record(record))
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
        if args.command == "reload":
            return _reload(client)
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


def _reload(client: Client) -> int:
    status, payload = client.request("POST", "/v1/reload", {})
    if status == 200:
        changes = payload.get("changes") or []
        print(f"sidkeyd: reloaded, {len(changes)} change(s)")
        for change in changes:
            print(f"  {change}")
        return EXIT_OK
    error = payload.get("error")
    error = error if isinstance(error, dict) else {}
    print(f"sidkeyd: reload refused: {error.get('message', status)}", file=sys.stderr)
    for problem in error.get("problems") or []:
        print(f"  {problem.get('key')}: {problem.get('reason')}", file=sys.stderr)
    return EXIT_NEGATIVE


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
