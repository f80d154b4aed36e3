"""The researcher's bench: tooling that runs at neither a hospital nor the coordinator."""
