"""Authentication helpers shared by the dashboard, the CLI and (later) the gateway."""
