"""CURVE keys of a deployment: who may talk to which socket, and the files that carry the keys.

Owns: `Keypair`, `DeploymentKeys` (the coordinator's, every node's and the clients' keypairs,
generated per deployment with `zmq.curve_keypair`), `WorkerKeys` (what one worker needs: its
node's keypair and the coordinator's public key; `helix-jax worker --keys FILE`), `ClientKeys`
and the connection file (`connection.json`: the client endpoint, the server public key and a
client keypair), private files written with mode 0600, `Authenticator` (a pyzmq ZAP
`ThreadAuthenticator` per context admitting, per ZAP domain, a set of public keys that may
grow, e.g. a worker admits its upstream neighbours once it knows them), the socket setup of
CURVE servers and clients, and the loopback rule of `--insecure`.

Sits under every socket of the data flow (client -> coordinator -> workers -> coordinator):
a server socket (one that binds) admits only the keys its domain lists; the ZAP user id of an
admitted peer is its z85 public key, which `wire.recv(..., secure=True)` attaches to every
message as `Message.sender`, so the loops can check who sent what (`KeyBook.node_of`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping

import zmq
from zmq.auth.thread import ThreadAuthenticator

from helix_jax.errors import ConfigError

logger = logging.getLogger(__name__)

CLIENT, CONTROL, DATA = "client", "control", "data"  # ZAP domains of the server sockets


@dataclasses.dataclass(frozen=True)
class Keypair:
    """A CURVE keypair as z85 text (40 characters each)."""

    public: str
    secret: str

    @classmethod
    def generate(cls) -> "Keypair":
        public, secret = zmq.curve_keypair()
        return cls(public.decode("ascii"), secret.decode("ascii"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], what: str) -> "Keypair":
        pair = cls(str(data.get("public", "")), str(data.get("secret", "")))
        for name, key in (("public", pair.public), ("secret", pair.secret)):
            if len(key) != 40:
                raise ConfigError(f"{what}: the {name} key must be 40 z85 characters, got {len(key)}")
        return pair


@dataclasses.dataclass(frozen=True)
class ClientKeys:
    """What a client needs: the coordinator's public key and its own keypair."""

    server_public: str
    own: Keypair


@dataclasses.dataclass(frozen=True)
class WorkerKeys:
    """What one worker needs: its node, its keypair, the coordinator's public key and every
    node's public key (to encrypt to its neighbours and to admit them on its data socket)."""

    node: str
    own: Keypair
    coordinator_public: str
    peers: Mapping[str, str] = dataclasses.field(default_factory=dict)  # node -> public key

    def write(self, path: str | Path) -> Path:
        return write_private_json(
            path,
            {
                "node": self.node,
                "public": self.own.public,
                "secret": self.own.secret,
                "coordinator_public": self.coordinator_public,
                "peers": dict(self.peers),
            },
        )

    @classmethod
    def read(cls, path: str | Path) -> "WorkerKeys":
        data = _read_json(path, "keys file")
        own = Keypair.from_dict(data, f"keys file {path}")
        server = str(data.get("coordinator_public", ""))
        if len(server) != 40 or not isinstance(data.get("node"), str):
            raise ConfigError(f"keys file {path} needs 'node' and a 40-character 'coordinator_public'")
        peers = data.get("peers", {})
        if not isinstance(peers, dict) or not all(isinstance(k, str) and len(k) == 40 for k in peers.values()):
            raise ConfigError(f"keys file {path}: 'peers' must map node names to 40-character public keys")
        return cls(data["node"], own, server, peers)


@dataclasses.dataclass(frozen=True)
class DeploymentKeys:
    """Every keypair of one deployment (generated fresh for each deploy)."""

    coordinator: Keypair
    nodes: Mapping[str, Keypair]
    clients: tuple[Keypair, ...]

    @classmethod
    def generate(cls, nodes: Iterable[str], clients: int = 1) -> "DeploymentKeys":
        return cls(Keypair.generate(), {n: Keypair.generate() for n in sorted(nodes)}, tuple(Keypair.generate() for _ in range(clients)))

    def worker(self, node: str) -> WorkerKeys:
        return WorkerKeys(node, self.nodes[node], self.coordinator.public, {n: k.public for n, k in self.nodes.items()})

    def client(self, index: int = 0) -> ClientKeys:
        return ClientKeys(self.coordinator.public, self.clients[index])

    def node_of(self, public: str | None) -> str | None:
        """The node whose public key is `public` (None: no node's)."""
        for node, pair in self.nodes.items():
            if pair.public == public:
                return node
        return None


# ---------------------------------------------------------------------------- files


def write_private_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write `data` as JSON readable by this user only (mode 0600, also when it existed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    return path


def _read_json(path: str | Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{what} {path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object")
    return data


def write_connection_file(path: str | Path, endpoint: str, keys: ClientKeys | None) -> Path:
    """connection.json: the client endpoint and, when CURVE is on, the keys to reach it."""
    data: dict[str, Any] = {"endpoint": endpoint, "transport": "curve" if keys else "insecure"}
    if keys is not None:
        data.update(server_public=keys.server_public, client_public=keys.own.public, client_secret=keys.own.secret)
    return write_private_json(path, data)


def read_connection_file(path: str | Path) -> tuple[str, ClientKeys | None]:
    """(endpoint, keys or None for an insecure deployment) of a connection file."""
    data = _read_json(path, "connection file")
    endpoint = data.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith("tcp://"):
        raise ConfigError(f"connection file {path} has no tcp:// 'endpoint'")
    if data.get("transport") == "insecure":
        return endpoint, None
    own = Keypair.from_dict({"public": data.get("client_public", ""), "secret": data.get("client_secret", "")}, f"connection file {path}")
    server = str(data.get("server_public", ""))
    if len(server) != 40:
        raise ConfigError(f"connection file {path} needs a 40-character 'server_public'")
    return endpoint, ClientKeys(server, own)


# ---------------------------------------------------------------------------- sockets


def curve_server(sock: zmq.Socket, own: Keypair, domain: str) -> zmq.Socket:
    """Make `sock` (before bind) a CURVE server whose peers the ZAP `domain` admits."""
    sock.curve_secretkey = own.secret.encode()
    sock.curve_publickey = own.public.encode()
    sock.zap_domain = domain.encode()
    sock.curve_server = True
    return sock


def curve_client(sock: zmq.Socket, own: Keypair, server_public: str) -> zmq.Socket:
    """Make `sock` (before connect) a CURVE client of the server with `server_public`."""
    sock.curve_secretkey = own.secret.encode()
    sock.curve_publickey = own.public.encode()
    sock.curve_serverkey = server_public.encode()
    return sock


class Authenticator:
    """ZAP for one context: per domain, the set of public keys admitted (may grow while running)."""

    def __init__(self, ctx: zmq.Context) -> None:
        self._allowed: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("helix_jax.zap"))
        self._auth.start()
        for domain in (CLIENT, CONTROL, DATA):  # pyzmq looks a provider up by the exact domain
            self._auth.configure_curve_callback(domain, self)

    def allow(self, domain: str, keys: Iterable[str]) -> None:
        with self._lock:
            self._allowed.setdefault(domain, set()).update(keys)

    def callback(self, domain: str, key: bytes) -> bool:  # called by pyzmq's ZAP thread
        with self._lock:
            ok = key.decode("ascii") in self._allowed.get(domain, ())
        if not ok:
            logger.warning("refused a CURVE peer on the %s socket: its key %s... is not admitted", domain, key.decode("ascii")[:8])
        return ok

    def stop(self) -> None:
        self._auth.stop()


# ---------------------------------------------------------------------------- beyond the handshake


def check_data_sender(msg: Any, sender: str, upstream: set[str], node: str) -> None:
    """A worker's data socket: `free` only from the coordinator; a `step` of hop 0 only from the
    coordinator, of hop h only from the route's hop h-1, itself one of `upstream` (the nodes
    that may hand off to `node`, and the coordinator). ProtocolError (logged, dropped) else."""
    from helix_jax.errors import ProtocolError
    from helix_jax.topology import COORDINATOR

    rid = msg.get("request_id")
    if msg.kind == "free" and sender != COORDINATOR:
        raise ProtocolError(f"free of {rid} from {sender}, not the coordinator: dropped", "forged")
    if msg.kind != "step":
        return
    hop, route = msg["hop"], msg["route"]
    previous = route[hop - 1] if 0 < hop <= len(route) else None
    expected = COORDINATOR if hop == 0 else (previous[0] if isinstance(previous, list) and previous else None)
    if sender not in upstream:
        raise ProtocolError(f"step {hop} of {rid} from {sender}, which does not hand off to {node}: dropped", "forged")
    if sender != expected:
        raise ProtocolError(f"step {hop} of {rid} from {sender}, expected {expected}: dropped", "forged")


# ---------------------------------------------------------------------------- --insecure


def is_loopback(host: str | None) -> bool:
    if host in (None, "", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(endpoint: str) -> str:
    """HOST of tcp://HOST:PORT."""
    return endpoint.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")


def check_insecure(hosts: Mapping[str, str | None], what: str = "--insecure") -> None:
    """Plain TCP only on loopback: ConfigError naming every non-loopback endpoint otherwise.
    `hosts`: a description (e.g. "node cpu-2") -> its host."""
    outside = [f"{name} ({host})" for name, host in hosts.items() if not is_loopback(host)]
    if outside:
        raise ConfigError(
            f"{what} turns CURVE off, which is allowed only when every endpoint is on loopback; not on loopback: {', '.join(outside)}"
        )
