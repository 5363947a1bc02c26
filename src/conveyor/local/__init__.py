"""Running the whole system on one machine: embedded services and a process supervisor."""
