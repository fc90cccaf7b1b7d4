"""Pipeline stages. Each is usable from Python without the CLI."""
