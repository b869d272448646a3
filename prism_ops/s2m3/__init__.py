"""S2M3: split multi-modal, multi-task models into shared modules and place them on devices.

Work in progress (issue 5): `placement` has the cluster/task model, the greedy placement and
an exact branch-and-bound solver.
"""
