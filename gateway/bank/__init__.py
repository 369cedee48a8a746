"""A simulated bank / e-wallet node: accounts, holds, payments, deduplicated by op id."""
