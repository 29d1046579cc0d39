"""aiadmin-ops: the operator command line (playbooks through ansible-runner, and the lab)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

from aiadmin_ops import lab

ROOT = Path(__file__).resolve().parents[2]
LEDGER_DIR = ROOT / ".artifacts" / "ledger"
INVENTORIES = {"lab": "inventories/lab/hosts.yml", "production": "inventories/production/hosts.yml"}
LAB_VAULT = f"lab@{ROOT / 'inventories/lab/vault-password.LAB-ONLY.txt'}"
# The migration's phases, in order (the playbook records finished ones in the ledger).
MIGRATE_PHASES = ["confirm", "preflight", "backups", "deploy", "cutover", "smoke", "verdict"]

PLAYBOOKS = {
    "gates": ("playbooks/gates.yml", "read-only go/no-go report (database reachability and pool)", False),
    "provision": ("playbooks/provision.yml", "provision the new host (roles base ... xray)", False),
    "deploy": ("playbooks/deploy.yml", "deploy the application", False),
    "migrate": ("playbooks/migrate.yml", "the migration window old -> new, with automatic rollback", True),
    "rollback": ("playbooks/rollback.yml", "explicit rollback to the old host after a window", True),
    "decommission": ("playbooks/decommission.yml", "disable the app on the old host, archive its .env", True),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiadmin-ops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    lab_p = sub.add_parser("lab", help="the local podman lab")
    lab_sub = lab_p.add_subparsers(dest="action", required=True)
    lab_sub.add_parser("up", help="create or repair the lab (idempotent)")
    down_p = lab_sub.add_parser("down", help="remove the lab's containers and networks")
    down_p.add_argument("--purge-images", action="store_true", help="also remove the lab images")
    status_p = lab_sub.add_parser("status", help="show what exists and whether it is healthy")
    status_p.add_argument("--json", action="store_true")

    for name, (_, help_text, needs_confirm) in PLAYBOOKS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("-i", "--inventory", default="lab",
                       help="'lab' (default), 'production' or a path to an inventory")
        p.add_argument("--check", action="store_true", help="dry run: gates only, nothing changes")
        p.add_argument("--limit", help="limit to these hosts")
        p.add_argument("-e", "--extra", action="append", default=[], metavar="KEY=VALUE",
                       help="extra variable (never a secret: secrets come from the vault)")
        p.add_argument("--timeout", type=int, default=3 * 3600, help="give up after this many seconds")
        p.add_argument("--report-dir", type=Path, default=None, help="where to write the JSON/HTML report")
        if needs_confirm:
            p.add_argument("--yes", action="store_true",
                           help="confirm non-interactively (for automation; the operator's decision)")
        if name == "migrate":
            p.add_argument("--probe-url", action="append", default=[],
                           help="health URL to poll through the cutover (repeatable; any healthy = up)")
            p.add_argument("--webhook", help="notification URL for start, end and rollback")
    return parser


def parse_extra(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"aiadmin-ops: error: -e expects KEY=VALUE, got {item!r}")
        if key.startswith("vault_"):
            raise SystemExit("aiadmin-ops: error: secrets come from the vault, never from the command line")
        # KEY={"a": 1} / KEY=[...]: a structured value (JSON); anything else stays a string.
        if value[:1] in ("{", "["):
            try:
                out[key] = json.loads(value)
                continue
            except json.JSONDecodeError as exc:
                raise SystemExit(f"aiadmin-ops: error: -e {key}: invalid JSON: {exc}") from None
        out[key] = value
    return out


def vault_ids(inventory: str) -> list[str]:
    if inventory == "lab":
        return [LAB_VAULT]
    pw_file = os.environ.get("AIADMIN_VAULT_PASSWORD_FILE")
    if not pw_file:
        raise SystemExit("aiadmin-ops: error: set AIADMIN_VAULT_PASSWORD_FILE to the vault password file "
                         "(mode 0600) for a non-lab inventory")
    return [f"prod@{pw_file}"]


def confirm(command: str, args: argparse.Namespace) -> bool:
    if args.check or getattr(args, "yes", False):
        return True
    if not sys.stdin.isatty():
        raise SystemExit(f"aiadmin-ops: error: {command} changes production state; confirm with --yes "
                         "(no terminal to ask on)")
    answer = input(f"Type '{command}' to confirm {command} on inventory {args.inventory}: ")
    return answer.strip() == command


def ledger_path(command: str, inventory: str) -> Path:
    tag = Path(inventory).stem if inventory not in INVENTORIES else inventory
    return LEDGER_DIR / f"{command}-{tag}.json"


def read_ledger(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def remaining_steps(ledger: dict) -> list[str]:
    done = set(ledger.get("done") or [])
    return [p for p in MIGRATE_PHASES if p not in done]


def run_command(args: argparse.Namespace) -> int:
    from aiadmin_ops import report
    from aiadmin_ops.runner import run_playbook

    playbook, _, needs_confirm = PLAYBOOKS[args.command]
    inventory = INVENTORIES.get(args.inventory, args.inventory)
    extravars: dict = parse_extra(args.extra)
    if needs_confirm:
        if not confirm(args.command, args):
            print("aiadmin-ops: not confirmed; nothing was done", file=sys.stderr)
            return 3
        if not args.check:
            extravars[f"{args.command}_confirmed"] = True
    ledger = ledger_path(args.command, args.inventory)
    extravars[f"{args.command}_ledger_path"] = str(ledger)
    if getattr(args, "webhook", None):
        extravars["migrate_webhook_url"] = args.webhook

    probe = None
    if args.command == "migrate" and not args.check:
        from aiadmin_ops.downtime import AnyProbe

        urls = args.probe_url or ["http://10.213.10.20:3000/health", "http://10.213.10.30:3000/health"]
        probe = AnyProbe(urls, interval=0.1)
        threading.Thread(target=probe.run, daemon=True).start()

    print(f"aiadmin-ops: {args.command} on {inventory}{' (check mode)' if args.check else ''}", flush=True)
    result = run_playbook(playbook, inventory, extravars=extravars, check=args.check, limit=args.limit,
                          vault_ids=vault_ids(args.inventory), timeout=args.timeout)
    downtime = None
    if probe is not None:
        probe.stop()
        downtime = probe.summary()
    remaining = remaining_steps(read_ledger(ledger)) if args.command == "migrate" and not result.ok else []
    data = report.build(result, args.command, downtime=downtime, remaining=remaining)
    json_path, html_path = report.write(data, args.report_dir or report.REPORTS)
    print(f"verdict: {result.verdict} in {result.ended - result.started:.1f}s")
    for failure in result.failures:
        print(f"  failed: [{failure['phase']}] {failure['task']} on {failure['host']}: {failure['msg']}")
    if downtime and downtime.get("longest_gap_ms") is not None:
        print(f"measured downtime: {downtime['longest_gap_ms']:.0f} ms")
    if remaining:
        print("remaining steps (re-run to continue from the first): " + " -> ".join(remaining))
    print(f"report: {json_path} and {html_path}")
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "lab":
            if args.action == "up":
                lab.up()
            elif args.action == "down":
                lab.down(purge_images=args.purge_images)
            elif args.action == "status":
                return 0 if lab.status(as_json=args.json) else 1
            return 0
        return run_command(args)
    except lab.LabError as exc:
        print(f"aiadmin-ops: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aiadmin-ops: interrupted; the next run repairs or resumes what was left half-done",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
