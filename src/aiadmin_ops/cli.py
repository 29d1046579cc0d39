"""aiadmin-ops: the operator command line (playbooks through ansible-runner, and the lab)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from aiadmin_ops import lab, secrets, state
from aiadmin_ops.runner import InventoryError  # the runner imports ansible_runner only when it runs

ROOT = state.ROOT
INVENTORIES = state.INVENTORIES
LAB_VAULT = f"lab@{ROOT / 'inventories/lab/vault-password.LAB-ONLY.txt'}"
# The migration's phases, in order (the playbook records finished ones in the ledger).
MIGRATE_PHASES = ["confirm", "preflight", "backups", "deploy", "cutover", "smoke", "verdict"]
# Commands whose playbook reads the migration's ledger (passed as migrate_ledger_path).
READS_MIGRATE_LEDGER = ("rollback", "decommission")
# Extra variables only the CLI sets.
RESERVED_EXTRAVARS = ("aiadmin_run", "aiadmin_state_dir")
LOCK_HELD = "run lock held by"
# Commands whose failure (and the success after it) goes to the alert webhook when one is set.
ALERTED = ("backup", "backup-fetch", "restore-test", "maintain", "migrate", "dr-rebuild", "dr-restore-db")
MAINTENANCE_JOBS = ("keys", "redis", "logs", "rotate-db", "rotate-redis", "weekly")
WEEKLY_PLAYBOOK = "playbooks/weekly.yml"  # maintain --job weekly (alone): the weekly window
MAINTENANCE_DEFAULT = ("keys", "redis", "logs")  # the rotations only when asked for

PLAYBOOKS = {
    "gates": ("playbooks/gates.yml", "read-only go/no-go report (database reachability and pool)", False),
    "provision": ("playbooks/provision.yml", "provision the new host (roles base ... xray)", False),
    "deploy": ("playbooks/deploy.yml", "deploy the application", False),
    "migrate": ("playbooks/migrate.yml", "the migration window old -> new, with automatic rollback", True),
    "rollback": ("playbooks/rollback.yml", "explicit rollback to the old host after a window", True),
    "decommission": ("playbooks/decommission.yml", "disable the app on the old host, archive its .env", True),
    "backup": ("playbooks/backup.yml", "a verified, encrypted database backup now, copied off-host, retention applied",
               False),
    "restore-test": ("playbooks/restore_test.yml", "restore the newest off-host backup into a scratch cluster, mark it",
                     False),
    "backup-fetch": ("playbooks/backup_fetch.yml", "copy the backups the hosts' timers kept off-host, verify, prune",
                     False),
    "backup-timers": ("playbooks/backup_timers.yml", "this controller's timers: backup-fetch, the weekly "
                      "restore-test, health --alert, the keys and Redis maintenance",
                      False),
    "dr-rebuild": ("playbooks/dr_rebuild.yml", "disaster recovery: rebuild a lost app host on a bare machine from the "
                   "verified backups (--check: the plan)", True),
    "dr-restore-db": ("playbooks/dr_restore_db.yml", "disaster recovery: restore the newest verified dump into the "
                      "new database instance the inventory names, repoint the app (--check: the plan)", True),
    "maintain": ("playbooks/maintenance.yml", "maintenance on the app host: expired session keys, the Redis context "
                 "cache, log rotation, password rotations, the weekly window (--job to choose, --dry-run to count "
                 "or plan only)", False),
    "unlock": ("playbooks/unlock.yml", "clear the run lock a dead run left on the hosts (--check: show holders)",
               True),
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
    lab_sub.add_parser("db-replacement",
                       help="create lab-db-new afresh: a new managed-PostgreSQL stand-in (own CA and address, "
                       "empty database) for dr-restore-db; prints the -e values that point at it")

    health_p = sub.add_parser("health", help="read-only health of the app hosts: database latency and pool, session "
                              "keys, PM2, Redis, egress, CA, backups (exit 0 ok, 1 warning, 2 critical, 3 unknown)")
    health_p.add_argument("-i", "--inventory", default="lab", help="'lab' (default), 'production' or a path")
    health_p.add_argument("--limit", help="limit to these hosts")
    health_p.add_argument("-e", "--extra", action="append", default=[], metavar="KEY=VALUE",
                          help="extra variable, e.g. health_hosts=old (never a secret)")
    health_p.add_argument("--json", action="store_true", help="one JSON document per run (schema_version 1)")
    health_p.add_argument("--watch", type=positive_int, metavar="N", help="run again every N seconds")
    health_p.add_argument("--times", type=positive_int, metavar="K", help="with --watch: stop after K runs")
    health_p.add_argument("--samples", type=positive_int, default=50,
                          help="SELECT 1 round trips timed for the latency percentiles (default 50)")
    health_p.add_argument("--latency-warn-ms", type=float, default=5.0, help="p95 above this is a warning (5)")
    health_p.add_argument("--latency-critical-ms", type=float, default=20.0, help="p95 above this is critical (20)")
    health_p.add_argument("--alert", action="store_true",
                          help="send each condition that turns bad (and recovers) to the alert webhook, with cooldowns")

    for name, (_, help_text, needs_confirm) in PLAYBOOKS.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("-i", "--inventory", default="lab",
                       help="'lab' (default), 'production' or a path to an inventory")
        p.add_argument("--check", action="store_true",
                       help="dry run: shows the lock holders, changes nothing" if name == "unlock"
                       else "dry run: gates only, nothing changes")
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
        if name.startswith("dr-"):
            p.add_argument("--host", help="the app host (inventory name) to recover (default: the new host)")
        if name == "maintain":
            p.add_argument("--job", action="append", choices=MAINTENANCE_JOBS, default=[],
                           help="a job to run (repeatable; default keys, redis, logs in that order; rotate-db "
                           "and rotate-redis only when named: the new password comes from the vault; weekly alone: "
                           "verified backup, .env backup, deploy, migration, health, watch)")
            p.add_argument("--dry-run", action="store_true", help="count what each job would do; change nothing")
            p.add_argument("--version", help="weekly: the release to deploy (default: the inventory's "
                           "aiadmin_app_version)")
            p.add_argument("--watch-seconds", type=positive_int, help="weekly: how long to watch after the restart "
                           "(default maintenance_weekly_watch_seconds, 600)")
        if name == "unlock":
            p.add_argument("--force", action="store_true",
                           help="remove the lock whoever holds it (default: only a holder proven dead)")
    return parser


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def alerter_for(inventory: Path, vids: list[str], extravars: dict):
    """The Alerter of the inventory's webhook (vault_aiadmin_alert_webhook_url; -e
    aiadmin_alert_webhook_url for an endpoint without a secret), or None when none is set."""
    from aiadmin_ops.alerts import Alerter
    from aiadmin_ops.runner import inventory_data, inventory_var, mentions

    url, chat = extravars.get("aiadmin_alert_webhook_url", ""), extravars.get("aiadmin_alert_chat_id", "")
    # The inventory names aiadmin_alert_webhook_url in plain text when it has one (its value is the
    # vault's): an inventory that does not is never decrypted for nothing.
    if not url and mentions(str(inventory), "aiadmin_alert_webhook_url"):
        data = inventory_data(str(inventory), vids)
        url = inventory_var(data, "vault_aiadmin_alert_webhook_url", "aiadmin_alert_webhook_url")
        chat = chat or inventory_var(data, "aiadmin_alert_chat_id")
    if not url:
        return None
    try:
        return Alerter(url, state.state_dir(), chat_id=str(chat))
    except ValueError as exc:
        raise SystemExit(f"aiadmin-ops: error: {exc}") from None


def alert_run(command: str, alerter, result) -> None:
    """A run of an ALERTED command: critical with its first failure, or ok (a recovery if it was alerted)."""
    from aiadmin_ops import alerts

    failure = result.failures[0] if result.failures else None
    summary = (f"{result.verdict}: [{failure['phase']}] {failure['task']}: {failure['msg']}" if failure
               else f"{result.verdict} in {result.ended - result.started:.0f} s")
    scope, conditions = alerts.run_condition(command, result.ok, summary)
    alerts.report(alerter.process(conditions, scope), sys.stdout)


def health_command(args: argparse.Namespace) -> int:
    from aiadmin_ops import health

    inventory = state.inventory_path(args.inventory)
    if not inventory.exists():
        print(f"aiadmin-ops: error: inventory {args.inventory!r} not found ({inventory})", file=sys.stderr)
        return health.EXIT[health.UNKNOWN]
    extravars = parse_extra(args.extra)
    extravars["aiadmin_state_dir"] = str(state.state_dir())
    vids = vault_ids(args.inventory)
    alerter = alerter_for(inventory, vids, extravars) if args.alert else None
    if args.alert and alerter is None:
        print("aiadmin-ops: error: --alert without an alert webhook: set vault_aiadmin_alert_webhook_url in the "
              "vault", file=sys.stderr)
        return health.EXIT[health.UNKNOWN]
    return health.main(args, str(inventory), vids, extravars, alerter)


def parse_extra(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"aiadmin-ops: error: -e expects KEY=VALUE, got {item!r}")
        if key.startswith("vault_") or secrets.looks_secret(key):
            raise SystemExit(f"aiadmin-ops: error: -e {key}: looks like a secret; secrets come from the vault, "
                             "never from the command line")
        if secrets.url_credentials(value):
            raise SystemExit(f"aiadmin-ops: error: -e {key}: a URL with a password "
                             f"({', '.join(secrets.url_credentials(value))}...); put it in the vault")
        if key in RESERVED_EXTRAVARS:
            raise SystemExit(f"aiadmin-ops: error: -e {key}: set by aiadmin-ops itself "
                             f"(the state directory comes from {state.STATE_ENV})")
        # KEY={"a": 1} / KEY=[...]: a structured value (JSON); anything else stays a string.
        if value[:1] in ("{", "["):
            try:
                out[key] = json.loads(value)
                continue
            except json.JSONDecodeError as exc:
                raise SystemExit(f"aiadmin-ops: error: -e {key}: invalid JSON: {exc}") from None
        out[key] = value
    return out


def check_webhook(url: str | None) -> None:
    """--webhook: an http(s) URL without a password in it (a URL that needs one is a secret: vault)."""
    if url is None:
        return
    if not url.lower().startswith(("http://", "https://")):
        raise SystemExit("aiadmin-ops: error: --webhook must be an http:// or https:// URL")
    if secrets.url_credentials(url):
        raise SystemExit("aiadmin-ops: error: --webhook carries a password; put that URL in the vault "
                         "(migrate_webhook_url from a vault_ variable)")


def is_lab(inventory: str) -> bool:
    """'lab', or any spelling of the lab's inventory path."""
    if inventory == "lab":
        return True
    try:
        return state.canonical_inventory(inventory) == state.canonical_inventory("lab")
    except OSError:
        return False


def vault_ids(inventory: str) -> list[str]:
    if is_lab(inventory):
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
    """<state>/ledger/<command>-<identity of the inventory>.json (however -i spelled it)."""
    return state.ledger_path(command, inventory)


def read_ledger(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def remaining_steps(ledger: dict) -> list[str]:
    done = set(ledger.get("done") or [])
    return [p for p in MIGRATE_PHASES if p not in done]


def new_run(command: str, inventory: str) -> dict:
    """aiadmin_run: who runs what, where; the playbooks write it into the run lock on the hosts."""
    return {
        "run_id": uuid.uuid4().hex[:12],
        "command": command,
        "controller": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inventory": state.identity(inventory),
    }


def build_extravars(args: argparse.Namespace, run: dict | None = None) -> dict:
    """Every extra variable of a run (call it after confirm(): it sets <command>_confirmed).

    -e KEY=VALUE, then what the CLI sets (and -e cannot override): aiadmin_run, aiadmin_state_dir,
    <command>_ledger_path, migrate_ledger_path (rollback, decommission), <command>_confirmed
    (commands that need confirmation, unless --check), unlock_force, migrate_webhook_url."""
    command = args.command
    _, _, needs_confirm = PLAYBOOKS[command]
    var = command.replace("-", "_")  # restore-test -> restore_test_ledger_path
    extravars: dict = parse_extra(args.extra)
    if needs_confirm and not args.check:
        extravars[f"{var}_confirmed"] = True
    extravars["aiadmin_state_dir"] = str(state.state_dir())
    extravars["aiadmin_run"] = run if run is not None else new_run(command, args.inventory)
    extravars[f"{var}_ledger_path"] = str(ledger_path(command, args.inventory))
    if command in READS_MIGRATE_LEDGER:
        extravars["migrate_ledger_path"] = str(ledger_path("migrate", args.inventory))
    if command == "unlock":
        extravars["unlock_force"] = bool(getattr(args, "force", False))
    if getattr(args, "host", None):
        extravars["dr_host"] = args.host
    if getattr(args, "webhook", None):
        extravars["migrate_webhook_url"] = args.webhook
    if command == "maintain":
        extravars["maintenance_jobs"] = [job.replace("-", "_") for job in MAINTENANCE_JOBS
                                         if job in args.job] or list(MAINTENANCE_DEFAULT)
        extravars["maintenance_dry_run"] = bool(args.dry_run)
        if args.version:
            extravars["aiadmin_app_version"] = args.version
        if args.watch_seconds:
            extravars["maintenance_weekly_watch_seconds"] = args.watch_seconds
    return extravars


def playbook_of(args: argparse.Namespace) -> str:
    """The command's playbook; maintain --job weekly runs the weekly window's own playbook, alone."""
    playbook = PLAYBOOKS[args.command][0]
    if args.command != "maintain":
        return playbook
    if "weekly" in args.job:
        if set(args.job) != {"weekly"}:
            raise SystemExit("aiadmin-ops: error: --job weekly runs alone (it is a window of its own)")
        return WEEKLY_PLAYBOOK
    if args.version or args.watch_seconds:
        raise SystemExit("aiadmin-ops: error: --version and --watch-seconds are for --job weekly")
    return playbook


def run_command(args: argparse.Namespace) -> int:
    from aiadmin_ops import alerts, report
    from aiadmin_ops.runner import inventory_probe_urls, run_playbook

    _, _, needs_confirm = PLAYBOOKS[args.command]
    playbook = playbook_of(args)
    inventory = state.inventory_path(args.inventory)
    if not inventory.exists():
        raise SystemExit(f"aiadmin-ops: error: inventory {args.inventory!r} not found ({inventory})")
    parse_extra(args.extra)  # a bad -e fails before anything is asked
    check_webhook(getattr(args, "webhook", None))
    vids = vault_ids(args.inventory)
    if needs_confirm and not confirm(args.command, args):
        print("aiadmin-ops: not confirmed; nothing was done", file=sys.stderr)
        return 3
    run = new_run(args.command, args.inventory)
    extravars = build_extravars(args, run)
    ledger = Path(extravars[f"{args.command.replace('-', '_')}_ledger_path"])

    probe = None
    if args.command == "migrate" and not args.check:
        from aiadmin_ops.downtime import AnyProbe

        # From the inventory (its old and new hosts' public address and API port), never hard-coded.
        urls = args.probe_url or inventory_probe_urls(str(inventory), vids)
        probe = AnyProbe(urls, interval=0.1)
        print(f"aiadmin-ops: downtime probe on {', '.join(urls)}", flush=True)
        threading.Thread(target=probe.run, daemon=True).start()

    print(f"aiadmin-ops: {args.command} on {inventory} ({run['inventory']}), run {run['run_id']}"
          f"{' (check mode)' if args.check else ''}", flush=True)
    result = run_playbook(playbook, str(inventory), extravars=extravars, check=args.check, limit=args.limit,
                          vault_ids=vids, timeout=args.timeout)
    downtime = None
    if probe is not None:
        probe.stop()
        downtime = probe.summary()
    for path in {ledger, Path(extravars.get("migrate_ledger_path") or ledger)}:
        state.tighten(path)
    remaining = remaining_steps(read_ledger(ledger)) if args.command == "migrate" and not result.ok else []
    data = report.build(result, args.command, downtime=downtime, remaining=remaining, extra={"run": run})
    json_path, html_path = report.write(data, args.report_dir)
    print(f"verdict: {result.verdict} in {result.ended - result.started:.1f}s")
    for failure in result.failures:
        print(f"  failed: [{failure['phase']}] {failure['task']} on {failure['host']}: {failure['msg']}")
    if args.command != "unlock" and any(LOCK_HELD in f["msg"] for f in result.failures):
        print(f"  another run holds the run lock; if that run is dead: aiadmin-ops unlock -i {args.inventory} "
              "(--check shows the holder first)")
    if downtime and downtime.get("longest_gap_ms") is not None:
        print(f"measured downtime: {downtime['longest_gap_ms']:.0f} ms")
    if remaining:
        print("remaining steps (re-run to continue from the first): " + " -> ".join(remaining))
    print(f"report: {json_path} and {html_path}")
    # The webhook is looked up only when there is something to say: a failure, or a recovery.
    if args.command in ALERTED and not args.check and (
            not result.ok or alerts.active(state.state_dir(), f"run:{args.command}")):
        alerter = alerter_for(inventory, vids, extravars)
        if alerter is not None:
            alert_run(args.command, alerter, result)
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
            elif args.action == "db-replacement":
                lab.db_replacement()
            return 0
        if args.command == "health":
            return health_command(args)
        return run_command(args)
    except (lab.LabError, state.StateError, InventoryError) as exc:
        print(f"aiadmin-ops: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aiadmin-ops: interrupted; the next run repairs or resumes what was left half-done "
              "(a run lock this run left on the hosts: aiadmin-ops unlock)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
