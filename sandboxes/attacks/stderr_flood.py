# Attack 8, stderr_flood: stderr flood, invalid UTF-8, one 100 MB line.
import os
os.write(2, b'\xff\xfe bad utf-8\n' * 1000)
os.write(2, b'\xc3\x28' * (50 << 20))
