"""The deployment's own secrets: one random key per purpose, in a 0600 file.

Three keys, never one for two jobs (DESIGN §5):

* ``link_key`` signs the hub <-> bank link (hub and every bank node hold it);
* ``fingerprint_key`` keys the card fingerprints stored in the ledger and used by the fraud
  rules. The ledger keeps the masked card (first 6, last 4) beside the fingerprint, which
  leaves 10^5-10^6 candidates: whoever holds this key and a copy of the ledger recovers
  every card number in well under a second. A fingerprint is exactly as safe as this key;
* ``idempotency_key`` keys the request hashes a retried charge is compared with (they cover
  the card number too, so they are as sensitive as fingerprints).

There is no built-in key: each deployment generates its own (``paywire secrets init``; the
demo and the test deployment do it for themselves). A node refuses to start without a
secrets file, on the key that used to be the public default, with a key shorter than
``KEY_BYTES_MIN``, with one key reused for two purposes, or when the file is readable by
other users. Every refusal is one line that says how to fix it.
"""

from __future__ import annotations

import os
import secrets
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

from gateway.config import ConfigError
from gateway.storage.groupcommit import make_private_dirs

# Was the built-in `link_key` of every config until issue 11: it is in the public source, so
# a deployment still using it has no secret at all.
PUBLIC_DEFAULT_LINK_KEY = "paywire-dev-link-key"
KEY_BYTES = 32  # generated: HMAC-SHA256's output size, the most a key can usefully hold
KEY_BYTES_MIN = 16  # refused below this (128 bits) when an operator writes a key by hand
FILE_MODE = 0o600
FILE_BYTES_MAX = 64 * 1024  # a secrets file is three lines; refuse to parse a huge one
PURPOSES = ("link_key", "fingerprint_key", "idempotency_key")
HUB_PURPOSES = PURPOSES
BANK_PURPOSES = ("link_key",)


class SecretsError(ConfigError):
    """A node cannot start with these secrets; the message is one line and says the fix."""


@dataclass(frozen=True)
class HubSecrets:
    link_key: bytes
    fingerprint_key: bytes
    idempotency_key: bytes


def _how(path: Path) -> str:
    return f"create one with `paywire secrets init {path}`"


def init(path: Path, *, force: bool = False) -> Path:
    """Write a new secrets file with a fresh random key per purpose, mode 0600.

    Missing directories on the way are created 0700. An existing file is kept (``SecretsError``)
    unless ``force``: replacing the link key cuts every bank node off until it gets the new
    file, and a new fingerprint key makes old fingerprints unrecognisable.
    """
    path = Path(path)
    if path.exists() and not force:
        raise SecretsError(f"{path} exists; keep it, or pass --force to replace it "
                           "(bank nodes then need the new link_key)")
    make_private_dirs(path.parent)
    lines = ["# Paywire deployment secrets, made by `paywire secrets init`. Keep this file",
             "# 0600 and out of version control. A bank node needs link_key only.",
             *(f'{name} = "{secrets.token_hex(KEY_BYTES)}"' for name in PURPOSES)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    # O_EXCL with an explicit mode: the key never exists on disk with wider permissions,
    # whatever the umask.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # in case the umask removed owner bits
        os.write(fd, ("\n".join(lines) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def _read(path: Path, wanted: tuple[str, ...]) -> dict[str, bytes]:
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise SecretsError(f"no secrets file at {path}: {_how(path)} and set "
                           "secrets_file in the config") from None
    except OSError as exc:
        raise SecretsError(f"cannot read secrets file {path}: {exc.strerror}") from None
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            raise SecretsError(f"secrets file {path} is readable by other users (mode "
                               f"{mode:04o}): run `chmod 600 {path}`")
        data = os.read(fd, FILE_BYTES_MAX + 1)
    finally:
        os.close(fd)
    if len(data) > FILE_BYTES_MAX:
        raise SecretsError(f"secrets file {path} is larger than {FILE_BYTES_MAX} bytes")
    try:
        table = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SecretsError(f"secrets file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(table) - set(PURPOSES))
    if unknown:
        raise SecretsError(f"secrets file {path}: unknown keys {unknown}")
    keys: dict[str, bytes] = {}
    for name in wanted:
        value = table.get(name)
        if value is None:
            raise SecretsError(f"secrets file {path} has no {name}: {_how(path)} "
                               "(with --force to replace it)")
        if value == PUBLIC_DEFAULT_LINK_KEY:
            raise SecretsError(f"secrets file {path}: {name} is the old public default "
                               f"key, which is no secret; {_how(path)} (with --force)")
        try:
            key = bytes.fromhex(value) if isinstance(value, str) else b""
        except ValueError:
            key = b""
        if len(key) < KEY_BYTES_MIN:
            raise SecretsError(f"secrets file {path}: {name} must be at least "
                               f"{KEY_BYTES_MIN} random bytes in hex; {_how(path)}")
        keys[name] = key
    present = [bytes.fromhex(v) for v in table.values() if isinstance(v, str)
               and _is_hex(v)]
    if len(set(present)) != len(present):
        raise SecretsError(f"secrets file {path}: one key is used for two purposes; "
                           f"{_how(path)} (with --force)")
    return keys


def _is_hex(value: str) -> bool:
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def refuse_inline_link_key(link_key: str | None) -> None:
    """Configs used to carry ``link_key`` (default: the public one). It is no longer read:
    a config that still sets it is refused rather than silently ignored."""
    if link_key is None:
        return
    which = "the old public default" if link_key == PUBLIC_DEFAULT_LINK_KEY else "set"
    raise SecretsError(f"link_key in the config is {which} and is no longer read: keys now "
                       "live in a 0600 secrets file, one per purpose; create it with "
                       "`paywire secrets init FILE`, set secrets_file = FILE and remove "
                       "link_key")


def load_hub(path: Path, inline_link_key: str | None = None) -> HubSecrets:
    """The hub's three keys, or ``SecretsError``."""
    refuse_inline_link_key(inline_link_key)
    keys = _read(path, HUB_PURPOSES)
    return HubSecrets(keys["link_key"], keys["fingerprint_key"], keys["idempotency_key"])


def load_link_key(path: Path, inline_link_key: str | None = None) -> bytes:
    """A bank node's (or a bank-admin tool's) link key, or ``SecretsError``."""
    refuse_inline_link_key(inline_link_key)
    return _read(path, BANK_PURPOSES)["link_key"]
