"""A real Flower deployment on 127.0.0.1: a SuperLink, SuperNodes, TLS, ``flwr run``.

The SuperLink admits only registered SuperNodes (``--enable-supernode-auth``), and the run
config binds their node ids to clients, as in docs/concepts/flower.md.

Starts every process itself, ends every one of them (and what they spawned) by pid.
"""

import contextlib
import datetime
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from safetensors.torch import load_file

from fedpet.cli import main

pytestmark = pytest.mark.integration  # flwr deployments: SuperLink, SuperNodes, flwr run

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


def _key_and_name(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Name]:
    return ec.generate_private_key(ec.SECP256R1()), x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, ca_name = _key_and_name("fedpet test CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key, name = _key_and_name("127.0.0.1")
    server = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = folder / "ca.crt", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(server.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def make_node_key(path: Path) -> Path:
    """A SuperNode's EC key pair in OpenSSH format (as ``ssh-keygen -t ecdsa`` writes it)."""
    key = ec.generate_private_key(ec.SECP384R1())
    openssh = serialization.Encoding.OpenSSH
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    public = path.with_suffix(".pub")
    public.write_bytes(key.public_key().public_bytes(openssh, serialization.PublicFormat.OpenSSH))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, seconds: float = 60) -> None:
    """Return once something listens on 127.0.0.1:``port`` (the SuperLink has started)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port} after {seconds} s")


class Deployment:
    """The processes of one test deployment; :meth:`close` ends all of them."""

    def __init__(self, folder: Path, port: int, ca: Path) -> None:
        self.folder, self.port, self.ca = folder, port, ca
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "HF_HUB_OFFLINE": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_HOME": str(folder / "flwr-home"),
        }
        self.procs: list[subprocess.Popen] = []
        self.nodes: list[subprocess.Popen] = []
        self.node_ids: list[int] = []  # of the registered nodes, in order

    def register(self, name: str) -> tuple[Path, int]:
        """A new node key, registered with the SuperLink: its path and the node id."""
        key = make_node_key(self.folder / name)
        flwr = [str(BIN / "flwr"), "supernode", "register", str(key.with_suffix(".pub"))]
        said = subprocess.run(
            [*flwr, "test", "--format", "json"], env=self.env, capture_output=True, text=True
        )
        assert said.returncode == 0, said.stdout + said.stderr
        return key, int(json.loads(said.stdout)["node-id"])

    def wait_online(self, node_id: int, seconds: float = 60) -> None:
        """Return once ``flwr supernode list`` shows the node online."""
        listing = [str(BIN / "flwr"), "supernode", "list", "test", "--format", "json"]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            said = subprocess.run(listing, env=self.env, capture_output=True, text=True)
            nodes = json.loads(said.stdout)["nodes"] if said.returncode == 0 else []
            if {n["node-id"]: n["status"] for n in nodes}.get(str(node_id)) == "online":
                return
            time.sleep(0.5)
        raise AssertionError(f"node {node_id} is not online after {seconds} s")

    def node(self, partition: int, key: Path, log: str) -> subprocess.Popen:
        """A SuperNode that signs with ``key`` and says it holds client ``partition``.

        It keeps its clients' states in ``node<partition>-state``.
        """
        state = self.folder / f"node{partition}-state"
        return self.start(
            str(BIN / "flower-supernode"),
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--root-certificates",
            str(self.ca),
            "--auth-supernode-private-key",
            str(key),
            "--port",
            str(free_port()),
            "--node-config",
            f'partition-id={partition} num-partitions=2 state-dir="{state}"',
            log=log,
        )

    def start(self, *cmd: str, log: str) -> subprocess.Popen:
        out = (self.folder / log).open("w")
        proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        family = []
        for proc in self.procs:
            try:
                family += [
                    proc.pid,
                    *(c.pid for c in psutil.Process(proc.pid).children(recursive=True)),
                ]
            except psutil.Error:
                family.append(proc.pid)
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait(timeout=30)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A SuperLink with TLS that admits registered SuperNodes; two hold clients 0 and 1."""
    ca, cert, key = make_certificates(tmp_path)
    dep = Deployment(tmp_path, free_port(), ca)
    (tmp_path / "flwr-home").mkdir()
    (tmp_path / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{dep.port}"\n'
        f'root-certificates = "{ca}"\n'
    )
    try:
        dep.start(
            str(BIN / "flower-superlink"),
            "--port",
            str(dep.port),
            "--ssl-ca-certfile",
            str(ca),
            "--ssl-certfile",
            str(cert),
            "--ssl-keyfile",
            str(key),
            "--enable-supernode-auth",
            log="superlink.log",
        )
        wait_for_port(dep.port)
        for i in range(2):  # the ServerApp waits for their ClientApps to start
            node_key, node_id = dep.register(f"node{i}")
            dep.node_ids.append(node_id)
            dep.nodes.append(dep.node(i, node_key, log=f"supernode{i}.log"))
        yield dep
    finally:
        dep.close()


def run_config(
    dep: Deployment,
    model: Path,
    rounds: int,
    timeout: float,
    resume: bool = False,
    secure: bool = False,
    extra: str = "",
) -> Path:
    """A run.toml for ``dep``: its nodes bound to clients 0, 1, ... in registration order.

    ``extra`` is more of the fedpet config, as YAML lines.
    """
    folder = dep.folder
    path = folder / ("resume.toml" if resume else "run.toml")
    nodes = " ".join(f"{node}={k}" for k, node in enumerate(dep.node_ids))
    path.write_text(
        f'resume = {str(resume).lower()}\nnodes = "{nodes}"\n'
        f'out = "{folder / "flower-run"}"\nfedpet = """\nmodel: {model}\nseed: 3\n'
        "data: {max_train_samples: 64, max_eval_samples: 32}\n"
        f"secagg: {{enabled: {str(secure).lower()}}}\n"
        f"federation: {{clients: 2, clients_per_round: 2, rounds: {rounds}, "
        f"round_timeout: {timeout}}}\n{extra}" + '"""\n'
    )
    return path


def in_process(out: Path, local: Path) -> dict[str, torch.Tensor]:
    """Rerun a deployment's config with the in-process runtime; its final global state."""
    argv = ["run", "--config", str(out / "config.yaml"), "--out", str(local)]
    assert main([*argv, "--runtime", "simulation", "--set", "secagg.enabled=false"]) == 0
    return load_file(local / "checkpoint" / "global.safetensors")


def flwr_run(dep: Deployment, config: Path, log: str = "flwr-run.log") -> subprocess.Popen:
    flwr = str(BIN / "flwr")
    return dep.start(
        flwr, "run", str(REPO), "test", "--run-config", str(config), "--stream", log=log
    )


def wait_for_rounds(metrics: Path, rounds: int, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= rounds:
            return
        time.sleep(0.2)
    raise AssertionError(f"{rounds} rounds were not logged within {seconds} s")


def test_secure_aggregation_over_tls_among_only_the_registered_bound_nodes(
    deployment: Deployment, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # a third node, registered with the SuperLink but not in the run's node map, claims
    # client 0 (node0's); a fourth, never registered, claims client 1: the secure sum is
    # taken over the two bound nodes only (one deployment for both checks: each costs a
    # SuperLink, nodes and a ServerApp start)
    key, impostor = deployment.register("impostor")
    deployment.node(0, key, log="impostor.log")
    stranger = deployment.node(1, make_node_key(tmp_path / "stranger"), log="stranger.log")
    assert stranger.wait(timeout=60) != 0
    deployment.wait_online(impostor)  # so that the ServerApp sees it when it looks for nodes
    config = run_config(deployment, tiny_model_dir, rounds=1, timeout=120, secure=True)
    run = flwr_run(deployment, config)
    assert run.wait(timeout=300) == 0, (tmp_path / "flwr-run.log").read_text()[-2000:]
    out = tmp_path / "flower-run"
    [row] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["aggregated"] == 2 and row["failed"] == row["rejected"] == []
    log = (tmp_path / "flwr-run.log").read_text()
    assert f"fedpet: node {impostor} refused: not in the node map" in log
    assert log.count("refused") == 1
    received = {
        name: (tmp_path / f"{name}.log").read_text().count("Receiving:")
        for name in ("supernode0", "supernode1", "impostor", "stranger")
    }
    # a bound node: one question, then the secure round's stages; the others: no message
    assert received["supernode0"] == received["supernode1"] > 2
    assert received["impostor"] == received["stranger"] == 0
    stranger_log = (tmp_path / "stranger.log").read_text()
    assert "Failed to activate SuperNode" in stranger_log and "Receiving" not in stranger_log
    a = load_file(out / "checkpoint" / "global.safetensors")
    b = in_process(out, tmp_path / "local")
    # each client's value is scaled by n_k / max n, clipped to +-8 and stochastically
    # rounded to 2**22 levels: the unmasked mean is off by < 2 clients x 16 / 2**22
    bound = 2 * 16 / 2**22
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < bound
    assert not all(torch.equal(a[k], b[k]) for k in a)  # the quantized path really ran
    trainable = json.loads((out / "summary.json").read_text())["trainable_params"]
    assert row["bytes_up"] > 2 * 8 * trainable  # int64 masked vectors plus key exchange


def test_a_supernode_killed_mid_run_is_a_recorded_failure(
    deployment: Deployment, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # the timeout must cover a node's first round (it loads the experiment): 20 s did not
    # on a loaded 2-core machine, and both nodes were dropped as unresponsive
    # two rounds: the second waits out the timeout for the killed node (each more round
    # would wait again, 60 s of the suite's time, and show nothing new)
    config = run_config(deployment, tiny_model_dir, rounds=2, timeout=60)
    run = flwr_run(deployment, config)
    metrics = tmp_path / "flower-run" / "metrics.jsonl"
    wait_for_rounds(metrics, 1)
    victim = deployment.nodes[1]
    for child in psutil.Process(victim.pid).children(recursive=True):
        child.kill()
    victim.kill()
    assert run.wait(timeout=300) == 0, (tmp_path / "flwr-run.log").read_text()[-2000:]
    summary = json.loads((tmp_path / "flower-run" / "summary.json").read_text())
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert summary["rounds_completed"] == 2
    assert summary["clients_failed"] >= 1
    assert all(r["aggregated"] >= 1 for r in rows)  # the remaining node carried every round
    assert [x["client"] for x in rows[1]["failed"]] == [1]


SCAFFOLD = "algorithm: {name: scaffold}\ntrain: {optimizer: sgd, max_grad_norm: null}\n"


def test_a_killed_serverapp_resumes_to_the_in_process_result(
    deployment: Deployment, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # the TLS deployment, killed and resumed, ends with the in-process runtime's state and
    # byte counts (an uninterrupted deployment is the simpler case of the same path); with
    # SCAFFOLD, whose clients keep their controls on their nodes' disks across the resume
    config = run_config(deployment, tiny_model_dir, rounds=2, timeout=60, extra=SCAFFOLD)
    run = flwr_run(deployment, config)
    out = tmp_path / "flower-run"
    wait_for_rounds(out / "metrics.jsonl", 1)
    superlink = psutil.Process(deployment.procs[0].pid)
    [server] = [p for p in superlink.children(recursive=True) if "flwr-serverapp" in p.name()]
    server.kill()
    run.kill()  # `flwr run` only streams the log; it would wait ~45 s to see the run end
    run.wait(timeout=30)
    assert not (out / "summary.json").exists()
    again = run_config(deployment, tiny_model_dir, 2, 60, resume=True, extra=SCAFFOLD)
    resumed = flwr_run(deployment, again, log="resume.log")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resume.log").read_text()[-2000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    a = load_file(out / "checkpoint" / "global.safetensors")
    b = in_process(out, tmp_path / "local")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((out / "summary.json").read_text())
    local = json.loads((tmp_path / "local" / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
    assert summary["bytes_up_total"] == local["bytes_up_total"] > 0
    # the clients' controls stayed on their nodes: the server's run directory holds none
    assert list((tmp_path / "local" / "clients").glob("*.safetensors"))  # the simulation's
    assert not [p for p in out.rglob("*") if p.name.split("-r")[0].isdigit()]
    for k in range(2):
        [folder] = (tmp_path / f"node{k}-state").iterdir()  # one run
        # the state the resumed round 2 continued from, and the one it kept
        assert sorted(p.name for p in folder.iterdir()) == [
            f"{k}-r1.safetensors",
            f"{k}-r2.safetensors",
        ]
    assert not [log for log in tmp_path.glob("*.log") if "afresh" in log.read_text()]
