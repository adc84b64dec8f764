"""`rlhf feedback`: run the annotation app and move data in and out of the feedback store.

    rlhf feedback migrate    --db URL                      create or upgrade the schema
    rlhf feedback annotators add alice --role admin --db URL   prints alice's API token (once)
    rlhf feedback annotators rename alice --to alice.b --db URL
    rlhf feedback import     --db URL --file items.jsonl   (or --langsmith-project NAME)
    rlhf feedback generate   --db URL --model M [--adapter A] --prompts prompts.jsonl --num-candidates 4
    rlhf feedback serve      --db URL [--host 127.0.0.1] [--port 8000]
    rlhf feedback progress | agreement | settings | sync   --db URL
    rlhf feedback export     --db URL --format pairs|kto|sft --out DIR [--aggregation majority|all] [--overwrite]
    rlhf feedback doctor     --db URL                      stored text UTF-8 cannot encode, by table/row/column

``--db`` takes a SQLAlchemy URL (``sqlite:///feedback.db``, ``postgresql://user@host/db``) or a
file path (SQLite); it defaults to ``$RLHF_FEEDBACK_DB`` or ``feedback.db``.

Options that become stored or sent text (names, model, project names...) are refused when UTF-8
cannot encode them (undecodable command-line bytes arrive as lone surrogates); file and database
paths go to the operating system as given, where such bytes are valid.

Every refusal is one line on standard error (``rlhf feedback COMMAND: error: ...``, exit status 2)
naming the file, line, field or option to fix, never a traceback: a store refusal, bad data, a file
the system cannot open or write, a database that cannot be reached.
"""

from __future__ import annotations

import argparse
import difflib
import getpass
import ipaddress
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn

import sqlalchemy as sa

from feedback import agreement, export, importer, langsmith_sync
from feedback.enums import Mode, Role
from feedback.store import LoginLimits, Store, StoreError, accounts, migrate, redact, unencodable
from rlhf_core.errors import USER_ERRORS, DataError
from rlhf_core.options import ArgumentParser, other_spellings

logger = logging.getLogger(__name__)


PATH_OPTIONS = {"db", "file", "out", "prompts", "guidelines"}  # handed to the OS, not stored as text


def _password(args: argparse.Namespace) -> str | None:
    if getattr(args, "password_stdin", False):
        try:
            return sys.stdin.readline().rstrip("\n")
        except UnicodeDecodeError as error:
            raise StoreError(f"--password-stdin: the password is not UTF-8 text ({error.reason})") from None
    if getattr(args, "password", False):
        first = getpass.getpass("password: ")
        if first != getpass.getpass("again: "):
            raise StoreError("the two passwords differ")
        return first
    return None


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, default=str))


def _shown(name: str) -> str:
    """A stored name as one printable field: one stored before names were checked may hold a tab or a newline,
    which would forge a line or a column of the listing, so such a name is printed escaped (as Python writes it)."""
    return name if name.isprintable() else repr(name)


def _proxies(value: str) -> list[str]:
    """``--trusted-proxies``: comma-separated addresses or networks (a host name would silently match nothing)."""
    proxies = [item.strip() for item in value.split(",") if item.strip()]
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{proxy!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24)"
            ) from None
    return proxies


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 <= number < 1.0:
        raise argparse.ArgumentTypeError(f"expected a share from 0 up to (not including) 1, got {value}")
    return number


def _positive(value: str) -> int:
    number = int(value) if value.strip().isdigit() else 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return number


# ----------------------------------------------------------------------------------------------
# Commands (each takes the parsed arguments)


def cmd_migrate(args: argparse.Namespace) -> None:
    revision = migrate(args.db)
    print(f"{redact(args.db)}: schema at revision {revision}")


def cmd_serve(args: argparse.Namespace) -> None:
    # the web stack (uvicorn, FastAPI) only for the command that serves: the others start faster
    import uvicorn

    from feedback.app import create_app

    store = Store.create(args.db)
    for problem in store.name_problems():
        logger.warning("%s", problem)
    if not any(a.is_admin for a in store.annotators()):
        logger.warning("no admin yet: rlhf feedback annotators add NAME --role admin --db %s", redact(args.db))
    client = None if args.no_sync else langsmith_sync.client_from_env()
    sync = langsmith_sync.LangSmithSync(store, client) if client is not None else None
    limits = LoginLimits(
        per_pair=args.login_failures,
        per_address=args.login_address_ceiling,
        per_name=args.login_name_ceiling,
        window_s=args.login_window_s,
    )
    accounts.HASHING.limit = args.hash_memory_mib << 20
    app = create_app(
        store,
        max_body_bytes=args.max_body_bytes,
        on_answer=sync.notify if sync else None,
        login_limits=limits,
        trusted_proxies=args.trusted_proxies,
    )
    if sync:
        sync.start()
        logger.info("LangSmith sync on (%s)", os.environ.get("LANGSMITH_ENDPOINT", "default endpoint"))
    print(f"feedback app on http://{args.host}:{args.port}/ (admin: /admin) - database {redact(args.db)}", flush=True)
    try:
        # proxy_headers=False: which proxies to believe is the app's setting (--trusted-proxies); uvicorn's own
        # default would believe X-Forwarded-For from any process on this machine.
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=args.access_log,
            proxy_headers=False,
        )
    finally:
        if sync:
            sync.stop()
        store.close()


def cmd_annotators(args: argparse.Namespace) -> None:
    store = Store(args.db)
    if args.action == "list":
        for a in store.annotators():
            print(f"{_shown(a.name)}\t{a.role}\t{'active' if a.active else 'inactive'}")
        for problem in store.name_problems():
            print(f"warning: {problem}", file=sys.stderr)
        return
    if args.action == "add":
        token = store.add_annotator(args.name, args.role, password=_password(args))
        print(f"added {args.role} {store.annotator(args.name).name!r}; API token (shown once):\n{token}")
    elif args.action == "rename":
        if not args.to:
            raise StoreError("annotators rename: give the new name with --to NEW")
        print(f"{args.name!r} is now {store.rename_annotator(args.name, args.to)!r}")
    elif args.action == "token":
        print(store.new_token(args.name))
    elif args.action == "password":
        password = _password(args)
        if not password:
            raise StoreError("give --password (prompt) or --password-stdin")
        store.set_password(args.name, password)
        print(f"password of {args.name!r} set")
    elif args.action in ("deactivate", "activate"):
        store.set_active(args.name, args.action == "activate")
        print(f"{args.name!r} {args.action}d")


def cmd_import(args: argparse.Namespace) -> None:
    store = Store(args.db)
    if args.file:
        report = importer.import_file(store, args.file)
        unreadable = 0
    else:
        from langsmith import Client

        report, unreadable = importer.import_langsmith(
            store,
            Client(),
            args.langsmith_project,
            limit=args.limit,
            run_type=args.run_type or None,
            input_key=args.input_key,
            output_key=args.output_key,
        )
    print(
        f"prompts: {report.prompts_added} added, {report.prompts_existing} already there; "
        f"candidates: {report.candidates_added} added, {report.candidates_existing} already there"
        + (f"; {unreadable} run(s) without a readable prompt and output skipped" if unreadable else "")
    )


def cmd_export(args: argparse.Namespace) -> None:
    report = export.export(
        Store(args.db),
        args.format,
        args.out,
        aggregation=args.aggregation,
        test_fraction=args.test_fraction,
        seed=args.seed,
        writers=args.writers,
        push_to_hub=args.push_to_hub,
        overwrite=args.overwrite,
    )
    rows = ", ".join(f"{name} {count}" for name, count in report.rows.items())
    print(f"{args.format} ({args.aggregation}) from {report.answers} answers on {report.items} items: {rows} rows")
    if set(report.rows_per_batch) - {export.UNBATCHED}:
        print("  rows per round: " + ", ".join(f"{batch} {count}" for batch, count in report.rows_per_batch.items()))
    for path in report.files:
        print(f"  {path}")
    if report.pushed_to:
        print(f"  pushed to the hub: {report.pushed_to}")


def cmd_progress(args: argparse.Namespace) -> None:
    progress = Store(args.db).progress()
    if args.json:
        _print_json(asdict(progress))
        return
    print(
        f"{progress.items} items: {progress.complete} complete ({progress.overlap} annotator(s) each), "
        f"{progress.in_progress} in progress, {progress.untouched} untouched; {progress.answers} answers"
    )
    for a in progress.annotators:
        print(f"  {_shown(a.name):<20} {a.role:<10} {a.answers:>6} answers {a.skipped:>5} skipped")
    if any(b.batch is not None for b in progress.batches):
        print("per round:")
        for b in progress.batches:
            name = f"round {b.batch}" if b.batch is not None else "no round"
            score = "" if b.mean_selection_score is None else f", mean selection score {b.mean_selection_score:.3f}"
            print(
                f"  {name:<10} {b.selected_by or '-':<20} {b.items:>6} items {b.complete:>6} complete "
                f"{b.answers:>6} answers{score}"
            )


def cmd_agreement(args: argparse.Namespace) -> None:
    rows = agreement.agreement(Store(args.db).records())
    if args.json:
        _print_json([asdict(r) for r in rows])
    else:
        print(agreement.format_table(rows))


def cmd_settings(args: argparse.Namespace) -> None:
    store = Store(args.db)
    try:
        guidelines = Path(args.guidelines).read_text(encoding="utf-8") if args.guidelines else None
    except UnicodeDecodeError as error:
        raise DataError(f"--guidelines {args.guidelines}: byte {error.start} is not UTF-8 ({error.reason})") from None
    except OSError as error:
        raise DataError(f"--guidelines {args.guidelines}: {error.strerror}") from None
    settings = store.update_settings(
        overlap=args.overlap, mode=args.mode, lease_minutes=args.lease_minutes, guidelines=guidelines
    )
    _print_json(asdict(settings))


def cmd_doctor(args: argparse.Namespace) -> None:
    problems = Store(args.db).encoding_problems()
    for p in problems:
        print(f"{p.table}\trow {p.row}\t{p.column}\t{p.problem}")
    if problems:
        raise StoreError(
            f"{len(problems)} stored value(s) hold text UTF-8 cannot encode (listed above); the app serves "
            "them escaped: correct or delete those rows"
        )
    print(f"{redact(args.db)}: every stored text encodes as UTF-8")
    names = Store(args.db).name_problems()
    for line in names:
        print(line)
    if names:
        raise StoreError(f"{len(names)} annotator name(s) people cannot tell apart (listed above)")
    print(f"{redact(args.db)}: every annotator name is distinct and visible")


def cmd_sync(args: argparse.Namespace) -> None:
    client = langsmith_sync.client_from_env()
    if client is None:
        raise StoreError("LangSmith is not configured: set LANGSMITH_API_KEY (and LANGSMITH_ENDPOINT)")
    store = Store(args.db)
    result = langsmith_sync.LangSmithSync(store, client).run_once()
    print(
        f"runs created {result.runs_created}, failed {result.runs_failed}; answers sent {result.sent}, "
        f"failed {result.failed}; now {asdict(store.sync_status())}"
    )


# ----------------------------------------------------------------------------------------------
# Parser


# Adds one subcommand: called with the factory that makes a subcommand (name, handler, help) with --db.
CommandFactory = Callable[[str, Callable[[argparse.Namespace], None], str], argparse.ArgumentParser]
Extension = Callable[[CommandFactory], None]


def make_parser(extensions: Sequence[Extension] = ()) -> argparse.ArgumentParser:
    """The parser of every feedback command, plus the ``extensions``' (commands that need more than the store).

    ``rlhf feedback generate`` needs a model, which this package never imports: the ``rlhf`` side
    adds it as an extension (:mod:`rlhf.feedback_cli`).
    """
    parser = ArgumentParser(
        prog="rlhf feedback", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    default_db = os.environ.get("RLHF_FEEDBACK_DB", "feedback.db")

    def command(name: str, handler: Callable[[argparse.Namespace], None], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--db", default=default_db, help="database URL or SQLite file (default: %(default)s)")
        sub.set_defaults(handler=handler)
        return sub

    command("migrate", cmd_migrate, "create or upgrade the database schema")

    serve = command("serve", cmd_serve, "start the web app (REST API, annotation page /, admin page /admin)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get 413")
    serve.add_argument("--no-sync", action="store_true", help="do not send answers to LangSmith even if configured")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--access-log", action="store_true", help="log every request")
    defaults = LoginLimits()
    for option, default, counted in (
        ("--login-failures", defaults.per_pair, "of a name from one address"),
        ("--login-address-ceiling", defaults.per_address, "from one address, whatever the names"),
        ("--login-name-ceiling", defaults.per_name, "of one name, whatever the addresses"),
    ):
        serve.add_argument(
            option, type=_positive, default=default, help=f"failed logins {counted} before 429 (%(default)s)"
        )
    serve.add_argument(
        "--login-window-s", type=float, default=defaults.window_s, help="seconds failed logins count (%(default)s)"
    )
    serve.add_argument(
        "--trusted-proxies",
        type=_proxies,
        default=[],
        metavar="ADDRESSES",
        help="comma-separated addresses or networks of reverse proxies whose X-Forwarded-For is believed "
        "(default: none; the connection's address is the client's)",
    )
    serve.add_argument(
        "--hash-memory-mib",
        type=_positive,
        default=accounts.HASH_MEMORY_MIB,
        help="memory password hashing may use at once; logins beyond it wait their turn (%(default)s MiB: "
        "4 at a time at scrypt's default cost, a little over 128 MiB each)",
    )

    people = command("annotators", cmd_annotators, "add and list annotators, issue tokens, set passwords")
    people.add_argument("action", choices=["add", "list", "token", "password", "deactivate", "activate", "rename"])
    people.add_argument("name", nargs="?", help="the annotator's name (all actions but list)")
    people.add_argument("--to", help="rename: the new name")
    people.add_argument("--role", choices=[r.value for r in Role], default=Role.ANNOTATOR.value)
    people.add_argument("--password", action="store_true", help="set a password (asked twice)")
    people.add_argument("--password-stdin", action="store_true", help="read the password from standard input")

    imp = command("import", cmd_import, "import items from a JSONL file or LangSmith runs")
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="JSONL/JSON/CSV/Parquet rows: {prompt, id?, candidates?}")
    source.add_argument("--langsmith-project", help="import the runs of this LangSmith project (list_runs)")
    imp.add_argument("--limit", type=int, help="at most this many runs")
    imp.add_argument("--run-type", default="llm", help="run type to import ('' for all; default: %(default)s)")
    imp.add_argument("--input-key", help="the inputs key that holds the prompt (default: guessed)")
    imp.add_argument("--output-key", help="the outputs key that holds the response (default: guessed)")

    exp = command("export", cmd_export, "write pairs / KTO / SFT datasets from the answers")
    exp.add_argument("--format", choices=export.FORMATS, required=True)
    exp.add_argument("--out", required=True, help="output folder: new or empty, or an earlier export with --overwrite")
    exp.add_argument(
        "--overwrite", action="store_true", help="replace the whole folder of an earlier export (never merge into it)"
    )
    exp.add_argument("--aggregation", choices=export.AGGREGATIONS, default="majority")
    exp.add_argument("--test-fraction", type=_fraction, default=0.1, help="share of prompts in the test split")
    exp.add_argument("--seed", type=int, default=0, help="changes which prompts go to the test split")
    exp.add_argument("--writers", nargs="+", choices=export.WRITERS, default=list(export.WRITERS))
    exp.add_argument("--push-to-hub", metavar="REPO", help="also push to this hub dataset repo (needs HF_TOKEN)")

    for name, handler, help in (
        ("progress", cmd_progress, "items complete / in progress, answers per annotator and per round"),
        ("agreement", cmd_agreement, "Krippendorff's alpha per question"),
    ):
        command(name, handler, help).add_argument("--json", action="store_true", help="print JSON")

    settings = command("settings", cmd_settings, "change overlap, question mode, lease and guidelines; prints them")
    settings.add_argument("--overlap", type=int, help="annotators per item")
    settings.add_argument("--mode", choices=[m.value for m in Mode], help="what the annotation page asks")
    settings.add_argument("--lease-minutes", type=int, help="an unanswered item is offered to others after this")
    settings.add_argument("--guidelines", help="a markdown file with the annotation guidelines")

    command("sync", cmd_sync, "send answers not yet in LangSmith (the server does this continuously)")
    command("doctor", cmd_doctor, "list stored values whose text UTF-8 cannot encode (table, row, column)")
    for extension in extensions:
        extension(command)
    return parser


def _unknown_option(parser: argparse.ArgumentParser, command: str, unknown: list[str]) -> NoReturn:
    """``unrecognized arguments`` with the closest option of the command, as ``rlhf <stage>`` says it."""
    actions = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = actions.choices[command]
    declared = [o for o in sub._option_string_actions if o.startswith("--")]
    known = declared + [other for o in declared for other in other_spellings(o)]  # answered in the user's spelling
    flag = next((u for u in unknown if u.startswith("-")), unknown[0]).split("=", 1)[0]
    match = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
    sub.error(f"unknown option {flag!r}" + (f" (did you mean '{match[0]}'?)" if match else ""))


def main(argv: Sequence[str] | None = None, extensions: Sequence[Extension] = ()) -> None:
    parser = make_parser(extensions)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _unknown_option(parser, args.command, unknown)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its INFO lines narrate every schema check
    if args.command == "annotators" and args.action != "list" and not args.name:
        make_parser(extensions).error(f"annotators {args.action}: give the annotator's name")
    for option, value in sorted(vars(args).items()):
        problem = unencodable(value) if isinstance(value, str) and option not in PATH_OPTIONS else None
        if problem is not None:
            parser.error(f"{'--' + option.replace('_', '-') if option != 'name' else 'NAME'}: {problem}")
    try:
        args.handler(args)
    except (StoreError, *USER_ERRORS) as error:
        _fail(args.command, str(error))
    except sa.exc.DBAPIError as error:  # the database refused or could not be reached: its driver's first line
        reason = (str(error.orig).strip() or type(error.orig).__name__).splitlines()[0]
        _fail(args.command, f"database {redact(args.db)}: {reason}")
    except sa.exc.ArgumentError as error:  # a --db URL SQLAlchemy cannot read (an unknown scheme)
        _fail(args.command, f"--db: {error}")
    except OSError as error:  # a file the system cannot open, read or write, named as the system names it
        _fail(args.command, f"{error.filename}: {error.strerror}" if error.filename else str(error))


def _fail(command: str, message: str) -> None:
    print(f"rlhf feedback {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)
