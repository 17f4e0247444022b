"""Throughput baselines in a bench-owned topology: kernel forwarding, C and Python NFQUEUE loops, the node.

Three namespaces of our own (sender, gateway, receiver) joined by two veth pairs,
named `swb<pid>-*`, recorded as they are made in a lab record (netns.record.LabRecord,
`/run/syncwall/swb<pid>/record.json`, like the main lab's) and removed exactly by it (by
name and /run/netns inode, processes by start time), even on error: after a crash
`syncwall clean --lab swb<pid>` removes what is left. Nothing is done to the host
namespace. Traffic is iperf3: 64-byte frames over UDP for packets/s, one TCP stream
for Mbit/s, counted at the receiver.

`python -m demos.baselines pyloop --queue N [--gso]` is the Python accept-all loop
(run inside the gateway namespace by the bench itself).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns.record import RUN_ROOT, LabRecord, make_run_dir, owner_meta, teardown
from syncwall_errors import SyncwallError

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
QUEUE_NUM = 0
IPERF_PORT = 5201
BLAST_PORT = 5202
# 18 bytes of UDP payload + 8 UDP + 20 IP + 14 Ethernet + 4 FCS = a 64-byte frame.
UDP_PAYLOAD_BYTES = 18
SENDER_IP = "198.19.250.1"
GW_INSIDE_IP = "198.19.250.254"
GW_OUTSIDE_IP = "198.19.251.254"
RECEIVER_IP = "198.19.251.1"
READY_TIMEOUT_S = 15.0
CNFQ_DIR = Path(__file__).resolve().parent / "cnfq"
CNFQ_SOURCE = CNFQ_DIR / "nfq_accept.c"
BLAST_SOURCE = CNFQ_DIR / "udp_blast.c"
WARMUP_S = 0.5
SENDER_CPU = 0
CONSUMER_CPU = 1

Progress = Callable[[str], None]


class BenchError(SyncwallError):
    """A bench could not run; the message says what is missing or what failed."""


def _quiet(_msg: str) -> None:
    pass


@dataclass
class Topology:
    """sender -- gateway -- receiver, in namespaces we create and remove by our own lab record."""

    prefix: str = field(default_factory=lambda: f"swb{os.getpid()}-")
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="swbench-")))
    record: LabRecord | None = None

    @property
    def name(self) -> str:
        """The topology's name as a lab: its record lives in RUN_ROOT/<name>."""
        return self.prefix.rstrip("-")

    @property
    def sender(self) -> str:
        return self.prefix + "snd"

    @property
    def gateway(self) -> str:
        return self.prefix + "gw"

    @property
    def receiver(self) -> str:
        return self.prefix + "rcv"

    @property
    def record_path(self) -> Path:
        return RUN_ROOT / self.name / "record.json"

    @property
    def namespaces(self) -> list[str]:
        return self.record.namespace_names() if self.record else []

    # ---- build / remove -----------------------------------------------------------------
    def build(self) -> None:
        for ns in (self.sender, self.gateway, self.receiver):
            if (NETNS_DIR / ns).exists():
                raise BenchError(f"namespace {ns} already exists; not touching what is not ours")
        if self.record_path.exists():
            raise BenchError(f"a record of {self.name} already exists in {self.record_path.parent}; "
                             f"`syncwall clean --lab {self.name}` removes what it lists")
        make_run_dir(self.record_path.parent)
        self.record = LabRecord(lab=self.name, run_dir=self.record_path.parent,
                                meta={"kind": "bench-topology", **owner_meta()})
        self.record.save()
        for ns in (self.sender, self.gateway, self.receiver):
            run(["ip", "netns", "add", ns])
            self.record.add_namespace(ns)
        s, g, r = self.sender, self.gateway, self.receiver
        # veths are created inside our namespaces directly: nothing appears in the host's.
        run(["ip", "-n", s, "link", "add", "eth0", "type", "veth", "peer", "name", "inside", "netns", g])
        run(["ip", "-n", r, "link", "add", "eth0", "type", "veth", "peer", "name", "outside", "netns", g])
        for ns, ifname, addr in ((s, "eth0", SENDER_IP), (g, "inside", GW_INSIDE_IP),
                                 (g, "outside", GW_OUTSIDE_IP), (r, "eth0", RECEIVER_IP)):
            run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", ifname])
            run(["ip", "-n", ns, "link", "set", ifname, "up"])
        for ns in (s, g, r):
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "-n", s, "route", "add", "default", "via", GW_INSIDE_IP])
        run(["ip", "-n", r, "route", "add", "default", "via", GW_OUTSIDE_IP])
        run(["ip", "netns", "exec", g, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        # The receiver counts the 64-byte UDP packets in the kernel and drops them there: no
        # receiving process competes for the 2 cores, and no ICMP goes back.
        run(["ip", "netns", "exec", r, "iptables", "-t", "raw", "-A", "PREROUTING", "-p", "udp",
             "--dport", str(BLAST_PORT), "-j", "DROP"])

    def close(self) -> None:
        # Our own children first, so that each is waited for (no zombie); the record's
        # teardown then stops anything left (by start time) and removes the namespaces by inode.
        for p in self.procs:
            stop_process(p)
        self.procs.clear()
        if self.record is not None:
            teardown(self.record)
            self.record = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Topology:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- processes ----------------------------------------------------------------------
    def popen(self, ns: str, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        self.procs.append(p)
        if self.record is not None:
            with contextlib.suppress(SyncwallError):  # it exited already: nothing to record
                self.record.add_process(p.pid, "bench", Path(argv[0]).name)
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> None:
        stop_process(p)
        if p in self.procs:
            self.procs.remove(p)
        if self.record is not None:
            self.record.remove_process(p.pid)

    def gateway_rules(self, mode: str) -> None:
        """The gateway's whole rule set for a mode: no conntrack on the data path, then the verdict."""
        if mode == "engine":
            from netns.iptables import node_rules

            text = node_rules(1, 1, QUEUE_NUM)
        else:
            verdict = "ACCEPT" if mode == "kernel" else f"NFQUEUE --queue-num {QUEUE_NUM}"
            text = "\n".join([
                "*raw", "-A PREROUTING -i inside -j NOTRACK", "-A PREROUTING -i outside -j NOTRACK",
                "COMMIT", "*mangle", "COMMIT", "*filter", f"-A FORWARD -j {verdict}", "COMMIT", "",
            ])
        run(["ip", "netns", "exec", self.gateway, "iptables-restore"], input_text=text)

    # ---- traffic ------------------------------------------------------------------------
    def iperf(self, extra: list[str], duration_s: float) -> dict[str, Any]:
        server = self.popen(self.receiver, ["iperf3", "-s", "-1", "-B", RECEIVER_IP, "-p", str(IPERF_PORT)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(self.receiver, IPERF_PORT)
            # iperf3 takes whole seconds (and -t 0 means "forever").
            seconds = max(1, round(duration_s))
            argv = ["iperf3", "-c", RECEIVER_IP, "-p", str(IPERF_PORT), "-t", str(seconds), "-J",
                    "--connect-timeout", "3000", *extra]
            try:
                proc = run(["ip", "netns", "exec", self.sender, *argv], check=False,
                           timeout_s=seconds + 20)
            except subprocess.TimeoutExpired as e:
                raise BenchError(f"iperf3 did not finish within {seconds + 20} s") from e
            try:
                out: dict[str, Any] = json.loads(proc.stdout)
            except ValueError as e:
                raise BenchError(f"iperf3 gave no JSON: {proc.stderr.strip()[:200]}") from e
            if out.get("error"):
                raise BenchError(f"iperf3: {out['error']}")
            return out
        finally:
            self.stop(server)

    def udp_pps(self, duration_s: float, blaster: Path | None = None) -> float:
        """64-byte UDP packets/s that reached the receiver (the sender sends as fast as it can).

        With the C sender (sendmmsg) the receiver's kernel counts them; without it, iperf3
        sends and receives them, which caps the figure lower (one syscall per packet).
        """
        if blaster is not None:
            return self._blast_pps(duration_s, blaster)
        out = self.iperf(["-u", "-b", "0", "-l", str(UDP_PAYLOAD_BYTES)], duration_s)
        s = out["end"]["sum"]
        received = int(s["packets"]) - int(s.get("lost_packets", 0))
        return received / float(s["seconds"])

    def _udp_counter(self) -> tuple[float, int]:
        out = run(["ip", "netns", "exec", self.receiver, "iptables", "-t", "raw", "-nvxL", "PREROUTING"])
        t = time.monotonic()
        for line in out.stdout.splitlines():
            parts = line.split()
            if "DROP" in parts and f"dpt:{BLAST_PORT}" in parts:
                return t, int(parts[0])
        raise BenchError(f"the receiver's UDP counter rule is missing in {self.receiver}")

    def _blast_pps(self, duration_s: float, blaster: Path) -> float:
        p = self.popen(self.sender, [*pin(SENDER_CPU), str(blaster), RECEIVER_IP, str(BLAST_PORT),
                                     f"{duration_s + WARMUP_S + 1:g}", str(UDP_PAYLOAD_BYTES)],
                       stdout=subprocess.DEVNULL)
        try:
            time.sleep(WARMUP_S)
            t0, c0 = self._udp_counter()
            time.sleep(duration_s)
            t1, c1 = self._udp_counter()
        finally:
            self.stop(p)
        return (c1 - c0) / (t1 - t0)

    def tcp_mbps(self, duration_s: float) -> float:
        out = self.iperf([], duration_s)
        return float(out["end"]["sum_received"]["bits_per_second"]) / 1e6


def pin(cpu: int) -> list[str]:
    """taskset prefix: the sender on one core, the queue consumer on the other, the same in every mode.

    Without it the scheduler sometimes puts both on one core and the figures swing by 2x.
    Empty (no pinning) on a single core or without taskset.
    """
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(cpu)]


def realtime() -> list[str]:
    """chrt prefix: the baseline loops run at the RT priority engine.node gives itself (SCHED_RR
    5), so that on a shared machine the engine is not compared with loops the scheduler
    starves. Empty without chrt."""
    return ["chrt", "-r", "5"] if shutil.which("chrt") else []


def run(argv: list[str], check: bool = True, input_text: str | None = None,
        timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, input=input_text, capture_output=True, text=True, check=False,
                          timeout=timeout_s)
    if check and proc.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()[:300]}")
    return proc


def stop_process(p: subprocess.Popen[bytes], wait_s: float = 3.0) -> None:
    if p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=wait_s)


def wait_port(ns: str, port: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = run(["ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}"], check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise BenchError(f"nothing listens on port {port} in {ns} after {timeout_s} s")


def wait_ready(p: subprocess.Popen[bytes], what: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Wait for the 'ready' line a queue consumer prints once bound."""
    assert p.stdout is not None
    import select

    deadline = time.monotonic() + timeout_s
    buf = b""
    while b"ready" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or p.poll() is not None:
            raise BenchError(f"{what} did not get ready (exit {p.poll()})")
        r, _, _ = select.select([p.stdout], [], [], left)
        if r:
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                raise BenchError(f"{what} exited before it was ready")
            buf += chunk


def build_c(dest_dir: Path, source: Path, libs: list[str]) -> tuple[Path | None, str]:
    """Compile one of our C helpers; (None, why) when gcc or libnetfilter_queue is missing."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None, "gcc is not installed"
    if libs and not Path("/usr/include/libnetfilter_queue/libnetfilter_queue.h").exists():
        return None, "libnetfilter_queue headers are not installed (Debian: libnetfilter-queue-dev)"
    exe = dest_dir / source.stem
    proc = run([gcc, "-O2", "-o", str(exe), str(source), *libs], check=False)
    if proc.returncode != 0:
        return None, f"gcc failed: {proc.stderr.strip()[:200]}"
    return exe, ""


# ---- the queue consumers ------------------------------------------------------------------------
@contextlib.contextmanager
def consumer(topo: Topology, mode: str, c_exe: Path | None, node_cfg: Path | None = None,
             ) -> Iterator[dict[str, Any]]:
    """Install the gateway rules for `mode` and run its queue consumer while the block runs."""
    topo.gateway_rules(mode)
    info: dict[str, Any] = {}
    p: subprocess.Popen[bytes] | None = None
    if mode == "c":
        assert c_exe is not None
        p = topo.popen(topo.gateway, [*pin(CONSUMER_CPU), *realtime(), str(c_exe), str(QUEUE_NUM), "--gso"],
                       stdout=subprocess.PIPE)
        wait_ready(p, "the C NFQUEUE loop")
    elif mode in ("python", "python-gso"):
        argv = [sys.executable, "-m", "demos.baselines", "pyloop", "--queue", str(QUEUE_NUM)]
        if mode == "python-gso":
            argv += ["--gso", "--range", os.environ.get("SWB_RANGE", "65535")]
        p = topo.popen(topo.gateway, [*pin(CONSUMER_CPU), *realtime(), *argv], stdout=subprocess.PIPE)
        wait_ready(p, "the Python NFQUEUE loop")
    elif mode in ("engine", "engine-gso", "engine-nfqueue"):
        assert node_cfg is not None
        cfg = node_cfg
        if mode == "engine-nfqueue":  # the fallback binding: one recv and one verdict per packet
            cfg = node_cfg.with_name("node-nfqueue.json")
            cfg.write_text(json.dumps({**json.loads(node_cfg.read_text()), "nfq_backend": "netfilterqueue"}))
        p = start_engine_node(topo, cfg, gso=mode == "engine-gso")
    if p is not None:
        info["pid"] = p.pid
    try:
        yield info
    finally:
        if p is not None:
            topo.stop(p)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (its verdicts' kernel work is system time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


ENGINE_RULES = [
    {"name": "bench-tcp", "action": "accept", "proto": "tcp", "src": "198.19.250.0/24",
     "dst": "198.19.251.0/24", "dport": IPERF_PORT},
    {"name": "bench-udp", "action": "accept", "proto": "udp", "src": "198.19.250.0/24",
     "dst": "198.19.251.0/24", "dport": f"{IPERF_PORT}-{BLAST_PORT}"},
]


def write_engine_config(topo: Topology) -> Path:
    """A one-node cluster config for engine.node: owns every bucket, syncs to nobody."""
    key = topo.tmp / "key"
    key.write_bytes(os.urandom(32))
    cfg = {
        "node": "n1", "lab": "bench", "lab_id": "bench", "key_file": str(key),
        "nodes": [["n1", "127.0.0.1", 7499]], "buckets": 1, "backups": 1, "policy": "hybrid",
        "interval_ms": 1000, "differential": True, "heartbeat_ms": 10, "miss_limit": 5,
        "rules": ENGINE_RULES, "queue_num": QUEUE_NUM, "control_socket": str(topo.tmp / "node.sock"),
        "hold_timeout_ms": 200,
    }
    path = topo.tmp / "node.json"
    path.write_text(json.dumps(cfg))
    return path


def node_request(sock_path: Path, msg: dict[str, Any], timeout_s: float = 2.0) -> dict[str, Any]:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(sock_path))
        s.sendall(json.dumps(msg).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply: dict[str, Any] = json.loads(buf)
    return reply


def start_engine_node(topo: Topology, cfg_path: Path, gso: bool = False) -> subprocess.Popen[bytes]:
    cfg = json.loads(cfg_path.read_text())
    sock = Path(cfg["control_socket"])
    sock.unlink(missing_ok=True)
    log_path = topo.tmp / "node.log"
    if gso:
        argv = [sys.executable, "-m", "demos.baselines", "engine-gso", "--config", str(cfg_path)]
    else:
        argv = [sys.executable, "-m", "engine.node", "--config", str(cfg_path)]
    p = topo.popen(topo.gateway, [*pin(CONSUMER_CPU), *argv, "--log", str(log_path)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        if p.poll() is not None:
            tail = log_path.read_text()[-400:] if log_path.exists() else ""
            raise BenchError(f"engine.node exited ({p.returncode}): {tail}")
        if sock.exists():
            try:
                st = node_request(sock, {"cmd": "status"})
                if st.get("buckets"):
                    return p
                last = f"state {st.get('state')}, buckets {st.get('buckets')}"
            except (OSError, ValueError) as e:
                last = str(e)
        time.sleep(0.1)
    raise BenchError(f"engine.node did not take its buckets in {READY_TIMEOUT_S} s ({last})")


# ---- the whole baseline measurement -------------------------------------------------------------
# engine: the node as shipped (our binding, batched verdicts); engine-nfqueue: the same node on
# NetfilterQueue, the fallback; engine-gso (not measured by default): NetfilterQueue patched
# to set GSO before the node did so itself.
MODES = ("kernel", "c", "python", "python-gso", "engine", "engine-nfqueue")


def measure(duration_s: float = 3.0, runs: int = 1, modes: tuple[str, ...] = MODES[:4],
            progress: Progress = _quiet) -> dict[str, Any]:
    """pps and TCP Mbit/s per mode, each run measuring every mode in turn (same run, same machine)."""
    result: dict[str, Any] = {"duration_s": duration_s, "runs": runs, "modes": {}, "notes": [],
                              "udp_frame_bytes": 64}
    with Topology() as topo:
        result["namespaces"] = list(topo.namespaces)
        c_exe = None
        wanted = list(modes)
        if "c" in wanted:
            c_exe, why = build_c(topo.tmp, CNFQ_SOURCE, ["-lnetfilter_queue"])
            if c_exe is None:
                wanted.remove("c")
                result["notes"].append(f"C NFQUEUE loop skipped: {why}")
        blaster, why = build_c(topo.tmp, BLAST_SOURCE, [])
        if blaster is None:
            result["notes"].append(f"UDP sender is iperf3 (lower ceiling): C sender not built: {why}")
        result["udp_sender"] = "udp_blast (sendmmsg)" if blaster else "iperf3"
        node_cfg = write_engine_config(topo) if any(m.startswith("engine") for m in wanted) else None
        samples: dict[str, dict[str, list[float]]] = {
            m: {"pps": [], "mbps": [], "cpu_us_per_packet": []} for m in wanted}
        failed: set[str] = set()
        for i in range(runs):
            for mode in wanted:
                if mode in failed:
                    continue
                try:
                    with consumer(topo, mode, c_exe, node_cfg) as info:
                        progress(f"run {i + 1}/{runs} {mode}: UDP 64-byte packets/s ...")
                        pid = info.get("pid")
                        t0, c0 = time.monotonic(), cpu_s(pid) if pid else 0.0
                        pps = topo.udp_pps(duration_s, blaster)
                        if pid and pps > 0:
                            # The consumer's CPU per packet: what the queue costs it, whatever
                            # the sender managed to send on a shared machine.
                            us = (cpu_s(pid) - c0) / (pps * (time.monotonic() - t0)) * 1e6
                            samples[mode]["cpu_us_per_packet"].append(round(us, 2))
                        progress(f"run {i + 1}/{runs} {mode}: {pps:,.0f} pps; TCP ...")
                        mbps = topo.tcp_mbps(duration_s)
                        progress(f"run {i + 1}/{runs} {mode}: {mbps:,.0f} Mbit/s")
                except BenchError as e:
                    if not mode.startswith("engine"):
                        raise
                    failed.add(mode)
                    result["notes"].append(f"{mode} skipped: {e}")
                    progress(f"{mode} skipped: {e}")
                    continue
                samples[mode]["pps"].append(pps)
                samples[mode]["mbps"].append(mbps)
        result["samples"] = {m: v for m, v in samples.items() if v["pps"]}
    return result


def pyloop(queue_num: int, gso: bool, range_bytes: int = 0xFFFF) -> int:
    """The Python baseline: NetfilterQueue accept-all, run() in the main thread."""
    from netfilterqueue import NetfilterQueue

    from engine.nfq import enable_gso

    def accept(pkt: Any) -> None:
        pkt.accept()

    nfq = NetfilterQueue()
    nfq.bind(queue_num, accept, max_len=4096, range=range_bytes)
    if gso and not enable_gso(nfq, queue_num):
        sys.stderr.write("pyloop: GSO could not be enabled\n")
        return 1
    sock_stop = False

    def on_term(_sig: int, _frame: Any) -> None:
        nonlocal sock_stop
        sock_stop = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        nfq.run()
    nfq.unbind()
    return 0


def engine_gso(argv: list[str]) -> int:
    """engine.node exactly as shipped, with engine.nfq.enable_gso() called right after its bind().

    Measures what the node gains from GSO hand-over before node.py calls enable_gso itself
    (calling it twice is harmless). NetfilterQueue is looked up when the node starts.
    """
    import netfilterqueue

    from engine import node
    from engine.nfq import enable_gso

    class GsoQueue(netfilterqueue.NetfilterQueue):
        def bind(self, queue_num: int, *args: Any, **kw: Any) -> None:
            super().bind(queue_num, *args, **kw)
            enable_gso(self, queue_num)

    # setattr, not assignment: the module attribute is a class, and replacing it is the point.
    setattr(netfilterqueue, "NetfilterQueue", GsoQueue)  # noqa: B010
    return node.main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["engine-gso"]:
        return engine_gso(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m demos.baselines", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pyloop", help="the Python NFQUEUE accept-all loop (run inside a namespace)")
    p.add_argument("--queue", type=int, default=QUEUE_NUM)
    p.add_argument("--gso", action="store_true", help="set NFQA_CFG_F_GSO with engine.nfq.enable_gso")
    p.add_argument("--range", type=int, default=0xFFFF, help="copy range in bytes")
    m = sub.add_parser("measure", help="measure the baselines once and print JSON")
    m.add_argument("--duration-s", type=float, default=2.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.cmd == "pyloop":
        return pyloop(args.queue, args.gso, args.range)
    out = measure(args.duration_s, 1, progress=lambda s: print(s, file=sys.stderr))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
