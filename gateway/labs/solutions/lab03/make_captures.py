"""Make lab 3's reference captures and answers, the way the handout has a student do it.

    paywire sandbox --dir /tmp/sb --port 0          # another terminal; root, or dumpcap
    python -m gateway.labs.solutions.lab03.make_captures --sandbox /tmp/sb   # allowed to capture

It runs the handout's commands (docs/labs/03-capture.md): ``paywire lab capture`` around a
plaintext charge and around a TLS charge with ``SSLKEYLOGFILE`` set, writing
``plaintext.pcapng``, ``tls.pcapng`` and ``sslkeys.log`` next to this file (or ``--out``);
then it reads the answers with the tools the handout names — ``paywire dump`` on the
client's bytes, tshark with and without the key log and the dissector, a byte search of
the files — and writes ``answers.toml``. ``paywire lab check 3 --solution`` then grades
them with its own reader (``gateway/labs/pcap.py`` + ``protocol/``), so the two ways of
reading the same capture check each other.

The files are committed: the check of the reference solution reads them as they are, with
no sandbox and no capture permission needed (the key log holds the secrets of these
throwaway sessions only; the card is the sandbox's test card).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LUA = HERE.parents[3] / "docs" / "wireshark" / "paywire.lua"
CARD = "4811111111111114"  # the sandbox's approved card (bca)
AMOUNT = "150000"
COMMAND_S_MAX = 180.0


def _env(sandbox: Path) -> dict[str, str]:
    env = dict(os.environ)
    for line in (sandbox / "sandbox.env").read_text().splitlines():
        _export, assignment = shlex.split(line)
        name, _, value = assignment.partition("=")
        env[name] = value
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(argv: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    done = subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True,
                          timeout=COMMAND_S_MAX, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} exited with {done.returncode}:\n{done.stderr}")
    return done.stdout


def _port(address: str) -> str:
    return address.rpartition(":")[2]


def capture(out: Path, env: dict[str, str], plain_order: str, tls_order: str) -> None:
    plain = env["PAYWIRE_PLAINTEXT_HUB"]
    _run(["paywire", "lab", "capture", "--port", plain, "-w", str(out / "plaintext.pcapng"),
          "--", "paywire", "charge", plain_order, "--amount", AMOUNT, "--card", CARD,
          "--hub", plain, "--plaintext"], env)
    keylog = out / "sslkeys.log"
    keylog.unlink(missing_ok=True)
    _run(["paywire", "lab", "capture", "--port", env["PAYWIRE_HUB"], "-w",
          str(out / "tls.pcapng"), "--", "paywire", "charge", tls_order, "--amount", AMOUNT,
          "--card", CARD], {**env, "SSLKEYLOGFILE": str(keylog)})


def _fields(env: dict[str, str], pcap: Path, display: str, *fields: str,
            keylog: Path | None = None) -> list[list[str]]:
    argv = ["tshark", "-n", "-r", str(pcap), "-X", f"lua_script:{LUA}"]
    if keylog is not None:
        argv += ["-o", f"tls.keylog_file:{keylog}"]
    argv += ["-Y", display, "-T", "fields", *[a for f in fields for a in ("-e", f)]]
    return [line.split("\t") for line in _run(argv, env).splitlines() if line.strip()]


def read_answers(out: Path, env: dict[str, str], plain_order: str,
                 tls_order: str) -> dict[str, dict[str, Any]]:
    plain_pcap, tls_pcap, keylog = out / "plaintext.pcapng", out / "tls.pcapng", \
        out / "sslkeys.log"
    plain_port, hub_port = _port(env["PAYWIRE_PLAINTEXT_HUB"]), _port(env["PAYWIRE_HUB"])
    # Step 3: the client's bytes, through paywire dump.
    client_hex = "".join(r[0] for r in _fields(
        env, plain_pcap, f"tcp.dstport == {plain_port} && tcp.len > 0", "tcp.payload"))
    frames: list[dict[str, Any]] = json.loads(_run(["paywire", "dump", "--json"], env,
                                                   stdin=client_hex))
    request = next(f for f in frames if f["frame_type"] == "REQUEST")
    (welcome,) = _fields(env, plain_pcap, 'paywire.type_name == "WELCOME"', "paywire.type",
                         "paywire.length")
    (status,) = _fields(env, plain_pcap, 'paywire.type_name == "RESPONSE"',
                        "paywire.transaction_status")
    # Step 6: the TLS capture without the keys.
    hello = _run(["tshark", "-n", "-r", str(tls_pcap), "-Y", "tls.handshake.type == 2", "-V"],
                 env)
    suite = re.search(r"Cipher Suite: (\S+) ", hello)
    version = re.search(r"Supported Version: (TLS [0-9.]+) ", hello)
    assert suite is not None and version is not None, hello
    # TLS 1.3 hides the real type: every encrypted record is "Application Data" (opaque
    # type 23) on the wire; tshark's summary line names each record of a packet.
    types = _fields(env, tls_pcap, f"tcp.dstport == {hub_port} && tls",
                    "tls.record.content_type", "tls.record.opaque_type")
    app_data = sum(",".join(r).split(",").count("23") for r in types)
    # Step 7: with the key log and the dissector.
    (charge,) = _fields(env, tls_pcap, f'paywire.order_id == "{tls_order}" && '
                        'paywire.type_name == "REQUEST"', "tls.record.length",
                        "paywire.length", keylog=keylog)
    record_length = int(charge[0])
    return {
        "plaintext": {
            "order_id": plain_order,
            "charge_request_id": request["request_id"],
            "charge_body_length": request["body_length"],
            "charge_request_offset": request["offset"],
            "welcome_frame_type": int(welcome[0]),
            "welcome_body_length": int(welcome[1]),
            "transaction_status": status[0],
            "card_number_in_capture": CARD.encode() in plain_pcap.read_bytes(),
        },
        "tls": {
            "order_id": tls_order,
            "order_id_visible_without_keylog": tls_order.encode() in tls_pcap.read_bytes(),
            "client_application_data_records": app_data,
            "tls_version": version.group(1),
            "cipher_suite": suite.group(1),
            "order_id_visible_with_keylog": True,
            "charge_record_length": record_length,
            "tls_overhead_bytes": record_length - 16 - int(charge[1]),
        },
    }


def write_answers(path: Path, answers: dict[str, dict[str, Any]]) -> None:
    """The skeleton's answers.toml with its blanks filled (comments kept)."""
    skeleton = HERE.parents[1] / "skeletons" / "lab03" / "answers.toml"
    lines = []
    section = ""
    for line in skeleton.read_text().splitlines():
        header = re.fullmatch(r"\[(\w+)\]", line.strip())
        if header:
            section = header.group(1)
        key = re.fullmatch(r"(\w+) = \"\"", line.strip())
        if key and key.group(1) in answers.get(section, {}):
            line = f"{key.group(1)} = {_toml(answers[section][key.group(1)])}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandbox", default="sandbox", help="a running sandbox's directory")
    parser.add_argument("--out", default=str(HERE), help="where the files go")
    ns = parser.parse_args(argv)
    env = _env(Path(ns.sandbox))
    out = Path(ns.out)
    tag = secrets.token_hex(3)
    plain_order, tls_order = f"lab3-plain-{tag}", f"lab3-tls-{tag}"
    capture(out, env, plain_order, tls_order)
    write_answers(out / "answers.toml", read_answers(out, env, plain_order, tls_order))
    print(f"wrote plaintext.pcapng, tls.pcapng, sslkeys.log and answers.toml in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
