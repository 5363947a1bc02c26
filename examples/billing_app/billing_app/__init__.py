"""An application of its own (users, invoices) whose background jobs run on Conveyor."""
