"""A bank node's ``bank.payment`` reports (docs/protocol.md §10) are never stranded by a
send that fails: whatever sending one raises, it leaves nothing "in flight", and it is
reported on the next hub link that takes requests.

The node runs in-process (real TLS, a real hub certificate on the other side), so the test
can hand a report to the node's send path on a link where sending it is refused for real:
one whose hub sent GOAWAY. The node itself never picks such a link
(``tests/test_hostile_bank_link.py`` shows that from the wire); this checks the guard
behind that choice.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from gateway import pki, secret_keys
from gateway.bank.node import BankNode
from gateway.config import BankNodeConfig
from gateway.tls import node_client_context
from gateway.transactions.model import now_ms
from protocol import banklink, messages
from protocol.frame import FrameType
from tests.deploy import RICH
from tests.rawclient import Raw
from tests.test_hostile_bank_link import HubPeer
from tests.waiting import wait_until


async def test_a_report_whose_send_fails_is_sent_again_on_another_link(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pki.init(tmp_path / "certs", merchants=[], banks=["bca-1"])
    secrets = secret_keys.init(tmp_path / "secrets.toml")
    key = secret_keys.load_link_key(secrets)
    # No periodic pushes: a report goes out when a payment is made or a link is welcomed.
    node = BankNode(BankNodeConfig(node_id="bca-1", bank="bca", listen_port=0,
                                   certs_dir=tmp_path / "certs", store_path=tmp_path / "bca.db",
                                   secrets_file=secrets, accounts={RICH[0]: 1_000},
                                   notify_retry_interval_s=3600.0))
    ctx = node_client_context(tmp_path / "certs", "hub", "hub")
    peers: list[HubPeer] = []

    async def hub_link() -> HubPeer:
        raw = await Raw.connect(node.port, ctx)
        await raw.hello_as_hub()
        peers.append(HubPeer(raw, key))
        return peers[-1]

    caplog.set_level(logging.WARNING, logger="paywire.bank")
    await node.start()
    try:
        leaving = await hub_link()
        leaving.raw.send(messages.encode_message(FrameType.GOAWAY, {
            "last_request_id": 0, "code": 901, "message": "hub leaving"}))
        await wait_until(lambda: any(not s.conn.may_send(FrameType.REQUEST)
                                     for s in node.sessions), "the node to see the GOAWAY")
        txid = f"va-{os.urandom(4).hex()}"
        opened = await leaving.call(banklink.OPEN_PAYMENT, {
            "op_id": f"{txid}:open", "transaction_id": txid, "kind": "va", "amount": 5_000,
            "currency": "IDR", "expiry_ms": now_ms() + 3_600_000, "merchant_id": "M1"})
        assert opened["ok"] is True
        assert (await leaving.call(banklink.ADMIN_PAY, {"transaction_id": txid}))["paid"]
        [note] = [n for n in await node.store.outbox() if n["transaction_id"] == txid]
        [draining] = list(node.sessions)
        # The send is refused (a draining server sends no REQUEST): nothing escapes, and
        # the report is not left "in flight", where it would never be sent again.
        node._send_notification(draining, note["notification_id"], note)
        assert note["notification_id"] not in node._in_flight_notes
        assert caplog.text.count("sent again later") == 1
        assert leaving.reported == []
        staying = await hub_link()  # welcomed: the node reports what its outbox holds
        await wait_until(lambda: txid in staying.reported, "the report on the open link")
        await wait_until(lambda: note["notification_id"] not in node._in_flight_notes,
                         "the report acknowledged")
        assert all(n["transaction_id"] != txid for n in await node.store.outbox())
        # The node itself never tried the draining link (the payment's own push, and the
        # welcome's, came before this point: the books answer in order).
        assert caplog.text.count("sent again later") == 1
        assert leaving.reported == []
    finally:
        for peer in peers:
            peer.close()
        await node.stop()
