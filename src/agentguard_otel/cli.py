"""The agentguard command: keygen, verify, policy check, pricing sync, models, wizard, spend, demo, serve."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agentguard_otel import config
from agentguard_otel.errors import AgentGuardError
from agentguard_otel.ledger.report import printable
from agentguard_otel.version import __version__

if TYPE_CHECKING:
    from agentguard_otel.console.records import Entry
    from agentguard_otel.pricing import PriceBook
    from agentguard_otel.receipts import VerifyReport


def _keygen(args: argparse.Namespace) -> int:
    from agentguard_otel.receipts import SigningKey

    key = SigningKey.generate(Path(args.path))
    print(f"key id:      {key.key_id}")
    print(f"private key: {args.path} (mode 0600)")
    print(f"public key:  {args.path}.pub")
    return 0


class _Progress:
    """A one-line progress bar on stderr, only when someone is watching."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        share = done / total
        bar = "#" * int(share * 30)
        print(f"\rverifying [{bar:<30}] {share:6.1%}", end="", file=sys.stderr, flush=True)
        self.shown = True

    def close(self) -> None:
        if self.shown:
            print(file=sys.stderr)


def _verify(args: argparse.Namespace) -> int:
    from agentguard_otel.receipts import load_public_keys, verify
    from agentguard_otel.receipts.verify import segment_files

    keys = load_public_keys([Path(p) for p in args.public_key])
    expect: dict[str, str] = {}
    for item in args.expect_head:
        chain, sep, head = item.rpartition("=")
        if not sep or not chain or not head:
            raise AgentGuardError(f"--expect-head takes CHAIN=HASH, got {item!r}")
        expect[chain] = head
    paths: list[Path] = [Path(p) for p in args.paths]
    trace = None
    if args.trace is not None:
        from agentguard_otel.console.records import chains, latest_trace, of_trace

        files = segment_files(paths)
        trace = _trace_id(args.trace, files, latest_trace)
        if trace is None:
            print("no receipt in these files carries a trace id (was the guard tracing?)", file=sys.stderr)
            return 1
        found = of_trace(files, trace)
        if not found:
            print(f"trace {trace}: no receipts of it in {', '.join(args.paths)}", file=sys.stderr)
            return 1
        involved = {entry.file for entry in found}
        paths = [path for group in chains(files) if any(str(p) in involved for p in group) for path in group]
    progress = _Progress(args.progress or sys.stderr.isatty())
    try:
        report = verify(paths, keys, expect_heads=expect or None, progress=progress, jobs=args.jobs)
    finally:
        progress.close()
    if trace is not None:
        return _print_trace(trace, found, report, args.json)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_report(report)
    return 0 if report.ok else 1


def _print_report(report: VerifyReport) -> None:
    # A receipt file is untrusted input: whatever it says is printed escaped (printable()).
    print(f"receipts checked: {report.receipts} in {len(report.chains)} chain(s)")
    for chain, head in sorted(report.chains.items()):
        print(printable(f"  {chain}: {head['receipts']} receipts, head seq {head['seq']} {head['hash']}"))
    for file, line in report.torn:
        print(printable(f"TORN LINE: {file}:{line} (an append was interrupted)"))
    if report.first_error is not None:
        err = report.first_error
        print(printable(f"FAILED: {err['file']}:{err['line']} chain {err['chain']} seq {err['seq']}: "
                        f"{err['reason']}"))
    else:
        print("OK: every receipt verifies against the trusted keys")


def _trace_id(text: str, files: list[Path], latest: Callable[[list[Path]], str | None]) -> str | None:
    from agentguard_otel.console.records import TRACE_ID

    wanted = text.strip().lower()
    if wanted == "latest":
        return latest(files)
    if not TRACE_ID.fullmatch(wanted):
        raise AgentGuardError(f"--trace takes a trace id (32 hex digits, as W3C trace context writes it) "
                              f"or latest, got {text!r}")
    return wanted


def _print_trace(trace: str, found: list[Entry], report: VerifyReport, as_json: bool) -> int:
    """A trace's decisions and settlements after the verdict on the chains that hold them."""
    from agentguard_otel.console.records import trace_table, view

    if as_json:
        print(json.dumps({"trace_id": trace, "verification": report.as_dict(),
                          "receipts": [view(entry) for entry in found]}, indent=2))
        return 0 if report.ok else 1
    print(f"trace {trace}: {len(found)} receipt(s); the chain(s) holding them verified whole:")
    _print_report(report)
    print(trace_table(found))
    return 0 if report.ok else 1


def _price_book(pricing: str | None = None, catalog_dir: str | None = None) -> PriceBook:
    """The prices the guard would use: overrides from ``pricing`` (default AGENTGUARD_PRICING) and
    the OpenRouter catalog imported into ``catalog_dir`` (default the data directory's)."""
    from agentguard_otel.pricing import PriceBook

    settings = config.resolve({"pricing": pricing})
    return PriceBook(overrides=settings.pricing,
                     catalog_dir=Path(catalog_dir) if catalog_dir else settings.catalog_dir)


def _verify_page(args: argparse.Namespace) -> int:
    from agentguard_otel.receipts.page import write_verify_page

    path = write_verify_page(args.output)
    print(f"wrote {path}: open it in any browser (it works from disk and fetches nothing) to verify receipts")
    return 0


def _policy_check(args: argparse.Namespace) -> int:
    from agentguard_otel.policy import load_policy

    prices = _price_book()
    policy = load_policy(Path(args.path), priced=prices.knows)
    caps = sum(len(rule.caps) for rule in policy.rules)
    print(f"{args.path}: OK — policy {policy.id} v{policy.version}, mode {policy.mode}, "
          f"{len(policy.rules)} rule(s), {caps} cap(s), digest {policy.digest}")
    return 0


def _pricing_sync(args: argparse.Namespace) -> int:
    from agentguard_otel.pricing import sync_openrouter_catalog

    catalog = Path(args.catalog_dir) if args.catalog_dir else config.resolve({}).catalog_dir
    count = sync_openrouter_catalog(args.source, catalog)
    print(f"imported {count} OpenRouter model prices into {catalog}")
    return 0


def _spend(args: argparse.Namespace) -> int:
    from agentguard_otel.ledger import open_ledger
    from agentguard_otel.ledger.report import counter_states, spend_table

    url = args.ledger or config.resolve({}).ledger
    ledger = open_ledger(url, existing=True)
    try:
        states = counter_states(ledger, args.prefix)
        location = ledger.location
    finally:
        ledger.close()
    if args.json:
        print(json.dumps([{
            "counter": s.key, "window_start": s.window_start.isoformat() if s.window_start else None,
            "spent_nano": s.spent_nano, "held_nano": s.held_nano, "limit_nano": s.limit_nano, "state": state,
        } for s, state in states], indent=2))
        return 0
    print(f"ledger: {location}")
    print(spend_table(states))
    return 0


_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def _ttl_seconds(text: str) -> int:
    number, unit = (text[:-1], text[-1]) if text[-1:] in _TTL_UNITS else (text, "s")
    if not number.isdigit() or int(number) <= 0:
        raise AgentGuardError(f"--ttl takes a positive duration such as 90s, 15m, 8h or 1d, got {text!r}")
    return int(number) * _TTL_UNITS[unit]


def _claim_issue(args: argparse.Namespace) -> int:
    import secrets
    import time

    from agentguard_otel.receipts import SigningKey
    from agentguard_otel.scope import CapabilityClaim, encode_claim

    key = SigningKey.load(Path(args.key))
    now = int(time.time())
    bound = {name: value for name in ("tenant", "team", "user", "task") if (value := getattr(args, name))}
    claim = CapabilityClaim(issuer=args.issuer, capability=args.capability, scope=bound, not_before=now,
                            expires=now + _ttl_seconds(args.ttl), claim_id=secrets.token_hex(8))
    print(encode_claim(claim, key.sign))
    return 0


def _models(args: argparse.Namespace) -> int:
    from agentguard_otel.pricing import catalog

    selection = catalog.Selection(
        provider=args.provider, search=args.search, sort=args.sort,
        max_input_nano=None if args.max_input is None else
        catalog.parse_usd_per_mtok(args.max_input, "--max-input-usd-per-mtok"),
        max_output_nano=None if args.max_output is None else
        catalog.parse_usd_per_mtok(args.max_output, "--max-output-usd-per-mtok"))
    prices = selection.select(_price_book(args.pricing, args.catalog_dir).catalog())
    if args.json:
        print(json.dumps([catalog.as_json(price) for price in prices], indent=2))
    else:
        print(catalog.table(prices))
    return 0


def _wizard(args: argparse.Namespace) -> int:
    from agentguard_otel import wizard

    models = wizard.Catalog(_price_book(args.pricing, args.catalog_dir))
    overrides = config.resolve({"pricing": args.pricing}).pricing
    pricing = Path(overrides) if isinstance(overrides, str) else None
    output = Path(wizard.output_path(args.output))
    if not args.non_interactive:
        if not sys.stdin.isatty():
            raise AgentGuardError("the wizard asks on a terminal; without one, give the answers as flags with "
                                  "--non-interactive (--template, --team, --daily-usd ...)")
        return wizard.interactive(models, output, force=args.force, pricing=pricing)
    missing = [f"--{name.replace('_', '-')}" for name in ("template", "team", "daily_usd")
               if getattr(args, name) is None]
    if missing:
        raise AgentGuardError(f"--non-interactive needs {', '.join(missing)}")
    answers = wizard.answers_from_flags(models, template_key=args.template, team=args.team,
                                        daily_usd=args.daily_usd, minute_usd=args.minute_usd, model=args.model,
                                        downgrade_to=args.downgrade_to, per_user=args.per_user)
    policy = wizard.write_policy(output, answers, models.book, force=args.force)
    print(wizard.report(answers, output, policy, pricing))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from agentguard_otel.demo.run import run_demo

    return run_demo(calls=args.calls)


def _serve(args: argparse.Namespace) -> int:
    from agentguard_otel.console.server import Console, ConsoleServer
    from agentguard_otel.console.usage import shown_url
    from agentguard_otel.policy import load_policy
    from agentguard_otel.receipts import load_public_keys

    settings = config.resolve({})
    key_paths = [Path(p) for p in args.public_key] or [Path(f"{settings.signing_key}.pub")]
    if not args.public_key and not key_paths[0].is_file():
        raise AgentGuardError(f"serve needs --public-key: the trusted keys receipts are verified with "
                              f"(the default key's {key_paths[0]} does not exist)")
    receipts = [Path(p) for p in args.receipts] or [settings.receipts]
    for path in receipts if args.receipts else []:
        if not path.exists():
            raise AgentGuardError(f"{path}: no such receipts file or directory")
    console = Console(ledger=args.ledger or settings.ledger, receipts=receipts,
                      keys=load_public_keys(key_paths),
                      key_pems=[(path.name, path.read_text(encoding="utf-8")) for path in key_paths],
                      policy=load_policy(Path(args.policy)) if args.policy else None)
    server = ConsoleServer(console, args.host, args.port, args.auth_token)
    print(f"agentguard console: {server.url} (read-only; ledger {shown_url(console.ledger)}; receipts "
          f"{', '.join(str(p) for p in receipts)}){' — requests need the auth token' if args.auth_token else ''}",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _price_sources(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pricing", metavar="FILE", help="price overrides (default: AGENTGUARD_PRICING)")
    parser.add_argument("--catalog-dir", help="where `pricing sync` imported the OpenRouter catalog "
                                              "(default: the data directory)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentguard", description="In-process LLM spend governance: keys, receipts, policies, prices and spend.")
    parser.add_argument("--version", action="version", version=f"agentguard-otel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("keygen", help="create an Ed25519 signing key (private 0600 + .pub)")
    p.add_argument("path", nargs="?", default=str(config.data_dir() / "agentguard.key"))
    p.set_defaults(func=_keygen)

    p = sub.add_parser("verify", help="verify receipt logs against trusted public keys")
    p.add_argument("paths", nargs="+", help="receipt files or directories")
    p.add_argument("--public-key", action="append", required=True,
                   help="trusted public key (PEM) or keys file; repeatable. Keys inside receipts are never trusted")
    p.add_argument("--expect-head", action="append", default=[], metavar="CHAIN=HASH",
                   help="the chain's last receipt hash as recorded elsewhere (span, log backend): detects truncation")
    p.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="check the chains of different files on N processes (same report as 1; default 1)")
    p.add_argument("--trace", metavar="ID|latest",
                   help="only the chains holding this trace's receipts (latest: the newest receipt's trace); "
                        "prints the trace's decisions and settlements")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=_verify)

    p = sub.add_parser("verify-page", help="write the self-contained verify page: receipts checked in a browser")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="the HTML file to write")
    p.set_defaults(func=_verify_page)

    p = sub.add_parser("policy", help="policy tools")
    policy_sub = p.add_subparsers(dest="policy_command", required=True)
    check = policy_sub.add_parser("check", help="validate a policy file (errors name file, line and field)")
    check.add_argument("path")
    check.set_defaults(func=_policy_check)

    p = sub.add_parser("pricing", help="price tables")
    pricing_sub = p.add_subparsers(dest="pricing_command", required=True)
    sync = pricing_sub.add_parser("sync", help="import an OpenRouter /api/v1/models catalog")
    sync.add_argument("--from", dest="source", required=True, metavar="FILE|URL")
    sync.add_argument("--catalog-dir", help="where the imported catalog is kept (default: the data directory)")
    sync.set_defaults(func=_pricing_sync)

    p = sub.add_parser("models", help="the priced model catalog, cheapest first")
    p.add_argument("--provider", help="only this provider's models (openai, anthropic, aws, openrouter, *)")
    p.add_argument("--search", metavar="TEXT", help="only ids (provider/model) containing TEXT, any case")
    p.add_argument("--max-input-usd-per-mtok", dest="max_input", metavar="USD",
                   help="only models whose input rate is at most this (exact decimal)")
    p.add_argument("--max-output-usd-per-mtok", dest="max_output", metavar="USD",
                   help="only models whose output rate is at most this (exact decimal)")
    p.add_argument("--sort", default="input", choices=("input", "output"), help="the rate sorted on first")
    _price_sources(p)
    p.add_argument("--json", action="store_true", help="a JSON list for scripts")
    p.set_defaults(func=_models)

    p = sub.add_parser("wizard", help="write a policy for a team from a task template, step by step")
    p.add_argument("--non-interactive", action="store_true", help="take every answer from the flags")
    p.add_argument("--template", help="code-review, risk-analysis, payment-approval, chargeback-evidence, "
                                      "agent-support or repo-scan")
    p.add_argument("--team", help="the team the policy's rule matches")
    p.add_argument("--daily-usd", help="the team's daily cap in USD")
    p.add_argument("--minute-usd", help="the rolling per-minute runaway cap (default: a 20th of the daily cap)")
    p.add_argument("--model", help="provider/model instead of the template's (see agentguard models)")
    p.add_argument("--downgrade-to", help="the cheaper model past the daily cap, or none to block")
    p.add_argument("--per-user", action="store_true", help="each user gets their own caps")
    p.add_argument("--output", default="policy.yaml", help="the policy file to write (default policy.yaml)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    _price_sources(p)
    p.set_defaults(func=_wizard)

    p = sub.add_parser("spend", help="current window totals per scope counter")
    p.add_argument("--ledger", help="ledger URL (default: AGENTGUARD_LEDGER or the embedded SQLite ledger)")
    p.add_argument("--prefix", default="", help="only counters whose key starts with this (e.g. a rule id)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_spend)

    p = sub.add_parser("claim", help="signed capability claims")
    claim_sub = p.add_subparsers(dest="claim_command", required=True)
    issue = claim_sub.add_parser("issue", help="sign a capability claim bound to a scope; prints the token")
    issue.add_argument("--key", required=True, help="the issuer's Ed25519 private key")
    issue.add_argument("--issuer", required=True, help="the issuer id the policy's capability_issuers lists")
    issue.add_argument("--capability", required=True,
                       choices=("read_only", "data_write", "payment_initiate", "payment_execute"))
    for name in ("tenant", "team", "user", "task"):
        issue.add_argument(f"--{name}", help=f"the {name} the claim is bound to (a call must match it)")
    issue.add_argument("--ttl", default="15m", help="how long the claim is valid: 90s, 15m, 8h, 1d (default 15m)")
    issue.set_defaults(func=_claim_issue)

    p = sub.add_parser("demo", help="a short guarded agent loop against a built-in local endpoint")
    p.add_argument("--calls", type=int, default=12, help="agent loop iterations")
    p.set_defaults(func=_demo)

    p = sub.add_parser("serve", help="a local read-only console: spend, decisions, receipts verified in place")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; others need --auth-token)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one, printed)")
    p.add_argument("--ledger", help="ledger URL (default: AGENTGUARD_LEDGER or the embedded SQLite ledger)")
    p.add_argument("--receipts", action="append", default=[], metavar="DIR",
                   help="receipt directory or file; repeatable (default: AGENTGUARD_RECEIPTS or the embedded one)")
    p.add_argument("--public-key", action="append", default=[],
                   help="trusted public key (PEM) or keys file; repeatable (default: the embedded key's .pub)")
    p.add_argument("--policy", help="the policy file, to show each cap's action and reason")
    p.add_argument("--auth-token", help="require Authorization: Bearer TOKEN (or ?token= on pages) on every request")
    p.set_defaults(func=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (AgentGuardError, OSError, ValueError) as exc:
        print(f"agentguard: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
