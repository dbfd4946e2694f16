"""A differential fuzzer: qga_mini.py and qemu-ga 7.2 get the same hostile inputs and must
answer alike (``make fuzz-diff``; README, Robustness).  guard.py keeps every input from acting
on this machine, cases.py makes the inputs from schema.json, agents.py runs the two agents
side by side, known.py lists the divergences that are understood, run.py drives it all.
"""
