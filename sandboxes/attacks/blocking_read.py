# Attack 6, blocking_read: a read that never ends (pipe held open).
import os
r, w = os.pipe()
os.read(r, 1)
