"""Admission control: which request may start on which node now, and who waits.

Owns: the slot table per node and model (`slot_table`), what a request holds while it waits and
runs (`tickets`: `Waiter`, `Slot`), the priority queue with late binding (`admission`), its heap
(`waitqueue`), who gets a freed slot (`pump`), a retry's wait for another node (`retry`), its
bounds (`bounds`, pure) and statistics (`queue_stats`), the client's priority (`priority`), and the gate through which replicas share
slots in Redis (`gate`, implemented in `shared/`).
Imports `config`, `wire`, `lifecycle` and `fleet`.
"""
