"""``paywire trace`` end to end: a real hub and bank nodes (processes, TLS), charges through the
client library, then the command line as a student runs it."""

from __future__ import annotations

import asyncio
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.client import Card
from gateway.config import FraudConfig
from gateway.tracing import timeline
from tests.deploy import KEYS, RICH, Deployment, deployment

BANK_NODE_HOPS = ["bank_node_received", "bank_node_committed", "bank_node_answered"]
PATH = [h.key for h in timeline.HOPS]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # A blocked IP: the fraud screen denies those charges before any bank call.
    with deployment(tmp_path_factory.mktemp("trace"), bca_nodes=1,
                    hub_overrides={"fraud": FraudConfig(block_ips=["6.6.6.6"])}) as d:
        yield d


def card(i: int) -> Card:
    return Card(RICH[i % len(RICH)], 12, 2030, "123")


async def paywire(dep: Deployment, *args: str) -> tuple[int, str, str]:
    """``paywire ARGS`` in its own process, as a merchant M1 on the deployment's hub."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args, "--hub", f"127.0.0.1:{dep.port}",
        "--merchant", "M1", "--server-key", KEYS["M1"], "--certs", str(dep.certs),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def chart_rows(text: str) -> list[tuple[str, str, float, float | None]]:
    """(hop, clock, offset ms, step ms) of each row of the text chart."""
    rows = []
    for line in text.splitlines()[2:]:
        if "|" not in line:
            break
        cols = line.split("|")[0].split()
        rows.append((cols[0], cols[1], float(cols[2]), float(cols[3]) if len(cols) > 3
                     else None))
    return rows


async def test_trace_of_a_card_charge_shows_every_hop_in_order(dep: Deployment,
                                                               tmp_path: Path) -> None:
    async with dep.client() as c:
        tx = await c.charge("trace-card", 25_000, card=card(0))
        assert tx.transaction_status == "capture"
        status = await c.status("trace-card")
    # The hub recorded every hop of the charge, the client's and the bank node's included.
    assert set(status.hops_us) == set(PATH)
    code, out, err = await paywire(dep, "trace", "trace-card")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (f"trace of order trace-card (merchant M1): credit_card, "
                        f"capture/accept, transaction {tx.transaction_id}")
    rows = chart_rows(out)
    assert [r[0] for r in rows] == PATH
    assert [r[1] for r in rows] == ["client", "hub", "hub", "hub", "bank", "bank", "bank",
                                    "hub", "hub", "hub"]
    # One machine, one wall clock: every step is non-negative, offsets grow with the path.
    assert rows[0][2] == 0.0 and rows[0][3] is None
    assert all(step is not None and step >= 0 for _, _, _, step in rows[1:]), out
    assert [r[2] for r in rows] == sorted(r[2] for r in rows)
    # The bank node's own hops sit between the hub's send and the hub's receipt.
    at = {r[0]: r[2] for r in rows}
    assert at["bank_sent"] <= at["bank_node_received"] <= at["bank_node_committed"] \
        <= at["bank_node_answered"] <= at["bank_answered"]
    assert f"total {rows[-1][2]:.3f} ms from client_sent to answered" in lines
    assert not any(line.startswith("not recorded") for line in lines)
    assert any(line.startswith("note: client_sent is on the client's clock") for line in lines)
    assert err == ""

    png = tmp_path / "trace.png"
    code, out_png, err = await paywire(dep, "trace", "trace-card", "--png", str(png))
    assert code == 0, err
    assert out_png.splitlines()[-1] == f"wrote {png}"
    assert chart_rows(out_png) == rows  # the same chart, as text
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width > 0 and height > 0


async def test_an_unknown_order_is_one_clear_line_and_a_failure(dep: Deployment) -> None:
    code, out, err = await paywire(dep, "trace", "no-such-order")
    assert code == 1 and out == ""
    assert err.splitlines() == ["paywire trace: NOT_FOUND: no transaction for order "
                                "'no-such-order'"], err


async def test_later_operations_leave_the_charge_hops_and_the_ledger_has_them(
        dep: Deployment) -> None:
    async with dep.client() as c:
        await c.charge("trace-auth", 30_000, card=card(1), capture=False)
        first = (await c.status("trace-auth")).hops_us
        assert set(BANK_NODE_HOPS) <= set(first)
        await c.capture("trace-auth")
        after = (await c.status("trace-auth")).hops_us
        va = await c.charge("trace-va", 40_000, "bank_transfer", bank="bca")
        assert va.va_number
        va_hops = (await c.status("trace-va")).hops_us
    assert after == first  # the capture's bank call and commit changed none of them
    assert set(va_hops) == set(PATH)  # a virtual account's open_payment: the same path
    # Offline, from the ledger file beside the running hub.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "trace", "trace-auth", "--ledger",
        str(dep.workdir / "ledger.db"), "--merchant", "M1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err_b.decode()
    keys = [r[0] for r in chart_rows(out_b.decode())]
    assert keys[:9] == PATH[:9]  # ``answered`` is written with the next change: the capture
    assert all(r[3] is None or r[3] >= 0 for r in chart_rows(out_b.decode()))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "trace", "nope", "--ledger",
        str(dep.workdir / "ledger.db"), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and out_b == b""
    assert err_b.decode().startswith("paywire trace: NOT_FOUND: no transaction for order "
                                     "'nope' of merchant 'M1'")
    assert len(err_b.decode().splitlines()) == 1


async def test_charges_batched_to_the_bank_each_get_the_node_timings(
        dep: Deployment) -> None:
    before = await dep.stats("bca")
    async with dep.client() as c:
        txs = await asyncio.gather(*(c.charge(f"trace-batch-{i}", 1_000 + i, card=card(i))
                                     for i in range(24)))
        hops = [(await c.status(tx.order_id)).hops_us for tx in txs]
    after = await dep.stats("bca")
    ops = sum(after["received"].values()) - sum(before["received"].values())
    frames = int(after["frames_received"]) - int(before["frames_received"])  # type: ignore
    assert ops == 24 and frames < ops  # some calls shared a bank.batch frame
    for h in hops:
        assert set(BANK_NODE_HOPS) <= set(h)
        assert h["bank_sent"] <= h["bank_node_received"] <= h["bank_node_committed"] \
            <= h["bank_node_answered"] <= h["bank_answered"]


async def test_the_node_reports_timings_per_answer_and_stores_none(dep: Deployment) -> None:
    """A plain ``bank.*`` answer carries the node's ``timings_us``; the answer stored under
    the op id (what an inquiry or a repeat returns) holds none of them (§10.3)."""
    async with dep.client() as c:
        tx = await c.charge("trace-stored", 5_000, card=card(3))
    found = await dep.admin("bca", "bank.inquiry", {"op_id": f"{tx.transaction_id}:authorize"})
    assert found["found"] and found["result"]["approved"]
    assert "timings_us" not in found["result"]
    timings = found["timings_us"]
    assert set(timings) == {"received", "committed", "answered"}
    assert timings["received"] <= timings["committed"] <= timings["answered"]
    stats = await dep.admin("bca", "admin.stats")
    assert "timings_us" not in stats  # tools' answers carry none


async def test_trace_of_a_charge_the_fraud_screen_denied(dep: Deployment) -> None:
    async with dep.client() as c:
        tx = await c.charge("trace-denied", 7_000, card=card(4), customer={"ip": "6.6.6.6"})
    assert (tx.transaction_status, tx.fraud_status) == ("deny", "deny")
    code, out, err = await paywire(dep, "trace", "trace-denied")
    assert code == 0, err
    rows = chart_rows(out)
    assert [r[0] for r in rows] == ["client_sent", "received", "committed", "answered"]
    assert all(r[3] is None or r[3] >= 0 for r in rows)
    lines = out.splitlines()
    not_recorded = lines.index(next(ln for ln in lines if ln.startswith("not recorded:")))
    assert " ".join(lines[not_recorded:not_recorded + 2]).startswith(
        "not recorded: intent_committed, bank_sent, bank_node_received,")
    assert "  denied by the fraud screen: no intent, no bank call" in lines
