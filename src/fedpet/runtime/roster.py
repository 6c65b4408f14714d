"""Which Flower node holds which fedpet client: the nodes' claims, checked against a node map.

Each SuperNode says which client it holds (its ``partition-id``). On its own that is the
node's word. A deployment binds clients to the node ids its SuperLink registered (the
``nodes`` value of ``flwr run``'s run config, :func:`node_map`); a node's claim must then
agree with the map, and a node outside it is refused without being asked. A refused node
is logged as ``fedpet: node N refused: ...`` and never sent a train message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedpet.errors import FedpetError
from fedpet.runtime.messages import number

LOG = logging.getLogger("fedpet")
QUERY_TIMEOUT = 2.0
"""Seconds a later round waits for new nodes to say which client they hold."""


def node_map(text: str) -> dict[int, int] | None:
    """The node map of a run config's ``nodes`` value (node id -> client), or None if empty.

    ``text`` holds ``<node id>=<client>`` pairs separated by spaces, e.g.
    ``"16317938773613128034=0 4756890389830581492=1"``: the node ids ``flwr supernode
    register`` printed, and the client each node holds.

    Raises
    ------
    FedpetError
        When a pair is not two non-negative integers, or two nodes are bound to one client.
    """
    bound: dict[int, int] = {}
    for pair in text.split():
        node, _, client = pair.partition("=")
        if not (node.isdigit() and client.isdigit()):
            raise FedpetError(
                f"run config nodes: {pair!r} is not allowed: give <node id>=<client> pairs, "
                "the node id as `flwr supernode register` prints it"
            )
        if int(node) in bound or int(client) in bound.values():
            raise FedpetError(
                f"run config nodes: {pair!r} binds a node or a client twice: each node "
                "holds one client, and each client one node"
            )
        bound[int(node)] = int(client)
    return bound or None


class Roster:
    """The nodes holding the run's clients, learnt by asking the nodes (client -> node id).

    Parameters
    ----------
    clients
        How many clients the run has.
    bound
        The node map (node id -> client), or None: then a node's claim is its own word,
        and the first node to claim a client holds it.
    """

    def __init__(self, clients: int, bound: Mapping[int, int] | None = None) -> None:
        outside = sorted(k for k in (bound or {}).values() if k >= clients)
        if outside:
            raise FedpetError(
                f"the node map binds client {outside[0]}: this run has clients 0 to {clients - 1}"
            )
        self.clients, self.bound = clients, dict(bound) if bound is not None else None
        self.nodes: dict[int, int] = {}
        self.unresponsive: set[int] = set()  # stopped answering: never asked again
        self.refused: set[int] = set()  # claim refused: never asked again

    def discover(self, grid: Grid, patience: float) -> None:
        """Ask the nodes not mapped yet which client they hold.

        Until every client that can be held is mapped (with a node map: every bound
        client) or ``patience`` seconds have passed, new nodes are
        asked as they register with the SuperLink, and a node still starting is asked
        again when it answers with an error; a question not answered yet stays open (a
        SuperNode's first answer waits for its ClientApp to start). With no patience, the
        nodes not mapped yet are asked once and given :data:`QUERY_TIMEOUT` seconds. A node
        outside the node map is refused without a question. A node that stopped answering
        during training is not asked again, nor is one that was refused (see :meth:`claim`).
        """
        deadline = time.monotonic() + max(patience, QUERY_TIMEOUT)
        asked: dict[str, int] = {}  # open question (message id) -> node
        again = True
        holdable = self.clients if self.bound is None else len(self.bound)
        while len(self.nodes) < holdable:
            known = set(self.nodes.values()) | self.unresponsive | self.refused
            known |= set(asked.values())
            for node in grid.get_node_ids() if again else ():
                if node in known:
                    continue
                if self.bound is not None and node not in self.bound:
                    self.refuse(node, "not in the node map")  # not even asked
                    continue
                query = Message(content=RecordDict(), dst_node_id=node, message_type="query")
                asked.update((sent, node) for sent in grid.push_messages([query]))
            again = patience > 0
            for reply in grid.pull_messages(list(asked)):
                node = asked.pop(reply.metadata.reply_to_message_id)
                if not reply.has_error():  # (an error: still starting; asked again)
                    self.claim(node, reply)
            if time.monotonic() >= deadline or not (asked or again):
                return
            time.sleep(0.2)

    def claim(self, node: int, reply: Message) -> None:
        """Map ``node`` to the client it says it holds, unless that cannot be so.

        A claim outside the run's clients is refused. With a node map, so is a claim of
        another client than the map binds the node to; without one, a claim of a client
        another node already holds (the first claim stands).
        """
        try:
            claimed = number(reply.content.metric_records["metrics"]["partition-id"])
            k = self.client_of_claim(node, claimed)
        except (KeyError, TypeError, ValueError) as exc:
            why = str(exc) if isinstance(exc, ValueError) else "its answer has no partition-id"
            self.refuse(node, why)
            return
        self.nodes[k] = node

    def client_of_claim(self, node: int, claimed: float) -> int:
        """The client ``node`` may hold for its claim; ValueError saying why it may not."""
        n = self.clients
        if not (claimed.is_integer() and 0 <= claimed < n):
            raise ValueError(f"partition-id {claimed:g} is not a client of this run (0 to {n - 1})")
        k = int(claimed)
        if self.bound is None and k in self.nodes:
            raise ValueError(f"client {k} is already held by node {self.nodes[k]}")
        if self.bound is not None and self.bound[node] != k:
            bound = self.bound[node]
            raise ValueError(f"it claims client {k}, the node map binds it to client {bound}")
        return k

    def refuse(self, node: int, why: str) -> None:
        """Never ask or route to ``node`` again; log why, in one line."""
        self.refused.add(node)
        LOG.warning("fedpet: node %d refused: %s", node, why)

    def forget(self, node: int) -> None:
        """Stop routing clients to a node that did not answer."""
        self.nodes = {k: n for k, n in self.nodes.items() if n != node}
        self.unresponsive.add(node)
