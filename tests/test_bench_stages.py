"""The stage split of a hub profile (bench/stages.py): project code by module, library and
builtin time to the stage of its caller, imports apart."""

from __future__ import annotations

import cProfile
from pathlib import Path

from bench.stages import OTHER, STAGES, STARTUP, stages
from protocol import signing
from protocol.decoder import FrameDecoder
from protocol.frame import FrameType, encode_frame

AUTH = next(s for s, _ in STAGES if s.startswith("authenticate"))
FRAMING = next(s for s, _ in STAGES if s.startswith("framing"))


def test_time_is_split_by_the_module_that_spent_it(tmp_path: Path) -> None:
    frame = encode_frame(FrameType.PING, 1, b"\x80")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(2000):
        signing.hmac_sha256(b"k" * 32, b"x" * 200)  # hashlib/hmac builtins under signing
        FrameDecoder(1024).feed(frame)
    profiler.disable()
    path = tmp_path / "p.prof"
    profiler.dump_stats(str(path))
    got = stages(path)
    assert got[AUTH] > 0 and got[FRAMING] > 0
    # the hmac module's own functions are charged to signing's stage, not left over
    assert got.get(OTHER, 0.0) < got[AUTH]
    assert STARTUP not in got or got[STARTUP] >= 0
