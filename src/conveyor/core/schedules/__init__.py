"""Schedules as data: cron or interval timings in a time zone, fired exactly once per slot by
any number of schedulers (scheduler.py), with catch-up and overlap rules, and a run history."""
