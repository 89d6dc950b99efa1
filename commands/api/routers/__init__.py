"""One router per resource: parties, accounts and wallets, transfers and batches, holds, operations."""
