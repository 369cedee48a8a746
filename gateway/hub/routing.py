"""Which bank a payment goes to: card BIN prefixes, chosen VA bank, e-wallet provider."""

from __future__ import annotations

from gateway.config import BankRoute
from protocol.errors import NoRoute


class Router:
    def __init__(self, banks: list[BankRoute]) -> None:
        # Longest prefix first, so "481111" beats "4".
        self._bins = sorted(((p, b.name) for b in banks for p in b.bins),
                            key=lambda item: -len(item[0]))
        self._va = {b.name for b in banks if b.virtual_account}
        self._providers = {p: b.name for b in banks for p in b.providers}

    def for_card(self, number: str) -> str:
        for prefix, bank in self._bins:
            if number.startswith(prefix):
                return bank
        raise NoRoute(f"no issuing bank for BIN {number[:6]}", field="args.card.number")

    def for_virtual_account(self, bank: str) -> str:
        if bank not in self._va:
            raise NoRoute(f"bank {bank!r} does not offer virtual accounts", field="args.bank")
        return bank

    def for_ewallet(self, provider: str) -> str:
        bank = self._providers.get(provider)
        if bank is None:
            raise NoRoute(f"no e-wallet provider {provider!r}", field="args.provider")
        return bank
