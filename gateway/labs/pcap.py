"""Reading a capture file (pcap or pcapng) back into TCP byte streams, for lab 3's check.

Why our own reader: the check must read what the student captured without trusting their
answers, and decode the plaintext stream with ``protocol/`` (the same decoder the hub
runs), not with the Wireshark dissector it is also meant to teach. It reads the formats
``dumpcap``/``tcpdump``/Wireshark write (pcapng, classic pcap in either byte order, micro-
or nanosecond) and the link types a loopback capture has (Linux ``lo``: Ethernet; ``-i
any``: Linux cooked v1/v2; BSD/macOS ``lo0``: NULL/LOOP; raw IP), then IPv4/IPv6 and TCP.

Each direction of each connection is put back together by sequence number (duplicates and
retransmissions dropped, the stream cut at the first gap). Everything is bounded: the file
size, the packet count and each stream's length; a file that is not a capture, or is cut
short (dumpcap still writing it), gives what could be read and a note, never an exception.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

CAPTURE_BYTES_MAX = 64 * 1024 * 1024  # a lab capture is kilobytes; more is the wrong file
PACKETS_MAX = 200_000
STREAM_BYTES_MAX = 16 * 1024 * 1024

PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_IDB, PCAPNG_PB, PCAPNG_SPB, PCAPNG_EPB = 1, 2, 3, 6
BYTE_ORDER_MAGIC = 0x1A2B3C4D
PCAP_MAGICS = {0xA1B2C3D4, 0xA1B23C4D}

# Link types (https://www.tcpdump.org/linktypes.html) a loopback capture can have.
LINK_NULL, LINK_ETHERNET, LINK_RAW, LINK_RAW_OLD, LINK_LOOP = 0, 1, 101, 12, 108
LINK_SLL, LINK_SLL2, LINK_IPV4, LINK_IPV6 = 113, 276, 228, 229
ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN = 0x0800, 0x86DD, 0x8100
IPPROTO_TCP = 6
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


@dataclass(frozen=True)
class Segment:
    """One TCP segment of a capture: addresses as text, ``index`` its packet number (1-based,
    as Wireshark numbers packets)."""

    index: int
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    flags: int
    payload: bytes
    truncated: bool  # the capture kept fewer bytes than the packet had (snaplen)


@dataclass
class Connection:
    """Both directions of one TCP connection, the client being the side that sent the SYN
    (or, with no SYN captured, the first payload)."""

    client: tuple[str, int]
    server: tuple[str, int]
    to_server: bytes = b""
    to_client: bytes = b""
    segments: list[Segment] = field(default_factory=list)
    syn_seen: bool = False
    closed: bool = False  # a FIN or RST from each side, or any RST
    gaps: list[str] = field(default_factory=list)


@dataclass
class Capture:
    link_types: set[int] = field(default_factory=set)
    segments: list[Segment] = field(default_factory=list)
    packets: int = 0
    notes: list[str] = field(default_factory=list)

    def connections(self) -> list[Connection]:
        return reassemble(self.segments)


def read_capture(path: Path) -> Capture:
    """Every TCP segment in the capture file ``path`` (never raises for its content;
    ``OSError`` if it cannot be read)."""
    with open(path, "rb") as f:
        data = f.read(CAPTURE_BYTES_MAX + 1)
    cap = Capture()
    if len(data) > CAPTURE_BYTES_MAX:
        cap.notes.append(f"only the first {CAPTURE_BYTES_MAX} bytes were read")
        data = data[:CAPTURE_BYTES_MAX]
    if len(data) < 4:
        cap.notes.append("the file is empty or too short to be a capture")
        return cap
    magic_le = struct.unpack_from("<I", data)[0]
    magic_be = struct.unpack_from(">I", data)[0]
    if magic_le == PCAPNG_SHB:
        _read_pcapng(data, cap)
    elif magic_le in PCAP_MAGICS or magic_be in PCAP_MAGICS:
        _read_pcap(data, cap, "<" if magic_le in PCAP_MAGICS else ">")
    else:
        cap.notes.append("not a pcap or pcapng file (unknown magic number "
                         f"{data[:4].hex()})")
    return cap


def _read_pcap(data: bytes, cap: Capture, order: str) -> None:
    if len(data) < 24:
        cap.notes.append("the pcap header is cut short")
        return
    link = struct.unpack_from(order + "I", data, 20)[0] & 0xFFFF
    cap.link_types.add(link)
    pos = 24
    while pos + 16 <= len(data) and cap.packets < PACKETS_MAX:
        incl, orig = struct.unpack_from(order + "II", data, pos + 8)
        if pos + 16 + incl > len(data):
            cap.notes.append("the last packet is cut short (was the capture still running?)")
            return
        _packet(cap, link, data[pos + 16:pos + 16 + incl], orig)
        pos += 16 + incl


def _read_pcapng(data: bytes, cap: Capture) -> None:
    pos = 0
    order = "<"
    links: list[tuple[int, int]] = []  # (link type, snaplen) per interface of the section
    while pos + 12 <= len(data) and cap.packets < PACKETS_MAX:
        btype = struct.unpack_from(order + "I", data, pos)[0]
        if btype == PCAPNG_SHB:
            bom = data[pos + 8:pos + 12]
            order = "<" if bom == BYTE_ORDER_MAGIC.to_bytes(4, "little") else ">"
            links = []
        length = struct.unpack_from(order + "I", data, pos + 4)[0]
        if length < 12 or length % 4 or pos + length > len(data):
            cap.notes.append("the file ends inside a block (was the capture still running?)")
            return
        body = data[pos + 8:pos + length - 4]
        if btype == PCAPNG_IDB and len(body) >= 8:
            link, _reserved, snaplen = struct.unpack_from(order + "HHI", body)
            links.append((link, snaplen))
            cap.link_types.add(link)
        elif btype == PCAPNG_EPB and len(body) >= 20:
            iface, _hi, _lo, caplen, orig = struct.unpack_from(order + "IIIII", body)
            if iface < len(links):
                _packet(cap, links[iface][0], body[20:20 + caplen], orig)
        elif btype == PCAPNG_PB and len(body) >= 20:
            iface = struct.unpack_from(order + "H", body)[0]
            caplen, orig = struct.unpack_from(order + "II", body, 12)
            if iface < len(links):
                _packet(cap, links[iface][0], body[20:20 + caplen], orig)
        elif btype == PCAPNG_SPB and len(body) >= 4 and links:
            orig = struct.unpack_from(order + "I", body)[0]
            _packet(cap, links[0][0], body[4:4 + orig], orig)
        pos += length


def _packet(cap: Capture, link: int, frame: bytes, orig_len: int) -> None:
    cap.packets += 1
    truncated = len(frame) < orig_len
    ip = _ip_payload(link, frame)
    if ip is None:
        return
    parsed = _tcp(ip)
    if parsed is None:
        return
    src, dst, tcp = parsed
    if len(tcp) < 20:
        return
    sport, dport, seq, _ack, offset_byte, flags = struct.unpack_from(">HHIIBB", tcp)
    header = (offset_byte >> 4) * 4
    if header < 20 or header > len(tcp):
        return
    cap.segments.append(Segment(cap.packets, src, sport, dst, dport, seq, flags,
                                bytes(tcp[header:]), truncated))


def _ip_payload(link: int, frame: bytes) -> bytes | None:
    """The IP packet inside a link-layer frame, or ``None`` for anything else."""
    if link == LINK_ETHERNET:
        if len(frame) < 14:
            return None
        ethertype, pos = struct.unpack_from(">H", frame, 12)[0], 14
        while ethertype == ETHERTYPE_VLAN and len(frame) >= pos + 4:
            ethertype, pos = struct.unpack_from(">H", frame, pos + 2)[0], pos + 4
        return frame[pos:] if ethertype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6) else None
    if link == LINK_SLL:
        if len(frame) < 16:
            return None
        proto = struct.unpack_from(">H", frame, 14)[0]
        return frame[16:] if proto in (ETHERTYPE_IPV4, ETHERTYPE_IPV6) else None
    if link == LINK_SLL2:
        if len(frame) < 20:
            return None
        proto = struct.unpack_from(">H", frame, 0)[0]
        return frame[20:] if proto in (ETHERTYPE_IPV4, ETHERTYPE_IPV6) else None
    if link in (LINK_NULL, LINK_LOOP):
        return frame[4:] if len(frame) > 4 else None  # the IP version nibble tells which
    if link in (LINK_RAW, LINK_RAW_OLD, LINK_IPV4, LINK_IPV6):
        return frame
    return None


def _tcp(ip: bytes) -> tuple[str, str, bytes] | None:
    """(source, destination, TCP bytes) of an IPv4 or IPv6 packet carrying TCP."""
    if not ip:
        return None
    version = ip[0] >> 4
    if version == 4 and len(ip) >= 20:
        ihl = (ip[0] & 0x0F) * 4
        total, frag, proto = struct.unpack_from(">H", ip, 2)[0], \
            struct.unpack_from(">H", ip, 6)[0], ip[9]
        if proto != IPPROTO_TCP or frag & 0x1FFF or ihl < 20:
            return None  # not TCP, or a later fragment (loopback never fragments)
        end = min(len(ip), total) if total else len(ip)
        src = ".".join(str(b) for b in ip[12:16])
        dst = ".".join(str(b) for b in ip[16:20])
        return src, dst, ip[ihl:end]
    if version == 6 and len(ip) >= 40:
        payload_len, nxt = struct.unpack_from(">H", ip, 4)[0], ip[6]
        pos = 40
        for _ in range(8):  # hop-by-hop, routing, destination options: skip them
            if nxt not in (0, 43, 60) or len(ip) < pos + 8:
                break
            nxt, pos = ip[pos], pos + (ip[pos + 1] + 1) * 8
        if nxt != IPPROTO_TCP:
            return None
        end = min(len(ip), 40 + payload_len) if payload_len else len(ip)
        return _ip6(ip[8:24]), _ip6(ip[24:40]), ip[pos:end]
    return None


def _ip6(raw: bytes) -> str:
    import ipaddress

    return str(ipaddress.IPv6Address(raw))


def reassemble(segments: list[Segment]) -> list[Connection]:
    """The capture's TCP connections, in the order they first appear."""
    conns: dict[frozenset[tuple[str, int]], Connection] = {}
    for s in segments:
        key = frozenset({(s.src, s.sport), (s.dst, s.dport)})
        conn = conns.get(key)
        if conn is None:
            conn = conns[key] = Connection((s.src, s.sport), (s.dst, s.dport))
        conn.segments.append(s)
    for conn in conns.values():
        syn = next((s for s in conn.segments if s.flags & TCP_SYN and not s.flags & TCP_ACK),
                   None)
        first_data = next((s for s in conn.segments if s.payload), None)
        opener = syn or first_data
        if opener is not None:
            conn.client, conn.server = (opener.src, opener.sport), (opener.dst, opener.dport)
        conn.syn_seen = syn is not None
        ends = {(s.src, s.sport) for s in conn.segments if s.flags & (TCP_FIN | TCP_RST)}
        conn.closed = len(ends) == 2 or any(s.flags & TCP_RST for s in conn.segments)
        conn.to_server = _stream(conn, conn.client, "client to server")
        conn.to_client = _stream(conn, conn.server, "server to client")
    return list(conns.values())


def _stream(conn: Connection, sender: tuple[str, int], what: str) -> bytes:
    """One direction's bytes in sequence order, cut at the first gap."""
    mine = [s for s in conn.segments if (s.src, s.sport) == sender]
    if not mine:
        return b""
    syn = next((s for s in mine if s.flags & TCP_SYN), None)
    base = (syn.seq + 1) if syn is not None else min(
        (s.seq for s in mine if s.payload), default=0)
    out = bytearray()
    pieces = sorted((((s.seq - base) % 2**32, s) for s in mine if s.payload),
                    key=lambda piece: piece[0])
    for offset, s in pieces:
        if offset > len(out):
            conn.gaps.append(f"{what}: {offset - len(out)} bytes missing before packet "
                             f"{s.index}")
            break
        if s.truncated:
            conn.gaps.append(f"{what}: packet {s.index} was cut short by the snapshot "
                             "length")
        new = s.payload[len(out) - offset:]
        out += new[:STREAM_BYTES_MAX - len(out)]
        if len(out) >= STREAM_BYTES_MAX:
            break
    return bytes(out)
