"""Store tests: the backend-neutral contract (test_contract.py) and local-only properties."""
