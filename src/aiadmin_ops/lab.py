"""The local podman lab: images, networks and containers that stand in for the real hosts.

`up` is idempotent and repairs a lab half-created by an interrupted run; `down` removes
only what carries the lab label; `status` shows what exists and whether it is healthy;
`db_replacement` creates lab-db-new afresh (an empty stand-in for a new managed instance).
Everything the lab creates carries the label ``io.aiadmin-ops.lab=1``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LABEL = "io.aiadmin-ops.lab"
SPEC_LABEL = "io.aiadmin-ops.spec"
IMAGE_REPO = "localhost/aiadmin-lab"
BUILD_DIR = ROOT / "lab" / "build"
STATE_DIR = ROOT / "lab" / "state"
MIN_FREE_GIB = float(os.environ.get("AIADMIN_LAB_MIN_FREE_GIB", "4"))
PG_PORTS = ("5432", "5433")  # lab-db's clusters: main (the lab's hosts) and molecule (the scenarios)

# Debian releases the lab builds images for: tag -> debootstrap suite.
SUITES = {"debian12": "bookworm", "debian13": "trixie"}
IMAGE_PACKAGES = (
    "systemd,systemd-sysv,dbus,python3,python3-apt,iproute2,iputils-ping,"
    "ca-certificates,sudo,procps,curl,gnupg,netcat-openbsd,less,openssh-server"
)
# Like a provider's image, every container makes its own SSH host keys at first boot (the
# image ships none: containers from one image must not share them).
HOSTKEYS_UNIT = """\
[Unit]
Description=Generate the SSH host keys on first boot (lab image)
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""
# The machine's mirror can be unreachable for a minute (a CI run failed on it with apt's 3
# retries): the lab's own apt runs (lab-db, lab-egress, Molecule's instances before the base
# role writes its 80aiadmin-retries, which overrides this) retry as the base role makes hosts retry.
APT_RETRIES = 'Acquire::Retries "10";  // lab image: ride out a mirror hiccup\n'
APT_RETRIES_FILE = "etc/apt/apt.conf.d/10aiadmin-lab-retries"
# The lab's apt cache (lab-aptcache, apt-cacher-ng): every lab host and Molecule instance fetches
# the same packages again and again (lab-old, lab-new, a rebuilt lab-new, each scenario), and a
# CI run failed when the mirror stopped answering for longer than apt's retries (10 gave up after
# about 3.5 min, on a package lab-old had fetched minutes before). Through the cache, a package
# any lab host fetched once is served from the lab. Only the Debian mirror goes through it, and
# only while it answers: apt asks this script for each host (Proxy-Auto-Detect); without the cache
# (not created yet, stopped, or the cache container's own first install) apt goes direct.
APTCACHE_ADDRESS = "10.213.10.5"
APTCACHE_PORT = 3142
APT_PROXY_SCRIPT_FILE = "usr/local/sbin/aiadmin-lab-apt-proxy"
APT_PROXY_FILE = "etc/apt/apt.conf.d/10aiadmin-lab-proxy"
APT_PROXY = f'Acquire::http::Proxy-Auto-Detect "/{APT_PROXY_SCRIPT_FILE}";  // lab image: the lab\'s apt cache\n'


def apt_proxy_script(mirror_host: str) -> str:
    """The Proxy-Auto-Detect command: the cache for the Debian mirror while it answers, else DIRECT."""
    return (
        "#!/bin/sh\n"
        "# lab image (aiadmin-ops lab): the Debian mirror through lab-aptcache while it answers.\n"
        f'case "$1" in\n'
        f"  http://{mirror_host}|http://{mirror_host}/*|http://{mirror_host}:*)\n"
        f"    if nc -z -w 1 {APTCACHE_ADDRESS} {APTCACHE_PORT} 2>/dev/null; then\n"
        f"      echo http://{APTCACHE_ADDRESS}:{APTCACHE_PORT}; exit 0\n"
        "    fi ;;\n"
        "esac\n"
        "echo DIRECT\n"
    )


# The recipe's version: an image built from another recipe is rebuilt (and its containers recreated).
IMAGE_RECIPE = hashlib.sha256(
    f"{IMAGE_PACKAGES}\n{HOSTKEYS_UNIT}\n{APT_RETRIES}\n{APT_PROXY}\n{apt_proxy_script('')}".encode()
).hexdigest()[:12]
IMAGE_LABEL = "io.aiadmin-ops.image"


class LabError(RuntimeError):
    """A problem the operator can fix; printed without a traceback."""


@dataclass(frozen=True)
class Network:
    name: str
    subnet: str
    internal: bool


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    addresses: dict[str, str]  # network name -> fixed address
    add_hosts: tuple[str, ...] = field(default=())
    shm_size: str = ""  # podman's default /dev/shm is 64 MB

    def spec_hash(self) -> str:
        spec = {"image": self.image, "recipe": IMAGE_RECIPE, "addresses": self.addresses,
                "hosts": self.add_hosts, "v": 2}
        if self.shm_size:
            spec["shm"] = self.shm_size
        blob = json.dumps(spec, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


PUBLIC = Network("aiadmin-lab-public", "10.213.10.0/24", internal=False)
# The provider's private network: internal (no route out) and isolated from other networks.
PRIVATE = Network("aiadmin-lab-private", "10.213.20.0/24", internal=True)
# "Abroad": only lab-egress is on it; it hosts the endpoint that must be reached through Xray.
ABROAD = Network("aiadmin-lab-abroad", "10.213.30.0/24", internal=True)
NETWORKS = (PUBLIC, PRIVATE, ABROAD)

_DB_NAMES = ("db.public.lab.test:10.213.10.10",)
# PostgreSQL's parallel workers (CREATE INDEX in a restore, VACUUM) share memory in /dev/shm: a
# database host gets room for them, as a managed instance has.
DB_SHM = "512m"
CONTAINERS = (
    # First: the others' apt runs go through it once it answers (APT_PROXY).
    Container("lab-aptcache", "debian12", {PUBLIC.name: APTCACHE_ADDRESS}),
    Container("lab-db", "debian12", {PUBLIC.name: "10.213.10.10", PRIVATE.name: "10.213.20.10"}, shm_size=DB_SHM),
    Container("lab-old", "debian12", {PUBLIC.name: "10.213.10.20"}, _DB_NAMES),
    Container(
        "lab-new",
        "debian12",
        {PUBLIC.name: "10.213.10.30", PRIVATE.name: "10.213.20.30"},
        (*_DB_NAMES, "db.private.lab.test:10.213.20.10", "wrong-name.lab.test:10.213.20.10"),
    ),
    Container("lab-egress", "debian12", {PUBLIC.name: "10.213.10.40", ABROAD.name: "10.213.30.40"}),
)
# lab-db's replacement, the new "managed instance" a lost database is restored into: created only by
# `db-replacement` (not in CONTAINERS: `up` and `status` leave it alone; `down` removes it by its label).
REPLACEMENT = Container("lab-db-new", "debian12", {PUBLIC.name: "10.213.10.11", PRIVATE.name: "10.213.20.11"},
                        shm_size=DB_SHM)
REPLACEMENT_INVENTORY = STATE_DIR / "replacement" / "inventory.json"


def log(msg: str) -> None:
    print(f"[lab] {msg}", flush=True)


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(ROOT / "containers.conf"))
    return env


def run(cmd: Sequence[str], *, check: bool = True, capture: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=capture, text=True, env=podman_env(), **kw)
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip()
        raise LabError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{detail}")
    return proc


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["podman", *args], check=check)


def image_ref(tag: str) -> str:
    return f"{IMAGE_REPO}:{tag}"


# --------------------------------------------------------------------------- preflight


def preflight(need_build: bool) -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (podman runs rootful, debootstrap needs chroot): run as root")
    if shutil.which("podman") is None:
        raise LabError("podman not found: install it with `make deps` (apt-get install podman runc)")
    if shutil.which("runc") is None:
        raise LabError("runc not found: install it with `make deps` (crun does not work on this host)")
    if need_build and shutil.which("debootstrap") is None:
        raise LabError("debootstrap not found: install it with `make deps` to build the lab images")
    storage = Path("/var/lib/containers")
    probe = storage if storage.exists() else Path("/var/lib")
    for where in {probe, ROOT}:
        free = shutil.disk_usage(where).free / 2**30
        if free < MIN_FREE_GIB:
            raise LabError(f"only {free:.1f} GiB free on {where}; the lab needs at least {MIN_FREE_GIB} GiB")
    info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False)
    if info.returncode != 0:
        raise LabError(f"podman does not work here: {info.stderr.strip()}")


# --------------------------------------------------------------------------- images


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line format)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        m = re.search(r"^URIs:\s*(\S+)", path.read_text(), re.M)
        if m and "security" not in m.group(1):
            return m.group(1)
    lst = Path("/etc/apt/sources.list")
    if lst.exists():
        m = re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+\s+main", lst.read_text(), re.M)
        if m:
            return m.group(1)
    raise LabError("cannot find a Debian mirror in /etc/apt/sources*: the lab images are built from it")


def mirror_host(mirror: str) -> str:
    """The host (and port) of a mirror URL: the one apt sends through the lab's cache."""
    m = re.match(r"http://([^/]+)", mirror)
    if not m:
        raise LabError(f"the lab images need an http:// Debian mirror (apt-cacher-ng serves it), not {mirror}")
    return m.group(1)


def remove_rootfs(rootfs: Path) -> None:
    """Remove a build tree, first unmounting what an interrupted debootstrap left mounted."""
    prefix = str(rootfs.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mnt in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        run(["umount", "-l", mnt], check=False)
    shutil.rmtree(rootfs)


def build_image(tag: str) -> None:
    suite = SUITES[tag]
    rootfs = BUILD_DIR / tag
    if rootfs.exists():  # left over by an interrupted build
        log(f"  removing an unfinished build of {tag}")
        remove_rootfs(rootfs)
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    log(f"  debootstrap {suite} from {mirror} (about a minute)")
    run(["debootstrap", "--variant=minbase", f"--include={IMAGE_PACKAGES}", suite, str(rootfs), mirror])
    # Trust the machine's extra CA certificates (HTTPS to the registries needs them).
    extra = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    dest = rootfs / "usr/local/share/ca-certificates"
    dest.mkdir(parents=True, exist_ok=True)
    for crt in extra:
        shutil.copy2(crt, dest / crt.name)
    run(["chroot", str(rootfs), "update-ca-certificates"])
    # Containers have no console; units that wait for hardware only slow the boot.
    for unit in ("getty@tty1.service", "systemd-logind.service", "console-getty.service"):
        run(["chroot", str(rootfs), "systemctl", "mask", unit], check=False)
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (rootfs / "etc/systemd/system/ssh-hostkeys.service").write_text(HOSTKEYS_UNIT)
    run(["chroot", str(rootfs), "systemctl", "enable", "ssh-hostkeys.service"])
    (rootfs / APT_RETRIES_FILE).write_text(APT_RETRIES)
    script = rootfs / APT_PROXY_SCRIPT_FILE
    script.write_text(apt_proxy_script(mirror_host(mirror)))
    script.chmod(0o755)
    (rootfs / APT_PROXY_FILE).write_text(APT_PROXY)
    run(["chroot", str(rootfs), "apt-get", "clean"])
    tar = subprocess.Popen(["tar", "--one-file-system", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    proc = subprocess.run(
        ["podman", "import", "--change", 'CMD ["/sbin/init"]', "--change", f"LABEL {LABEL}=1",
         "--change", f"LABEL {IMAGE_LABEL}={IMAGE_RECIPE}", "-", image_ref(tag)],
        stdin=tar.stdout, capture_output=True, text=True, env=podman_env(), check=False,
    )
    tar.wait()
    if proc.returncode != 0 or tar.returncode != 0:
        raise LabError(f"podman import of {tag} failed: {proc.stderr.strip()}")
    remove_rootfs(rootfs)


def ensure_images(tags: Sequence[str]) -> list[str]:
    built = []
    for tag in tags:
        if not podman_image_missing(tag):
            continue
        t0 = time.monotonic()
        if podman("image", "exists", image_ref(tag), check=False).returncode == 0:
            log(f"image {image_ref(tag)} was built from another recipe: rebuilding it")
        log(f"building image {image_ref(tag)}")
        build_image(tag)
        log(f"built {image_ref(tag)} in {time.monotonic() - t0:.0f}s")
        built.append(tag)
    return built


# --------------------------------------------------------------------------- networks


def network_inspect(name: str) -> dict | None:
    proc = podman("network", "inspect", name, check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)[0]


def network_matches(net: Network, data: dict) -> bool:
    subnets = [s.get("subnet") for s in data.get("subnets") or []]
    return subnets == [net.subnet] and bool(data.get("internal")) == net.internal


def ensure_networks() -> list[str]:
    created = []
    for net in NETWORKS:
        data = network_inspect(net.name)
        if data is not None:
            if network_matches(net, data):
                continue
            if (data.get("labels") or {}).get(LABEL) != "1":
                raise LabError(f"network {net.name} exists but was not created by the lab: remove or rename it")
            log(f"network {net.name} has the wrong shape: recreating it")
            for ctr in CONTAINERS:
                podman("rm", "-f", "-t", "2", ctr.name, check=False)
            podman("network", "rm", "-f", net.name)
        args = ["network", "create", "--label", f"{LABEL}=1", "--subnet", net.subnet]
        if net.internal:
            args += ["--internal", "--opt", "isolate=true"]
        podman(*args, net.name)
        created.append(net.name)
        log(f"created network {net.name} ({net.subnet}{', internal' if net.internal else ''})")
    return created


# --------------------------------------------------------------------------- containers


def container_inspect(name: str) -> dict | None:
    proc = podman("container", "inspect", name, check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)[0]


def mac_for(address: str) -> str:
    """A fixed, locally administered MAC address for a lab address: 02:1a, then the four octets.

    Podman draws a new MAC at every start. A container stopped and started again (`up` repairing
    the lab) or recreated (host recovery) would then keep its address under another MAC, and the
    other hosts' neighbour entries for it stay stale (the kernel collects none below gc_thresh1):
    their first connection waited about 8 s for the ARP probes to fail, past a 10 s connect
    timeout once SYN back-off was added (CI: get_url from lab-egress timed out on lab-new)."""
    return "02:1a:" + ":".join(f"{int(octet):02x}" for octet in address.split("."))


def create_container(ctr: Container) -> None:
    args = [
        "run", "-d", "--name", ctr.name, "--hostname", ctr.name,
        "--systemd=always", "--label", f"{LABEL}=1", "--label", f"{SPEC_LABEL}={ctr.spec_hash()}",
        # NET_ADMIN for the firewall role, NET_RAW for ping.
        "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW",
    ]
    for net, addr in ctr.addresses.items():
        args += ["--network", f"{net}:ip={addr},mac={mac_for(addr)}"]
    for host in ctr.add_hosts:
        args += ["--add-host", host]
    if ctr.shm_size:
        args += ["--shm-size", ctr.shm_size]
    podman(*args, image_ref(ctr.image), "/sbin/init")


def wait_systemd(name: str, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    state = "unknown"
    while time.monotonic() < deadline:
        proc = podman("exec", name, "systemctl", "is-system-running", check=False)
        state = proc.stdout.strip() or "unknown"
        if state in ("running", "degraded"):
            return state
        time.sleep(0.5)
    raise LabError(f"systemd in {name} did not finish booting within {timeout:.0f}s (state: {state})")


def ensure_containers() -> list[str]:
    changed = []
    for ctr in CONTAINERS:
        data = container_inspect(ctr.name)
        if data is not None:
            labels = data.get("Config", {}).get("Labels") or {}
            if labels.get(LABEL) != "1":
                raise LabError(f"container {ctr.name} exists but was not created by the lab: remove it first")
            if labels.get(SPEC_LABEL) != ctr.spec_hash():
                log(f"{ctr.name} has an outdated spec: recreating it")
                podman("rm", "-f", "-t", "2", ctr.name)
                data = None
        if data is None:
            create_container(ctr)
            changed.append(ctr.name)
            log(f"created {ctr.name}")
        elif not data.get("State", {}).get("Running"):
            podman("start", ctr.name)
            changed.append(ctr.name)
            log(f"started {ctr.name} (was {data.get('State', {}).get('Status')})")
        elif podman("exec", ctr.name, "true", check=False).returncode != 0:
            # podman's record says running but nothing answers inside (its processes were
            # killed under it, e.g. a machine snapshot): recreate it.
            log(f"{ctr.name} is recorded as running but does not answer: recreating it")
            podman("rm", "-f", "-t", "2", ctr.name, check=False)
            create_container(ctr)
            changed.append(ctr.name)
    for ctr in CONTAINERS:
        state = wait_systemd(ctr.name)
        if state == "degraded":
            failed = podman("exec", ctr.name, "systemctl", "--failed", "--no-legend", check=False).stdout
            log(f"{ctr.name}: systemd degraded: {failed.strip()}")
    return changed


# --------------------------------------------------------------------------- configure


def ansible_env() -> dict[str, str]:
    env = podman_env()
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env.setdefault("ANSIBLE_FORCE_COLOR", "0")
    return env


def configure(playbook: Path = ROOT / "lab/configure.yml", extra_vars: dict | None = None,
              retry: str = "make lab-up") -> None:
    """Run a lab playbook (by default lab/configure.yml: CA, PostgreSQL with TLS, seed data)."""
    bindir = Path(sys.executable).parent
    ansible_playbook = bindir / "ansible-playbook"
    if not ansible_playbook.exists():
        ansible_playbook = Path(shutil.which("ansible-playbook") or "ansible-playbook")
    cmd = [
        str(ansible_playbook), "-i", str(ROOT / "inventories/lab/hosts.yml"),
        "--vault-id", f"lab@{ROOT / 'inventories/lab/vault-password.LAB-ONLY.txt'}",
    ]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    cmd.append(str(playbook))
    proc = subprocess.run(cmd, env=ansible_env(), cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise LabError(f"{playbook.relative_to(ROOT)} failed (see above); re-run `{retry}` after fixing it")


# --------------------------------------------------------------------------- commands


def timed(label: str, fn, *args):
    t0 = time.monotonic()
    result = fn(*args)
    log(f"{label}: done in {time.monotonic() - t0:.1f}s")
    return result


def up(images: Sequence[str] = tuple(SUITES)) -> None:
    t0 = time.monotonic()
    missing = [t for t in images if podman_image_missing(t)] if shutil.which("podman") else list(images)
    preflight(need_build=bool(missing))
    timed("images", ensure_images, images)
    timed("networks", ensure_networks)
    timed("containers", ensure_containers)
    timed("configure", configure)
    log(f"lab is up in {time.monotonic() - t0:.1f}s")


def podman_image_missing(tag: str) -> bool:
    """True when the image is absent or was built from another recipe (IMAGE_RECIPE)."""
    proc = podman("image", "inspect", "--format", f'{{{{index .Labels "{IMAGE_LABEL}"}}}}', image_ref(tag),
                  check=False)
    return proc.returncode != 0 or proc.stdout.strip() != IMAGE_RECIPE


def down(purge_images: bool = False) -> None:
    if shutil.which("podman") is None:
        raise LabError("podman not found: nothing to take down")
    if os.geteuid() != 0:
        raise LabError("the lab needs root: run as root")
    ids = podman("ps", "-a", "-q", "--filter", f"label={LABEL}=1").stdout.split()
    if ids:
        podman("rm", "-f", "-t", "2", *ids)
        log(f"removed {len(ids)} container(s)")
    for net in NETWORKS:
        data = network_inspect(net.name)
        if data is not None and (data.get("labels") or {}).get(LABEL) == "1":
            podman("network", "rm", "-f", net.name)
            log(f"removed network {net.name}")
    if purge_images:
        for tag in SUITES:
            if podman("image", "exists", image_ref(tag), check=False).returncode == 0:
                podman("rmi", "-f", image_ref(tag))
                log(f"removed image {image_ref(tag)}")
        shutil.rmtree(BUILD_DIR, ignore_errors=True)
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    log("lab is down" + (" (images removed)" if purge_images else " (images kept for the next up)"))


def db_replacement() -> dict[str, str]:
    """Create lab-db-new afresh: a new "managed instance" (own CA and address, empty database).

    Removes a previous lab-db-new (only one the lab created), creates the container, runs
    lab/db-replacement.yml, writes the inventory values that point at it to REPLACEMENT_INVENTORY
    and prints them as -e pairs. The lab's networks must exist (`lab up` creates them)."""
    t0 = time.monotonic()
    preflight(need_build=False)
    missing = [net.name for net in (PUBLIC, PRIVATE)
               if (data := network_inspect(net.name)) is None or not network_matches(net, data)]
    if missing:
        raise LabError(f"the lab network(s) {', '.join(missing)} do not exist (or have the wrong shape): "
                       "run `aiadmin-ops lab up` first")
    if podman_image_missing(REPLACEMENT.image):
        raise LabError(f"image {image_ref(REPLACEMENT.image)} missing: run `aiadmin-ops lab up` first")
    REPLACEMENT_INVENTORY.unlink(missing_ok=True)  # never left pointing at an instance being replaced
    data = container_inspect(REPLACEMENT.name)
    if data is not None:
        if (data.get("Config", {}).get("Labels") or {}).get(LABEL) != "1":
            raise LabError(f"container {REPLACEMENT.name} exists but was not created by the lab: remove it first")
        podman("rm", "-f", "-t", "2", REPLACEMENT.name)
        log(f"removed the previous {REPLACEMENT.name}")
    create_container(REPLACEMENT)
    log(f"created {REPLACEMENT.name}")
    wait_systemd(REPLACEMENT.name)
    public, private = REPLACEMENT.addresses[PUBLIC.name], REPLACEMENT.addresses[PRIVATE.name]
    timed("configure", configure, ROOT / "lab/db-replacement.yml",
          {"lab_replacement_public_address": public, "lab_replacement_private_address": private},
          "aiadmin-ops lab db-replacement")
    ca = REPLACEMENT_INVENTORY.parent / "ca.crt"
    values = {
        "aiadmin_db_private_address": private,
        "aiadmin_db_public_address": public,
        "aiadmin_db_ca_url": f"http://{public}:8081/root.crt",
        "aiadmin_db_ca_checksum": f"sha256:{hashlib.sha256(ca.read_bytes()).hexdigest()}",
    }
    REPLACEMENT_INVENTORY.write_text(json.dumps(values, indent=2) + "\n")
    log(f"{REPLACEMENT.name} is up in {time.monotonic() - t0:.1f}s (values also in {REPLACEMENT_INVENTORY})")
    log("point the inventory at it with:")
    print(" ".join(f"-e {key}={value}" for key, value in values.items()), flush=True)
    return values


def status_data() -> dict:
    data: dict = {"images": {}, "networks": {}, "containers": {}}
    for tag in SUITES:
        data["images"][image_ref(tag)] = not podman_image_missing(tag)
    for net in NETWORKS:
        info = network_inspect(net.name)
        data["networks"][net.name] = "ok" if info and network_matches(net, info) else (
            "wrong shape" if info else "missing")
    for ctr in CONTAINERS:
        info = container_inspect(ctr.name)
        if info is None:
            data["containers"][ctr.name] = {"state": "missing"}
            continue
        entry = {"state": info["State"]["Status"]}
        if info["State"].get("Running"):
            entry["systemd"] = podman("exec", ctr.name, "systemctl", "is-system-running",
                                      check=False).stdout.strip()
            if ctr.name == "lab-db":
                # Both clusters (lab/configure.yml): main for the lab's hosts, molecule for Molecule.
                down = [port for port in PG_PORTS
                        if podman("exec", ctr.name, "pg_isready", "-q", "-p", port, check=False).returncode]
                entry["postgresql"] = f"down (port {', '.join(down)})" if down else "accepting"
        data["containers"][ctr.name] = entry
    return data


def healthy(data: dict) -> bool:
    return (all(data["images"].values())
            and all(v == "ok" for v in data["networks"].values())
            and all(c.get("systemd") in ("running", "degraded") for c in data["containers"].values())
            and data["containers"].get("lab-db", {}).get("postgresql") == "accepting")


def status(as_json: bool = False) -> bool:
    if shutil.which("podman") is None:
        raise LabError("podman not found: the lab cannot exist here (install with `make deps`)")
    data = status_data()
    ok = healthy(data)
    if as_json:
        print(json.dumps({**data, "healthy": ok}, indent=2))
        return ok
    for ref, present in data["images"].items():
        print(f"image      {ref:34} {'present' if present else 'missing'}")
    for name, state in data["networks"].items():
        print(f"network    {name:34} {state}")
    for name, entry in data["containers"].items():
        extra = " ".join(f"{k}={v}" for k, v in entry.items() if k != "state")
        print(f"container  {name:34} {entry['state']} {extra}".rstrip())
    print(f"lab: {'healthy' if ok else 'NOT healthy'}")
    return ok
