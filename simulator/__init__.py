"""Protocol-faithful stand-ins for payflow's outside world (WeChat Pay, the business backend), with seeded,
deterministic fault plans; the dev server and the chaos driver that wire payflow to them."""
