"""Protocol-faithful stand-ins for payflow's outside world (WeChat Pay, the business backend),
with seeded, deterministic fault plans."""
