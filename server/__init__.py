"""Everything that runs at the coordinator: strategies, the ServerApp, launchers, reports."""
