"""`run.py simulate-chaos`: payflow as a real process between both simulators, faults and SIGKILLs,
then invariants computed from the three parties' own ledgers."""
