"""A small payment gateway for development and tests: `conveyor sandbox-gateway`."""
